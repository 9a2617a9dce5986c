//! The job table: one repeating job per scheduled syncer, plus a pending "run soon" one-shot
//! after a start or a change. A job is a task that sleeps until its next tick and then starts
//! the tick function in a task of its own; what a tick does (single flight, run limit, lease)
//! is the launcher's business.
//!
//! Each job sleeps on its own timer, so an idle daemon is woken only when a job is due.
//! (tokio-cron-scheduler, used before, woke every 500 ms to list every job's next tick: most of
//! an idle daemon's CPU with 50 syncers.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reconcile::{MAX_START_JITTER, start_jitter};
use crate::launch::random_u64;

/// The body of a job: makes one tick of one syncer.
pub(crate) type TickFn = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One job's task. Dropping it stops the job (a tick already started goes on).
#[derive(Debug)]
pub(crate) struct Job {
    task: AbortHandle,
    /// When the job ticks next; `None` once a one-shot has ticked.
    next: Arc<Mutex<Option<Instant>>>,
}

impl Job {
    fn next(&self) -> Option<Instant> {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The jobs of one syncer.
#[derive(Debug, Default)]
pub(crate) struct SyncerJobs {
    /// The repeating job, while the syncer is scheduled.
    pub every: Option<Job>,
    /// The pending "run soon" one-shot, if any.
    pub soon: Option<Job>,
}

impl SyncerJobs {
    /// The earlier of the repeating job's next tick and a pending first run.
    pub(crate) fn next_run(&self) -> Option<DateTime<Utc>> {
        let next = [&self.every, &self.soon]
            .into_iter()
            .flatten()
            .filter_map(Job::next)
            .min()?;
        let wait = next.saturating_duration_since(Instant::now());
        Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero()))
    }
}

/// The daemon's jobs: started once, stopped at shutdown.
pub(crate) struct JobTable {
    started: AtomicBool,
    /// Cancelled by [`JobTable::stop`]: no job ticks after it.
    stop: CancellationToken,
}

impl JobTable {
    pub(crate) fn new() -> Self {
        JobTable {
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// Marks the table started; later calls do nothing. Returns whether this call started it.
    pub(crate) fn start(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }

    /// Stops every job: none ticks after this returns.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Replaces the repeating job of syncer `name` with one every `interval`, first ticking one
    /// `interval` from now; with `run_soon`, also ticks once after a short jitter. `tick` makes
    /// each job's body. Returns whether the repeating job is in place.
    pub(crate) fn schedule(
        &self,
        name: &str,
        jobs: &mut SyncerJobs,
        interval: Duration,
        run_soon: bool,
        tick: impl Fn() -> TickFn,
    ) -> bool {
        jobs.every = None;
        if self.stop.is_cancelled() {
            tracing::debug!("syncer {name}: not scheduled: the daemon is stopping");
            return false;
        }
        // A zero interval would spin (`effective_interval` floors at 1 s already).
        let interval = interval.max(Duration::from_secs(1));
        jobs.every = Some(self.spawn(Instant::now() + interval, Some(interval), tick()));
        if run_soon {
            let delay = start_jitter(random_u64(), MAX_START_JITTER);
            jobs.soon = Some(self.spawn(Instant::now() + delay, None, tick()));
        }
        true
    }

    /// Removes a syncer's jobs; returns whether there was a repeating job.
    pub(crate) fn remove(&self, jobs: &mut SyncerJobs) -> bool {
        jobs.soon = None;
        jobs.every.take().is_some()
    }

    /// A task that ticks at `first`, then every `every` (once when `None`).
    fn spawn(&self, first: Instant, every: Option<Duration>, tick: TickFn) -> Job {
        let next = Arc::new(Mutex::new(Some(first)));
        let shown = next.clone();
        let stop = self.stop.clone();
        let task = tokio::spawn(async move {
            let mut due = first;
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
                // A tick of its own, so a slow one delays no later tick: the launcher finds
                // the syncer's run still going and skips.
                tokio::spawn(tick());
                let following = every.map(|every| {
                    // Behind by more than an interval (a stalled runtime): tick once, not
                    // once per missed interval.
                    let now = Instant::now();
                    if due + every > now {
                        due + every
                    } else {
                        now + every
                    }
                });
                *shown.lock().unwrap_or_else(|e| e.into_inner()) = following;
                match following {
                    Some(at) => due = at,
                    None => break,
                }
            }
        });
        Job {
            task: task.abort_handle(),
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn counting(count: &Arc<AtomicUsize>) -> impl Fn() -> TickFn + use<> {
        let count = count.clone();
        move || {
            let count = count.clone();
            Box::new(move || {
                let count = count.clone();
                Box::pin(async move {
                    count.fetch_add(1, Ordering::SeqCst);
                })
            })
        }
    }

    /// Lets the spawned tick tasks run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_ticks_every_interval_from_one_interval_on_and_stops_when_removed() {
        let table = JobTable::new();
        assert!(table.start());
        assert!(!table.start());
        let count = Arc::new(AtomicUsize::new(0));
        let mut jobs = SyncerJobs::default();
        let scheduled_at = Utc::now();
        assert!(table.schedule(
            "acme",
            &mut jobs,
            Duration::from_secs(60),
            false,
            counting(&count)
        ));
        let next = jobs.next_run().unwrap();
        assert!(
            (next - scheduled_at).num_seconds() >= 59,
            "{next} vs {scheduled_at}"
        );

        tokio::time::sleep(Duration::from_secs(59)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(120)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 3);

        assert!(table.remove(&mut jobs));
        assert!(!table.remove(&mut jobs));
        assert!(jobs.next_run().is_none());
        tokio::time::sleep(Duration::from_secs(600)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn run_soon_ticks_once_within_the_jitter_and_stop_silences_every_job() {
        let table = JobTable::new();
        let count = Arc::new(AtomicUsize::new(0));
        let mut jobs = SyncerJobs::default();
        assert!(table.schedule(
            "acme",
            &mut jobs,
            Duration::from_secs(3600),
            true,
            counting(&count)
        ));
        tokio::time::sleep(MAX_START_JITTER + Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(jobs.soon.as_ref().is_some_and(|job| job.next().is_none()));
        let next = jobs.next_run().unwrap();
        assert!(next > Utc::now() + chrono::Duration::seconds(3000));

        // Rescheduling replaces the repeating job: the old one never ticks.
        assert!(table.schedule(
            "acme",
            &mut jobs,
            Duration::from_secs(10),
            false,
            counting(&count)
        ));
        tokio::time::sleep(Duration::from_secs(25)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 3);

        table.stop();
        tokio::time::sleep(Duration::from_secs(100)).await;
        settle().await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert!(!table.schedule(
            "acme",
            &mut jobs,
            Duration::from_secs(10),
            true,
            counting(&count)
        ));
        assert!(jobs.every.is_none());
    }
}
