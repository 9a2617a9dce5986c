#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Notices (`[notify]`) from the real `syncerd run` against the simulator, received by a real
//! HTTP server in the test: a failing syncer is announced, its recovery too (also by a daemon
//! restarted in between), a webhook that hangs or fails holds up no run and is tried once
//! more, a DingTalk robot gets signed markdown, and the webhook's token never reaches the log.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use common::pipeline::{ORG, SECRET};
use common::process::Syncerd;
use common::{TestDb, eventually, on_every_engine, runs_of};
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};
use syncerd::db::{self, Db, NewSyncer, RunStatus};
use syncerd::secret::Secret;
use syncerd::simulator::{Faults, Simulator, SimulatorConfig, SimulatorHandle};

const SYNCER: &str = "dt";
const WITHIN: Duration = Duration::from_secs(30);
/// In the webhook URL's path and query: neither may reach the daemon's log.
const PATH_TOKEN: &str = "Path-Tok-5150";
const QUERY_TOKEN: &str = "Query-Tok-8086";
const ROBOT_SECRET: &str = "SEC-robot-sign-0123456789abcdef";

/// How the test's webhook answers one POST.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// 200 with a DingTalk robot's `{"errcode":0}`, which a JSON receiver ignores.
    Ok,
    /// HTTP 500.
    ServerError,
    /// No answer for a minute.
    Hang,
    /// 200 with DingTalk's refusal (a wrong signature).
    Refused,
}

/// One POST the webhook received.
#[derive(Debug, Clone)]
struct Received {
    uri: Uri,
    body: Value,
    at: DateTime<Utc>,
}

#[derive(Default)]
struct HookState {
    received: Vec<Received>,
    /// Answers for the next POSTs, in order; `Reply::Ok` after them.
    script: VecDeque<Reply>,
}

/// A webhook receiver on a loopback port.
struct Webhook {
    addr: SocketAddr,
    state: Arc<Mutex<HookState>>,
    server: tokio::task::JoinHandle<()>,
}

async fn receive(State(state): State<Arc<Mutex<HookState>>>, uri: Uri, body: Bytes) -> Response {
    let reply = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            uri,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Utc::now(),
        });
        state.script.pop_front().unwrap_or(Reply::Ok)
    };
    match reply {
        Reply::Ok => axum::Json(json!({"errcode": 0, "errmsg": "ok"})).into_response(),
        Reply::ServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        Reply::Refused => axum::Json(json!({
            "errcode": 310000,
            "errmsg": "sign not match, more: [https://open.dingtalk.com/document/robots]"
        }))
        .into_response(),
    }
}

impl Webhook {
    async fn start(script: &[Reply]) -> Webhook {
        let state = Arc::new(Mutex::new(HookState {
            script: script.iter().copied().collect(),
            ..HookState::default()
        }));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Webhook {
            addr,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path_and_query`.
    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    fn shown(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The first POST from index `from` on whose body satisfies `wanted`, and its index.
    async fn wait_for(&self, what: &str, from: usize, wanted: impl Fn(&Value) -> bool) -> usize {
        eventually(WITHIN, what, || async {
            self.received().iter().skip(from).any(|r| wanted(&r.body))
        })
        .await;
        let received = self.received();
        (from..received.len())
            .find(|&i| wanted(&received[i].body))
            .unwrap()
    }

    async fn wait_for_count(&self, n: usize) {
        eventually(WITHIN, &format!("{n} POSTs at the webhook"), || async {
            self.received().len() >= n
        })
        .await;
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn dingtalk() -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users: 12,
            departments: 3,
            seed: 16,
            app_key: "dingkey".into(),
            app_secret: Secret::new(SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// Every DingTalk call answers 502: each run fails.
fn broken() -> Faults {
    Faults {
        bad_gateway_every: Some(1),
        ..Faults::default()
    }
}

/// The syncer, run every second (the test daemons' `scheduler.min_interval`).
async fn add_syncer(db: &Db) {
    db::add_syncer(
        db,
        NewSyncer {
            name: SYNCER.into(),
            organization: ORG.into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new(SECRET),
            sync_interval: 1,
            enabled: true,
        },
    )
    .await
    .unwrap();
}

/// `syncerd run` against `sim`, with the notices' own log lines at debug.
fn daemon(db_url: &str, sim: &SimulatorHandle, args: &[&str], env: &[(&str, &str)]) -> Syncerd {
    let base = sim.base_url();
    let mut all = vec![
        ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
        ("SYNCERD_DINGTALK__QPS_PER_API", "200"),
        ("SYNCERD_LOG__LEVEL", "info,syncerd::daemon::notices=debug"),
    ];
    all.extend_from_slice(env);
    Syncerd::fast_daemon(db_url, args, &all)
}

async fn stop(mut daemon: Syncerd) -> String {
    daemon.signal("TERM");
    assert!(daemon.exit_within(WITHIN).await.success());
    daemon.stderr()
}

fn metric(text: &str, result: &str) -> u64 {
    let prefix = format!("syncerd_notices_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

fn run_id(body: &Value) -> i64 {
    body["run_id"].as_i64().unwrap()
}

fn assert_no_secret_in(log: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_syncer_is_announced_and_its_recovery_too_even_after_a_restart() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer(&db).await;
        let sim = dingtalk().await;
        sim.set_faults(broken()).unwrap();
        let hook = Webhook::start(&[]).await;
        let url = hook.url(&format!("/hooks/{PATH_TOKEN}?access_token={QUERY_TOKEN}"));
        let env = [("SYNCERD_NOTIFY__WEBHOOK_URL", url.as_str())];

        let first = daemon(t.url(), &sim, &[], &env);
        let at = hook
            .wait_for("a failed notice", 0, |b| b["kind"] == "failed")
            .await;
        let failed = hook.received()[at].clone();
        assert_eq!(failed.uri.path(), format!("/hooks/{PATH_TOKEN}"));
        let body = &failed.body;
        let row = db::get_run(&db, run_id(body)).await.unwrap().unwrap();
        assert_eq!(row.status, RunStatus::Failed, "{}", t.label());
        assert_eq!(body["syncer"], SYNCER);
        assert_eq!(body["organization"], ORG);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["trigger"], row.trigger.as_str());
        assert_eq!(body["counts"]["created"], 0);
        assert!(body["api_calls"].as_u64().unwrap() >= 1, "{body}");
        assert!(body["duration_ms"].is_u64(), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        let finished = DateTime::parse_from_rfc3339(body["finished_at"].as_str().unwrap()).unwrap();
        assert!(finished <= failed.at, "{body}");
        assert!(body["started_at"].as_str().unwrap() <= body["finished_at"].as_str().unwrap());
        assert!(!body["instance"].as_str().unwrap().is_empty());
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with("syncerd: syncer dt (acme) "), "{text}");
        let first_log = stop(first).await;

        // DingTalk works again; a new process sees the failure in the run history.
        sim.set_faults(Faults::default()).unwrap();
        let before = hook.received().len();
        let second = daemon(t.url(), &sim, &[], &env);
        let at = hook
            .wait_for("a recovered notice", before, |b| b["kind"] == "recovered")
            .await;
        let recovered = hook.received()[at].body.clone();
        assert_eq!(recovered["status"], "succeeded");
        assert_eq!(recovered["previous_status"], "failed");
        let recovered_run = run_id(&recovered);
        let row = db::get_run(&db, recovered_run).await.unwrap().unwrap();
        assert_eq!(row.status, RunStatus::Succeeded, "{}", t.label());
        assert!(
            hook.received()[before..at]
                .iter()
                .all(|r| r.body["kind"] != "recovered"),
            "one recovery notice"
        );

        // Two more good runs are no news; the next failure is, and is the next notice.
        eventually(WITHIN, "two more good runs", || async {
            runs_of(&db, SYNCER)
                .await
                .iter()
                .filter(|r| r.id > recovered_run && r.status == RunStatus::Succeeded)
                .count()
                >= 2
        })
        .await;
        sim.set_faults(broken()).unwrap();
        let next = hook
            .wait_for("a notice after the recovery", at + 1, |_| true)
            .await;
        assert_eq!(next, at + 1);
        let again = &hook.received()[next].body;
        assert_ne!(again["kind"], "recovered", "{again}");
        assert_eq!(again["previous_status"], "succeeded", "{again}");

        let metrics = second.metrics().await;
        assert!(metric(&metrics, "sent") >= 2, "{metrics}");
        assert_eq!(metric(&metrics, "failed"), 0, "{metrics}");
        let second_log = stop(second).await;
        for log in [&first_log, &second_log] {
            assert!(
                log.contains(&format!("went to {} (1 attempt(s))", hook.shown())),
                "{log}"
            );
            assert_no_secret_in(log, &[PATH_TOKEN, QUERY_TOKEN, SECRET]);
        }
        let bodies: Vec<String> = hook.received().iter().map(|r| r.body.to_string()).collect();
        assert_no_secret_in(&bodies.join("\n"), &[SECRET]);
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_hangs_or_fails_holds_up_no_run_and_is_tried_once_more() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add_syncer(&db).await;
    let sim = dingtalk().await;
    sim.set_faults(broken()).unwrap();
    // The first notice: its first POST hangs past notify.timeout, its second gets a 500.
    let hook = Webhook::start(&[Reply::Hang, Reply::ServerError]).await;
    let url = hook.url(&format!("/notify?token={QUERY_TOKEN}"));
    let env = [
        ("SYNCERD_NOTIFY__WEBHOOK_URL", url.as_str()),
        ("SYNCERD_NOTIFY__TIMEOUT", "2s"),
        ("SYNCERD_NOTIFY__RETRIES", "1"),
    ];
    let d = daemon(t.url(), &sim, &[], &env);
    hook.wait_for_count(3).await;
    let got = hook.received();
    let (hung, retried, next) = (&got[0], &got[1], &got[2]);
    assert_eq!(
        hung.body, retried.body,
        "the second POST is the same notice"
    );
    assert_ne!(
        run_id(&next.body),
        run_id(&hung.body),
        "no third attempt after the 500 (notify.retries = 1)"
    );
    // The timeout (2 s) and the pause before the retry (1 s) lie between the two attempts.
    // Measured here at arrival: the first POST's connection set-up may take longer than the
    // second's, so allow half a second of it.
    let gap = (retried.at - hung.at).to_std().unwrap();
    assert!(
        gap >= Duration::from_millis(2500) && gap < Duration::from_secs(10),
        "{gap:?}"
    );
    // The run ended before its notice went out, and later runs ended while it hung.
    let runs = runs_of(&db, SYNCER).await;
    let first = runs.iter().find(|r| r.id == run_id(&hung.body)).unwrap();
    assert!(first.finished_at.unwrap() <= hung.at, "{first:?}");
    let during = runs
        .iter()
        .filter(|r| r.id > first.id && r.finished_at.is_some_and(|f| f < retried.at))
        .count();
    assert!(during >= 1, "no run ended while the notice hung: {runs:?}");

    eventually(WITHIN, "the failed notice counted", || async {
        metric(&d.metrics().await, "failed") == 1
    })
    .await;
    let log = stop(d).await;
    assert!(
        log.contains(&format!(
            "did not reach {} (2 attempt(s)): it answered HTTP 500",
            hook.shown()
        )),
        "{log}"
    );
    assert_no_secret_in(&log, &[QUERY_TOKEN]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_daemon_gives_up_on_a_hanging_webhook_within_its_grace() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add_syncer(&db).await;
    let sim = dingtalk().await;
    sim.set_faults(broken()).unwrap();
    let hook = Webhook::start(&[Reply::Hang; 20]).await;
    let url = hook.url("/hook");
    // Unbounded, the hanging POST would hold the stop for 20 s; the grace allows a third of 3 s.
    let env = [
        ("SYNCERD_NOTIFY__WEBHOOK_URL", url.as_str()),
        ("SYNCERD_NOTIFY__TIMEOUT", "20s"),
        ("SYNCERD_NOTIFY__RETRIES", "0"),
        ("SYNCERD_SCHEDULER__SHUTDOWN_GRACE", "3s"),
    ];
    let mut d = daemon(t.url(), &sim, &[], &env);
    hook.wait_for_count(1).await;
    d.wait_for_log("schedule run 2 failed", WITHIN).await;
    let stopping = std::time::Instant::now();
    d.signal("TERM");
    assert!(d.exit_within(WITHIN).await.success());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    let log = d.stderr();
    assert!(
        log.contains("notice(s) could be sent") && log.contains("syncerd daemon stopped"),
        "{log}"
    );
    assert!(!log.contains("did not stop within"), "{log}");
    assert_eq!(hook.received().len(), 1, "one POST at a time");
    db.close().await.unwrap();
}

/// DingTalk's signature of a robot POST, computed here with the crates syncerd uses.
fn expected_sign(timestamp: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(ROBOT_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\n{ROBOT_SECRET}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_notices_turned_on_by_a_reload_are_signed_markdown() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add_syncer(&db).await;
    let sim = dingtalk().await;
    sim.set_faults(broken()).unwrap();
    // The first notice is refused (wrong signature, as DingTalk says it): not tried again.
    let hook = Webhook::start(&[Reply::Refused]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("syncerd.toml");
    std::fs::write(&config, "[scheduler]\nreload_interval = \"200ms\"\n").unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let d = daemon(t.url(), &sim, &["--config", &config_arg], &[]);

    eventually(WITHIN, "a failed run", || async {
        runs_of(&db, SYNCER)
            .await
            .iter()
            .any(|r| r.status == RunStatus::Failed)
    })
    .await;
    assert!(hook.received().is_empty(), "no webhook: no notice");

    let url = hook.url(&format!("/robot/send?access_token={QUERY_TOKEN}"));
    std::fs::write(
        &config,
        format!(
            "[scheduler]\nreload_interval = \"200ms\"\n[notify]\nwebhook_url = \"{url}\"\n\
             format = \"dingtalk\"\nsecret = \"{ROBOT_SECRET}\"\n"
        ),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_for_log(
        "configuration reloaded: notify.format json → dingtalk; notify.secret changed; \
         notify.webhook_url changed",
        WITHIN,
    )
    .await;
    hook.wait_for_count(2).await;

    let got = hook.received();
    for post in &got[..2] {
        let full = reqwest::Url::parse(&format!("http://x{}", post.uri)).unwrap();
        assert_eq!(full.path(), "/robot/send");
        let query: std::collections::HashMap<String, String> =
            full.query_pairs().into_owned().collect();
        assert_eq!(query["access_token"], QUERY_TOKEN);
        let timestamp = &query["timestamp"];
        let sent_at = timestamp.parse::<i64>().unwrap();
        assert!(
            (post.at.timestamp_millis() - sent_at).abs() < 60_000,
            "{timestamp}"
        );
        assert_eq!(query["sign"], expected_sign(timestamp), "{}", post.uri);
        let body = &post.body;
        assert_eq!(body["msgtype"], "markdown", "{body}");
        assert_eq!(body["markdown"]["title"], "syncerd: dt failed");
        let text = body["markdown"]["text"].as_str().unwrap();
        assert!(
            text.starts_with("#### syncerd: syncer dt failed\n\n- organization: acme\n"),
            "{text}"
        );
        assert!(text.contains(" failed\n"), "{text}");
    }
    assert_ne!(
        got[0].body, got[1].body,
        "the refused notice was not sent again"
    );

    eventually(
        WITHIN,
        "the refused and the sent notice counted",
        || async {
            let metrics = d.metrics().await;
            metric(&metrics, "failed") == 1 && metric(&metrics, "sent") >= 1
        },
    )
    .await;
    let log = stop(d).await;
    assert!(
        log.contains("the robot refused it: errcode 310000, sign not match"),
        "{log}"
    );
    assert!(
        log.contains(&format!("went to {} (1 attempt(s))", hook.shown())),
        "{log}"
    );
    assert_no_secret_in(&log, &[QUERY_TOKEN, ROBOT_SECRET, SECRET]);
    db.close().await.unwrap();
}
