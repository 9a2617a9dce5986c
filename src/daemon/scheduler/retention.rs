//! Retention: at most once per [`PRUNE_EVERY`], the reconcile pass deletes `syncer_change` rows
//! older than `history.keep_days` and DingTalk events finished more than [`EVENT_RETENTION`] ago
//! from the inbox (`syncer_event`; pending events are never pruned).
//!
//! `syncer_run` rows are kept: the daemon reads a syncer's last runs (its first complete run
//! before streaming, health), and a syncer idle for longer than the retention would lose the run
//! that says it was ever synced whole.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::db::Db;
use crate::db::changes::prune_older_than;
use crate::db::inbox::prune_events;
use crate::db::leases::epoch_millis;
use crate::launch::bounded;

/// How often the change log and the event inbox are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long finished events stay in the inbox (for `syncer_event` readers and late duplicates).
pub(crate) const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// When this process last pruned.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    pruned: Mutex<Option<Instant>>,
}

/// Whether a prune is due: never pruned, or the last one [`PRUNE_EVERY`] ago.
fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY)
}

impl Retention {
    /// Deletes the change rows older than `keep_days` (0: none) and the finished events older
    /// than [`EVENT_RETENTION`], at most once per [`PRUNE_EVERY`]. A failure is logged and tried
    /// again an hour later.
    pub(crate) async fn prune(&self, db: &Db, keep_days: u32, db_timeout: Duration) {
        {
            let mut pruned = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if !due(*pruned, now) {
                return;
            }
            *pruned = Some(now);
        }
        prune_inbox(db, db_timeout).await;
        if keep_days == 0 {
            return;
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

/// Deletes the events applied, ignored or held more than [`EVENT_RETENTION`] ago.
async fn prune_inbox(db: &Db, db_timeout: Duration) {
    let keep_ms = i64::try_from(EVENT_RETENTION.as_millis()).unwrap_or(i64::MAX);
    let before = epoch_millis().saturating_sub(keep_ms);
    match bounded(
        db_timeout,
        "pruning the event inbox",
        prune_events(db, before),
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!("pruned {n} finished DingTalk events from the inbox"),
        Err(e) => tracing::warn!("pruning the event inbox (syncer_event) failed: {e}"),
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
