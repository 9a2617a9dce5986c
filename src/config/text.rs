//! The one place where configuration text becomes typed values.
//!
//! Environment variables and CLI flags are text, and a TOML file may hold `"30"` or `"true"`
//! where a number or a bool is meant. [`Typed`] wraps each layer and converts every value to the
//! kind that the built-in default of the same key has (number, bool, list or text), so the
//! settings structs carry no parsing of their own. Durations and the enum-like keys are text
//! after this pass and parse it themselves ([`parse_duration`], their `FromStr`).

use std::time::Duration;

use figment::value::{Dict, Map, Num, Tag, Value};
use figment::{Metadata, Profile, Provider};

use super::{ENV_PREFIX, Settings};

/// A configuration layer whose values are converted to the kinds of the defaults' values.
pub(super) struct Typed<P> {
    inner: P,
    defaults: Dict,
}

impl<P: Provider> Typed<P> {
    pub(super) fn new(inner: P) -> Self {
        let defaults = match Value::serialize(Settings::default()) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => Dict::new(),
        };
        Self { inner, defaults }
    }
}

impl<P: Provider> Provider for Typed<P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        let mut errors = Vec::new();
        for dict in data.values_mut() {
            convert_dict(&mut Vec::new(), dict, &self.defaults, &mut errors);
        }
        // Chained so that iterating the error yields the problems in key order.
        match errors.into_iter().rev().reduce(|later, e| later.chain(e)) {
            Some(error) => Err(error),
            None => Ok(data),
        }
    }

    fn profile(&self) -> Option<Profile> {
        self.inner.profile()
    }
}

/// Converts the values of `dict` in place; keys without a default (unknown keys, warned about
/// elsewhere) and values of a kind no conversion applies to are left for extraction to judge.
fn convert_dict(
    path: &mut Vec<String>,
    dict: &mut Dict,
    defaults: &Dict,
    errors: &mut Vec<figment::Error>,
) {
    for (key, value) in dict.iter_mut() {
        let Some(default) = defaults.get(key) else {
            continue;
        };
        path.push(key.clone());
        if let (Value::Dict(_, inner_defaults), Value::Dict(_, inner)) = (default, &mut *value) {
            convert_dict(path, inner, inner_defaults, errors);
        } else {
            match typed(default, value) {
                Ok(Some(converted)) => *value = converted,
                Ok(None) => {}
                Err(message) => {
                    let mut error = figment::Error::from(message);
                    error.path = path.clone();
                    errors.push(error);
                }
            }
        }
        path.pop();
    }
}

/// `value` as the kind of `default`, or `None` when it already is (or cannot be made) that kind.
fn typed(default: &Value, value: &Value) -> Result<Option<Value>, String> {
    let text = match value {
        Value::String(_, s) => s.clone(),
        Value::Num(_, n) => num_text(*n),
        Value::Bool(_, b) => b.to_string(),
        _ => return Ok(None),
    };
    let converted = match (default, value) {
        (Value::Num(_, like), Value::String(..) | Value::Bool(..)) => {
            Value::Num(Tag::Default, parse_number(*like, &text)?)
        }
        (Value::Bool(..), Value::String(..) | Value::Num(..)) => {
            Value::Bool(Tag::Default, parse_bool(&text)?)
        }
        (Value::Array(..), Value::String(..)) => Value::from(split_list(&text)),
        (Value::String(..), Value::Num(..) | Value::Bool(..)) => Value::from(text),
        _ => return Ok(None),
    };
    Ok(Some(converted))
}

pub(super) fn num_text(n: Num) -> String {
    if let Some(u) = n.to_u128() {
        u.to_string()
    } else if let Some(i) = n.to_i128() {
        i.to_string()
    } else {
        n.to_f64().map(|f| f.to_string()).unwrap_or_default()
    }
}

/// Parses `text` as the same kind of number as `like`, so range errors name the real type.
fn parse_number(like: Num, text: &str) -> Result<Num, String> {
    macro_rules! parse_as {
        ($($variant:ident: $ty:ty),*) => {
            match like {
                $(Num::$variant(_) => text.trim().parse::<$ty>().map(Num::$variant).map_err(|e| e.to_string()),)*
                _ => text.trim().parse::<f64>().map(Num::F64).map_err(|e| e.to_string()),
            }
        };
    }
    parse_as!(U8: u8, U16: u16, U32: u32, U64: u64, USize: usize, I32: i32, I64: i64, F32: f32)
        .map_err(|e| format!("`{text}` is not a valid number: {e}"))
}

/// `true`, `false`, `1`, `0`, `yes`, `no`, `on`, `off`, in any case.
fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not true or false")),
    }
}

/// A comma-separated list, the environment's form of a TOML array.
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `SYNCERD_` environment variables as a figment provider that keeps every value as text.
pub(super) struct EnvText {
    dict: Dict,
}

impl EnvText {
    pub(super) fn new(vars: &[(String, String)]) -> Self {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Test-harness variables share the prefix but are not configuration.
            if rest.starts_with("TEST_") || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            insert_path(&mut dict, &path, Value::from(value.clone()));
        }
        Self { dict }
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvText {
    fn metadata(&self) -> Metadata {
        Metadata::named("`SYNCERD_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// CLI flags as the last configuration layer.
pub(super) struct FlagOverrides(pub(super) Vec<(String, String)>);

impl Provider for FlagOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.0 {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            insert_path(&mut dict, &path, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Parses `"30"`, `"30s"`, `"500ms"`, `"5m"`, `"2h"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (examples: 30s, 500ms, 5m, 2h)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Renders a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Serde glue of the `Duration` keys: written as `30s`, read from the text [`Typed`] leaves.
pub(super) mod duration_text {
    use std::time::Duration;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}
