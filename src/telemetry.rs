//! Logging setup: human-readable or JSON lines on stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) journald stamps every line itself, so text lines carry no
//! timestamp of their own. `RUST_LOG`, when set, overrides `log.level`. SQL statement logging of
//! sqlx is kept at `warn` unless asked for explicitly, because it would log every query.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

/// The filter used for `level`, with noisy dependencies quietened unless named explicitly.
pub fn filter_for(level: &str) -> EnvFilter {
    let mut directives = level.to_owned();
    for noisy in ["sqlx", "sea_orm", "hyper", "reqwest", "h2", "rustls"] {
        if !level.contains(noisy) {
            directives.push_str(&format!(",{noisy}=warn"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(settings: &LogSettings) {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.level.clone());
    let filter = filter_for(&level);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match (settings.format, under_journald) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish()
            .try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).finish().try_init(),
        (LogFormat::Text, false) => builder
            .with_timer(SystemTime)
            .with_ansi(ansi)
            .finish()
            .try_init(),
    };
}
