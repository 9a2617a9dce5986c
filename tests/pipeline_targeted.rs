#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Targeted runs (the run behind a DingTalk event): after a full run, a run that looks up only
//! the users an event names writes exactly what a full run would write for them and nothing
//! else, on every available engine, with the simulator as DingTalk.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::pipeline::{
    ORG, SECRET, add_syncer, apply, assert_status, context, sync_settings, users,
};
use common::{TestDb, on_every_engine, runs_of};
use syncerd::config::{LeaverPolicy, SyncSettings};
use syncerd::db::entities::{group, user};
use syncerd::db::{self, Db, RunMode, RunStatus, RunTrigger, SyncerRow};
use syncerd::dingtalk::{Client, ClientConfig, Endpoint};
use syncerd::launch::lease::LeaseTiming;
use syncerd::launch::{Holder, launch};
use syncerd::pipeline::{RunOptions, RunReport, Targets, run_once, run_targets};
use syncerd::secret::Secret;
use syncerd::simulator::{Faults, SimUser, Simulator, SimulatorConfig, SimulatorHandle, UserPatch};
use syncerd::syncer::ValidSyncer;

async fn start(users: usize) -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users,
            departments: 5,
            seed: 11,
            app_secret: Secret::new(SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

fn client(sim: &SimulatorHandle) -> Client {
    Client::new(ClientConfig {
        api_base: sim.base_url(),
        qps_per_api: 500,
        max_concurrency: 8,
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..ClientConfig::default()
    })
    .unwrap()
}

/// The test syncer with the simulator's App Key (its secret is the simulator's already).
async fn setup(t: &TestDb) -> (Db, SyncerRow) {
    let db = t.migrated().await;
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

async fn full_run(db: &Db, syncer: &SyncerRow, sim: &SimulatorHandle) -> RunReport {
    let ctx = context(db, sync_settings(50));
    let (client, credentials) = (client(sim), sim.credentials());
    run_once(&ctx, syncer, client.fetch_directory(&credentials), apply()).await
}

fn targets(user_ids: &[&str]) -> Targets {
    Targets {
        user_ids: user_ids.iter().map(|u| (*u).to_owned()).collect(),
        dept_ids: BTreeSet::new(),
    }
}

/// A targeted run as a caller makes it: the row validated once, under the syncer's lease.
async fn targeted_run(
    db: &Db,
    syncer: &SyncerRow,
    sim: &SimulatorHandle,
    targets: &Targets,
    sync: SyncSettings,
) -> RunReport {
    let ctx = context(db, sync);
    let valid: ValidSyncer = syncer.validate().unwrap();
    let opts = RunOptions::new(RunTrigger::Event, RunMode::Apply);
    let client = client(sim);
    let credentials = sim.credentials();
    let lookup = client.lookup_targets(&credentials, targets, opts.api_calls.clone());
    let holder = Holder {
        instance: ctx.instance.clone(),
        timing: LeaseTiming::for_reload_interval(Duration::from_secs(5)),
        db_timeout: Duration::from_secs(5),
        keeper: None,
    };
    let cancel = opts.cancel.clone();
    let run = run_targets(&ctx, &valid, targets, lookup, opts);
    launch(db, &valid, &holder, &cancel, run).await.unwrap()
}

/// The row of DingTalk user `userid`.
fn row_of<'a>(rows: &'a [user::Model], userid: &str) -> &'a user::Model {
    rows.iter()
        .find(|u| u.dingtalk.as_deref() == Some(userid))
        .unwrap_or_else(|| panic!("no row for {userid}"))
}

/// Every row but `userid`'s is as it was.
fn assert_others_untouched(
    t: &TestDb,
    before: &[user::Model],
    after: &[user::Model],
    userid: &str,
) {
    let others = |rows: &[user::Model]| -> Vec<user::Model> {
        rows.iter()
            .filter(|u| u.dingtalk.as_deref() != Some(userid))
            .cloned()
            .collect()
    };
    let (before, after) = (others(before), others(after));
    assert_eq!(before.len(), after.len(), "{}", t.label());
    for (b, a) in before.iter().zip(&after) {
        assert!(b == a, "{}: {:?} changed to {:?}", t.label(), b, a);
    }
}

/// topapi calls (everything but `gettoken`) the simulator answered since its stats were reset.
fn topapi_calls(sim: &SimulatorHandle) -> u64 {
    let stats = sim.stats();
    stats.total_calls() - stats.endpoint(Endpoint::GetToken).calls
}

/// The last run of the test syncer: its trigger, status and API calls.
async fn last_run(db: &Db, syncer: &SyncerRow) -> db::RunRow {
    runs_of(db, &syncer.name)
        .await
        .into_iter()
        .max_by_key(|r| r.id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_changed_user_updates_exactly_that_row() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(30).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let org = sim.org();
        let (changed, also_changed) = (&org.users[3].profile.userid, &org.users[4].profile.userid);
        let patch = |title: &str| UserPatch {
            title: Some(title.to_owned()),
            ..UserPatch::default()
        };
        sim.update_user(changed, patch("事件之后的职位")).unwrap();
        // Changed in DingTalk too, but no event names it: a targeted run leaves it alone.
        sim.update_user(also_changed, patch("无人提及")).unwrap();
        let before = users(&db).await;
        sim.reset_stats();

        let report =
            targeted_run(&db, &syncer, &sim, &targets(&[changed]), sync_settings(50)).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.updated, 1, "{}", report.render_text());
        assert_eq!(report.counts.fetched, 1);
        assert!(topapi_calls(&sim) <= 2, "{}", t.label());
        assert_eq!(sim.stats().endpoint(Endpoint::UserGet).calls, 1);
        let after = users(&db).await;
        assert_eq!(
            row_of(&after, changed).title.as_deref(),
            Some("事件之后的职位")
        );
        assert_ne!(
            row_of(&after, also_changed).title.as_deref(),
            Some("无人提及")
        );
        assert_others_untouched(t, &before, &after, changed);

        let run = last_run(&db, &syncer).await;
        assert_eq!(run.trigger, RunTrigger::Event, "{}", t.label());
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.api_calls, report.api_calls);
        assert_eq!(run.counts.updated, 1);
        assert!(report.api_calls >= 1);
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_new_user_creates_it_with_its_memberships() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(20).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let dept = sim.org().departments[2].dept_id;
        let mut newbie = SimUser::new("newbie01", "新来的", vec![dept]);
        newbie.profile.unionid = Some("union-newbie01".to_owned());
        newbie.profile.email = Some("newbie01@example.com".to_owned());
        sim.add_user(newbie).unwrap();
        let before = users(&db).await;
        sim.reset_stats();

        let report =
            targeted_run(&db, &syncer, &sim, &targets(&["newbie01"]), sync_settings(50)).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.created, 1, "{}", report.render_text());
        assert!(topapi_calls(&sim) <= 2);
        let after = users(&db).await;
        assert_eq!(after.len(), before.len() + 1);
        let row = row_of(&after, "newbie01");
        assert_eq!(row.email.as_deref(), Some("newbie01@example.com"));
        let group = format!("{ORG}/{dept}");
        assert!(
            row.groups.as_deref().is_some_and(|g| g.contains(&group)),
            "{}: {:?}",
            t.label(),
            row.groups
        );
        let rules = common::pipeline::count(
            t,
            &db,
            &format!(
                "SELECT COUNT(*) FROM casbin_user_rule WHERE ptype = 'g' AND v0 = '{ORG}/{}' AND v1 = 'group:{group}'",
                row.name
            ),
        )
        .await;
        assert_eq!(rules, 1, "{}", t.label());
        assert_others_untouched(t, &before, &after, "newbie01");
        sim.shutdown().await.unwrap();
    })
    .await;
}

/// DingTalk userids of the rows that are not forbidden (a leaver among them is forbidden by
/// the run; an inactive user is forbidden by the mapping already).
async fn not_forbidden(db: &Db) -> Vec<String> {
    users(db)
        .await
        .into_iter()
        .filter(|u| u.is_forbidden != Some(true))
        .filter_map(|u| u.dingtalk)
        .collect()
}

/// Links of this syncer's users in state `left`, for `userid`.
async fn left_links(t: &TestDb, db: &Db, userid: &str) -> i64 {
    common::pipeline::count(
        t,
        db,
        &format!(
            "SELECT COUNT(*) FROM syncer_link WHERE kind = 'user' AND external_id = '{userid}' AND state = 'left'"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_leaver_applies_the_leaver_policy_to_that_user_only() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(30).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let candidates = not_forbidden(&db).await;
        for (gone, policy) in [
            (&candidates[5], LeaverPolicy::Forbid),
            (&candidates[6], LeaverPolicy::Delete),
        ] {
            sim.remove_user(gone).unwrap();
            let before = users(&db).await;
            let sync = SyncSettings {
                leaver_policy: policy,
                ..sync_settings(50)
            };
            let report = targeted_run(&db, &syncer, &sim, &targets(&[gone]), sync).await;
            assert_status(t, &report, RunStatus::Succeeded);
            let after = users(&db).await;
            let row = row_of(&after, gone);
            if policy == LeaverPolicy::Forbid {
                assert_eq!(report.counts.forbidden, 1, "{}", report.render_text());
                assert_eq!(row.is_forbidden, Some(true), "{}", t.label());
            } else {
                assert_eq!(report.counts.deleted, 1, "{}", report.render_text());
                assert_eq!(row.is_deleted, Some(true), "{}", t.label());
            }
            assert_others_untouched(t, &before, &after, gone);
            assert_eq!(left_links(t, &db, gone).await, 1, "{}", t.label());
        }
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_leavers_over_the_limit_is_held_as_a_full_run_holds_it() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(40).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let gone: Vec<String> = sim.org().users[..25]
            .iter()
            .map(|u| u.profile.userid.clone())
            .collect();
        for userid in &gone {
            sim.remove_user(userid).unwrap();
        }
        let before = users(&db).await;
        let targets = Targets {
            user_ids: gone.iter().cloned().collect(),
            dept_ids: BTreeSet::new(),
        };
        // 25 of 40 owned users is over sync_settings' 50 %.
        let report = targeted_run(&db, &syncer, &sim, &targets, sync_settings(50)).await;
        assert_status(t, &report, RunStatus::Held);
        // Inactive users are forbidden by the mapping already: leaving changes nothing for them.
        let removals = report.counts.held_removals;
        assert!(removals > 20, "{}", report.render_text());
        assert_eq!(report.counts.forbidden, 0);
        assert_eq!(users(&db).await, before, "{}", t.label());

        // A full run (dry) holds the same removals.
        let ctx = context(&db, sync_settings(50));
        let (client, credentials) = (client(&sim), sim.credentials());
        let fetch = client.fetch_directory(&credentials);
        let full = run_once(&ctx, &syncer, fetch, common::pipeline::dry_run()).await;
        assert_status(t, &full, RunStatus::Held);
        assert_eq!(full.counts.held_removals, report.counts.held_removals);
        assert_eq!(full.held.is_some(), report.held.is_some());
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_makes_nobody_a_leaver_and_fails_the_run_with_its_calls_counted() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(20).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let candidates = not_forbidden(&db).await;
        let (gone, kept) = (&candidates[2], &candidates[3]);
        sim.remove_user(gone).unwrap();
        let before = users(&db).await;
        sim.reset_stats();
        sim.set_faults(Faults {
            bad_gateway_every: Some(1),
            ..Faults::default()
        })
        .unwrap();

        let report = targeted_run(
            &db,
            &syncer,
            &sim,
            &targets(&[gone, kept]),
            sync_settings(50),
        )
        .await;
        assert_status(t, &report, RunStatus::Failed);
        let message = report.message.clone().unwrap_or_default();
        assert!(message.contains("nobody was taken as gone"), "{message}");
        assert!(!message.contains(SECRET), "{message}");
        assert_eq!(users(&db).await, before, "{}", t.label());
        assert_eq!(left_links(t, &db, gone).await, 0);
        assert!(report.api_calls > 0);
        assert_eq!(report.api_calls, sim.stats().total_calls(), "{}", t.label());

        let run = last_run(&db, &syncer).await;
        assert_eq!(run.trigger, RunTrigger::Event);
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.api_calls, report.api_calls);
        let row = db::get_syncer(&db, &syncer.name).await.unwrap().unwrap();
        assert!(
            row.error_text.contains("nobody was taken as gone"),
            "{}: {}",
            t.label(),
            row.error_text
        );

        // Once DingTalk answers again, the same event applies.
        sim.set_faults(Faults::default()).unwrap();
        let report = targeted_run(
            &db,
            &syncer,
            &sim,
            &targets(&[gone, kept]),
            sync_settings(50),
        )
        .await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.forbidden, 1, "{}", report.render_text());
        assert_others_untouched(t, &before, &users(&db).await, gone);
        sim.shutdown().await.unwrap();
    })
    .await;
}

/// Every group of `ORG`, by name.
async fn groups(db: &Db) -> Vec<group::Model> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    group::Entity::find()
        .filter(group::Column::Owner.eq(ORG))
        .order_by_asc(group::Column::Name)
        .all(db.conn())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_departments_updates_their_groups_and_keeps_a_gone_ones_group() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(20).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let departments = sim.org().departments;
        let (renamed, other) = (departments[1].dept_id, departments[2].dept_id);
        sim.rename_department(renamed, "改名之后").unwrap();
        sim.rename_department(other, "没有事件").unwrap();
        let before_users = users(&db).await;
        let before = groups(&db).await;

        let targets = Targets {
            user_ids: BTreeSet::new(),
            dept_ids: [renamed].into(),
        };
        let report = targeted_run(&db, &syncer, &sim, &targets, sync_settings(50)).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.groups_updated, 1, "{}", report.render_text());
        let after = groups(&db).await;
        for (b, a) in before.iter().zip(&after) {
            if a.name == renamed.to_string() {
                assert_eq!(a.display_name.as_deref(), Some("改名之后"));
                assert_eq!(a.parent_id, b.parent_id, "{}", t.label());
            } else {
                assert!(a == b, "{}: {:?} became {:?}", t.label(), b, a);
            }
        }
        assert_eq!(users(&db).await, before_users);

        // A department DingTalk no longer has (60003): its group is kept, as a full run keeps it.
        sim.set_department_error(renamed, Some(60003));
        let report = targeted_run(&db, &syncer, &sim, &targets, sync_settings(50)).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert!(
            report
                .notices
                .iter()
                .any(|n| n.contains(&format!("department {renamed} is gone"))),
            "{}",
            report.render_text()
        );
        assert_eq!(groups(&db).await, after, "{}", t.label());
        assert_eq!(users(&db).await, before_users);
        sim.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_read_gone_as_none_and_everything_else_as_an_error() {
    use syncerd::dingtalk::CallCounter;
    let sim = start(10).await;
    let (client, creds, counter) = (client(&sim), sim.credentials(), CallCounter::new());
    let org = sim.org();
    let (present, leaver) = (&org.users[1].profile.userid, &org.users[2].profile.userid);
    let user = client.get_user(&creds, present, &counter).await.unwrap();
    let user = user.expect("a present user is found");
    assert_eq!(&user.userid, present);
    assert_eq!(user.dept_id_list, org.users[1].profile.dept_id_list);
    assert!(user.unionid.is_some() && user.active.is_some());

    sim.remove_user(leaver).unwrap();
    assert_eq!(client.get_user(&creds, leaver, &counter).await, Ok(None));
    // A userid DingTalk never had is a bad request (33012), not a leaver.
    assert!(
        client
            .get_user(&creds, "never-was", &counter)
            .await
            .is_err()
    );

    let dept = &org.departments[1];
    let found = client.get_department(&creds, dept.dept_id, &counter).await;
    let found = found.unwrap().expect("the department exists");
    assert_eq!(
        (found.name.as_deref(), found.parent_id),
        (Some(dept.name.as_str()), dept.parent_id)
    );
    assert_eq!(
        client.get_department(&creds, 987_654, &counter).await,
        Ok(None)
    );
    sim.set_faults(Faults {
        bad_gateway_every: Some(1),
        ..Faults::default()
    })
    .unwrap();
    assert!(client.get_user(&creds, present, &counter).await.is_err());
    assert!(client.get_department(&creds, 1, &counter).await.is_err());
    // Every call is counted, the token's and the retries included.
    assert_eq!(counter.get(), sim.stats().total_calls());
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_leave_arriving_in_small_bursts_is_held_once_the_event_runs_add_up_to_the_limit() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let sim = start(40).await;
        assert_status(t, &full_run(&db, &syncer, &sim).await, RunStatus::Succeeded);
        let active: Vec<String> = sim
            .org()
            .users
            .iter()
            .filter(|u| u.profile.active == Some(true))
            .map(|u| u.profile.userid.clone())
            .collect();
        assert!(active.len() >= 18, "{}", active.len());
        let limits = SyncSettings {
            max_removals: 10,
            max_removal_percent: 100.0,
            ..sync_settings(50)
        };
        let leave = |ids: &[String]| {
            for id in ids {
                sim.remove_user(id).unwrap();
            }
            Targets {
                user_ids: ids.iter().cloned().collect(),
                dept_ids: BTreeSet::new(),
            }
        };

        // Six leavers: under the limit of ten.
        let first = leave(&active[..6]);
        let report = targeted_run(&db, &syncer, &sim, &first, limits.clone()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.forbidden, 6, "{}", t.label());

        // Six more: twelve since the last full run, as one full run would have seen them.
        let second = leave(&active[6..12]);
        let before = users(&db).await;
        let report = targeted_run(&db, &syncer, &sim, &second, limits.clone()).await;
        assert_status(t, &report, RunStatus::Held);
        let held = report.held.clone().unwrap_or_default();
        assert!(
            held.contains("counted with 6 made by event runs since the last full run"),
            "{held}"
        );
        assert_eq!(users(&db).await, before, "{}", t.label());

        // A full run judges the directory whole again (six leavers: under the limit)...
        let ctx = context(&db, limits.clone());
        let (client, credentials) = (client(&sim), sim.credentials());
        let full = run_once(&ctx, &syncer, client.fetch_directory(&credentials), apply()).await;
        assert_status(t, &full, RunStatus::Succeeded);
        assert_eq!(full.counts.forbidden, 6, "{}", t.label());
        // ...and the count starts again after it.
        let third = leave(&active[12..18]);
        let report = targeted_run(&db, &syncer, &sim, &third, limits).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.forbidden, 6, "{}", t.label());
        sim.shutdown().await.unwrap();
    })
    .await;
}
