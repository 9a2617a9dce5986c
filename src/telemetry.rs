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
    // sqlx's PostgreSQL URL parser warns about every query parameter it does not know, with
    // its value: `Password=...` (any case but lower) or `sslpassword=...` would be logged.
    if !level.contains("sqlx_postgres::options") {
        directives.push_str(",sqlx_postgres::options=off");
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

/// A writer of text log lines that escapes control characters inside each line, so a syncer
/// name, a DingTalk department name or a driver message holding a newline cannot forge a log
/// line of its own (or, on a terminal, an escape sequence). The formatter hands over one whole
/// line per write; only its final newline stays a newline. JSON lines need none of this: JSON
/// escapes control characters itself.
#[derive(Clone)]
struct EscapeControls<M> {
    inner: M,
    /// Keep ESC when the formatter colours the line itself.
    keep_escape: bool,
}

impl<'a, M: fmt::MakeWriter<'a>> fmt::MakeWriter<'a> for EscapeControls<M> {
    type Writer = EscapedLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapedLine {
            inner: self.inner.make_writer(),
            keep_escape: self.keep_escape,
        }
    }
}

struct EscapedLine<W> {
    inner: W,
    keep_escape: bool,
}

/// `line` with its control characters (but the trailing newline) written as `\n`, `\r`,
/// `\u{..}`; tabs stay.
fn escape_controls(line: &[u8], keep_escape: bool) -> std::borrow::Cow<'_, [u8]> {
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let text = String::from_utf8_lossy(body);
    let needs = |c: char| c.is_control() && c != '\t' && !(keep_escape && c == '\x1b');
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push_str(newline);
    std::borrow::Cow::Owned(out.into_bytes())
}

impl<W: std::io::Write> std::io::Write for EscapedLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner
            .write_all(&escape_controls(buf, self.keep_escape))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;
/// The output layers (stderr, files) under the level filter.
type Outputs = Layered<Vec<BoxedLayer>, Registry>;

fn stderr_layer(format: LogFormat) -> BoxedLayer {
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal() && !under_journald;
    let base = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let escaped = |keep_escape| EscapeControls {
        inner: std::io::stderr,
        keep_escape,
    };
    match (format, under_journald) {
        (LogFormat::Json, _) => base
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        (LogFormat::Text, true) => base
            .with_writer(escaped(false))
            .without_time()
            .with_ansi(false)
            .boxed(),
        (LogFormat::Text, false) => base.with_writer(escaped(ansi)).with_ansi(ansi).boxed(),
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
    let base = fmt::layer().with_ansi(false).with_target(false);
    let layer = match settings.format {
        LogFormat::Json => base
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => base
            .with_writer(EscapeControls {
                inner: writer,
                keep_escape: false,
            })
            .boxed(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_inside_a_line_are_escaped_and_the_line_end_stays() {
        let line = "INFO syncer a\nFAKE LINE\r\x07 x\tok\n".as_bytes();
        let out = String::from_utf8(escape_controls(line, false).into_owned()).unwrap_or_default();
        assert_eq!(out, "INFO syncer a\\nFAKE LINE\\r\\u{7} x\tok\n");
        assert_eq!(out.lines().count(), 1);
        let coloured = "\x1b[32mINFO\x1b[0m plain\n".as_bytes();
        assert_eq!(escape_controls(coloured, true).as_ref(), coloured);
        assert!(!escape_controls(coloured, false).contains(&0x1b));
    }
}
