//! Key names: which keys exist, their environment variables, and errors and warnings that
//! name the key and the layer it came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};

use super::{ConfigError, ConfigWarning, ENV_PREFIX, Settings, is_secret_key};
use crate::secret::redact_url;

/// Explains a figment error as `key (from its layer): problem`, one per problem.
pub(super) fn describe_figment_error(error: figment::Error, file: Option<&Path>) -> ConfigError {
    let mut messages = Vec::new();
    for e in error {
        let key = if e.path.is_empty() {
            "configuration".to_owned()
        } else {
            e.path.join(".")
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| {
                if m.name.contains("environment") {
                    format!(" (from environment variable {})", env_var_name(&key))
                } else if m.name.contains("TOML") {
                    match file {
                        Some(f) => format!(" (from {})", f.display()),
                        None => " (from the config file)".to_owned(),
                    }
                } else if m.name.contains("flag") {
                    " (from a command-line flag)".to_owned()
                } else {
                    String::new()
                }
            })
            .unwrap_or_default();
        // Figment's message may quote the offending value; values of secret keys must not show.
        let kind = redact_url(&e.kind.to_string());
        let kind = if is_secret_key(&key) {
            "invalid value".to_owned()
        } else {
            kind
        };
        messages.push(format!("{key}{source}: {kind}"));
    }
    ConfigError::Invalid(messages.join("; "))
}

/// The environment variable that sets `key` (`database.url` → `SYNCERD_DATABASE__URL`).
pub fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Every key path a [`Settings`] understands, such as `database.url`: the leaves of the
/// serialized defaults (a key whose default is unset serializes as an empty value).
pub fn known_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if let Ok(Value::Dict(_, dict)) = Value::serialize(Settings::default()) {
        collect_keys("", &dict, &mut keys);
    }
    keys
}

fn collect_keys(prefix: &str, dict: &Dict, keys: &mut BTreeSet<String>) {
    let mut leaves = BTreeMap::new();
    collect_leaves(prefix, dict, &mut leaves);
    keys.extend(leaves.into_keys());
}

/// The leaf values of a nested dict by key path (`sync.batch_size`).
pub(super) fn collect_leaves(prefix: &str, dict: &Dict, leaves: &mut BTreeMap<String, Value>) {
    for (k, v) in dict {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Dict(_, inner) => collect_leaves(&path, inner, leaves),
            _ => {
                leaves.insert(path, v.clone());
            }
        }
    }
}

pub(super) fn unknown_key_warnings(figment: &Figment) -> Vec<ConfigWarning> {
    let known = known_keys();
    let sections: BTreeSet<String> = known
        .iter()
        .filter_map(|k| k.split('.').next().map(str::to_owned))
        .collect();
    let mut present = BTreeSet::new();
    if let Ok(Value::Dict(_, dict)) = figment.find_value("") {
        collect_keys("", &dict, &mut present);
    } else if let Ok(dict) = figment
        .data()
        .map(|mut d| d.remove(&Profile::Default).unwrap_or_default())
    {
        collect_keys("", &dict, &mut present);
    }
    let mut warnings = Vec::new();
    for key in present.difference(&known) {
        let from = figment
            .find_metadata(key)
            .map(|m| m.name.to_string())
            .unwrap_or_default();
        let hint = if from.contains("environment") {
            format!("environment variable {}", env_var_name(key))
        } else {
            from
        };
        let suggestion = known
            .iter()
            .find(|k| k.rsplit('.').next() == key.rsplit('.').next())
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        let section_note = match key.split('.').next() {
            Some(s) if !sections.contains(s) => format!(" (there is no [{s}] section)"),
            _ => String::new(),
        };
        warnings.push(ConfigWarning(format!(
            "unknown configuration key `{key}` from {hint}{section_note} is ignored{suggestion}"
        )));
    }
    warnings
}
