//! Keeping the jobs in step with the `syncer` table, and running syncers one at a time.
//!
//! A reconcile pass (every `scheduler.reload_interval`, and at once on SIGHUP) reads the table
//! and, per syncer of ours (`owner = 'admin'`, `type` in `scheduler.accepted_types`), compares
//! what should be (disabled / invalid with a reason / valid with a [`Fingerprint`]) with what is:
//! jobs are added, removed or rescheduled, and an invalid row is reported once per change.
//!
//! A tick (a tokio-cron-scheduler job, a "run soon" one-shot, or the admin API) calls
//! [`Shared::trigger`]: the per-syncer single-flight guard skips it while a run is going
//! (tokio-cron-scheduler would happily overlap runs), then the run task waits for one of
//! `scheduler.max_concurrent_runs` permits, takes the syncer's lease (or skips: another
//! replica runs it), calls the [`RunFn`], renews the lease while it runs and releases it after.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::leases::{
    ORPHANED_RUN_REASON, acquire_lease, epoch_millis, interrupt_orphaned_runs, release_lease,
    renew_lease,
};
use crate::db::{self, Db, RunStatus, RunTrigger, SYNCER_OWNER, SyncerRow};
use crate::pipeline::Mapping;
use crate::secret::Secret;

use super::lease::{HeldLease, LeaseTiming, Renewal};
use super::metrics::{Metrics, SkipReason, unix_seconds_now};
use super::{RunFn, RunRequest, RunSummary};

/// A newly enabled (or fixed, or re-configured) syncer runs within this much time, spread so
/// that many syncers enabled at once do not all start in the same second.
pub const MAX_START_JITTER: Duration = Duration::from_secs(3);

/// The scheduler settings that can change while the daemon runs (SIGHUP).
#[derive(Debug, Clone)]
pub(crate) struct LiveSettings {
    pub reload_interval: Duration,
    pub max_concurrent_runs: usize,
    pub min_interval: Duration,
    pub shutdown_grace: Duration,
    pub accepted_types: Vec<String>,
    /// Syncers run even while their `is_enabled` is 0 (`scheduler.claimed_syncers`).
    pub claimed: Vec<String>,
    /// Bound of every database call made by the daemon (`database.connect_timeout`).
    pub db_timeout: Duration,
    pub lease: LeaseTiming,
}

impl LiveSettings {
    fn from_settings(s: &Settings) -> Self {
        LiveSettings {
            reload_interval: s.scheduler.reload_interval.max(Duration::from_millis(50)),
            max_concurrent_runs: s.scheduler.max_concurrent_runs.max(1),
            min_interval: s.scheduler.min_interval,
            shutdown_grace: s.scheduler.shutdown_grace,
            accepted_types: s.scheduler.accepted_types.clone(),
            claimed: s.scheduler.claimed_syncers.clone(),
            db_timeout: s.database.connect_timeout.max(Duration::from_secs(1)),
            lease: LeaseTiming::for_reload_interval(s.scheduler.reload_interval),
        }
    }
}

/// Whether the daemon schedules this row: `is_enabled`, or named in `scheduler.claimed_syncers`
/// (which lets a Casdoor on the same database, which runs only enabled rows, leave it alone).
pub fn runs_scheduled(row: &SyncerRow, claimed: &[String]) -> bool {
    row.is_enabled || claimed.iter().any(|name| name == &row.name)
}

/// Why a syncer row of ours cannot be scheduled, or `Ok` when it can. The reason is
/// operator-facing and never contains the App Secret.
pub fn validate_syncer(row: &SyncerRow) -> Result<(), String> {
    if row.app_key.trim().is_empty() {
        return Err(
            "the App Key (column `user`) is empty; set it in the Casdoor syncer page".into(),
        );
    }
    if row.app_secret.expose().trim().is_empty() {
        return Err(
            "the App Secret (column `password`) is empty; set it in the Casdoor syncer page".into(),
        );
    }
    if row.organization.trim().is_empty() {
        return Err("the organization is empty; choose one in the Casdoor syncer page".into());
    }
    if row.organization.trim() == crate::db::BUILT_IN_ORGANIZATION {
        return Err(
            "the organization is `built-in`, Casdoor's administrators' organization, where every user is a global administrator; choose an organization of its own in the Casdoor syncer page"
                .into(),
        );
    }
    if row.sync_interval <= 0 {
        return Err(format!(
            "sync_interval is {}; set a positive number of seconds",
            row.sync_interval
        ));
    }
    Mapping::from_syncer(Some(&row.table_columns), &row.avatar_base_url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The interval a syncer runs at: its `sync_interval` seconds, floored at `min_interval` (in
/// whole seconds, at least 1: the job scheduler counts whole seconds). The flag says whether the
/// floor applied.
pub fn effective_interval(sync_interval: i32, min_interval: Duration) -> (Duration, bool) {
    let floor = min_interval.as_secs() + u64::from(min_interval.subsec_nanos() > 0);
    let floor = floor.max(1);
    let configured = u64::try_from(sync_interval).unwrap_or_default();
    if configured < floor {
        (Duration::from_secs(floor), true)
    } else {
        (Duration::from_secs(configured), false)
    }
}

/// What in a syncer row decides its job. Secrets enter only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub interval: Duration,
    credentials: u64,
    mapping: u64,
}

impl Fingerprint {
    pub(crate) fn of(row: &SyncerRow, interval: Duration) -> Self {
        let hash = |parts: &[&str]| {
            let mut h = DefaultHasher::new();
            parts.hash(&mut h);
            h.finish()
        };
        Fingerprint {
            interval,
            credentials: hash(&[&row.app_key, row.app_secret.expose()]),
            mapping: hash(&[&row.organization, &row.table_columns, &row.avatar_base_url]),
        }
    }

    /// Names of what changed from `old` to `self`, for the log.
    pub(crate) fn changes(&self, old: &Fingerprint) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.interval != old.interval {
            changed.push("sync_interval");
        }
        if self.credentials != old.credentials {
            changed.push("App Key/Secret");
        }
        if self.mapping != old.mapping {
            changed.push("organization/table_columns/avatar_base_url");
        }
        changed
    }
}

/// What a syncer row asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Desired {
    Disabled,
    Invalid(String),
    Valid(Fingerprint),
}

impl Desired {
    pub(crate) fn of(row: &SyncerRow, min_interval: Duration, claimed: &[String]) -> Self {
        if !runs_scheduled(row, claimed) {
            return Desired::Disabled;
        }
        match validate_syncer(row) {
            Err(reason) => Desired::Invalid(reason),
            Ok(()) => {
                let (interval, _) = effective_interval(row.sync_interval, min_interval);
                Desired::Valid(Fingerprint::of(row, interval))
            }
        }
    }
}

/// What a reconcile pass does about one syncer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    Nothing,
    /// Add the job and run soon (new, enabled, fixed).
    Start,
    /// Replace the job; run soon when credentials or mapping changed.
    Reschedule {
        run_soon: bool,
    },
    /// Remove the job (disabled).
    Stop,
    /// Remove any job; report the reason unless it was reported already.
    Invalid {
        report: bool,
    },
}

/// The step from what was (`old`, with or without a live job, reason last reported) to `new`.
pub(crate) fn transition(
    old: Option<&Desired>,
    has_job: bool,
    reported: Option<&str>,
    new: &Desired,
) -> Transition {
    match new {
        Desired::Disabled if has_job => Transition::Stop,
        Desired::Disabled => Transition::Nothing,
        Desired::Invalid(reason) => Transition::Invalid {
            report: reported != Some(reason.as_str()),
        },
        Desired::Valid(fp) => match old {
            Some(Desired::Valid(old_fp)) if has_job => {
                if old_fp == fp {
                    Transition::Nothing
                } else {
                    Transition::Reschedule {
                        run_soon: old_fp.credentials != fp.credentials
                            || old_fp.mapping != fp.mapping,
                    }
                }
            }
            _ => Transition::Start,
        },
    }
}

/// A pseudo-random number from the standard library's per-process random hash keys.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// The start delay for random value `r`: uniform over `[0, max]` in whole milliseconds.
pub fn start_jitter(r: u64, max: Duration) -> Duration {
    let span = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(r % span.saturating_add(1))
}

/// The last run this process saw of a syncer.
#[derive(Debug, Clone)]
pub(crate) struct LastRun {
    pub summary: RunSummary,
    pub finished_at: DateTime<Utc>,
}

/// One syncer row of ours, as last reconciled.
pub(crate) struct Entry {
    pub row: SyncerRow,
    pub desired: Desired,
    pub job: Option<Uuid>,
    /// The pending "run soon" one-shot, if any.
    pub soon: Option<Uuid>,
    reported: Option<String>,
    floor_warned: Option<i32>,
    pub last_run: Option<LastRun>,
}

/// Where the daemon stands, for `/readyz`.
#[derive(Debug, Default)]
struct Health {
    db_problem: Option<String>,
    scheduler_running: bool,
    last_reconcile: Option<(Instant, Result<usize, String>)>,
    failing_since: Option<Instant>,
    last_failure_log: Option<Instant>,
}

/// Why a trigger did not start a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("no enabled or disabled DingTalk syncer named `{0}` of owner admin")]
    NotFound(String),
    #[error("syncer `{name}` is not valid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("syncer `{0}` is disabled")]
    Disabled(String),
    #[error("a run of syncer `{0}` is already going in this process")]
    AlreadyRunning(String),
    /// A manual run within `scheduler.min_interval` of the syncer's last start.
    #[error(
        "syncer `{name}` started a run less than scheduler.min_interval ago; retry in {} s",
        retry_after.as_millis().div_ceil(1000).max(1)
    )]
    TooSoon { name: String, retry_after: Duration },
    #[error("syncerd is shutting down")]
    ShuttingDown,
    #[error("the database is not connected yet")]
    NotConnected,
}

/// State shared by the reconcile loop, the jobs, the run tasks and the HTTP handlers.
pub struct Shared {
    pub(crate) instance: String,
    me: Weak<Shared>,
    run_fn: RunFn,
    live: RwLock<LiveSettings>,
    db: OnceLock<Db>,
    health: std::sync::Mutex<Health>,
    pub(crate) syncers: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    guards: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    semaphore: Arc<Semaphore>,
    /// (permits the semaphore should have in all, permits to forget as runs return them)
    permits: std::sync::Mutex<(usize, usize)>,
    pub(crate) metrics: Metrics,
    pub(crate) tracker: TaskTracker,
    runs_token: CancellationToken,
    pub(crate) jobs: JobScheduler,
    jobs_started: tokio::sync::Mutex<bool>,
    reconcile_now: Notify,
    admin_token: RwLock<Option<Secret>>,
    /// When each syncer last started a run here: manual runs wait `min_interval` after it.
    last_started: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Shared {
    pub(crate) async fn new(
        settings: &Settings,
        run_fn: RunFn,
        instance: String,
        root: &CancellationToken,
    ) -> Result<Arc<Shared>, JobSchedulerError> {
        let jobs = JobScheduler::new().await?;
        let live = LiveSettings::from_settings(settings);
        let permits = live.max_concurrent_runs;
        Ok(Arc::new_cyclic(|me| Shared {
            instance,
            me: me.clone(),
            run_fn,
            live: RwLock::new(live),
            db: OnceLock::new(),
            health: std::sync::Mutex::new(Health {
                db_problem: Some("connecting to the database".into()),
                ..Health::default()
            }),
            syncers: tokio::sync::Mutex::new(BTreeMap::new()),
            guards: std::sync::Mutex::new(HashMap::new()),
            semaphore: Arc::new(Semaphore::new(permits)),
            permits: std::sync::Mutex::new((permits, 0)),
            metrics: Metrics::default(),
            tracker: TaskTracker::new(),
            runs_token: root.child_token(),
            jobs,
            jobs_started: tokio::sync::Mutex::new(false),
            reconcile_now: Notify::new(),
            admin_token: RwLock::new(settings.http.admin_token.clone()),
            last_started: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn live(&self) -> LiveSettings {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn admin_token(&self) -> Option<Secret> {
        self.admin_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn db(&self) -> Option<&Db> {
        self.db.get()
    }

    pub(crate) fn set_db(&self, db: Db) {
        let _ = self.db.set(db);
        self.health().db_problem = None;
    }

    pub(crate) fn set_db_problem(&self, problem: String) {
        self.health().db_problem = Some(problem);
        self.metrics.set_ready(false);
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the live part of reloaded settings; the next reconcile uses them.
    pub(crate) fn apply_settings(&self, settings: &Settings) {
        let live = LiveSettings::from_settings(settings);
        let wanted = live.max_concurrent_runs;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
        *self.admin_token.write().unwrap_or_else(|e| e.into_inner()) =
            settings.http.admin_token.clone();
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        let (total, debt) = &mut *permits;
        if wanted > *total {
            let mut add = wanted - *total;
            let forgiven = add.min(*debt);
            *debt -= forgiven;
            add -= forgiven;
            self.semaphore.add_permits(add);
        } else if wanted < *total {
            let cut = *total - wanted;
            let gone = self.semaphore.forget_permits(cut);
            // Permits held by running runs are forgotten as those runs end.
            *debt += cut - gone;
        }
        *total = wanted;
    }

    /// Whether the permit of a run that just ended must be forgotten (the limit was lowered
    /// while it ran).
    fn owes_permit(&self) -> bool {
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        if permits.1 > 0 {
            permits.1 -= 1;
            true
        } else {
            false
        }
    }

    /// `Ok(summary)` when ready, else why not (one line).
    pub(crate) fn readiness(&self) -> Result<String, String> {
        let live = self.live();
        let h = self.health();
        if let Some(problem) = &h.db_problem {
            return Err(format!("database not available: {problem}"));
        }
        if !h.scheduler_running {
            return Err("the job scheduler is not running".into());
        }
        let Some((at, result)) = &h.last_reconcile else {
            return Err("the first pass over the syncer table has not finished yet".into());
        };
        let stale_after = live.reload_interval.saturating_mul(3) + live.db_timeout;
        if at.elapsed() > stale_after {
            return Err(format!(
                "no pass over the syncer table for {:?} (expected every {:?})",
                at.elapsed(),
                live.reload_interval
            ));
        }
        match result {
            Ok(scheduled) => Ok(format!("ready: {scheduled} syncer(s) scheduled")),
            // The error may quote the driver, which can name the database user; /readyz
            // answers anyone, and the log has it.
            Err(_) => Err("the last pass over the syncer table failed (the log says why)".into()),
        }
    }

    pub(crate) fn reconcile_soon(&self) {
        self.reconcile_now.notify_one();
    }

    pub(crate) fn cancel_runs(&self) {
        self.runs_token.cancel();
        self.tracker.close();
    }

    /// Starts the job scheduler once; later calls do nothing.
    pub(crate) async fn start_jobs(&self) -> Result<(), JobSchedulerError> {
        let mut started = self.jobs_started.lock().await;
        if !*started {
            self.jobs.start().await?;
            *started = true;
            self.health().scheduler_running = true;
        }
        Ok(())
    }

    pub(crate) async fn stop_jobs(&self) {
        self.health().scheduler_running = false;
        self.metrics.set_ready(false);
        let mut jobs = self.jobs.clone();
        match tokio::time::timeout(Duration::from_secs(5), jobs.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("stopping the job scheduler: {e}"),
            Err(_) => tracing::warn!("the job scheduler did not stop within 5 s"),
        }
    }

    /// Runs `fut` (a database call) within the daemon's database timeout.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, db::DbError>>,
    ) -> Result<T, String> {
        let after = self.live().db_timeout;
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("{what} took longer than {after:?}")),
        }
    }

    /// One pass over the `syncer` table; see the module docs.
    pub(crate) async fn reconcile_once(&self) -> Result<usize, String> {
        let db = self
            .db()
            .ok_or_else(|| "not connected to the database".to_owned())?;
        let live = self.live();
        self.start_jobs()
            .await
            .map_err(|e| format!("cannot start the job scheduler: {e}"))?;

        // Runs left `running` by a process that is gone.
        let now_ms = epoch_millis();
        let started_before = Utc::now()
            - chrono::Duration::from_std(live.lease.ttl).unwrap_or(chrono::Duration::zero());
        let orphaned = self
            .timed(
                "recovering interrupted runs",
                interrupt_orphaned_runs(db, now_ms, started_before, ORPHANED_RUN_REASON),
            )
            .await?;
        for o in orphaned {
            tracing::warn!(
                "run {} of syncer {} was left running by {}, which is gone: recorded as interrupted",
                o.id,
                o.syncer_name,
                o.instance
            );
        }

        let rows = self
            .timed("reading the syncer table", db::list_syncers(db))
            .await?;
        let ours: Vec<SyncerRow> = rows
            .into_iter()
            .filter(|r| r.owner == SYNCER_OWNER && live.accepted_types.contains(&r.syncer_type))
            .collect();

        let mut reports = Vec::new();
        let (scheduled, invalid) = {
            let mut syncers = self.syncers.lock().await;
            let names: HashSet<&str> = ours.iter().map(|r| r.name.as_str()).collect();
            let gone: Vec<String> = syncers
                .keys()
                .filter(|n| !names.contains(n.as_str()))
                .cloned()
                .collect();
            for name in gone {
                if let Some(mut entry) = syncers.remove(&name)
                    && self.remove_jobs(&mut entry).await
                {
                    tracing::info!(
                        "syncer {name} is gone (deleted, renamed, or no longer a syncer of ours): \
                         unscheduled"
                    );
                }
            }
            for row in ours {
                let new = Desired::of(&row, live.min_interval, &live.claimed);
                let name = row.name.clone();
                let is_new = !syncers.contains_key(&name);
                let entry = syncers.entry(name.clone()).or_insert_with(|| Entry {
                    row: row.clone(),
                    desired: Desired::Disabled,
                    job: None,
                    soon: None,
                    reported: None,
                    floor_warned: None,
                    last_run: None,
                });
                let old = (!is_new).then(|| entry.desired.clone());
                if let Desired::Valid(fp) = &new {
                    let (_, floored) = effective_interval(row.sync_interval, live.min_interval);
                    if floored && entry.floor_warned != Some(row.sync_interval) {
                        tracing::warn!(
                            "syncer {name}: sync_interval {} s is below scheduler.min_interval; \
                             running every {} s instead",
                            row.sync_interval,
                            fp.interval.as_secs()
                        );
                        entry.floor_warned = Some(row.sync_interval);
                    }
                }
                match transition(
                    old.as_ref(),
                    entry.job.is_some(),
                    entry.reported.as_deref(),
                    &new,
                ) {
                    Transition::Nothing => {}
                    Transition::Start => {
                        if let Desired::Valid(fp) = &new {
                            let was = match &old {
                                Some(Desired::Invalid(_)) => " (its row was fixed)",
                                Some(Desired::Disabled) => " (enabled)",
                                _ => "",
                            };
                            if self.schedule(entry, fp.interval, true).await {
                                tracing::info!(
                                    "syncer {name}: scheduled every {} s{was}",
                                    fp.interval.as_secs()
                                );
                            }
                        }
                    }
                    Transition::Reschedule { run_soon } => {
                        if let (Desired::Valid(fp), Some(Desired::Valid(old_fp))) = (&new, &old) {
                            let changed = fp.changes(old_fp).join(", ");
                            if self.schedule(entry, fp.interval, run_soon).await {
                                tracing::info!(
                                    "syncer {name}: {changed} changed; rescheduled every {} s",
                                    fp.interval.as_secs()
                                );
                            }
                        }
                    }
                    Transition::Stop => {
                        self.remove_jobs(entry).await;
                        tracing::info!("syncer {name}: disabled; unscheduled");
                    }
                    Transition::Invalid { report } => {
                        if self.remove_jobs(entry).await {
                            tracing::info!("syncer {name}: unscheduled (invalid row)");
                        }
                        if let (true, Desired::Invalid(reason)) = (report, &new) {
                            tracing::warn!("syncer {name} is skipped: {reason}");
                            entry.reported = Some(reason.clone());
                            reports.push((name.clone(), reason.clone(), row.error_text.clone()));
                        }
                    }
                }
                if !matches!(new, Desired::Invalid(_)) {
                    entry.reported = None;
                }
                entry.row = row;
                entry.desired = new;
            }
            let scheduled = syncers.values().filter(|e| e.job.is_some()).count();
            let invalid = syncers
                .values()
                .filter(|e| matches!(e.desired, Desired::Invalid(_)))
                .count();
            (scheduled, invalid)
        };
        self.metrics
            .set_syncer_counts(scheduled as u64, invalid as u64);

        for (name, reason, error_text) in reports {
            let message = format!("syncerd skips this syncer: {reason}");
            // Once per change, also across restarts and replicas: not when it is the last line.
            let already = error_text
                .lines()
                .last()
                .is_some_and(|line| line.ends_with(&format!("] {message}")));
            if already {
                continue;
            }
            if let Err(e) = self
                .timed(
                    "recording the problem in error_text",
                    db::append_syncer_error(db, &name, &message),
                )
                .await
            {
                tracing::warn!("syncer {name}: could not record the problem in error_text: {e}");
            }
        }
        Ok(scheduled)
    }

    /// Replaces the job of `entry` with one every `interval`; with `run_soon`, also runs once
    /// after a short jitter. Returns whether the job is in place.
    async fn schedule(&self, entry: &mut Entry, interval: Duration, run_soon: bool) -> bool {
        let name = entry.row.name.clone();
        if let Some(id) = entry.job.take() {
            self.remove_job(&name, id).await;
        }
        let job = Job::new_repeated_async(interval, self.tick_fn(&name));
        match job {
            Ok(job) => match self.jobs.add(job).await {
                Ok(id) => entry.job = Some(id),
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
            if let Some(id) = entry.soon.take() {
                self.remove_job(&name, id).await;
            }
            let delay = start_jitter(random_u64(), MAX_START_JITTER);
            match Job::new_one_shot_async(delay, self.tick_fn(&name)) {
                Ok(job) => match self.jobs.add(job).await {
                    Ok(id) => entry.soon = Some(id),
                    Err(e) => tracing::warn!("syncer {name}: cannot add its first run: {e}"),
                },
                Err(e) => tracing::warn!("syncer {name}: cannot create its first run: {e}"),
            }
        }
        true
    }

    /// Removes the jobs of `entry`; returns whether there was a repeating job.
    async fn remove_jobs(&self, entry: &mut Entry) -> bool {
        let name = entry.row.name.clone();
        if let Some(id) = entry.soon.take() {
            self.remove_job(&name, id).await;
        }
        match entry.job.take() {
            Some(id) => {
                self.remove_job(&name, id).await;
                true
            }
            None => false,
        }
    }

    async fn remove_job(&self, name: &str, id: Uuid) {
        if let Err(e) = self.jobs.remove(&id).await {
            tracing::debug!("syncer {name}: removing job {id}: {e}");
        }
    }

    /// The body of a job: a tick for syncer `name`.
    fn tick_fn(
        &self,
        name: &str,
    ) -> impl FnMut(Uuid, JobScheduler) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    + Send
    + Sync
    + 'static {
        let me = self.me.clone();
        let name = name.to_owned();
        move |_, _| {
            let me = me.clone();
            let name = name.clone();
            Box::pin(async move {
                if let Some(shared) = me.upgrade() {
                    let _ = shared.trigger(&name, RunTrigger::Schedule).await;
                }
            })
        }
    }

    fn guard(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Whether a run of `name` is going in this process.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.guard(name).try_lock().is_err()
    }

    /// Starts a run of syncer `name` unless one is going (single flight). Scheduled ticks need
    /// an enabled syncer; manual ones only a valid row.
    pub async fn trigger(&self, name: &str, trigger: RunTrigger) -> Result<(), TriggerError> {
        if self.runs_token.is_cancelled() {
            return Err(TriggerError::ShuttingDown);
        }
        if self.db().is_none() {
            return Err(TriggerError::NotConnected);
        }
        {
            let syncers = self.syncers.lock().await;
            let entry = syncers
                .get(name)
                .ok_or_else(|| TriggerError::NotFound(name.to_owned()))?;
            match &entry.desired {
                Desired::Invalid(reason) => {
                    return Err(TriggerError::Invalid {
                        name: name.to_owned(),
                        reason: reason.clone(),
                    });
                }
                Desired::Disabled if trigger == RunTrigger::Schedule => {
                    return Err(TriggerError::Disabled(name.to_owned()));
                }
                Desired::Disabled => {
                    if let Err(reason) = validate_syncer(&entry.row) {
                        return Err(TriggerError::Invalid {
                            name: name.to_owned(),
                            reason,
                        });
                    }
                }
                Desired::Valid(_) => {}
            }
        }
        let Ok(guard) = self.guard(name).try_lock_owned() else {
            self.metrics.record_skip(name, SkipReason::Overlap);
            tracing::debug!(
                "syncer {name}: {trigger} tick skipped: the previous run is still going"
            );
            return Err(TriggerError::AlreadyRunning(name.to_owned()));
        };
        // Checked and recorded under the syncer's guard, so a burst of requests starts one run.
        {
            let mut started = self.last_started.lock().unwrap_or_else(|e| e.into_inner());
            let min_interval = self.live().min_interval;
            if trigger == RunTrigger::Manual
                && let Some(at) = started.get(name)
                && at.elapsed() < min_interval
            {
                return Err(TriggerError::TooSoon {
                    name: name.to_owned(),
                    retry_after: min_interval.saturating_sub(at.elapsed()),
                });
            }
            started.insert(name.to_owned(), Instant::now());
        }
        let Some(me) = self.me.upgrade() else {
            return Err(TriggerError::ShuttingDown);
        };
        let cancel = self.runs_token.child_token();
        self.tracker
            .spawn(run_task(me, name.to_owned(), trigger, guard, cancel));
        Ok(())
    }

    async fn record_last_run(&self, name: &str, summary: &RunSummary) {
        let mut syncers = self.syncers.lock().await;
        if let Some(entry) = syncers.get_mut(name) {
            entry.last_run = Some(LastRun {
                summary: summary.clone(),
                finished_at: Utc::now(),
            });
        }
    }

    fn record_reconcile(&self, result: &Result<usize, String>) {
        let now = Instant::now();
        self.metrics.record_reconcile(result.is_ok());
        let mut h = self.health();
        match result {
            Ok(_) => {
                if let Some(since) = h.failing_since.take() {
                    tracing::info!(
                        "the syncer table can be read again (after {:?})",
                        since.elapsed()
                    );
                }
                h.last_failure_log = None;
            }
            Err(e) => {
                h.failing_since.get_or_insert(now);
                // Every failure at first, then once a minute while it lasts.
                let quiet = h
                    .last_failure_log
                    .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
                if quiet {
                    tracing::debug!("reconcile failed again: {e}");
                } else {
                    tracing::warn!("reconcile failed (retrying every pass): {e}");
                    h.last_failure_log = Some(now);
                }
            }
        }
        h.last_reconcile = Some((now, result.clone()));
        drop(h);
        self.metrics.set_ready(self.readiness().is_ok());
    }
}

/// Reconciles every `scheduler.reload_interval` and whenever asked, until `stop`.
pub(crate) async fn reconcile_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ready_sent = false;
    if let Some(period) = super::notify::watchdog_period()
        && shared.live().reload_interval * 2 > period
    {
        tracing::warn!(
            "scheduler.reload_interval is more than half of systemd's WatchdogSec ({period:?}): \
             systemd may restart a healthy daemon; lower reload_interval or raise WatchdogSec"
        );
    }
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = shared.reconcile_once() => result,
        };
        shared.record_reconcile(&result);
        // The scheduler loop is alive; the first good pass means the daemon is ready.
        super::notify::notify("WATCHDOG=1");
        if !ready_sent && result.is_ok() {
            ready_sent = super::notify::notify("READY=1\nSTATUS=following the syncer table");
        }
        tracing::debug!(
            "reconcile pass done: {}",
            match &result {
                Ok(n) => format!("{n} syncer(s) scheduled"),
                Err(e) => e.clone(),
            }
        );
        let wait = shared.live().reload_interval;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = shared.reconcile_now.notified() => {}
        }
    }
}

/// A slot of `scheduler.max_concurrent_runs`; given back (or forgotten, when the limit was
/// lowered meanwhile) when dropped, whichever way the run task ends.
struct RunPermit {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take()
            && self.shared.owes_permit()
        {
            permit.forget();
        }
    }
}

/// One run of one syncer, holding its single-flight guard for its whole life.
async fn run_task(
    shared: Arc<Shared>,
    name: String,
    trigger: RunTrigger,
    _guard: OwnedMutexGuard<()>,
    cancel: CancellationToken,
) {
    let _permit = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        permit = shared.semaphore.clone().acquire_owned() => match permit {
            Ok(permit) => RunPermit { permit: Some(permit), shared: shared.clone() },
            Err(_) => return,
        },
    };
    let Some(db) = shared.db().cloned() else {
        return;
    };
    let row = match shared
        .timed("reading the syncer row", db::get_syncer(&db, &name))
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => {
            tracing::debug!("syncer {name}: gone before its run started");
            return;
        }
        Err(e) => {
            tracing::warn!("syncer {name}: {trigger} run not started: {e}");
            return;
        }
    };
    if trigger == RunTrigger::Schedule && !runs_scheduled(&row, &shared.live().claimed) {
        tracing::debug!("syncer {name}: disabled before its run started");
        return;
    }
    if validate_syncer(&row).is_err() {
        tracing::debug!("syncer {name}: its row became invalid before the run started");
        return;
    }

    let lease = shared.live().lease;
    let taken_at = epoch_millis();
    match shared
        .timed(
            "taking the lease",
            acquire_lease(&db, &name, &shared.instance, taken_at, lease.ttl),
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            shared.metrics.record_skip(&name, SkipReason::Lease);
            tracing::debug!("syncer {name}: {trigger} tick skipped: another instance runs it");
            return;
        }
        Err(e) => {
            tracing::warn!("syncer {name}: {trigger} run not started: {e}");
            return;
        }
    }
    let mut held = HeldLease::taken(lease, taken_at);

    shared.metrics.run_started();
    tracing::info!("syncer {name}: {trigger} run starting");
    let started = Instant::now();
    // The run is a task of its own, so it keeps going while the lease is renewed; its result
    // (or panic) is read below.
    let mut run = shared.tracker.spawn((shared.run_fn)(RunRequest {
        syncer: row,
        trigger,
        cancel: cancel.clone(),
        instance: shared.instance.clone(),
        db: db.clone(),
    }));
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + lease.renew_every,
        lease.renew_every,
    );
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let summary = loop {
        tokio::select! {
            result = &mut run => break match result {
                Ok(summary) => summary,
                Err(e) => {
                    tracing::error!("syncer {name}: the run failed ({e}); the daemon goes on");
                    RunSummary::bare(
                        RunStatus::Failed,
                        started.elapsed(),
                        Some("the run panicked or was aborted; see the syncerd log".into()),
                    )
                }
            },
            _ = renew.tick() => {
                let now = epoch_millis();
                let result = shared
                    .timed("renewing the lease", renew_lease(&db, &name, &shared.instance, now, lease.ttl))
                    .await;
                let error = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
                match held.renewal(now, result.ok(), epoch_millis()) {
                    Renewal::Renewed => {}
                    Renewal::Lost => {
                        tracing::warn!(
                            "syncer {name}: lost its lease (it expired and another instance took \
                             it); stopping the run"
                        );
                        cancel.cancel();
                    }
                    Renewal::Expiring => {
                        tracing::warn!(
                            "syncer {name}: cannot renew its lease ({error}) and it is about to \
                             expire; stopping the run"
                        );
                        cancel.cancel();
                    }
                    Renewal::Retry => tracing::warn!("syncer {name}: renewing its lease failed: {error}; retrying"),
                }
            }
        }
    };

    if let Err(e) = shared
        .timed(
            "releasing the lease",
            release_lease(&db, &name, &shared.instance),
        )
        .await
    {
        tracing::warn!("syncer {name}: releasing its lease failed ({e}); it expires by itself");
    }
    shared.metrics.run_ended();
    shared
        .metrics
        .record_run(&name, &summary, unix_seconds_now());
    let run = summary
        .run_id
        .map(|id| format!("run {id}"))
        .unwrap_or_else(|| "run".to_owned());
    let message = summary
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let line = format!(
        "syncer {name}: {trigger} {run} {} in {:.1} s (created {}, updated {}, forbidden {}, \
         deleted {}, {} DingTalk calls){message}",
        summary.status,
        summary.duration.as_secs_f64(),
        summary.created,
        summary.updated,
        summary.forbidden,
        summary.deleted,
        summary.api_calls,
    );
    match summary.status {
        RunStatus::Succeeded | RunStatus::Running => tracing::info!("{line}"),
        _ => tracing::warn!("{line}"),
    }
    shared.record_last_run(&name, &summary).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> SyncerRow {
        SyncerRow {
            owner: "admin".into(),
            name: "acme".into(),
            created_time: String::new(),
            organization: "acme".into(),
            syncer_type: "DingTalk".into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new("S3cret-value"),
            table_columns: String::new(),
            avatar_base_url: String::new(),
            error_text: String::new(),
            sync_interval: 60,
            is_read_only: true,
            is_enabled: true,
        }
    }

    #[test]
    fn invalid_rows_get_a_reason_that_never_holds_the_secret() {
        assert_eq!(validate_syncer(&row()), Ok(()));
        let check = |f: fn(&mut SyncerRow), needle: &str| {
            let mut r = row();
            f(&mut r);
            let reason = validate_syncer(&r).err().unwrap_or_default();
            assert!(reason.contains(needle), "{reason}");
            assert!(!reason.contains("S3cret-value"), "{reason}");
        };
        check(|r| r.app_key = " ".into(), "App Key");
        check(|r| r.app_secret = Secret::new(""), "App Secret");
        check(|r| r.organization = String::new(), "organization");
        check(
            |r| r.organization = "built-in".into(),
            "global administrator",
        );
        check(|r| r.sync_interval = 0, "sync_interval is 0");
        check(|r| r.sync_interval = -5, "positive");
        check(|r| r.table_columns = "{not json".into(), "table_columns");
    }

    #[test]
    fn intervals_are_floored_at_the_minimum_in_whole_seconds() {
        let min = Duration::from_secs(30);
        assert_eq!(
            effective_interval(600, min),
            (Duration::from_secs(600), false)
        );
        assert_eq!(effective_interval(5, min), (Duration::from_secs(30), true));
        assert_eq!(
            effective_interval(30, min),
            (Duration::from_secs(30), false)
        );
        assert_eq!(
            effective_interval(1, Duration::from_millis(1500)),
            (Duration::from_secs(2), true)
        );
        assert_eq!(
            effective_interval(1, Duration::ZERO),
            (Duration::from_secs(1), false)
        );
    }

    #[test]
    fn fingerprints_see_interval_credential_and_mapping_changes_but_not_error_text() {
        let a = row();
        let fp = |r: &SyncerRow| Fingerprint::of(r, Duration::from_secs(r.sync_interval as u64));
        let mut b = a.clone();
        b.error_text = "[t] something\n".into();
        assert_eq!(fp(&a), fp(&b));
        b.app_secret = Secret::new("other");
        assert_eq!(fp(&b).changes(&fp(&a)), vec!["App Key/Secret"]);
        let mut c = a.clone();
        c.sync_interval = 120;
        c.avatar_base_url = "https://cdn/".into();
        assert_eq!(
            fp(&c).changes(&fp(&a)),
            vec![
                "sync_interval",
                "organization/table_columns/avatar_base_url"
            ]
        );
        assert!(!format!("{:?}", fp(&a)).contains("S3cret"));
    }

    #[test]
    fn transitions_start_stop_reschedule_and_report_once() {
        let min = Duration::from_secs(1);
        let valid = Desired::of(&row(), min, &[]);
        let mut slower = row();
        slower.sync_interval = 120;
        let slower = Desired::of(&slower, min, &[]);
        let mut rekeyed = row();
        rekeyed.app_key = "newkey".into();
        let rekeyed = Desired::of(&rekeyed, min, &[]);
        let bad = Desired::Invalid("the App Key is empty".into());

        // New row, enabled and valid: start (and run soon).
        assert_eq!(transition(None, false, None, &valid), Transition::Start);
        // Enabled later.
        assert_eq!(
            transition(Some(&Desired::Disabled), false, None, &valid),
            Transition::Start
        );
        // Unchanged: nothing.
        assert_eq!(
            transition(Some(&valid), true, None, &valid),
            Transition::Nothing
        );
        // A failed job add is retried.
        assert_eq!(
            transition(Some(&valid), false, None, &valid),
            Transition::Start
        );
        assert_eq!(
            transition(Some(&valid), true, None, &slower),
            Transition::Reschedule { run_soon: false }
        );
        assert_eq!(
            transition(Some(&valid), true, None, &rekeyed),
            Transition::Reschedule { run_soon: true }
        );
        assert_eq!(
            transition(Some(&valid), true, None, &Desired::Disabled),
            Transition::Stop
        );
        assert_eq!(
            transition(Some(&Desired::Disabled), false, None, &Desired::Disabled),
            Transition::Nothing
        );
        // Invalid: reported the first time, not again for the same reason, again for a new one.
        assert_eq!(
            transition(Some(&valid), true, None, &bad),
            Transition::Invalid { report: true }
        );
        assert_eq!(
            transition(Some(&bad), false, Some("the App Key is empty"), &bad),
            Transition::Invalid { report: false }
        );
        assert_eq!(
            transition(
                Some(&bad),
                false,
                Some("the App Key is empty"),
                &Desired::Invalid("sync_interval is 0".into())
            ),
            Transition::Invalid { report: true }
        );
        // Fixed: start again.
        assert_eq!(
            transition(Some(&bad), false, Some("the App Key is empty"), &valid),
            Transition::Start
        );
    }

    #[test]
    fn start_jitter_stays_within_its_bound() {
        let max = MAX_START_JITTER;
        assert_eq!(start_jitter(0, max), Duration::ZERO);
        assert_eq!(start_jitter(3000, max), max);
        assert_eq!(start_jitter(3001, max), Duration::ZERO);
        for _ in 0..1000 {
            assert!(start_jitter(random_u64(), max) <= max);
        }
        // Not all the same: the spread is the point.
        let distinct: HashSet<u128> = (0..50)
            .map(|_| start_jitter(random_u64(), max).as_millis())
            .collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[tokio::test]
    async fn lowering_the_run_limit_takes_effect_as_running_runs_end() {
        let mut settings = Settings::default();
        settings.scheduler.max_concurrent_runs = 3;
        let shared = Shared::new(
            &settings,
            super::super::placeholder_run_fn(Duration::ZERO),
            "test:1:a".into(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut held = Vec::new();
        for _ in 0..3 {
            let permit = shared.semaphore.clone().try_acquire_owned();
            held.push(RunPermit {
                permit: permit.ok(),
                shared: shared.clone(),
            });
        }
        settings.scheduler.max_concurrent_runs = 1;
        shared.apply_settings(&settings);
        assert_eq!(shared.semaphore.available_permits(), 0);
        held.truncate(1);
        assert_eq!(
            shared.semaphore.available_permits(),
            0,
            "two runs ended: forgotten"
        );
        held.clear();
        assert_eq!(shared.semaphore.available_permits(), 1);
        settings.scheduler.max_concurrent_runs = 2;
        shared.apply_settings(&settings);
        assert_eq!(shared.semaphore.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_single_flight_guard_skips_a_tick_while_a_run_holds_it() {
        let guard = Arc::new(tokio::sync::Mutex::new(()));
        let held = guard.clone().try_lock_owned();
        assert!(held.is_ok());
        let run = tokio::spawn(async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(90)).await;
        });
        // Ticks during the run find the guard taken.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(30)).await;
            if !run.is_finished() {
                assert!(guard.clone().try_lock_owned().is_err());
            }
        }
        let _ = run.await;
        assert!(guard.clone().try_lock_owned().is_ok());
    }
}
