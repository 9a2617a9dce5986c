//! The daemon's HTTP face: `/healthz` (the process lives), `/readyz` (database answered in the
//! last pass and the scheduler runs), `/metrics` (Prometheus text), and the admin API
//! (`GET /api/v1/syncers`, `POST /api/v1/syncers/{name}/run`) behind a bearer token.
//!
//! The admin API is off (404) unless `http.admin_token` is set; the token is compared in
//! constant time and never echoed. Answers never carry a secret: syncer rows are shown by name,
//! organization and schedule only.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::leases::{epoch_millis, get_lease};
use crate::db::{self, RunFilter, RunTrigger, utc_millis};

use super::scheduler::{Desired, Shared, TriggerError, effective_interval};

/// Bound of the database look-ups an admin request makes.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves until `stop` is cancelled, then finishes the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/syncers", get(list_syncers))
        .route("/api/v1/syncers/{name}/run", post(run_now))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness() {
        Ok(line) => (StatusCode::OK, format!("{line}\n")).into_response(),
        Err(line) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {line}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        shared.metrics.render(),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or_default();
        let y = b.get(i).copied().unwrap_or_default();
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// `Ok` when the request carries the admin token; otherwise the answer to send.
fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = shared.admin_token().filter(|t| !t.is_empty()) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "admin API disabled: set http.admin_token",
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <http.admin_token>)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(Box::new(response))
        }
    }
}

#[derive(Debug, Serialize)]
struct SyncerView {
    name: String,
    organization: String,
    enabled: bool,
    valid: bool,
    invalid_reason: Option<String>,
    /// Seconds between runs, after the `scheduler.min_interval` floor.
    interval_seconds: u64,
    /// `sync_interval` as stored.
    configured_interval_seconds: i32,
    scheduled: bool,
    next_run: Option<String>,
    /// A run is going in this process.
    running: bool,
    /// The holder of a live lease, when some process runs the syncer now.
    lease_holder: Option<String>,
    last_run: Option<LastRunView>,
}

#[derive(Debug, Serialize)]
struct LastRunView {
    id: Option<i64>,
    status: String,
    trigger: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    message: Option<String>,
}

async fn list_syncers(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(response) = authorize(&shared, &headers) {
        return *response;
    }
    let min_interval = shared.live().min_interval;
    let entries: Vec<_> = {
        let syncers = shared.syncers.lock().await;
        syncers
            .values()
            .map(|e| {
                (
                    e.row.name.clone(),
                    e.row.organization.clone(),
                    e.row.is_enabled,
                    e.row.sync_interval,
                    e.desired.clone(),
                    e.job,
                    e.soon,
                    e.last_run.clone(),
                )
            })
            .collect()
    };
    let mut jobs = shared.jobs.clone();
    let mut views = Vec::with_capacity(entries.len());
    for (name, organization, enabled, configured, desired, job, soon, last_seen) in entries {
        // The earlier of the repeating job's next tick and a pending first run.
        let mut next_run: Option<DateTime<Utc>> = None;
        for id in [job, soon].into_iter().flatten() {
            let tick = tokio::time::timeout(LOOKUP_TIMEOUT, jobs.next_tick_for_job(id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            next_run = match (next_run, tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let next_run = next_run.map(utc_millis);
        let (mut last_run, mut lease_holder) = (None, None);
        if let Some(db) = shared.db() {
            let filter = RunFilter {
                syncer: Some(name.clone()),
                limit: 1,
                ..RunFilter::default()
            };
            if let Ok(Ok(mut rows)) =
                tokio::time::timeout(LOOKUP_TIMEOUT, db::list_runs(db, &filter)).await
            {
                last_run = rows.pop().map(|r| LastRunView {
                    id: Some(r.id),
                    status: r.status.to_string(),
                    trigger: Some(r.trigger.to_string()),
                    started_at: Some(utc_millis(r.started_at)),
                    finished_at: r.finished_at.map(utc_millis),
                    message: r.error_summary,
                });
            }
            if let Ok(Ok(Some(lease))) =
                tokio::time::timeout(LOOKUP_TIMEOUT, get_lease(db, &name)).await
            {
                lease_holder = lease.is_live(epoch_millis()).then_some(lease.holder);
            }
        }
        if last_run.is_none() {
            last_run = last_seen.map(|l| LastRunView {
                id: l.summary.run_id,
                status: l.summary.status.to_string(),
                trigger: None,
                started_at: None,
                finished_at: Some(utc_millis(l.finished_at)),
                message: l.summary.message,
            });
        }
        let invalid_reason = match &desired {
            Desired::Invalid(reason) => Some(reason.clone()),
            _ => None,
        };
        views.push(SyncerView {
            running: shared.is_running(&name),
            name,
            organization,
            enabled,
            valid: invalid_reason.is_none(),
            invalid_reason,
            interval_seconds: effective_interval(configured, min_interval).0.as_secs(),
            configured_interval_seconds: configured,
            scheduled: job.is_some(),
            next_run,
            lease_holder,
            last_run,
        });
    }
    axum::Json(json!({ "syncers": views })).into_response()
}

async fn run_now(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&shared, &headers) {
        return *response;
    }
    if let Some(db) = shared.db()
        && let Ok(Ok(Some(lease))) =
            tokio::time::timeout(LOOKUP_TIMEOUT, get_lease(db, &name)).await
        && lease.is_live(epoch_millis())
        && lease.holder != shared.instance
    {
        return error(
            StatusCode::CONFLICT,
            format!(
                "a run of syncer `{name}` is already going on {}",
                lease.holder
            ),
        );
    }
    match shared.trigger(&name, RunTrigger::Manual).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "syncer": name, "started": true })),
        )
            .into_response(),
        Err(e @ TriggerError::AlreadyRunning(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ TriggerError::Disabled(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ TriggerError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ TriggerError::Invalid { .. }) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e @ (TriggerError::ShuttingDown | TriggerError::NotConnected)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret-token", b"secret-token-longer"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
