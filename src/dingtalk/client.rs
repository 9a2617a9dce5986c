//! The DingTalk HTTP client: token cache, per-API rate limiting, retries and answer decoding.
//!
//! One [`Client`] (and its clones) keeps, per App Key, one access token (refreshed single-flight)
//! one rate limiter per API and one IP-ban pause gate. Create one per process and clone it into
//! every task, so that every call made with an App Key shares them.
//!
//! Secrets: the App Secret and the access token travel in query strings (the old API family)
//! or, for the new family, the token in the `x-acs-dingtalk-access-token` header, marked
//! sensitive. No URL or header is ever logged; transport errors are stripped of their URL and
//! every server or library text is scrubbed of the secret values before it is logged or stored
//! in an error.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::endpoint::{Call, Endpoint};
use super::error::{DingTalkError, Disposition, Failure, classify, classify_open, effective_code};
use super::limiter::{Backoff, PauseGate, RateLimiter};
use super::rng::SplitMix64;
use super::types::{
    Credentials, DepartmentPayload, EndpointStats, FetchStats, TokenResponse, User, UserPage,
};
use crate::config::DingTalkSettings;
use crate::secret::{REDACTED, Secret, redact_text};

/// The page size of `v2/user/list` (DingTalk's maximum).
pub const USER_PAGE_SIZE: u32 = 100;
/// Tokens are refreshed this long before DingTalk says they expire (DingTalk's advice).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(600);
/// What DingTalk documents when `expires_in` is missing.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(7200);
/// Token refreshes one request may trigger before it gives up.
const MAX_TOKEN_REFRESHES: u32 = 3;
/// Server text kept in an error message, at most.
const MAX_SERVER_TEXT: usize = 300;
/// Pages of leave records one listing reads by default (50 records a page).
pub const DEFAULT_MAX_LEAVE_RECORD_PAGES: u64 = 200;
/// The header of the new API family that carries the access token.
const OPEN_API_TOKEN_HEADER: &str = "x-acs-dingtalk-access-token";

/// How the client talks to DingTalk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URL of the old ("oapi") API family, e.g. `https://oapi.dingtalk.com`.
    pub api_base: String,
    /// Base URL of the new API family, e.g. `https://api.dingtalk.com` (the leave records).
    pub open_api_base: String,
    /// Pages of leave records one listing reads at most; a longer one fails.
    pub max_leave_record_pages: u64,
    /// Calls per second per API per App Key.
    pub qps_per_api: u32,
    /// Requests in flight at once per fetch.
    pub max_concurrency: usize,
    /// Timeout of one HTTP request (connect, send and read the whole answer).
    pub request_timeout: Duration,
    /// Attempts per request for retryable failures.
    pub max_attempts: u32,
    /// How long every call of an App Key pauses after DingTalk's IP-ban answer.
    pub ip_ban_pause: Duration,
    /// First retry delay (jittered between half and all of it, doubling per retry).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Largest answer body read; a longer one is abandoned unread, never buffered whole.
    pub max_response_bytes: u64,
    /// Member pages read per department; a listing that goes on makes the fetch incomplete.
    pub max_pages_per_department: u64,
    /// Departments one walk reaches at most (the root included); beyond it the fetch fails.
    pub max_departments: usize,
    /// Longest one whole fetch may take, every call included.
    pub fetch_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::from(&DingTalkSettings::default())
    }
}

impl From<&DingTalkSettings> for ClientConfig {
    fn from(s: &DingTalkSettings) -> Self {
        Self {
            api_base: s.api_base.clone(),
            open_api_base: s.open_api_base.clone(),
            max_leave_record_pages: DEFAULT_MAX_LEAVE_RECORD_PAGES,
            qps_per_api: s.qps_per_api,
            max_concurrency: s.max_concurrency,
            request_timeout: s.request_timeout,
            max_attempts: s.max_attempts,
            ip_ban_pause: s.ip_ban_pause,
            // DingTalk's advice after a QPS answer is to wait about a second.
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_response_bytes: s.max_response_bytes,
            max_pages_per_department: s.max_pages_per_department,
            max_departments: s.max_departments,
            fetch_timeout: s.fetch_timeout,
        }
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), DingTalkError> {
        let base = self.api_base.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(DingTalkError::Config(format!(
                "dingtalk.api_base `{}` must start with http:// or https://",
                redact_text(base)
            )));
        }
        let open = self.open_api_base.trim();
        if !(open.starts_with("http://") || open.starts_with("https://")) {
            return Err(DingTalkError::Config(format!(
                "dingtalk.open_api_base `{}` must start with http:// or https://",
                redact_text(open)
            )));
        }
        if self.max_leave_record_pages == 0 {
            return Err(DingTalkError::Config(
                "the leave records' page limit must be at least 1".into(),
            ));
        }
        if self.qps_per_api == 0 {
            return Err(DingTalkError::Config(
                "dingtalk.qps_per_api must be at least 1".into(),
            ));
        }
        if self.max_concurrency == 0 {
            return Err(DingTalkError::Config(
                "dingtalk.max_concurrency must be at least 1".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(DingTalkError::Config(
                "dingtalk.max_attempts must be at least 1".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(DingTalkError::Config(
                "dingtalk.request_timeout must be longer than zero".into(),
            ));
        }
        if self.max_response_bytes == 0 {
            return Err(DingTalkError::Config(
                "dingtalk.max_response_bytes must be at least 1".into(),
            ));
        }
        if self.max_pages_per_department == 0 || self.max_departments == 0 {
            return Err(DingTalkError::Config(
                "dingtalk.max_pages_per_department and dingtalk.max_departments must be at least 1"
                    .into(),
            ));
        }
        if self.fetch_timeout.is_zero() {
            return Err(DingTalkError::Config(
                "dingtalk.fetch_timeout must be longer than zero".into(),
            ));
        }
        Ok(())
    }
}

/// A DingTalk client. Cheap to clone; clones share tokens, limiters and pause gates.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    base: String,
    open_base: String,
    http: reqwest::Client,
    apps: Mutex<HashMap<String, Arc<AppState>>>,
}

/// How one call ended short of an error.
enum Attempted {
    Answer(Value),
    /// DingTalk rejected the access token (the caller refreshes it and replays once).
    TokenRejected(Failure),
}

/// Everything shared by the calls of one App Key.
pub(crate) struct AppState {
    token: tokio::sync::Mutex<Option<CachedToken>>,
    limiters: HashMap<Endpoint, RateLimiter>,
    ban: PauseGate,
    rng: Mutex<SplitMix64>,
    /// The last few tokens DingTalk accepted a call with. A token rejected after it was
    /// accepted was revoked (another refresh helps); one never accepted points at the app.
    accepted: Mutex<VecDeque<Secret>>,
}

/// Accepted tokens remembered per App Key.
const ACCEPTED_TOKENS_KEPT: usize = 4;

impl AppState {
    fn note_accepted(&self, token: &Secret) {
        let mut accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        if accepted.contains(token) {
            return;
        }
        if accepted.len() >= ACCEPTED_TOKENS_KEPT {
            accepted.pop_front();
        }
        accepted.push_back(token.clone());
    }

    fn was_accepted(&self, token: &Secret) -> bool {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(token)
    }
}

struct CachedToken {
    token: Secret,
    /// The secret the token was obtained with: a changed secret must be proven again.
    app_secret: Secret,
    refresh_at: Instant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("api_base", &redact_text(&self.inner.base))
            .field("qps_per_api", &self.inner.config.qps_per_api)
            .field("max_concurrency", &self.inner.config.max_concurrency)
            .finish_non_exhaustive()
    }
}

/// Per-call context: the App Key's shared state, the credentials and where statistics go.
pub(crate) struct CallCtx<'a> {
    pub app: Arc<AppState>,
    pub creds: &'a Credentials,
    pub stats: &'a StatsRecorder,
}

/// A running count of the API calls of one fetch, readable while the fetch is under way and
/// after it was dropped: a run cancelled mid-fetch still records the calls it spent.
#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<AtomicU64>);

impl CallCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls sent so far (a call counts once its request is on its way).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Collects [`FetchStats`] of one fetch or check.
#[derive(Debug, Default)]
pub(crate) struct StatsRecorder {
    stats: Mutex<FetchStats>,
    counter: CallCounter,
}

impl StatsRecorder {
    /// A recorder that also counts every call into `counter`.
    pub(crate) fn counting(counter: CallCounter) -> Self {
        Self {
            stats: Mutex::default(),
            counter,
        }
    }

    /// One call is about to be sent: counted before its answer, so that a fetch dropped while
    /// the call is in flight still accounts for it.
    fn count_call(&self, endpoint: Endpoint) {
        self.counter.0.fetch_add(1, Ordering::Relaxed);
        self.with(endpoint, |s| s.calls += 1);
    }

    fn with(&self, endpoint: Endpoint, f: impl FnOnce(&mut EndpointStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        f(stats.entry(endpoint.path().to_owned()).or_default());
    }

    fn record_failure(&self, endpoint: Endpoint, failure: &Failure) {
        self.with(endpoint, |s| {
            match failure {
                Failure::Code { code, .. } => *s.errors_by_code.entry(*code).or_default() += 1,
                other => *s.other_errors.entry(other.label()).or_default() += 1,
            }
            if failure.is_throttle() {
                s.throttled += 1;
            }
        });
    }

    pub(crate) fn total_calls(&self) -> u64 {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.values().map(|s| s.calls).sum()
    }

    pub(crate) fn snapshot(&self) -> FetchStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Client {
    /// Builds a client. Fails only on an unusable configuration.
    pub fn new(config: ClientConfig) -> Result<Client, DingTalkError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            // A redirect would carry the token's query string to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("syncerd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                DingTalkError::Config(format!(
                    "cannot build the HTTP client: {}",
                    describe_reqwest_error(e)
                ))
            })?;
        let base = config.api_base.trim().trim_end_matches('/').to_owned();
        let open_base = config.open_api_base.trim().trim_end_matches('/').to_owned();
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                base,
                open_base,
                http,
                apps: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The shared state of an App Key, created on first use.
    pub(crate) fn app(&self, app_key: &str) -> Arc<AppState> {
        let mut apps = self
            .inner
            .apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        apps.entry(app_key.to_owned())
            .or_insert_with(|| {
                Arc::new(AppState {
                    token: tokio::sync::Mutex::new(None),
                    limiters: Endpoint::ALL
                        .into_iter()
                        .map(|e| (e, RateLimiter::new(self.inner.config.qps_per_api)))
                        .collect(),
                    ban: PauseGate::default(),
                    rng: Mutex::new(SplitMix64::from_entropy()),
                    accepted: Mutex::new(VecDeque::new()),
                })
            })
            .clone()
    }

    /// The current rate (calls per second) of an App Key's limiter for one API; below the
    /// configured rate for a while after DingTalk throttled it.
    pub fn current_rate(&self, app_key: &str, endpoint: Endpoint) -> f64 {
        self.app(app_key)
            .limiters
            .get(&endpoint)
            .map_or(0.0, RateLimiter::current_rate)
    }

    /// The children of one department (`listsub`).
    pub async fn list_sub_departments(
        &self,
        creds: &Credentials,
        dept_id: i64,
    ) -> Result<Vec<DepartmentPayload>, DingTalkError> {
        let stats = StatsRecorder::default();
        let ctx = self.ctx(creds, &stats);
        self.list_sub(&ctx, dept_id).await
    }

    /// One page of a department's direct members (`v2/user/list`), from `cursor` (0 first).
    pub async fn list_users_page(
        &self,
        creds: &Credentials,
        dept_id: i64,
        cursor: i64,
    ) -> Result<UserPage<User>, DingTalkError> {
        let stats = StatsRecorder::default();
        let ctx = self.ctx(creds, &stats);
        self.user_page(&ctx, dept_id, cursor).await
    }

    pub(crate) fn ctx<'a>(&self, creds: &'a Credentials, stats: &'a StatsRecorder) -> CallCtx<'a> {
        CallCtx {
            app: self.app(&creds.app_key),
            creds,
            stats,
        }
    }

    pub(crate) async fn list_sub(
        &self,
        ctx: &CallCtx<'_>,
        dept_id: i64,
    ) -> Result<Vec<DepartmentPayload>, DingTalkError> {
        let call = Call::for_department(Endpoint::DepartmentListSub, dept_id);
        let body = serde_json::json!({ "dept_id": dept_id });
        self.execute(ctx, call, Some(&body)).await
    }

    /// One department's details (`department/get`); the fetch reads the root's name with it.
    pub(crate) async fn department_get(
        &self,
        ctx: &CallCtx<'_>,
        dept_id: i64,
    ) -> Result<DepartmentPayload, DingTalkError> {
        let call = Call::for_department(Endpoint::DepartmentGet, dept_id);
        let body = serde_json::json!({ "dept_id": dept_id });
        self.execute(ctx, call, Some(&body)).await
    }

    pub(crate) async fn user_page(
        &self,
        ctx: &CallCtx<'_>,
        dept_id: i64,
        cursor: i64,
    ) -> Result<UserPage<User>, DingTalkError> {
        let call = Call::for_department(Endpoint::UserList, dept_id);
        let body = serde_json::json!({
            "dept_id": dept_id,
            "cursor": cursor,
            "size": USER_PAGE_SIZE,
            "contain_access_limit": true,
        });
        self.execute(ctx, call, Some(&body)).await
    }

    /// The cached access token of the App Key, fetched when missing or due. Callers that find
    /// it missing while another refresh runs wait for that refresh (single flight).
    pub(crate) async fn access_token(&self, ctx: &CallCtx<'_>) -> Result<Secret, DingTalkError> {
        self.token_and_origin(ctx).await.map(|(token, _)| token)
    }

    /// The token and whether this caller fetched it (rather than finding it cached).
    async fn token_and_origin(&self, ctx: &CallCtx<'_>) -> Result<(Secret, bool), DingTalkError> {
        let mut slot = ctx.app.token.lock().await;
        if let Some(cached) = slot.as_ref()
            && cached.app_secret == ctx.creds.app_secret
            && Instant::now() < cached.refresh_at
        {
            return Ok((cached.token.clone(), false));
        }
        let call = Call::new(Endpoint::GetToken);
        let answer = match self.with_retries(ctx, call, None, None).await? {
            Attempted::Answer(answer) => answer,
            // Not produced for /gettoken (its 40001 means a bad secret), but never loop on it.
            Attempted::TokenRejected(failure) => return Err(self.error_of(ctx, call, failure, 1)),
        };
        let parsed: TokenResponse = serde_json::from_value(answer).unwrap_or_default();
        let Some(token) = parsed.access_token.filter(|t| !t.is_empty()) else {
            let failure = Failure::Malformed("errcode 0 but no access_token".to_owned());
            ctx.stats.record_failure(call.endpoint, &failure);
            return Err(self.error_of(ctx, call, failure, 1));
        };
        let lifetime = parsed
            .expires_in
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let valid_for = if lifetime > TOKEN_REFRESH_MARGIN * 2 {
            lifetime - TOKEN_REFRESH_MARGIN
        } else {
            lifetime / 2
        };
        debug!(
            app_key = %ctx.creds.app_key,
            valid_for_s = valid_for.as_secs(),
            "obtained a DingTalk access token"
        );
        let token = Secret::new(token);
        *slot = Some(CachedToken {
            token: token.clone(),
            app_secret: ctx.creds.app_secret.clone(),
            refresh_at: Instant::now() + valid_for,
        });
        Ok((token, true))
    }

    /// Drops the cached token if it is still the one DingTalk rejected (a concurrent caller may
    /// already have replaced it).
    async fn invalidate_token(&self, ctx: &CallCtx<'_>, rejected: &Secret) {
        let mut slot = ctx.app.token.lock().await;
        if slot.as_ref().is_some_and(|c| c.token == *rejected) {
            *slot = None;
        }
    }

    /// Sends one `/topapi` call with every safeguard: token, IP-ban gate, rate limiter, retries
    /// with back-off, and a replay with a new token when DingTalk rejects the token. The request
    /// fails as [`DingTalkError::TokenRejected`] when a token it fetched itself after a
    /// rejection is rejected too before DingTalk ever accepted it (the app is disabled or its
    /// secret rotated), or after [`MAX_TOKEN_REFRESHES`] refreshes. A replacement token that
    /// another caller had fetched, or that other calls already used, may have been revoked in
    /// the meantime; that earns one more refresh, not a failure.
    /// The answer's `result` is decoded into `T`; a mistyped one fails as
    /// [`DingTalkError::Malformed`] without a retry (the request itself succeeded).
    pub(crate) async fn execute<T: DeserializeOwned>(
        &self,
        ctx: &CallCtx<'_>,
        call: Call,
        body: Option<&Value>,
    ) -> Result<T, DingTalkError> {
        let mut refreshes = 0u32;
        loop {
            let (token, fetched_here) = self.token_and_origin(ctx).await?;
            match self.with_retries(ctx, call, body, Some(&token)).await? {
                Attempted::Answer(answer) => {
                    ctx.app.note_accepted(&token);
                    let secrets = [ctx.creds.app_secret.expose(), token.expose()];
                    let decoded = if call.endpoint.is_open_api() {
                        decode_body(answer, &secrets)
                    } else {
                        decode_result(answer, &secrets)
                    };
                    return decoded.map_err(|failure| {
                        ctx.stats.record_failure(call.endpoint, &failure);
                        self.error_of(ctx, call, failure, 1)
                    });
                }
                Attempted::TokenRejected(failure) => {
                    self.invalidate_token(ctx, &token).await;
                    let never_accepted = !ctx.app.was_accepted(&token);
                    if (fetched_here && refreshes > 0 && never_accepted)
                        || refreshes >= MAX_TOKEN_REFRESHES
                    {
                        return Err(self.error_of(ctx, call, failure, 1));
                    }
                    refreshes += 1;
                    debug!(
                        endpoint = call.endpoint.path(),
                        refreshes, "access token rejected; fetching a new one and replaying"
                    );
                }
            }
        }
    }

    fn error_of(
        &self,
        ctx: &CallCtx<'_>,
        call: Call,
        failure: Failure,
        attempts: u32,
    ) -> DingTalkError {
        failure.into_error(
            call,
            &ctx.creds.app_key,
            attempts,
            self.inner.config.request_timeout,
            self.inner.config.ip_ban_pause,
        )
    }

    /// Sends one call (with `token`, if any) until it succeeds, fails for good, or its token is
    /// rejected, waiting for the IP-ban gate and the rate limiter before every attempt.
    async fn with_retries(
        &self,
        ctx: &CallCtx<'_>,
        call: Call,
        body: Option<&Value>,
        token: Option<&Secret>,
    ) -> Result<Attempted, DingTalkError> {
        let config = &self.inner.config;
        let endpoint = call.endpoint;
        let backoff = Backoff {
            base: config.backoff_base,
            max: config.backoff_max,
        };
        let secrets = [
            ctx.creds.app_secret.expose(),
            token.map_or("", Secret::expose),
        ];
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            ctx.app.ban.wait().await;
            if let Some(limiter) = ctx.app.limiters.get(&endpoint) {
                limiter.acquire().await;
            }
            let request = self.build_request(ctx, endpoint, token, body);
            let started = Instant::now();
            ctx.stats.count_call(endpoint);
            let (outcome, bytes) = self.send(endpoint, request).await;
            ctx.stats.with(endpoint, |s| s.bytes += bytes);
            let failure = match outcome {
                Ok(answer) => {
                    debug!(
                        endpoint = endpoint.path(),
                        dept_id = call.dept_id,
                        attempt = attempts,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        bytes,
                        "DingTalk call succeeded"
                    );
                    return Ok(Attempted::Answer(answer));
                }
                Err(failure) => scrub_failure(failure, &secrets),
            };
            ctx.stats.record_failure(endpoint, &failure);
            debug!(
                endpoint = endpoint.path(),
                dept_id = call.dept_id,
                attempt = attempts,
                elapsed_ms = started.elapsed().as_millis() as u64,
                failure = %failure.label(),
                "DingTalk call failed"
            );
            let disposition = failure.disposition();
            if disposition == Disposition::RefreshToken {
                return Ok(Attempted::TokenRejected(failure));
            }
            if failure.is_throttle()
                && let Some(rate) = ctx
                    .app
                    .limiters
                    .get(&endpoint)
                    .and_then(RateLimiter::slow_down)
            {
                debug!(
                    endpoint = endpoint.path(),
                    rate, "DingTalk throttled the app; slowing this API down"
                );
            }
            if disposition != Disposition::Retry || attempts >= config.max_attempts {
                return Err(self.error_of(ctx, call, failure, attempts));
            }
            ctx.stats.with(endpoint, |s| s.retries += 1);
            if failure == Failure::IpBan {
                if ctx.app.ban.pause_for(config.ip_ban_pause) {
                    warn!(
                        app_key = %ctx.creds.app_key,
                        pause_s = config.ip_ban_pause.as_secs_f64(),
                        "DingTalk answered with its IP-ban signature; pausing every call of this \
                         App Key"
                    );
                }
                continue;
            }
            let delay = {
                let mut rng = ctx.app.rng.lock().unwrap_or_else(PoisonError::into_inner);
                backoff.delay(attempts, &mut rng)
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// The request of one attempt. `body` is the JSON body of a `/topapi` call; for a GET of
    /// the new API family its string members are the query parameters.
    fn build_request(
        &self,
        ctx: &CallCtx<'_>,
        endpoint: Endpoint,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        if endpoint.is_open_api() {
            let url = format!("{}{}", self.inner.open_base, endpoint.path());
            let query: Vec<(&str, &str)> = body
                .and_then(Value::as_object)
                .map(|params| {
                    params
                        .iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                        .collect()
                })
                .unwrap_or_default();
            // A token that is not a valid header value goes as an empty one: DingTalk rejects
            // it like any bad token, and no library error quotes the value.
            let mut value = token
                .and_then(|t| reqwest::header::HeaderValue::from_str(t.expose()).ok())
                .unwrap_or_else(|| reqwest::header::HeaderValue::from_static(""));
            value.set_sensitive(true);
            return self
                .inner
                .http
                .get(url)
                .query(&query)
                .header(OPEN_API_TOKEN_HEADER, value);
        }
        let url = format!("{}{}", self.inner.base, endpoint.path());
        match endpoint {
            Endpoint::GetToken => self.inner.http.get(url).query(&[
                ("appkey", ctx.creds.app_key.as_str()),
                ("appsecret", ctx.creds.app_secret.expose()),
            ]),
            _ => {
                let request = self
                    .inner
                    .http
                    .post(url)
                    .query(&[("access_token", token.map_or("", Secret::expose))]);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            }
        }
    }

    /// One HTTP exchange. Returns the decoded answer or the failure, and the body bytes read.
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> (Result<Value, Failure>, u64) {
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return (Err(failure_of(e)), 0),
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match read_capped(&mut response, self.inner.config.max_response_bytes).await {
            Ok(body) => (
                decode_answer(endpoint, status, content_type.as_deref(), &body),
                body.len() as u64,
            ),
            Err((failure, read)) => (Err(failure), read),
        }
    }
}

/// Reads a response body chunk by chunk, holding at most `limit` bytes: a longer body (by its
/// `Content-Length` or as it streams in) is abandoned as [`Failure::TooLarge`]. The buffer
/// never grows past `limit` either. On failure, also returns the bytes read until then.
async fn read_capped(
    response: &mut reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, (Failure, u64)> {
    let too_large = Failure::TooLarge { limit_bytes: limit };
    if response.content_length().is_some_and(|n| n > limit) {
        return Err((too_large, 0));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let needed = body.len().saturating_add(chunk.len());
                if needed > limit {
                    return Err((too_large, needed as u64));
                }
                if needed > body.capacity() {
                    let target = needed.max(body.capacity().saturating_mul(2)).min(limit);
                    body.reserve_exact(target - body.len());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err((failure_of(e), body.len() as u64)),
        }
    }
}

fn failure_of(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Transport(describe_reqwest_error(error))
    }
}

/// A reqwest error's text and its causes, without the URL (which carries secrets).
pub(crate) fn describe_reqwest_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    redact_text(&parts.join(": "))
}

/// Removes secret values from a text that came from a server or a library, and bounds its size.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = redact_text(text);
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, REDACTED);
    }
    if out.chars().count() > MAX_SERVER_TEXT {
        out = out.chars().take(MAX_SERVER_TEXT).collect::<String>() + "…";
    }
    out
}

fn scrub_failure(failure: Failure, secrets: &[&str]) -> Failure {
    match failure {
        Failure::Code {
            class,
            code,
            errmsg,
        } => Failure::Code {
            class,
            code,
            errmsg: scrub(&errmsg, secrets),
        },
        Failure::Open {
            class,
            status,
            code,
            message,
        } => Failure::Open {
            class,
            status,
            code: scrub(&code, secrets),
            message: scrub(&message, secrets),
        },
        Failure::Transport(detail) => Failure::Transport(scrub(&detail, secrets)),
        Failure::Malformed(detail) => Failure::Malformed(scrub(&detail, secrets)),
        other => other,
    }
}

fn looks_like_html(content_type: Option<&str>, body: &[u8]) -> bool {
    if content_type.is_some_and(|c| c.to_ascii_lowercase().contains("text/html")) {
        return true;
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    body.get(start) == Some(&b'<')
}

fn as_code(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Decodes one HTTP answer into the JSON object of a successful DingTalk answer, or the failure
/// it represents. Total: never panics, whatever the bytes.
pub(crate) fn decode_answer(
    endpoint: Endpoint,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, Failure> {
    if endpoint.is_open_api() {
        return decode_open_answer(status, content_type, body);
    }
    let success_status = (200..300).contains(&status);
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let value = match parsed {
        Err(e) => {
            return Err(if status >= 500 {
                Failure::ServerStatus(status)
            } else if looks_like_html(content_type, body) {
                Failure::IpBan
            } else if success_status {
                Failure::Malformed(format!(
                    "not JSON ({} bytes, {})",
                    body.len(),
                    json_error_kind(&e)
                ))
            } else {
                Failure::OtherStatus(status)
            });
        }
        Ok(v) => v,
    };
    let Some(object) = value.as_object() else {
        return Err(if status >= 500 {
            Failure::ServerStatus(status)
        } else if success_status {
            Failure::Malformed("the answer is JSON but not an object".to_owned())
        } else {
            Failure::OtherStatus(status)
        });
    };
    if object.get("errcode").is_none() && as_code(object.get("status")) == Some(1111) {
        return Err(Failure::IpBan);
    }
    if status >= 500 {
        return Err(Failure::ServerStatus(status));
    }
    let Some(errcode) = as_code(object.get("errcode")) else {
        return Err(if success_status {
            Failure::Malformed("the answer has no errcode".to_owned())
        } else {
            Failure::OtherStatus(status)
        });
    };
    let sub_code = as_text(object.get("sub_code"));
    let code = effective_code(errcode, sub_code.as_deref());
    if code == 0 {
        if !success_status {
            return Err(Failure::OtherStatus(status));
        }
        return Ok(value);
    }
    let errmsg = as_text(object.get("sub_msg"))
        .or_else(|| as_text(object.get("errmsg")))
        .unwrap_or_default();
    Err(Failure::Code {
        class: classify(endpoint, code),
        code,
        errmsg,
    })
}

/// Decodes an answer of the new API family (`api.dingtalk.com/v1.0`): a 2xx JSON object is the
/// answer itself; an error is a non-2xx status whose JSON object carries a text `code` and a
/// `message`. Total: never panics, whatever the bytes.
pub(crate) fn decode_open_answer(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, Failure> {
    let success_status = (200..300).contains(&status);
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) if success_status => {
            return Err(Failure::Malformed(
                "the answer is JSON but not an object".to_owned(),
            ));
        }
        Err(e) if success_status && !looks_like_html(content_type, body) => {
            return Err(Failure::Malformed(format!(
                "not JSON ({} bytes, {})",
                body.len(),
                json_error_kind(&e)
            )));
        }
        _ if status >= 500 => return Err(Failure::ServerStatus(status)),
        Err(_) if looks_like_html(content_type, body) => return Err(Failure::IpBan),
        _ => return Err(Failure::OtherStatus(status)),
    };
    if as_code(object.get("status")) == Some(1111) && object.get("code").is_none() {
        return Err(Failure::IpBan);
    }
    if status >= 500 {
        return Err(Failure::ServerStatus(status));
    }
    if success_status {
        return Ok(Value::Object(object));
    }
    match as_text(object.get("code")) {
        Some(code) => Err(Failure::Open {
            class: classify_open(status, &code),
            status,
            message: as_text(object.get("message")).unwrap_or_default(),
            code,
        }),
        None => Err(Failure::OtherStatus(status)),
    }
}

/// Decodes a whole successful new-API answer into `T` (there is no `result` envelope); a
/// mistyped answer is a malformed one, its text scrubbed of `secrets`. Total: never panics.
pub(crate) fn decode_body<T: DeserializeOwned>(
    answer: Value,
    secrets: &[&str],
) -> Result<T, Failure> {
    serde_json::from_value(answer)
        .map_err(|e| Failure::Malformed(scrub(&format!("unexpected answer: {e}"), secrets)))
}

/// Decodes the `result` of a successful answer into `T`; a missing or mistyped `result` is a
/// malformed answer. serde's message quotes the offending value, so it is scrubbed of `secrets`
/// (the App Secret and the access token the call carried). Total: never panics.
pub(crate) fn decode_result<T: DeserializeOwned>(
    mut answer: Value,
    secrets: &[&str],
) -> Result<T, Failure> {
    let result = answer
        .get_mut("result")
        .map(Value::take)
        .unwrap_or(Value::Null);
    serde_json::from_value(result)
        .map_err(|e| Failure::Malformed(scrub(&format!("unexpected `result`: {e}"), secrets)))
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "i/o error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "truncated",
    }
}

#[cfg(test)]
mod decode_properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::CodeClass;

    fn decode(status: u16, body: &str) -> Result<Value, Failure> {
        decode_answer(Endpoint::UserList, status, None, body.as_bytes())
    }

    #[test]
    fn success_and_error_envelopes_are_classified() {
        let ok = decode(
            200,
            r#"{"errcode":0,"errmsg":"ok","result":{"has_more":false}}"#,
        );
        assert!(ok.is_ok());
        let ok = decode(200, r#"{"errcode":"0","result":[]}"#);
        assert!(ok.is_ok(), "errcode as a string");

        let throttled = decode(
            200,
            r#"{"errcode":88,"errmsg":"ding talk error[subcode=90018]","sub_code":"90018","sub_msg":"触发了qps流控"}"#,
        );
        assert_eq!(
            throttled,
            Err(Failure::Code {
                class: CodeClass::Throttled,
                code: 90018,
                errmsg: "触发了qps流控".into()
            })
        );
        let numeric_sub = decode(200, r#"{"errcode":88,"sub_code":40014}"#);
        assert!(matches!(
            numeric_sub,
            Err(Failure::Code {
                class: CodeClass::InvalidToken,
                code: 40014,
                ..
            })
        ));
        let gone = decode(200, r#"{"errcode":60003,"errmsg":"部门不存在"}"#);
        assert!(matches!(
            gone,
            Err(Failure::Code {
                class: CodeClass::DepartmentGone,
                ..
            })
        ));
    }

    #[test]
    fn ip_ban_gateway_pages_and_garbage_are_told_apart() {
        assert_eq!(
            decode(
                200,
                r#"{"status":1111,"wait":5,"source":"x5","punish":"deny"}"#
            ),
            Err(Failure::IpBan)
        );
        assert_eq!(
            decode(200, "  <!DOCTYPE html><html>denied</html>"),
            Err(Failure::IpBan)
        );
        assert_eq!(
            decode_answer(Endpoint::UserList, 403, Some("text/html"), b"denied"),
            Err(Failure::IpBan)
        );
        assert_eq!(
            decode(502, "<html>502 Bad Gateway</html>"),
            Err(Failure::ServerStatus(502))
        );
        assert_eq!(
            decode(503, r#"{"errcode":0}"#),
            Err(Failure::ServerStatus(503))
        );
        assert!(matches!(
            decode(200, r#"{"errcode":0,"result":{"has_mo"#),
            Err(Failure::Malformed(_))
        ));
        assert!(matches!(decode(200, "[]"), Err(Failure::Malformed(_))));
        assert!(matches!(
            decode(200, r#"{"result":{}}"#),
            Err(Failure::Malformed(_))
        ));
        assert_eq!(decode(404, "not found"), Err(Failure::OtherStatus(404)));
        assert_eq!(decode(429, "slow down"), Err(Failure::OtherStatus(429)));
    }

    #[test]
    fn new_api_answers_are_the_answer_itself_or_a_status_with_a_text_code() {
        let decode = |status: u16, body: &str| {
            decode_answer(Endpoint::LeaveRecords, status, None, body.as_bytes())
        };
        let page = decode(200, r#"{"nextToken":"50","records":[]}"#);
        assert_eq!(
            page.map(|v| v["nextToken"].clone()),
            Ok(Value::from("50")),
            "no errcode needed"
        );
        assert_eq!(
            decode(
                403,
                r#"{"code":"Forbidden.AccessDenied.AccessTokenPermissionDenied","message":"无权限","requestid":"x"}"#
            ),
            Err(Failure::Open {
                class: CodeClass::MissingPermission,
                status: 403,
                code: "Forbidden.AccessDenied.AccessTokenPermissionDenied".into(),
                message: "无权限".into(),
            })
        );
        assert!(matches!(
            decode(
                400,
                r#"{"code":"InvalidAuthentication","message":"不合法的access_token"}"#
            ),
            Err(Failure::Open {
                class: CodeClass::InvalidToken,
                ..
            })
        ));
        assert_eq!(
            decode(503, r#"{"code":"ServiceUnavailable"}"#),
            Err(Failure::ServerStatus(503))
        );
        assert_eq!(decode(404, "not here"), Err(Failure::OtherStatus(404)));
        assert_eq!(
            decode(400, r#"{"message":"no code"}"#),
            Err(Failure::OtherStatus(400))
        );
        assert_eq!(decode(403, "<html>denied</html>"), Err(Failure::IpBan));
        assert!(matches!(decode(200, "[]"), Err(Failure::Malformed(_))));
        assert!(matches!(
            decode(200, r#"{"records":"#),
            Err(Failure::Malformed(_))
        ));
        let mistyped: Result<Vec<String>, _> =
            decode_body(serde_json::json!({"x": "tok-SECRET-9"}), &["tok-SECRET-9"]);
        assert!(
            matches!(&mistyped, Err(Failure::Malformed(text)) if !text.contains("tok-SECRET-9")),
            "{mistyped:?}"
        );
    }

    #[test]
    fn scrub_removes_secret_values_and_bounds_length() {
        let text = "bad token tok-SECRET-123 for appsecret=hunter2&x=1 (sent tok-SECRET-123)";
        let scrubbed = scrub(text, &["tok-SECRET-123", "hunter2", ""]);
        assert!(!scrubbed.contains("tok-SECRET-123"), "{scrubbed}");
        assert!(!scrubbed.contains("hunter2"), "{scrubbed}");
        let long = "错".repeat(1_000);
        assert!(scrub(&long, &[]).chars().count() <= MAX_SERVER_TEXT + 1);
    }

    #[test]
    fn config_is_validated_with_messages_naming_the_setting() {
        let bad = ClientConfig {
            api_base: "oapi.dingtalk.com".into(),
            ..Default::default()
        };
        let e = Client::new(bad).unwrap_err().to_string();
        assert!(e.contains("dingtalk.api_base"), "{e}");
        let bad = ClientConfig {
            qps_per_api: 0,
            ..Default::default()
        };
        assert!(
            Client::new(bad)
                .unwrap_err()
                .to_string()
                .contains("qps_per_api")
        );
        let from_settings = ClientConfig::from(&DingTalkSettings::default());
        assert_eq!(from_settings.qps_per_api, 15);
        assert_eq!(from_settings.ip_ban_pause, Duration::from_secs(300));
    }

    #[tokio::test]
    async fn transport_errors_lose_their_url_and_its_secrets() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let url = format!("http://{addr}/gettoken?appkey=k&appsecret=S3cret-Value-9");
        let raw = reqwest::Client::new().get(&url).send().await.unwrap_err();
        assert!(
            raw.to_string().contains("S3cret-Value-9"),
            "reqwest embeds the URL"
        );
        let Failure::Transport(detail) = failure_of(raw) else {
            panic!("a refused connection is a transport failure");
        };
        assert!(!detail.contains("S3cret-Value-9"), "{detail}");
        assert!(!detail.contains("appsecret"), "{detail}");
        assert!(
            detail.to_lowercase().contains("connect"),
            "keeps the cause: {detail}"
        );
    }

    #[test]
    fn accepted_tokens_are_remembered_a_few_at_a_time() {
        let client = Client::new(ClientConfig::default()).unwrap();
        let app = client.app("k");
        let tok = |n: u32| Secret::new(format!("tok-{n}"));
        assert!(!app.was_accepted(&tok(1)));
        for n in 1..=5 {
            app.note_accepted(&tok(n));
            app.note_accepted(&tok(n));
        }
        assert!(!app.was_accepted(&tok(1)), "only the last four are kept");
        assert!((2..=5).all(|n| app.was_accepted(&tok(n))));
    }

    #[test]
    fn client_debug_shows_no_secrets() {
        let client = Client::new(ClientConfig::default()).unwrap();
        let text = format!("{client:?}");
        assert!(text.contains("oapi.dingtalk.com"), "{text}");
    }
}
