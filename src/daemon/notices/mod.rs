//! Notices (`[notify]`): a webhook is told when a daemon run fails, is held or is partial, and
//! when a syncer that needed attention succeeds again.
//!
//! A run never waits for its notice. The run task hands a [`Finished`] to a bounded queue
//! ([`Notices::after_run`] never blocks; a full queue drops the notice, counts and logs it), and
//! one task ([`deliver_notices`]) takes them in order: it reads how the previous run of the same
//! kind ended from `syncer_run` (so a recovery is seen after a restart, and across replicas),
//! decides ([`message::notice_kind`]) and sends ([`deliver::Target::send`]) within
//! `notify.timeout` per attempt and `notify.retries` more attempts. `[notify]` applies on reload.

mod deliver;
mod message;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RunSummary;
use super::metrics::{Metrics, NoticeResult};
use super::scheduler::Shared;
use crate::config::NotifySettings;
use crate::db::{self, RunKind, RunStatus, RunTrigger};
use crate::launch::bounded;

use deliver::Target;
use message::{Notice, notice_kind};

/// Finished runs waiting for their notice at most; more are dropped.
const QUEUE: usize = 64;
/// Longest a stopping daemon spends on the notices still to send.
const MAX_DRAIN: Duration = Duration::from_secs(5);

/// What a finished run leaves for its notice.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub syncer: String,
    pub organization: String,
    pub trigger: RunTrigger,
    pub summary: RunSummary,
    pub finished_at: DateTime<Utc>,
}

impl Finished {
    fn needs_attention(&self) -> bool {
        matches!(
            self.summary.status,
            RunStatus::Failed | RunStatus::Held | RunStatus::Partial
        )
    }
}

/// The notices of one daemon: where they go (follows reloads) and the queue to the sender.
pub(crate) struct Notices {
    target: RwLock<Option<Arc<Target>>>,
    queue: mpsc::Sender<Finished>,
    /// Taken by [`deliver_notices`] when the daemon starts.
    inbox: Mutex<Option<mpsc::Receiver<Finished>>>,
}

impl Notices {
    pub(crate) fn new(settings: &NotifySettings) -> Notices {
        let (queue, inbox) = mpsc::channel(QUEUE);
        let notices = Notices {
            target: RwLock::new(None),
            queue,
            inbox: Mutex::new(Some(inbox)),
        };
        notices.configure(settings);
        notices
    }

    /// Takes over `[notify]` as (re)loaded. A target that cannot be built keeps the old one.
    pub(crate) fn configure(&self, settings: &NotifySettings) {
        match Target::new(settings) {
            Ok(target) => {
                *self.target.write().unwrap_or_else(|e| e.into_inner()) = target.map(Arc::new);
            }
            Err(e) => tracing::error!("notices: keeping the previous notify settings: {e}"),
        }
    }

    fn target(&self) -> Option<Arc<Target>> {
        self.target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn take_inbox(&self) -> Option<mpsc::Receiver<Finished>> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Queues the notice of a finished run, if notices are on and the run may deserve one.
    /// Never waits: with the queue full the notice is dropped, counted and logged.
    pub(crate) fn after_run(&self, metrics: &Metrics, run: Finished) {
        let may_deserve_one = matches!(
            run.summary.status,
            RunStatus::Failed | RunStatus::Held | RunStatus::Partial | RunStatus::Succeeded
        );
        if !may_deserve_one || self.target().is_none() {
            return;
        }
        match self.queue.try_send(run) {
            Ok(()) => {}
            Err(TrySendError::Full(run) | TrySendError::Closed(run)) if run.needs_attention() => {
                metrics.record_notices(NoticeResult::Dropped, 1);
                tracing::warn!(
                    "syncer {}: the notice of its {} run was dropped: {QUEUE} notices are \
                     waiting for notify.webhook_url already",
                    run.syncer,
                    run.summary.status
                );
            }
            Err(_) => {
                tracing::debug!("notices: queue full or closed, a recovery check was skipped")
            }
        }
    }
}

/// Sends the queued notices one after the other until `stop`; then gives what is queued a last
/// chance within a third of `scheduler.shutdown_grace` (5 s at most), so shutdown is not held up.
pub(crate) async fn deliver_notices(
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<Finished>,
    stop: CancellationToken,
) {
    let drain = (shared.live().shutdown_grace / 3).min(MAX_DRAIN);
    loop {
        let run = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            run = inbox.recv() => match run {
                Some(run) => run,
                None => return,
            },
        };
        let attention = run.needs_attention();
        tokio::select! {
            () = handle(&shared, run) => {}
            () = stopped_for(&stop, drain) => {
                abandon(&shared.metrics, &mut inbox, u64::from(attention));
                return;
            }
        }
    }
    inbox.close();
    let deadline = Instant::now() + drain;
    while let Some(run) = inbox.recv().await {
        let attention = run.needs_attention();
        if tokio::time::timeout_at(deadline, handle(&shared, run))
            .await
            .is_err()
        {
            abandon(&shared.metrics, &mut inbox, u64::from(attention));
            return;
        }
    }
}

/// Resolves `after` once `stop` is cancelled.
async fn stopped_for(stop: &CancellationToken, after: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(after).await;
}

/// Counts the notices a stopping daemon gives up on: `in_flight` and the queued ones that
/// needed attention.
fn abandon(metrics: &Metrics, inbox: &mut mpsc::Receiver<Finished>, in_flight: u64) {
    inbox.close();
    let mut dropped = in_flight;
    while let Ok(run) = inbox.try_recv() {
        dropped += u64::from(run.needs_attention());
    }
    if dropped > 0 {
        metrics.record_notices(NoticeResult::Dropped, dropped);
        tracing::warn!("syncerd stopped before {dropped} notice(s) could be sent");
    }
}

/// Decides and sends the notice of one finished run.
async fn handle(shared: &Shared, run: Finished) {
    let Some(target) = shared.notices().target() else {
        return;
    };
    let previous = previous_status(shared, &run).await;
    let Some(kind) = notice_kind(run.trigger, run.summary.status, previous) else {
        return;
    };
    let notice = Notice::new(kind, &run, previous, &shared.instance);
    let what = match run.summary.run_id {
        Some(id) => format!("syncer {}: the {kind} notice of run {id}", run.syncer),
        None => format!("syncer {}: the {kind} notice of its run", run.syncer),
    };
    match target.send(&notice).await {
        Ok(attempts) => {
            shared.metrics.record_notices(NoticeResult::Sent, 1);
            tracing::debug!("{what} went to {} ({attempts} attempt(s))", target.shown);
        }
        Err((e, attempts)) => {
            shared.metrics.record_notices(NoticeResult::Failed, 1);
            tracing::warn!(
                "{what} did not reach {} ({attempts} attempt(s)): {e}",
                target.shown
            );
        }
    }
}

/// How the run before `run` of its kind ended, per the run history; `None` when there is
/// none or it cannot be read (then a failure is news and a success is no recovery).
async fn previous_status(shared: &Shared, run: &Finished) -> Option<RunStatus> {
    let db = shared.db()?;
    let lookup = db::previous_status(
        db,
        &run.syncer,
        RunKind::of(run.trigger),
        run.summary.run_id,
    );
    match bounded(shared.live().db_timeout, "reading the previous run", lookup).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(
                "syncer {}: its notice goes without the previous run: {e}",
                run.syncer
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn finished(status: RunStatus) -> Finished {
        Finished {
            syncer: "dt".into(),
            organization: "acme".into(),
            trigger: RunTrigger::Schedule,
            summary: RunSummary::bare(status, Duration::from_millis(5), None),
            finished_at: Utc::now(),
        }
    }

    fn notices(url: Option<&str>) -> Notices {
        Notices::new(&NotifySettings {
            webhook_url: url.map(Secret::new),
            ..NotifySettings::default()
        })
    }

    #[test]
    fn a_full_queue_drops_notices_without_waiting_and_counts_those_that_needed_attention() {
        let n = notices(Some("http://127.0.0.1:9/hook?access_token=t"));
        let metrics = Metrics::default();
        for _ in 0..QUEUE {
            n.after_run(&metrics, finished(RunStatus::Failed));
        }
        assert_eq!(metrics.notices(NoticeResult::Dropped), 0);
        n.after_run(&metrics, finished(RunStatus::Failed));
        n.after_run(&metrics, finished(RunStatus::Held));
        // A success is only maybe a recovery: skipped, not counted.
        n.after_run(&metrics, finished(RunStatus::Succeeded));
        assert_eq!(metrics.notices(NoticeResult::Dropped), 2);
        let mut inbox = n.take_inbox().unwrap_or_else(|| panic!("the inbox"));
        assert_eq!(inbox.len(), QUEUE);
        assert!(n.take_inbox().is_none(), "one sender task");
        // Interrupted runs are never queued.
        let _ = inbox.try_recv();
        n.after_run(&metrics, finished(RunStatus::Interrupted));
        assert_eq!(inbox.len(), QUEUE - 1);
    }

    #[test]
    fn without_a_webhook_nothing_is_queued_and_a_reload_turns_notices_on_and_off() {
        let n = notices(None);
        let metrics = Metrics::default();
        n.after_run(&metrics, finished(RunStatus::Failed));
        let inbox = n.take_inbox().unwrap_or_else(|| panic!("the inbox"));
        assert_eq!(inbox.len(), 0);
        n.configure(&NotifySettings {
            webhook_url: Some(Secret::new("https://hooks.example.com/x/Tok")),
            ..NotifySettings::default()
        });
        assert_eq!(
            n.target().map(|t| t.shown.clone()).as_deref(),
            Some("https://hooks.example.com")
        );
        n.after_run(&metrics, finished(RunStatus::Failed));
        assert_eq!(inbox.len(), 1);
        n.configure(&NotifySettings::default());
        n.after_run(&metrics, finished(RunStatus::Failed));
        assert_eq!(inbox.len(), 1);
    }
}
