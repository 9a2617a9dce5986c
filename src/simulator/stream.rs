//! Stream mode on the simulator: `connections/open` hands out single-use tickets, `/connect`
//! upgrades to a WebSocket, and every change to the organization (through the control API or
//! [`SimulatorHandle`]) becomes an EVENT frame pushed to one connected client.
//!
//! Events stay pending until acknowledged: a LATER reply brings them again after the LATER delay,
//! silence after the redelivery timeout, and a new connection gets whatever the old one left unacknowledged.
//! Commands send a SYSTEM ping, a SYSTEM disconnect, a duplicate of the last acknowledged event or
//! raw text. Ids come from a counter and a seeded stream: the same calls give the same frames.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::org::{SimLeaveRecord, SimUser};
use super::server::{Shared, SimState};
use super::{SimulatorError, SimulatorHandle, UserPatch};
use crate::dingtalk::rng::SplitMix64;

/// The path of `connections/open`.
pub const OPEN_PATH: &str = "/v1.0/gateway/connections/open";
/// The WebSocket path the open answer points at.
pub const CONNECT_PATH: &str = "/connect";
/// Pending events kept at most; the oldest are dropped (and counted) beyond it.
const MAX_PENDING: usize = 10_000;
/// How long a connection told to disconnect stays open for its reply (DingTalk: about 10 s).
const DISCONNECT_GRACE: Duration = Duration::from_secs(10);
/// Bound on sending one frame to a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The corp id in event headers.
const CORP_ID: &str = "dingsimcorp";

/// Stream-mode counters of the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStreamStats {
    /// `connections/open` calls, and those refused for wrong credentials.
    pub open_calls: u64,
    pub open_refused: u64,
    /// WebSocket connections accepted, and handshakes refused for a bad, reused or expired ticket.
    pub connections: u64,
    pub tickets_refused: u64,
    /// Events created from organization changes, and dropped because too many were pending.
    pub events_created: u64,
    pub events_dropped: u64,
    /// EVENT frames sent (first deliveries, redeliveries and duplicates).
    pub events_pushed: u64,
    pub redeliveries: u64,
    pub duplicates_sent: u64,
    pub acks: u64,
    pub later_replies: u64,
    pub pings_sent: u64,
    /// Ping replies with the same messageId and the same data.
    pub pings_answered: u64,
    pub disconnects_sent: u64,
    pub disconnect_acks: u64,
    pub raw_frames_sent: u64,
    /// Replies that matched nothing sent or could not be read.
    pub replies_unrecognized: u64,
    /// Events not yet acknowledged (a gauge).
    pub pending: u64,
    /// WebSocket connections open now (a gauge).
    pub open_connections: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    event_id: String,
    event_type: String,
    data: String,
    born_ms: u128,
    /// The connection of the last delivery and when the event is due again.
    sent: Option<(u64, Instant)>,
}

enum Awaiting {
    Event { event_id: String },
    Ping { data: String },
    Disconnect,
}

enum Command {
    Ping,
    Disconnect,
    Raw(String),
}

/// What one connection should send now.
struct Outgoing {
    frames: Vec<String>,
    next_due: Option<Instant>,
    /// The connection was told to disconnect: close it after the grace period.
    retired: bool,
}

/// The Stream side of the simulator's state (inside [`SimState`], under its lock).
pub(crate) struct StreamSim {
    ticket_ttl: Duration,
    redelivery: Duration,
    later_delay: Duration,
    expire_next_tickets: u64,
    tickets: HashMap<String, Instant>,
    seq: u64,
    rng: SplitMix64,
    pending: VecDeque<Pending>,
    last_acked: Option<Pending>,
    awaiting: HashMap<String, (u64, Awaiting)>,
    commands: VecDeque<Command>,
    alive: BTreeSet<u64>,
    next_conn: u64,
    wake: watch::Sender<u64>,
    stop: CancellationToken,
    stats: SimStreamStats,
}

impl StreamSim {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            ticket_ttl: Duration::from_secs(90),
            redelivery: Duration::from_secs(30),
            later_delay: Duration::from_secs(5),
            expire_next_tickets: 0,
            tickets: HashMap::new(),
            seq: 0,
            rng: SplitMix64::new(seed ^ 0x57BE_A000_0000_0000),
            pending: VecDeque::new(),
            last_acked: None,
            awaiting: HashMap::new(),
            commands: VecDeque::new(),
            alive: BTreeSet::new(),
            next_conn: 0,
            wake: watch::Sender::new(0),
            stop: CancellationToken::new(),
            stats: SimStreamStats::default(),
        }
    }

    /// Ticket lifetime, redelivery of silent events, delay after LATER, and the shutdown token.
    pub(crate) fn configure(&mut self, timings: [Duration; 3], stop: CancellationToken) {
        [self.ticket_ttl, self.redelivery, self.later_delay] = timings;
        self.stop = stop;
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        let r = self.rng.next_u64() as u32;
        format!("{prefix}{:08}{r:08x}", self.seq)
    }

    fn wake(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn stats(&self) -> SimStreamStats {
        SimStreamStats {
            pending: self.pending.len() as u64,
            open_connections: self.alive.len() as u64,
            ..self.stats.clone()
        }
    }

    fn issue_ticket(&mut self, now: Instant) -> String {
        self.tickets.retain(|_, expires| now < *expires);
        let ticket = self.next_id("simticket");
        let expires = if self.expire_next_tickets > 0 {
            self.expire_next_tickets -= 1;
            now
        } else {
            now + self.ticket_ttl
        };
        self.tickets.insert(ticket.clone(), expires);
        ticket
    }

    /// Uses up a ticket; false (and counted) when unknown, used or expired.
    fn redeem(&mut self, ticket: &str, now: Instant) -> bool {
        let valid = self
            .tickets
            .remove(ticket)
            .is_some_and(|expires| now < expires);
        if !valid {
            self.stats.tickets_refused += 1;
        }
        valid
    }

    fn record(&mut self, event_type: &str, key: &str, ids: Value) -> String {
        let born_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let data = json!({"timeStamp": born_ms.to_string(), key: ids}).to_string();
        self.push_event(event_type, data, born_ms)
    }

    fn push_event(&mut self, event_type: &str, data: String, born_ms: u128) -> String {
        let event_id = self.next_id("simevt");
        self.pending.push_back(Pending {
            event_id: event_id.clone(),
            event_type: event_type.to_owned(),
            data,
            born_ms,
            sent: None,
        });
        self.stats.events_created += 1;
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
            self.stats.events_dropped += 1;
        }
        self.wake();
        event_id
    }

    fn open_connection(&mut self) -> (u64, watch::Receiver<u64>, CancellationToken) {
        self.next_conn += 1;
        self.alive.insert(self.next_conn);
        self.stats.connections += 1;
        self.wake();
        (self.next_conn, self.wake.subscribe(), self.stop.clone())
    }

    fn close_connection(&mut self, conn: u64) {
        self.alive.remove(&conn);
        self.awaiting.retain(|_, (c, _)| *c != conn);
        self.wake();
    }

    fn frame(&mut self, kind: &str, topic: &str, data: &str, extra: Value) -> (String, String) {
        let message_id = self.next_id("simmsg");
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut headers = json!({
            "topic": topic,
            "messageId": message_id,
            "contentType": "application/json",
            "time": now_ms.to_string(),
        });
        if let (Some(h), Value::Object(extra)) = (headers.as_object_mut(), extra) {
            h.extend(extra);
        }
        let text = json!({
            "specVersion": "1.0",
            "type": kind,
            "headers": headers,
            "data": data,
        })
        .to_string();
        (message_id, text)
    }

    fn command_frame(&mut self, conn: u64, command: Command) -> String {
        match command {
            Command::Ping => {
                let opaque = format!("{:016x}", self.rng.next_u64());
                let data = json!({"opaque": opaque}).to_string();
                let (id, text) = self.frame("SYSTEM", "ping", &data, Value::Null);
                self.awaiting.insert(id, (conn, Awaiting::Ping { data }));
                self.stats.pings_sent += 1;
                text
            }
            Command::Disconnect => {
                let data = json!({"reason": "connection is expired"}).to_string();
                let (id, text) = self.frame("SYSTEM", "disconnect", &data, Value::Null);
                self.awaiting.insert(id, (conn, Awaiting::Disconnect));
                self.stats.disconnects_sent += 1;
                // No more events for it; what it held goes to the next connection.
                self.alive.remove(&conn);
                text
            }
            Command::Raw(text) => {
                self.stats.raw_frames_sent += 1;
                text
            }
        }
    }

    /// The frames for `conn` now: commands first, then events that are due (never sent, sent
    /// to a connection that is gone, or unacknowledged for the redelivery timeout).
    fn outgoing(&mut self, conn: u64, now: Instant) -> Outgoing {
        let mut out = Outgoing {
            frames: Vec::new(),
            next_due: None,
            retired: !self.alive.contains(&conn),
        };
        if self.alive.last() != Some(&conn) {
            return out;
        }
        while let Some(command) = self.commands.pop_front() {
            out.frames.push(self.command_frame(conn, command));
        }
        if !self.alive.contains(&conn) {
            out.retired = true;
            return out;
        }
        for i in 0..self.pending.len() {
            let Some(p) = self.pending.get(i) else { break };
            let due = match p.sent {
                None => true,
                Some((c, at)) => !self.alive.contains(&c) || at <= now,
            };
            if !due {
                let at = p.sent.map_or(now, |(_, at)| at);
                out.next_due = Some(out.next_due.map_or(at, |d: Instant| d.min(at)));
                continue;
            }
            let p = p.clone();
            let extra = json!({
                "eventType": p.event_type,
                "eventId": p.event_id,
                "eventBornTime": p.born_ms.to_string(),
                "eventCorpId": CORP_ID,
                "eventUnifiedAppId": "simunifiedapp",
            });
            let (id, text) = self.frame("EVENT", "*", &p.data, extra);
            self.awaiting.insert(
                id,
                (
                    conn,
                    Awaiting::Event {
                        event_id: p.event_id.clone(),
                    },
                ),
            );
            if p.sent.is_some() {
                self.stats.redeliveries += 1;
            }
            if let Some(slot) = self.pending.get_mut(i) {
                slot.sent = Some((conn, now + self.redelivery));
            }
            self.stats.events_pushed += 1;
            let at = now + self.redelivery;
            out.next_due = Some(out.next_due.map_or(at, |d: Instant| d.min(at)));
            out.frames.push(text);
        }
        out
    }

    /// A reply from a client: an ack or LATER for an event, a ping's answer, a disconnect's ack.
    fn reply(&mut self, text: &str, now: Instant) {
        let parsed: Value = serde_json::from_str(text).unwrap_or_default();
        let message_id = parsed["headers"]["messageId"].as_str().unwrap_or_default();
        let code = parsed["code"].as_i64();
        let data = parsed["data"].as_str().unwrap_or_default();
        let status = serde_json::from_str::<Value>(data).unwrap_or_default()["status"]
            .as_str()
            .map(str::to_owned);
        match self.awaiting.remove(message_id).map(|(_, a)| a) {
            Some(Awaiting::Event { event_id }) => match (code, status.as_deref()) {
                (Some(200), Some("SUCCESS")) => {
                    self.stats.acks += 1;
                    if let Some(i) = self.pending.iter().position(|p| p.event_id == event_id) {
                        self.last_acked = self.pending.remove(i);
                    }
                }
                (_, Some("LATER")) => {
                    self.stats.later_replies += 1;
                    let again = now + self.later_delay;
                    if let Some(p) = self.pending.iter_mut().find(|p| p.event_id == event_id) {
                        p.sent = p.sent.map(|(c, _)| (c, again));
                    }
                    self.wake();
                }
                _ => self.stats.replies_unrecognized += 1,
            },
            Some(Awaiting::Ping { data: sent }) if code == Some(200) && data == sent => {
                self.stats.pings_answered += 1;
            }
            Some(Awaiting::Disconnect) => self.stats.disconnect_acks += 1,
            Some(Awaiting::Ping { .. }) | None => self.stats.replies_unrecognized += 1,
        }
    }

    fn command(&mut self, command: Command) {
        self.commands.push_back(command);
        self.wake();
    }

    /// Forgets every event not yet acknowledged, as DingTalk gives up on events nobody took;
    /// returns how many (counted as dropped).
    fn drop_pending(&mut self) -> u64 {
        let dropped = self.pending.len() as u64;
        self.pending.clear();
        self.awaiting
            .retain(|_, (_, a)| !matches!(a, Awaiting::Event { .. }));
        self.stats.events_dropped += dropped;
        dropped
    }

    /// Queues the last acknowledged event again (same `eventId`); returns that id.
    fn duplicate(&mut self) -> Result<String, SimulatorError> {
        let Some(mut event) = self.last_acked.clone() else {
            return Err(SimulatorError::Invalid(
                "no acknowledged event to duplicate yet".into(),
            ));
        };
        event.sent = None;
        let id = event.event_id.clone();
        self.pending.push_back(event);
        self.stats.duplicates_sent += 1;
        self.wake();
        Ok(id)
    }
}

/// Organization changes that also become Stream events.
impl SimState {
    pub(crate) fn add_user(&mut self, user: SimUser) -> Result<String, SimulatorError> {
        let id = self.org.add_user(user)?;
        self.stream.record("user_add_org", "userId", json!([id]));
        Ok(id)
    }

    pub(crate) fn update_user(
        &mut self,
        userid: &str,
        patch: UserPatch,
    ) -> Result<(), SimulatorError> {
        self.org.update_user(userid, patch)?;
        self.stream
            .record("user_modify_org", "userId", json!([userid]));
        Ok(())
    }

    /// Removes a user: a `user_leave_org` event and a leave record dated now.
    pub(crate) fn remove_user(&mut self, userid: &str) -> Result<(), SimulatorError> {
        let profile = self.org.user(userid).map(|u| u.profile.clone());
        self.org.remove_user(userid)?;
        if let Some(profile) = profile {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            self.org.record_leave(SimLeaveRecord {
                userid: userid.to_owned(),
                name: profile.name,
                mobile: profile.mobile,
                state_code: profile.state_code,
                leave_time_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
                reason: "leave".to_owned(),
            });
        }
        self.stream
            .record("user_leave_org", "userId", json!([userid]));
        Ok(())
    }

    pub(crate) fn add_department(
        &mut self,
        name: &str,
        parent_id: i64,
    ) -> Result<i64, SimulatorError> {
        let id = self.org.add_department(name, parent_id)?;
        self.stream.record("org_dept_create", "deptId", json!([id]));
        Ok(id)
    }

    pub(crate) fn rename_department(
        &mut self,
        dept_id: i64,
        name: &str,
    ) -> Result<(), SimulatorError> {
        self.org.rename_department(dept_id, name)?;
        self.stream
            .record("org_dept_modify", "deptId", json!([dept_id]));
        Ok(())
    }

    pub(crate) fn move_department(
        &mut self,
        dept_id: i64,
        new_parent: i64,
    ) -> Result<(), SimulatorError> {
        self.org.move_department(dept_id, new_parent)?;
        self.stream
            .record("org_dept_modify", "deptId", json!([dept_id]));
        Ok(())
    }

    pub(crate) fn remove_department(&mut self, dept_id: i64) -> Result<(), SimulatorError> {
        self.org.remove_department(dept_id)?;
        self.stream
            .record("org_dept_remove", "deptId", json!([dept_id]));
        Ok(())
    }
}

/// Stream-mode control of a running simulator.
impl SimulatorHandle {
    pub fn stream_stats(&self) -> SimStreamStats {
        self.shared.lock().stream.stats()
    }

    /// Sends a SYSTEM ping to the connected client.
    pub fn stream_ping(&self) {
        self.shared.lock().stream.command(Command::Ping);
    }

    /// Sends a SYSTEM disconnect to the connected client and closes it after its reply.
    pub fn stream_disconnect(&self) {
        self.shared.lock().stream.command(Command::Disconnect);
    }

    /// Delivers the last acknowledged event again, same `eventId`; returns that id.
    pub fn stream_duplicate(&self) -> Result<String, SimulatorError> {
        self.shared.lock().stream.duplicate()
    }

    /// Sends `text` as it is (garbled or oversized frames).
    pub fn stream_send_raw(&self, text: String) {
        self.shared.lock().stream.command(Command::Raw(text));
    }

    /// Queues an event of any type with `data` as its data text (unknown types, hostile data);
    /// returns its `eventId`. It is tracked like the events of organization changes.
    pub fn stream_push_event(&self, event_type: &str, data: &str) -> String {
        let born_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        self.shared
            .lock()
            .stream
            .push_event(event_type, data.to_owned(), born_ms)
    }

    /// Issues the next `count` tickets already expired.
    pub fn stream_expire_next_tickets(&self, count: u64) {
        self.shared.lock().stream.expire_next_tickets = count;
    }

    /// Forgets every event not yet acknowledged (DingTalk never delivers them); returns how
    /// many. With no client connected, that is what happened while it was away.
    pub fn stream_drop_pending(&self) -> u64 {
        self.shared.lock().stream.drop_pending()
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(OPEN_PATH, post(open))
        .route(CONNECT_PATH, get(connect))
        .route("/_sim/stream/stats", get(control_stats))
        .route("/_sim/stream/ping", post(control_ping))
        .route("/_sim/stream/disconnect", post(control_disconnect))
        .route("/_sim/stream/duplicate", post(control_duplicate))
        .route("/_sim/stream/raw", post(control_raw))
        .route("/_sim/stream/tickets/expire", post(control_expire))
        .route("/_sim/stream/pending/drop", post(control_drop_pending))
}

fn dingtalk_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        json!({"code": code, "message": message, "requestid": "simstream"}).to_string(),
    )
        .into_response()
}

async fn open(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut state = shared.lock();
    let state = &mut *state;
    state.stream.stats.open_calls += 1;
    let client_id = body["clientId"].as_str().unwrap_or_default();
    let client_secret = body["clientSecret"].as_str().unwrap_or_default();
    if client_id != state.app_key || client_secret != state.app_secret.expose() {
        state.stream.stats.open_refused += 1;
        return dingtalk_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthentication",
            "clientId or clientSecret is not valid",
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let ticket = state.stream.issue_ticket(Instant::now());
    axum::Json(json!({"endpoint": format!("ws://{host}{CONNECT_PATH}"), "ticket": ticket}))
        .into_response()
}

async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let ticket = query.get("ticket").map(String::as_str).unwrap_or_default();
    if !shared.lock().stream.redeem(ticket, Instant::now()) {
        return dingtalk_error(
            StatusCode::UNAUTHORIZED,
            "InvalidTicket",
            "the ticket is unknown, used or expired",
        );
    }
    upgrade
        .max_message_size(4 * 1024 * 1024)
        .on_upgrade(move |socket| serve_connection(shared, socket))
}

async fn serve_connection(shared: Arc<Shared>, mut socket: WebSocket) {
    let (conn, mut wake, stop) = shared.lock().stream.open_connection();
    let mut close_at: Option<Instant> = None;
    'serve: loop {
        let out = shared.lock().stream.outgoing(conn, Instant::now());
        for frame in out.frames {
            let sent = timeout(SEND_TIMEOUT, socket.send(Message::text(frame))).await;
            if !matches!(sent, Ok(Ok(()))) {
                break 'serve;
            }
        }
        if out.retired && close_at.is_none() {
            close_at = Some(Instant::now() + DISCONNECT_GRACE);
        }
        let due = [out.next_due, close_at].into_iter().flatten().min();
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            () = stop.cancelled() => break,
            changed = wake.changed() => if changed.is_err() { break },
            () = sleep_until(due.unwrap_or(far)) => {
                if close_at.is_some_and(|at| at <= Instant::now()) {
                    break;
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    shared.lock().stream.reply(text.as_str(), Instant::now());
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
    shared.lock().stream.close_connection(conn);
}

async fn control_stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.lock().stream.stats()).into_response()
}

fn ok() -> Response {
    axum::Json(json!({"ok": true})).into_response()
}

async fn control_ping(State(s): State<Arc<Shared>>) -> Response {
    s.lock().stream.command(Command::Ping);
    ok()
}

async fn control_disconnect(State(s): State<Arc<Shared>>) -> Response {
    s.lock().stream.command(Command::Disconnect);
    ok()
}

async fn control_drop_pending(State(s): State<Arc<Shared>>) -> Response {
    let dropped = s.lock().stream.drop_pending();
    axum::Json(json!({"dropped": dropped})).into_response()
}

async fn control_duplicate(State(s): State<Arc<Shared>>) -> Response {
    match s.lock().stream.duplicate() {
        Ok(event_id) => axum::Json(json!({"event_id": event_id})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /_sim/stream/raw`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawFrame {
    pub text: String,
}

async fn control_raw(
    State(s): State<Arc<Shared>>,
    axum::Json(raw): axum::Json<RawFrame>,
) -> Response {
    s.lock().stream.command(Command::Raw(raw.text));
    ok()
}

/// Body of `POST /_sim/stream/tickets/expire`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExpireTickets {
    pub count: u64,
}

async fn control_expire(
    State(s): State<Arc<Shared>>,
    axum::Json(body): axum::Json<ExpireTickets>,
) -> Response {
    s.lock().stream.expire_next_tickets = body.count;
    ok()
}
