//! `Client::leave_records` (DingTalk's `GET /v1.0/contact/empLeaveRecords`, the new API family)
//! against httpmock, for the exact requests, and against the simulator, for paging, the time
//! window, errors, retries and bounds. No log line or error holds the token or the App Secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use dingtalk_support::*;
use httpmock::prelude::*;
use serde_json::{Value, json};
use syncerd::dingtalk::{CallCounter, Client, ClientConfig, DingTalkError, Endpoint, Permission};
use syncerd::simulator::{Faults, SimLeaveRecord, SimulatorConfig, SimulatorHandle};

const KEY: &str = "ding-leave-key";
const SECRET: &str = "leave-secret-value";

fn client_for(base: &str) -> Client {
    Client::new(ClientConfig {
        open_api_base: base.to_owned(),
        ..fast_config(base)
    })
    .unwrap()
}

async fn simulator(users: usize) -> SimulatorHandle {
    start_simulator(SimulatorConfig {
        app_key: KEY.into(),
        app_secret: syncerd::secret::Secret::new(SECRET),
        ..org_config(users, 3)
    })
    .await
}

/// A leave record of `userid` at `at`.
fn left(userid: &str, at: DateTime<Utc>) -> SimLeaveRecord {
    SimLeaveRecord {
        userid: userid.to_owned(),
        name: Some(format!("name of {userid}")),
        mobile: Some("13800000000".into()),
        state_code: Some("86".into()),
        leave_time_ms: at.timestamp_millis(),
        reason: "leave".into(),
    }
}

fn ids(listed: &syncerd::dingtalk::LeaveRecords) -> Vec<String> {
    listed.records.iter().map(|r| r.user_id.clone()).collect()
}

#[tokio::test]
async fn the_request_is_a_get_with_the_token_in_the_header_and_follows_next_token() {
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200).json_body(
                json!({"errcode": 0, "errmsg": "ok", "access_token": "tok-L1", "expires_in": 7200}),
            );
        })
        .await;
    let base_request = |when: httpmock::When| {
        when.method(GET)
            .path("/v1.0/contact/empLeaveRecords")
            .header("x-acs-dingtalk-access-token", "tok-L1")
            .query_param("startTime", "2026-05-01T08:00:00Z")
            .query_param("maxResults", "50")
            .query_param_missing("access_token")
            .query_param_missing("endTime")
    };
    let first = server
        .mock_async(|when, then| {
            base_request(when).query_param("nextToken", "0");
            then.status(200).json_body(json!({
                "nextToken": "opaque-2",
                "records": [
                    {"userId": "u1", "name": "甲", "stateCode": "86", "mobile": "13800000000",
                     "leaveTime": "2026-05-01T09:00:00Z", "leaveReason": "oapi"},
                    {"userId": "", "name": "no id"},
                ]
            }));
        })
        .await;
    let second = server
        .mock_async(|when, then| {
            base_request(when).query_param("nextToken", "opaque-2");
            then.status(200).json_body(json!({
                "records": [{"userId": "u2", "leaveTime": "2026-05-02T10:00:00+08:00"}]
            }));
        })
        .await;
    let since = DateTime::parse_from_rfc3339("2026-05-01T08:00:00.750Z")
        .unwrap()
        .with_timezone(&Utc);
    let calls = CallCounter::new();
    let listed = client_for(&server.base_url())
        .leave_records(&creds(KEY, SECRET), since, None, &calls)
        .await
        .unwrap();
    first.assert_calls_async(1).await;
    second.assert_calls_async(1).await;
    assert_eq!(ids(&listed), ["u1", "u2"]);
    assert_eq!((listed.pages, listed.skipped), (2, 1));
    assert_eq!(listed.records[0].leave_reason.as_deref(), Some("oapi"));
    assert_eq!(
        listed.records[1].leave_time.map(|t| t.to_rfc3339()),
        Some("2026-05-02T02:00:00+00:00".to_owned())
    );
    assert_eq!(calls.get(), 3, "the token and two pages");
}

#[tokio::test]
async fn records_come_page_by_page_within_the_window_oldest_first() {
    let sim = simulator(20).await;
    // Whole seconds: DingTalk's times have no fractions.
    let base = DateTime::from_timestamp((Utc::now() - TimeDelta::days(2)).timestamp(), 0).unwrap();
    for i in 0..120 {
        sim.record_leave(left(&format!("gone{i:03}"), base + TimeDelta::seconds(i)));
    }
    sim.record_leave(left("long-ago", Utc::now() - TimeDelta::days(300)));
    let leaver = sim.org().users[4].profile.userid.clone();
    sim.remove_user(&leaver).unwrap();

    let client = client_for(&sim.base_url());
    let good = creds(KEY, SECRET);
    let calls = CallCounter::new();
    let since = Utc::now() - TimeDelta::days(3);
    let listed = client
        .leave_records(&good, since, None, &calls)
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..120).map(|i| format!("gone{i:03}")).collect();
    expected.push(leaver.clone());
    assert_eq!(ids(&listed), expected);
    assert_eq!(listed.pages, 3, "50 + 50 + 21");
    assert_eq!(calls.get(), 1 + 3);
    assert_eq!(sim.stats().endpoint(Endpoint::LeaveRecords).ok, 3);
    let removed = listed.records.last().unwrap();
    assert!(removed.leave_time.is_some_and(|t| t > base), "{removed:?}");

    // An end time closes the window; the start includes its second.
    let from = base + TimeDelta::seconds(10);
    let until = Some(base + TimeDelta::seconds(19));
    let window = client
        .leave_records(&good, from, until, &CallCounter::new())
        .await
        .unwrap();
    assert_eq!(
        ids(&window),
        (10..20).map(|i| format!("gone{i:03}")).collect::<Vec<_>>()
    );
    let recent = client
        .leave_records(
            &good,
            Utc::now() - TimeDelta::hours(1),
            None,
            &CallCounter::new(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&recent), [leaver]);
    assert_eq!(recent.pages, 1);
}

#[tokio::test]
async fn the_simulator_takes_the_token_only_from_the_header_and_at_most_50_a_page() {
    let sim = simulator(5).await;
    let http = reqwest::Client::new();
    let token: Value = http
        .get(format!("{}/gettoken", sim.base_url()))
        .query(&[("appkey", KEY), ("appsecret", SECRET)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/v1.0/contact/empLeaveRecords", sim.base_url());
    let start = (Utc::now() - TimeDelta::days(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let ask = |query: Vec<(&'static str, String)>, header: bool| {
        let mut request = http.get(&url).query(&query);
        if header {
            request = request.header("x-acs-dingtalk-access-token", token.as_str());
        }
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap())
        }
    };
    let page = |max: &str| {
        vec![
            ("startTime", start.clone()),
            ("nextToken", "0".to_owned()),
            ("maxResults", max.to_owned()),
        ]
    };
    let (status, body) = ask(page("50"), true).await;
    assert_eq!(
        (status, body["records"].clone()),
        (200, json!([])),
        "{body}"
    );
    let mut in_query = page("50");
    in_query.push(("access_token", token.clone()));
    let (status, body) = ask(in_query, false).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("InvalidAuthentication"))
    );
    let (status, body) = ask(page("51"), true).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("maxResults"),
        "{body}"
    );
    let (status, _) = ask(vec![("nextToken", "0".to_owned())], true).await;
    assert_eq!(status, 400, "no startTime");
    let old = (Utc::now() - TimeDelta::days(366))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (status, body) = ask(vec![("startTime", old)], true).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("365 days"),
        "{body}"
    );
}

#[tokio::test]
async fn a_missing_scope_fails_at_once_naming_contact_common_read() {
    let sim = simulator(5).await;
    sim.set_faults(Faults {
        leave_records_denied: true,
        ..Faults::default()
    })
    .unwrap();
    let calls = CallCounter::new();
    let err = client_for(&sim.base_url())
        .leave_records(&creds(KEY, SECRET), Utc::now(), None, &calls)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DingTalkError::OpenApi { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(err.permission(), Some(Permission::LEAVE_RECORDS));
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("`Contact.Common.Read`"), "{text}");
    assert!(text.contains("权限管理"), "{text}");
    assert_eq!(
        calls.get(),
        2,
        "the token and one refused call, not retried"
    );
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_and_faults_are_retried() {
    let sim = simulator(5).await;
    let earlier = Utc::now() - TimeDelta::minutes(30);
    for i in 0..59 {
        sim.record_leave(left(
            &format!("gone{i:03}"),
            earlier + TimeDelta::seconds(i),
        ));
    }
    let leaver = sim.org().users[0].profile.userid.clone();
    sim.remove_user(&leaver).unwrap();
    let mut all: Vec<String> = (0..59).map(|i| format!("gone{i:03}")).collect();
    all.push(leaver.clone());
    let client = client_for(&sim.base_url());
    let good = creds(KEY, SECRET);
    let since = Utc::now() - TimeDelta::hours(1);
    client
        .leave_records(&good, since, None, &CallCounter::new())
        .await
        .unwrap();
    sim.invalidate_token();
    let calls = CallCounter::new();
    let listed = client
        .leave_records(&good, since, None, &calls)
        .await
        .unwrap();
    assert_eq!(ids(&listed), all);
    assert_eq!(
        calls.get(),
        4,
        "rejected, a new token, replayed, the second page"
    );
    assert_eq!(sim.stats().endpoint(Endpoint::GetToken).ok, 2);

    // Page 1 passes; page 2 meets a busy answer, then a 502 page, then passes.
    sim.set_faults(Faults {
        bad_gateway_every: Some(3),
        busy_every: Some(2),
        ..Faults::default()
    })
    .unwrap();
    sim.reset_stats();
    let calls = CallCounter::new();
    let listed = client
        .leave_records(&good, since, None, &calls)
        .await
        .unwrap();
    assert_eq!(ids(&listed), all);
    let stats = sim.stats().endpoint(Endpoint::LeaveRecords);
    assert_eq!(
        (stats.injected_busy, stats.injected_bad_gateway, stats.ok),
        (1, 1, 2),
        "{stats:?}"
    );
    assert_eq!(calls.get(), 4);
}

#[tokio::test]
async fn a_listing_is_bounded_by_pages_and_by_answer_size() {
    let sim = simulator(5).await;
    let base = Utc::now() - TimeDelta::hours(5);
    for i in 0..101 {
        sim.record_leave(left(&format!("gone{i:03}"), base + TimeDelta::seconds(i)));
    }
    let good = creds(KEY, SECRET);
    let since = base - TimeDelta::hours(1);
    let two_pages = Client::new(ClientConfig {
        open_api_base: sim.base_url(),
        max_leave_record_pages: 2,
        ..fast_config(&sim.base_url())
    })
    .unwrap();
    let err = two_pages
        .leave_records(&good, since, None, &CallCounter::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DingTalkError::TooManyPages { pages: 2, .. }),
        "{err:?}"
    );
    let three = Client::new(ClientConfig {
        open_api_base: sim.base_url(),
        max_leave_record_pages: 3,
        ..fast_config(&sim.base_url())
    })
    .unwrap();
    let listed = three
        .leave_records(&good, since, None, &CallCounter::new())
        .await
        .unwrap();
    assert_eq!(listed.records.len(), 101);

    let small = Client::new(ClientConfig {
        open_api_base: sim.base_url(),
        max_response_bytes: 2_048,
        ..fast_config(&sim.base_url())
    })
    .unwrap();
    let err = small
        .leave_records(&good, since, None, &CallCounter::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DingTalkError::ResponseTooLarge {
                limit_bytes: 2_048,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("dingtalk.open_api_base"), "{err}");
}

#[tokio::test]
async fn a_next_token_that_comes_back_or_an_answer_that_never_comes_ends_the_listing() {
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200).json_body(
                json!({"errcode": 0, "errmsg": "ok", "access_token": "tok-L2", "expires_in": 7200}),
            );
        })
        .await;
    let looping = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/v1.0/contact/empLeaveRecords")
                .query_param("startTime", "2026-05-01T00:00:00Z");
            then.status(200)
                .json_body(json!({"nextToken": "again", "records": [{"userId": "u1"}]}));
        })
        .await;
    let hanging = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/v1.0/contact/empLeaveRecords")
                .query_param("startTime", "2026-05-02T00:00:00Z");
            then.status(200)
                .delay(Duration::from_secs(30))
                .json_body(json!({"records": []}));
        })
        .await;
    let client = Client::new(ClientConfig {
        open_api_base: server.base_url(),
        fetch_timeout: Duration::from_millis(500),
        ..fast_config(&server.base_url())
    })
    .unwrap();
    let day = |d: u32| {
        DateTime::parse_from_rfc3339(&format!("2026-05-0{d}T00:00:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    };
    let good = creds(KEY, SECRET);
    let err = client
        .leave_records(&good, day(1), None, &CallCounter::new())
        .await
        .unwrap_err();
    assert!(matches!(err, DingTalkError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("nextToken"), "{err}");
    looping.assert_calls_async(2).await;
    let calls = CallCounter::new();
    let err = client
        .leave_records(&good, day(2), None, &calls)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DingTalkError::FetchTimeout { calls: 1, .. }),
        "{err:?}"
    );
    assert_eq!(calls.get(), 1);
    hanging.assert_calls_async(1).await;
}

#[tokio::test]
async fn neither_the_token_nor_the_secret_reaches_a_log_line_or_an_error() {
    let captured = global_capture().expect("no other global subscriber in this test binary");
    let sim = simulator(5).await;
    let leaver = sim.org().users[1].profile.userid.clone();
    sim.remove_user(&leaver).unwrap();
    let client = client_for(&sim.base_url());
    let good = creds(KEY, SECRET);
    let since = Utc::now() - TimeDelta::hours(1);
    client
        .leave_records(&good, since, None, &CallCounter::new())
        .await
        .unwrap();
    sim.invalidate_token();
    sim.set_faults(Faults {
        malformed_every: Some(2),
        leave_records_denied: true,
        ..Faults::default()
    })
    .unwrap();
    let err = client
        .leave_records(&good, since, None, &CallCounter::new())
        .await
        .unwrap_err();
    let texts = [err.to_string(), format!("{err:?}"), captured.text()];
    let log = &texts[2];
    assert!(log.contains("empLeaveRecords"), "the calls were logged");
    for text in texts.iter() {
        assert!(!text.contains("simtok"), "an access token in: {text}");
        assert!(!text.contains(SECRET), "the App Secret in: {text}");
    }
}
