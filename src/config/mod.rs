//! Layered configuration: built-in defaults → TOML file → `SYNCERD_` environment → CLI flags.
//!
//! Environment variables use `__` for nesting (`SYNCERD_DATABASE__URL` is `database.url`). Their
//! values are taken as text and converted in one place ([`text`]), so a secret such as `00123`
//! keeps its leading zeros. Every secret-bearing key also has a `*_file` twin
//! (`SYNCERD_DATABASE__URL_FILE`, `http.admin_token_file`) holding the path of a file with the
//! value, for Docker secrets and systemd `LoadCredential=`. Unknown keys are not an error; they
//! come back as [`ConfigWarning`]s naming the key and where it came from. Which keys a running
//! daemon takes over on reload is declared once, in [`Settings::take_live`].
//!
//! Adding a key: a field with its doc comment and default below, a check in
//! [`Settings::validate`] if some values cannot work, a line in `deploy/syncerd.toml`, and a line
//! in [`Settings::take_live`] if the daemon applies it without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::secret::{Secret, redact_url};

mod database_url;
mod keys;
mod reload;
mod text;

pub use database_url::{DatabaseUrl, Engine, UNPARSEABLE_DATABASE_URL};
pub use keys::{env_var_name, known_keys};
pub use reload::{Reload, ReloadedKey};
pub use text::{format_duration, parse_duration};

use keys::{describe_figment_error, unknown_key_warnings};
use text::{EnvText, FlagOverrides, Typed};

/// Prefix of every environment variable syncerd reads.
pub const ENV_PREFIX: &str = "SYNCERD_";
/// Config files tried, in order, when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["/etc/syncerd/syncerd.toml", "./syncerd.toml"];
/// The embedded default database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://syncerd.db?mode=rwc";

/// The whole effective configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub dingtalk: DingTalkSettings,
    pub scheduler: SchedulerSettings,
    pub sync: SyncSettings,
    pub stream: StreamSettings,
    pub history: HistorySettings,
    pub http: HttpSettings,
    pub notify: NotifySettings,
    pub log: LogSettings,
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH?mode=rwc`, `mysql://USER:PASS@HOST:PORT/DB` or `postgres://USER:PASS@HOST:PORT/DB`.
    pub url: DatabaseUrl,
    /// Path of a file holding `url` (wins over `url` when set).
    pub url_file: Option<PathBuf>,
    /// Pool size for MySQL/PostgreSQL (SQLite uses a small pool of its own).
    pub max_connections: u32,
    /// How long to wait for a connection to the database.
    #[serde(with = "text::duration_text")]
    pub connect_timeout: Duration,
    /// Casdoor's `tableNamePrefix`: in front of every Casdoor table but `casbin_user_rule`, and
    /// of syncerd's own tables.
    pub table_prefix: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::default(),
            url_file: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            table_prefix: String::new(),
        }
    }
}

/// `[dingtalk]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DingTalkSettings {
    /// Base URL of DingTalk's old ("oapi") API family; point it at a simulator for tests.
    pub api_base: String,
    /// Base URL of DingTalk's new API family (`api.dingtalk.com`): Stream connections and the
    /// leave records.
    pub open_api_base: String,
    /// Calls per second per API per App Key (DingTalk allows 20 on the standard edition).
    pub qps_per_api: u32,
    /// Requests in flight at once per fetch.
    pub max_concurrency: usize,
    /// Timeout of one HTTP request.
    #[serde(with = "text::duration_text")]
    pub request_timeout: Duration,
    /// Attempts per request for retryable failures (throttling, busy, 5xx, transport).
    pub max_attempts: u32,
    /// How long every call of an app pauses after DingTalk's IP-ban answer.
    #[serde(with = "text::duration_text")]
    pub ip_ban_pause: Duration,
    /// Largest answer body read, in bytes; a longer answer fails the run unread.
    pub max_response_bytes: u64,
    /// Member pages read per department at most (100 members a page).
    pub max_pages_per_department: u64,
    /// Departments one fetch walks at most, the root included.
    pub max_departments: usize,
    /// Longest a whole fetch (every call of one run) may take.
    #[serde(with = "text::duration_text")]
    pub fetch_timeout: Duration,
}

impl Default for DingTalkSettings {
    fn default() -> Self {
        Self {
            api_base: "https://oapi.dingtalk.com".to_owned(),
            open_api_base: "https://api.dingtalk.com".to_owned(),
            qps_per_api: 15,
            max_concurrency: 8,
            request_timeout: Duration::from_secs(30),
            max_attempts: 6,
            ip_ban_pause: Duration::from_secs(300),
            max_response_bytes: 32 * 1024 * 1024,
            max_pages_per_department: 2_000,
            max_departments: 50_000,
            fetch_timeout: Duration::from_secs(3600),
        }
    }
}

/// `[scheduler]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerSettings {
    /// How often the daemon re-reads the `syncer` table.
    #[serde(with = "text::duration_text")]
    pub reload_interval: Duration,
    /// Runs at once in one process, over all syncers.
    pub max_concurrent_runs: usize,
    /// Floor of a syncer's `sync_interval`.
    #[serde(with = "text::duration_text")]
    pub min_interval: Duration,
    /// How long shutdown waits for running syncs to reach a safe point.
    #[serde(with = "text::duration_text")]
    pub shutdown_grace: Duration,
    /// `syncer.type` values this daemon runs.
    pub accepted_types: Vec<String>,
    /// Syncers this daemon runs even while their `is_enabled` is 0. Beside a running Casdoor,
    /// keep such rows disabled so Casdoor's own scheduler leaves them alone, and list them here.
    pub claimed_syncers: Vec<String>,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            reload_interval: Duration::from_secs(5),
            max_concurrent_runs: 4,
            min_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            accepted_types: vec!["DingTalk".to_owned()],
            claimed_syncers: Vec::new(),
        }
    }
}

/// What happens to a user this syncer owns once it is missing from a complete directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LeaverPolicy {
    /// Set `is_forbidden` (the user can no longer sign in); reversible.
    #[default]
    Forbid,
    /// Leave the user as it is.
    Keep,
    /// Casdoor's soft delete: `is_deleted` and `deleted_time`.
    Delete,
}

impl FromStr for LeaverPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "forbid" => Ok(Self::Forbid),
            "keep" => Ok(Self::Keep),
            "delete" => Ok(Self::Delete),
            other => Err(format!(
                "unknown leaver policy `{other}` (expected forbid, keep or delete)"
            )),
        }
    }
}

/// `[sync]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncSettings {
    /// Rows per write transaction.
    pub batch_size: usize,
    pub leaver_policy: LeaverPolicy,
    /// A run that would act on more leavers than this is held instead.
    pub max_removals: u64,
    /// ... or on more than this percentage of the users the syncer owns.
    pub max_removal_percent: f64,
    /// Take over existing users and department groups that match a DingTalk user (on the key
    /// column) or department but that no syncer owns yet. Off: they are reported as conflicts.
    pub adopt_existing: bool,
    /// Lower-case the names of the users syncerd creates, as Casdoor's `isUsernameLowered`
    /// does; existing names are never rewritten.
    pub lowercase_names: bool,
    /// User names that may be adopted although they are admins, have a password or are bound to
    /// another DingTalk account (such rows are never adopted otherwise).
    pub adopt_only: Vec<String>,
    /// Up to this many leaver removals never hold a run on `max_removal_percent` alone.
    pub min_removals_allowed: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            leaver_policy: LeaverPolicy::Forbid,
            max_removals: 100,
            max_removal_percent: 10.0,
            adopt_existing: false,
            lowercase_names: false,
            adopt_only: Vec::new(),
            min_removals_allowed: 3,
        }
    }
}

/// `[stream]`: DingTalk Stream mode, address-book events applied within seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSettings {
    /// Keep one Stream connection per enabled syncer (on the replica holding its stream lease)
    /// and apply the users and departments its events name; the interval run stays the
    /// backstop.
    pub enabled: bool,
    /// Syncers whose DingTalk app has no Stream subscription: no connection is opened.
    pub disabled_syncers: Vec<String>,
    /// How long a burst of events is gathered into one run.
    #[serde(with = "text::duration_text")]
    pub coalesce_window: Duration,
    /// The pause before events are tried again after a run that did not apply them.
    #[serde(with = "text::duration_text")]
    pub retry_interval: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            disabled_syncers: Vec::new(),
            coalesce_window: Duration::from_millis(300),
            retry_interval: Duration::from_secs(30),
        }
    }
}

impl StreamSettings {
    /// Whether syncer `name` keeps a Stream connection.
    pub fn streams(&self, name: &str) -> bool {
        self.enabled && !self.disabled_syncers.iter().any(|n| n == name)
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Address of `/healthz`, `/readyz`, `/metrics` and the admin API.
    pub listen: String,
    /// Bearer token of the admin API; the admin API is off when unset.
    pub admin_token: Option<Secret>,
    /// Path of a file holding `admin_token` (wins over `admin_token` when set).
    pub admin_token_file: Option<PathBuf>,
    /// How long a client may take to send a request's headers, counted from when the
    /// connection opens or the previous answer went out (so it also ends waiting keep-alives).
    #[serde(with = "text::duration_text")]
    pub header_read_timeout: Duration,
    /// A connection with no request going on that moves no byte for this long is closed.
    #[serde(with = "text::duration_text")]
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed at once, so stalled
    /// clients cannot take every file descriptor the database needs.
    pub max_connections: usize,
    /// How long a console sign-in lasts (the session cookie's lifetime).
    #[serde(with = "text::duration_text")]
    pub session_lifetime: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".to_owned(),
            admin_token: None,
            admin_token_file: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 64,
            session_lifetime: Duration::from_secs(8 * 3600),
        }
    }
}

/// The shortest admin token the daemon accepts: a short token falls to guessing.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

impl HttpSettings {
    /// Refuses an admin token shorter than [`MIN_ADMIN_TOKEN_BYTES`]; the daemon checks this
    /// before it serves (other commands never use the token).
    pub fn check_admin_token(&self) -> Result<(), ConfigError> {
        match &self.admin_token {
            Some(token) if token.expose().len() < MIN_ADMIN_TOKEN_BYTES => {
                Err(ConfigError::Invalid(format!(
                    "http.admin_token is {} bytes long; use at least {MIN_ADMIN_TOKEN_BYTES} \
                     random bytes (for example `openssl rand -hex 32`), set through \
                     http.admin_token_file / SYNCERD_HTTP__ADMIN_TOKEN_FILE, or unset it to turn \
                     the admin API off",
                    token.expose().len()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected text or json)"
            )),
        }
    }
}

/// How often log files rotate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogRotation {
    #[default]
    Daily,
    Hourly,
}

impl FromStr for LogRotation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "daily" => Ok(Self::Daily),
            "hourly" => Ok(Self::Hourly),
            other => Err(format!(
                "unknown log rotation `{other}` (expected daily or hourly)"
            )),
        }
    }
}

/// The enum-like keys read their text through `FromStr`, in any case, with its message.
macro_rules! from_text {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }
    )*};
}
from_text!(LeaverPolicy, LogFormat, LogRotation, NotifyFormat);

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// A tracing filter: `info`, `debug`, `info,syncerd=debug`, ...
    pub level: String,
    pub format: LogFormat,
    /// Directory of rotating log files; unset means stderr only.
    pub dir: Option<PathBuf>,
    pub rotation: LogRotation,
    /// Rotated files kept.
    pub max_files: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            dir: None,
            rotation: LogRotation::Daily,
            max_files: 14,
        }
    }
}

/// `[history]`: how long the per-user change log (`syncer_change`) is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistorySettings {
    /// Days a change row is kept; the daemon deletes older ones (at most once an hour).
    /// `0` keeps them forever.
    pub keep_days: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self { keep_days: 90 }
    }
}

/// How a notice is written: syncerd's own JSON, or a DingTalk group robot's markdown message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum NotifyFormat {
    #[default]
    Json,
    DingTalk,
}

impl FromStr for NotifyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "dingtalk" => Ok(Self::DingTalk),
            other => Err(format!(
                "unknown notice format `{other}` (expected json or dingtalk)"
            )),
        }
    }
}

/// `[notify]`: a webhook told when a daemon run fails, is held or is partial, and when a
/// failing syncer recovers. Off while `webhook_url` is unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NotifySettings {
    /// Where notices are POSTed. A secret: a DingTalk robot's URL carries its `access_token`
    /// (and other services put their token in the path), so only its scheme and host are shown.
    pub webhook_url: Option<Secret>,
    /// Path of a file holding `webhook_url` (wins over `webhook_url` when set).
    pub webhook_url_file: Option<PathBuf>,
    pub format: NotifyFormat,
    /// The signing secret (`SEC…`) of a DingTalk robot with "sign" security (dingtalk only).
    pub secret: Option<Secret>,
    /// Path of a file holding `secret` (wins over `secret` when set).
    pub secret_file: Option<PathBuf>,
    /// Longest one POST may take, connecting included.
    #[serde(with = "text::duration_text")]
    pub timeout: Duration,
    /// Further attempts after a POST that failed in a way worth repeating (no answer, a
    /// timeout, 429, 5xx, DingTalk's "sent too fast").
    pub retries: u32,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_url_file: None,
            format: NotifyFormat::Json,
            secret: None,
            secret_file: None,
            timeout: Duration::from_secs(5),
            retries: 1,
        }
    }
}

/// Most attempts a notice gets after its first (`notify.retries`).
pub const MAX_NOTIFY_RETRIES: u32 = 5;

impl NotifySettings {
    /// Rejects values that cannot work; the message never holds the URL or the secret.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if let Some(url) = &self.webhook_url
            && let Err(problem) = webhook_url_problem(url.expose())
        {
            return invalid(format!(
                "notify.webhook_url (not shown: it may hold a token) {problem} \
                 (SYNCERD_NOTIFY__WEBHOOK_URL)"
            ));
        }
        if self.secret.is_some() && self.format != NotifyFormat::DingTalk {
            return invalid(
                "notify.secret signs DingTalk robot messages: set notify.format = \"dingtalk\" \
                 or unset notify.secret"
                    .into(),
            );
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return invalid("notify.timeout must be between 100ms and 60s".into());
        }
        if self.retries > MAX_NOTIFY_RETRIES {
            return invalid(format!(
                "notify.retries must be at most {MAX_NOTIFY_RETRIES}"
            ));
        }
        Ok(())
    }
}

/// Why `url` cannot be a webhook, in words that do not quote it.
fn webhook_url_problem(url: &str) -> Result<(), &'static str> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|_| "is not a URL (expected https://HOST/PATH?QUERY)")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must start with https:// or http://");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

/// A configuration that cannot be used. The message names the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("config file {path} is not valid TOML or has a bad value: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read {key} from file {path}: {source}")]
    SecretFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Something in the configuration that is accepted but probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub String);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `--config FILE`; when `None`, the first of [`DEFAULT_CONFIG_PATHS`] that exists is used.
    pub file: Option<PathBuf>,
    /// Environment variables to read (normally `std::env::vars()`); tests pass their own.
    pub env: Vec<(String, String)>,
    /// Values from CLI flags, as `("database.url", "sqlite://x.db")`; the last layer.
    pub overrides: Vec<(String, String)>,
}

impl ConfigSources {
    /// The process environment and the given config file.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            overrides: Vec::new(),
        }
    }
}

/// The loaded settings, the file they came from and what looked wrong.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub settings: Settings,
    pub file: Option<PathBuf>,
    pub warnings: Vec<ConfigWarning>,
}

impl Settings {
    /// Loads and validates the configuration from its layers.
    pub fn load(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
        let file = match &sources.file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::MissingFile { path: path.clone() });
            }
            Some(path) => Some(path.clone()),
            None => DEFAULT_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
        };

        // The default database URL goes in as text: `DatabaseUrl` serializes to a description.
        let mut figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Serialized::default("database.url", DEFAULT_DATABASE_URL));
        if let Some(path) = &file {
            // Parse the file up front so a syntax error names the file, line and column.
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::BadFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::BadFile {
                path: path.clone(),
                message: e.to_string().trim().to_owned(),
            })?;
            figment = figment.merge(Typed::new(Toml::file_exact(path)));
        }
        figment = figment.merge(Typed::new(EnvText::new(&sources.env)));
        figment = figment.merge(Typed::new(FlagOverrides(sources.overrides.clone())));

        let warnings = unknown_key_warnings(&figment);
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| describe_figment_error(e, file.as_deref()))?;
        settings.resolve_secret_files()?;
        settings.validate()?;
        Ok(LoadedConfig {
            settings,
            file,
            warnings,
        })
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        for secret in SECRET_KEYS {
            if let Some(path) = (secret.file)(self).map(Path::to_path_buf) {
                let value = read_secret_file(secret.file_key, &path)?;
                (secret.set)(self, value);
            }
        }
        for value in [
            &mut self.http.admin_token,
            &mut self.notify.webhook_url,
            &mut self.notify.secret,
        ] {
            if value.as_ref().is_some_and(Secret::is_empty) {
                *value = None;
            }
        }
        Ok(())
    }

    /// Rejects values that cannot work, naming the key and what would.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.database.url.engine().is_none() {
            return invalid(
                "database.url (not shown: it may hold a password) is not a sqlite://, mysql:// \
                 or postgres:// URL (SYNCERD_DATABASE__URL)"
                    .to_owned(),
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections must be at least 1".into());
        }
        if let Some(problem) = crate::db::table_prefix_problem(&self.database.table_prefix) {
            return invalid(format!(
                "database.table_prefix `{}` cannot be used: {problem} (it must equal Casdoor's \
                 tableNamePrefix; SYNCERD_DATABASE__TABLE_PREFIX)",
                self.database.table_prefix.escape_default()
            ));
        }
        if !(self.dingtalk.api_base.starts_with("http://")
            || self.dingtalk.api_base.starts_with("https://"))
        {
            return invalid(format!(
                "dingtalk.api_base `{}` must start with http:// or https://",
                redact_url(&self.dingtalk.api_base)
            ));
        }
        if !(self.dingtalk.open_api_base.starts_with("http://")
            || self.dingtalk.open_api_base.starts_with("https://"))
        {
            return invalid(format!(
                "dingtalk.open_api_base `{}` must start with http:// or https://",
                redact_url(&self.dingtalk.open_api_base)
            ));
        }
        if self.stream.coalesce_window > Duration::from_secs(60)
            || self.stream.retry_interval.is_zero()
        {
            return invalid(
                "stream.coalesce_window must be at most 60s and stream.retry_interval more than 0"
                    .into(),
            );
        }
        if self.dingtalk.qps_per_api == 0 {
            return invalid(
                "dingtalk.qps_per_api must be at least 1 (DingTalk allows 20 per API per app)"
                    .into(),
            );
        }
        if self.dingtalk.max_concurrency == 0 {
            return invalid("dingtalk.max_concurrency must be at least 1".into());
        }
        if self.dingtalk.max_attempts == 0 {
            return invalid("dingtalk.max_attempts must be at least 1".into());
        }
        if self.dingtalk.request_timeout.is_zero() {
            return invalid("dingtalk.request_timeout must be more than 0".into());
        }
        if self.dingtalk.max_response_bytes < 1024 {
            return invalid("dingtalk.max_response_bytes must be at least 1024".into());
        }
        if self.dingtalk.max_pages_per_department == 0 {
            return invalid("dingtalk.max_pages_per_department must be at least 1".into());
        }
        if self.dingtalk.max_departments == 0 {
            return invalid("dingtalk.max_departments must be at least 1".into());
        }
        if self.dingtalk.fetch_timeout.is_zero() {
            return invalid("dingtalk.fetch_timeout must be more than 0".into());
        }
        if self.scheduler.max_concurrent_runs == 0 {
            return invalid("scheduler.max_concurrent_runs must be at least 1".into());
        }
        if self.scheduler.reload_interval.is_zero() {
            return invalid("scheduler.reload_interval must be more than 0".into());
        }
        if self.sync.batch_size == 0 || self.sync.batch_size > 10_000 {
            return invalid("sync.batch_size must be between 1 and 10000".into());
        }
        if !(0.0..=100.0).contains(&self.sync.max_removal_percent) {
            return invalid("sync.max_removal_percent must be between 0 and 100".into());
        }
        if let Some(name) = self
            .sync
            .adopt_only
            .iter()
            .find(|n| n.trim().is_empty() || n.chars().count() > 255)
        {
            return invalid(format!(
                "sync.adopt_only holds {name:?}; list Casdoor user names (1 to 255 characters)"
            ));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(format!(
                "http.listen `{}` is not an address like 127.0.0.1:9464",
                self.http.listen
            ));
        }
        if self.http.header_read_timeout.is_zero() || self.http.idle_timeout.is_zero() {
            return invalid(
                "http.header_read_timeout and http.idle_timeout must be more than 0".into(),
            );
        }
        if self.http.session_lifetime < Duration::from_secs(60) {
            return invalid("http.session_lifetime must be at least 1 minute".into());
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections must be at least 1".into());
        }
        self.notify.validate()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid(format!(
                "log.level `{}` is not a valid filter (try info, debug or info,syncerd=debug)",
                self.log.level
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, with every secret and URL password redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

/// A key whose value is a secret: never shown (in `config show`, errors or reload lines), and
/// read from the file its `*_file` twin names when that is set.
struct SecretKey {
    key: &'static str,
    file_key: &'static str,
    value: fn(&Settings) -> Option<&str>,
    file: fn(&Settings) -> Option<&Path>,
    set: fn(&mut Settings, String),
}

const SECRET_KEYS: &[SecretKey] = &[
    SecretKey {
        key: "database.url",
        file_key: "database.url_file",
        value: |s| Some(s.database.url.expose()),
        file: |s| s.database.url_file.as_deref(),
        set: |s, v| s.database.url = DatabaseUrl::new(v),
    },
    SecretKey {
        key: "http.admin_token",
        file_key: "http.admin_token_file",
        value: |s| s.http.admin_token.as_ref().map(Secret::expose),
        file: |s| s.http.admin_token_file.as_deref(),
        set: |s, v| s.http.admin_token = Some(Secret::new(v)),
    },
    SecretKey {
        key: "notify.webhook_url",
        file_key: "notify.webhook_url_file",
        value: |s| s.notify.webhook_url.as_ref().map(Secret::expose),
        file: |s| s.notify.webhook_url_file.as_deref(),
        set: |s, v| s.notify.webhook_url = Some(Secret::new(v)),
    },
    SecretKey {
        key: "notify.secret",
        file_key: "notify.secret_file",
        value: |s| s.notify.secret.as_ref().map(Secret::expose),
        file: |s| s.notify.secret_file.as_deref(),
        set: |s, v| s.notify.secret = Some(Secret::new(v)),
    },
];

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|s| s.key == key)
}

fn read_secret_file(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(sources: &ConfigSources) -> LoadedConfig {
        match Settings::load(sources) {
            Ok(c) => c,
            Err(e) => panic!("config should load: {e}"),
        }
    }

    fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = load(&ConfigSources::default());
        let s = c.settings;
        assert_eq!(s.database.url.expose(), "sqlite://syncerd.db?mode=rwc");
        assert_eq!(s.dingtalk.api_base, "https://oapi.dingtalk.com");
        assert_eq!(s.dingtalk.qps_per_api, 15);
        assert_eq!(s.dingtalk.max_concurrency, 8);
        assert_eq!(s.dingtalk.request_timeout, Duration::from_secs(30));
        assert_eq!(s.scheduler.reload_interval, Duration::from_secs(5));
        assert_eq!(s.scheduler.max_concurrent_runs, 4);
        assert_eq!(s.scheduler.min_interval, Duration::from_secs(30));
        assert_eq!(s.scheduler.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.sync.batch_size, 500);
        assert_eq!(s.sync.leaver_policy, LeaverPolicy::Forbid);
        assert_eq!(s.http.listen, "127.0.0.1:9464");
        assert_eq!(s.http.admin_token, None);
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = write_file(
            &dir,
            "s.toml",
            "[dingtalk]\nqps_per_api = 10\nmax_concurrency = 3\napi_base = \"http://file\"\n[sync]\nbatch_size = 7\n",
        );
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[
                ("SYNCERD_DINGTALK__QPS_PER_API", "12"),
                ("SYNCERD_DINGTALK__API_BASE", "http://env"),
            ]),
            overrides: vec![("dingtalk.api_base".into(), "http://flag".into())],
        };
        let s = load(&sources).settings;
        assert_eq!(s.dingtalk.api_base, "http://flag");
        assert_eq!(s.dingtalk.qps_per_api, 12);
        assert_eq!(s.dingtalk.max_concurrency, 3);
        assert_eq!(s.sync.batch_size, 7);
        assert_eq!(s.scheduler.max_concurrent_runs, 4);
    }

    #[test]
    fn env_values_keep_leading_zeros_and_durations_accept_units() {
        let sources = ConfigSources {
            env: env(&[
                ("SYNCERD_HTTP__ADMIN_TOKEN", "00123"),
                ("SYNCERD_SCHEDULER__RELOAD_INTERVAL", "500ms"),
                ("SYNCERD_SCHEDULER__SHUTDOWN_GRACE", "2m"),
                ("SYNCERD_SCHEDULER__MIN_INTERVAL", "45"),
                ("SYNCERD_SCHEDULER__ACCEPTED_TYPES", "DingTalk, dingtalk-v2"),
                ("SYNCERD_SYNC__LEAVER_POLICY", "Delete"),
            ]),
            ..Default::default()
        };
        let s = load(&sources).settings;
        assert_eq!(
            s.http.admin_token.as_ref().map(Secret::expose),
            Some("00123")
        );
        assert_eq!(s.scheduler.reload_interval, Duration::from_millis(500));
        assert_eq!(s.scheduler.shutdown_grace, Duration::from_secs(120));
        assert_eq!(s.scheduler.min_interval, Duration::from_secs(45));
        assert_eq!(s.scheduler.accepted_types, vec!["DingTalk", "dingtalk-v2"]);
        assert_eq!(s.sync.leaver_policy, LeaverPolicy::Delete);
    }

    #[test]
    fn file_variants_read_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = write_file(&dir, "url", "mysql://syncerd:s3cr3t-pw@db:3306/casdoor\n");
        let token = write_file(&dir, "token", "tok-from-file\n");
        let sources = ConfigSources {
            env: env(&[
                ("SYNCERD_DATABASE__URL_FILE", url.to_string_lossy().as_ref()),
                (
                    "SYNCERD_HTTP__ADMIN_TOKEN_FILE",
                    token.to_string_lossy().as_ref(),
                ),
            ]),
            ..Default::default()
        };
        let s = load(&sources).settings;
        assert_eq!(
            s.database.url.expose(),
            "mysql://syncerd:s3cr3t-pw@db:3306/casdoor"
        );
        assert_eq!(
            s.http.admin_token.as_ref().map(Secret::expose),
            Some("tok-from-file")
        );
        let missing = ConfigSources {
            env: env(&[("SYNCERD_HTTP__ADMIN_TOKEN_FILE", "/nonexistent/token")]),
            ..Default::default()
        };
        let err = Settings::load(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("http.admin_token_file") && err.contains("/nonexistent/token"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_warn_with_their_source() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = write_file(&dir, "s.toml", "[dingtalk]\nqps = 3\n[colour]\nx = 1\n");
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[
                ("SYNCERD_SYNC__BATCHSIZE", "3"),
                ("SYNCERD_TEST_MYSQL_URL", "mysql://x"),
                ("OTHER", "1"),
            ]),
            overrides: vec![],
        };
        let c = load(&sources);
        let text: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text.iter()
                .any(|w| w.contains("`dingtalk.qps`") && w.contains("TOML")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|w| w.contains("`colour.x`") && w.contains("no [colour] section")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|w| w.contains("SYNCERD_SYNC__BATCHSIZE")),
            "{text:?}"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_variable() {
        let sources = ConfigSources {
            env: env(&[("SYNCERD_DINGTALK__QPS_PER_API", "fast")]),
            ..Default::default()
        };
        let err = Settings::load(&sources)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("dingtalk.qps_per_api") && err.contains("SYNCERD_DINGTALK__QPS_PER_API"),
            "{err}"
        );

        let sources = ConfigSources {
            env: env(&[("SYNCERD_DATABASE__URL", "oracle://scott:tiger@x")]),
            ..Default::default()
        };
        let err = Settings::load(&sources)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("database.url") && !err.contains("tiger"),
            "{err}"
        );
    }

    #[test]
    fn adoption_allow_list_and_removal_allowance_load_and_are_checked() {
        let s = load(&ConfigSources::default()).settings;
        assert_eq!(
            (s.sync.adopt_only.len(), s.sync.min_removals_allowed),
            (0, 3)
        );
        let sources = ConfigSources {
            env: env(&[
                ("SYNCERD_SYNC__ADOPT_ONLY", "ops-admin, 张三"),
                ("SYNCERD_SYNC__MIN_REMOVALS_ALLOWED", "0"),
            ]),
            ..Default::default()
        };
        let s = load(&sources).settings;
        assert_eq!(s.sync.adopt_only, ["ops-admin", "张三"]);
        assert_eq!(s.sync.min_removals_allowed, 0);

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = write_file(&dir, "s.toml", "[sync]\nadopt_only = [\"ops\", \" \"]\n");
        let err = Settings::load(&ConfigSources {
            file: Some(file),
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("sync.adopt_only"), "{err}");
    }

    #[test]
    fn broken_toml_names_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = write_file(&dir, "broken.toml", "[dingtalk\nqps_per_api = 3\n");
        let sources = ConfigSources {
            file: Some(file.clone()),
            ..Default::default()
        };
        let err = Settings::load(&sources)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(&file.display().to_string()), "{err}");
        let missing = ConfigSources {
            file: Some(dir.path().join("nope.toml")),
            ..Default::default()
        };
        assert!(matches!(
            Settings::load(&missing),
            Err(ConfigError::MissingFile { .. })
        ));
    }

    #[test]
    fn redacted_toml_hides_passwords_and_tokens() {
        let sources = ConfigSources {
            env: env(&[
                (
                    "SYNCERD_DATABASE__URL",
                    "postgres://syncerd:Pg-Pa55@db/casdoor",
                ),
                ("SYNCERD_HTTP__ADMIN_TOKEN", "admin-tok-xyz"),
            ]),
            ..Default::default()
        };
        let s = load(&sources).settings;
        let text = s.to_redacted_toml();
        assert!(!text.contains("Pg-Pa55"), "{text}");
        assert!(!text.contains("admin-tok-xyz"), "{text}");
        assert!(
            text.contains("url = \"PostgreSQL database `casdoor` on db:5432\""),
            "{text}"
        );
        assert!(
            !text.contains("syncerd:"),
            "the user name is not shown: {text}"
        );
        assert!(!format!("{s:?}").contains("Pg-Pa55"));
    }

    #[test]
    fn database_urls_print_as_engine_host_port_and_database_only() {
        let shown = |url: &str| DatabaseUrl::new(url).to_string();
        assert_eq!(
            shown("mysql://u:pw@db.local:3307/casdoor?ssl-mode=required&Password=x"),
            "MySQL/MariaDB database `casdoor` on db.local:3307"
        );
        assert_eq!(
            shown("postgresql://u@[::1]/casdoor"),
            "PostgreSQL database `casdoor` on [::1]:5432"
        );
        assert_eq!(
            shown("sqlite:///var/lib/syncerd/x.db?mode=rwc"),
            "SQLite database /var/lib/syncerd/x.db"
        );
        // Reserved characters in a password: the authority ends early, so part of the password
        // would pass for the host or port. Hidden instead.
        for url in [
            "mysql://u:Sup3r#Secret@host/db",
            "mysql://u:Sup/3r@host/db",
            "mysql://u:Sup?3r@host/db",
            "mysql://Sup3rSecret#@host/db",
            "postgres://u:pw@host:notaport/db",
            "oracle://scott:tiger@db/orcl",
        ] {
            let text = shown(url);
            assert!(
                text.ends_with(UNPARSEABLE_DATABASE_URL),
                "{url} showed as {text}"
            );
            assert!(!text.contains("Sup") && !text.contains("tiger"), "{text}");
        }
    }

    #[test]
    fn text_in_any_layer_becomes_the_kind_of_the_default() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = write_file(
            &dir,
            "s.toml",
            "[sync]\nbatch_size = \"7\"\nadopt_existing = \"yes\"\nmax_removal_percent = \"12.5\"\n\
             leaver_policy = \"KEEP\"\n[scheduler]\nreload_interval = 2\naccepted_types = \"A, B\"\n\
             [database]\ntable_prefix = 7\n",
        );
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[("SYNCERD_SYNC__LOWERCASE_NAMES", "On")]),
            overrides: vec![("dingtalk.max_attempts".into(), "3".into())],
        };
        let s = load(&sources).settings;
        assert_eq!(s.sync.batch_size, 7);
        assert!(s.sync.adopt_existing && s.sync.lowercase_names);
        assert_eq!(s.sync.max_removal_percent, 12.5);
        assert_eq!(s.sync.leaver_policy, LeaverPolicy::Keep);
        assert_eq!(s.scheduler.reload_interval, Duration::from_secs(2));
        assert_eq!(s.scheduler.accepted_types, ["A", "B"]);
        assert_eq!(s.database.table_prefix, "7");
        assert_eq!(s.dingtalk.max_attempts, 3);
    }

    #[test]
    fn text_that_is_not_the_kind_of_its_key_is_refused_with_the_key_and_variable() {
        let error = |pairs: &[(&str, &str)]| {
            Settings::load(&ConfigSources {
                env: env(pairs),
                ..Default::default()
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert_eq!(
            error(&[("SYNCERD_SYNC__BATCH_SIZE", "many")]),
            "invalid configuration: sync.batch_size (from environment variable \
             SYNCERD_SYNC__BATCH_SIZE): `many` is not a valid number: invalid digit found in string"
        );
        assert!(
            error(&[("SYNCERD_SYNC__ADOPT_EXISTING", "Perhaps")])
                .ends_with("SYNCERD_SYNC__ADOPT_EXISTING): `perhaps` is not true or false")
        );
        assert!(
            error(&[("SYNCERD_LOG__FORMAT", "xml")])
                .ends_with("unknown log format `xml` (expected text or json)")
        );
        assert!(
            error(&[("SYNCERD_HTTP__IDLE_TIMEOUT", "soon")])
                .contains("`soon` is not a duration (examples: 30s, 500ms, 5m, 2h)")
        );
    }

    #[test]
    fn known_keys_include_the_keys_unset_by_default() {
        let keys = known_keys();
        for key in [
            "database.url_file",
            "http.admin_token",
            "http.admin_token_file",
            "log.dir",
            "sync.batch_size",
        ] {
            assert!(keys.contains(key), "{key}: {keys:?}");
        }
    }

    #[test]
    fn reload_applies_the_live_keys_and_names_the_others_without_their_secrets() {
        let running = Settings::default();
        let mut new = Settings::default();
        new.log.level = "debug".into();
        new.scheduler.reload_interval = Duration::from_millis(300);
        new.scheduler.claimed_syncers = vec!["a".into(), "b".into()];
        new.http.admin_token = Some(Secret::new("new-admin-token-0123456789"));
        new.sync.batch_size = 7;
        new.database.url = DatabaseUrl::new("mysql://u:Secret-pw@db/casdoor");
        new.log.format = LogFormat::Json;

        let reload = running.reload(&new);
        let applied: Vec<String> = reload.applied.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            applied,
            [
                "http.admin_token changed",
                "log.level info → debug",
                "scheduler.claimed_syncers (none) → a,b",
                "scheduler.reload_interval 5s → 300ms",
            ]
        );
        assert_eq!(
            reload.needs_restart,
            ["database.url", "log.format", "sync.batch_size"]
        );
        assert!(!format!("{reload:?}").contains("Secret-pw"));
        assert!(!format!("{reload:?}").contains("new-admin-token"));
        let next = &reload.next;
        assert_eq!(
            (next.log.level.as_str(), next.scheduler.reload_interval),
            ("debug", Duration::from_millis(300))
        );
        assert_eq!(next.http.admin_token, new.http.admin_token);
        assert_eq!(
            (next.sync.batch_size, next.log.format),
            (500, LogFormat::Text)
        );
        assert_eq!(next.database.url, running.database.url);
        // The restart keys keep their running value, so the next reload warns again.
        assert_eq!(next.reload(&new).needs_restart, reload.needs_restart);
        assert!(next.reload(&new).applied.is_empty());
    }

    #[test]
    fn notify_loads_from_the_environment_and_files_and_never_shows_the_url() {
        let url = "https://oapi.dingtalk.com/robot/send?access_token=Robot-Tok-4242";
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let secret = write_file(&dir, "sign", "SEC-sign-secret-77\n");
        let sources = ConfigSources {
            env: env(&[
                ("SYNCERD_NOTIFY__WEBHOOK_URL", url),
                ("SYNCERD_NOTIFY__FORMAT", "DingTalk"),
                (
                    "SYNCERD_NOTIFY__SECRET_FILE",
                    secret.to_string_lossy().as_ref(),
                ),
                ("SYNCERD_NOTIFY__TIMEOUT", "2s"),
                ("SYNCERD_NOTIFY__RETRIES", "3"),
            ]),
            ..Default::default()
        };
        let c = load(&sources);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let n = &c.settings.notify;
        assert_eq!(n.webhook_url.as_ref().map(Secret::expose), Some(url));
        assert_eq!(n.format, NotifyFormat::DingTalk);
        assert_eq!(
            n.secret.as_ref().map(Secret::expose),
            Some("SEC-sign-secret-77")
        );
        assert_eq!((n.timeout, n.retries), (Duration::from_secs(2), 3));
        let shown = format!("{}{:?}", c.settings.to_redacted_toml(), c.settings);
        assert!(
            !shown.contains("Robot-Tok") && !shown.contains("SEC-sign"),
            "{shown}"
        );

        let defaults = load(&ConfigSources::default()).settings.notify;
        assert_eq!(defaults, NotifySettings::default());
        assert_eq!(defaults.webhook_url, None);
        assert_eq!(
            (defaults.timeout, defaults.retries),
            (Duration::from_secs(5), 1)
        );
        // An empty value turns notices off (for example to override a file in the environment).
        let off = load(&ConfigSources {
            env: env(&[("SYNCERD_NOTIFY__WEBHOOK_URL", "")]),
            ..Default::default()
        });
        assert_eq!(off.settings.notify.webhook_url, None);
    }

    #[test]
    fn unusable_notify_settings_are_refused_without_quoting_the_url() {
        let error = |pairs: &[(&str, &str)]| {
            Settings::load(&ConfigSources {
                env: env(pairs),
                ..Default::default()
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        for (url, problem) in [
            (
                "ftp://hooks.example.com/x?access_token=Tok-1",
                "must start with https://",
            ),
            ("hooks.example.com/robot?access_token=Tok-1", "is not a URL"),
            (
                "mailto:ops@example.com?token=Tok-1",
                "must start with https://",
            ),
        ] {
            let text = error(&[("SYNCERD_NOTIFY__WEBHOOK_URL", url)]);
            assert!(
                text.contains("notify.webhook_url") && text.contains(problem),
                "{url}: {text}"
            );
            assert!(!text.contains("Tok-1"), "{text}");
        }
        let url = ("SYNCERD_NOTIFY__WEBHOOK_URL", "https://h.example/x");
        assert!(
            error(&[url, ("SYNCERD_NOTIFY__SECRET", "SEC-1")])
                .contains("notify.secret signs DingTalk robot messages")
        );
        assert!(
            error(&[url, ("SYNCERD_NOTIFY__FORMAT", "slack")])
                .ends_with("unknown notice format `slack` (expected json or dingtalk)")
        );
        assert!(error(&[url, ("SYNCERD_NOTIFY__TIMEOUT", "0s")]).contains("notify.timeout"));
        assert!(error(&[url, ("SYNCERD_NOTIFY__RETRIES", "9")]).contains("notify.retries"));
    }

    #[test]
    fn notify_settings_apply_on_reload_and_the_url_change_is_named_without_it() {
        let running = Settings::default();
        let mut new = Settings::default();
        new.notify.webhook_url = Some(Secret::new("https://h.example/x?access_token=Tok-9"));
        new.notify.format = NotifyFormat::DingTalk;
        new.notify.secret = Some(Secret::new("SEC-reload"));
        let reload = running.reload(&new);
        let applied: Vec<String> = reload.applied.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            applied,
            [
                "notify.format json → dingtalk",
                "notify.secret changed",
                "notify.webhook_url changed",
            ]
        );
        assert!(
            reload.needs_restart.is_empty(),
            "{:?}",
            reload.needs_restart
        );
        assert_eq!(reload.next.notify, new.notify);
        let shown = format!("{reload:?}");
        assert!(
            !shown.contains("Tok-9") && !shown.contains("SEC-reload"),
            "{shown}"
        );
    }

    #[test]
    fn durations_parse_and_render() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }
}
