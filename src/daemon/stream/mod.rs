//! The daemon's DingTalk Stream connections: one per enabled syncer, held by one replica.
//!
//! After each reconcile pass the daemon follows the set of syncers that should stream (enabled,
//! valid, `stream.enabled` and not in `stream.disabled_syncers`). Each gets a task that waits
//! for the syncer's first run that wrote its directory (succeeded or partial: events only patch
//! a directory that was imported), takes the syncer's stream lease (another replica holding it streams instead), and then
//! keeps the connection, whose events land in the inbox, beside the applier, which turns them
//! into targeted runs through the same launcher as every other run. When the connection starts
//! and after every reconnect, the catch-up (`catchup.rs`) puts the leavers of DingTalk's leave
//! records in the inbox, or starts a full run when they cannot be read. A changed App Key or App
//! Secret restarts the task; a syncer disabled or gone stops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::events::{ApplierTiming, EventBatch, apply_events};
use super::scheduler::Shared;
use crate::config::{Settings, StreamSettings};
use crate::db::leases::epoch_millis;
use crate::db::{self, Db, RunFilter, RunStatus, SyncerRow};
use crate::dingtalk::{Client, Credentials, Targets};
use crate::launch::keeper::LeaseKeeper;
use crate::launch::{LaunchError, LeaseFor, bounded, hold_lease};
use crate::secret::Secret;
use crate::stream::{
    ConnectionState, StreamConfig, StreamConnector, StreamError, StreamStats, run_stream,
};
use crate::syncer::ValidSyncer;

use catchup::{CatchUps, GapTracker, catch_up_worker};
use sink::InboxSink;

mod catchup;
mod sink;

/// How long a stream may be down before its reconnection starts a full run when DingTalk's
/// leave records cannot be read (a shorter outage waits for the interval run).
pub(crate) const CATCH_UP_AFTER: Duration = Duration::from_secs(60);

/// The stream settings and the task of every syncer that streams.
pub(crate) struct Streams {
    settings: StreamSettings,
    open_api_base: String,
    /// Reads the leave records of the catch-ups; `None`: catch-ups are full runs only.
    client: Option<Client>,
    tasks: Mutex<HashMap<String, StreamTask>>,
    /// Renews every stream lease of this process together.
    leases: LeaseKeeper,
    /// The HTTP client and TLS configuration every connection shares, built on first use.
    connector: Mutex<Option<Arc<StreamConnector>>>,
}

struct StreamTask {
    /// What the task was started with: a change restarts it.
    identity: (String, Secret),
    cancel: CancellationToken,
    state: watch::Receiver<ConnectionState>,
}

impl Streams {
    pub(crate) fn new(settings: &Settings, client: Option<Client>) -> Self {
        Streams {
            settings: settings.stream.clone(),
            open_api_base: settings.dingtalk.open_api_base.clone(),
            client,
            tasks: Mutex::new(HashMap::new()),
            leases: LeaseKeeper::default(),
            connector: Mutex::new(None),
        }
    }

    /// The connector every connection shares (`config` differs between them only in
    /// `open_api_base`, which the connector does not hold).
    fn connector(&self, config: &StreamConfig) -> Result<Arc<StreamConnector>, StreamError> {
        let mut shared = self.connector.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connector) = shared.as_ref() {
            return Ok(connector.clone());
        }
        let connector = Arc::new(StreamConnector::new(config)?);
        *shared = Some(connector.clone());
        Ok(connector)
    }

    /// The DingTalk client the catch-ups read leave records with.
    pub(crate) fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Whether syncer `name` keeps a connection when it is enabled and valid.
    pub(crate) fn streams(&self, name: &str) -> bool {
        self.settings.streams(name)
    }

    /// The connection state of each syncer that streams.
    pub(crate) fn states(&self) -> HashMap<String, ConnectionState> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, task)| (name.clone(), task.state.borrow().clone()))
            .collect()
    }
}

impl Shared {
    /// Starts a stream task for every syncer of `wanted` that has none (or whose credentials
    /// changed) and stops the tasks of the others. A row is validated only when a task starts:
    /// this runs on every reconcile pass (every 5 s), and 50 rows checked again each time were
    /// a measurable share of an idle daemon's CPU.
    pub(crate) fn follow_streams(&self, wanted: &[&SyncerRow]) {
        let Some(me) = self.me() else { return };
        let streams = self.streams();
        let mut tasks = streams.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|name, task| {
            let keep = wanted.iter().any(|row| &row.name == name);
            if !keep {
                tracing::info!("syncer {name}: its event stream stops (disabled or gone)");
                task.cancel.cancel();
            }
            keep
        });
        for row in wanted {
            let identity = (row.app_key.clone(), row.app_secret.clone());
            if let Some(task) = tasks.get(&row.name) {
                if task.identity == identity {
                    continue;
                }
                tracing::info!("syncer {}: credentials changed, reconnecting", row.name);
                task.cancel.cancel();
                tasks.remove(&row.name);
            }
            let Ok(syncer) = row.validate_for_schedule() else {
                continue;
            };
            let cancel = self.stream_token();
            let (state_tx, state) = watch::channel(ConnectionState::Connecting);
            tasks.insert(
                syncer.name.clone(),
                StreamTask {
                    identity,
                    cancel: cancel.clone(),
                    state,
                },
            );
            self.spawn_tracked(syncer_stream(me.clone(), syncer, state_tx, cancel));
        }
    }
}

/// The state of a stream as an operator reads it.
pub(crate) fn describe(state: &ConnectionState) -> String {
    let at = |t: &std::time::SystemTime| {
        crate::db::utc_millis(chrono::DateTime::<chrono::Utc>::from(*t))
    };
    match state {
        ConnectionState::Connecting => "connecting".to_owned(),
        ConnectionState::Connected { since } => format!("connected since {}", at(since)),
        ConnectionState::Reconnecting {
            since, last_error, ..
        } => format!("reconnecting since {} ({last_error})", at(since)),
        ConnectionState::Stopped => "stopped".to_owned(),
    }
}

/// The life of one syncer's stream; see the module docs.
async fn syncer_stream(
    shared: Arc<Shared>,
    syncer: ValidSyncer,
    state: watch::Sender<ConnectionState>,
    cancel: CancellationToken,
) {
    let name = syncer.name.clone();
    let Some(db) = shared.db().cloned() else {
        return;
    };
    if !wait_for_first_complete_run(&shared, &db, &name, &cancel).await {
        return;
    }
    let catch_ups = CatchUps::default();
    while !cancel.is_cancelled() {
        let mut holder = shared.holder();
        holder.timing = holder.timing.for_stream();
        holder.keeper = Some(shared.streams().leases.clone());
        let held = cancel.child_token();
        let work = stream_and_apply(&shared, &db, &syncer, &state, &catch_ups, &held);
        match hold_lease(&db, &name, LeaseFor::Stream, &holder, &held, work).await {
            Ok(()) => {}
            Err(LaunchError::Busy { holder, .. }) => {
                tracing::debug!("syncer {name}: its event stream is held by {holder}");
            }
            Err(e) => tracing::warn!("syncer {name}: event stream not started: {e}"),
        }
        // Lost, busy or failed: try again after a lease's time (the holder may be gone).
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(holder.timing.ttl) => {}
        }
    }
    state.send_replace(ConnectionState::Stopped);
}

/// Whether syncer `name` has a run that wrote its directory (succeeded or partial); waits for one (checking every reload interval)
/// and answers `false` when cancelled first.
async fn wait_for_first_complete_run(
    shared: &Shared,
    db: &Db,
    name: &str,
    cancel: &CancellationToken,
) -> bool {
    // A partial run wrote the directory too (what it skipped, it reported): a syncer whose
    // runs are always partial, say for a department outside the app's scope, still streams.
    let filter = |status| RunFilter {
        syncer: Some(name.to_owned()),
        status: Some(status),
        since: None,
        limit: 1,
    };
    let mut said = false;
    loop {
        let live = shared.live();
        let found = bounded(live.db_timeout, "reading the run history", async {
            let mut runs = db::list_runs(db, &filter(RunStatus::Succeeded)).await?;
            if runs.is_empty() {
                runs = db::list_runs(db, &filter(RunStatus::Partial)).await?;
            }
            Ok(runs)
        })
        .await;
        match found {
            Ok(runs) if !runs.is_empty() => return true,
            Ok(_) if !said => {
                tracing::info!(
                    "syncer {name}: its event stream starts after its first run that writes its directory"
                );
                said = true;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("syncer {name}: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(live.reload_interval.max(Duration::from_millis(100))) => {}
        }
    }
}

/// Holding the stream lease: the connection, the applier and the catch-ups, until `cancel`
/// (lost lease, disabled syncer, shutdown).
async fn stream_and_apply(
    shared: &Arc<Shared>,
    db: &Db,
    syncer: &ValidSyncer,
    state: &watch::Sender<ConnectionState>,
    catch_ups: &CatchUps,
    cancel: &CancellationToken,
) {
    let name = syncer.name.clone();
    let streams = shared.streams();
    let wake = Arc::new(Notify::new());
    let live = shared.live();
    let timing = ApplierTiming {
        coalesce: streams.settings.coalesce_window,
        retry: streams.settings.retry_interval,
        db_timeout: live.db_timeout,
    };
    let run = {
        let (shared, name) = (shared.clone(), name.clone());
        move |batch: EventBatch| {
            let (shared, name) = (shared.clone(), name.clone());
            async move {
                let targets = Targets {
                    user_ids: batch.user_ids,
                    dept_ids: batch.dept_ids,
                };
                shared.run_events(&name, targets).await
            }
        }
    };
    let applied = {
        let (shared, name) = (shared.clone(), name.clone());
        move |born_at: &[i64]| {
            let now = epoch_millis();
            let latencies: Vec<f64> = born_at
                .iter()
                .map(|&born| now.saturating_sub(born).max(0) as f64 / 1000.0)
                .collect();
            shared.metrics.record_events_applied(&name, &latencies);
        }
    };
    let catching_up = catch_up_worker(shared, db, syncer, catch_ups, &wake, cancel);
    let applier = apply_events(
        db.clone(),
        name.clone(),
        wake.clone(),
        timing,
        cancel.clone(),
        run,
        applied,
    );
    let credentials = Credentials {
        app_key: syncer.app_key.clone(),
        app_secret: syncer.app_secret.clone(),
    };
    let config = StreamConfig {
        open_api_base: streams.open_api_base.clone(),
        ..StreamConfig::default()
    };
    let sink = InboxSink::new(db.clone(), name.clone(), wake.clone(), shared.clone());
    let stats = Arc::new(StreamStats::default());
    shared.metrics.watch_stream_client(&name, stats.clone());
    let connection = async {
        let result = match streams.connector(&config) {
            Ok(connector) => {
                run_stream(
                    &connector,
                    &config,
                    &credentials,
                    sink,
                    state.clone(),
                    stats,
                    cancel.clone(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("syncer {name}: its event stream stopped: {e}");
        }
        // The applier has nothing more coming; stop it too.
        cancel.cancel();
    };
    let gauge = follow_state(shared, &name, state.subscribe(), catch_ups, cancel);
    tokio::join!(applier, connection, gauge, catching_up);
}

/// Mirrors the connection state in the `syncerd_stream_connected` gauge and the log, and asks
/// for a catch-up on the first connection and after every reconnect: events born while nobody
/// listened may never come.
async fn follow_state(
    shared: &Shared,
    name: &str,
    mut state: watch::Receiver<ConnectionState>,
    catch_ups: &CatchUps,
    cancel: &CancellationToken,
) {
    let mut gaps = GapTracker::default();
    loop {
        let now = state.borrow_and_update().clone();
        let up = matches!(now, ConnectionState::Connected { .. });
        shared.metrics.set_stream_connected(name, Some(up));
        match &now {
            ConnectionState::Connected { since } => {
                tracing::info!("syncer {name}: event stream connected");
                if let Some(gap) = gaps.up(*since) {
                    catch_ups.ask(gap);
                }
            }
            ConnectionState::Reconnecting {
                last_error,
                retry_in,
                ..
            } => {
                gaps.down();
                let hint = if last_error.is_unauthorized() {
                    ". DingTalk refused the app: is Stream mode on in its developer console? \
                     Else list the syncer in stream.disabled_syncers (the interval runs still sync)"
                } else {
                    ""
                };
                tracing::warn!(
                    "syncer {name}: event stream down ({last_error}); reconnecting in {:.1} s{hint}",
                    retry_in.as_secs_f64()
                );
            }
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = state.changed() => if changed.is_err() { break },
        }
    }
    shared.metrics.set_stream_connected(name, None);
}
