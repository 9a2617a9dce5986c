#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A DingTalk stand-in that never stops answering (empty pages that claim more, endless pages,
//! a department tree that grows at every listing, an endless body, a call that never returns)
//! and one that lies about parents, through whole runs on every engine: each hostile answer
//! ends the run `failed` or `partial` with a message naming the bound, nobody is forbidden, and
//! the run history records the calls the stand-in counted. Also the root group's display name,
//! read from DingTalk's `department/get`, with the simulator.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::pipeline::{ORG, add_syncer, apply, context, count, sync_settings};
use common::{TestDb, eventually, on_every_engine};
use serde_json::{Value, json};
use syncerd::db::{self, Db, RunStatus, SyncerRow};
use syncerd::dingtalk::{CallCounter, Client, ClientConfig, Credentials, Endpoint};
use syncerd::pipeline::{RunOptions, RunReport, run_once};
use syncerd::secret::Secret;
use syncerd::simulator::{Simulator, SimulatorConfig};

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Root with users u1, u2 and department 10 with u3.
    Clean,
    /// The root's member listing: `has_more` with empty pages, forever.
    EmptyPages,
    /// The root's member listing: one user and `has_more` with a new cursor, forever.
    EndlessPages,
    /// Every `listsub` shows a new child department.
    EndlessTree,
    /// The root's member listing: a body that never ends.
    EndlessBody,
    /// Department 10's member listing never answers.
    Hang,
    /// Departments 10 and 20 claim each other as parent.
    LyingParents,
}

struct Stand {
    mode: Mutex<Mode>,
    /// Every request that reached a DingTalk path.
    calls: AtomicU64,
    next_dept: AtomicI64,
    hanging: AtomicBool,
}

type Shared = Arc<Stand>;

const ROOT_NAME: &str = "桩科技";

fn ok(result: Value) -> Response {
    axum::Json(json!({"errcode": 0, "errmsg": "ok", "result": result})).into_response()
}

fn user(id: &str, depts: &[i64]) -> Value {
    json!({"userid": id, "unionid": format!("union-{id}"), "job_number": format!("J-{id}"),
           "name": format!("User {id}"), "email": format!("{id}@example.com"),
           "dept_id_list": depts, "active": true})
}

async fn get_token(State(s): State<Shared>) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"errcode": 0, "access_token": "stand-token", "expires_in": 7200}))
        .into_response()
}

async fn department_get(State(s): State<Shared>) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    ok(json!({"dept_id": 1, "name": ROOT_NAME}))
}

fn dept_id(body: &Bytes) -> (i64, i64) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    (
        v["dept_id"].as_i64().unwrap_or(1),
        v["cursor"].as_i64().unwrap_or(0),
    )
}

async fn listsub(State(s): State<Shared>, body: Bytes) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let (dept, _) = dept_id(&body);
    let mode = *s.mode.lock().unwrap();
    let children = match (mode, dept) {
        (Mode::EndlessTree, _) => {
            let id = s.next_dept.fetch_add(1, Ordering::SeqCst);
            json!([{"dept_id": id, "name": format!("D{id}"), "parent_id": dept}])
        }
        (Mode::LyingParents, 1) => json!([{"dept_id": 10, "name": "研发", "parent_id": 20}]),
        (Mode::LyingParents, 10) => json!([{"dept_id": 20, "name": "后端", "parent_id": 10}]),
        (Mode::LyingParents, _) => json!([{"dept_id": 1, "name": "root?", "parent_id": 20}]),
        (_, 1) => json!([{"dept_id": 10, "name": "研发", "parent_id": 1}]),
        _ => json!([]),
    };
    ok(children)
}

async fn user_list(State(s): State<Shared>, body: Bytes) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let (dept, cursor) = dept_id(&body);
    let mode = *s.mode.lock().unwrap();
    let last = |list: Value| ok(json!({"has_more": false, "list": list}));
    match (mode, dept) {
        (Mode::EmptyPages, 1) => {
            ok(json!({"has_more": true, "next_cursor": cursor + 100, "list": []}))
        }
        (Mode::EndlessPages, 1) => ok(json!({
            "has_more": true, "next_cursor": cursor + 100, "list": [user("u1", &[1])]
        })),
        (Mode::EndlessBody, 1) => {
            let head = Bytes::from_static(br#"{"errcode":0,"errmsg":"ok","result":{"list":["#);
            let filler = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = futures_util::stream::once(async move { head })
                .chain(futures_util::stream::repeat(filler))
                .map(Ok::<_, std::io::Error>);
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(chunks),
            )
                .into_response()
        }
        (Mode::Hang, 10) => {
            s.hanging.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
            unreachable!()
        }
        (_, 1) => last(json!([user("u1", &[1]), user("u2", &[1])])),
        (_, 10) => last(json!([user("u3", &[10])])),
        _ => last(json!([])),
    }
}

use futures_util::StreamExt as _;

struct StandIn {
    shared: Shared,
    base: String,
    _server: tokio::task::JoinHandle<()>,
}

impl StandIn {
    async fn start() -> StandIn {
        let shared = Arc::new(Stand {
            mode: Mutex::new(Mode::Clean),
            calls: AtomicU64::new(0),
            next_dept: AtomicI64::new(100),
            hanging: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/gettoken", get(get_token))
            .route(Endpoint::DepartmentGet.path(), post(department_get))
            .route(Endpoint::DepartmentListSub.path(), post(listsub))
            .route(Endpoint::UserList.path(), post(user_list))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StandIn {
            shared,
            base,
            _server: server,
        }
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.calls.store(0, Ordering::SeqCst);
        self.shared.hanging.store(false, Ordering::SeqCst);
    }

    fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

/// Small bounds, so that each hostile answer meets its bound within a second.
fn config(base: &str) -> ClientConfig {
    ClientConfig {
        api_base: base.to_owned(),
        open_api_base: base.to_owned(),
        max_leave_record_pages: 20,
        qps_per_api: 1_000,
        max_concurrency: 4,
        // Longer than any fetch here: only `fetch_timeout` may end the hung call.
        request_timeout: Duration::from_secs(60),
        max_attempts: 2,
        ip_ban_pause: Duration::from_millis(50),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        max_response_bytes: 1024 * 1024,
        max_pages_per_department: 20,
        max_departments: 40,
        fetch_timeout: Duration::from_secs(60),
    }
}

fn creds() -> Credentials {
    Credentials {
        app_key: "dingappkey-test".to_owned(),
        app_secret: Secret::new(common::pipeline::SECRET),
    }
}

async fn run_with(
    db: &Db,
    syncer: &SyncerRow,
    config: ClientConfig,
    opts: RunOptions,
) -> RunReport {
    let ctx = context(db, sync_settings(50));
    let client = Client::new(config).unwrap();
    let counter = opts.api_calls.clone();
    let credentials = creds();
    let fetch = client.fetch_directory_counted(&credentials, None, counter);
    // A bound that fails to hold must fail the test, not hang it.
    tokio::time::timeout(
        Duration::from_secs(120),
        run_once(&ctx, syncer, fetch, opts),
    )
    .await
    .expect("the run ended")
}

async fn forbidden(t: &TestDb, db: &Db) -> i64 {
    count(
        t,
        db,
        &format!(
            "SELECT COUNT(*) FROM {} WHERE owner = '{ORG}' AND is_forbidden = {}",
            t.quote("user"),
            if t.backend() == sea_orm::DbBackend::Postgres {
                "true"
            } else {
                "1"
            }
        ),
    )
    .await
}

async fn user_count(t: &TestDb, db: &Db) -> i64 {
    count(
        t,
        db,
        &format!(
            "SELECT COUNT(*) FROM {} WHERE owner = '{ORG}'",
            t.quote("user")
        ),
    )
    .await
}

/// A database with the three users of the clean stand-in imported.
async fn imported(t: &TestDb, stand: &StandIn) -> (Db, SyncerRow) {
    let db = t.migrated().await;
    let syncer = add_syncer(&db).await;
    stand.set(Mode::Clean);
    let first = run_with(&db, &syncer, config(&stand.base), apply()).await;
    assert_eq!(
        first.status,
        RunStatus::Succeeded,
        "{}",
        first.render_text()
    );
    assert_eq!(first.counts.created, 3, "{}", t.label());
    assert_eq!(forbidden(t, &db).await, 0, "{}", t.label());
    (db, syncer)
}

fn all_messages(report: &RunReport) -> String {
    let mut text = report.message.clone().unwrap_or_default();
    for e in &report.errors {
        text.push('\n');
        text.push_str(&e.message);
    }
    text
}

/// Runs `mode` after a clean import and checks what every hostile run must leave: the expected
/// status, `needle` in its messages, the history row, nobody forbidden, nobody lost, and the
/// calls the stand-in counted.
async fn hostile_run(
    t: &TestDb,
    stand: &StandIn,
    mode: Mode,
    config: ClientConfig,
    status: RunStatus,
    needle: &str,
) {
    let (db, syncer) = imported(t, stand).await;
    stand.set(mode);
    let report = run_with(&db, &syncer, config, apply()).await;
    let served = stand.calls();
    let label = format!("{} {mode:?}", t.label());
    assert_eq!(report.status, status, "{label}: {}", report.render_text());
    let text = all_messages(&report);
    assert!(text.contains(needle), "{label}: `{needle}` not in: {text}");
    assert_eq!(report.counts.forbidden, 0, "{label}");
    assert_eq!(forbidden(t, &db).await, 0, "{label}");
    assert_eq!(user_count(t, &db).await, 3, "{label}");
    assert!(served > 2, "{label}: {served} calls");
    let row = db::get_run(&db, report.run_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, status, "{label}");
    // Every call the stand-in answered (or holds) was sent by this fetch and is recorded.
    assert_eq!(report.api_calls, served, "{label}");
    assert_eq!(row.api_calls, served, "{label}");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pages_that_claim_more_end_the_listing_and_the_run_is_partial() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        hostile_run(
            t,
            &stand,
            Mode::EmptyPages,
            config(&stand.base),
            RunStatus::Partial,
            "empty page",
        )
        .await;
        // One empty page was enough: token, root name, 2 listsub, 2 member pages.
        assert_eq!(stand.calls(), 6, "{}", t.label());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_listing_that_never_ends_stops_at_max_pages_and_the_run_is_partial() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        hostile_run(
            t,
            &stand,
            Mode::EndlessPages,
            config(&stand.base),
            RunStatus::Partial,
            "dingtalk.max_pages_per_department",
        )
        .await;
        // Token, root name, 2 listsub, 20 root pages, 1 page of department 10.
        assert_eq!(stand.calls(), 25, "{}", t.label());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_that_grows_at_every_listing_fails_the_run_at_max_departments() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        // One call at a time: when the walk fails, no call is still on its way to the stand-in.
        let config = ClientConfig {
            max_concurrency: 1,
            ..config(&stand.base)
        };
        hostile_run(
            t,
            &stand,
            Mode::EndlessTree,
            config,
            RunStatus::Failed,
            "dingtalk.max_departments",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_ends_is_cut_at_max_response_bytes_and_fails_the_run() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        // The body is endless: only a cap enforced while reading it can end this run.
        let config = ClientConfig {
            max_concurrency: 1,
            ..config(&stand.base)
        };
        hostile_run(
            t,
            &stand,
            Mode::EndlessBody,
            config,
            RunStatus::Failed,
            "dingtalk.max_response_bytes",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_past_its_deadline_fails_and_records_every_call_it_made() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        let config = ClientConfig {
            fetch_timeout: Duration::from_millis(1_500),
            ..config(&stand.base)
        };
        hostile_run(
            t,
            &stand,
            Mode::Hang,
            config,
            RunStatus::Failed,
            "dingtalk.fetch_timeout",
        )
        .await;
        assert!(stand.shared.hanging.load(Ordering::SeqCst));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_during_the_fetch_records_the_calls_it_made() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        let (db, syncer) = imported(t, &stand).await;
        stand.set(Mode::Hang);
        let opts = apply();
        let cancel = opts.cancel.clone();
        let counter: CallCounter = opts.api_calls.clone();
        let run = run_with(&db, &syncer, config(&stand.base), opts);
        let stop = async {
            // Every other call has been answered once department 10's listing hangs... or is
            // about to be: wait until the fetch has sent as many calls as the stand-in counted.
            eventually(Duration::from_secs(30), "the hung call", || async {
                stand.shared.hanging.load(Ordering::SeqCst)
                    && stand.calls() == 6
                    && counter.get() == 6
            })
            .await;
            cancel.cancel();
        };
        let (report, ()) = tokio::join!(run, stop);
        let label = t.label();
        assert_eq!(report.status, RunStatus::Interrupted, "{label}");
        assert_eq!(report.api_calls, 6, "{label}: {}", report.render_text());
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Interrupted, "{label}");
        assert_eq!(row.api_calls, stand.calls(), "{label}");
        assert_eq!(forbidden(t, &db).await, 0, "{label}");
        assert_eq!(user_count(t, &db).await, 3, "{label}");
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_come_from_the_walk_so_a_lying_payload_builds_no_cycle() {
    let stand = StandIn::start().await;
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let syncer = add_syncer(&db).await;
        stand.set(Mode::LyingParents);
        let report = run_with(&db, &syncer, config(&stand.base), apply()).await;
        assert_eq!(
            report.status,
            RunStatus::Succeeded,
            "{}: {}",
            t.label(),
            report.render_text()
        );
        let column = |c: &str| {
            format!(
                "SELECT {c} FROM {} WHERE owner = '{ORG}' ORDER BY name",
                t.quote("group")
            )
        };
        let names = t.query_texts(&db, &column("name")).await;
        let parents = t.query_texts(&db, &column("parent_id")).await;
        // 10 was listed by the root and 20 by 10, whatever their payloads said; the root's
        // listing by 20 is a repeat and ignored.
        assert_eq!(names, ["1", "10", "20"], "{}", t.label());
        assert_eq!(parents, [ORG, "1", "10"], "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_group_is_named_after_dingtalks_root_department_with_one_call_per_run() {
    const COMPANY: &str = "钉钉模拟集团";
    let sim = Simulator::start(
        SimulatorConfig {
            users: 30,
            departments: 4,
            company_name: COMPANY.to_owned(),
            app_key: "dingappkey-test".to_owned(),
            app_secret: Secret::new(common::pipeline::SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let syncer = add_syncer(&db).await;
        sim.reset_stats();
        let report = run_with(&db, &syncer, config(&sim.base_url()), apply()).await;
        assert_eq!(
            report.status,
            RunStatus::Succeeded,
            "{}",
            report.render_text()
        );
        let stats = sim.stats();
        assert_eq!(
            stats.endpoint(Endpoint::DepartmentGet).calls,
            1,
            "{}",
            t.label()
        );
        assert_eq!(report.api_calls, stats.total_calls(), "{}", t.label());
        assert_eq!(
            report.api_calls,
            sim.org().minimum_fetch_calls(100),
            "{}",
            t.label()
        );
        let names = t
            .query_texts(
                &db,
                &format!(
                    "SELECT display_name FROM {} WHERE owner = '{ORG}' AND name = '1'",
                    t.quote("group")
                ),
            )
            .await;
        assert_eq!(names, vec![COMPANY.to_owned()], "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}
