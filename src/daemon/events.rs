//! From the event inbox to runs: the applier of one syncer's DingTalk Stream events.
//!
//! The stream client stores each event in `syncer_event` and wakes the applier. The applier
//! waits a short window so that a burst (a reorganization, a mass leave) becomes one run, reads
//! the syncer's pending events, and asks for one targeted run of the users and departments they
//! name. Events that ask nothing of a sync are marked `ignored` at once; the others are marked
//! `applied` by the run that applied them, or `held` by a run the removal limits held (the full
//! run that the operator approves finds those leavers without them). A run that failed leaves
//! them pending and the applier tries again after a pause (the interval run remains the
//! backstop). Pending events
//! left by a previous process are applied when the applier starts.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::inbox::{EventState, InboxEvent, finish_events, pending_events};
use crate::db::leases::epoch_millis;
use crate::db::{Db, RunStatus};
use crate::launch::bounded;

use super::RunSummary;

/// Events read for one targeted run at most; the rest wait for the next.
pub const EVENTS_PER_RUN: u64 = 5_000;

/// The inbox's event type for a leaver DingTalk's leave records list (not a DingTalk event:
/// the stream's catch-up stores one per record, see `stream::catchup`).
pub const LEAVE_RECORD_EVENT: &str = "syncerd_leave_record";

/// The event types syncerd acts on, and what each names.
const USER_EVENTS: [&str; 5] = [
    "user_add_org",
    "user_modify_org",
    "user_leave_org",
    "user_active_org",
    LEAVE_RECORD_EVENT,
];
const DEPARTMENT_EVENTS: [&str; 3] = ["org_dept_create", "org_dept_modify", "org_dept_remove"];

/// What a set of pending events asks of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBatch {
    pub user_ids: BTreeSet<String>,
    pub dept_ids: BTreeSet<i64>,
    /// The events the run applies.
    pub acted_on: Vec<String>,
    /// When each of them was born in DingTalk (epoch milliseconds; when it was stored if
    /// DingTalk did not say).
    pub born_at: Vec<i64>,
    /// Events of types syncerd does not act on (admin changes, labels, ...).
    pub ignored: Vec<String>,
}

impl EventBatch {
    /// Sorts `events` into what a run must look up and what needs nothing.
    pub fn of(events: &[InboxEvent]) -> Self {
        let mut batch = EventBatch::default();
        for e in events {
            let is_user = USER_EVENTS.contains(&e.event_type.as_str());
            let is_dept = DEPARTMENT_EVENTS.contains(&e.event_type.as_str());
            if !is_user && !is_dept {
                batch.ignored.push(e.event_id.clone());
                continue;
            }
            if is_user {
                batch.user_ids.extend(e.user_ids.iter().cloned());
            } else {
                batch.dept_ids.extend(e.dept_ids.iter().copied());
            }
            batch.acted_on.push(e.event_id.clone());
            batch.born_at.push(e.born_at.unwrap_or(e.received_at));
        }
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty() && self.dept_ids.is_empty()
    }
}

/// How the applier paces itself.
#[derive(Debug, Clone, Copy)]
pub struct ApplierTiming {
    /// How long a burst is gathered before its run starts.
    pub coalesce: Duration,
    /// How long to wait after a run that did not apply its events (failed, held, busy).
    pub retry: Duration,
    /// Bound of each inbox statement.
    pub db_timeout: Duration,
}

/// Applies the pending events of `syncer` until `cancel`, waking on `wake`. `run` starts one
/// targeted run for a batch and answers its summary, or `None` when no run could start (another
/// run of the syncer is going, the daemon is stopping). `applied` learns the birth times
/// (epoch milliseconds) of the events each run applied.
pub async fn apply_events<R, F>(
    db: Db,
    syncer: String,
    wake: Arc<Notify>,
    timing: ApplierTiming,
    cancel: CancellationToken,
    run: R,
    applied: impl Fn(&[i64]),
) where
    R: Fn(EventBatch) -> F,
    F: Future<Output = Option<RunSummary>>,
{
    // Whatever a previous process stored and did not apply goes first.
    let mut due = true;
    loop {
        if !due {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
            }
        }
        // Gather the burst.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(timing.coalesce) => {}
        }
        due = match apply_pending(&db, &syncer, timing, &run, &applied).await {
            Round::Drained => false,
            Round::More => true,
            Round::Retry => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(timing.retry) => {}
                }
                true
            }
        };
    }
}

/// What one round of the applier achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Nothing is pending any more (as far as this round read).
    Drained,
    /// A full read was applied: more may be waiting.
    More,
    /// The events stay pending: try again later.
    Retry,
}

async fn apply_pending<R, F>(
    db: &Db,
    syncer: &str,
    timing: ApplierTiming,
    run: &R,
    report: &impl Fn(&[i64]),
) -> Round
where
    R: Fn(EventBatch) -> F,
    F: Future<Output = Option<RunSummary>>,
{
    let read = bounded(
        timing.db_timeout,
        "reading the pending events",
        pending_events(db, syncer, EVENTS_PER_RUN),
    )
    .await;
    let pending = match read {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!("syncer {syncer}: reading its pending events failed: {e}");
            return Round::Retry;
        }
    };
    if pending.is_empty() {
        return Round::Drained;
    }
    let full_read = pending.len() as u64 >= EVENTS_PER_RUN;
    let batch = EventBatch::of(&pending);
    drop(pending);
    if !batch.ignored.is_empty() {
        finish(
            db,
            syncer,
            &batch.ignored,
            EventState::Ignored,
            None,
            timing,
        )
        .await;
    }
    if batch.is_empty() {
        return if full_read {
            Round::More
        } else {
            Round::Drained
        };
    }
    let (acted_on, born_at) = (batch.acted_on.clone(), batch.born_at.clone());
    let (users, departments) = (batch.user_ids.len(), batch.dept_ids.len());
    tracing::info!(
        "syncer {syncer}: applying {} events ({users} users, {departments} departments)",
        acted_on.len()
    );
    let Some(summary) = run(batch).await else {
        return Round::Retry;
    };
    let state = match summary.status {
        status if run_applied(status) => EventState::Applied,
        // The leavers wait for the operator (raise the limit, or `syncerd sync NAME
        // --allow-removals`), and whatever approves them is a full run, which finds them
        // without these events: looking them up again every retry would only repeat the hold.
        RunStatus::Held => {
            tracing::warn!(
                "syncer {syncer}: the event run was held (too many leavers); its {} events are \
                 set aside and the leavers wait for an approved full run",
                acted_on.len()
            );
            EventState::Held
        }
        status => {
            tracing::warn!(
                "syncer {syncer}: the event run ended {status}; its {} events stay pending",
                acted_on.len()
            );
            return Round::Retry;
        }
    };
    let finished = finish(db, syncer, &acted_on, state, summary.run_id, timing).await;
    if finished && state == EventState::Applied {
        report(&born_at);
    }
    match (finished, full_read) {
        (false, _) => Round::Retry,
        (true, true) => Round::More,
        (true, false) => Round::Drained,
    }
}

/// Whether a run with `status` applied the events it was given. A partial run applied every
/// record it could; the ones it reported failed are retried by the next full run.
fn run_applied(status: RunStatus) -> bool {
    matches!(status, RunStatus::Succeeded | RunStatus::Partial)
}

async fn finish(
    db: &Db,
    syncer: &str,
    ids: &[String],
    state: EventState,
    run_id: Option<i64>,
    timing: ApplierTiming,
) -> bool {
    let marked = bounded(
        timing.db_timeout,
        "marking the events",
        finish_events(db, syncer, ids, state, run_id, epoch_millis()),
    )
    .await;
    match marked {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                "syncer {syncer}: marking its events {} failed: {e}",
                state.as_str()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, kind: &str, users: &[&str], depts: &[i64]) -> InboxEvent {
        InboxEvent {
            syncer_name: "acme".into(),
            event_id: id.into(),
            event_type: kind.into(),
            user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            dept_ids: depts.to_vec(),
            born_at: None,
            received_at: 0,
        }
    }

    #[test]
    fn a_batch_merges_the_ids_of_its_events_and_sets_aside_the_ones_it_ignores() {
        let batch = EventBatch::of(&[
            event("1", "user_modify_org", &["a", "b"], &[]),
            event("2", "user_leave_org", &["b", "c"], &[]),
            event("3", "org_admin_add", &["a"], &[]),
            event("4", "org_dept_remove", &[], &[7, 1]),
            // A user event's department ids are not departments that changed.
            event("5", "user_add_org", &["d"], &[9]),
        ]);
        assert_eq!(
            batch
                .user_ids
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(batch.dept_ids.iter().copied().collect::<Vec<_>>(), [1, 7]);
        assert_eq!(batch.acted_on, ["1", "2", "4", "5"]);
        assert_eq!(batch.ignored, ["3"]);
        assert!(EventBatch::of(&[event("6", "label_user_change", &["a"], &[])]).is_empty());
    }

    #[test]
    fn only_runs_that_applied_their_records_finish_events() {
        assert!(run_applied(RunStatus::Succeeded));
        assert!(run_applied(RunStatus::Partial));
        for status in [
            RunStatus::Failed,
            RunStatus::Held,
            RunStatus::Interrupted,
            RunStatus::Running,
        ] {
            assert!(!run_applied(status), "{status}");
        }
    }
}
