//! The simulator's leave records: `GET /v1.0/contact/empLeaveRecords` of DingTalk's new API
//! family. Removing a user (control API or [`SimulatorHandle::remove_user`]) records a leave
//! dated then; tests add older ones with [`SimulatorHandle::record_leave`].
//!
//! As DingTalk: the token in the `x-acs-dingtalk-access-token` header (HTTP 400
//! `InvalidAuthentication` otherwise), `startTime` required, `endTime` optional (DingTalk's now),
//! a window of at most 365 days, `maxResults` 1 to 50, paging by `nextToken` (`0` first; absent
//! on the last page). [`Faults::leave_records_denied`] answers 403 as for an app without the
//! `Contact.Common.Read` scope.
//!
//! [`SimulatorHandle::remove_user`]: super::SimulatorHandle::remove_user
//! [`SimulatorHandle::record_leave`]: super::SimulatorHandle::record_leave
//! [`Faults::leave_records_denied`]: super::Faults::leave_records_denied

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::org::SimLeaveRecord;
use super::server::{
    FlowFault, Shared, SimState, authenticate, flow_fault, json_response, latency, open_error,
    transport_faults,
};
use crate::dingtalk::endpoint::Endpoint;

/// The header of the new API family that carries the access token.
const TOKEN_HEADER: &str = "x-acs-dingtalk-access-token";
const MAX_RESULTS: i64 = 50;

pub(super) async fn leave_records(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    latency(&shared).await;
    let endpoint = Endpoint::LeaveRecords;
    let now = Instant::now();
    let mut state = shared.lock();
    let state = &mut *state;
    state.arrive(endpoint, now);
    if let Some(r) = transport_faults(state, endpoint, now) {
        return r;
    }
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if authenticate(state, endpoint, token, now).is_err() {
        return open_error(
            state,
            StatusCode::BAD_REQUEST,
            "InvalidAuthentication",
            "不合法的access_token",
        );
    }
    let app_key = state.app_key.clone();
    if let Some(fault) = flow_fault(state, &app_key, endpoint, now) {
        return match fault {
            FlowFault::Qps(_) | FlowFault::Throttle => open_error(
                state,
                StatusCode::FORBIDDEN,
                "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
                "触发了qps流控",
            ),
            FlowFault::Busy => open_error(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "系统繁忙",
            ),
        };
    }
    if state.faults.leave_records_denied {
        state.count(endpoint, |s| s.errors += 1);
        return permission_denied(state);
    }
    match page(state, &query, Utc::now()) {
        Ok(answer) => {
            state.count(endpoint, |s| s.ok += 1);
            json_response(StatusCode::OK, &answer)
        }
        Err(message) => {
            state.count(endpoint, |s| s.errors += 1);
            open_error(state, StatusCode::BAD_REQUEST, "InvalidParameter", &message)
        }
    }
}

/// DingTalk's answer to an app without the endpoint's scope.
fn permission_denied(state: &mut SimState) -> Response {
    let request_id = state.request_id();
    json_response(
        StatusCode::FORBIDDEN,
        &json!({
            "code": "Forbidden.AccessDenied.AccessTokenPermissionDenied",
            "message": "没有调用该接口的权限，接口权限申请参考：https://open.dingtalk.com/document/orgapp/add-api-permission",
            "requestid": request_id,
            "accessdenieddetail": {"requiredScopes": ["Contact.Common.Read"]},
        }),
    )
}

fn time_param(
    query: &HashMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, String> {
    let Some(text) = query.get(name) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| format!("{name} must be a time like 2026-01-02T03:04:05Z, not `{text}`"))
}

/// One page of leave records for the query, or what is wrong with it.
fn page(
    state: &SimState,
    query: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Value, String> {
    let start = time_param(query, "startTime")?.ok_or("startTime is required")?;
    let end = time_param(query, "endTime")?.unwrap_or(now);
    if end < start {
        return Err("endTime is before startTime".to_owned());
    }
    if end - start > TimeDelta::days(365) {
        return Err("startTime and endTime must be at most 365 days apart".to_owned());
    }
    let offset: usize = match query.get("nextToken").map(|t| t.trim()) {
        None | Some("") => 0,
        Some(token) => token
            .parse()
            .map_err(|_| format!("nextToken `{token}` is not a token this API gave"))?,
    };
    let max: i64 = match query.get("maxResults") {
        None => MAX_RESULTS,
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("maxResults `{text}` is not a number"))?,
    };
    if !(1..=MAX_RESULTS).contains(&max) {
        return Err(format!(
            "maxResults must be between 1 and {MAX_RESULTS}, not {max}"
        ));
    }
    let size = usize::try_from(max).unwrap_or(1);
    let records = state
        .org
        .leave_records_between(start.timestamp_millis(), end.timestamp_millis());
    let end_at = offset.saturating_add(size).min(records.len());
    let listed: Vec<Value> = records
        .get(offset.min(end_at)..end_at)
        .unwrap_or(&[])
        .iter()
        .map(|r| record_json(r))
        .collect();
    let mut answer = json!({ "records": listed });
    if end_at < records.len()
        && let Some(object) = answer.as_object_mut()
    {
        object.insert("nextToken".to_owned(), Value::from(end_at.to_string()));
    }
    Ok(answer)
}

fn record_json(r: &SimLeaveRecord) -> Value {
    let mut record = Map::new();
    record.insert("userId".to_owned(), Value::from(r.userid.clone()));
    for (key, value) in [
        ("name", &r.name),
        ("mobile", &r.mobile),
        ("stateCode", &r.state_code),
    ] {
        if let Some(value) = value {
            record.insert(key.to_owned(), Value::from(value.clone()));
        }
    }
    if let Some(at) = DateTime::from_timestamp_millis(r.leave_time_ms) {
        let text = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        record.insert("leaveTime".to_owned(), Value::from(text));
    }
    record.insert("leaveReason".to_owned(), Value::from(r.reason.clone()));
    Value::Object(record)
}
