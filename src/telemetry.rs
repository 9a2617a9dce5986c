//! Logging setup: human-readable or JSON lines on stderr, and optionally rotating files.
//!
//! Under systemd (`JOURNAL_STREAM` set) journald stamps every line itself, so text lines on
//! stderr carry no timestamp of their own. `RUST_LOG`, when set, overrides `log.level`. SQL
//! statement logging of sqlx and HTTP-internals logging are kept at `warn` unless named
//! explicitly. With `log.dir` set, the same lines also go to `syncerd.YYYY-MM-DD[-HH].log` files
//! there, rotated daily or hourly, `log.max_files` kept, written by a background thread; keep the
//! returned [`LogGuard`] alive until the process ends so the last lines are flushed.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::OnceLock;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{self, Rotation};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::{LogFormat, LogRotation, LogSettings};

/// The filter used for `level`, with noisy dependencies quietened unless named explicitly.
pub fn filter_for(level: &str) -> EnvFilter {
    let mut directives = level.to_owned();
    for noisy in [
        "sqlx",
        "sea_orm",
        "hyper",
        "hyper_util",
        "reqwest",
        "h2",
        "rustls",
        "axum",
    ] {
        if !level.contains(noisy) {
            directives.push_str(&format!(",{noisy}=warn"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Why logging could not be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot write log files to log.dir {dir}: {message}")]
    LogDir { dir: String, message: String },
}

/// Keeps the log file writer alive: dropping it flushes the last lines.
pub struct LogGuard {
    _file_writer: Option<WorkerGuard>,
}

/// The reload handle of the installed subscriber's level filter, set by [`init`].
static LEVEL: OnceLock<reload::Handle<EnvFilter, Outputs>> = OnceLock::new();

/// Switches the log filter of the running process to `level` (the daemon's SIGHUP). Fails with
/// a message when `RUST_LOG` is set (it wins over `log.level`), when `level` is not a valid
/// filter, or when [`init`] did not install the subscriber.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and wins over log.level; unset it to change the level".into());
    }
    EnvFilter::try_new(level).map_err(|e| format!("`{level}` is not a valid log filter: {e}"))?;
    let handle = LEVEL
        .get()
        .ok_or_else(|| "logging was not set up by syncerd".to_owned())?;
    handle.reload(filter_for(level)).map_err(|e| e.to_string())
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;
/// The output layers (stderr, files) under the level filter.
type Outputs = Layered<Vec<BoxedLayer>, Registry>;

fn stderr_layer(format: LogFormat) -> BoxedLayer {
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal() && !under_journald;
    let base = fmt::layer().with_writer(std::io::stderr).with_target(false);
    match (format, under_journald) {
        (LogFormat::Json, _) => base
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        (LogFormat::Text, true) => base.without_time().with_ansi(false).boxed(),
        (LogFormat::Text, false) => base.with_ansi(ansi).boxed(),
    }
}

fn file_layer(
    settings: &LogSettings,
    dir: &Path,
) -> Result<(BoxedLayer, WorkerGuard), TelemetryError> {
    let err = |message: String| TelemetryError::LogDir {
        dir: dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let rotation = match settings.rotation {
        LogRotation::Daily => Rotation::DAILY,
        LogRotation::Hourly => Rotation::HOURLY,
    };
    let appender = rolling::Builder::new()
        .rotation(rotation)
        .filename_prefix("syncerd")
        .filename_suffix("log")
        .max_log_files(settings.max_files.max(1))
        .build(dir)
        .map_err(|e| err(e.to_string()))?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let base = fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false);
    let layer = match settings.format {
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => base.boxed(),
    };
    Ok((layer, guard))
}

/// Installs the global subscriber. A second call (tests) keeps the first subscriber.
pub fn init(settings: &LogSettings) -> Result<LogGuard, TelemetryError> {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.level.clone());
    let mut layers: Vec<BoxedLayer> = vec![stderr_layer(settings.format)];
    let mut guard = None;
    if let Some(dir) = &settings.dir {
        let (layer, g) = file_layer(settings, dir)?;
        layers.push(layer);
        guard = Some(g);
    }
    let outputs = tracing_subscriber::registry().with(layers);
    let (filter, handle) = reload::Layer::new(filter_for(&level));
    if outputs.with(filter).try_init().is_ok() {
        let _ = LEVEL.set(handle);
    }
    Ok(LogGuard {
        _file_writer: guard,
    })
}
