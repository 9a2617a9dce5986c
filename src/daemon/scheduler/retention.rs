//! Retention of the per-user change log: the reconcile pass deletes `syncer_change` rows older
//! than `history.keep_days`, at most once per [`PRUNE_EVERY`].
//!
//! Only the change log is pruned. `syncer_run` rows are kept: the daemon reads a syncer's last
//! runs (its first complete run before streaming, health), and a syncer idle for longer than
//! the retention would lose the run that says it was ever synced whole.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::db::Db;
use crate::db::changes::prune_older_than;
use crate::launch::bounded;

/// How often the change log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// When the change log was last pruned by this process.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    pruned: Mutex<Option<Instant>>,
}

/// Whether a prune is due: never pruned, or the last one [`PRUNE_EVERY`] ago.
fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY)
}

impl Retention {
    /// Deletes the change rows older than `keep_days` (0: none), at most once per
    /// [`PRUNE_EVERY`]. A failure is logged and tried again an hour later.
    pub(crate) async fn prune_change_log(&self, db: &Db, keep_days: u32, db_timeout: Duration) {
        if keep_days == 0 {
            return;
        }
        {
            let mut pruned = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if !due(*pruned, now) {
                return;
            }
            *pruned = Some(now);
        }
        match bounded(
            db_timeout,
            "pruning the change log",
            prune_older_than(db, keep_days, Utc::now()),
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "pruned {n} change log rows older than {keep_days} days (history.keep_days)"
            ),
            Err(e) => tracing::warn!("pruning the change log (syncer_change) failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_log_is_pruned_at_most_once_an_hour() {
        let now = Instant::now();
        assert!(due(None, now));
        assert!(!due(Some(now), now + Duration::from_secs(3599)));
        assert!(due(Some(now), now + PRUNE_EVERY));
    }
}
