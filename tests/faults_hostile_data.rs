#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile directory data served by the simulator through whole runs, on every engine: each
//! odd record lands exactly or is a record error of its own; the run never fails and the rest
//! of the directory lands.

mod common;

use std::time::Duration;

use common::pipeline::{add_syncer, apply, context, sync_settings, user_row, users};
use common::{TestDb, on_every_engine};
use syncerd::db::{self, Db, RunStatus, SyncerRow};
use syncerd::dingtalk::types::User;
use syncerd::dingtalk::{Client, ClientConfig};
use syncerd::pipeline::{ErrorKind, RunReport, run_once};
use syncerd::secret::Secret;
use syncerd::simulator::{DEFAULT_APP_KEY, SimUser, Simulator, SimulatorConfig, SimulatorHandle};

async fn start(users: usize, departments: usize) -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users,
            departments,
            seed: 11,
            app_secret: Secret::new(common::pipeline::SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

async fn full_run(db: &Db, syncer: &SyncerRow, sim: &SimulatorHandle) -> RunReport {
    let ctx = context(db, sync_settings(50));
    let client = Client::new(ClientConfig {
        api_base: sim.base_url(),
        qps_per_api: 1_000,
        max_concurrency: 8,
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        ip_ban_pause: Duration::from_millis(300),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::default()
    })
    .unwrap();
    let credentials = sim.credentials();
    run_once(&ctx, syncer, client.fetch_directory(&credentials), apply()).await
}

/// A syncer with the simulator's App Key and, when given, another field mapping.
async fn setup(t: &TestDb, table_columns: Option<&str>) -> (Db, SyncerRow) {
    let db = t.migrated().await;
    let syncer = add_syncer(&db).await;
    let mut set = format!("{} = '{DEFAULT_APP_KEY}'", t.quote("user"));
    if let Some(columns) = table_columns {
        set.push_str(&format!(", table_columns = '{columns}'"));
    }
    t.execute(
        &db,
        &format!("UPDATE syncer SET {set} WHERE name = '{}'", syncer.name),
    )
    .await;
    let syncer = db::get_syncer(&db, &syncer.name).await.unwrap().unwrap();
    (db, syncer)
}

fn profile(userid: &str, unionid: &str, name: &str, depts: Vec<i64>) -> User {
    User {
        userid: userid.to_owned(),
        unionid: Some(unionid.to_owned()),
        name: Some(name.to_owned()),
        dept_id_list: Some(depts),
        active: Some(true),
        ..Default::default()
    }
}

fn add(sim: &SimulatorHandle, profile: User) {
    sim.add_user(SimUser {
        profile,
        leader_in: Default::default(),
    })
    .unwrap();
}

fn record_error_for(report: &RunReport, userid: &str) -> bool {
    report
        .errors
        .iter()
        .any(|e| e.kind == ErrorKind::Record && e.userid.as_deref() == Some(userid))
}

const EMOJI_RTL_NAME: &str = "👩🏽‍💻 Zoë \u{200f}שלום עליכם\u{200e} 🇨🇳 李雷";
const RTL_TITLE: &str = "مدير المشروع \u{202e}abc\u{202c}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_emoji_rtl_nul_bare_and_multi_department_users_never_fail_the_run() {
    on_every_engine(async |t: &TestDb| {
        let sim = start(80, 5).await;
        let org = sim.org();
        let depts: Vec<i64> = org.departments.iter().map(|d| d.dept_id).collect();
        let generated = org.users.len();

        // 600 characters in the display name and the title.
        let mut long = profile(
            "hostile-long",
            "union-long",
            &"長".repeat(600),
            vec![depts[1]],
        );
        long.title = Some("t".repeat(600));
        add(&sim, long);
        // Emoji (with ZWJ and flags) and right-to-left text, with direction marks.
        let mut emoji = profile(
            "hostile-emoji",
            "union-emoji",
            EMOJI_RTL_NAME,
            vec![depts[1]],
        );
        emoji.title = Some(RTL_TITLE.to_owned());
        add(&sim, emoji);
        // A NUL byte inside the title.
        let mut nul = profile("hostile-nul", "union-nul", "Nul Title", vec![depts[2]]);
        nul.title = Some("chief\u{0}officer".to_owned());
        add(&sim, nul);
        // Nothing but the userid and a department: no name, no unionid, no active flag.
        add(
            &sim,
            User {
                userid: "hostile-bare".to_owned(),
                dept_id_list: Some(vec![depts[2]]),
                ..Default::default()
            },
        );
        // In every department: served on many pages, must land once.
        add(
            &sim,
            profile(
                "hostile-everywhere",
                "union-everywhere",
                "Everywhere",
                depts.clone(),
            ),
        );

        let (db, syncer) = setup(t, None).await;
        let report = full_run(&db, &syncer, &sim).await;
        assert!(
            matches!(report.status, RunStatus::Succeeded | RunStatus::Partial),
            "{}: {}",
            t.label(),
            report.render_text()
        );
        // Every generated user landed.
        let landed = users(&db).await;
        for u in &org.users {
            let unionid = u.profile.unionid.clone().unwrap();
            assert!(
                landed.iter().any(|l| l.name == unionid),
                "{}: generated user {} is missing",
                t.label(),
                u.profile.userid
            );
        }
        // Emoji and RTL text round-trip byte for byte.
        let emoji = user_row(&db, "union-emoji").await.expect("emoji user");
        assert_eq!(emoji.display_name.as_deref(), Some(EMOJI_RTL_NAME));
        assert_eq!(emoji.title.as_deref(), Some(RTL_TITLE));
        // Multi-department: one row.
        assert_eq!(
            landed
                .iter()
                .filter(|l| l.name == "union-everywhere")
                .count(),
            1,
            "{}",
            t.label()
        );
        // The others: an exact row or a record error of their own, never half of both.
        for (userid, name) in [("hostile-long", "union-long"), ("hostile-nul", "union-nul")] {
            match user_row(&db, name).await {
                Some(row) => {
                    assert!(
                        !record_error_for(&report, userid),
                        "{}: {userid} both landed and failed",
                        t.label()
                    );
                    let title = row.title.clone().unwrap_or_default();
                    assert!(!title.contains('\u{0}'), "{}: NUL stored", t.label());
                    if userid == "hostile-long" {
                        assert_eq!(row.title.as_deref(), Some("t".repeat(600).as_str()));
                        assert_eq!(row.display_name.as_deref(), Some("長".repeat(600).as_str()));
                    } else {
                        assert_eq!(title, "chief\u{0}officer".replace('\u{0}', ""));
                    }
                }
                None => assert!(
                    record_error_for(&report, userid),
                    "{}: {userid} neither landed nor was reported: {:?}",
                    t.label(),
                    report.errors
                ),
            }
        }
        // The bare user has no unionid for `Name`: a record error, no row.
        assert!(
            record_error_for(&report, "hostile-bare")
                || landed
                    .iter()
                    .any(|l| l.id.as_deref() == Some("hostile-bare")),
            "{}: {:?}",
            t.label(),
            report.errors
        );
        let expected_min = generated + 2; // emoji and everywhere at least
        assert!(landed.len() >= expected_min, "{}", t.label());

        // The next run: the same decisions, nothing rewritten.
        let again = full_run(&db, &syncer, &sim).await;
        assert_eq!(again.status, report.status, "{}", again.render_text());
        assert_eq!(again.counts.created, 0, "{}", again.render_text());
        assert_eq!(again.counts.updated, 0, "{}", again.render_text());
        db.close().await.unwrap();
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_number_used_as_name_that_collides_with_another_user_creates_neither_and_hijacks_nobody()
 {
    on_every_engine(async |t: &TestDb| {
        let sim = start(40, 3).await;
        let org = sim.org();
        let victim = org
            .users
            .iter()
            .find(|u| {
                u.profile
                    .job_number
                    .as_deref()
                    .is_some_and(|j| !j.is_empty())
            })
            .unwrap()
            .clone();
        let taken = victim.profile.job_number.clone().unwrap();
        // The default mapping names users by job number.
        let columns = syncerd::db::DEFAULT_TABLE_COLUMNS;
        assert!(columns.contains(r#""name":"job_number""#));
        let (db, syncer) = setup(t, Some(columns)).await;

        // Two newcomers in one run whose job numbers collide: neither is created, both are
        // reported, everyone else lands.
        let twin = org
            .users
            .iter()
            .filter(|u| u.profile.userid != victim.profile.userid)
            .find_map(|u| u.profile.job_number.clone().filter(|j| !j.is_empty()))
            .unwrap();
        let mut first = profile("twin-a", "union-twin-a", "Twin A", vec![1]);
        first.job_number = Some(format!("{twin}-dup"));
        add(&sim, first);
        let mut second = profile("twin-b", "union-twin-b", "Twin B", vec![1]);
        second.job_number = Some(format!("{twin}-dup"));
        add(&sim, second);
        let report = full_run(&db, &syncer, &sim).await;
        assert_eq!(
            report.status,
            RunStatus::Partial,
            "{}",
            report.render_text()
        );
        let landed = users(&db).await;
        assert!(
            !landed.iter().any(|u| u.name == format!("{twin}-dup")),
            "{}: {}",
            t.label(),
            report.render_text()
        );
        for userid in ["twin-a", "twin-b"] {
            assert!(
                report
                    .errors
                    .iter()
                    .any(|e| e.userid.as_deref() == Some(userid)),
                "{}: {userid} not reported: {}",
                t.label(),
                report.render_text()
            );
        }
        for u in &org.users {
            let job = u.profile.job_number.as_deref().unwrap_or_default();
            // An empty job number falls back to the userid.
            let name = if job.is_empty() {
                u.profile.userid.as_str()
            } else {
                job
            };
            assert!(
                landed.iter().any(|l| l.name == name),
                "{}: {} ({name}) missing",
                t.label(),
                u.profile.userid
            );
        }
        let victim_before = user_row(&db, &taken).await.expect("the victim landed");
        assert_eq!(
            victim_before.id.as_deref(),
            Some(victim.profile.userid.as_str())
        );

        // A newcomer whose job number is the existing user's Casdoor name: the existing user
        // is not taken over, the newcomer is not created, the run says so.
        let mut intruder = profile("intruder", "union-intruder", "Intruder", vec![1]);
        intruder.job_number = Some(taken.clone());
        add(&sim, intruder);
        let report = full_run(&db, &syncer, &sim).await;
        assert_ne!(report.status, RunStatus::Failed, "{}", report.render_text());
        let victim_after = user_row(&db, &taken).await.expect("the victim stays");
        assert_eq!(
            victim_after,
            victim_before,
            "{}: the existing user was rewritten: {}",
            t.label(),
            report.render_text()
        );
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.userid.as_deref() == Some("intruder")),
            "{}: the intruder is not reported: {}",
            t.label(),
            report.render_text()
        );
        assert_eq!(
            users(&db).await.len(),
            landed.len(),
            "{}: nobody was added",
            t.label()
        );
        db.close().await.unwrap();
        sim.shutdown().await.unwrap();
    })
    .await;
}
