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
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.contains(' ')
        {
            documented.insert(format!("{section}.{key}"));
        }
    }
    let missing: Vec<_> = known_keys()
        .into_iter()
        .filter(|k| !documented.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/syncerd.toml does not document {missing:?}"
    );
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let undocumented: Vec<_> = known_keys()
        .into_iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "README.md does not document {undocumented:?}"
    );
}

/// `SYNCERD_*` assignments in a deployment file: compose `KEY: value`, Dockerfile `KEY=value`,
/// systemd `Environment=KEY=value`.
fn syncerd_vars(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for raw in text.lines() {
        let line = raw
            .trim()
            .trim_start_matches("Environment=")
            .trim_start_matches("ENV ");
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(": ") {
            if k.starts_with("SYNCERD_") {
                vars.push((k.to_owned(), v.trim().trim_matches('"').to_owned()));
            }
            continue;
        }
        for part in line.split_whitespace() {
            if let Some((k, v)) = part.trim_end_matches('\\').split_once('=')
                && k.starts_with("SYNCERD_")
            {
                vars.push((k.to_owned(), v.trim().trim_matches('"').to_owned()));
            }
        }
    }
    vars
}

#[test]
fn deployment_files_only_set_known_keys_with_valid_values() {
    let secrets = tempfile::tempdir().unwrap();
    for file in [
        "deploy/docker-compose.yml",
        "deploy/Dockerfile",
        "systemd/syncerd.service",
    ] {
        let text = std::fs::read_to_string(repo_file(file)).unwrap();
        let mut vars = syncerd_vars(&text);
        assert!(!vars.is_empty(), "{file} sets no SYNCERD_ variable");
        // Secret files do not exist here: stand in temporary ones with plausible contents.
        for (name, value) in vars.iter_mut() {
            if name.ends_with("_FILE") {
                let path = secrets.path().join(name.to_ascii_lowercase());
                let content = if name.contains("DATABASE") {
                    "mysql://syncerd:pw@mariadb:3306/casdoor"
                } else {
                    "tok"
                };
                std::fs::write(&path, content).unwrap();
                *value = path.to_string_lossy().into_owned();
            }
        }
        let loaded = Settings::load(&ConfigSources {
            env: vars.clone(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(loaded.warnings.is_empty(), "{file}: {:?}", loaded.warnings);
        for (name, _) in &vars {
            let key = name
                .trim_start_matches("SYNCERD_")
                .to_ascii_lowercase()
                .replace("__", ".");
            assert!(
                known_keys().contains(&key),
                "{file}: {name} is not a configuration key"
            );
        }
    }
}
