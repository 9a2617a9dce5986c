//! The simulator's control API over HTTP (JSON), for out-of-process benchmarks and the demo.
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /_sim/stats` | | call counters per endpoint ([`SimStats`]) |
//! | `POST /_sim/stats/reset` | | zero the counters |
//! | `GET /_sim/org` | | the whole organization ([`OrgSnapshot`]) |
//! | `POST /_sim/users` | [`SimUser`] | add a user → `{"userid": ...}` |
//! | `PATCH /_sim/users/{userid}` | [`UserPatch`] | change a user |
//! | `DELETE /_sim/users/{userid}` | | remove a user (and record a leave dated now) |
//! | `GET`, `POST /_sim/leave-records` | [`SimLeaveRecord`] | list / add leave records (`empLeaveRecords`) |
//! | `POST /_sim/departments` | `{"name": ..., "parent_id": ...}` | add → `{"dept_id": ...}` |
//! | `PATCH /_sim/departments/{id}` | `{"name"?: ..., "parent_id"?: ...}` | rename and/or move |
//! | `DELETE /_sim/departments/{id}` | | remove (must have no sub-departments) |
//! | `PUT /_sim/departments/{id}/error` | `{"code": 60003}` or `{"code": null}` | make it fail / heal |
//! | `GET`, `PUT /_sim/faults` | [`Faults`] | read / replace the fault settings |
//! | `POST /_sim/ip-ban` | `{"seconds": 5, "style": "html"}` or `{"calls": 3}` | serve the IP-ban signature for a time, or to the next N calls |
//! | `POST /_sim/token/invalidate` | | revoke the current access token |
//! | `GET /_sim/stream/stats` | | Stream-mode counters ([`SimStreamStats`]) |
//! | `POST /_sim/stream/ping`, `/_sim/stream/disconnect` | | send a SYSTEM ping / disconnect to the connected client |
//! | `POST /_sim/stream/duplicate` | | deliver the last acknowledged event again → `{"event_id": ...}` |
//! | `POST /_sim/stream/raw` | `{"text": ...}` | send a frame as it is |
//! | `POST /_sim/stream/tickets/expire` | `{"count": 1}` | issue the next N tickets already expired |
//! | `POST /_sim/stream/pending/drop` | | forget the events not yet acknowledged → `{"dropped": n}` |
//!
//! Organization changes also become Stream events (see [`super::stream`]).
//!
//! Errors come back as `{"error": "..."}` with 400 or 404.
//!
//! [`SimStats`]: super::SimStats
//! [`OrgSnapshot`]: super::OrgSnapshot
//! [`SimStreamStats`]: super::SimStreamStats
//! [`SimLeaveRecord`]: super::SimLeaveRecord

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::server::Shared;
use super::{BanStyle, Faults, SimLeaveRecord, SimUser, SimulatorError, UserPatch};

impl IntoResponse for SimulatorError {
    fn into_response(self) -> Response {
        let status = match self {
            SimulatorError::UnknownUser(_) | SimulatorError::UnknownDepartment(_) => {
                StatusCode::NOT_FOUND
            }
            SimulatorError::Invalid(_) => StatusCode::BAD_REQUEST,
            SimulatorError::Bind { .. } | SimulatorError::Serve(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Body of `POST /_sim/departments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDepartment {
    pub name: String,
    #[serde(default = "root")]
    pub parent_id: i64,
}

fn root() -> i64 {
    crate::dingtalk::fetch::ROOT_DEPT_ID
}

/// Body of `PATCH /_sim/departments/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DepartmentChange {
    pub name: Option<String>,
    pub parent_id: Option<i64>,
}

/// Body of `PUT /_sim/departments/{id}/error`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DepartmentError {
    pub code: Option<i64>,
}

/// Body of `POST /_sim/ip-ban`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IpBan {
    pub seconds: f64,
    /// Ban the next N calls instead of a time span (deterministic whatever the timing).
    pub calls: Option<u64>,
    pub style: BanStyle,
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/stats/reset", post(reset_stats))
        .route("/_sim/org", get(org))
        .route("/_sim/users", post(add_user))
        .route(
            "/_sim/users/{userid}",
            patch(update_user).delete(remove_user),
        )
        .route("/_sim/leave-records", get(leave_records).post(record_leave))
        .route("/_sim/departments", post(add_department))
        .route(
            "/_sim/departments/{dept_id}",
            patch(change_department).delete(remove_department),
        )
        .route("/_sim/departments/{dept_id}/error", put(department_error))
        .route("/_sim/faults", get(faults).put(set_faults))
        .route("/_sim/ip-ban", post(ip_ban))
        .route("/_sim/token/invalidate", post(invalidate_token))
}

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().stats.clone()).into_response()
}

async fn reset_stats(State(s): State<Arc<Shared>>) -> Response {
    s.lock().reset_stats();
    Json(json!({"ok": true})).into_response()
}

async fn org(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().org.snapshot()).into_response()
}

async fn add_user(State(s): State<Arc<Shared>>, Json(user): Json<SimUser>) -> Response {
    match s.lock().add_user(user) {
        Ok(userid) => (StatusCode::CREATED, Json(json!({"userid": userid}))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn update_user(
    State(s): State<Arc<Shared>>,
    Path(userid): Path<String>,
    Json(patch): Json<UserPatch>,
) -> Response {
    match s.lock().update_user(&userid, patch) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_user(State(s): State<Arc<Shared>>, Path(userid): Path<String>) -> Response {
    match s.lock().remove_user(&userid) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn leave_records(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().org.leave_records()).into_response()
}

async fn record_leave(
    State(s): State<Arc<Shared>>,
    Json(record): Json<SimLeaveRecord>,
) -> Response {
    s.lock().org.record_leave(record);
    (StatusCode::CREATED, Json(json!({"ok": true}))).into_response()
}

async fn add_department(State(s): State<Arc<Shared>>, Json(new): Json<NewDepartment>) -> Response {
    match s.lock().add_department(&new.name, new.parent_id) {
        Ok(dept_id) => (StatusCode::CREATED, Json(json!({"dept_id": dept_id}))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn change_department(
    State(s): State<Arc<Shared>>,
    Path(dept_id): Path<i64>,
    Json(change): Json<DepartmentChange>,
) -> Response {
    let mut state = s.lock();
    let result = (|| {
        if let Some(parent) = change.parent_id {
            state.move_department(dept_id, parent)?;
        }
        if let Some(name) = &change.name {
            state.rename_department(dept_id, name)?;
        }
        Ok::<(), SimulatorError>(())
    })();
    match result {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_department(State(s): State<Arc<Shared>>, Path(dept_id): Path<i64>) -> Response {
    match s.lock().remove_department(dept_id) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn department_error(
    State(s): State<Arc<Shared>>,
    Path(dept_id): Path<i64>,
    Json(body): Json<DepartmentError>,
) -> Response {
    let mut state = s.lock();
    match body.code {
        Some(code) => state.dept_errors.insert(dept_id, code),
        None => state.dept_errors.remove(&dept_id),
    };
    Json(json!({"ok": true})).into_response()
}

async fn faults(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().faults.clone()).into_response()
}

async fn set_faults(State(s): State<Arc<Shared>>, Json(faults): Json<Faults>) -> Response {
    if let Err(e) = faults.validate() {
        return e.into_response();
    }
    s.lock().set_faults(faults);
    Json(json!({"ok": true})).into_response()
}

async fn ip_ban(State(s): State<Arc<Shared>>, Json(ban): Json<IpBan>) -> Response {
    if let Some(calls) = ban.calls {
        s.lock().ban_calls = Some((calls, ban.style));
        return Json(json!({"ok": true})).into_response();
    }
    if !(ban.seconds.is_finite() && ban.seconds >= 0.0) {
        return SimulatorError::Invalid("seconds must be a non-negative number".into())
            .into_response();
    }
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(ban.seconds.min(86_400.0));
    s.lock().ban = Some((until, ban.style));
    Json(json!({"ok": true})).into_response()
}

async fn invalidate_token(State(s): State<Arc<Shared>>) -> Response {
    s.lock().invalidate_token();
    Json(json!({"ok": true})).into_response()
}
