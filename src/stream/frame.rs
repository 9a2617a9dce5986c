//! Stream-mode frames: the JSON text DingTalk sends over the WebSocket, decoded into typed values,
//! and the replies syncerd sends back.
//!
//! Everything here is pure (text in, values out) and bounded: a frame over the size cap, an event
//! with too many ids or an id that cannot be one is an error, never an allocation the sender
//! chose. The `data` field is a JSON document inside a string, so it is decoded twice.

use serde_json::{Map, Value, json};

/// The size cap on one frame unless configured otherwise (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// How many user or department ids one event may carry unless configured otherwise.
pub const DEFAULT_MAX_IDS_PER_EVENT: usize = 1000;
/// The longest userid accepted (DingTalk's are 64 characters at most).
const MAX_USERID_BYTES: usize = 128;
/// How much of a hostile value an error message quotes.
const QUOTE_CHARS: usize = 40;

/// The bounds applied to every incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_frame_bytes: usize,
    pub max_ids_per_event: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_ids_per_event: DEFAULT_MAX_IDS_PER_EVENT,
        }
    }
}

/// Why a frame was refused. Messages quote at most a short prefix of what the sender wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {bytes} bytes is over the {limit}-byte cap (stream.max_frame_bytes)")]
    TooLarge { bytes: usize, limit: usize },
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    #[error("frame has no `{0}`")]
    Missing(&'static str),
    #[error("frame type `{0}` is not SYSTEM, EVENT or CALLBACK")]
    UnknownType(String),
    #[error("event {event_id} ({event_type}): {reason}")]
    BadEventData {
        event_id: String,
        event_type: String,
        reason: String,
    },
    #[error(
        "event {event_id} ({event_type}) carries {count} ids, more than the {limit} allowed \
         (stream.max_ids_per_event); a full sync picks the changes up"
    )]
    TooManyIds {
        event_id: String,
        event_type: String,
        count: usize,
        limit: usize,
    },
}

/// What happened to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    Add,
    Modify,
    Leave,
    Active,
}

/// What happened to departments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeptChange {
    Create,
    Modify,
    Remove,
}

/// The directory change an event announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Users {
        kind: UserChange,
        user_ids: Vec<String>,
    },
    Departments {
        kind: DeptChange,
        dept_ids: Vec<i64>,
    },
    /// Any other event type: acknowledged, never stored.
    Other,
}

/// One EVENT frame, decoded. `event_id` is what duplicates share (de-duplicate on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    pub event_id: String,
    pub event_type: String,
    pub corp_id: String,
    /// `eventBornTime` in milliseconds since the epoch, when the header holds a number.
    pub born_time_ms: Option<i64>,
    pub change: Change,
}

/// An incoming frame, routed on its `type` (and on `topic` for SYSTEM frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// SYSTEM `ping`: answer with the same `messageId` and the same data.
    Ping { message_id: String, data: String },
    /// SYSTEM `disconnect`: acknowledge, close and reconnect with a fresh ticket.
    Disconnect { message_id: String, reason: String },
    /// Another SYSTEM topic.
    System { message_id: String, topic: String },
    Event {
        message_id: String,
        event: StreamEvent,
    },
    /// A CALLBACK frame (syncerd subscribes to none; acknowledged).
    Callback { message_id: String, topic: String },
}

impl Incoming {
    pub fn message_id(&self) -> &str {
        match self {
            Incoming::Ping { message_id, .. }
            | Incoming::Disconnect { message_id, .. }
            | Incoming::System { message_id, .. }
            | Incoming::Event { message_id, .. }
            | Incoming::Callback { message_id, .. } => message_id,
        }
    }
}

/// A refused frame, with the `messageId` when the headers were readable (so the refusal can be
/// acknowledged: redelivering the same bytes would be refused again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub message_id: Option<String>,
    pub error: FrameError,
}

/// Decodes one text frame within `limits`.
pub fn parse_frame(text: &str, limits: &FrameLimits) -> Result<Incoming, Refused> {
    let refuse = |message_id: Option<String>| move |error| Refused { message_id, error };
    if text.len() > limits.max_frame_bytes {
        return Err(refuse(None)(FrameError::TooLarge {
            bytes: text.len(),
            limit: limits.max_frame_bytes,
        }));
    }
    let frame: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| refuse(None)(FrameError::NotJson(e.to_string())))?;
    let headers = frame
        .get("headers")
        .and_then(Value::as_object)
        .ok_or(refuse(None)(FrameError::Missing("headers")))?;
    let message_id =
        header(headers, "messageId").ok_or(refuse(None)(FrameError::Missing("messageId")))?;
    let kind =
        frame
            .get("type")
            .and_then(Value::as_str)
            .ok_or(refuse(Some(message_id.clone()))(FrameError::Missing(
                "type",
            )))?;
    let data = frame.get("data").and_then(Value::as_str).unwrap_or("");
    let topic = header(headers, "topic").unwrap_or_default();
    match kind {
        "SYSTEM" => Ok(system_frame(message_id, topic, data)),
        "EVENT" => match decode_event(headers, data, limits) {
            Ok(event) => Ok(Incoming::Event { message_id, event }),
            Err(error) => Err(refuse(Some(message_id))(error)),
        },
        "CALLBACK" => Ok(Incoming::Callback { message_id, topic }),
        other => Err(refuse(Some(message_id))(FrameError::UnknownType(quote(
            other,
        )))),
    }
}

fn system_frame(message_id: String, topic: String, data: &str) -> Incoming {
    match topic.as_str() {
        "ping" => Incoming::Ping {
            message_id,
            data: data.to_owned(),
        },
        "disconnect" => {
            let reason = serde_json::from_str::<Value>(data)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(quote))
                .unwrap_or_default();
            Incoming::Disconnect { message_id, reason }
        }
        _ => Incoming::System {
            message_id,
            topic: quote(&topic),
        },
    }
}

/// A header as text: DingTalk sends strings, numbers are accepted and printed.
fn header(headers: &Map<String, Value>, key: &str) -> Option<String> {
    match headers.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn decode_event(
    headers: &Map<String, Value>,
    data: &str,
    limits: &FrameLimits,
) -> Result<StreamEvent, FrameError> {
    let event_id = header(headers, "eventId").ok_or(FrameError::Missing("eventId"))?;
    let event_type = header(headers, "eventType").ok_or(FrameError::Missing("eventType"))?;
    let corp_id = header(headers, "eventCorpId").unwrap_or_default();
    let born_time_ms = header(headers, "eventBornTime").and_then(|t| t.trim().parse().ok());
    let bad = |reason: String| FrameError::BadEventData {
        event_id: event_id.clone(),
        event_type: quote(&event_type),
        reason,
    };
    let change = match change_kind(&event_type) {
        None => Change::Other,
        Some(kind) => {
            let body: Map<String, Value> = serde_json::from_str(data)
                .map_err(|e| bad(format!("data is not a JSON object: {e}")))?;
            let key = match kind {
                Kind::User(_) => "userid",
                Kind::Dept(_) => "deptid",
            };
            let ids = field_ignoring_case(&body, key)
                .ok_or_else(|| bad(format!("data has no `{key}` list")))?;
            let ids = ids_array(ids).ok_or_else(|| bad(format!("`{key}` is not a list")))?;
            if ids.len() > limits.max_ids_per_event {
                return Err(FrameError::TooManyIds {
                    event_id,
                    event_type,
                    count: ids.len(),
                    limit: limits.max_ids_per_event,
                });
            }
            match kind {
                Kind::User(kind) => Change::Users {
                    kind,
                    user_ids: ids
                        .iter()
                        .map(user_id)
                        .collect::<Result<_, _>>()
                        .map_err(bad)?,
                },
                Kind::Dept(kind) => Change::Departments {
                    kind,
                    dept_ids: ids
                        .iter()
                        .map(dept_id)
                        .collect::<Result<_, _>>()
                        .map_err(bad)?,
                },
            }
        }
    };
    Ok(StreamEvent {
        event_id,
        event_type,
        corp_id,
        born_time_ms,
        change,
    })
}

enum Kind {
    User(UserChange),
    Dept(DeptChange),
}

fn change_kind(event_type: &str) -> Option<Kind> {
    Some(match event_type {
        "user_add_org" => Kind::User(UserChange::Add),
        "user_modify_org" => Kind::User(UserChange::Modify),
        "user_leave_org" => Kind::User(UserChange::Leave),
        "user_active_org" => Kind::User(UserChange::Active),
        "org_dept_create" => Kind::Dept(DeptChange::Create),
        "org_dept_modify" => Kind::Dept(DeptChange::Modify),
        "org_dept_remove" => Kind::Dept(DeptChange::Remove),
        _ => return None,
    })
}

/// `userId`, `UserId`, `userid` ...: the first key equal to `lower` without case.
fn field_ignoring_case<'a>(body: &'a Map<String, Value>, lower: &str) -> Option<&'a Value> {
    body.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(lower))
        .map(|(_, v)| v)
}

/// A list of ids; a single id (not in a list) is accepted as a list of one.
fn ids_array(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) => Some(items.clone()),
        Value::String(_) | Value::Number(_) => Some(vec![value.clone()]),
        _ => None,
    }
}

fn user_id(value: &Value) -> Result<String, String> {
    let id = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(format!(
                "userid {} is not a string",
                quote(&other.to_string())
            ));
        }
    };
    if id.is_empty() || id.len() > MAX_USERID_BYTES || id.chars().any(char::is_control) {
        return Err(format!("userid `{}` is not a DingTalk userid", quote(&id)));
    }
    Ok(id)
}

fn dept_id(value: &Value) -> Result<i64, String> {
    let id = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    id.ok_or_else(|| {
        format!(
            "department id {} is not an integer",
            quote(&value.to_string())
        )
    })
}

/// At most [`QUOTE_CHARS`] characters of `text`, for error messages.
fn quote(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(QUOTE_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

const ACK_DATA: &str = r#"{"status":"SUCCESS","message":"ok"}"#;
const LATER_DATA: &str = r#"{"status":"LATER","message":"not stored yet, deliver again later"}"#;

fn reply(code: u16, message_id: &str, message: &str, data: &str) -> String {
    json!({
        "code": code,
        "headers": {"messageId": message_id, "contentType": "application/json"},
        "message": message,
        "data": data,
    })
    .to_string()
}

/// The acknowledgement of an event (or of a disconnect or callback frame): stored, do not resend.
pub fn ack_reply(message_id: &str) -> String {
    reply(200, message_id, "OK", ACK_DATA)
}

/// Asks DingTalk to deliver the event again later (the sink could not store it).
pub fn later_reply(message_id: &str) -> String {
    reply(500, message_id, "LATER", LATER_DATA)
}

/// The answer to a SYSTEM ping: the same `messageId` and the same data.
pub fn ping_reply(message_id: &str, data: &str) -> String {
    reply(200, message_id, "OK", data)
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
