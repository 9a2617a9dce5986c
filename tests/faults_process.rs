#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Process faults through the real pipeline, on every engine: `syncerd run` and `syncerd sync`
//! stopped by SIGTERM or `kill -9` while they write a directory fetched from a real simulator.
//! Whatever stops them, the database holds whole batches only, the history says what happened,
//! and the next process completes the work.

mod common;

use std::time::{Duration, Instant};

use common::pipeline::{ORG, assert_whole, count, users};
use common::process::{Syncerd, run_status, wait_for_running};
use common::{TestDb, eventually, on_every_engine, runs_of};
use syncerd::db::leases::{epoch_millis, get_lease};
use syncerd::db::{self, Db, NewSyncer, RunStatus};
use syncerd::secret::Secret;
use syncerd::simulator::Simulator;
use syncerd::simulator::{DEFAULT_APP_KEY, SimulatorConfig, SimulatorHandle};

const SECRET: &str = "Proc-Fault-S3cret-5e1";
const SYNCER: &str = "acme-dingtalk";
const USERS: usize = 1_000;
/// Units per transaction of the runs that get stopped: small, so that their apply is still
/// going when the test sees its first users and sends the signal.
const BATCH: u64 = 5;
/// Units per transaction of the runs that complete the work (the default).
const FULL_BATCH: u64 = 500;

async fn simulator() -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users: USERS,
            departments: 20,
            app_secret: Secret::new(SECRET),
            latency: Duration::from_millis(5),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// A migrated database with one enabled DingTalk syncer of the simulator's app.
async fn setup(t: &TestDb) -> Db {
    let db = t.migrated().await;
    db::add_syncer(
        &db,
        NewSyncer {
            name: SYNCER.into(),
            organization: ORG.into(),
            app_key: DEFAULT_APP_KEY.into(),
            app_secret: Secret::new(SECRET),
            sync_interval: 3600,
            enabled: true,
        },
    )
    .await
    .unwrap();
    db
}

/// `syncerd run` against the simulator, writing `batch` units per transaction.
fn daemon(t: &TestDb, sim: &SimulatorHandle, batch: u64) -> Syncerd {
    let (base, batch) = (sim.base_url(), batch.to_string());
    Syncerd::fast_daemon(
        t.url(),
        &[],
        &[
            ("SYNCERD_DINGTALK__API_BASE", &base),
            ("SYNCERD_DINGTALK__QPS_PER_API", "50"),
            ("SYNCERD_SYNC__BATCH_SIZE", &batch),
        ],
    )
}

/// `syncerd sync SYNCER` against the simulator, writing `batch` units per transaction.
fn sync(t: &TestDb, sim: &SimulatorHandle, batch: u64) -> Syncerd {
    sync_with(t, sim, batch, &[])
}

/// [`sync`] with further environment variables.
fn sync_with(t: &TestDb, sim: &SimulatorHandle, batch: u64, extra: &[(&str, &str)]) -> Syncerd {
    let (base, batch) = (sim.base_url(), batch.to_string());
    let mut env = vec![
        ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
        ("SYNCERD_DINGTALK__QPS_PER_API", "50"),
        ("SYNCERD_SYNC__BATCH_SIZE", batch.as_str()),
    ];
    env.extend_from_slice(extra);
    Syncerd::spawn(t.url(), &["sync", SYNCER], &env)
}

async fn users_written(t: &TestDb, db: &Db) -> i64 {
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE owner = '{ORG}'",
        t.quote("user")
    );
    count(t, db, &sql).await
}

/// Waits until a run of `SYNCER` is `running` and has committed its first users: its apply is
/// under way. Returns the run's id.
async fn wait_for_apply(t: &TestDb, db: &Db, process: &Syncerd) -> i64 {
    let id = wait_for_running(db, SYNCER).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while users_written(t, db).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{}: no user written within a minute:\n{}",
            t.label(),
            process.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

/// The run stopped part-way: whole batches only, matching the counts in its history row.
async fn assert_stopped_between_batches(t: &TestDb, db: &Db, id: i64) -> db::RunRow {
    let run = db::get_run(db, id).await.unwrap().unwrap();
    let (users, groups) = assert_whole(t, db, Some(BATCH)).await;
    assert!(
        users > 0 && users < USERS as u64,
        "{}: the run was not stopped part-way: {users} users",
        t.label()
    );
    eprintln!(
        "{}: run {} stopped with {users} of {USERS} users and {groups} groups written",
        t.label(),
        run.status
    );
    if run.status != RunStatus::Running {
        assert_eq!(
            (run.counts.created, run.counts.groups_created),
            (users, groups),
            "{}: the history's counts",
            t.label()
        );
    }
    run
}

/// Every user of the simulator is there, whole.
/// The stopped run is the newest but one, the run after it succeeded, and the database holds
/// the whole directory.
async fn assert_recovered(t: &TestDb, db: &Db, sim: &SimulatorHandle) {
    assert_eq!(
        statuses(&runs_of(db, SYNCER).await),
        [RunStatus::Succeeded, RunStatus::Interrupted],
        "{}",
        t.label()
    );
    assert_full_directory(t, db, sim).await;
}

async fn assert_full_directory(t: &TestDb, db: &Db, sim: &SimulatorHandle) {
    let (written, _) = assert_whole(t, db, None).await;
    let org = sim.org();
    assert_eq!(written, org.users.len() as u64, "{}", t.label());
    let mut ids: Vec<String> = users(db)
        .await
        .into_iter()
        .map(|u| u.id.unwrap_or_default())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = org.users.iter().map(|u| u.profile.userid.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected, "{}", t.label());
}

fn statuses(runs: &[db::RunRow]) -> Vec<RunStatus> {
    runs.iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_between_batches_and_the_next_daemon_completes_the_work() {
    let sim = simulator().await;
    on_every_engine(async |t: &TestDb| {
        let db = setup(t).await;
        let mut d = daemon(t, &sim, BATCH);
        let id = wait_for_apply(t, &db, &d).await;
        d.signal("TERM");
        // Exit 0: a graceful stop (130 is the forced one, after a second signal).
        let status = d.exit_within(Duration::from_secs(30)).await;
        let log = d.stderr();
        assert!(status.success(), "{}: {status:?}\n{log}", t.label());
        assert!(log.contains("SIGTERM: shutting down"), "{log}");
        assert!(!log.contains(SECRET), "{log}");

        let run = assert_stopped_between_batches(t, &db, id).await;
        assert_eq!(run.status, RunStatus::Interrupted, "{}: {log}", t.label());
        let summary = run.error_summary.unwrap_or_default();
        assert!(
            summary.contains("cancelled between batches"),
            "{}: {summary}",
            t.label()
        );
        assert_eq!(get_lease(&db, SYNCER).await.unwrap(), None, "{}", t.label());
        let row = db::get_syncer(&db, SYNCER).await.unwrap().unwrap();
        assert_eq!(row.error_text, "", "an interrupted run is no error");

        // A new daemon picks the syncer up and lands the rest.
        let mut next = daemon(t, &sim, FULL_BATCH);
        eventually(Duration::from_secs(60), "a succeeded run", || async {
            runs_of(&db, SYNCER)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Succeeded)
        })
        .await;
        next.signal("TERM");
        assert!(next.exit_within(Duration::from_secs(10)).await.success());
        assert_recovered(t, &db, &sim).await;
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_apply_leaves_whole_batches_and_the_next_sync_closes_the_run_and_completes() {
    let sim = simulator().await;
    on_every_engine(async |t: &TestDb| {
        let db = setup(t).await;
        let mut d = daemon(t, &sim, BATCH);
        let id = wait_for_apply(t, &db, &d).await;
        d.signal("KILL");
        let status = d.exit_within(Duration::from_secs(5)).await;
        assert!(!status.success(), "{}", t.label());

        // Nobody was left to record the end: the row stays `running`, the batch in flight is
        // gone with its transaction.
        let run = assert_stopped_between_batches(t, &db, id).await;
        assert_eq!(run.status, RunStatus::Running, "{}", t.label());

        // The dead daemon's lease runs out (2.4 s at a 200 ms reload interval); until then a
        // foreground sync would refuse to overlap it.
        eventually(Duration::from_secs(10), "the lease to expire", || async {
            get_lease(&db, SYNCER)
                .await
                .unwrap()
                .is_none_or(|l| !l.is_live(epoch_millis()))
        })
        .await;
        let mut next = sync(t, &sim, FULL_BATCH);
        let status = next.exit_within(Duration::from_secs(60)).await;
        let (out, log) = (next.stdout(), next.stderr());
        assert!(status.success(), "{}: {out}\n{log}", t.label());
        assert!(
            log.contains("left running by a process that is gone"),
            "{}: {log}",
            t.label()
        );
        assert!(!out.contains(SECRET) && !log.contains(SECRET));
        let killed = db::get_run(&db, id).await.unwrap().unwrap();
        assert_eq!(killed.status, RunStatus::Interrupted, "{}", t.label());
        assert!(killed.finished_at.is_some());
        let summary = killed.error_summary.unwrap_or_default();
        assert!(summary.contains("crash, kill"), "{}: {summary}", t.label());
        assert_recovered(t, &db, &sim).await;
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_foreground_sync_between_batches_and_the_next_sync_completes() {
    let sim = simulator().await;
    on_every_engine(async |t: &TestDb| {
        let db = setup(t).await;
        let mut s = sync(t, &sim, BATCH);
        let id = wait_for_apply(t, &db, &s).await;
        s.signal("TERM");
        // `syncerd sync` exits 0 only when the run succeeded.
        let status = s.exit_within(Duration::from_secs(30)).await;
        let (out, log) = (s.stdout(), s.stderr());
        assert_eq!(status.code(), Some(1), "{}: {out}\n{log}", t.label());
        assert!(
            log.contains("SIGTERM: stopping at the next safe point"),
            "{log}"
        );
        assert!(
            out.contains(&format!("{SYNCER} (organization {ORG}): interrupted")),
            "{out}"
        );
        assert!(!out.contains(SECRET) && !log.contains(SECRET));

        let run = assert_stopped_between_batches(t, &db, id).await;
        assert_eq!(run.status, RunStatus::Interrupted, "{}: {log}", t.label());
        assert_eq!(get_lease(&db, SYNCER).await.unwrap(), None, "{}", t.label());

        let mut next = sync(t, &sim, FULL_BATCH);
        let status = next.exit_within(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "{}: {}\n{}",
            t.label(),
            next.stdout(),
            next.stderr()
        );
        assert_eq!(run_status(&db, id).await, RunStatus::Interrupted);
        assert_recovered(t, &db, &sim).await;
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

/// A foreground sync whose apply outlasts its lease keeps the lease: the
/// renewals get between the batches (on SQLite they once starved behind them and the run was
/// cancelled) and never stop the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_sync_keeps_renewing_its_lease_through_a_long_apply() {
    let sim = Simulator::start(
        SimulatorConfig {
            users: 4 * USERS,
            departments: 20,
            app_secret: Secret::new(SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    on_every_engine(async |t: &TestDb| {
        let db = setup(t).await;
        // One unit per transaction: the most back-to-back batches, the longest apply. A 100 ms
        // reload interval gives the shortest lease: 2 s, renewed every 667 ms.
        let mut s = sync_with(
            t,
            &sim,
            1,
            &[("SYNCERD_SCHEDULER__RELOAD_INTERVAL", "100ms")],
        );
        let status = s.exit_within(Duration::from_secs(120)).await;
        let (out, log) = (s.stdout(), s.stderr());
        assert!(status.success(), "{}: {out}\n{log}", t.label());
        assert!(!log.contains("lease"), "{}: {log}", t.label());
        let runs = runs_of(&db, SYNCER).await;
        let run = runs.first().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{}", t.label());
        assert!(
            run.duration.unwrap_or_default() > Duration::from_secs(3),
            "{}: the run took {:?}, not longer than its 2 s lease",
            t.label(),
            run.duration
        );
        assert_full_directory(t, &db, &sim).await;
        assert_eq!(get_lease(&db, SYNCER).await.unwrap(), None, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}
