#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `syncerd run` with DingTalk Stream mode against the simulator, as a real process on every
//! engine: after its first full run the daemon holds one Stream connection per syncer, and a
//! change in DingTalk (a title, a leaver) reaches its Casdoor row through a targeted run with
//! trigger `event`, long before the hour-long interval would. A daemon restarted with events
//! left pending in the inbox applies them. A leaver whose event nobody received while the stream
//! was down is caught up from DingTalk's leave records after the reconnect, without a full run;
//! when the leave records are refused, a full catch-up run takes their place.

mod common;

use std::time::Duration;

use common::pipeline::{ORG, SECRET, users};
use common::process::Syncerd;
use common::{TestDb, eventually, on_every_engine, runs_of};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use syncerd::db::entities::syncer_event;
use syncerd::db::inbox::pending_events;
use syncerd::db::{self, Db, NewSyncer, RunStatus, RunTrigger};
use syncerd::dingtalk::Endpoint;
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
        // A run commits its rows before it records how it ended.
        eventually(WITHIN, "the event runs recorded as ended", || async {
            let runs = runs_with(&db, RunTrigger::Event).await;
            !runs.is_empty() && runs.iter().all(|r| r.status != RunStatus::Running)
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

/// Whether the Casdoor row of `userid` is forbidden.
async fn is_forbidden(db: &Db, userid: &str) -> bool {
    users(db)
        .await
        .iter()
        .any(|u| u.dingtalk.as_deref() == Some(userid) && u.is_forbidden == Some(true))
}

/// The inbox rows of the syncer's catch-ups (leave records), oldest first.
async fn leave_record_events(db: &Db) -> Vec<syncer_event::Model> {
    let mut rows = syncer_event::Entity::find()
        .filter(syncer_event::Column::SyncerName.eq(SYNCER))
        .filter(syncer_event::Column::EventType.eq("syncerd_leave_record"))
        .all(db.conn())
        .await
        .unwrap();
    rows.sort_by_key(|r| r.received_at);
    rows
}

/// The value of the catch-up counter of `outcome` in the daemon's metrics.
async fn catch_ups(daemon: &Syncerd, outcome: &str) -> u64 {
    let prefix =
        format!("syncerd_stream_catchups_total{{syncer=\"{SYNCER}\",outcome=\"{outcome}\"}} ");
    daemon
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_whose_event_was_lost_while_the_stream_was_down_is_caught_up_from_leave_records() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer(&db).await;
        let sim = dingtalk().await;
        let mut daemon = streaming_daemon(t.url(), &sim);
        eventually(WITHIN, "the stream's first catch-up", || async {
            catch_ups(&daemon, "leave_records").await >= 1
        })
        .await;
        assert!(leave_record_events(&db).await.is_empty(), "nobody left yet");

        // The stream goes down and stays down (every ticket expired)...
        sim.stream_expire_next_tickets(u64::MAX);
        sim.stream_disconnect();
        eventually(WITHIN, "a refused reconnection", || async {
            sim.stream_stats().tickets_refused >= 1
        })
        .await;
        // ... while someone leaves, and DingTalk never delivers that event.
        let leaver = sim.org().users[1].profile.userid.clone();
        assert!(!is_forbidden(&db, &leaver).await);
        sim.remove_user(&leaver).unwrap();
        assert_eq!(sim.stream_drop_pending(), 1);
        sim.stream_expire_next_tickets(0);

        // Through the inbox: one leave-record event, applied by an event run of one lookup.
        eventually(WITHIN, "the leave record applied", || async {
            leave_record_events(&db)
                .await
                .iter()
                .any(|e| e.state == "applied")
        })
        .await;
        assert!(is_forbidden(&db, &leaver).await, "{}", t.label());
        let events = leave_record_events(&db).await;
        assert_eq!(events.len(), 1, "{}: {events:?}", t.label());
        let event = &events[0];
        assert_eq!(event.user_ids, format!("[\"{leaver}\"]"));
        let run = db::get_run(&db, event.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (run.trigger, run.status, run.counts.forbidden),
            (RunTrigger::Event, RunStatus::Succeeded, 1),
            "{}: {run:?}",
            t.label()
        );
        assert!(run.api_calls <= 2, "{}: {} calls", t.label(), run.api_calls);
        // No full run caught up: the schedule's first run is the only one.
        let full: Vec<_> = runs_of(&db, SYNCER)
            .await
            .into_iter()
            .filter(|r| r.trigger != RunTrigger::Event)
            .collect();
        assert_eq!(full.len(), 1, "{}: {full:?}", t.label());
        assert_eq!(full[0].trigger, RunTrigger::Schedule);
        assert_eq!(catch_ups(&daemon, "full_run").await, 0);
        assert!(catch_ups(&daemon, "leave_records").await >= 2);
        assert!(sim.stats().endpoint(Endpoint::LeaveRecords).ok >= 2);
        assert_eq!(sim.stream_stats().events_dropped, 1);

        let log = daemon.stderr();
        assert!(!log.contains(SECRET), "the App Secret reached the log");
        assert!(!log.contains("simtok"), "an access token reached the log");
        daemon.signal("TERM");
        daemon.exit_within(Duration::from_secs(30)).await;
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_leave_records_make_the_catch_up_a_full_run_and_are_reported_once() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add_syncer(&db).await;
        let sim = dingtalk().await;
        // The app lacks Contact.Common.Read.
        sim.set_faults(Faults {
            leave_records_denied: true,
            ..Faults::default()
        })
        .unwrap();
        let mut daemon = streaming_daemon(t.url(), &sim);

        // On start the records are refused: a full run catches up.
        eventually(WITHIN, "a full catch-up run", || async {
            runs_with(&db, RunTrigger::Catchup)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Succeeded)
        })
        .await;
        let catchup = runs_with(&db, RunTrigger::Catchup).await;
        assert_eq!(catchup.len(), 1, "{}: {catchup:?}", t.label());
        assert_eq!(catchup[0].counts.fetched, 12, "a whole directory");

        // A short outage: refused again, and left to the interval run.
        sim.stream_disconnect();
        eventually(WITHIN, "the reconnection's catch-up", || async {
            catch_ups(&daemon, "interval_run").await >= 1
        })
        .await;
        assert_eq!(catch_ups(&daemon, "full_run").await, 1);
        assert_eq!(runs_with(&db, RunTrigger::Catchup).await.len(), 1);
        assert!(sim.stats().endpoint(Endpoint::LeaveRecords).errors >= 2);
        let log = daemon.stderr();
        let said = log
            .matches("DingTalk's leave records could not be read")
            .count();
        assert_eq!(said, 1, "{}: the reason once:\n{log}", t.label());
        assert!(log.contains("Contact.Common.Read"), "{log}");
        assert!(leave_record_events(&db).await.is_empty());
        daemon.signal("TERM");
        daemon.exit_within(Duration::from_secs(30)).await;
        sim.shutdown().await.unwrap();
    })
    .await;
}
