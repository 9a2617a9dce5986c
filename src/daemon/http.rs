//! The daemon's HTTP face: `/healthz` (the process lives), `/readyz` (database answered in the
//! last pass and the scheduler runs), `/metrics` (Prometheus text), and the admin API
//! (`GET /api/v1/syncers`, `POST /api/v1/syncers/{name}/run`) behind a bearer token.
//!
//! The admin API is off (404) unless `http.admin_token` is set; the token is compared in
//! constant time and never echoed. Answers never carry a secret: syncer rows are shown by name,
//! organization and schedule only; the probes name no database host or user. "Sync now" is
//! limited to one run start per syncer and `scheduler.min_interval` (429), and runs a disabled
//! syncer only with `?force=true`. Connections are bounded in time and number (`serve`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpSettings;
use crate::db::leases::{epoch_millis, get_lease};
use crate::db::{self, Db, RunFilter, RunTrigger, utc_millis};

use super::scheduler::{Desired, Shared, SyncerState, TriggerError};

/// Bound of the database look-ups an admin request makes.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping waits for the answers in flight before it drops their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The answer to a connection over `http.max_connections`, sent without reading its request.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 51\r\nRetry-After: 1\r\n\r\n\
too many connections (http.max_connections); retry\n";

/// What bounds the HTTP server's connections (`[http]` keys).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&HttpSettings> for ServeLimits {
    fn from(http: &HttpSettings) -> Self {
        ServeLimits {
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            max_connections: http.max_connections.max(1),
        }
    }
}

/// Serves until `stop` is cancelled, then finishes the requests in flight (for a few seconds).
///
/// Connections are served here rather than by `axum::serve`, which has no header-read timeout:
/// clients that send half a request and wait must not hold sockets (and the file descriptors
/// SQLite needs) for ever. Each connection gets `header_read_timeout` to send its headers, is
/// closed after `idle_timeout` without a request or a byte, and past `max_connections` new
/// connections get a 503 and are closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ServeLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = router(shared);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin, and keep serving.
                    tracing::debug!("accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if last_refusal_log.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    "HTTP connection refused: {} connections are open (http.max_connections)",
                    limits.max_connections
                );
                last_refusal_log = Some(Instant::now());
            }
            // Best effort, without waiting: a client that does not read gets the close only.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            limits,
            stop.clone(),
            slot,
        ));
    }
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("some HTTP connections did not close in time");
    }
    Ok(())
}

/// When a connection last moved a byte, and whether a request is being answered on it.
struct Activity {
    start: Instant,
    last_millis: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Counts a request as in flight until its answer is produced (or the request is dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A socket that records when it last read or wrote a byte, and holds the connection's slot
/// under `http.max_connections`. The slot is given back before the socket is shut down or
/// closed (fields drop in order), so a client that saw the close and connects again finds it
/// free.
struct ActivityIo {
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.slot = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once the connection has had no request in flight and moved no byte for `idle`.
async fn idle(activity: &Activity, idle: Duration) {
    loop {
        let quiet = activity.idle_for();
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
        if !busy && quiet >= idle {
            return;
        }
        // A request in flight touches the activity when it ends: look again a full period on.
        let wait = if busy { idle } else { idle - quiet };
        tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
    }
}

/// Serves one connection (HTTP/1.1 with keep-alive) within `limits`; `slot` is held until the
/// connection closes.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: ServeLimits,
    stop: CancellationToken,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_millis: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(ActivityIo {
        slot: Some(slot),
        inner: stream,
        activity: activity.clone(),
    });
    let service = TowerToHyperService::new(app);
    let counted = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let in_flight = InFlight::enter(&counted);
        let answer = hyper::service::Service::call(&service, request);
        async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let stopping = tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("HTTP connection ended: {e}");
            }
            false
        }
        () = idle(&activity, limits.idle_timeout) => false,
        () = stop.cancelled() => true,
    };
    if stopping {
        // Finish the answer in flight, then close.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, connection).await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/syncers", get(list_syncers))
        .route("/api/v1/syncers/{name}/run", post(run_now))
        .merge(super::console::routes())
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
        shared.metrics_text(),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Compares two byte strings in time that depends only on their lengths: every byte is looked
/// at, and `black_box` keeps the compiler from stopping at the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or_default();
        let y = b.get(i).copied().unwrap_or_default();
        diff = std::hint::black_box(diff | usize::from(x ^ y));
    }
    diff == 0
}

/// The token of an `Authorization: Bearer <token>` header; the scheme in any case, as HTTP
/// says schemes are.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
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
        .and_then(bearer_token);
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
    /// Its DingTalk event stream in this process: `connected since …`, `reconnecting since …`.
    stream: Option<String>,
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
    let snapshot = shared.snapshot().await;
    let mut views = Vec::with_capacity(snapshot.syncers.len());
    for state in snapshot.syncers {
        let (last_run, lease_holder) = match &snapshot.db {
            Some(db) => stored_state(db, &state.name).await,
            None => (None, None),
        };
        views.push(view(state, last_run, lease_holder));
    }
    axum::Json(json!({ "syncers": views })).into_response()
}

/// The newest run of `name` in the history, and the holder of its lease while it is live.
async fn stored_state(db: &Db, name: &str) -> (Option<LastRunView>, Option<String>) {
    let (mut last_run, mut lease_holder) = (None, None);
    let filter = RunFilter {
        syncer: Some(name.to_owned()),
        limit: 1,
        ..RunFilter::default()
    };
    if let Ok(Ok(mut rows)) = tokio::time::timeout(LOOKUP_TIMEOUT, db::list_runs(db, &filter)).await
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
    if let Ok(Ok(Some(lease))) = tokio::time::timeout(LOOKUP_TIMEOUT, get_lease(db, name)).await {
        lease_holder = lease.is_live(epoch_millis()).then_some(lease.holder);
    }
    (last_run, lease_holder)
}

/// One syncer as the admin API shows it: the history's last run, else the one this process saw.
fn view(
    state: SyncerState,
    last_run: Option<LastRunView>,
    lease_holder: Option<String>,
) -> SyncerView {
    let last_run = last_run.or_else(|| {
        state.last_run.map(|l| LastRunView {
            id: l.summary.run_id,
            status: l.summary.status.to_string(),
            trigger: None,
            started_at: None,
            finished_at: Some(utc_millis(l.finished_at)),
            message: l.summary.message,
        })
    });
    let invalid_reason = match state.desired {
        Desired::Invalid(reason) => Some(reason),
        _ => None,
    };
    SyncerView {
        running: state.running,
        name: state.name,
        organization: state.organization,
        enabled: state.enabled,
        valid: invalid_reason.is_none(),
        invalid_reason,
        interval_seconds: state.interval.as_secs(),
        configured_interval_seconds: state.configured_interval,
        scheduled: state.scheduled,
        next_run: state.next_run.map(utc_millis),
        lease_holder,
        last_run,
        stream: state.stream,
    }
}

/// `?force=true` runs a disabled syncer.
#[derive(Debug, Default, Deserialize)]
struct RunOptions {
    #[serde(default)]
    force: bool,
}

async fn run_now(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(options): Query<RunOptions>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&shared, &headers) {
        return *response;
    }
    let snapshot = shared.snapshot().await;
    let disabled = snapshot
        .syncer(&name)
        .is_some_and(|s| matches!(s.desired, Desired::Disabled));
    if disabled && !options.force {
        return error(
            StatusCode::CONFLICT,
            format!(
                "syncer `{name}` is disabled; POST /api/v1/syncers/{name}/run?force=true runs \
                 it once anyway"
            ),
        );
    }
    if let Some(db) = &snapshot.db
        && let Ok(Ok(Some(lease))) =
            tokio::time::timeout(LOOKUP_TIMEOUT, get_lease(db, &name)).await
        && lease.is_live(epoch_millis())
        && lease.holder != snapshot.instance
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
        Err(e @ TriggerError::TooSoon { retry_after, .. }) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            // Whole seconds, rounded up, so a client that waits that long is not refused again.
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
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
    fn the_bearer_scheme_is_matched_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret-token", b"secret-token-longer"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
