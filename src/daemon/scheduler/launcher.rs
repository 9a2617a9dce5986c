//! The launcher side of the scheduler: the per-syncer single-flight guard, the process-wide
//! run limit (`scheduler.max_concurrent_runs`), and the run task, which reads the row fresh,
//! validates it and hands it to [`crate::launch::launch`] (lease, renewal, release).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::reconcile::runs_scheduled;
use crate::daemon::metrics::{SkipReason, unix_seconds_now};
use crate::daemon::notices::Finished;
use crate::daemon::{RunRequest, RunSummary};
use crate::db::{self, RunStatus, RunTrigger};
use crate::dingtalk::Targets;
use crate::launch::{LaunchError, bounded, launch};
use crate::syncer::ValidSyncer;

/// One lock per syncer: held by its run for the run's whole life, so a tick finds it taken
/// while a run goes (a slow tick must not overlap the next one).
#[derive(Default)]
pub(crate) struct Guards(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Guards {
    fn of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The guard of `name`, unless a run holds it.
    pub(crate) fn try_take(&self, name: &str) -> Option<OwnedMutexGuard<()>> {
        self.of(name).try_lock_owned().ok()
    }

    /// The guard of `name`, once the run holding it (if any) has ended.
    pub(crate) async fn take(&self, name: &str) -> OwnedMutexGuard<()> {
        self.of(name).lock_owned().await
    }

    /// Whether a run of `name` is going in this process.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.of(name).try_lock().is_err()
    }
}

/// `scheduler.max_concurrent_runs` as a semaphore whose size follows reloads. A lowered limit
/// takes the free permits at once and the held ones as their runs end.
pub(crate) struct RunLimit {
    semaphore: Arc<Semaphore>,
    /// (the limit, permits in existence: free plus held)
    sizes: Mutex<(usize, usize)>,
}

impl RunLimit {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(RunLimit {
            semaphore: Arc::new(Semaphore::new(limit)),
            sizes: Mutex::new((limit, limit)),
        })
    }

    pub(crate) fn set(&self, limit: usize) {
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let (wanted, existing) = &mut *sizes;
        *wanted = limit;
        if *existing < limit {
            self.semaphore.add_permits(limit - *existing);
            *existing = limit;
        } else {
            *existing -= self.semaphore.forget_permits(*existing - limit);
        }
    }

    /// Waits for a permit; `None` once the semaphore is closed.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Option<RunPermit> {
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        Some(self.wrap(permit))
    }

    fn wrap(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> RunPermit {
        RunPermit {
            permit: Some(permit),
            limit: self.clone(),
        }
    }

    #[cfg(test)]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<RunPermit> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.wrap(permit))
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// A slot of the run limit; given back (or forgotten, when the limit was lowered meanwhile)
/// when dropped, whichever way the run task ends.
pub(crate) struct RunPermit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<RunLimit>,
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        let mut sizes = self.limit.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let (wanted, existing) = &mut *sizes;
        if let Some(permit) = self.permit.take()
            && *existing > *wanted
        {
            permit.forget();
            *existing -= 1;
        }
    }
}

/// The row of `name` as it is now, if it may still run: present, enabled (for a scheduled
/// tick) and valid.
async fn fresh_syncer(shared: &Shared, name: &str, trigger: RunTrigger) -> Option<ValidSyncer> {
    let db = shared.db()?;
    let read = bounded(
        shared.live().db_timeout,
        "reading the syncer row",
        db::get_syncer(db, name),
    )
    .await;
    let row = match read {
        Ok(Some(row)) => row,
        Ok(None) => {
            tracing::debug!("syncer {name}: gone before its run started");
            return None;
        }
        Err(e) => {
            tracing::warn!("syncer {name}: {trigger} run not started: {e}");
            return None;
        }
    };
    if trigger.needs_enabled() && !runs_scheduled(&row, &shared.live().claimed) {
        tracing::debug!("syncer {name}: disabled before its run started");
        return None;
    }
    match row.validate_for_schedule() {
        Ok(valid) => Some(valid),
        Err(_) => {
            tracing::debug!("syncer {name}: its row became invalid before the run started");
            None
        }
    }
}

/// What a trigger asks of a run.
pub(crate) struct Order {
    pub trigger: RunTrigger,
    /// The users and departments of DingTalk events; `None`: a full run.
    pub targets: Option<Targets>,
    /// Removals past the limits are approved for this run.
    pub allow_removals: bool,
    /// Told the run's summary when it ends (dropped unanswered when no run started).
    pub done: Option<oneshot::Sender<RunSummary>>,
}

/// One run of one syncer, holding its single-flight guard for its whole life.
pub(crate) async fn run_task(
    shared: Arc<Shared>,
    name: String,
    order: Order,
    _guard: OwnedMutexGuard<()>,
    cancel: CancellationToken,
) {
    let Order {
        trigger,
        targets,
        allow_removals,
        done,
    } = order;
    let _permit = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        permit = shared.run_limit().acquire() => match permit {
            Some(permit) => permit,
            None => return,
        },
    };
    let Some(syncer) = fresh_syncer(&shared, &name, trigger).await else {
        return;
    };
    let Some(db) = shared.db().cloned() else {
        return;
    };
    let holder = shared.holder();
    let started = Instant::now();
    // The run is a task of its own, so a panic in it ends that task only; its result (or
    // panic) is read here.
    let request = RunRequest {
        syncer: syncer.clone(),
        trigger,
        cancel: cancel.clone(),
        instance: holder.instance.clone(),
        db: db.clone(),
        targets,
        allow_removals,
    };
    let work = async {
        shared.metrics.run_started();
        tracing::info!("syncer {name}: {trigger} run starting");
        let run = shared.tracker().spawn((shared.run_fn())(request));
        let summary = match run.await {
            Ok(summary) => summary,
            Err(e) => {
                tracing::error!("syncer {name}: the run failed ({e}); the daemon goes on");
                RunSummary::bare(
                    RunStatus::Failed,
                    started.elapsed(),
                    Some("the run panicked or was aborted; see the syncerd log".into()),
                )
            }
        };
        shared.metrics.run_ended();
        summary
    };
    let summary = match launch(&db, &syncer, &holder, &cancel, work).await {
        Ok(summary) => summary,
        Err(LaunchError::Busy { .. }) => {
            shared.metrics.record_skip(&name, SkipReason::Lease);
            tracing::debug!("syncer {name}: {trigger} tick skipped: another instance runs it");
            return;
        }
        Err(e) => {
            tracing::warn!("syncer {name}: {trigger} run not started: {e}");
            return;
        }
    };
    shared
        .metrics
        .record_run(&name, &summary, unix_seconds_now());
    log_run(&name, trigger, &summary);
    shared.record_last_run(&name, &summary).await;
    let finished = Finished {
        syncer: name.clone(),
        organization: syncer.organization.clone(),
        trigger,
        summary: summary.clone(),
        finished_at: chrono::Utc::now(),
    };
    shared.notices().after_run(&shared.metrics, finished);
    if let Some(done) = done {
        // The asker may have stopped waiting (shutdown): nothing to tell then.
        let _ = done.send(summary);
    }
}

/// One line per finished run: info when it succeeded, a warning otherwise.
fn log_run(name: &str, trigger: RunTrigger, summary: &RunSummary) {
    let run = summary
        .run_id
        .map(|id| format!("run {id}"))
        .unwrap_or_else(|| "run".to_owned());
    let message = summary
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let c = &summary.counts;
    let line = format!(
        "syncer {name}: {trigger} {run} {} in {:.1} s (created {}, updated {}, forbidden {}, \
         deleted {}, {} DingTalk calls){message}",
        summary.status,
        summary.duration.as_secs_f64(),
        c.created,
        c.updated,
        c.forbidden,
        c.deleted,
        summary.api_calls,
    );
    match summary.status {
        RunStatus::Succeeded | RunStatus::Running => tracing::info!("{line}"),
        _ => tracing::warn!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn lowering_the_run_limit_takes_effect_as_running_runs_end() {
        let limit = RunLimit::new(3);
        let mut held: Vec<RunPermit> = (0..3).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(held.len(), 3);
        limit.set(1);
        assert_eq!(limit.available(), 0);
        held.truncate(1);
        assert_eq!(limit.available(), 0, "two runs ended: forgotten");
        held.clear();
        assert_eq!(limit.available(), 1);
        limit.set(2);
        assert_eq!(limit.available(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_single_flight_guard_skips_a_tick_while_a_run_holds_it() {
        let guards = Arc::new(Guards::default());
        let held = guards.try_take("acme");
        assert!(held.is_some());
        let run = tokio::spawn(async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(90)).await;
        });
        // Ticks during the run find the guard taken.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(30)).await;
            if !run.is_finished() {
                assert!(guards.try_take("acme").is_none());
                assert!(guards.is_running("acme"));
            }
        }
        let _ = run.await;
        assert!(guards.try_take("acme").is_some());
    }
}
