//! The job table: one repeating tokio-cron-scheduler job per scheduled syncer, plus a pending
//! "run soon" one-shot after a start or a change. A job only calls a tick function; what a tick
//! does (single flight, run limit, lease) is the launcher's business.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use super::reconcile::{MAX_START_JITTER, start_jitter};
use crate::launch::random_u64;

/// The body of a job: one tick of one syncer.
pub(crate) type TickFn =
    Box<dyn FnMut(Uuid, JobScheduler) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The jobs of one syncer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SyncerJobs {
    /// The repeating job, while the syncer is scheduled.
    pub every: Option<Uuid>,
    /// The pending "run soon" one-shot, if any.
    pub soon: Option<Uuid>,
}

/// The daemon's job scheduler, started once.
pub(crate) struct JobTable {
    scheduler: JobScheduler,
    started: tokio::sync::Mutex<bool>,
}

impl JobTable {
    pub(crate) async fn new() -> Result<Self, JobSchedulerError> {
        Ok(JobTable {
            scheduler: JobScheduler::new().await?,
            started: tokio::sync::Mutex::new(false),
        })
    }

    /// Starts the job scheduler once; later calls do nothing. Returns whether this call
    /// started it.
    pub(crate) async fn start(&self) -> Result<bool, JobSchedulerError> {
        let mut started = self.started.lock().await;
        if *started {
            return Ok(false);
        }
        self.scheduler.start().await?;
        *started = true;
        Ok(true)
    }

    pub(crate) async fn stop(&self) {
        let mut scheduler = self.scheduler.clone();
        match tokio::time::timeout(Duration::from_secs(5), scheduler.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("stopping the job scheduler: {e}"),
            Err(_) => tracing::warn!("the job scheduler did not stop within 5 s"),
        }
    }

    /// Replaces the repeating job of syncer `name` with one every `interval`; with `run_soon`,
    /// also runs once after a short jitter. `tick` makes each job's body. Returns whether the
    /// repeating job is in place.
    pub(crate) async fn schedule(
        &self,
        name: &str,
        jobs: &mut SyncerJobs,
        interval: Duration,
        run_soon: bool,
        tick: impl Fn() -> TickFn,
    ) -> bool {
        if let Some(id) = jobs.every.take() {
            self.remove_job(name, id).await;
        }
        match Job::new_repeated_async(interval, tick()) {
            Ok(job) => match self.scheduler.add(job).await {
                Ok(id) => jobs.every = Some(id),
                Err(e) => {
                    tracing::error!("syncer {name}: cannot add its job: {e}; retrying next pass");
                    return false;
                }
            },
            Err(e) => {
                tracing::error!("syncer {name}: cannot create its job: {e}");
                return false;
            }
        }
        if run_soon {
            if let Some(id) = jobs.soon.take() {
                self.remove_job(name, id).await;
            }
            let delay = start_jitter(random_u64(), MAX_START_JITTER);
            match Job::new_one_shot_async(delay, tick()) {
                Ok(job) => match self.scheduler.add(job).await {
                    Ok(id) => jobs.soon = Some(id),
                    Err(e) => tracing::warn!("syncer {name}: cannot add its first run: {e}"),
                },
                Err(e) => tracing::warn!("syncer {name}: cannot create its first run: {e}"),
            }
        }
        true
    }

    /// Removes the jobs of syncer `name`; returns whether there was a repeating job.
    pub(crate) async fn remove(&self, name: &str, jobs: &mut SyncerJobs) -> bool {
        if let Some(id) = jobs.soon.take() {
            self.remove_job(name, id).await;
        }
        match jobs.every.take() {
            Some(id) => {
                self.remove_job(name, id).await;
                true
            }
            None => false,
        }
    }

    async fn remove_job(&self, name: &str, id: Uuid) {
        if let Err(e) = self.scheduler.remove(&id).await {
            tracing::debug!("syncer {name}: removing job {id}: {e}");
        }
    }

    /// The earlier of the repeating job's next tick and a pending first run, each looked up
    /// within `limit`.
    pub(crate) async fn next_run(
        &self,
        jobs: SyncerJobs,
        limit: Duration,
    ) -> Option<DateTime<Utc>> {
        let mut scheduler = self.scheduler.clone();
        let mut next: Option<DateTime<Utc>> = None;
        for id in [jobs.every, jobs.soon].into_iter().flatten() {
            let tick = tokio::time::timeout(limit, scheduler.next_tick_for_job(id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            next = match (next, tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }
}
