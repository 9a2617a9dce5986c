//! The DingTalk endpoints of the simulator, with fault injection, QPS windows and call counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::org::Org;
use super::{BanStyle, Faults};
use crate::dingtalk::endpoint::Endpoint;
use crate::dingtalk::rng::SplitMix64;
use crate::secret::Secret;

const WINDOW: Duration = Duration::from_secs(1);

/// Counters of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimEndpointStats {
    /// Every request that reached the endpoint.
    pub calls: u64,
    /// Requests answered with data.
    pub ok: u64,
    /// Requests refused with 90018 because the QPS limit was exceeded (not injected).
    pub qps_rejected: u64,
    pub injected_throttle: u64,
    pub injected_busy: u64,
    pub injected_bad_gateway: u64,
    pub injected_malformed: u64,
    pub ip_banned: u64,
    /// Requests refused because of a missing, unknown, expired or revoked token.
    pub token_rejected: u64,
    /// Other error answers (wrong credentials, department errors, bad parameters).
    pub errors: u64,
    /// The most requests seen in any sliding one-second window.
    pub max_calls_per_second: u64,
}

/// Counters of every endpoint, keyed by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub endpoints: BTreeMap<String, SimEndpointStats>,
}

impl SimStats {
    pub fn endpoint(&self, endpoint: Endpoint) -> SimEndpointStats {
        self.endpoints
            .get(endpoint.path())
            .cloned()
            .unwrap_or_default()
    }

    pub fn total_calls(&self) -> u64 {
        self.endpoints.values().map(|s| s.calls).sum()
    }

    pub fn total_qps_rejected(&self) -> u64 {
        self.endpoints.values().map(|s| s.qps_rejected).sum()
    }

    pub fn max_calls_per_second(&self) -> u64 {
        self.endpoints
            .values()
            .map(|s| s.max_calls_per_second)
            .max()
            .unwrap_or(0)
    }
}

/// The injectable faults that have a rate and a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    BadGateway,
    Malformed,
    Busy,
    Throttle,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [
        FaultKind::BadGateway,
        FaultKind::Malformed,
        FaultKind::Busy,
        FaultKind::Throttle,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn rate_and_every(self, f: &Faults) -> (f64, Option<u64>) {
        match self {
            FaultKind::BadGateway => (f.bad_gateway_rate, f.bad_gateway_every),
            FaultKind::Malformed => (f.malformed_rate, f.malformed_every),
            FaultKind::Busy => (f.busy_rate, f.busy_every),
            FaultKind::Throttle => (f.throttle_rate, f.throttle_every),
        }
    }
}

/// Per fault kind: how many calls reached it and its own seeded stream of draws, so that one
/// kind's decisions depend only on its own count, never on the clock, on other kinds or on the
/// draws of request ids and tokens.
struct FaultDice {
    seed: u64,
    reached: [u64; 4],
    streams: [SplitMix64; 4],
}

impl FaultDice {
    fn new(seed: u64) -> Self {
        let stream = |k: FaultKind| {
            SplitMix64::new(
                seed ^ 0xFA17_0000_0000_0000 ^ (k.index() as u64 + 1).wrapping_mul(0x9E37_79B9),
            )
        };
        Self {
            seed,
            reached: [0; 4],
            streams: FaultKind::ALL.map(stream),
        }
    }

    /// Restarts every count and stream (new fault settings).
    fn restart(&mut self) {
        *self = FaultDice::new(self.seed);
    }

    /// Counts one call reaching `kind` and says whether it is served.
    fn roll(&mut self, kind: FaultKind, faults: &Faults) -> bool {
        let (rate, every) = kind.rate_and_every(faults);
        let i = kind.index();
        self.reached[i] += 1;
        let scheduled = every.is_some_and(|n| n > 0 && self.reached[i].is_multiple_of(n));
        let drawn = self.streams[i].chance(rate);
        scheduled || drawn
    }
}

struct TokenState {
    current: Option<(String, Instant)>,
    issued: u64,
}

/// Everything the simulator knows, behind one lock (handlers hold it briefly, never across an
/// await).
pub(crate) struct SimState {
    pub org: Org,
    pub faults: Faults,
    pub app_key: String,
    pub app_secret: Secret,
    pub token_ttl: Duration,
    pub dept_errors: HashMap<i64, i64>,
    pub ban: Option<(Instant, BanStyle)>,
    /// Calls still to be answered with the IP-ban signature, whatever the clock says.
    pub ban_calls: Option<(u64, BanStyle)>,
    pub stats: SimStats,
    pub stream: super::stream::StreamSim,
    tokens: TokenState,
    rng: SplitMix64,
    dice: FaultDice,
    accepted: HashMap<(String, Endpoint), VecDeque<Instant>>,
    arrivals: HashMap<Endpoint, VecDeque<Instant>>,
    authed_calls: u64,
}

pub(crate) struct Shared {
    state: Mutex<SimState>,
}

impl Shared {
    pub(crate) fn new(
        org: Org,
        faults: Faults,
        app_key: String,
        app_secret: Secret,
        token_ttl: Duration,
        seed: u64,
    ) -> Self {
        Self {
            state: Mutex::new(SimState {
                org,
                faults,
                app_key,
                app_secret,
                token_ttl,
                dept_errors: HashMap::new(),
                ban: None,
                ban_calls: None,
                stats: SimStats::default(),
                stream: super::stream::StreamSim::new(seed),
                tokens: TokenState {
                    current: None,
                    issued: 0,
                },
                rng: SplitMix64::new(seed ^ 0xD1A6_7A1C_0FFE_E000),
                dice: FaultDice::new(seed),
                accepted: HashMap::new(),
                arrivals: HashMap::new(),
                authed_calls: 0,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SimState {
    pub(crate) fn invalidate_token(&mut self) {
        self.tokens.current = None;
    }

    /// New fault settings; every fault kind's count and stream start over.
    pub(crate) fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.dice.restart();
    }

    pub(crate) fn reset_stats(&mut self) {
        self.stats = SimStats::default();
        self.arrivals.clear();
    }

    pub(super) fn request_id(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
    }

    pub(super) fn count(&mut self, endpoint: Endpoint, f: impl FnOnce(&mut SimEndpointStats)) {
        f(self
            .stats
            .endpoints
            .entry(endpoint.path().to_owned())
            .or_default());
    }

    pub(super) fn arrive(&mut self, endpoint: Endpoint, now: Instant) {
        let window = self.arrivals.entry(endpoint).or_default();
        window.push_back(now);
        while window.front().is_some_and(|t| *t + WINDOW <= now) {
            window.pop_front();
        }
        let in_window = window.len() as u64;
        self.count(endpoint, |s| {
            s.calls += 1;
            s.max_calls_per_second = s.max_calls_per_second.max(in_window);
        });
    }

    /// True when this call is within the App Key's QPS budget for the API (and counts it).
    fn admit(&mut self, app_key: &str, endpoint: Endpoint, now: Instant) -> bool {
        let Some(qps) = self.faults.qps else {
            return true;
        };
        let window = self
            .accepted
            .entry((app_key.to_owned(), endpoint))
            .or_default();
        while window.front().is_some_and(|t| *t + WINDOW <= now) {
            window.pop_front();
        }
        if window.len() >= qps as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    fn banned(&mut self, now: Instant) -> Option<BanStyle> {
        if let Some((left, style)) = self.ban_calls {
            self.ban_calls = (left > 1).then_some((left - 1, style));
            if left > 0 {
                return Some(style);
            }
        }
        match self.ban {
            Some((until, style)) if now < until => Some(style),
            Some(_) => {
                self.ban = None;
                None
            }
            None => None,
        }
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn ok(state: &mut SimState, endpoint: Endpoint, result: Value) -> Response {
    state.count(endpoint, |s| s.ok += 1);
    let request_id = state.request_id();
    json_response(
        StatusCode::OK,
        &json!({"errcode": 0, "errmsg": "ok", "request_id": request_id, "result": result}),
    )
}

/// A business error: the code directly in `errcode`.
fn business_error(state: &mut SimState, code: i64, msg: &str) -> Response {
    let request_id = state.request_id();
    json_response(
        StatusCode::OK,
        &json!({"errcode": code, "errmsg": msg, "request_id": request_id}),
    )
}

/// A platform error: in the `/topapi` family as errcode 88 with `sub_code`, elsewhere directly.
fn platform_error(state: &mut SimState, endpoint: Endpoint, code: i64, msg: &str) -> Response {
    if !endpoint.is_topapi() {
        return business_error(state, code, msg);
    }
    let request_id = state.request_id();
    json_response(
        StatusCode::OK,
        &json!({
            "errcode": 88,
            "errmsg": format!("ding talk error[subcode={code},submsg={msg}]"),
            "sub_code": code.to_string(),
            "sub_msg": msg,
            "request_id": request_id,
        }),
    )
}

fn ban_response(style: BanStyle) -> Response {
    match style {
        BanStyle::Json => json_response(
            StatusCode::OK,
            &json!({"status": 1111, "wait": 5, "source": "x5", "punish": "deny", "uuid": "sim"}),
        ),
        BanStyle::Html => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html;charset=UTF-8")],
            "<!DOCTYPE html><html><head><title>访问被拒绝</title></head><body>\
             <h1>Access denied</h1><p>您的访问过于频繁，请稍后再试。</p></body></html>",
        )
            .into_response(),
    }
}

fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway\
         </h1></center><hr><center>Tengine</center></body></html>",
    )
        .into_response()
}

fn malformed() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        "{\"errcode\":0,\"errmsg\":\"ok\",\"result\":{\"has_more\":tr",
    )
        .into_response()
}

/// Faults that hit any request before it is looked at: IP ban, 502, garbled body.
pub(super) fn transport_faults(
    state: &mut SimState,
    endpoint: Endpoint,
    now: Instant,
) -> Option<Response> {
    if let Some(style) = state.banned(now) {
        state.count(endpoint, |s| s.ip_banned += 1);
        return Some(ban_response(style));
    }
    if state.dice.roll(FaultKind::BadGateway, &state.faults) {
        state.count(endpoint, |s| s.injected_bad_gateway += 1);
        return Some(bad_gateway());
    }
    if state.dice.roll(FaultKind::Malformed, &state.faults) {
        state.count(endpoint, |s| s.injected_malformed += 1);
        return Some(malformed());
    }
    None
}

/// A flow-control answer that is due; each API family words it its own way.
pub(super) enum FlowFault {
    /// The QPS window of the App Key and API is full (the limit).
    Qps(u32),
    Busy,
    Throttle,
}

/// The QPS window and the injected busy and throttling answers (counted here).
pub(super) fn flow_fault(
    state: &mut SimState,
    app_key: &str,
    endpoint: Endpoint,
    now: Instant,
) -> Option<FlowFault> {
    if !state.admit(app_key, endpoint, now) {
        state.count(endpoint, |s| s.qps_rejected += 1);
        return Some(FlowFault::Qps(state.faults.qps.unwrap_or_default()));
    }
    if state.dice.roll(FaultKind::Busy, &state.faults) {
        state.count(endpoint, |s| s.injected_busy += 1);
        return Some(FlowFault::Busy);
    }
    if state.dice.roll(FaultKind::Throttle, &state.faults) {
        state.count(endpoint, |s| s.injected_throttle += 1);
        return Some(FlowFault::Throttle);
    }
    None
}

/// [`flow_fault`] as the old API family answers it.
fn flow_faults(
    state: &mut SimState,
    app_key: &str,
    endpoint: Endpoint,
    now: Instant,
) -> Option<Response> {
    Some(match flow_fault(state, app_key, endpoint, now)? {
        FlowFault::Qps(qps) => platform_error(
            state,
            endpoint,
            90018,
            &format!("触发了qps流控，当前应用调用该接口1秒内请求总次数超过 {qps} 次"),
        ),
        FlowFault::Busy => business_error(state, -1, "系统繁忙"),
        FlowFault::Throttle => platform_error(
            state,
            endpoint,
            90018,
            "触发了qps流控，当前应用调用该接口1秒内请求总次数超过限制",
        ),
    })
}

/// An error answer of the new API family: an HTTP status and `{"code", "message"}`.
pub(super) fn open_error(
    state: &mut SimState,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response {
    let request_id = state.request_id();
    json_response(
        status,
        &json!({"code": code, "message": message, "requestid": request_id}),
    )
}

/// The access token a call carries: the current one, not expired, else the error DingTalk
/// gives. Counts the refusals, and revokes the token every `invalidate_token_every` calls.
pub(super) fn authenticate(
    state: &mut SimState,
    endpoint: Endpoint,
    token: &str,
    now: Instant,
) -> Result<(), (i64, &'static str)> {
    let checked = match &state.tokens.current {
        Some((current, expires)) if *current == token && !token.is_empty() => {
            if now < *expires {
                Ok(())
            } else {
                Err((42001, "access_token超时"))
            }
        }
        _ => Err((40014, "不合法的access_token")),
    };
    if checked.is_err() {
        state.count(endpoint, |s| s.token_rejected += 1);
        return checked;
    }
    state.authed_calls += 1;
    if let Some(every) = state.faults.invalidate_token_every
        && every > 0
        && state.authed_calls.is_multiple_of(every)
    {
        state.invalidate_token();
        state.count(endpoint, |s| s.token_rejected += 1);
        return Err((40014, "不合法的access_token"));
    }
    Ok(())
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new().route("/gettoken", get(get_token));
    for endpoint in Endpoint::ALL.into_iter().filter(|e| e.is_topapi()) {
        router = router.route(endpoint.path(), post(topapi));
    }
    router
        .route(
            Endpoint::LeaveRecords.path(),
            get(super::leave::leave_records),
        )
        .merge(super::control::routes())
        .merge(super::stream::routes())
        .with_state(shared)
}

pub(super) async fn latency(shared: &Shared) {
    let latency = shared.lock().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
}

async fn get_token(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    latency(&shared).await;
    let endpoint = Endpoint::GetToken;
    let now = Instant::now();
    let mut state = shared.lock();
    let state = &mut *state;
    state.arrive(endpoint, now);
    if let Some(r) = transport_faults(state, endpoint, now) {
        return r;
    }
    let app_key = query.get("appkey").cloned().unwrap_or_default();
    let app_secret = query.get("appsecret").cloned().unwrap_or_default();
    if app_key != state.app_key || app_secret != state.app_secret.expose() {
        state.count(endpoint, |s| s.errors += 1);
        return business_error(state, 40089, "不合法的corpId或corpSecret");
    }
    if let Some(r) = flow_faults(state, &app_key, endpoint, now) {
        return r;
    }
    let ttl = state.token_ttl;
    let token = match &state.tokens.current {
        // Asking again while the token is valid returns it and extends it.
        Some((token, expires)) if now < *expires => token.clone(),
        _ => {
            state.tokens.issued += 1;
            format!(
                "simtok{:04}{:016x}",
                state.tokens.issued,
                state.rng.next_u64()
            )
        }
    };
    state.tokens.current = Some((token.clone(), now + ttl));
    state.count(endpoint, |s| s.ok += 1);
    json_response(
        StatusCode::OK,
        &json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": token,
            "expires_in": ttl.as_secs(),
        }),
    )
}

fn int_field(body: &Value, key: &str) -> Option<i64> {
    match body.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

async fn topapi(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    latency(&shared).await;
    let Some(endpoint) = Endpoint::from_path(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now = Instant::now();
    let mut state = shared.lock();
    let state = &mut *state;
    state.arrive(endpoint, now);
    if let Some(r) = transport_faults(state, endpoint, now) {
        return r;
    }

    // The token names the app.
    let token = query.get("access_token").cloned().unwrap_or_default();
    if let Err((code, msg)) = authenticate(state, endpoint, &token, now) {
        return platform_error(state, endpoint, code, msg);
    }
    let app_key = state.app_key.clone();
    if let Some(r) = flow_faults(state, &app_key, endpoint, now) {
        return r;
    }

    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        state.count(endpoint, |s| s.errors += 1);
        return business_error(state, 400002, "参数错误: the body is not JSON");
    };
    let response = match endpoint {
        Endpoint::DepartmentListSub => list_sub(state, &body),
        Endpoint::DepartmentGet => department_get(state, &body),
        Endpoint::UserList => user_list(state, &body, false),
        Endpoint::UserListSimple => user_list(state, &body, true),
        Endpoint::UserGet => user_get(state, &body),
        Endpoint::UserCount => user_count(state, &body),
        Endpoint::GetToken | Endpoint::LeaveRecords => Err((400002, "参数错误".to_owned())),
    };
    match response {
        Ok(result) => ok(state, endpoint, result),
        Err((code, msg)) => {
            state.count(endpoint, |s| s.errors += 1);
            business_error(state, code, &msg)
        }
    }
}

type Answer = Result<Value, (i64, String)>;

fn department_of(state: &SimState, body: &Value, required: bool) -> Result<i64, (i64, String)> {
    let dept_id = match int_field(body, "dept_id") {
        Some(id) => id,
        None if required => return Err((400002, "参数错误: dept_id is required".to_owned())),
        None => crate::dingtalk::fetch::ROOT_DEPT_ID,
    };
    if let Some(code) = state.dept_errors.get(&dept_id) {
        let msg = match code {
            60003 => "部门不存在",
            50004 => "请求的部门id不在授权范围内",
            _ => "simulated department error",
        };
        return Err((*code, msg.to_owned()));
    }
    if state.org.department(dept_id).is_none() {
        return Err((60003, "部门不存在".to_owned()));
    }
    Ok(dept_id)
}

fn list_sub(state: &mut SimState, body: &Value) -> Answer {
    let dept_id = department_of(state, body, false)?;
    let mut result: Vec<Value> = state
        .org
        .children(dept_id)
        .into_iter()
        .map(|d| {
            json!({
                "dept_id": d.dept_id,
                "name": d.name,
                "parent_id": dept_id,
                "create_dept_group": true,
                "auto_add_user": true,
            })
        })
        .collect();
    if dept_id == crate::dingtalk::fetch::ROOT_DEPT_ID && state.org.family_school {
        result.push(json!({"dept_id": -1, "name": "家校通讯录", "parent_id": 1}));
    }
    Ok(Value::Array(result))
}

fn department_get(state: &mut SimState, body: &Value) -> Answer {
    let dept_id = department_of(state, body, true)?;
    let (name, parent_id) = match state.org.department(dept_id) {
        Some(d) => (d.name.clone(), d.parent_id),
        None => return Err((60003, "部门不存在".to_owned())),
    };
    let member_count = state.org.member_count(dept_id, true);
    let owning = state.org.member_count(dept_id, false);
    let mut result = json!({
        "dept_id": dept_id,
        "name": name,
        "member_count": member_count,
        "owning_member_count": owning,
        "create_dept_group": true,
        "auto_add_user": true,
        "hide_dept": false,
    });
    if let (Some(parent), Some(obj)) = (parent_id, result.as_object_mut()) {
        obj.insert("parent_id".to_owned(), json!(parent));
    }
    Ok(result)
}

fn user_list(state: &mut SimState, body: &Value, simple: bool) -> Answer {
    let dept_id = department_of(state, body, true)?;
    let cursor = int_field(body, "cursor").unwrap_or(0);
    let size = int_field(body, "size").unwrap_or(0);
    if !(1..=100).contains(&size) {
        return Err((40035, "不合法的参数: size must be 1..100".to_owned()));
    }
    if cursor < 0 {
        return Err((40035, "不合法的参数: cursor".to_owned()));
    }
    let (page, has_more) = state
        .org
        .members_page(dept_id, cursor as usize, size as usize);
    let list: Vec<Value> = page
        .into_iter()
        .map(|u| {
            if simple {
                json!({"userid": u.userid, "name": u.name})
            } else {
                serde_json::to_value(u).unwrap_or(Value::Null)
            }
        })
        .collect();
    let mut result = json!({"has_more": has_more, "list": list});
    if has_more && let Some(obj) = result.as_object_mut() {
        obj.insert("next_cursor".to_owned(), json!(cursor + size));
    }
    Ok(result)
}

fn user_get(state: &mut SimState, body: &Value) -> Answer {
    let Some(userid) = body.get("userid").and_then(Value::as_str) else {
        return Err((400002, "参数错误: userid is required".to_owned()));
    };
    match state.org.user(userid) {
        Some(u) => {
            let mut value = serde_json::to_value(&u.profile).unwrap_or(Value::Null);
            if let Some(obj) = value.as_object_mut() {
                let leader_in: Vec<Value> = u
                    .profile
                    .dept_id_list
                    .iter()
                    .flatten()
                    .map(|d| json!({"dept_id": d, "leader": u.leader_in.contains(d)}))
                    .collect();
                obj.insert("leader_in_dept".to_owned(), Value::Array(leader_in));
            }
            Ok(value)
        }
        // DingTalk's answer for someone who left; a userid it never had is not a valid one.
        None if state.org.has_left(userid) => Err((60121, "找不到该用户".to_owned())),
        None => Err((33012, "无效的USERID".to_owned())),
    }
}

fn user_count(state: &mut SimState, body: &Value) -> Answer {
    let only_active = body
        .get("only_active")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(json!({"count": state.org.user_count(only_active)}))
}
