//! Signals as control events, and waiting for the database with back-off.
//!
//! SIGTERM and SIGINT ask for a graceful stop (a second one during the stop exits at once);
//! SIGHUP asks for a configuration reload and an immediate reconcile. Tests drive the same
//! daemon through a channel instead of real signals.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::DatabaseSettings;
use crate::db::{self, Db, DbError};

use super::scheduler::Shared;

/// What the outside world asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop gracefully; the text names the cause (`SIGTERM`).
    Shutdown(&'static str),
    /// Re-read the configuration and reconcile now.
    Reload,
}

/// Where control events come from.
pub enum ControlSource {
    /// SIGTERM, SIGINT and SIGHUP of this process.
    Signals(Box<OsSignals>),
    /// A channel (tests, embedding); a closed channel means stop.
    Channel(mpsc::Receiver<Control>),
}

/// The process signals the daemon listens to.
pub struct OsSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl ControlSource {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP (needs a tokio runtime).
    pub fn os_signals() -> std::io::Result<Self> {
        Ok(ControlSource::Signals(Box::new(OsSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })))
    }

    /// The next event; `None` when no more can come.
    pub async fn recv(&mut self) -> Option<Control> {
        match self {
            ControlSource::Channel(rx) => rx.recv().await,
            ControlSource::Signals(s) => tokio::select! {
                Some(()) = s.term.recv() => Some(Control::Shutdown("SIGTERM")),
                Some(()) = s.int.recv() => Some(Control::Shutdown("SIGINT")),
                Some(()) = s.hup.recv() => Some(Control::Reload),
                else => None,
            },
        }
    }
}

/// Why the daemon is stopping, for logs.
pub struct StopCause(&'static str);

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Waits for the next stop request, ignoring reloads (used while connecting and while draining).
pub(crate) async fn next_stop(control: &mut ControlSource) -> StopCause {
    loop {
        match control.recv().await {
            Some(Control::Shutdown(why)) => return StopCause(why),
            Some(Control::Reload) => {
                tracing::info!("reload requested while not scheduling: ignored");
            }
            None => {
                // A closed channel never yields again; signals never close. Either way: stop.
                return StopCause("control channel closed");
            }
        }
    }
}

/// First wait before retrying the database.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between two database attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait after failed attempt number `attempt` (0-based): doubling from [`BACKOFF_START`],
/// capped at [`BACKOFF_MAX`].
pub fn backoff_delay(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(2_u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_MAX)
}

/// Connects to the database and checks its schema, retrying with back-off for as long as it
/// takes; each failure is logged at warn and summed up by `/readyz`. `/readyz` answers anyone,
/// so its summary names the engine only: the log line, for the operator, also names the host
/// and database (never the URL), and the driver's message, which may name the user.
pub(crate) async fn connect_with_backoff(settings: &DatabaseSettings, shared: &Arc<Shared>) -> Db {
    let mut attempt = 0_u32;
    let engine = settings
        .url
        .engine()
        .map_or_else(|| "configured".to_owned(), |e| e.to_string());
    loop {
        let (problem, probe) = match db::connect(settings).await {
            Ok(db) => {
                match tokio::time::timeout(settings.connect_timeout, db::check_schema(&db)).await {
                    Ok(Ok(())) => {
                        tracing::info!(
                            "connected to the {} database {}",
                            db.engine(),
                            db.redacted_url()
                        );
                        return db;
                    }
                    Ok(Err(e)) => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), db.close()).await;
                        (
                            e.to_string(),
                            format!("the {engine} database lacks tables or columns syncerd needs"),
                        )
                    }
                    Err(_) => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), db.close()).await;
                        let took = format!(
                            "checking the schema took longer than {:?}",
                            settings.connect_timeout
                        );
                        (took.clone(), format!("the {engine} database: {took}"))
                    }
                }
            }
            Err(e) => {
                let probe = match &e {
                    DbError::Connect { .. } => format!("cannot connect to the {engine} database"),
                    DbError::ConnectTimeout { timeout, .. } => {
                        format!("no answer from the {engine} database within {timeout:?}")
                    }
                    DbError::UnsupportedUrl { .. } => {
                        "database.url names no supported database".to_owned()
                    }
                    DbError::NoDatabaseSelected { .. } => {
                        format!("the {engine} database.url names no database")
                    }
                    _ => format!("the {engine} database failed"),
                };
                (e.to_string(), probe)
            }
        };
        let wait = backoff_delay(attempt);
        tracing::warn!(
            "database not available (attempt {}): {problem}; retrying in {wait:?}",
            attempt + 1
        );
        shared.set_db_problem(format!("{probe} (the log says why)"));
        tokio::time::sleep(wait).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds_and_stays_there() {
        let waits: Vec<u64> = (0..9)
            .map(|a| backoff_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_control_channel_means_stop_and_reloads_are_skipped_while_waiting() {
        let (tx, rx) = mpsc::channel(4);
        let mut source = ControlSource::Channel(rx);
        tx.send(Control::Reload).await.unwrap_or_default();
        tx.send(Control::Shutdown("SIGTERM"))
            .await
            .unwrap_or_default();
        assert_eq!(next_stop(&mut source).await.0, "SIGTERM");
        drop(tx);
        assert_eq!(next_stop(&mut source).await.0, "control channel closed");
    }
}
