//! The database URL, which may carry a password and so prints only where it points.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DEFAULT_DATABASE_URL;
use crate::secret::Secret;

/// A database URL. It may hold a user name, a password and secret options, so it is never
/// printed: `Debug`, `Display` and `Serialize` show only the engine, host, port and database
/// taken from it (see [`DatabaseUrl::target`]), or "unparseable database URL (hidden)".
/// [`DatabaseUrl::expose`] gives the real URL to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Secret);

/// Shown in place of a database URL that cannot be taken apart safely (for example a password
/// holding an unescaped `#`, `/`, `?` or `@`, which would otherwise pass for the host).
pub const UNPARSEABLE_DATABASE_URL: &str = "unparseable database URL (hidden)";

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(Secret::new(url.into()))
    }

    /// The URL with its password, for the database driver only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// What may be printed of the URL: `PostgreSQL database `casdoor` on db:5432`. Never the
    /// URL itself, its user, password or options.
    pub fn redacted(&self) -> String {
        match (self.engine(), describe_target(self.0.expose())) {
            (Some(engine), Some(target)) => format!("{engine} database {target}"),
            _ => UNPARSEABLE_DATABASE_URL.to_owned(),
        }
    }

    /// The database the URL names, without the engine: `` `casdoor` on db:5432 `` or the SQLite
    /// file path; "(unparseable database URL, hidden)" when it cannot be taken apart safely.
    pub fn target(&self) -> String {
        describe_target(self.0.expose())
            .unwrap_or_else(|| "(unparseable database URL, hidden)".to_owned())
    }

    /// Which engine the URL names, from its scheme.
    pub fn engine(&self) -> Option<Engine> {
        let url = self.0.expose();
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Some(Engine::Sqlite),
            "mysql" | "mariadb" => Some(Engine::MySql),
            "postgres" | "postgresql" => Some(Engine::Postgres),
            _ => None,
        }
    }
}

/// Host, port and database of a server URL, or the file of a SQLite URL; `None` when the URL
/// cannot be split by the URL rules without guessing. Where a password holds a reserved
/// character, the authority ends early and part of the password would pass for the host or
/// port: any `@` after the authority, or a host or port that is not one, means "do not guess".
fn describe_target(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once(':')?;
    if scheme == "sqlite" {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
            return Some("in memory".to_owned());
        }
        if path.chars().any(char::is_control) {
            return None;
        }
        return Some(path.to_owned());
    }
    let default_port = match scheme {
        "mysql" | "mariadb" => 3306,
        "postgres" | "postgresql" => 5432,
        _ => return None,
    };
    let rest = rest.strip_prefix("//")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if after.contains('@') {
        return None;
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (inner, tail) = v6.split_once(']')?;
        if !inner
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        (format!("[{inner}]"), tail.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (host_port.to_owned(), None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if !host_ok {
        return None;
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok()?,
    };
    let path = after.split(['?', '#']).next().unwrap_or_default();
    let database = path.trim_start_matches('/');
    if database.chars().any(|c| c.is_control() || c == '`') {
        return None;
    }
    if database.is_empty() {
        Some(format!("on {host}:{port} (no database named)"))
    } else {
        Some(format!("`{database}` on {host}:{port}"))
    }
}

impl Default for DatabaseUrl {
    fn default() -> Self {
        Self::new(DEFAULT_DATABASE_URL)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DatabaseUrl::new)
    }
}

/// The database engines syncerd speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Sqlite,
    MySql,
    Postgres,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Sqlite => "SQLite",
            Engine::MySql => "MySQL/MariaDB",
            Engine::Postgres => "PostgreSQL",
        })
    }
}
