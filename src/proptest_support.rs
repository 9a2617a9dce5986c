//! Settings shared by the property tests.

use proptest::test_runner::Config;

/// A property-test configuration running `cases` cases, or `PROPTEST_CASES` of them when that is
/// set (a deeper search on demand; the default keeps the debug-build suite fast).
pub(crate) fn config(cases: u32) -> Config {
    let asked = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    Config {
        cases: asked.unwrap_or(cases),
        ..Config::default()
    }
}
