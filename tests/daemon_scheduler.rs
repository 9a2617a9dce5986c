#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The library daemon in-process on every engine, driven through plain SQL on the `syncer`
//! table and its HTTP endpoints, with a recording stand-in for the pipeline.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{TestDb, eventually, on_every_engine, runs_of};
use futures_util::FutureExt as _;
use sea_orm::ConnectionTrait as _;
use syncerd::config::Settings;
use syncerd::daemon::{
    self, Control, ControlSource, DaemonExit, DaemonOptions, RunFn, RunRequest, RunSummary,
};
use syncerd::db::leases::{
    acquire_lease, epoch_millis, get_lease, lease_expiry, release_lease, renew_lease,
};
use syncerd::db::{
    self, Db, NewRun, NewSyncer, RunCounts, RunMode, RunOutcome, RunStatus, RunTrigger,
};
use syncerd::secret::Secret;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TOKEN: &str = "adm-Tok-3141-5926-53";
const APP_SECRET: &str = "Daemon-S3cret-77";

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        // No log directory, so no file writer whose guard would need to outlive this call.
        let _ = syncerd::telemetry::init(&syncerd::config::LogSettings {
            level: "debug".into(),
            ..Default::default()
        });
    }
}

/// Per-syncer and process-wide concurrency of the runs the daemon started.
#[derive(Default)]
struct Recorder {
    per_syncer: Mutex<HashMap<String, (usize, usize, usize)>>,
    global: Mutex<(usize, usize)>,
}

impl Recorder {
    fn start(&self, name: &str) {
        let mut m = self.per_syncer.lock().unwrap();
        let e = m.entry(name.to_owned()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
        e.2 += 1;
        let mut g = self.global.lock().unwrap();
        g.0 += 1;
        g.1 = g.1.max(g.0);
    }
    fn end(&self, name: &str) {
        if let Some(e) = self.per_syncer.lock().unwrap().get_mut(name) {
            e.0 -= 1;
        }
        self.global.lock().unwrap().0 -= 1;
    }
    /// (most at once, runs started) for `name`.
    fn of(&self, name: &str) -> (usize, usize) {
        let m = self.per_syncer.lock().unwrap();
        m.get(name).map(|e| (e.1, e.2)).unwrap_or_default()
    }
    fn global_max(&self) -> usize {
        self.global.lock().unwrap().1
    }
}

/// A stand-in for the pipeline, to exercise the daemon alone: it records a run lasting `delay`
/// (stopping early, as `interrupted`, when its token is cancelled) and touches no user.
fn placeholder_run_fn(delay: Duration) -> RunFn {
    Arc::new(move |request: RunRequest| placeholder_run(request, delay).boxed())
}

async fn placeholder_run(request: RunRequest, delay: Duration) -> RunSummary {
    let started = Instant::now();
    let RunRequest {
        syncer,
        trigger,
        cancel,
        instance,
        db,
        ..
    } = request;
    let new = NewRun {
        syncer_name: syncer.name.clone(),
        organization: syncer.organization.clone(),
        trigger,
        mode: RunMode::Apply,
        started_at: Utc::now(),
        instance,
    };
    let id = match db::insert_run(&db, new).await {
        Ok(id) => id,
        Err(e) => {
            return RunSummary::bare(RunStatus::Failed, started.elapsed(), Some(e.to_string()));
        }
    };
    let (status, message) = tokio::select! {
        _ = tokio::time::sleep(delay) => (RunStatus::Succeeded, "stand-in run"),
        _ = cancel.cancelled() => (RunStatus::Interrupted, "stopped before the end"),
    };
    let outcome = RunOutcome {
        status,
        counts: RunCounts::default(),
        api_calls: 0,
        error_summary: Some(message.to_owned()),
        details: None,
        finished_at: Utc::now(),
        duration: started.elapsed(),
    };
    let status = match db::finish_run(&db, id, outcome).await {
        Ok(()) => status,
        Err(_) => RunStatus::Failed,
    };
    RunSummary {
        run_id: Some(id),
        ..RunSummary::bare(status, started.elapsed(), Some(message.to_owned()))
    }
}

/// The stand-in pipeline (records a run lasting `delay`), watched by `recorder`.
fn recorded(recorder: &Arc<Recorder>, delay: Duration) -> RunFn {
    let inner = placeholder_run_fn(delay);
    let recorder = recorder.clone();
    Arc::new(move |request: RunRequest| {
        let inner = inner.clone();
        let recorder = recorder.clone();
        async move {
            let name = request.syncer.name.clone();
            recorder.start(&name);
            let summary = inner(request).await;
            recorder.end(&name);
            summary
        }
        .boxed()
    })
}

/// A pipeline that records its run as `running` and then ignores cancellation.
fn stubborn() -> RunFn {
    Arc::new(|request: RunRequest| {
        async move {
            let id = db::insert_run(
                &request.db,
                NewRun {
                    syncer_name: request.syncer.name.clone(),
                    organization: request.syncer.organization.clone(),
                    trigger: request.trigger,
                    mode: RunMode::Apply,
                    started_at: Utc::now(),
                    instance: request.instance.clone(),
                },
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            RunSummary {
                run_id: Some(id),
                ..RunSummary::bare(RunStatus::Succeeded, Duration::from_secs(60), None)
            }
        }
        .boxed()
    })
}

struct TestDaemon {
    addr: SocketAddr,
    tx: mpsc::Sender<Control>,
    handle: JoinHandle<DaemonExit>,
    instance: String,
}

impl TestDaemon {
    async fn start(t: &TestDb, run_fn: RunFn, tweak: impl FnOnce(&mut Settings)) -> TestDaemon {
        init_logs();
        static N: AtomicU64 = AtomicU64::new(0);
        let mut settings = Settings::default();
        settings.database = t.settings();
        settings.scheduler.reload_interval = Duration::from_millis(200);
        settings.scheduler.min_interval = Duration::from_secs(1);
        settings.scheduler.shutdown_grace = Duration::from_secs(2);
        settings.http.listen = "127.0.0.1:0".into();
        settings.http.admin_token = Some(Secret::new(TOKEN));
        // These tests count the runs of the schedule and the admin API alone.
        settings.stream.enabled = false;
        tweak(&mut settings);
        let instance = format!(
            "testhost:{}:{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let bound = daemon::bind(DaemonOptions {
            settings,
            run_fn,
            tools: None,
            config_loader: None,
            instance: instance.clone(),
        })
        .await
        .unwrap();
        let addr = bound.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let handle = tokio::spawn(bound.run(ControlSource::Channel(rx)));
        TestDaemon {
            addr,
            tx,
            handle,
            instance,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new().get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new().post(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn metric(&self, line_prefix: &str) -> f64 {
        let (_, text) = self.get("/metrics", None).await;
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_default()
    }

    async fn wait_ready(&self) {
        eventually(
            Duration::from_secs(10),
            "the daemon to be ready",
            || async { self.get("/readyz", None).await.0 == 200 },
        )
        .await;
    }

    async fn stop(self) -> (DaemonExit, Duration) {
        let started = Instant::now();
        self.tx.send(Control::Shutdown("test")).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the daemon stops")
            .unwrap();
        (exit, started.elapsed())
    }
}

async fn add(db: &Db, name: &str, interval: i32, enabled: bool) {
    db::add_syncer(
        db,
        NewSyncer {
            name: name.into(),
            organization: "acme".into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new(APP_SECRET),
            sync_interval: interval,
            enabled,
        },
    )
    .await
    .unwrap();
}

async fn set(t: &TestDb, db: &Db, name: &str, assignment: &str) {
    t.execute(
        db,
        &format!("UPDATE syncer SET {assignment} WHERE name = '{name}'"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_and_disabling_by_sql_starts_and_stops_runs_without_restart() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "flip", 1, false).await;
        let recorder = Arc::new(Recorder::default());
        let d = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(100)), |_| {}).await;
        d.wait_ready().await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            runs_of(&db, "flip").await.is_empty(),
            "{}: disabled ran",
            t.label()
        );

        set(t, &db, "flip", "is_enabled = TRUE").await;
        let enabled_at = Instant::now();
        eventually(Duration::from_secs(6), "a run after enabling", || async {
            !runs_of(&db, "flip").await.is_empty()
        })
        .await;
        let first_after = enabled_at.elapsed();
        assert!(
            first_after < Duration::from_millis(5500),
            "{}: first run {first_after:?} after enabling",
            t.label()
        );

        set(t, &db, "flip", "is_enabled = FALSE").await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let settled = runs_of(&db, "flip").await.len();
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let later = runs_of(&db, "flip").await;
        assert_eq!(later.len(), settled, "{}: ran while disabled", t.label());
        assert!(later.iter().all(|r| r.status == RunStatus::Succeeded));
        assert!(later.iter().all(|r| r.instance == d.instance));

        let (exit, _) = d.stop().await;
        assert_eq!(exit, DaemonExit::Graceful);
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_change_reschedules_the_job() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "tempo", 1, true).await;
        let recorder = Arc::new(Recorder::default());
        let d = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(50)), |_| {}).await;
        eventually(Duration::from_secs(6), "runs every second", || async {
            runs_of(&db, "tempo").await.len() >= 2
        })
        .await;

        set(t, &db, "tempo", "sync_interval = 3600").await;
        eventually(Duration::from_secs(3), "the new interval", || async {
            let (_, body) = d.get("/api/v1/syncers", Some(TOKEN)).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            let s = &json["syncers"][0];
            let next = s["next_run"].as_str().unwrap_or_default();
            let far = chrono::DateTime::parse_from_rfc3339(next)
                .map(|n| n.timestamp() - Utc::now().timestamp() > 3000)
                .unwrap_or(false);
            s["interval_seconds"] == 3600 && far
        })
        .await;
        // An in-flight run may still finish; after that, nothing for a while.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let settled = runs_of(&db, "tempo").await.len();
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(runs_of(&db, "tempo").await.len(), settled, "{}", t.label());

        d.stop().await;
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_row_is_reported_once_while_a_valid_one_keeps_syncing() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "good", 1, true).await;
        add(&db, "bad", 1, true).await;
        set(t, &db, "bad", &format!("{} = ''", t.quote("user"))).await;
        let recorder = Arc::new(Recorder::default());
        let d = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(50)), |_| {}).await;

        eventually(Duration::from_secs(6), "the good syncer to run", || async {
            runs_of(&db, "good").await.len() >= 2
        })
        .await;
        // ≥ 10 reconcile passes have seen the bad row by now.
        let error_text = || async {
            db::get_syncer(&db, "bad")
                .await
                .unwrap()
                .unwrap()
                .error_text
        };
        let text = error_text().await;
        assert_eq!(text.lines().count(), 1, "{}: {text}", t.label());
        assert!(
            text.contains("syncerd skips this syncer") && text.contains("App Key"),
            "{text}"
        );
        assert!(!text.contains(APP_SECRET));
        assert!(runs_of(&db, "bad").await.is_empty());
        assert_eq!(d.metric("syncerd_syncers_invalid ").await, 1.0);
        let (_, body) = d.get("/api/v1/syncers", Some(TOKEN)).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let bad = json["syncers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "bad")
            .unwrap();
        assert_eq!(bad["valid"], false);
        assert!(bad["invalid_reason"].as_str().unwrap().contains("App Key"));
        assert!(!body.contains(APP_SECRET), "{body}");
        // A manual run of an invalid syncer is refused with the reason.
        let (status, body) = d.post("/api/v1/syncers/bad/run", Some(TOKEN)).await;
        assert_eq!(status, 422, "{body}");

        // Another problem is another line; fixing the row brings it back.
        set(t, &db, "bad", "table_columns = '{broken'").await;
        set(t, &db, "bad", &format!("{} = 'dingkey'", t.quote("user"))).await;
        eventually(Duration::from_secs(3), "the second report", || async {
            error_text().await.lines().count() == 2
        })
        .await;
        assert!(error_text().await.contains("table_columns"));
        set(t, &db, "bad", "table_columns = ''").await;
        eventually(
            Duration::from_secs(6),
            "the fixed syncer to run",
            || async { !runs_of(&db, "bad").await.is_empty() },
        )
        .await;
        assert_eq!(error_text().await.lines().count(), 2);

        d.stop().await;
        db.close().await.unwrap();
    })
    .await;
}

/// The syncer named `name` in the admin API's list.
async fn api_syncer(d: &TestDaemon, name: &str) -> serde_json::Value {
    let (status, body) = d.get("/api/v1/syncers", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["syncers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_negative_intervals_are_reported_never_run_and_picked_up_once_fixed() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "steady", 1, true).await;
        // syncerd's own `syncer add` refuses such intervals; Casdoor's UI and plain SQL do not.
        for (name, interval) in [("zero", 0), ("negative", -5)] {
            add(&db, name, 60, true).await;
            set(t, &db, name, &format!("sync_interval = {interval}")).await;
        }
        let recorder = Arc::new(Recorder::default());
        let d = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(50)), |_| {}).await;
        eventually(
            Duration::from_secs(6),
            "the valid syncer to run",
            || async { runs_of(&db, "steady").await.len() >= 2 },
        )
        .await;

        // ≥ 5 reconcile passes have seen the bad rows by now: each reported once, where Casdoor's
        // syncer page shows it, and never run.
        let error_text = |name: &'static str| {
            let db = db.clone();
            async move { db::get_syncer(&db, name).await.unwrap().unwrap().error_text }
        };
        for (name, interval) in [("zero", 0), ("negative", -5)] {
            let text = error_text(name).await;
            assert_eq!(text.lines().count(), 1, "{}: {name}: {text}", t.label());
            // Casdoor's line format: `[<RFC 3339 time>] <message>`.
            assert!(
                text.starts_with('[')
                    && text.trim_end().ends_with(&format!(
                        "] syncerd skips this syncer: sync_interval is {interval}; set a positive \
                         number of seconds"
                    )),
                "{}: {text}",
                t.label()
            );
            assert!(!text.contains(APP_SECRET));
            assert!(
                runs_of(&db, name).await.is_empty(),
                "{}: {name} ran",
                t.label()
            );
            assert_eq!(recorder.of(name), (0, 0), "{}: {name}", t.label());
            let api = api_syncer(&d, name).await;
            assert_eq!(api["valid"], false, "{api}");
            assert!(
                api["invalid_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("sync_interval is {interval}")),
                "{api}"
            );
            assert_eq!(api["next_run"], serde_json::Value::Null, "{api}");
            let (status, body) = d
                .post(&format!("/api/v1/syncers/{name}/run"), Some(TOKEN))
                .await;
            assert_eq!(status, 422, "{body}");
        }
        assert_eq!(d.metric("syncerd_syncers_invalid ").await, 2.0);
        assert_eq!(d.metric("syncerd_syncers_scheduled ").await, 1.0);

        let steady_before = runs_of(&db, "steady").await.len();
        // Fixed in the table, as a Save in Casdoor's UI writes it: picked up without a restart.
        set(t, &db, "zero", "sync_interval = 60").await;
        eventually(
            Duration::from_secs(6),
            "the fixed syncer to run",
            || async { !runs_of(&db, "zero").await.is_empty() },
        )
        .await;
        let api = api_syncer(&d, "zero").await;
        assert_eq!(api["valid"], true, "{api}");
        assert_eq!(api["interval_seconds"], 60, "{api}");
        assert_eq!(d.metric("syncerd_syncers_invalid ").await, 1.0);
        assert!(runs_of(&db, "negative").await.is_empty(), "{}", t.label());
        for name in ["zero", "negative"] {
            assert_eq!(error_text(name).await.lines().count(), 1, "{}", t.label());
        }
        eventually(
            Duration::from_secs(6),
            "the valid syncer to keep running",
            || async { runs_of(&db, "steady").await.len() > steady_before },
        )
        .await;

        let (exit, _) = d.stop().await;
        assert_eq!(exit, DaemonExit::Graceful);
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_run_is_never_overlapped_and_the_process_limit_holds() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let names = ["slow1", "slow2", "slow3"];
        for name in names {
            add(&db, name, 1, true).await;
        }
        let recorder = Arc::new(Recorder::default());
        let d = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(2500)), |s| {
            s.scheduler.max_concurrent_runs = 2;
        })
        .await;
        eventually(
            Duration::from_secs(10),
            "overlap skips and every syncer's turn",
            || async {
                d.metric("syncerd_skipped_ticks_total{syncer=\"slow1\",reason=\"overlap\"} ")
                    .await
                    >= 2.0
                    && names.iter().all(|n| recorder.of(n).1 >= 1)
            },
        )
        .await;
        for name in names {
            assert_eq!(recorder.of(name).0, 1, "{}: {name} overlapped", t.label());
        }
        assert!(recorder.global_max() <= 2, "{}", t.label());
        assert_eq!(
            recorder.global_max(),
            2,
            "{}: the limit was never reached",
            t.label()
        );

        let (exit, took) = d.stop().await;
        assert_eq!(exit, DaemonExit::Graceful);
        assert!(took < Duration::from_secs(2), "{took:?}");
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_ignore_shutdown_are_recorded_as_interrupted_after_the_grace() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "stubborn", 1, true).await;
        let d = TestDaemon::start(t, stubborn(), |s| {
            s.scheduler.shutdown_grace = Duration::from_millis(400);
        })
        .await;
        eventually(Duration::from_secs(6), "the run to start", || async {
            !runs_of(&db, "stubborn").await.is_empty()
        })
        .await;
        assert!(get_lease(&db, "stubborn").await.unwrap().is_some());
        let (exit, took) = d.stop().await;
        assert_eq!(exit, DaemonExit::Graceful);
        assert!(took < Duration::from_secs(3), "{took:?}");
        let rows = runs_of(&db, "stubborn").await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, RunStatus::Interrupted, "{}", t.label());
        assert!(
            rows[0]
                .error_summary
                .as_deref()
                .unwrap_or_default()
                .contains("shutdown grace"),
            "{:?}",
            rows[0].error_summary
        );
        assert_eq!(get_lease(&db, "stubborn").await.unwrap(), None);
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_rows_of_a_gone_process_are_recovered_but_live_ones_are_not() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "crashed", 3600, false).await;
        add(&db, "elsewhere", 3600, false).await;
        let long_ago = Utc::now() - chrono::Duration::minutes(10);
        let mut ids = HashMap::new();
        for (name, instance) in [
            ("crashed", "deadhost:1:aaa"),
            ("elsewhere", "livehost:2:bbb"),
        ] {
            let id = db::insert_run(
                &db,
                NewRun {
                    syncer_name: name.into(),
                    organization: "acme".into(),
                    trigger: RunTrigger::Schedule,
                    mode: RunMode::Apply,
                    started_at: long_ago,
                    instance: instance.into(),
                },
            )
            .await
            .unwrap();
            ids.insert(name, id);
        }
        // The crashed process's lease has expired; the other holder's is live.
        let now = epoch_millis();
        assert!(
            acquire_lease(
                &db,
                "crashed",
                "deadhost:1:aaa",
                now - 120_000,
                Duration::from_secs(60)
            )
            .await
            .unwrap()
        );
        assert!(
            acquire_lease(
                &db,
                "elsewhere",
                "livehost:2:bbb",
                now,
                Duration::from_secs(600)
            )
            .await
            .unwrap()
        );

        let d = TestDaemon::start(t, placeholder_run_fn(Duration::ZERO), |_| {}).await;
        d.wait_ready().await;
        let crashed = db::get_run(&db, ids["crashed"]).await.unwrap().unwrap();
        assert_eq!(crashed.status, RunStatus::Interrupted, "{}", t.label());
        assert!(crashed.finished_at.is_some());
        let live = db::get_run(&db, ids["elsewhere"]).await.unwrap().unwrap();
        assert_eq!(live.status, RunStatus::Running, "{}", t.label());
        d.stop().await;
        db.close().await.unwrap();
    })
    .await;
}

/// SQLite serves one writer at a time. A run writing batch after batch must let the lease
/// renewal of the same process in between: starved, the renewal failed after the busy timeout
/// (5 s) and a 100,000-user import lost its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewal_gets_between_back_to_back_sqlite_batches() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    let ttl = Duration::from_secs(60);
    assert!(
        acquire_lease(&db, "s", "a:1:x", epoch_millis(), ttl)
            .await
            .unwrap()
    );
    db.conn()
        .execute_unprepared("CREATE TABLE batch_rows (n INTEGER)")
        .await
        .unwrap();

    // Batches as apply writes them: the turn, BEGIN IMMEDIATE, rows, 50 ms of work, COMMIT,
    // and the next batch at once; for at most 8 s.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut batches = 0;
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(8) {
                let _turn = db.write_turn().await.unwrap();
                let txn = db.begin_write().await.unwrap();
                txn.execute_unprepared("INSERT INTO batch_rows VALUES (1)")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                txn.commit().await.unwrap();
                batches += 1;
            }
            (batches, stop.load(Ordering::SeqCst))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewed = renew_lease(&db, "s", "a:1:x", epoch_millis(), ttl).await;
    stop.store(true, Ordering::SeqCst);
    let (batches, stopped_by_us) = writer.await.unwrap();
    assert!(
        renewed.as_ref().is_ok_and(|held| *held),
        "the renewal failed behind the batches: {renewed:?}"
    );
    assert!(
        stopped_by_us && batches >= 3,
        "the renewal only went through once the batches ended ({batches} batches)"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_exclusive_renewable_and_expire() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let ttl = Duration::from_secs(10);
        let t0 = epoch_millis();
        assert!(acquire_lease(&db, "s", "a:1:x", t0, ttl).await.unwrap());
        // Neither another holder nor the holder itself takes a live lease.
        assert!(!acquire_lease(&db, "s", "b:2:y", t0 + 1, ttl).await.unwrap());
        assert!(!acquire_lease(&db, "s", "a:1:x", t0 + 2, ttl).await.unwrap());
        assert!(
            renew_lease(&db, "s", "a:1:x", t0 + 5_000, ttl)
                .await
                .unwrap()
        );
        assert!(
            !renew_lease(&db, "s", "b:2:y", t0 + 5_000, ttl)
                .await
                .unwrap()
        );
        // Not expired at t0 + 10 s thanks to the renewal; expired at its new expiry.
        assert!(
            !acquire_lease(&db, "s", "b:2:y", t0 + 10_000, ttl)
                .await
                .unwrap()
        );
        let renewed_until = lease_expiry(t0 + 5_000, ttl);
        assert!(
            acquire_lease(&db, "s", "b:2:y", renewed_until, ttl)
                .await
                .unwrap()
        );
        assert!(
            !renew_lease(&db, "s", "a:1:x", renewed_until + 1, ttl)
                .await
                .unwrap()
        );
        // Releasing someone else's lease does nothing; one's own frees it.
        release_lease(&db, "s", "a:1:x").await.unwrap();
        assert_eq!(get_lease(&db, "s").await.unwrap().unwrap().holder, "b:2:y");
        release_lease(&db, "s", "b:2:y").await.unwrap();
        assert!(
            acquire_lease(&db, "s", "a:1:x", renewed_until + 2, ttl)
                .await
                .unwrap()
        );

        // Contenders racing for a free lease: exactly one wins.
        let now = epoch_millis();
        let contenders = (0..6).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                acquire_lease(&db, "race", &format!("h:{i}:z"), now, ttl)
                    .await
                    .unwrap()
            })
        });
        let mut winners = 0;
        for c in contenders {
            winners += usize::from(c.await.unwrap());
        }
        assert_eq!(winners, 1, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_database_run_each_syncer_once_per_tick() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let names = ["r1", "r2", "r3"];
        for name in names {
            add(&db, name, 1, true).await;
        }
        let recorder = Arc::new(Recorder::default());
        let a = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(600)), |_| {}).await;
        let b = TestDaemon::start(t, recorded(&recorder, Duration::from_millis(600)), |_| {}).await;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let elapsed = started.elapsed().as_secs();
        let lease_skips = a
            .metric("syncerd_skipped_ticks_total{syncer=\"r1\",reason=\"lease\"} ")
            .await
            + b.metric("syncerd_skipped_ticks_total{syncer=\"r1\",reason=\"lease\"} ")
                .await;
        let (a_instance, b_instance) = (a.instance.clone(), b.instance.clone());
        a.stop().await;
        b.stop().await;

        for name in names {
            let (most, started_runs) = recorder.of(name);
            assert_eq!(most, 1, "{}: {name} ran twice at once", t.label());
            let rows = runs_of(&db, name).await;
            assert_eq!(rows.len(), started_runs);
            // One run per tick between both daemons, never one each.
            assert!(
                rows.len() as u64 <= elapsed + 2,
                "{}: {name} ran {} times in {elapsed} s",
                t.label(),
                rows.len()
            );
            assert!(
                rows.len() >= 2,
                "{}: {name} ran {} times",
                t.label(),
                rows.len()
            );
            assert!(
                rows.iter()
                    .all(|r| r.instance == a_instance || r.instance == b_instance)
            );
            assert!(rows.iter().all(|r| r.status != RunStatus::Running));
        }
        assert!(lease_skips >= 1.0, "{}: no lease skip seen", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer_and_the_admin_api_wants_the_token() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add(&db, "manual", 3600, false).await;
    let recorder = Arc::new(Recorder::default());
    let d = TestDaemon::start(&t, recorded(&recorder, Duration::from_millis(1500)), |_| {}).await;
    d.wait_ready().await;

    assert_eq!(d.get("/healthz", None).await, (200, "ok\n".into()));
    let (status, body) = d.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = d.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE syncerd_runs_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("syncerd_ready 1"), "{metrics}");

    for token in [None, Some("wrong"), Some("adm-Tok-314")] {
        let (status, body) = d.get("/api/v1/syncers", token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(!body.contains(TOKEN));
        let (status, _) = d.post("/api/v1/syncers/manual/run", token).await;
        assert_eq!(status, 401);
    }
    let (status, body) = d.get("/api/v1/syncers", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = &json["syncers"][0];
    assert_eq!(s["name"], "manual");
    assert_eq!(s["enabled"], false);
    assert_eq!(s["valid"], true);
    assert_eq!(s["interval_seconds"], 3600);
    assert!(
        !body.contains(APP_SECRET) && !body.contains("dingkey"),
        "{body}"
    );

    // "Sync now" works on a disabled syncer when forced, once at a time.
    let (status, body) = d.post("/api/v1/syncers/manual/run", Some(TOKEN)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("force=true"), "{body}");
    let (status, body) = d
        .post("/api/v1/syncers/manual/run?force=true", Some(TOKEN))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = d
        .post("/api/v1/syncers/manual/run?force=true", Some(TOKEN))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already"), "{body}");
    let (status, _) = d.post("/api/v1/syncers/nope/run", Some(TOKEN)).await;
    assert_eq!(status, 404);
    eventually(Duration::from_secs(5), "the manual run", || async {
        runs_of(&db, "manual")
            .await
            .iter()
            .any(|r| r.trigger == RunTrigger::Manual && r.status == RunStatus::Succeeded)
    })
    .await;
    d.stop().await;

    // Without a token the admin API is off.
    let d = TestDaemon::start(&t, placeholder_run_fn(Duration::ZERO), |s| {
        s.http.admin_token = None;
    })
    .await;
    let (status, body) = d.get("/api/v1/syncers", Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert!(
        body.contains("admin API disabled: set http.admin_token"),
        "{body}"
    );
    let (status, _) = d.post("/api/v1/syncers/manual/run", None).await;
    assert_eq!(status, 404);
    d.stop().await;
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_is_counted_as_failed_and_the_daemon_goes_on() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add(&db, "boom", 1, true).await;
    add(&db, "calm", 1, true).await;
    let inner = placeholder_run_fn(Duration::ZERO);
    let run_fn: RunFn = Arc::new(move |request: RunRequest| {
        let inner = inner.clone();
        async move {
            if request.syncer.name == "boom" {
                panic!("pipeline bug");
            }
            inner(request).await
        }
        .boxed()
    });
    let d = TestDaemon::start(&t, run_fn, |_| {}).await;
    eventually(
        Duration::from_secs(8),
        "failed runs of boom and runs of calm",
        || async {
            d.metric("syncerd_runs_total{syncer=\"boom\",status=\"failed\"} ")
                .await
                >= 2.0
                && runs_of(&db, "calm").await.len() >= 2
        },
    )
    .await;
    assert_eq!(d.get("/readyz", None).await.0, 200);
    let (exit, _) = d.stop().await;
    assert_eq!(exit, DaemonExit::Graceful);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_report_the_same_invalid_row_again() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add(&db, "broken", 60, true).await;
    set(&t, &db, "broken", "organization = ''").await;
    for _ in 0..2 {
        let d = TestDaemon::start(&t, placeholder_run_fn(Duration::ZERO), |_| {}).await;
        d.wait_ready().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        d.stop().await;
    }
    let text = db::get_syncer(&db, "broken")
        .await
        .unwrap()
        .unwrap()
        .error_text;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("organization is empty"), "{text}");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_syncers_run_while_disabled_for_casdoor_and_others_stay_off() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add(&db, "owned-by-syncerd", 1, false).await;
    add(&db, "left-to-casdoor", 1, false).await;
    let recorder = Arc::new(Recorder::default());
    let d = TestDaemon::start(&t, recorded(&recorder, Duration::from_millis(50)), |s| {
        s.scheduler.claimed_syncers = vec!["owned-by-syncerd".to_owned()];
    })
    .await;
    d.wait_ready().await;
    eventually(
        Duration::from_secs(6),
        "the claimed syncer runs",
        || async { runs_of(&db, "owned-by-syncerd").await.len() >= 2 },
    )
    .await;
    assert!(
        runs_of(&db, "left-to-casdoor").await.is_empty(),
        "an unclaimed disabled syncer ran"
    );
    // The claimed row stays disabled, so a Casdoor on this database would not run it.
    let row = db::get_syncer(&db, "owned-by-syncerd")
        .await
        .unwrap()
        .unwrap();
    assert!(!row.is_enabled);
    let (exit, _) = d.stop().await;
    assert_eq!(exit, DaemonExit::Graceful);
    db.close().await.unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leases_are_renewed_together_and_a_lost_one_stops_only_its_stream() {
    use syncerd::launch::keeper::LeaseKeeper;
    use syncerd::launch::lease::LeaseTiming;
    use syncerd::launch::{Holder, LeaseFor, hold_lease};
    use tokio_util::sync::CancellationToken;

    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        let keeper = LeaseKeeper::default();
        let holder = Holder {
            instance: "h:1:keep".into(),
            // 2 s leases renewed every 666 ms.
            timing: LeaseTiming::for_reload_interval(Duration::from_millis(10)),
            db_timeout: Duration::from_secs(5),
            keeper: Some(keeper.clone()),
        };
        let names = ["s0", "s1", "s2"];
        let mut streams = Vec::new();
        for name in names {
            let cancel = CancellationToken::new();
            let (db, holder, stop) = (db.clone(), holder.clone(), cancel.clone());
            streams.push((
                cancel,
                tokio::spawn(async move {
                    hold_lease(
                        &db,
                        name,
                        LeaseFor::Stream,
                        &holder,
                        &stop,
                        stop.cancelled(),
                    )
                    .await
                }),
            ));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let leases = async |db: &Db| {
            let mut all = Vec::new();
            for name in names {
                all.push(get_lease(db, &LeaseFor::Stream.key(name)).await.unwrap());
            }
            all
        };
        let first = leases(&db).await;
        assert!(
            first
                .iter()
                .all(|l| l.as_ref().is_some_and(|l| l.holder == "h:1:keep"))
        );
        assert_eq!(keeper.len(), 3);
        // Taken 30 ms apart, renewed in one statement: one expiry for all three, past every
        // first one, twice in a row.
        for round in 0..2 {
            let floor = leases(&db)
                .await
                .iter()
                .flatten()
                .map(|l| l.expires_at)
                .max()
                .unwrap();
            eventually(
                Duration::from_secs(10),
                "one renewal of all three leases",
                || async {
                    let now = leases(&db).await;
                    let expiries: Vec<i64> = now.iter().flatten().map(|l| l.expires_at).collect();
                    expiries.len() == 3
                        && expiries.iter().all(|e| *e == expiries[0])
                        && expiries[0] > floor
                },
            )
            .await;
            assert!(
                streams.iter().all(|(c, _)| !c.is_cancelled()),
                "round {round}"
            );
        }

        // Another process takes s1's lease: only s1's stream stops, the others stay renewed.
        t.execute(
            &db,
            "UPDATE syncer_lease SET holder = 'other:2:x' WHERE syncer_name = 'stream:s1'",
        )
        .await;
        eventually(Duration::from_secs(10), "s1's stream to stop", || async {
            streams[1].0.is_cancelled()
        })
        .await;
        let (_, s1) = streams.remove(1);
        assert!(s1.await.unwrap().is_ok());
        assert_eq!(keeper.len(), 2);
        let floor = leases(&db).await[0].as_ref().unwrap().expires_at;
        eventually(
            Duration::from_secs(10),
            "s0 and s2 renewed again",
            || async {
                let now = leases(&db).await;
                let (s0, s2) = (now[0].as_ref().unwrap(), now[2].as_ref().unwrap());
                s0.expires_at > floor && s0.expires_at == s2.expires_at
            },
        )
        .await;
        assert!(streams.iter().all(|(c, _)| !c.is_cancelled()));
        assert_eq!(leases(&db).await[1].as_ref().unwrap().holder, "other:2:x");

        // Stopped streams give their leases back and leave the keeper.
        for (cancel, task) in streams {
            cancel.cancel();
            assert!(task.await.unwrap().is_ok());
        }
        assert!(keeper.is_empty());
        let left = leases(&db).await;
        assert!(left[0].is_none() && left[2].is_none());
        db.close().await.unwrap();
    })
    .await;
}
