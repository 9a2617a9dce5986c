//! Where the daemon stands: readiness for `/readyz`, and the [`Snapshot`] of every syncer that
//! the admin API shows. The HTTP layer reads the scheduler through these two only.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::reconcile::Desired;
use crate::daemon::RunSummary;
use crate::db::Db;

/// What readiness is made of.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub db_problem: Option<String>,
    pub scheduler_running: bool,
    pub last_reconcile: Option<(Instant, Result<usize, String>)>,
    failing_since: Option<Instant>,
    last_failure_log: Option<Instant>,
}

impl Health {
    /// Not ready until the database answers.
    pub(crate) fn connecting() -> Self {
        Health {
            db_problem: Some("connecting to the database".into()),
            ..Health::default()
        }
    }

    /// `Ok(summary)` when ready, else why not (one line). A pass is stale after three reload
    /// intervals and one database timeout.
    pub(crate) fn readiness(
        &self,
        reload_interval: Duration,
        db_timeout: Duration,
    ) -> Result<String, String> {
        if let Some(problem) = &self.db_problem {
            return Err(format!("database not available: {problem}"));
        }
        if !self.scheduler_running {
            return Err("the job scheduler is not running".into());
        }
        let Some((at, result)) = &self.last_reconcile else {
            return Err("the first pass over the syncer table has not finished yet".into());
        };
        let stale_after = reload_interval.saturating_mul(3) + db_timeout;
        if at.elapsed() > stale_after {
            return Err(format!(
                "no pass over the syncer table for {:?} (expected every {:?})",
                at.elapsed(),
                reload_interval
            ));
        }
        match result {
            Ok(scheduled) => Ok(format!("ready: {scheduled} syncer(s) scheduled")),
            // The error may quote the driver, which can name the database user; /readyz
            // answers anyone, and the log has it.
            Err(_) => Err("the last pass over the syncer table failed (the log says why)".into()),
        }
    }

    /// Records a pass; logs every failure at first, then once a minute while they last.
    pub(crate) fn record_reconcile(&mut self, result: &Result<usize, String>) {
        let now = Instant::now();
        match result {
            Ok(_) => {
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        "the syncer table can be read again (after {:?})",
                        since.elapsed()
                    );
                }
                self.last_failure_log = None;
            }
            Err(e) => {
                self.failing_since.get_or_insert(now);
                let quiet = self
                    .last_failure_log
                    .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
                if quiet {
                    tracing::debug!("reconcile failed again: {e}");
                } else {
                    tracing::warn!("reconcile failed (retrying every pass): {e}");
                    self.last_failure_log = Some(now);
                }
            }
        }
        self.last_reconcile = Some((now, result.clone()));
    }
}

/// The last run this process saw of a syncer.
#[derive(Debug, Clone)]
pub(crate) struct LastRun {
    pub summary: RunSummary,
    pub finished_at: DateTime<Utc>,
}

/// One syncer as the scheduler sees it.
#[derive(Debug, Clone)]
pub(crate) struct SyncerState {
    pub name: String,
    pub organization: String,
    pub enabled: bool,
    /// `sync_interval` as stored.
    pub configured_interval: i32,
    /// Between runs, after the `scheduler.min_interval` floor.
    pub interval: Duration,
    pub desired: Desired,
    /// A repeating job is in place.
    pub scheduled: bool,
    pub next_run: Option<DateTime<Utc>>,
    /// A run is going in this process.
    pub running: bool,
    pub last_run: Option<LastRun>,
    /// Its DingTalk event stream in this process (`connected since …`, `reconnecting since …`),
    /// `None` when it has none here.
    pub stream: Option<String>,
}

/// The scheduler at one instant, for the admin API.
#[derive(Clone)]
pub(crate) struct Snapshot {
    /// This process as a lease holder.
    pub instance: String,
    pub db: Option<Db>,
    pub syncers: Vec<SyncerState>,
}

impl Snapshot {
    pub(crate) fn syncer(&self, name: &str) -> Option<&SyncerState> {
        self.syncers.iter().find(|s| s.name == name)
    }
}
