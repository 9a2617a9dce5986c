//! Reloading a running daemon's configuration: which keys apply live, and what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use figment::value::Value;

use super::keys::collect_leaves;
use super::text::num_text;
use super::{SECRET_KEYS, Settings};

impl Settings {
    /// The keys a running daemon takes over when it reloads its configuration (SIGHUP); every
    /// other key keeps its running value until a restart. This is the one list of live keys:
    /// [`Settings::reload`] derives what was applied and what waits for a restart from it. The
    /// daemon hands the result to the scheduler (`Shared::apply_settings`) and the log filter.
    pub fn take_live(&mut self, new: &Settings) {
        self.log.level.clone_from(&new.log.level);
        self.scheduler.clone_from(&new.scheduler);
        self.history.clone_from(&new.history);
        self.http.admin_token.clone_from(&new.http.admin_token);
        self.http
            .admin_token_file
            .clone_from(&new.http.admin_token_file);
        self.http.session_lifetime = new.http.session_lifetime;
        self.notify.clone_from(&new.notify);
    }

    /// Compares these running settings with newly loaded ones.
    pub fn reload(&self, new: &Settings) -> Reload {
        let mut next = self.clone();
        next.take_live(new);
        let applied = changed_keys(self, &next);
        let needs_restart = changed_keys(&next, new)
            .into_iter()
            .map(|changed| changed.key)
            .collect();
        Reload {
            next,
            applied,
            needs_restart,
        }
    }
}

/// What a reload changes.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The settings to run with from now on: the new value of every live key and the running
    /// value of every other, so a restart warning repeats until the restart.
    pub next: Settings,
    /// Live keys whose value changed, in key order.
    pub applied: Vec<ReloadedKey>,
    /// Keys whose value changed but that keep their running value until a restart, in key order.
    pub needs_restart: Vec<String>,
}

/// A key whose value a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadedKey {
    pub key: String,
    /// `key old → new`, or `key changed` for a secret.
    pub description: String,
}

impl fmt::Display for ReloadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// The keys whose values differ, compared as serialized (secrets by their real value).
fn changed_keys(old: &Settings, new: &Settings) -> Vec<ReloadedKey> {
    let (before, after) = (leaves(old), leaves(new));
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changed = Vec::new();
    for key in keys {
        let description = match SECRET_KEYS.iter().find(|s| s.key == key.as_str()) {
            Some(secret) if (secret.value)(old) != (secret.value)(new) => format!("{key} changed"),
            Some(_) => continue,
            None if before.get(key) != after.get(key) => format!(
                "{key} {} → {}",
                shown(before.get(key)),
                shown(after.get(key))
            ),
            None => continue,
        };
        changed.push(ReloadedKey {
            key: key.clone(),
            description,
        });
    }
    changed
}

fn leaves(settings: &Settings) -> BTreeMap<String, Value> {
    let mut leaves = BTreeMap::new();
    if let Ok(Value::Dict(_, dict)) = Value::serialize(settings) {
        collect_leaves("", &dict, &mut leaves);
    }
    leaves
}

/// A value the way the configuration writes it: `30s`, `info`, `DingTalk,Other`.
fn shown(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(_, s)) => s.clone(),
        Some(Value::Num(_, n)) => num_text(*n),
        Some(Value::Bool(_, b)) => b.to_string(),
        Some(Value::Char(_, c)) => c.to_string(),
        Some(Value::Array(_, items)) if items.is_empty() => "(none)".to_owned(),
        Some(Value::Array(_, items)) => items
            .iter()
            .map(|item| shown(Some(item)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Dict(..)) => "(a table)".to_owned(),
        Some(Value::Empty(..)) | None => "(unset)".to_owned(),
    }
}
