//! Keeping the jobs in step with the `syncer` table, and running syncers one at a time.
//!
//! A reconcile pass (`pass.rs`, every `scheduler.reload_interval`, and at once on SIGHUP) reads
//! the table and, per syncer of ours (`owner = 'admin'`, `type` in `scheduler.accepted_types`),
//! compares what should be (disabled / invalid with a reason / valid with a fingerprint, see
//! `reconcile.rs`) with what is: jobs (`jobs.rs`) are added, removed or rescheduled, and an
//! invalid row is reported once per change.
//!
//! A tick (a job of the job table, a "run soon" one-shot, or the admin API) calls
//! [`Shared::trigger`]: the per-syncer single-flight guard skips it while a run is going, then
//! the run task (`launcher.rs`) waits for one of `scheduler.max_concurrent_runs` permits and
//! hands the syncer to [`crate::launch::launch`], which takes the lease (or skips: another
//! replica runs it), renews it while the [`RunFn`] runs and releases it after. The HTTP layer
//! reads all this through [`Shared::snapshot`] and [`Shared::readiness`] (`health.rs`).

mod health;
mod jobs;
mod launcher;
mod pass;
mod reconcile;
mod retention;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::db::{Db, RunTrigger};
use crate::dingtalk::{Client, Targets};
use crate::launch::Holder;
use crate::launch::lease::LeaseTiming;
use crate::secret::Secret;

use super::console::Console;
use super::metrics::{Metrics, SkipReason};
use super::notices::{Notices, deliver_notices};
use super::stream::Streams;
use super::{RunFn, RunSummary, Tools};

pub(crate) use health::{LastRun, Snapshot, SyncerState};
pub(crate) use reconcile::Desired;
pub use reconcile::{MAX_START_JITTER, effective_interval, runs_scheduled, start_jitter};

use health::Health;
use jobs::{JobTable, TickFn};
use launcher::{Guards, Order, RunLimit, run_task};
use pass::Entry;

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
    /// Days the change log is kept (`history.keep_days`, 0: forever).
    pub keep_days: u32,
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
            keep_days: s.history.keep_days,
        }
    }
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

/// The runs of this process: one token (a child per run) that shutdown cancels, and the
/// tracker shutdown drains.
struct Runs {
    token: CancellationToken,
    tracker: TaskTracker,
    guards: Guards,
    limit: Arc<RunLimit>,
    /// When each syncer last started a run here: manual runs wait `min_interval` after it.
    last_started: Mutex<HashMap<String, Instant>>,
}

/// State shared by the reconcile loop, the jobs, the run tasks and the HTTP handlers.
pub struct Shared {
    pub(crate) instance: String,
    me: Weak<Shared>,
    run_fn: RunFn,
    live: RwLock<LiveSettings>,
    admin_token: RwLock<Option<Secret>>,
    db: OnceLock<Db>,
    health: Mutex<Health>,
    syncers: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    jobs: JobTable,
    runs: Runs,
    pub(crate) metrics: Metrics,
    notices: Notices,
    reconcile_now: Notify,
    streams: Streams,
    retention: retention::Retention,
    tools: OnceLock<Tools>,
    console: Console,
}

impl Shared {
    pub(crate) fn new(
        settings: &Settings,
        run_fn: RunFn,
        dingtalk: Option<Client>,
        instance: String,
        root: &CancellationToken,
    ) -> Arc<Shared> {
        let jobs = JobTable::new();
        let live = LiveSettings::from_settings(settings);
        let limit = RunLimit::new(live.max_concurrent_runs);
        Arc::new_cyclic(|me| Shared {
            instance,
            me: me.clone(),
            run_fn,
            live: RwLock::new(live),
            admin_token: RwLock::new(settings.http.admin_token.clone()),
            db: OnceLock::new(),
            health: Mutex::new(Health::connecting()),
            syncers: tokio::sync::Mutex::new(BTreeMap::new()),
            jobs,
            runs: Runs {
                token: root.child_token(),
                tracker: TaskTracker::new(),
                guards: Guards::default(),
                limit,
                last_started: Mutex::new(HashMap::new()),
            },
            metrics: Metrics::default(),
            notices: Notices::new(&settings.notify),
            reconcile_now: Notify::new(),
            streams: Streams::new(settings, dingtalk),
            retention: retention::Retention::default(),
            tools: OnceLock::new(),
            console: Console::new(settings),
        })
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

    /// The console's Test connection and Dry run, when the daemon was given them.
    pub(crate) fn tools(&self) -> Option<&Tools> {
        self.tools.get()
    }

    pub(crate) fn set_tools(&self, tools: Tools) {
        let _ = self.tools.set(tools);
    }

    /// The web console's sessions and limits.
    pub(crate) fn console(&self) -> &Console {
        &self.console
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

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This process as a lease holder, with the lease timing in force.
    pub(crate) fn holder(&self) -> Holder {
        let live = self.live();
        Holder {
            instance: self.instance.clone(),
            timing: live.lease,
            db_timeout: live.db_timeout,
            keeper: None,
        }
    }

    pub(crate) fn me(&self) -> Option<Arc<Shared>> {
        self.me.upgrade()
    }

    pub(crate) fn streams(&self) -> &Streams {
        &self.streams
    }

    /// A token for a long task of this daemon (a stream), cancelled at shutdown.
    pub(crate) fn stream_token(&self) -> CancellationToken {
        self.runs.token.child_token()
    }

    pub(crate) fn notices(&self) -> &Notices {
        &self.notices
    }

    /// Starts the task that sends notices (once); it stops with the runs at shutdown.
    pub(crate) fn start_notices(&self) {
        if let (Some(me), Some(inbox)) = (self.me(), self.notices.take_inbox()) {
            let stop = self.runs.token.child_token();
            self.spawn_tracked(deliver_notices(me, inbox, stop));
        }
    }

    /// Spawns a long task shutdown waits for (it must end when its token is cancelled).
    pub(crate) fn spawn_tracked(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.runs.tracker.spawn(task);
    }

    fn run_fn(&self) -> &RunFn {
        &self.run_fn
    }

    fn run_limit(&self) -> &Arc<RunLimit> {
        &self.runs.limit
    }

    /// The runs in flight; shutdown waits for them.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.runs.tracker
    }

    /// Applies the live part of reloaded settings; the next reconcile uses them.
    pub(crate) fn apply_settings(&self, settings: &Settings) {
        let live = LiveSettings::from_settings(settings);
        self.runs.limit.set(live.max_concurrent_runs);
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
        *self.admin_token.write().unwrap_or_else(|e| e.into_inner()) =
            settings.http.admin_token.clone();
        self.console.apply(settings);
        self.notices.configure(&settings.notify);
    }

    /// `/metrics` in the Prometheus text format.
    pub(crate) fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// `Ok(summary)` when ready, else why not (one line).
    pub(crate) fn readiness(&self) -> Result<String, String> {
        let live = self.live();
        self.health()
            .readiness(live.reload_interval, live.db_timeout)
    }

    pub(crate) fn reconcile_soon(&self) {
        self.reconcile_now.notify_one();
    }

    pub(crate) fn cancel_runs(&self) {
        self.runs.token.cancel();
        self.runs.tracker.close();
    }

    /// Starts the job scheduler once; later calls do nothing.
    pub(crate) fn start_jobs(&self) {
        if self.jobs.start() {
            self.health().scheduler_running = true;
        }
    }

    pub(crate) fn stop_jobs(&self) {
        self.health().scheduler_running = false;
        self.metrics.set_ready(false);
        self.jobs.stop();
    }

    /// Replaces the repeating job of `name` (see [`JobTable::schedule`]).
    fn schedule(
        &self,
        name: &str,
        jobs: &mut jobs::SyncerJobs,
        interval: Duration,
        run_soon: bool,
    ) -> bool {
        let tick = || self.tick_fn(name);
        self.jobs.schedule(name, jobs, interval, run_soon, tick)
    }

    /// The body of a job: a tick for syncer `name`.
    fn tick_fn(&self, name: &str) -> TickFn {
        let me = self.me.clone();
        let name = name.to_owned();
        Box::new(move || {
            let me = me.clone();
            let name = name.clone();
            Box::pin(async move {
                if let Some(shared) = me.upgrade() {
                    let _ = shared.trigger(&name, RunTrigger::Schedule).await;
                }
            })
        })
    }

    /// The scheduler's view of every syncer of ours, for the admin API.
    pub(crate) async fn snapshot(&self) -> Snapshot {
        let min_interval = self.live().min_interval;
        let entries: Vec<SyncerState> = {
            let syncers = self.syncers.lock().await;
            syncers
                .values()
                .map(|e| SyncerState {
                    name: e.row.name.clone(),
                    organization: e.row.organization.clone(),
                    enabled: e.row.is_enabled,
                    configured_interval: e.row.sync_interval,
                    interval: effective_interval(e.row.sync_interval, min_interval).0,
                    desired: e.desired.clone(),
                    scheduled: e.jobs.every.is_some(),
                    next_run: e.jobs.next_run(),
                    running: false,
                    last_run: e.last_run.clone(),
                    stream: None,
                })
                .collect()
        };
        let streams = self.streams.states();
        let mut syncers = Vec::with_capacity(entries.len());
        for mut state in entries {
            state.stream = streams.get(&state.name).map(super::stream::describe);
            state.running = self.runs.guards.is_running(&state.name);
            syncers.push(state);
        }
        Snapshot {
            instance: self.instance.clone(),
            db: self.db().cloned(),
            syncers,
        }
    }

    /// Why `trigger` may not start a run of `name` per its last reconciled row, if it may not.
    async fn refusal(&self, name: &str, trigger: RunTrigger) -> Option<TriggerError> {
        let syncers = self.syncers.lock().await;
        let Some(entry) = syncers.get(name) else {
            return Some(TriggerError::NotFound(name.to_owned()));
        };
        let invalid = |reason: String| TriggerError::Invalid {
            name: name.to_owned(),
            reason,
        };
        match &entry.desired {
            Desired::Invalid(reason) => Some(invalid(reason.clone())),
            Desired::Disabled if trigger.needs_enabled() => {
                Some(TriggerError::Disabled(name.to_owned()))
            }
            Desired::Disabled => entry
                .row
                .validate_for_schedule()
                .err()
                .map(|problem| invalid(problem.to_string())),
            Desired::Valid(_) => None,
        }
    }

    /// Starts a run of syncer `name` unless one is going (single flight). Scheduled ticks need
    /// an enabled syncer; manual ones only a valid row.
    pub async fn trigger(&self, name: &str, trigger: RunTrigger) -> Result<(), TriggerError> {
        let order = Order {
            trigger,
            targets: None,
            allow_removals: false,
            done: None,
        };
        self.start(name, order).await
    }

    /// A manual full run of `name` that applies its leaver actions past the removal limits:
    /// the console's "Approve removals" of a held run.
    pub(crate) async fn trigger_approved(&self, name: &str) -> Result<(), TriggerError> {
        let order = Order {
            trigger: RunTrigger::Manual,
            targets: None,
            allow_removals: true,
            done: None,
        };
        self.start(name, order).await
    }

    /// Runs the users and departments of DingTalk events of `name` and answers the run's
    /// summary; `None` when no run started (another run of it is going, it was disabled, the
    /// daemon is stopping).
    pub(crate) async fn run_events(&self, name: &str, targets: Targets) -> Option<RunSummary> {
        let (done, summary) = oneshot::channel();
        let order = Order {
            trigger: RunTrigger::Event,
            targets: Some(targets),
            allow_removals: false,
            done: Some(done),
        };
        match self.start(name, order).await {
            Ok(()) => summary.await.ok(),
            Err(e) => {
                tracing::debug!("syncer {name}: event run not started: {e}");
                None
            }
        }
    }

    async fn start(&self, name: &str, order: Order) -> Result<(), TriggerError> {
        let trigger = order.trigger;
        if self.runs.token.is_cancelled() {
            return Err(TriggerError::ShuttingDown);
        }
        if self.db().is_none() {
            return Err(TriggerError::NotConnected);
        }
        if let Some(refused) = self.refusal(name, trigger).await {
            return Err(refused);
        }
        let guard = match self.runs.guards.try_take(name) {
            Some(guard) => Some(guard),
            // Events wait their turn behind the run going: it may have fetched before them.
            None if trigger == RunTrigger::Event => tokio::select! {
                guard = self.runs.guards.take(name) => Some(guard),
                _ = self.runs.token.cancelled() => return Err(TriggerError::ShuttingDown),
            },
            None => None,
        };
        let Some(guard) = guard else {
            self.metrics.record_skip(name, SkipReason::Overlap);
            tracing::debug!(
                "syncer {name}: {trigger} tick skipped: the previous run is still going"
            );
            return Err(TriggerError::AlreadyRunning(name.to_owned()));
        };
        // Checked and recorded under the syncer's guard, so a burst of requests starts one run.
        {
            let mut started = self
                .runs
                .last_started
                .lock()
                .unwrap_or_else(|e| e.into_inner());
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
        let cancel = self.runs.token.child_token();
        self.runs
            .tracker
            .spawn(run_task(me, name.to_owned(), order, guard, cancel));
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
        self.metrics.record_reconcile(result.is_ok());
        self.health().record_reconcile(result);
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
