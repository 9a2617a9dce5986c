//! The daemon's [`RunFn`] for real syncs: the DingTalk fetch and `pipeline::run_valid`, or for
//! DingTalk events the lookups of their targets and `pipeline::run_targets`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::checkup::{SyncerCheck, check_syncer};
use crate::config::{Settings, StreamSettings, SyncSettings};
use crate::db::{Db, DbError, RunMode, RunTrigger, SyncerRow};
use crate::dingtalk::{Client, Credentials};
use crate::pipeline::{RunContext, RunOptions, RunReport, run_targets, run_valid};
use crate::syncer::ValidSyncer;

use super::{RunFn, RunRequest, RunSummary};

/// Runs each request through the pipeline with `client`, whose token cache and rate limiters
/// are shared by every syncer of this process.
pub fn pipeline_run_fn(sync: SyncSettings, client: Client) -> RunFn {
    Arc::new(move |request: RunRequest| {
        let client = client.clone();
        let sync = sync.clone();
        Box::pin(async move {
            let RunRequest {
                syncer,
                trigger,
                cancel,
                instance,
                db,
                targets,
                allow_removals,
            } = request;
            let mut options = RunOptions::new(trigger, RunMode::Apply);
            options.allow_removals = allow_removals;
            options.adopt_existing = sync.adopt_existing;
            options.cancel = cancel;
            let ctx = RunContext { db, sync, instance };
            let credentials = Credentials {
                app_key: syncer.app_key.clone(),
                app_secret: syncer.app_secret.clone(),
            };
            let counter = options.api_calls.clone();
            let report = match targets {
                Some(targets) => {
                    let lookup = client.lookup_targets(&credentials, &targets, counter);
                    run_targets(&ctx, &syncer, &targets, lookup, options).await
                }
                None => {
                    let fetch = client.fetch_directory_counted(&credentials, None, counter);
                    run_valid(&ctx, &syncer, fetch, options).await
                }
            };
            // The daemon idles for most of an interval: free what the run left cached.
            ctx.db.release_idle_memory().await;
            summary_of(&report)
        })
    })
}

/// What the daemon keeps of a finished run.
pub fn summary_of(report: &RunReport) -> RunSummary {
    RunSummary {
        run_id: report.run_id,
        status: report.status,
        counts: report.counts,
        api_calls: report.api_calls,
        duration: Duration::from_millis(report.duration_ms),
        message: report.summary_line(),
    }
}

/// What the console's **Test connection** and **Dry run** need besides the database: the
/// DingTalk client the runs share (its token cache and rate limiters) and the settings.
#[derive(Clone)]
pub struct Tools {
    client: Client,
    sync: SyncSettings,
    stream: StreamSettings,
    open_api_base: String,
}

impl Tools {
    pub fn new(settings: &Settings, client: Client) -> Self {
        Tools {
            client,
            sync: settings.sync.clone(),
            stream: settings.stream.clone(),
            open_api_base: settings.dingtalk.open_api_base.clone(),
        }
    }

    /// The DingTalk client the runs share (the streams' catch-ups read leave records with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The daemon's [`RunFn`] over the same client.
    pub fn run_fn(&self) -> RunFn {
        pipeline_run_fn(self.sync.clone(), self.client.clone())
    }

    /// What `syncerd check NAME` reports of `row`.
    pub async fn check(&self, db: &Db, row: &SyncerRow) -> Result<SyncerCheck, DbError> {
        check_syncer(&self.client, &self.stream, &self.open_api_base, db, row).await
    }

    /// A dry run of `syncer`: fetched, planned and applied inside a transaction that is rolled
    /// back, so every constraint is checked and nothing is written (no run history either).
    pub async fn dry_run(
        &self,
        db: Db,
        syncer: &ValidSyncer,
        instance: String,
        cancel: CancellationToken,
    ) -> RunReport {
        let mut options = RunOptions::new(RunTrigger::Manual, RunMode::DryRun);
        options.adopt_existing = self.sync.adopt_existing;
        options.cancel = cancel;
        let ctx = RunContext {
            db,
            sync: self.sync.clone(),
            instance,
        };
        let credentials = Credentials {
            app_key: syncer.app_key.clone(),
            app_secret: syncer.app_secret.clone(),
        };
        let fetch =
            self.client
                .fetch_directory_counted(&credentials, None, options.api_calls.clone());
        run_valid(&ctx, syncer, fetch, options).await
    }
}
