//! The daemon's [`RunFn`] for real syncs: the DingTalk fetch and `pipeline::run_valid`, or for
//! DingTalk events the lookups of their targets and `pipeline::run_targets`.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SyncSettings;
use crate::db::RunMode;
use crate::dingtalk::{Client, Credentials};
use crate::pipeline::{RunContext, RunOptions, RunReport, run_targets, run_valid};

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
            } = request;
            let mut options = RunOptions::new(trigger, RunMode::Apply);
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
