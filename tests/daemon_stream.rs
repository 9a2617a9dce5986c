#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `syncerd run` with DingTalk Stream mode against the simulator, as a real process on every
//! engine: after its first full run the daemon holds one Stream connection per syncer, and a
//! change in DingTalk (a title, a leaver) reaches its Casdoor row through a targeted run with
//! trigger `event`, long before the hour-long interval would. A daemon restarted with events
//! left pending in the inbox applies them.

mod common;

use std::time::Duration;

use common::pipeline::{ORG, SECRET, users};
use common::process::Syncerd;
use common::{TestDb, eventually, on_every_engine, runs_of};
use syncerd::db::inbox::pending_events;
use syncerd::db::{self, Db, NewSyncer, RunStatus, RunTrigger};
use syncerd::secret::Secret;
use syncerd::simulator::{Faults, Simulator, SimulatorConfig, SimulatorHandle, UserPatch};

const SYNCER: &str = "dt";
/// Long enough that only the first run comes from the schedule during a test.
const INTERVAL: i32 = 3600;
const WITHIN: Duration = Duration::from_secs(60);

async fn dingtalk() -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users: 12,
            departments: 3,
            seed: 5,
            app_key: "dingkey".into(),
            app_secret: Secret::new(SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

async fn add_syncer(db: &Db) {
    db::add_syncer(
        db,
        NewSyncer {
            name: SYNCER.into(),
            organization: ORG.into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new(SECRET),
            sync_interval: INTERVAL,
            enabled: true,
        },
    )
    .await
    .unwrap();
}

fn streaming_daemon(db_url: &str, sim: &SimulatorHandle) -> Syncerd {
    let base = sim.base_url();
    Syncerd::fast_daemon(
        db_url,
        &[],
        &[
            ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
            ("SYNCERD_DINGTALK__OPEN_API_BASE", base.as_str()),
            ("SYNCERD_DINGTALK__QPS_PER_API", "200"),
            ("SYNCERD_STREAM__ENABLED", "true"),
            ("SYNCERD_STREAM__COALESCE_WINDOW", "100ms"),
            ("SYNCERD_STREAM__RETRY_INTERVAL", "1s"),
        ],
    )
}

async fn runs_with(db: &Db, trigger: RunTrigger) -> Vec<db::RunRow> {
    runs_of(db, SYNCER)
        .await
        .into_iter()
        .filter(|r| r.trigger == trigger)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_dingtalk_reaches_its_row_through_an_event_run() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer(&db).await;
        let sim = dingtalk().await;
        let mut daemon = streaming_daemon(t.url(), &sim);

        eventually(WITHIN, "the first full run", || async {
            runs_of(&db, SYNCER)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Succeeded)
        })
        .await;
        eventually(WITHIN, "the stream connection", || async {
            sim.stream_stats().connections >= 1
        })
        .await;

        // A title change and a leaver, in DingTalk.
        let org = sim.org();
        let changed = org.users[0].profile.clone();
        let leaver = org.users[1].profile.clone();
        let email = "moved.to.ops@example.com";
        let before = users(&db).await;
        let row_of = |userid: &str| {
            before
                .iter()
                .find(|u| u.dingtalk.as_deref() == Some(userid))
                .cloned()
                .unwrap()
        };
        assert_eq!(row_of(&leaver.userid).is_forbidden, Some(false));
        assert_ne!(row_of(&changed.userid).email.as_deref(), Some(email));
        sim.update_user(
            &changed.userid,
            UserPatch {
                email: Some(email.into()),
                ..Default::default()
            },
        )
        .unwrap();
        sim.remove_user(&leaver.userid).unwrap();

        eventually(WITHIN, "the change and the leaver applied", || async {
            let rows = users(&db).await;
            let updated = rows.iter().any(|u| u.email.as_deref() == Some(email));
            let forbidden = rows.iter().any(|u| {
                u.dingtalk.as_deref() == Some(leaver.userid.as_str())
                    && u.is_forbidden == Some(true)
            });
            updated && forbidden
        })
        .await;

        let event_runs = runs_with(&db, RunTrigger::Event).await;
        assert!(!event_runs.is_empty(), "{}: no event run", t.label());
        assert!(
            event_runs.iter().all(|r| r.status == RunStatus::Succeeded),
            "{}: {event_runs:?}",
            t.label()
        );
        // One user/get per user named, plus at most a token: no directory walk.
        let calls: u64 = event_runs.iter().map(|r| r.api_calls).sum();
        assert!(calls <= 2 * 2 + 2, "{}: {calls} calls", t.label());
        // The schedule ran once; everything else came from events.
        let others: Vec<_> = runs_of(&db, SYNCER)
            .await
            .into_iter()
            .filter(|r| r.trigger != RunTrigger::Event)
            .collect();
        assert_eq!(others.len(), 1, "{}: {others:?}", t.label());
        eventually(WITHIN, "the inbox drained", || async {
            pending_events(&db, SYNCER, 100).await.unwrap().is_empty()
        })
        .await;
        let acked = sim.stream_stats();
        assert!(acked.acks >= 2, "{}: {acked:?}", t.label());

        let metrics = daemon.metrics().await;
        assert!(
            metrics.contains(&format!(
                "syncerd_stream_connected{{syncer=\"{SYNCER}\"}} 1"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "syncerd_stream_events_applied_total{{syncer=\"{SYNCER}\"}}"
            )),
            "{metrics}"
        );
        let acked_here = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "syncerd_stream_ack_latency_seconds_count{{syncer=\"{SYNCER}\"}} "
                ))
            })
            .and_then(|n| n.parse::<u64>().ok());
        assert!(acked_here.is_some_and(|n| n >= 2), "{metrics}");
        let log = daemon.stderr();
        assert!(!log.contains(SECRET), "the App Secret reached the log");
        daemon.signal("TERM");
        daemon.exit_within(Duration::from_secs(30)).await;
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_a_crash_are_applied_by_the_next_daemon() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer(&db).await;
        let sim = dingtalk().await;
        // One attempt per call, and no retry of unapplied events by this daemon.
        let base = sim.base_url();
        let env = [
            ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
            ("SYNCERD_DINGTALK__OPEN_API_BASE", base.as_str()),
            ("SYNCERD_DINGTALK__MAX_ATTEMPTS", "1"),
            ("SYNCERD_STREAM__ENABLED", "true"),
            ("SYNCERD_STREAM__COALESCE_WINDOW", "100ms"),
            ("SYNCERD_STREAM__RETRY_INTERVAL", "3600s"),
        ];
        let mut first = Syncerd::fast_daemon(t.url(), &[], &env);
        eventually(WITHIN, "the stream connection", || async {
            sim.stream_stats().connections >= 1
        })
        .await;

        // DingTalk fails every lookup: the event is stored and acknowledged, its run fails.
        sim.set_faults(Faults {
            bad_gateway_every: Some(1),
            ..Faults::default()
        })
        .unwrap();
        let leaver = sim.org().users[2].profile.userid.clone();
        sim.remove_user(&leaver).unwrap();
        eventually(WITHIN, "a failed event run", || async {
            runs_with(&db, RunTrigger::Event)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Failed)
        })
        .await;
        assert_eq!(pending_events(&db, SYNCER, 10).await.unwrap().len(), 1);
        assert_eq!(sim.stream_stats().acks, 1, "stored, so acknowledged");
        let forbidden = |rows: &[syncerd::db::entities::user::Model]| {
            rows.iter().any(|u| {
                u.dingtalk.as_deref() == Some(leaver.as_str()) && u.is_forbidden == Some(true)
            })
        };
        assert!(!forbidden(&users(&db).await), "{}", t.label());

        // The process dies; DingTalk recovers; the next daemon drains the inbox.
        first.signal("KILL");
        first.exit_within(Duration::from_secs(30)).await;
        sim.set_faults(Faults::default()).unwrap();
        let mut second = Syncerd::fast_daemon(t.url(), &[], &env);
        eventually(WITHIN, "the stored event applied", || async {
            pending_events(&db, SYNCER, 10).await.unwrap().is_empty()
        })
        .await;
        assert!(
            runs_with(&db, RunTrigger::Event)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Succeeded),
            "{}",
            t.label()
        );
        assert!(forbidden(&users(&db).await), "{}", t.label());
        // DingTalk did not deliver it again: the inbox had it.
        assert_eq!(sim.stream_stats().redeliveries, 0);
        second.signal("TERM");
        second.exit_within(Duration::from_secs(30)).await;
        sim.shutdown().await.unwrap();
    })
    .await;
}
