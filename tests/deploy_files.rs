#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shipped example configuration stays in step with the configuration schema.

use std::path::PathBuf;

use syncerd::config::{ConfigSources, Settings, known_keys};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn example_config_loads_without_warnings_and_equals_the_defaults() {
    let loaded = Settings::load(&ConfigSources {
        file: Some(repo_file("deploy/syncerd.toml")),
        ..Default::default()
    })
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.settings, Settings::default());
}

#[test]
fn example_config_documents_every_key() {
    let text = std::fs::read_to_string(repo_file("deploy/syncerd.toml")).unwrap();
    let mut section = String::new();
    let mut documented = std::collections::BTreeSet::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !key.contains(' ') {
                documented.insert(format!("{section}.{key}"));
            }
        }
    }
    let missing: Vec<_> = known_keys().into_iter().filter(|k| !documented.contains(k)).collect();
    assert!(missing.is_empty(), "deploy/syncerd.toml does not document {missing:?}");
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let undocumented: Vec<_> = known_keys()
        .into_iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(undocumented.is_empty(), "README.md does not document {undocumented:?}");
}
