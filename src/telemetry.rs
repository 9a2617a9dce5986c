//! Logging setup: human-readable or JSON lines on stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) journald stamps every line itself, so text lines carry no
//! timestamp of their own. `RUST_LOG`, when set, overrides `log.level`. SQL statement logging of
//! sqlx is kept at `warn` unless asked for explicitly, because it would log every query.
//! The filter can be replaced while the process runs ([`set_level`], used by the daemon on SIGHUP).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

/// The filter used for `level`, with noisy dependencies quietened unless named explicitly.
pub fn filter_for(level: &str) -> EnvFilter {
    let mut directives = level.to_owned();
    for noisy in [
        "sqlx",
        "sea_orm",
        "hyper",
        "reqwest",
        "h2",
        "rustls",
        "tokio_cron_scheduler",
    ] {
        if !level.contains(noisy) {
            directives.push_str(&format!(",{noisy}=warn"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Replaces the filter of the installed subscriber; set by [`init`].
type FilterSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static FILTER_SETTER: OnceLock<FilterSetter> = OnceLock::new();

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
    fn keep_setter(setter: FilterSetter) {
        let _ = FILTER_SETTER.set(setter);
    }
    match (settings.format, under_journald) {
        (LogFormat::Json, _) => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.finish().try_init().is_ok() {
                keep_setter(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
        (LogFormat::Text, true) => {
            let builder = builder
                .without_time()
                .with_ansi(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.finish().try_init().is_ok() {
                keep_setter(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
        (LogFormat::Text, false) => {
            let builder = builder
                .with_timer(SystemTime)
                .with_ansi(ansi)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.finish().try_init().is_ok() {
                keep_setter(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
    }
}

/// Switches the log filter of the running process to `level` (the daemon's SIGHUP). Fails with
/// a message when `RUST_LOG` is set (it wins over `log.level`), when `level` is not a valid
/// filter, or when [`init`] did not install the subscriber.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and wins over log.level; unset it to change the level".into());
    }
    EnvFilter::try_new(level).map_err(|e| format!("`{level}` is not a valid log filter: {e}"))?;
    let setter = FILTER_SETTER
        .get()
        .ok_or_else(|| "logging was not set up by syncerd".to_owned())?;
    setter(filter_for(level))
}
