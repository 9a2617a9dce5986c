//! The real client against the real simulator over HTTP: completeness, call counts, the QPS
//! limit, faults, department errors, the control API and the simulator's own envelopes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dingtalk_support::*;
use serde_json::{Value, json};
use syncerd::dingtalk::{Client, ClientConfig, Endpoint};
use syncerd::simulator::{
    BanStyle, Faults, SimUser, SimulateArgs, SimulatorConfig, UserPatch, run_simulate,
};

/// The big organization of the brief: 10,000 users in 500 departments.
fn big_org() -> SimulatorConfig {
    org_config(10_000, 500)
}

/// Expected calls per endpoint of one complete fetch with a fresh client.
fn expected_calls(org: &syncerd::simulator::OrgSnapshot) -> BTreeMap<&'static str, u64> {
    let pages: u64 = org
        .members_per_department()
        .values()
        .map(|m| m.div_ceil(100).max(1) as u64)
        .sum();
    BTreeMap::from([
        (Endpoint::GetToken.path(), 1),
        (Endpoint::DepartmentGet.path(), 1),
        (
            Endpoint::DepartmentListSub.path(),
            org.departments.len() as u64,
        ),
        (Endpoint::UserList.path(), pages),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_of_10k_in_500_departments_is_fetched_once_with_the_minimum_calls() {
    init_test_log();
    let sim = start_simulator(SimulatorConfig {
        qps: Some(250),
        ..big_org()
    })
    .await;
    let org = sim.org();
    assert_eq!(org.departments.len(), 501);
    let client = Client::new(ClientConfig {
        qps_per_api: 200,
        ..fast_config(&sim.base_url())
    })
    .unwrap();

    let started = Instant::now();
    let dir = client.fetch_directory(&sim.credentials()).await.unwrap();
    let elapsed = started.elapsed();

    assert_directory_matches(&dir, &org);
    let expected = expected_calls(&org);
    let fetched_calls: BTreeMap<&str, u64> = dir
        .stats
        .iter()
        .map(|(path, s)| (path.as_str(), s.calls))
        .collect();
    assert_eq!(fetched_calls, expected, "calls counted by the client");
    let stats = sim.stats();
    for (path, calls) in &expected {
        let served = stats.endpoints.get(*path).cloned().unwrap_or_default();
        assert_eq!(served.calls, *calls, "calls served on {path}");
        assert_eq!(served.ok, *calls, "every call answered with data on {path}");
    }
    assert_eq!(dir.total_calls(), org.minimum_fetch_calls(100));
    assert_eq!(stats.total_qps_rejected(), 0);
    eprintln!(
        "10k users / 500 departments at 200 qps: {} calls in {:.1} s",
        dir.total_calls(),
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_at_15_qps_never_exceeds_dingtalks_20_qps_and_completes() {
    init_test_log();
    let sim = start_simulator(SimulatorConfig {
        qps: Some(20),
        ..big_org()
    })
    .await;
    let org = sim.org();
    // The production defaults: 15 calls per second per API, 8 in flight.
    let client = Client::new(ClientConfig {
        api_base: sim.base_url(),
        ..ClientConfig::default()
    })
    .unwrap();

    let started = Instant::now();
    let dir = client.fetch_directory(&sim.credentials()).await.unwrap();
    let elapsed = started.elapsed();

    assert_directory_matches(&dir, &org);
    let stats = sim.stats();
    assert_eq!(stats.total_qps_rejected(), 0, "{stats:#?}");
    for endpoint in [Endpoint::DepartmentListSub, Endpoint::UserList] {
        let s = stats.endpoint(endpoint);
        assert!(
            s.max_calls_per_second <= 20,
            "{endpoint}: {} calls in one second",
            s.max_calls_per_second
        );
    }
    let minimum = org.minimum_fetch_calls(100);
    assert_eq!(dir.total_calls(), minimum);
    let listsub = stats.endpoint(Endpoint::DepartmentListSub).calls as f64;
    let pages = stats.endpoint(Endpoint::UserList).calls as f64;
    // Both APIs run at once, so the floor is the busier API at 15/s, not all calls at 15/s.
    let floor = listsub.max(pages) / 15.0;
    assert!(
        elapsed.as_secs_f64() >= floor - 1.5,
        "faster than the limiter allows: {elapsed:?} < {floor} s"
    );
    eprintln!(
        "10k users / 500 departments, simulator capped at 20 qps, client at 15: {} calls in \
         {:.1} s (max {} calls/s on one API; all calls / 20 = {:.1} s; busier API / 20 = {:.1} s)",
        dir.total_calls(),
        elapsed.as_secs_f64(),
        stats.max_calls_per_second(),
        minimum as f64 / 20.0,
        listsub.max(pages) / 20.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_busy_answers_still_produce_an_identical_directory() {
    init_test_log();
    let shape = big_org();
    let clean_sim = start_simulator(shape.clone()).await;
    // Scheduled faults: every 10th call throttled, every 20th busy, whatever the timing.
    let faulty_sim = start_simulator(SimulatorConfig {
        throttle_every: Some(10),
        busy_every: Some(20),
        ..shape
    })
    .await;
    let config = |base: &str| ClientConfig {
        max_attempts: 8,
        ..fast_config(base)
    };
    let clean = Client::new(config(&clean_sim.base_url()))
        .unwrap()
        .fetch_directory(&clean_sim.credentials())
        .await
        .unwrap();
    let started = Instant::now();
    let faulty = Client::new(config(&faulty_sim.base_url()))
        .unwrap()
        .fetch_directory(&faulty_sim.credentials())
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert_directory_matches(&faulty, &faulty_sim.org());
    assert_eq!(
        content(&faulty),
        content(&clean),
        "same organization, same result"
    );
    let stats = faulty_sim.stats();
    let throttled: u64 = stats.endpoints.values().map(|s| s.injected_throttle).sum();
    let busy: u64 = stats.endpoints.values().map(|s| s.injected_busy).sum();
    assert!(
        throttled > 20 && busy > 10,
        "faults were injected: {stats:#?}"
    );
    let client_throttled: u64 = faulty.stats.values().map(|s| s.throttled).sum();
    let client_retries: u64 = faulty.stats.values().map(|s| s.retries).sum();
    assert_eq!(client_throttled, throttled);
    assert_eq!(client_retries, throttled + busy);
    eprintln!(
        "10k users / 500 departments with 10% throttled and 5% busy answers: {} calls \
         ({throttled} throttled, {busy} busy) in {:.1} s",
        faulty.total_calls(),
        elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn gateway_pages_garbled_bodies_and_revoked_tokens_do_not_change_the_result() {
    init_test_log();
    let shape = org_config(1_000, 60);
    let clean_sim = start_simulator(shape.clone()).await;
    let faulty_sim = start_simulator(SimulatorConfig {
        bad_gateway_every: Some(25),
        malformed_every: Some(25),
        invalidate_token_every: Some(40),
        ..shape
    })
    .await;
    let config = |base: &str| ClientConfig {
        max_attempts: 8,
        ..fast_config(base)
    };
    let clean = Client::new(config(&clean_sim.base_url()))
        .unwrap()
        .fetch_directory(&clean_sim.credentials())
        .await
        .unwrap();
    let faulty = Client::new(config(&faulty_sim.base_url()))
        .unwrap()
        .fetch_directory(&faulty_sim.credentials())
        .await
        .unwrap();
    assert_eq!(content(&faulty), content(&clean));
    let stats = faulty_sim.stats();
    assert!(stats.endpoint(Endpoint::GetToken).ok >= 3, "{stats:#?}");
    let bad_gateway: u64 = stats
        .endpoints
        .values()
        .map(|s| s.injected_bad_gateway)
        .sum();
    let malformed: u64 = stats.endpoints.values().map(|s| s.injected_malformed).sum();
    assert!(bad_gateway > 0 && malformed > 0, "{stats:#?}");
    let by_kind: u64 = faulty
        .stats
        .values()
        .map(|s| s.other_errors.get("http 502").copied().unwrap_or(0))
        .sum();
    assert_eq!(by_kind, bad_gateway);
}

#[tokio::test]
async fn a_department_answering_60003_makes_the_result_incomplete_and_says_which() {
    let sim = start_simulator(org_config(300, 20)).await;
    let org = sim.org();
    // A leaf department with members, and another one for 50004.
    let members = org.members_per_department();
    let leaves: Vec<i64> = org
        .departments
        .iter()
        .filter(|d| d.dept_id != 1)
        .filter(|d| {
            !org.departments
                .iter()
                .any(|c| c.parent_id == Some(d.dept_id))
        })
        .filter(|d| members.get(&d.dept_id).copied().unwrap_or(0) > 0)
        .map(|d| d.dept_id)
        .collect();
    let (gone, out_of_scope) = (leaves[0], leaves[1]);
    sim.set_department_error(gone, Some(60003));
    sim.set_department_error(out_of_scope, Some(50004));

    let client = Client::new(fast_config(&sim.base_url())).unwrap();
    let dir = client.fetch_directory(&sim.credentials()).await.unwrap();

    assert!(!dir.complete);
    let reasons = dir.incomplete_reasons.join("\n");
    assert!(reasons.contains(&format!("department {gone}")), "{reasons}");
    assert!(reasons.contains("60003"), "{reasons}");
    assert!(
        reasons.contains(&format!("department {out_of_scope}")),
        "{reasons}"
    );
    assert!(reasons.contains("50004"), "{reasons}");
    assert!(reasons.contains("通讯录权限范围"), "{reasons}");
    // Everyone else is still there.
    let others = org
        .users
        .iter()
        .filter(|u| {
            u.profile
                .dept_id_list
                .as_ref()
                .is_some_and(|l| l.iter().any(|d| *d != gone && *d != out_of_scope))
        })
        .count();
    assert_eq!(dir.users.len(), others);
    assert!(dir.departments.iter().any(|d| d.dept_id == gone));
}

#[tokio::test]
async fn the_family_school_directory_is_skipped() {
    let sim = start_simulator(SimulatorConfig {
        family_school_department: true,
        ..org_config(100, 10)
    })
    .await;
    let client = Client::new(fast_config(&sim.base_url())).unwrap();
    let dir = client.fetch_directory(&sim.credentials()).await.unwrap();
    assert_directory_matches(&dir, &sim.org());
    assert!(dir.departments.iter().all(|d| d.dept_id > 0));
    assert_eq!(dir.total_calls(), sim.org().minimum_fetch_calls(100));
}

#[tokio::test]
async fn the_same_seed_serves_the_same_organization_and_fetch() {
    let a = start_simulator(org_config(500, 30)).await;
    let b = start_simulator(org_config(500, 30)).await;
    assert_eq!(a.org(), b.org());
    let fa = Client::new(fast_config(&a.base_url()))
        .unwrap()
        .fetch_directory(&a.credentials())
        .await
        .unwrap();
    let fb = Client::new(fast_config(&b.base_url()))
        .unwrap()
        .fetch_directory(&b.credentials())
        .await
        .unwrap();
    assert_eq!(content(&fa), content(&fb));
    let c = start_simulator(SimulatorConfig {
        seed: 2,
        ..org_config(500, 30)
    })
    .await;
    assert_ne!(a.org(), c.org());
}

#[tokio::test]
async fn changes_made_in_process_show_in_the_next_fetch() {
    let sim = start_simulator(org_config(50, 5)).await;
    let client = Client::new(fast_config(&sim.base_url())).unwrap();
    let creds = sim.credentials();
    let before = client.fetch_directory(&creds).await.unwrap();
    assert_directory_matches(&before, &sim.org());

    let org = sim.org();
    let leaver = org.users[0].profile.userid.clone();
    let mover = org.users[1].profile.userid.clone();
    let dept = sim.add_department("新成立的部门", 1).unwrap();
    let sub = sim.add_department("子部门", dept).unwrap();
    let hire = sim
        .add_user(SimUser::new("hire-0001", "新同事🎉", vec![sub, 1]))
        .unwrap();
    sim.remove_user(&leaver).unwrap();
    sim.update_user(
        &mover,
        UserPatch {
            title: Some("首席架构师".into()),
            active: Some(false),
            dept_id_list: Some(vec![dept]),
            clear: vec!["email".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let renamed = org.departments[1].dept_id;
    sim.rename_department(renamed, "改名后的部门").unwrap();
    sim.move_department(sub, renamed).unwrap();

    let after = client.fetch_directory(&creds).await.unwrap();
    assert_directory_matches(&after, &sim.org());
    let user = |id: &str| after.users.iter().find(|u| u.profile.userid == id);
    assert!(user(&leaver).is_none());
    assert_eq!(user(&hire).unwrap().seen_in, vec![1, sub]);
    let moved = user(&mover).unwrap();
    assert_eq!(moved.seen_in, vec![dept]);
    assert_eq!(moved.profile.title.as_deref(), Some("首席架构师"));
    assert_eq!(moved.profile.active, Some(false));
    assert_eq!(moved.profile.email, None);
    let d = |id: i64| after.departments.iter().find(|d| d.dept_id == id).unwrap();
    assert_eq!(d(renamed).name.as_deref(), Some("改名后的部门"));
    assert_eq!(d(sub).parent_id, Some(renamed));

    sim.remove_user(&hire).unwrap();
    sim.move_department(sub, 1).unwrap();
    sim.remove_department(sub).unwrap();
    let last = client.fetch_directory(&creds).await.unwrap();
    assert!(last.departments.iter().all(|d| d.dept_id != sub));
    assert_directory_matches(&last, &sim.org());
}

#[tokio::test]
async fn the_http_control_api_changes_the_org_and_reads_counters() {
    let sim = start_simulator(org_config(20, 3)).await;
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };

    let (status, body) = send(
        http.post(format!("{base}/_sim/departments"))
            .json(&json!({"name": "外部门", "parent_id": 1})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let dept = body["dept_id"].as_i64().unwrap();
    let (status, body) = send(http.post(format!("{base}/_sim/users")).json(&json!({
        "profile": {"userid": "http-user", "name": "接口用户", "dept_id_list": [dept]}
    })))
    .await;
    assert_eq!((status, body["userid"].as_str()), (201, Some("http-user")));
    let (status, _) = send(
        http.patch(format!("{base}/_sim/users/http-user"))
            .json(&json!({"title": "测试", "name": "改名"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        http.patch(format!("{base}/_sim/departments/{dept}"))
            .json(&json!({"name": "新名字"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = send(http.delete(format!("{base}/_sim/users/nobody"))).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nobody"));

    let (_, org) = send(http.get(format!("{base}/_sim/org"))).await;
    let users = org["users"].as_array().unwrap();
    let added = users
        .iter()
        .find(|u| u["profile"]["userid"] == "http-user")
        .unwrap();
    assert_eq!(added["profile"]["title"], "测试");
    assert_eq!(added["profile"]["name"], "改名");
    assert_eq!(sim.org().users.len(), 21);

    let client = Client::new(fast_config(&base)).unwrap();
    client.fetch_directory(&sim.credentials()).await.unwrap();
    let (_, stats) = send(http.get(format!("{base}/_sim/stats"))).await;
    assert_eq!(stats["endpoints"]["/gettoken"]["calls"], 1);
    assert!(
        stats["endpoints"]["/topapi/v2/department/listsub"]["max_calls_per_second"]
            .as_u64()
            .unwrap()
            >= 1
    );
    send(http.post(format!("{base}/_sim/stats/reset"))).await;
    assert_eq!(sim.stats().total_calls(), 0);

    let (status, _) = send(
        http.put(format!("{base}/_sim/faults"))
            .json(&json!({"busy_rate": 2.0})),
    )
    .await;
    assert_eq!(status, 400, "rates are checked");
    let (status, _) = send(
        http.put(format!("{base}/_sim/faults"))
            .json(&json!({"qps": 5, "throttle_rate": 0.5})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.faults().qps, Some(5));
    let (status, _) = send(
        http.put(format!("{base}/_sim/departments/{dept}/error"))
            .json(&json!({"code": 60003})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        http.post(format!("{base}/_sim/ip-ban"))
            .json(&json!({"seconds": 0.2, "style": "json"})),
    )
    .await;
    assert_eq!(status, 200);
    let banned = http.get(format!("{base}/gettoken")).send().await.unwrap();
    assert_eq!(banned.json::<Value>().await.unwrap()["status"], 1111);
    let (status, _) = send(http.post(format!("{base}/_sim/token/invalidate"))).await;
    assert_eq!(status, 200);
}

/// Calls one simulator endpoint directly and returns the JSON answer.
async fn raw(base: &str, endpoint: Endpoint, token: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}{}?access_token={token}", endpoint.path()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_simulator_speaks_dingtalks_envelopes_and_error_codes() {
    let sim = start_simulator(SimulatorConfig {
        qps: Some(3),
        ..org_config(150, 5)
    })
    .await;
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let token_answer = |key: &str, secret: &str| {
        http.get(format!("{base}/gettoken"))
            .query(&[("appkey", key), ("appsecret", secret)])
            .send()
    };
    let wrong: Value = token_answer("sim-app-key", "nope")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wrong["errcode"], 40089);
    let ok: Value = token_answer("sim-app-key", "sim-app-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["errcode"], 0);
    assert_eq!(ok["expires_in"], 7200);
    let token = ok["access_token"].as_str().unwrap().to_owned();
    let again: Value = token_answer("sim-app-key", "sim-app-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["access_token"], token,
        "a valid token is returned again"
    );

    let no_token = raw(
        &base,
        Endpoint::DepartmentListSub,
        "bogus",
        json!({"dept_id": 1}),
    )
    .await;
    assert_eq!(no_token["errcode"], 88);
    assert_eq!(no_token["sub_code"], "40014");
    assert!(no_token["request_id"].is_string());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let listsub = raw(
        &base,
        Endpoint::DepartmentListSub,
        &token,
        json!({"dept_id": 1}),
    )
    .await;
    assert_eq!(listsub["errcode"], 0, "{listsub}");
    assert!(listsub["result"].is_array());
    let child = listsub["result"][0]["dept_id"].as_i64().unwrap();
    raw(
        &base,
        Endpoint::DepartmentListSub,
        &token,
        json!({"dept_id": 1}),
    )
    .await;
    raw(
        &base,
        Endpoint::DepartmentListSub,
        &token,
        json!({"dept_id": 1}),
    )
    .await;
    let over = raw(
        &base,
        Endpoint::DepartmentListSub,
        &token,
        json!({"dept_id": 1}),
    )
    .await;
    assert_eq!(over["errcode"], 88, "{over}");
    assert_eq!(over["sub_code"], "90018");
    assert_eq!(
        sim.stats()
            .endpoint(Endpoint::DepartmentListSub)
            .qps_rejected,
        1
    );
    sim.set_faults(Faults::default()).unwrap();

    let gone = raw(
        &base,
        Endpoint::DepartmentListSub,
        &token,
        json!({"dept_id": 999}),
    )
    .await;
    assert_eq!(gone["errcode"], 60003);
    let dept = raw(
        &base,
        Endpoint::DepartmentGet,
        &token,
        json!({"dept_id": 1}),
    )
    .await;
    assert_eq!(dept["result"]["name"], "模拟科技有限公司");
    assert_eq!(dept["result"]["member_count"], 150);
    let page = raw(
        &base,
        Endpoint::UserList,
        &token,
        json!({"dept_id": child, "cursor": 0, "size": 1}),
    )
    .await;
    assert_eq!(page["errcode"], 0, "{page}");
    let bad_size = raw(
        &base,
        Endpoint::UserList,
        &token,
        json!({"dept_id": 1, "cursor": 0, "size": 101}),
    )
    .await;
    assert_eq!(bad_size["errcode"], 40035);
    let simple = raw(
        &base,
        Endpoint::UserListSimple,
        &token,
        json!({"dept_id": 1, "cursor": 0, "size": 100}),
    )
    .await;
    let first = &simple["result"]["list"][0];
    assert!(first["userid"].is_string() && first["name"].is_string());
    assert!(first.get("email").is_none());
    let userid = first["userid"].as_str().unwrap();
    let detail = raw(&base, Endpoint::UserGet, &token, json!({"userid": userid})).await;
    assert_eq!(detail["result"]["userid"], userid);
    let missing = raw(&base, Endpoint::UserGet, &token, json!({"userid": "x"})).await;
    assert_eq!(missing["errcode"], 33012);
    let count = raw(
        &base,
        Endpoint::UserCount,
        &token,
        json!({"only_active": false}),
    )
    .await;
    assert_eq!(count["result"]["count"], 150);

    sim.invalidate_token();
    let revoked = raw(&base, Endpoint::UserCount, &token, json!({})).await;
    assert_eq!(revoked["sub_code"], "40014");

    sim.ban_ip_for(Duration::from_secs(5), BanStyle::Html);
    let page = http.get(format!("{base}/gettoken")).send().await.unwrap();
    assert!(page.text().await.unwrap().starts_with("<!DOCTYPE html>"));
}

#[tokio::test]
async fn check_against_the_simulator_passes_and_sees_mobile_and_email() {
    let sim = start_simulator(org_config(200, 10)).await;
    let client = Client::new(fast_config(&sim.base_url())).unwrap();
    let report = client.check(&sim.credentials()).await;
    assert!(report.can_sync(), "{}", report.render());
    let fields = report.fields.clone().unwrap();
    assert!(fields.mobile_returned() && fields.email_returned());
    assert!(report.render().contains("result: OK"));

    let wrong = client.check(&creds("sim-app-key", "not-the-secret")).await;
    assert!(!wrong.can_sync());
    assert!(wrong.render().contains("40089"), "{}", wrong.render());
}

#[tokio::test]
async fn an_ip_ban_pauses_the_fetch_and_it_then_completes() {
    let sim = start_simulator(org_config(100, 8)).await;
    // The next two calls, however late they come (a time span could pass before the first).
    sim.ban_ip_next_calls(2, BanStyle::Json);
    let client = Client::new(ClientConfig {
        ip_ban_pause: Duration::from_millis(400),
        ..fast_config(&sim.base_url())
    })
    .unwrap();
    let started = Instant::now();
    let dir = client.fetch_directory(&sim.credentials()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_directory_matches(&dir, &sim.org());
    assert!(sim.stats().endpoint(Endpoint::GetToken).ip_banned >= 1);
}

#[tokio::test]
async fn run_simulate_serves_until_shutdown() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = SimulateArgs {
        users: 30,
        departments: 4,
        max_depth: 2,
        seed: 9,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        app_key: "demo-key".into(),
        app_secret: "demo-secret".into(),
        latency_ms: 0,
        qps: Some(20),
        token_ttl: 7200,
        busy_rate: 0.0,
        bad_gateway_rate: 0.0,
        malformed_rate: 0.0,
        throttle_rate: 0.0,
        invalidate_token_every: None,
        busy_every: None,
        bad_gateway_every: None,
        malformed_every: None,
        throttle_every: None,
        family_school: false,
        stream_ticket_ttl: Duration::from_secs(90),
        stream_redelivery: Duration::from_secs(30),
        stream_later_delay: Duration::from_secs(5),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_simulate(args, async {
        let _ = stopped.await;
    }));
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new(fast_config(&base)).unwrap();
    let mut dir = None;
    for _ in 0..50 {
        match client
            .fetch_directory(&creds("demo-key", "demo-secret"))
            .await
        {
            Ok(d) => {
                dir = Some(d);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(dir.unwrap().users.len(), 30);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(reqwest::get(format!("{base}/_sim/stats")).await.is_err());
}

#[tokio::test]
async fn scheduled_faults_are_served_at_every_nth_call_whatever_the_timing() {
    let sim = start_simulator(SimulatorConfig {
        busy_every: Some(3),
        ..org_config(10, 2)
    })
    .await;
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let token_errcode = || async {
        let answer: Value = http
            .get(format!(
                "{base}/gettoken?appkey=sim-app-key&appsecret=sim-app-secret"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        answer
            .get("errcode")
            .and_then(Value::as_i64)
            .unwrap_or(1111)
    };
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(token_errcode().await);
    }
    assert_eq!(codes, [0, 0, -1, 0, 0, -1, 0]);

    // New settings start the count over; the IP ban by calls comes first, counted apart.
    let (status, body) = {
        let r = http
            .put(format!("{base}/_sim/faults"))
            .json(&json!({"busy_every": 2}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    let r = http
        .post(format!("{base}/_sim/ip-ban"))
        .json(&json!({"calls": 2, "style": "json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(token_errcode().await);
    }
    assert_eq!(codes, [1111, 1111, 0, -1, 0, -1]);
    let stats = sim.stats().endpoint(Endpoint::GetToken);
    assert_eq!((stats.injected_busy, stats.ip_banned), (4, 2));

    let r = http
        .put(format!("{base}/_sim/faults"))
        .json(&json!({"throttle_every": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "a schedule of 0 is refused");
}
