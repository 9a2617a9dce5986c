//! The stand-in [`RunFn`] used until the pipeline is wired: it records a `syncer_run` row
//! (running → succeeded, counts 0, "pipeline not wired") and touches no user. The lead replaces
//! it with `pipeline::run_once`; tests keep using it (with a delay) to exercise the daemon alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt as _;

use crate::db::{self, NewRun, RunCounts, RunMode, RunOutcome, RunStatus};

use super::{RunFn, RunRequest, RunSummary};

/// What the placeholder writes in `error_summary`.
pub const PLACEHOLDER_MESSAGE: &str = "pipeline not wired";

/// How long the placeholder's database writes may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`RunFn`] that records a run lasting `delay` (stopping early, as `interrupted`, when its
/// token is cancelled) without fetching or writing any user.
pub fn placeholder_run_fn(delay: Duration) -> RunFn {
    Arc::new(move |request: RunRequest| placeholder_run(request, delay, true).boxed())
}

/// Like [`placeholder_run_fn`], but the run never reaches a safe point: it ignores its token,
/// so shutdown has to wait out `scheduler.shutdown_grace` (tests of the grace and forced exit).
pub fn stubborn_placeholder_run_fn(delay: Duration) -> RunFn {
    Arc::new(move |request: RunRequest| placeholder_run(request, delay, false).boxed())
}

async fn placeholder_run(request: RunRequest, delay: Duration, honour_cancel: bool) -> RunSummary {
    let started = Instant::now();
    let RunRequest {
        syncer,
        trigger,
        cancel,
        instance,
        db,
    } = request;
    let new = NewRun {
        syncer_name: syncer.name.clone(),
        organization: syncer.organization.clone(),
        trigger,
        mode: RunMode::Apply,
        started_at: Utc::now(),
        instance,
    };
    let id = match tokio::time::timeout(WRITE_TIMEOUT, db::insert_run(&db, new)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            return RunSummary::bare(RunStatus::Failed, started.elapsed(), Some(e.to_string()));
        }
        Err(_) => {
            return RunSummary::bare(
                RunStatus::Failed,
                started.elapsed(),
                Some("recording the run timed out".into()),
            );
        }
    };
    let (status, message) = tokio::select! {
        _ = tokio::time::sleep(delay) => (RunStatus::Succeeded, PLACEHOLDER_MESSAGE.to_owned()),
        _ = cancel.cancelled(), if honour_cancel => (
            RunStatus::Interrupted,
            format!("stopped before the end (shutdown or lost lease); {PLACEHOLDER_MESSAGE}"),
        ),
    };
    let outcome = RunOutcome {
        status,
        counts: RunCounts::default(),
        api_calls: 0,
        error_summary: Some(message.clone()),
        details: None,
        finished_at: Utc::now(),
        duration: started.elapsed(),
    };
    let summary = |status, message| RunSummary {
        run_id: Some(id),
        ..RunSummary::bare(status, started.elapsed(), Some(message))
    };
    match tokio::time::timeout(WRITE_TIMEOUT, db::finish_run(&db, id, outcome)).await {
        Ok(Ok(())) => summary(status, message),
        Ok(Err(e)) => summary(RunStatus::Failed, e.to_string()),
        Err(_) => summary(
            RunStatus::Failed,
            "recording the outcome timed out".to_owned(),
        ),
    }
}
