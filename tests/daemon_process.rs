#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `syncerd run` and `syncerd healthcheck` as real processes: signals, crash recovery, config
//! reload, and a database that is not there yet. Runs are real: the pipeline against a
//! simulated DingTalk whose answers are slow enough to keep a run going.

mod common;

use std::time::{Duration, Instant};

use common::process::{Syncerd, free_port, syncerd_command, wait_for_running};
use common::{TestDb, eventually, on_every_engine, runs_of};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use syncerd::config::Engine;
use syncerd::db::{self, Db, NewSyncer, RunStatus};
use syncerd::secret::Secret;
use syncerd::simulator::Simulator;
use syncerd::simulator::{SimulatorConfig, SimulatorHandle};
use tokio::process::Command;

const APP_SECRET: &str = "Proc-S3cret-42";

/// A simulated DingTalk for the syncers of [`add`] that answers each call after `latency`.
async fn slow_dingtalk(latency: Duration) -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users: 20,
            departments: 2,
            app_key: "dingkey".into(),
            app_secret: Secret::new(APP_SECRET),
            latency,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// `syncerd run` (fast settings) whose runs fetch from `sim`, waiting for its answers as long as
/// they take.
fn daemon_on(db_url: &str, sim: &SimulatorHandle, env: &[(&str, &str)]) -> Syncerd {
    let base = sim.base_url();
    let mut all = vec![
        ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
        ("SYNCERD_DINGTALK__REQUEST_TIMEOUT", "300s"),
    ];
    all.extend_from_slice(env);
    Syncerd::fast_daemon(db_url, &[], &all)
}

async fn add(db: &Db, name: &str, interval: i32) {
    db::add_syncer(
        db,
        NewSyncer {
            name: name.into(),
            organization: "acme".into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new(APP_SECRET),
            sync_interval: interval,
            enabled: true,
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_exits_zero_within_the_grace_and_records_the_run_interrupted() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add(&db, "long", 1).await;
    // The run waits a minute for DingTalk's first answer.
    let sim = slow_dingtalk(Duration::from_secs(60)).await;
    let mut d = daemon_on(
        t.url(),
        &sim,
        &[("SYNCERD_SCHEDULER__SHUTDOWN_GRACE", "5s")],
    );
    let id = wait_for_running(&db, "long").await;
    let sent = Instant::now();
    d.signal("TERM");
    let status = d.exit_within(Duration::from_secs(6)).await;
    assert!(status.success(), "{status:?}\n{}", d.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let run = db::get_run(&db, id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Interrupted, "{}", d.stderr());
    assert_eq!(db::leases::get_lease(&db, "long").await.unwrap(), None);
    let log = d.stderr();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(!log.contains(APP_SECRET), "{log}");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_and_the_next_start_recovers_the_run() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add(&db, "stuck", 1).await;
    let sim = slow_dingtalk(Duration::from_secs(60)).await;
    let grace = [("SYNCERD_SCHEDULER__SHUTDOWN_GRACE", "30s")];
    let mut d = daemon_on(t.url(), &sim, &grace);
    let id = wait_for_running(&db, "stuck").await;
    // The run cannot reach its end: the test holds SQLite's write lock (on a connection of its
    // own), so recording the outcome waits, and the shutdown with it.
    let blocker = Database::connect(t.url()).await.unwrap();
    let lock = blocker.begin().await.unwrap();
    lock.execute_unprepared("UPDATE syncer SET error_text = error_text WHERE name = 'stuck'")
        .await
        .unwrap();
    d.signal("TERM");
    d.wait_for_log("waiting up to 30s", Duration::from_secs(3))
        .await;
    d.signal("TERM");
    let status = d.exit_within(Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(130), "{}", d.stderr());
    assert_eq!(
        db::get_run(&db, id).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    lock.rollback().await.unwrap();
    blocker.close().await.unwrap();
    // The lease it left expires (2.4 s at a 200 ms reload interval), then a new daemon
    // records the run as interrupted.
    let mut again = Syncerd::fast_daemon(t.url(), &[], &[]);
    eventually(Duration::from_secs(6), "recovery", || async {
        db::get_run(&db, id).await.unwrap().unwrap().status == RunStatus::Interrupted
    })
    .await;
    again.signal("TERM");
    assert!(again.exit_within(Duration::from_secs(5)).await.success());
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_is_recovered_on_restart() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "victim", 3600).await;
        let sim = slow_dingtalk(Duration::from_secs(60)).await;
        let mut d = daemon_on(t.url(), &sim, &[]);
        let id = wait_for_running(&db, "victim").await;
        d.signal("KILL");
        let status = d.exit_within(Duration::from_secs(2)).await;
        assert!(!status.success());
        let killed_at = Instant::now();

        let mut again = Syncerd::fast_daemon(t.url(), &[], &[]);
        eventually(Duration::from_secs(8), "recovery", || async {
            db::get_run(&db, id).await.unwrap().unwrap().status == RunStatus::Interrupted
        })
        .await;
        let run = db::get_run(&db, id).await.unwrap().unwrap();
        assert!(
            run.error_summary.unwrap_or_default().contains("stopped"),
            "{}",
            t.label()
        );
        eprintln!(
            "{}: recovered {:?} after the kill",
            t.label(),
            killed_at.elapsed()
        );
        again
            .wait_for_log("recorded as interrupted", Duration::from_secs(1))
            .await;
        again.signal("TERM");
        assert!(again.exit_within(Duration::from_secs(5)).await.success());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_config_file() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    db.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("syncerd.toml");
    let write = |level: &str, reload: &str, batch_size: u32| {
        std::fs::write(
            &config,
            format!(
                "[log]\nlevel = \"{level}\"\n[scheduler]\nreload_interval = \"{reload}\"\n\
                 [sync]\nbatch_size = {batch_size}\n"
            ),
        )
        .unwrap();
    };
    write("info", "200ms", 500);
    let config_arg = config.to_string_lossy().into_owned();
    let mut d = Syncerd::daemon(t.url(), &["--config", &config_arg], &[]);
    eventually(Duration::from_secs(5), "ready", || async {
        d.readyz().await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(!d.stderr().contains("DEBUG"));

    write("debug", "300ms", 200);
    d.signal("HUP");
    d.wait_for_log(
        "configuration reloaded: log.level info → debug; scheduler.reload_interval 200ms → 300ms",
        Duration::from_secs(3),
    )
    .await;
    d.wait_for_log(
        "restart syncerd for that to take effect",
        Duration::from_secs(1),
    )
    .await;
    d.wait_for_log("reconcile pass done", Duration::from_secs(3))
        .await;
    assert_eq!(d.readyz().await.map(|(s, _)| s), Some(200));
    d.signal("TERM");
    assert!(d.exit_within(Duration::from_secs(5)).await.success());
}

async fn healthcheck(port: u16) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = syncerd_command(dir.path(), "sqlite::memory:", port, &[])
        .arg("healthcheck")
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The server URL (no database) and the database name of a server test database.
fn split_server_url(url: &str) -> (String, String) {
    let (server, database) = url.rsplit_once('/').unwrap();
    (server.to_owned(), database.to_owned())
}

async fn on_server(server: &str, sql: &str) {
    let conn = Database::connect(server).await.unwrap();
    conn.execute_unprepared(sql).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_waits_for_a_database_that_appears_later_and_healthcheck_tells() {
    on_every_engine(async |t: &TestDb| {
        // Make the database disappear until the test brings it (back).
        let (url, sqlite_dir) = match t.engine() {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let missing = dir.path().join("later");
                let url = format!("sqlite://{}/x.db?mode=rwc", missing.display());
                (url, Some((dir, missing)))
            }
            engine => {
                let (server, name) = split_server_url(t.url());
                let drop = match engine {
                    Engine::MySql => format!("DROP DATABASE `{name}`"),
                    _ => format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
                };
                on_server(&server, &drop).await;
                (t.url().to_owned(), None)
            }
        };
        let mut d = Syncerd::fast_daemon(&url, &[], &[]);
        eventually(Duration::from_secs(5), "a 503 from /readyz", || async {
            d.readyz().await.is_some_and(|(s, _)| s == 503)
        })
        .await;
        let (_, body) = d.readyz().await.unwrap();
        assert!(
            body.contains("database not available"),
            "{}: {body}",
            t.label()
        );
        let (code, out) = healthcheck(d.port).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.starts_with("not ready:") && out.contains("503"),
            "{out}"
        );
        assert_eq!(out.trim().lines().count(), 1, "{out}");

        // The database appears, with a syncer.
        let db = match (&sqlite_dir, t.engine()) {
            (Some((_, missing)), _) => {
                std::fs::create_dir_all(missing).unwrap();
                let settings = syncerd::config::DatabaseSettings {
                    url: syncerd::config::DatabaseUrl::new(url.clone()),
                    ..t.settings()
                };
                let db = db::connect(&settings).await.unwrap();
                db::migrate(&db).await.unwrap();
                db
            }
            (None, engine) => {
                let (server, name) = split_server_url(t.url());
                let create = match engine {
                    Engine::MySql => format!(
                        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                    ),
                    _ => format!("CREATE DATABASE \"{name}\""),
                };
                on_server(&server, &create).await;
                t.migrated().await
            }
        };
        add(&db, "late", 3600).await;
        eventually(
            Duration::from_secs(10),
            "a run once the database is there",
            || async { !runs_of(&db, "late").await.is_empty() },
        )
        .await;
        assert_eq!(d.readyz().await.map(|(s, _)| s), Some(200), "{}", t.label());
        let (code, out) = healthcheck(d.port).await;
        assert_eq!(code, Some(0), "{out}");
        assert!(out.starts_with("ready"), "{out}");
        let log = d.stderr();
        assert!(log.contains("database not available (attempt 1)"), "{log}");

        d.signal("TERM");
        assert!(d.exit_within(Duration::from_secs(5)).await.success());
        db.close().await.unwrap();

        // And with nothing listening at all.
        let (code, out) = healthcheck(free_port()).await;
        assert_eq!(code, Some(1));
        assert!(out.starts_with("not ready: nothing answers"), "{out}");
    })
    .await;
}

#[tokio::test]
async fn run_and_healthcheck_explain_themselves_and_hide_the_development_flags() {
    for (args, needles) in [
        (
            vec!["run", "--help"],
            vec!["SIGHUP", "lease", "/readyz", "http.listen"],
        ),
        (vec!["healthcheck", "--help"], vec!["/readyz", "exit 0"]),
        (vec!["--help"], vec!["run", "healthcheck"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncerd"))
            .args(&args)
            .env_clear()
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        for needle in needles {
            assert!(text.contains(needle), "{args:?} lacks {needle}:\n{text}");
        }
        assert!(!text.contains("placeholder"), "{text}");
    }
}
