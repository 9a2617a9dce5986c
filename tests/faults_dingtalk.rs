#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile DingTalk answers through whole runs (the real client, the simulator, `run_once` and
//! the database), on every engine: what lands must equal a clean run, and an incomplete or
//! empty directory must never forbid anyone.

mod common;

use std::time::Duration;

use common::pipeline::{
    ORG, add_syncer, apply, assert_status, context, count, rows, sync_settings, users,
};
use common::{TestDb, on_every_engine};
use syncerd::db::entities::user;
use syncerd::db::{self, Db, RunStatus, SyncerRow};
use syncerd::dingtalk::{Client, ClientConfig};
use syncerd::pipeline::{RunReport, run_once};
use syncerd::secret::Secret;
use syncerd::simulator::{BanStyle, Simulator, SimulatorConfig, SimulatorHandle};

/// The simulator's limit per API, as DingTalk's (20) is for the real service.
const SIM_QPS: u32 = 20;
/// Users of the faulty-run organization.
const USERS: u64 = 100;

async fn start(users: usize, departments: usize) -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users,
            departments,
            seed: 7,
            app_secret: Secret::new(common::pipeline::SECRET),
            qps: Some(SIM_QPS),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// The client as the daemon would configure it (15 calls per second per API, under the
/// simulator's 20), with short delays and enough attempts to ride out heavy fault rates.
fn client_config(sim: &SimulatorHandle) -> ClientConfig {
    ClientConfig {
        api_base: sim.base_url(),
        qps_per_api: 15,
        max_concurrency: 8,
        request_timeout: Duration::from_secs(5),
        max_attempts: 15,
        ip_ban_pause: Duration::from_millis(300),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::default()
    }
}

fn client(sim: &SimulatorHandle) -> Client {
    Client::new(client_config(sim)).unwrap()
}

/// One whole run of `syncer` against the simulator.
async fn full_run(db: &Db, syncer: &SyncerRow, sim: &SimulatorHandle) -> RunReport {
    let ctx = context(db, sync_settings(50));
    let client = client(sim);
    let credentials = sim.credentials();
    run_once(&ctx, syncer, client.fetch_directory(&credentials), apply()).await
}

async fn setup(t: &TestDb) -> (Db, SyncerRow) {
    let db = t.migrated().await;
    // The simulator's App Key; the row's secret is the one the simulator accepts.
    let syncer = add_syncer(&db).await;
    t.execute(
        &db,
        &format!(
            "UPDATE syncer SET {} = '{}' WHERE name = '{}'",
            t.quote("user"),
            syncerd::simulator::DEFAULT_APP_KEY,
            syncer.name
        ),
    )
    .await;
    let syncer = db::get_syncer(&db, &syncer.name).await.unwrap().unwrap();
    (db, syncer)
}

/// What a run decides about a user: everything but generated ids and timestamps.
fn fingerprint(u: &user::Model) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        u.name,
        u.external_id,
        u.display_name,
        u.email,
        u.phone,
        u.title,
        u.affiliation,
        u.avatar,
        u.is_forbidden,
        u.is_deleted,
        u.hash,
    )
}

async fn fingerprints(db: &Db) -> Vec<String> {
    users(db).await.iter().map(fingerprint).collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_gateway_pages_garbage_revoked_tokens_and_an_ip_ban_land_what_a_clean_run_lands()
{
    let sim = start(USERS as usize, 10).await;
    on_every_engine(async |t: &TestDb| {
        // The reference: a clean run into one database.
        let (clean_db, clean_syncer) = setup(t).await;
        let clean = full_run(&clean_db, &clean_syncer, &sim).await;
        assert_status(t, &clean, RunStatus::Succeeded);
        assert_eq!(clean.counts.created, USERS, "{}", t.label());

        // The same organization through every fault at once into another.
        let other = t.another().await;
        let (db, syncer) = setup(&other).await;
        let calm = sim.faults();
        let mut hostile = calm.clone();
        // Scheduled, not drawn: every kind is served at every Nth call that reaches it, and a
        // clean fetch of this organization alone makes 24 calls (token, root name, 11 listsub,
        // 11 pages), so each kind is met at least twice whatever the timing. No schedule hits
        // one call twice in a row, so no call comes near its 15 attempts.
        hostile.bad_gateway_every = Some(9);
        hostile.malformed_every = Some(8);
        hostile.busy_every = Some(7);
        hostile.throttle_every = Some(4);
        // Revocations far enough apart that a freshly fetched token is not revoked again
        // before its first use (the client gives up then, by design).
        hostile.invalidate_token_every = Some(24);
        sim.set_faults(hostile).unwrap();
        sim.reset_stats();
        // The first three calls (the token) meet the IP-ban page, however slow the machine.
        sim.ban_ip_next_calls(3, BanStyle::Html);
        let report = full_run(&db, &syncer, &sim).await;
        let stats = sim.stats();
        sim.set_faults(calm).unwrap();

        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.created, USERS, "{}", t.label());
        assert_eq!(report.counts.rows_rejected, 0, "{}", t.label());
        let served = |f: fn(&syncerd::simulator::SimEndpointStats) -> u64| -> u64 {
            stats.endpoints.values().map(f).sum()
        };
        // Every kind, on every engine, every time.
        for (what, n, at_least) in [
            ("throttled", served(|s| s.injected_throttle), 6),
            ("502 pages", served(|s| s.injected_bad_gateway), 2),
            ("garbled bodies", served(|s| s.injected_malformed), 2),
            ("busy", served(|s| s.injected_busy), 2),
            ("revoked tokens", served(|s| s.token_rejected), 1),
            ("IP-banned", served(|s| s.ip_banned), 3),
        ] {
            assert!(n >= at_least, "{}: {what}: {n}: {stats:?}", t.label());
        }
        assert_eq!(served(|s| s.ip_banned), 3, "{}", t.label());
        assert!(
            stats.max_calls_per_second() <= u64::from(SIM_QPS),
            "{}: {} calls in one second on one API",
            t.label(),
            stats.max_calls_per_second()
        );
        assert_eq!(stats.total_qps_rejected(), 0, "{}", t.label());

        assert_eq!(
            fingerprints(&db).await,
            fingerprints(&clean_db).await,
            "{}: the faulty run landed other users",
            t.label()
        );
        for table in ["group", "syncer_link", "casbin_user_rule"] {
            assert_eq!(
                rows(&other, &db, table).await,
                rows(t, &clean_db, table).await,
                "{}: {table}",
                t.label()
            );
        }
        // And the next calm run finds nothing to change.
        let again = full_run(&db, &syncer, &sim).await;
        assert_status(t, &again, RunStatus::Succeeded);
        assert_eq!(again.counts.unchanged, USERS, "{}", t.label());
        db.close().await.unwrap();
        other.cleanup().await;
        clean_db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

/// A leaf department with members, and those members' userids.
fn leaf_with_members(sim: &SimulatorHandle) -> (i64, Vec<String>) {
    let org = sim.org();
    let members = org.members_per_department();
    let leaf = org
        .departments
        .iter()
        .filter(|d| d.dept_id != 1)
        .filter(|d| {
            !org.departments
                .iter()
                .any(|c| c.parent_id == Some(d.dept_id))
        })
        .find(|d| members.get(&d.dept_id).copied().unwrap_or(0) > 0)
        .map(|d| d.dept_id)
        .expect("a leaf department with members");
    let only_there: Vec<String> = org
        .users
        .iter()
        .filter(|u| u.profile.dept_id_list.as_deref() == Some(&[leaf][..]))
        .map(|u| u.profile.userid.clone())
        .collect();
    (leaf, only_there)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_gone_mid_walk_makes_the_run_partial_and_forbids_none_of_its_missing_users() {
    let sim = start(120, 6).await;
    let (leaf, only_there) = leaf_with_members(&sim);
    assert!(!only_there.is_empty(), "the leaf has users of its own");
    on_every_engine(async |t: &TestDb| {
        let (db, syncer) = setup(t).await;
        let first = full_run(&db, &syncer, &sim).await;
        assert_status(t, &first, RunStatus::Succeeded);
        let before = fingerprints(&db).await;
        // The simulator has deactivated users, forbidden from the first import on.
        let forbidden_before = forbidden(t, &db).await;

        // The walk meets 60003 (department not found) for the leaf: its users are not fetched.
        sim.set_department_error(leaf, Some(60003));
        let report = full_run(&db, &syncer, &sim).await;
        sim.set_department_error(leaf, None);
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(report.counts.forbidden, 0, "{}", t.label());
        assert_eq!(forbidden(t, &db).await, forbidden_before, "{}", t.label());
        assert!(
            report.errors.iter().any(|e| e.message.contains("60003")),
            "{}: {:?}",
            t.label(),
            report.errors
        );
        // Nothing about anyone changed: the missing users are still there, as they were.
        assert_eq!(fingerprints(&db).await, before, "{}", t.label());
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Partial, "{}", t.label());

        // The department is back: the next run is complete and changes nothing.
        let next = full_run(&db, &syncer, &sim).await;
        assert_status(t, &next, RunStatus::Succeeded);
        assert_eq!(next.counts.unchanged, 120, "{}", t.label());
        assert_eq!(fingerprints(&db).await, before, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_fails_part_way_records_the_calls_it_made() {
    let sim = start(120, 6).await;
    let (leaf, _) = leaf_with_members(&sim);
    on_every_engine(async |t: &TestDb| {
        let (db, syncer) = setup(t).await;
        // The app may not list the leaf (60011, a missing permission): the walk stops there,
        // after the calls before it.
        sim.set_department_error(leaf, Some(60011));
        sim.reset_stats();
        // One call at a time, so that every call the simulator answered has been counted when
        // the fetch stops.
        let client = Client::new(ClientConfig {
            max_concurrency: 1,
            ..client_config(&sim)
        })
        .unwrap();
        let ctx = context(&db, sync_settings(50));
        let credentials = sim.credentials();
        let fetch = client.fetch_directory(&credentials);
        let report = run_once(&ctx, &syncer, fetch, apply()).await;
        let served = sim.stats().total_calls();
        sim.set_department_error(leaf, None);

        assert_status(t, &report, RunStatus::Failed);
        let message = report.message.clone().unwrap_or_default();
        assert!(message.contains("60011"), "{}: {message}", t.label());
        assert!(served > 2, "{}: {served} calls", t.label());
        assert_eq!(report.api_calls, served, "{}", t.label());
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Failed, "{}", t.label());
        assert_eq!(row.api_calls, served, "{}: the history's count", t.label());
        assert!(
            report
                .render_text()
                .contains(&format!("{served} DingTalk API calls")),
            "{}",
            report.render_text()
        );
        assert_eq!(rows(t, &db, "user").await, 0, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_emptied_of_every_user_forbids_nobody() {
    on_every_engine(async |t: &TestDb| {
        // A simulator of its own per engine: this one loses every user.
        let sim = start(60, 4).await;
        let (db, syncer) = setup(t).await;
        let first = full_run(&db, &syncer, &sim).await;
        assert_status(t, &first, RunStatus::Succeeded);
        let before = fingerprints(&db).await;
        // The simulator has deactivated users, forbidden from the first import on.
        let forbidden_before = forbidden(t, &db).await;
        assert_eq!(before.len(), 60);

        let everyone: Vec<String> = sim
            .org()
            .users
            .iter()
            .map(|u| u.profile.userid.clone())
            .collect();
        for userid in &everyone {
            sim.remove_user(userid).unwrap();
        }
        let report = full_run(&db, &syncer, &sim).await;
        assert_ne!(report.status, RunStatus::Failed, "{}", report.render_text());
        assert_eq!(report.counts.forbidden, 0, "{}", t.label());
        assert_eq!(forbidden(t, &db).await, forbidden_before, "{}", t.label());
        assert_eq!(fingerprints(&db).await, before, "{}", t.label());
        db.close().await.unwrap();
        sim.shutdown().await.unwrap();
    })
    .await;
}
