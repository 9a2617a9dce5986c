//! The DingTalk client against httpmock: the exact requests it sends and what it does with each
//! class of answer (token refresh, throttling, busy, 5xx, IP ban, fatal and department-level
//! codes), plus a redaction test over every log line and error text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dingtalk_support::*;
use httpmock::prelude::*;
use httpmock::{Mock, MockServer};
use serde_json::{Value, json};
use syncerd::dingtalk::{Client, ClientConfig, DingTalkError, Endpoint, StepOutcome};
use syncerd::secret::Secret;
use syncerd::simulator::{BanStyle, SimulatorConfig};

const KEY: &str = "ding-test-key";
const SECRET: &str = "test-secret-value";

async fn token_mock<'a>(server: &'a MockServer, token: &str) -> Mock<'a> {
    let token = token.to_owned();
    server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/gettoken")
                .query_param("appkey", KEY)
                .query_param("appsecret", SECRET);
            then.status(200).json_body(json!({
                "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200
            }));
        })
        .await
}

fn ok_body(result: Value) -> Value {
    json!({"errcode": 0, "errmsg": "ok", "request_id": "req-1", "result": result})
}

/// A mock of `listsub` for one department and token, answering `body`.
async fn listsub_mock<'a>(
    server: &'a MockServer,
    token: &str,
    dept_id: i64,
    body: Value,
    times: Option<usize>,
) -> Mock<'a> {
    let token = token.to_owned();
    server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/topapi/v2/department/listsub")
                .query_param("access_token", token)
                .header("content-type", "application/json")
                .json_body(json!({"dept_id": dept_id}));
            let then = then.status(200).json_body(body);
            if let Some(n) = times {
                then.up_to_n_times(n);
            }
        })
        .await
}

/// A mock of `v2/user/list` for one department page and token, answering `body`.
async fn users_mock<'a>(
    server: &'a MockServer,
    token: &str,
    dept_id: i64,
    cursor: i64,
    body: Value,
    times: Option<usize>,
) -> Mock<'a> {
    let token = token.to_owned();
    server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/topapi/v2/user/list")
                .query_param("access_token", token)
                .header("content-type", "application/json")
                .json_body(json!({
                    "dept_id": dept_id, "cursor": cursor, "size": 100,
                    "contain_access_limit": true
                }));
            let then = then.status(200).json_body(body);
            if let Some(n) = times {
                then.up_to_n_times(n);
            }
        })
        .await
}

fn page(users: &[Value], next_cursor: Option<i64>) -> Value {
    let mut result = json!({"has_more": next_cursor.is_some(), "list": users});
    if let Some(c) = next_cursor {
        result["next_cursor"] = json!(c);
    }
    ok_body(result)
}

fn user(id: &str, depts: &[i64]) -> Value {
    json!({"userid": id, "unionid": format!("union-{id}"), "name": "张伟", "dept_id_list": depts,
           "active": true, "email": format!("{id}@example.com")})
}

fn platform_error(code: i64, msg: &str) -> Value {
    json!({"errcode": 88, "errmsg": format!("ding talk error[subcode={code},submsg={msg}]"),
           "sub_code": code.to_string(), "sub_msg": msg, "request_id": "req-x"})
}

fn client(server: &MockServer) -> Client {
    Client::new(fast_config(&server.base_url())).unwrap()
}

fn test_creds() -> syncerd::dingtalk::Credentials {
    creds(KEY, SECRET)
}

/// An organization of root (1) with one child (10) and nothing else, all answers fine.
async fn empty_tree(server: &MockServer, token: &str) {
    listsub_mock(
        server,
        token,
        1,
        ok_body(json!([{"dept_id": 10, "name": "研发", "parent_id": 1}])),
        None,
    )
    .await;
    listsub_mock(server, token, 10, ok_body(json!([])), None).await;
    users_mock(server, token, 1, 0, page(&[], None), None).await;
    users_mock(server, token, 10, 0, page(&[user("u1", &[10])], None), None).await;
}

#[tokio::test]
async fn fetch_sends_exactly_the_documented_requests_and_follows_next_cursor_verbatim() {
    global_capture();
    let server = MockServer::start_async().await;
    let token = token_mock(&server, "tok-1").await;
    let root_children = listsub_mock(
        &server,
        "tok-1",
        1,
        ok_body(json!([
            {"dept_id": 10, "name": "研发中心", "parent_id": 1},
            {"dept_id": -1, "name": "家校通讯录", "parent_id": 1},
            {"dept_id": 20, "name": "Sales", "parent_id": 1},
        ])),
        None,
    )
    .await;
    let ten_children = listsub_mock(
        &server,
        "tok-1",
        10,
        ok_body(json!([{"dept_id": 30, "name": "后端组", "parent_id": 10}])),
        None,
    )
    .await;
    let twenty_children = listsub_mock(&server, "tok-1", 20, ok_body(json!([])), None).await;
    let thirty_children = listsub_mock(
        &server,
        "tok-1",
        30,
        // A cycle back to the root must not be walked again.
        ok_body(json!([{"dept_id": 1, "name": "loop", "parent_id": 30}])),
        None,
    )
    .await;
    // The root pages with an opaque cursor that must be sent back as is.
    let root_first = users_mock(
        &server,
        "tok-1",
        1,
        0,
        page(&[user("0042", &[1, 10])], Some(4711)),
        None,
    )
    .await;
    let root_second = users_mock(
        &server,
        "tok-1",
        1,
        4711,
        page(&[user("a7", &[1])], None),
        None,
    )
    .await;
    let ten_users = users_mock(
        &server,
        "tok-1",
        10,
        0,
        page(&[user("0042", &[1, 10]), user("b9", &[10, 30])], None),
        None,
    )
    .await;
    let twenty_users = users_mock(&server, "tok-1", 20, 0, page(&[], None), None).await;
    let thirty_users = users_mock(
        &server,
        "tok-1",
        30,
        0,
        page(&[user("b9", &[10, 30])], None),
        None,
    )
    .await;

    let dir = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap();

    for mock in [
        &token,
        &root_children,
        &ten_children,
        &twenty_children,
        &thirty_children,
        &root_first,
        &root_second,
        &ten_users,
        &twenty_users,
        &thirty_users,
    ] {
        mock.assert_calls_async(1).await;
    }
    assert!(dir.complete, "{:?}", dir.incomplete_reasons);
    let depts: Vec<(i64, Option<&str>, Option<i64>)> = dir
        .departments
        .iter()
        .map(|d| (d.dept_id, d.name.as_deref(), d.parent_id))
        .collect();
    assert_eq!(
        depts,
        vec![
            (1, None, None),
            (10, Some("研发中心"), Some(1)),
            (20, Some("Sales"), Some(1)),
            (30, Some("后端组"), Some(10)),
        ]
    );
    let users: Vec<(&str, Vec<i64>)> = dir
        .users
        .iter()
        .map(|u| (u.profile.userid.as_str(), u.seen_in.clone()))
        .collect();
    assert_eq!(
        users,
        vec![("0042", vec![1, 10]), ("a7", vec![1]), ("b9", vec![10, 30])]
    );
    assert_eq!(dir.stats["/gettoken"].calls, 1);
    assert_eq!(dir.stats["/topapi/v2/department/listsub"].calls, 4);
    assert_eq!(dir.stats["/topapi/v2/user/list"].calls, 5);
    assert!(dir.stats["/topapi/v2/user/list"].bytes > 0);
}

#[tokio::test]
async fn an_invalid_token_is_refreshed_once_and_the_request_replayed() {
    let server = MockServer::start_async().await;
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let token = server
        .mock_async(move |when, then| {
            when.method(GET).path("/gettoken");
            then.respond_with(move |_req: &HttpMockRequest| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                HttpMockResponse::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(
                        json!({"errcode": 0, "access_token": format!("tok-{n}"), "expires_in": 7200})
                            .to_string(),
                    )
                    .build()
            });
        })
        .await;
    // The first token is rejected everywhere, topapi style (88 + sub_code 40014).
    let rejected = server
        .mock_async(|when, then| {
            when.method(POST).query_param("access_token", "tok-1");
            then.status(200)
                .json_body(platform_error(40014, "不合法的access_token"));
        })
        .await;
    empty_tree(&server, "tok-2").await;

    let dir = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap();

    token.assert_calls_async(2).await;
    assert!(rejected.calls_async().await >= 1);
    assert!(dir.complete);
    assert_eq!(dir.users.len(), 1);
    let errors: u64 = dir
        .stats
        .values()
        .map(|s| s.errors_by_code.get(&40014).copied().unwrap_or(0))
        .sum();
    assert!(errors >= 1);
}

#[tokio::test]
async fn a_token_rejected_again_after_the_refresh_fails_the_fetch() {
    let server = MockServer::start_async().await;
    let token = token_mock(&server, "tok-1").await;
    server
        .mock_async(|when, then| {
            when.method(POST);
            then.status(200)
                .json_body(json!({"errcode": 40014, "errmsg": "不合法的access_token"}));
        })
        .await;
    let err = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, DingTalkError::TokenRejected { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("freshly fetched access token"),
        "{err}"
    );
    assert!(token.calls_async().await >= 2);
}

#[tokio::test]
async fn throttled_answers_are_retried_with_back_off_and_slow_the_api_down() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    let throttled = listsub_mock(
        &server,
        "tok",
        1,
        platform_error(90018, "触发了qps流控"),
        Some(2),
    )
    .await;
    empty_tree(&server, "tok").await;
    let client = client(&server);

    let dir = client.fetch_directory(&test_creds()).await.unwrap();

    throttled.assert_calls_async(2).await;
    assert!(dir.complete);
    let listsub = &dir.stats["/topapi/v2/department/listsub"];
    assert_eq!((listsub.throttled, listsub.retries), (2, 2));
    assert_eq!(listsub.errors_by_code.get(&90018), Some(&2));
    assert_eq!(listsub.calls, 4, "2 throttled + root + department 10");
    assert!(client.current_rate(KEY, Endpoint::DepartmentListSub) < 1_000.0);
    assert_eq!(client.current_rate(KEY, Endpoint::UserList), 1_000.0);
}

#[tokio::test]
async fn a_non_json_502_is_retried() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    let gateway = server
        .mock_async(|when, then| {
            when.method(POST).path("/topapi/v2/user/list");
            then.status(502)
                .header("content-type", "text/html")
                .body("<html><body><h1>502 Bad Gateway</h1></body></html>")
                .up_to_n_times(2);
        })
        .await;
    empty_tree(&server, "tok").await;

    let dir = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap();

    gateway.assert_calls_async(2).await;
    assert!(dir.complete);
    let users = &dir.stats["/topapi/v2/user/list"];
    assert_eq!(users.other_errors.get("http 502"), Some(&2));
    assert_eq!(users.retries, 2);
}

#[tokio::test]
async fn busy_answers_that_outlast_the_retry_budget_fail_with_a_retryable_error() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    let busy = listsub_mock(
        &server,
        "tok",
        1,
        json!({"errcode": -1, "errmsg": "系统繁忙"}),
        None,
    )
    .await;
    users_mock(&server, "tok", 1, 0, page(&[], None), None).await;

    let err = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap_err()
        .error;

    busy.assert_calls_async(4).await;
    assert!(
        matches!(err, DingTalkError::Busy { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("/topapi/v2/department/listsub"), "{text}");
    assert!(text.contains("errcode -1"), "{text}");
}

/// Runs a fetch whose gettoken works and whose `endpoint` answers `answer` everywhere.
async fn fetch_failing_with(endpoint: &str, answer: Value) -> (DingTalkError, MockServer) {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    let path = endpoint.to_owned();
    server
        .mock_async(|when, then| {
            when.method(POST).path(path);
            then.status(200).json_body(answer);
        })
        .await;
    empty_tree(&server, "tok").await;
    let err = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap_err()
        .error;
    (err, server)
}

#[tokio::test]
async fn a_wrong_app_secret_fails_with_40089_naming_the_app_key_and_what_to_check() {
    let server = MockServer::start_async().await;
    let token = server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200)
                .json_body(json!({"errcode": 40089, "errmsg": "不合法的corpId或corpSecret"}));
        })
        .await;
    let listed = server
        .mock_async(|when, then| {
            when.method(POST);
            then.status(200).json_body(ok_body(json!([])));
        })
        .await;
    let err = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, DingTalkError::BadCredentials { code: 40089, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(KEY) && text.contains("App Secret"), "{text}");
    assert!(text.contains("不合法的corpId或corpSecret"), "{text}");
    token.assert_calls_async(1).await;
    listed.assert_calls_async(0).await;
}

#[tokio::test]
async fn errcode_40001_on_gettoken_is_a_bad_secret_not_a_token_problem() {
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200).json_body(
                json!({"errcode": 40001, "errmsg": "获取access_token时Secret错误，或者access_token无效"}),
            );
        })
        .await;
    let err = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap_err()
        .error;
    assert!(
        matches!(err, DingTalkError::BadCredentials { code: 40001, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_department_permission_60011_names_qyapi_get_department_list() {
    let (err, _server) = fetch_failing_with(
        "/topapi/v2/department/listsub",
        json!({"errcode": 60011, "errmsg": "没有调用该接口的权限"}),
    )
    .await;
    assert_eq!(
        err.permission().map(|p| p.code),
        Some("qyapi_get_department_list")
    );
    let text = err.to_string();
    assert!(text.contains("qyapi_get_department_list"), "{text}");
    assert!(text.contains("权限管理"), "{text}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn missing_member_permission_60011_names_qyapi_get_department_member() {
    let (err, _server) = fetch_failing_with(
        "/topapi/v2/user/list",
        json!({"errcode": 60011, "errmsg": "没有调用该接口的权限"}),
    )
    .await;
    assert_eq!(
        err.permission().map(|p| p.code),
        Some("qyapi_get_department_member")
    );
    assert!(err.to_string().contains("qyapi_get_department_member"));
}

#[tokio::test]
async fn a_server_ip_outside_the_whitelist_60020_fails_with_whitelist_advice() {
    let (err, _server) = fetch_failing_with(
        "/topapi/v2/department/listsub",
        json!({"errcode": 60020, "errmsg": "访问ip不在白名单之中"}),
    )
    .await;
    assert!(
        matches!(err, DingTalkError::IpNotWhitelisted { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("服务器出口IP"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_exhausted_monthly_quota_90020_fails_the_fetch_even_inside_88() {
    let (err, _server) = fetch_failing_with(
        "/topapi/v2/user/list",
        platform_error(90020, "您的企业本月api调用量已超过限制"),
    )
    .await;
    assert!(
        matches!(err, DingTalkError::MonthlyQuota { code: 90020, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("monthly"), "{err}");
}

#[tokio::test]
async fn a_department_gone_60003_marks_the_directory_incomplete_and_names_it() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    listsub_mock(
        &server,
        "tok",
        1,
        ok_body(json!([{"dept_id": 10, "name": "研发", "parent_id": 1},
                       {"dept_id": 20, "name": "销售", "parent_id": 1}])),
        None,
    )
    .await;
    let gone = json!({"errcode": 60003, "errmsg": "部门不存在"});
    listsub_mock(&server, "tok", 10, gone.clone(), None).await;
    users_mock(&server, "tok", 10, 0, gone, None).await;
    listsub_mock(&server, "tok", 20, ok_body(json!([])), None).await;
    users_mock(&server, "tok", 1, 0, page(&[], None), None).await;
    users_mock(
        &server,
        "tok",
        20,
        0,
        page(&[user("s1", &[20])], None),
        None,
    )
    .await;

    let dir = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap();

    assert!(!dir.complete);
    assert_eq!(
        dir.incomplete_reasons.len(),
        2,
        "{:?}",
        dir.incomplete_reasons
    );
    for reason in &dir.incomplete_reasons {
        assert!(reason.contains("department 10"), "{reason}");
        assert!(reason.contains("60003"), "{reason}");
    }
    assert_eq!(dir.users.len(), 1);
    assert_eq!(dir.users[0].profile.userid, "s1");
}

#[tokio::test]
async fn a_department_out_of_scope_50004_marks_the_directory_incomplete_and_names_it() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    users_mock(
        &server,
        "tok",
        10,
        0,
        json!({"errcode": 50004, "errmsg": "请求的部门id不在授权范围内"}),
        None,
    )
    .await;
    empty_tree(&server, "tok").await;

    let dir = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap();

    assert!(!dir.complete);
    let reasons = dir.incomplete_reasons.join("\n");
    assert!(
        reasons.contains("members of department 10 not listed"),
        "{reasons}"
    );
    assert!(reasons.contains("50004"), "{reasons}");
    assert!(reasons.contains("通讯录权限范围"), "{reasons}");
    assert!(dir.users.is_empty());
}

#[tokio::test]
async fn an_ip_ban_pauses_every_call_of_the_app_key_then_resumes() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    let json_ban = listsub_mock(
        &server,
        "tok",
        1,
        json!({"status": 1111, "wait": 5, "source": "x5", "punish": "deny"}),
        Some(1),
    )
    .await;
    let html_ban = server
        .mock_async(|when, then| {
            when.method(POST).path("/topapi/v2/user/list");
            then.status(200)
                .header("content-type", "text/html")
                .body("<!DOCTYPE html><html><body>访问被拒绝</body></html>")
                .up_to_n_times(1);
        })
        .await;
    empty_tree(&server, "tok").await;
    let started = Instant::now();

    let dir = client(&server)
        .fetch_directory(&test_creds())
        .await
        .unwrap();

    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    json_ban.assert_calls_async(1).await;
    html_ban.assert_calls_async(1).await;
    assert!(dir.complete);
    let bans: u64 = dir
        .stats
        .values()
        .map(|s| s.other_errors.get("ip ban").copied().unwrap_or(0))
        .sum();
    assert_eq!(bans, 2);
}

#[tokio::test]
async fn an_ip_ban_that_outlasts_the_retry_budget_fails_cleanly() {
    let server = MockServer::start_async().await;
    let banned = server
        .mock_async(|when, then| {
            when.path("/gettoken");
            then.status(200)
                .json_body(json!({"status": 1111, "wait": 5, "punish": "deny"}));
        })
        .await;
    let client = Client::new(ClientConfig {
        max_attempts: 3,
        ip_ban_pause: Duration::from_millis(150),
        ..fast_config(&server.base_url())
    })
    .unwrap();
    let started = Instant::now();
    let err = client
        .fetch_directory(&test_creds())
        .await
        .unwrap_err()
        .error;
    assert!(started.elapsed() >= Duration::from_millis(300));
    banned.assert_calls_async(3).await;
    assert!(
        matches!(err, DingTalkError::IpBanned { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("IP-ban"), "{err}");
}

#[tokio::test]
async fn concurrent_fetches_share_one_token_refresh() {
    let server = MockServer::start_async().await;
    let token = server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200)
                .delay(Duration::from_millis(200))
                .json_body(json!({"errcode": 0, "access_token": "tok", "expires_in": 7200}));
        })
        .await;
    empty_tree(&server, "tok").await;
    let client = client(&server);
    let other = client.clone();
    let creds = test_creds();
    let (a, b, c) = tokio::join!(
        client.fetch_directory(&creds),
        other.fetch_directory(&creds),
        client.check(&creds),
    );
    assert!(a.unwrap().complete && b.unwrap().complete && c.can_sync());
    token.assert_calls_async(1).await;
}

#[tokio::test]
async fn a_token_is_reused_until_shortly_before_it_expires() {
    let server = MockServer::start_async().await;
    let token = server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            // Short-lived tokens are refreshed at half their life (here after 1 s).
            then.status(200)
                .json_body(json!({"errcode": 0, "access_token": "tok", "expires_in": 2}));
        })
        .await;
    empty_tree(&server, "tok").await;
    let client = client(&server);
    client.fetch_directory(&test_creds()).await.unwrap();
    client.fetch_directory(&test_creds()).await.unwrap();
    token.assert_calls_async(1).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client.fetch_directory(&test_creds()).await.unwrap();
    token.assert_calls_async(2).await;
    // A different secret for the same App Key must prove itself with a new token.
    let err = client.fetch_directory(&creds(KEY, "rotated-secret")).await;
    assert!(err.is_ok());
    token.assert_calls_async(3).await;
}

#[tokio::test]
async fn check_reports_each_step_and_the_missing_permission() {
    let server = MockServer::start_async().await;
    token_mock(&server, "tok").await;
    listsub_mock(
        &server,
        "tok",
        1,
        json!({"errcode": 60011, "errmsg": "没有调用该接口的权限"}),
        None,
    )
    .await;
    users_mock(
        &server,
        "tok",
        1,
        0,
        // Emails come back, mobiles do not (no 企业员工手机号信息 permission).
        page(&[user("a", &[1]), user("b", &[1])], None),
        None,
    )
    .await;

    let report = client(&server).check(&test_creds()).await;

    assert!(!report.can_sync());
    assert!(report.steps[0].is_ok());
    match &report.steps[1].outcome {
        StepOutcome::Failed {
            permission, code, ..
        } => {
            assert_eq!(permission.as_deref(), Some("qyapi_get_department_list"));
            assert_eq!(*code, Some(60011));
        }
        other => panic!("{other:?}"),
    }
    assert!(report.steps[2].is_ok());
    let fields = report.fields.clone().unwrap();
    assert!(!fields.mobile_returned());
    assert!(fields.email_returned());
    let text = report.render();
    assert!(text.contains("[FAILED]"), "{text}");
    assert!(
        text.contains("missing permission point: qyapi_get_department_list"),
        "{text}"
    );
    assert!(text.contains("企业员工手机号信息"), "{text}");
    assert!(text.contains("cannot sync"), "{text}");
}

#[tokio::test]
async fn check_with_wrong_credentials_fails_the_token_step_and_skips_the_rest() {
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200)
                .json_body(json!({"errcode": 40089, "errmsg": "不合法的corpId或corpSecret"}));
        })
        .await;
    let report = client(&server).check(&test_creds()).await;
    assert!(!report.can_sync());
    assert!(matches!(
        report.steps[0].outcome,
        StepOutcome::Failed {
            code: Some(40089),
            ..
        }
    ));
    assert!(matches!(
        report.steps[1].outcome,
        StepOutcome::Skipped { .. }
    ));
    assert!(matches!(
        report.steps[2].outcome,
        StepOutcome::Skipped { .. }
    ));
}

/// Every log line (TRACE, with span events, of the whole test binary) and every error text of
/// fetches that succeed and fail in all the ways that involve a URL or a token, checked for the
/// secrets.
#[tokio::test]
async fn secrets_never_appear_in_logs_or_error_messages() {
    const APP_SECRET: &str = "AppSecret-Zq81xW0vRk";
    const WRONG_SECRET: &str = "WrongSecret-Hy52mQ";
    const TOKEN: &str = "AccessTok-Pj47vKc9";

    let captured = global_capture().expect("no other global subscriber in this test binary");
    let mut texts: Vec<String> = Vec::new();
    fn record(texts: &mut Vec<String>, e: &DingTalkError) {
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
    }

    // 1. The simulator with every fault and a department error: a complete run of all paths.
    // Scheduled faults: the ~50 calls of this organization meet every kind, whatever the timing.
    let sim = start_simulator(SimulatorConfig {
        app_secret: Secret::new(APP_SECRET),
        throttle_every: Some(10),
        busy_every: Some(19),
        bad_gateway_every: Some(17),
        malformed_every: Some(18),
        invalidate_token_every: Some(25),
        ..org_config(300, 20)
    })
    .await;
    let gone = sim.org().departments[3].dept_id;
    sim.set_department_error(gone, Some(60003));
    let sim_client = Client::new(ClientConfig {
        max_attempts: 8,
        ..fast_config(&sim.base_url())
    })
    .unwrap();
    let good = creds(sim.app_key(), APP_SECRET);
    let dir = sim_client.fetch_directory(&good).await.unwrap();
    assert!(!dir.complete);
    let stats = sim.stats();
    type Served = fn(&syncerd::simulator::SimEndpointStats) -> u64;
    let kinds: [Served; 5] = [
        |s| s.injected_throttle,
        |s| s.injected_busy,
        |s| s.injected_bad_gateway,
        |s| s.injected_malformed,
        |s| s.token_rejected,
    ];
    for kind in kinds {
        let served: u64 = stats.endpoints.values().map(kind).sum();
        assert!(served > 0, "every fault kind is served: {stats:?}");
    }
    texts.extend(dir.incomplete_reasons.iter().cloned());
    texts.push(format!("{dir:?}"));
    texts.push(format!("{sim_client:?} {good:?} {sim:?}"));

    // 2. Wrong secret, at fetch and at check.
    let wrong = creds(sim.app_key(), WRONG_SECRET);
    record(
        &mut texts,
        &sim_client.fetch_directory(&wrong).await.unwrap_err().error,
    );
    texts.push(sim_client.check(&wrong).await.render());

    // 3. An IP ban that outlasts the retry budget.
    sim.ban_ip_for(Duration::from_secs(30), BanStyle::Html);
    let banned_client = Client::new(ClientConfig {
        max_attempts: 2,
        ip_ban_pause: Duration::from_millis(50),
        ..fast_config(&sim.base_url())
    })
    .unwrap();
    record(
        &mut texts,
        &banned_client
            .fetch_directory(&good)
            .await
            .unwrap_err()
            .error,
    );

    // 4. A server that echoes the token and the secret in its error messages.
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.method(GET).path("/gettoken");
            then.status(200)
                .json_body(json!({"errcode": 0, "access_token": TOKEN, "expires_in": 7200}));
        })
        .await;
    server
        .mock_async(|when, then| {
            when.method(POST);
            then.status(200).json_body(json!({
                "errcode": 88, "sub_code": "40014",
                "sub_msg": format!("不合法的access_token {TOKEN} (appsecret={APP_SECRET})"),
                "errmsg": format!("token {TOKEN}"),
            }));
        })
        .await;
    let echo = Client::new(fast_config(&server.base_url())).unwrap();
    record(
        &mut texts,
        &echo
            .fetch_directory(&creds("echo-key", APP_SECRET))
            .await
            .unwrap_err()
            .error,
    );
    texts.push(echo.check(&creds("echo-key", APP_SECRET)).await.render());

    // 5. A transport error: nothing listens on the port, and reqwest's error carries the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = Client::new(ClientConfig {
        max_attempts: 2,
        ..fast_config(&closed_base)
    })
    .unwrap();
    let err = unreachable
        .fetch_directory(&creds("k", APP_SECRET))
        .await
        .unwrap_err()
        .error;
    assert!(matches!(err, DingTalkError::Transport { .. }), "{err:?}");
    record(&mut texts, &err);

    // 6. A timeout (reqwest's timeout error carries the URL too).
    let slow = MockServer::start_async().await;
    slow.mock_async(|when, then| {
        when.path("/gettoken");
        then.status(200)
            .delay(Duration::from_secs(3))
            .json_body(json!({}));
    })
    .await;
    let impatient = Client::new(ClientConfig {
        max_attempts: 1,
        request_timeout: Duration::from_millis(200),
        ..fast_config(&slow.base_url())
    })
    .unwrap();
    let err = impatient
        .fetch_directory(&creds("k", APP_SECRET))
        .await
        .unwrap_err()
        .error;
    assert!(matches!(err, DingTalkError::Timeout { .. }), "{err:?}");
    record(&mut texts, &err);

    let logs = captured.text();
    assert!(logs.contains("DingTalk call failed"), "capture works");
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"));
    assert!(logs.lines().count() > 100, "{} lines", logs.lines().count());
    for secret in [APP_SECRET, WRONG_SECRET, TOKEN, "simtok"] {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("`{secret}` appears in the logs: {line}");
        }
        for text in &texts {
            assert!(!text.contains(secret), "`{secret}` appears in: {text}");
        }
    }
    // The echoed messages are kept, minus the secrets.
    assert!(
        texts
            .iter()
            .any(|t| t.contains("不合法的access_token [redacted]")),
        "{texts:#?}"
    );
}

/// serde quotes a mistyped value in its message, so a `result` that echoes the access token in a
/// field of the wrong type must not carry the token into the malformed-answer error.
#[tokio::test]
async fn a_mistyped_result_echoing_the_access_token_is_reported_without_it() {
    const TOKEN: &str = "AccessTok-Rw83nVd1";
    let server = MockServer::start_async().await;
    token_mock(&server, TOKEN).await;
    let echoed = ok_body(json!({
        "has_more": false,
        "list": [{"userid": "u1", "dept_order": TOKEN}],
    }));
    users_mock(&server, TOKEN, 10, 0, echoed, None).await;
    listsub_mock(&server, TOKEN, 10, ok_body(json!(TOKEN)), None).await;
    let client = client(&server);

    let users = client
        .list_users_page(&test_creds(), 10, 0)
        .await
        .unwrap_err();
    let departments = client
        .list_sub_departments(&test_creds(), 10)
        .await
        .unwrap_err();

    for err in [users, departments] {
        assert!(matches!(err, DingTalkError::Malformed { .. }), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(text.contains("unexpected `result`"), "{text}");
        assert!(!text.contains(TOKEN), "the access token leaks: {text}");
    }
}

#[tokio::test]
async fn an_answer_longer_than_max_response_bytes_is_refused_by_its_length_unread_and_not_retried()
{
    let server = MockServer::start_async().await;
    token_mock(&server, "tok-1").await;
    listsub_mock(&server, "tok-1", 1, ok_body(json!([])), None).await;
    // A well-formed page, padded past the cap; its Content-Length tells before any byte is read.
    let padded = format!(
        r#"{{"errcode":0,"errmsg":"ok","result":{{"has_more":false,"list":[]}},"pad":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let big = server
        .mock_async(|when, then| {
            when.method(POST).path("/topapi/v2/user/list");
            then.status(200)
                .header("content-type", "application/json")
                .body(padded);
        })
        .await;
    let client = Client::new(ClientConfig {
        max_response_bytes: 256 * 1024,
        ..fast_config(&server.base_url())
    })
    .unwrap();
    let err = client.fetch_directory(&test_creds()).await.unwrap_err();
    assert!(
        matches!(
            err.error,
            DingTalkError::ResponseTooLarge {
                limit_bytes: 262_144,
                ..
            }
        ),
        "{:?}",
        err.error
    );
    let text = err.error.to_string();
    assert!(text.contains("dingtalk.max_response_bytes"), "{text}");
    assert!(text.contains("/topapi/v2/user/list"), "{text}");
    big.assert_calls_async(1).await;
    let list = &err.stats["/topapi/v2/user/list"];
    assert_eq!((list.calls, list.bytes), (1, 0), "{list:?}");
    assert_eq!(list.other_errors.get("answer too large"), Some(&1));

    // The same answer under a cap it fits passes.
    let roomy = Client::new(fast_config(&server.base_url())).unwrap();
    let dir = roomy.fetch_directory(&test_creds()).await.unwrap();
    assert!(dir.complete);
}
