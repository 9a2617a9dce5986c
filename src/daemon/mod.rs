//! The daemon: follows the `syncer` table, schedules every enabled DingTalk syncer, survives
//! signals, replicas and crashes, and shows itself over HTTP.
//!
//! The daemon only decides *when* a run happens; *what* a run does comes in as a [`RunFn`]
//! value (the lead wires it to `pipeline::run_once`). Pieces:
//! * [`scheduler`]: the reconcile pass (table → a timer job per syncer), the single-flight
//!   guard, the process-wide run limit, the run task (which runs through [`crate::launch`]);
//! * [`shutdown`]: signals as [`Control`] events, and the database back-off;
//! * [`http`]: `/healthz`, `/readyz`, `/metrics` and the admin API; [`metrics`]: the counters;
//! * `notices`: the webhook told about runs that need a person (`[notify]`).
//!
//! One `CancellationToken` tree: under the root, one child stops the reconcile loop, one the HTTP
//! server (last, so `/healthz` answers during the drain), and the `runs` child parents one token
//! per run, so shutdown cancels every run at once.
//! Runs live in a `TaskTracker` that shutdown drains within `scheduler.shutdown_grace`.

mod console;
pub mod events;
pub mod http;
pub mod metrics;
mod notices;
pub mod notify;
mod pipeline;
pub mod scheduler;
pub mod shutdown;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::db::{self, Db, DbError, RunCounts, RunStatus, RunTrigger, StaleRunFilter};
use crate::dingtalk::Targets;
use crate::syncer::ValidSyncer;

pub use pipeline::{Tools, pipeline_run_fn, summary_of};
pub use scheduler::{TriggerError, effective_interval};
pub use shutdown::{Control, ControlSource};

use scheduler::Shared;

/// What the daemon hands the pipeline for one run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The row as read and validated just before the run (fresher than the last reconcile).
    pub syncer: ValidSyncer,
    pub trigger: RunTrigger,
    /// Cancelled at shutdown or when the lease is lost: stop at the next safe point and return
    /// status `interrupted`.
    pub cancel: CancellationToken,
    /// [`crate::launch::instance_id`] of this process. The run's `syncer_run.instance` must be
    /// exactly this: crash recovery matches running rows to the lease holder by it.
    pub instance: String,
    /// The daemon's connection pool.
    pub db: Db,
    /// For a run of DingTalk events (`trigger` is `event`): the users and departments to look
    /// up. `None`: a full run.
    pub targets: Option<Targets>,
    /// Apply leaver actions past `sync.max_removals` / `sync.max_removal_percent` (the
    /// console's "Approve removals" of a held run, once).
    pub allow_removals: bool,
}

/// What a run reports back to the daemon (for metrics, logs and the admin API). The run
/// records its own `syncer_run` row; the daemon never records it a second time.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The `syncer_run` row the run wrote, if it got that far.
    pub run_id: Option<i64>,
    pub status: RunStatus,
    /// What the run did, as recorded in its `syncer_run` row.
    pub counts: RunCounts,
    /// DingTalk API calls made.
    pub api_calls: u64,
    pub duration: Duration,
    /// The operator-facing message of a run that did not fully succeed; free of secrets.
    pub message: Option<String>,
}

impl RunSummary {
    /// A run that ended with `status` and nothing else to report.
    pub fn bare(status: RunStatus, duration: Duration, message: Option<String>) -> Self {
        RunSummary {
            run_id: None,
            status,
            counts: RunCounts::default(),
            api_calls: 0,
            duration,
            message,
        }
    }
}

/// The work of one run. The lead wires it to `pipeline::run_once` plus the DingTalk client.
pub type RunFn = Arc<dyn Fn(RunRequest) -> BoxFuture<'static, RunSummary> + Send + Sync>;

/// Re-reads the configuration (file, environment) on SIGHUP.
pub type ConfigLoader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// Everything the daemon needs to start.
pub struct DaemonOptions {
    pub settings: Settings,
    pub run_fn: RunFn,
    /// The console's Test connection and Dry run; without them the console says they are
    /// unavailable (tests that run a stand-in [`RunFn`]).
    pub tools: Option<Tools>,
    /// Used on SIGHUP; `None` means a reload only reconciles.
    pub config_loader: Option<ConfigLoader>,
    /// See [`crate::launch::instance_id`].
    pub instance: String,
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonExit {
    /// Stopped on request; runs finished or were recorded as interrupted.
    Graceful,
    /// A second stop request arrived during shutdown: leave at once.
    Forced,
}

/// Why the daemon could not start (it never stops for a database that is down).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "cannot listen on http.listen {listen}: {source}. Is another process using the port? \
         Set http.listen / SYNCERD_HTTP__LISTEN to a free address"
    )]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what} took longer than {after:?}; is the database overloaded?")]
    Timeout { what: String, after: Duration },
}

/// A daemon whose HTTP port is bound; [`BoundDaemon::run`] does the rest.
pub struct BoundDaemon {
    root: CancellationToken,
    shared: Arc<Shared>,
    listener: TcpListener,
    settings: Settings,
    config_loader: Option<ConfigLoader>,
}

/// Binds `http.listen` (the only start-up step that may fail) and prepares the scheduler.
pub async fn bind(options: DaemonOptions) -> Result<BoundDaemon, DaemonError> {
    options.settings.http.check_admin_token()?;
    let listen = options.settings.http.listen.clone();
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|source| DaemonError::Bind {
            listen: listen.clone(),
            source,
        })?;
    let root = CancellationToken::new();
    let tools = options.tools;
    let client = tools.as_ref().map(|t| t.client().clone());
    let shared = Shared::new(
        &options.settings,
        options.run_fn,
        client,
        options.instance,
        &root,
    );
    if let Some(tools) = tools {
        shared.set_tools(tools);
    }
    Ok(BoundDaemon {
        root,
        shared,
        listener,
        settings: options.settings,
        config_loader: options.config_loader,
    })
}

impl BoundDaemon {
    /// The address the HTTP endpoints answer on (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Runs until `control` asks to stop: connect (retrying while the database is down),
    /// recover crashed runs, reconcile and schedule, then shut down gracefully.
    pub async fn run(self, mut control: ControlSource) -> DaemonExit {
        let BoundDaemon {
            root,
            shared,
            listener,
            mut settings,
            config_loader,
        } = self;
        tracing::info!(
            instance = %shared.instance,
            listen = %settings.http.listen,
            database = %settings.database.url,
            "syncerd daemon starting"
        );
        let http_task = tokio::spawn(http::serve(
            listener,
            shared.clone(),
            http::ServeLimits::from(&settings.http),
            root.child_token(),
        ));

        // Connect, retrying with back-off; a stop request meanwhile ends the daemon. A reload
        // asked for meanwhile (the operator fixed the configuration while the database was
        // away) is kept and done once connected, not dropped.
        let mut reload_pending = false;
        let db = {
            let connect = shutdown::connect_with_backoff(&settings.database, &shared);
            tokio::pin!(connect);
            loop {
                tokio::select! {
                    db = &mut connect => break Some(db),
                    ctl = control.recv() => match ctl {
                        Some(Control::Reload) => {
                            tracing::info!(
                                "reload requested before the database was reached: done once connected"
                            );
                            reload_pending = true;
                        }
                        Some(Control::Shutdown(why)) => {
                            tracing::info!("stop requested ({why}) before the database was reached");
                            break None;
                        }
                        None => {
                            tracing::info!("control channel closed before the database was reached");
                            break None;
                        }
                    },
                }
            }
        };
        let exit = match db {
            Some(db) => {
                shared.set_db(db);
                shared.start_notices();
                shared.start_jobs();
                if reload_pending {
                    reload(&shared, &mut settings, config_loader.as_ref());
                }
                let reconcile_stop = root.child_token();
                let reconcile = tokio::spawn(scheduler::reconcile_loop(
                    shared.clone(),
                    reconcile_stop.clone(),
                ));
                let exit = loop {
                    match control.recv().await {
                        Some(Control::Reload) => {
                            reload(&shared, &mut settings, config_loader.as_ref());
                            shared.reconcile_soon();
                        }
                        Some(Control::Shutdown(why)) => {
                            tracing::info!("{why}: shutting down");
                            break shutdown_runs(&shared, &mut control, &reconcile_stop).await;
                        }
                        None => {
                            tracing::info!("control channel closed: shutting down");
                            break shutdown_runs(&shared, &mut control, &reconcile_stop).await;
                        }
                    }
                };
                root.cancel();
                if exit == DaemonExit::Graceful {
                    let _ = tokio::time::timeout(Duration::from_secs(5), reconcile).await;
                }
                exit
            }
            None => DaemonExit::Graceful,
        };
        root.cancel();
        if exit == DaemonExit::Graceful {
            match tokio::time::timeout(Duration::from_secs(5), http_task).await {
                Ok(Ok(Err(e))) => tracing::warn!("the HTTP server ended with an error: {e}"),
                Ok(Err(e)) => tracing::warn!("the HTTP server task failed: {e}"),
                Err(_) => tracing::warn!("the HTTP server did not stop within 5 s"),
                Ok(Ok(Ok(()))) => {}
            }
            if let Some(db) = shared.db() {
                let _ = tokio::time::timeout(Duration::from_secs(5), db.clone().close()).await;
            }
            tracing::info!("syncerd daemon stopped");
        }
        exit
    }
}

/// Stops scheduling, cancels every run, waits up to `shutdown_grace`, and records what was cut.
/// The HTTP server keeps answering meanwhile (`/readyz` says 503).
async fn shutdown_runs(
    shared: &Arc<Shared>,
    control: &mut ControlSource,
    reconcile_stop: &CancellationToken,
) -> DaemonExit {
    notify::notify("STOPPING=1");
    reconcile_stop.cancel();
    shared.stop_jobs();
    shared.cancel_runs();
    let grace = shared.live().shutdown_grace;
    let running = shared.metrics.runs_in_progress();
    if running > 0 {
        tracing::info!("waiting up to {grace:?} for {running} run(s) to reach a safe point");
    }
    let drained = tokio::select! {
        drained = tokio::time::timeout(grace, shared.tracker().wait()) => drained.is_ok(),
        ctl = shutdown::next_stop(control) => {
            tracing::warn!("{ctl} again during shutdown: exiting at once");
            return DaemonExit::Forced;
        }
    };
    let Some(db) = shared.db() else {
        return DaemonExit::Graceful;
    };
    let timeout = shared.live().db_timeout;
    if !drained {
        let still = shared.metrics.runs_in_progress();
        let reason = format!(
            "syncerd stopped before the run finished (shutdown grace of {} expired)",
            crate::config::format_duration(grace)
        );
        let filter = StaleRunFilter {
            instance: Some(shared.instance.clone()),
            ..StaleRunFilter::default()
        };
        match tokio::time::timeout(
            timeout,
            db::mark_interrupted(db, &filter, Utc::now(), &reason),
        )
        .await
        {
            Ok(Ok(n)) => tracing::warn!(
                "{still} run(s) did not stop within {grace:?}; recorded {n} as interrupted"
            ),
            Ok(Err(e)) => tracing::error!("could not record the interrupted runs: {e}"),
            Err(_) => tracing::error!("recording the interrupted runs timed out"),
        }
    }
    match tokio::time::timeout(
        timeout,
        db::leases::release_all_leases(db, &shared.instance),
    )
    .await
    {
        Ok(Ok(n)) if n > 0 => tracing::info!("released {n} lease(s)"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("could not release the leases (they expire anyway): {e}"),
        Err(_) => tracing::warn!("releasing the leases timed out (they expire anyway)"),
    }
    DaemonExit::Graceful
}

/// SIGHUP: re-read the configuration and apply what can change while running.
fn reload(shared: &Shared, current: &mut Settings, loader: Option<&ConfigLoader>) {
    let Some(loader) = loader else {
        tracing::info!("reload requested: reconciling now");
        return;
    };
    let new = match loader() {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("reload: keeping the running configuration: {e}");
            return;
        }
    };
    if let Err(e) = new.http.check_admin_token() {
        tracing::error!("reload: keeping the running configuration: {e}");
        return;
    }
    let mut reload = current.reload(&new);
    if reload.applied.iter().any(|c| c.key == "log.level")
        && let Err(e) = crate::telemetry::set_level(&reload.next.log.level)
    {
        tracing::warn!("reload: log.level not changed: {e}");
        reload.applied.retain(|c| c.key != "log.level");
    }
    shared.apply_settings(&reload.next);
    if reload.applied.is_empty() {
        tracing::info!("configuration reloaded: nothing that applies live changed");
    } else {
        let applied: Vec<String> = reload.applied.iter().map(|c| c.to_string()).collect();
        tracing::info!("configuration reloaded: {}", applied.join("; "));
    }
    if !reload.needs_restart.is_empty() {
        tracing::warn!(
            "configuration reloaded, but {} changed: restart syncerd for that to take effect",
            reload.needs_restart.join(", ")
        );
    }
    *current = reload.next;
}
