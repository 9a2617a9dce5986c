#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The apply stage against real databases (SQLite always; MariaDB and PostgreSQL when
//! `SYNCERD_TEST_MYSQL_URL` / `SYNCERD_TEST_POSTGRES_URL` are set), driven through
//! `run_with_directory` with hand-built directories.

mod common;

use std::collections::BTreeMap;

use chrono::DateTime;
use common::directory::{self, unionid, user_mut, userid, without};
use common::pipeline::{
    ORG, SYNCER, add_syncer, apply, assert_status, context, count, rows, run, setup, sync_settings,
    unique_email_taken_by_outsider, user_row, users,
};
use common::{TestDb, on_every_engine};
use md5::{Digest, Md5};
use sea_orm::sea_query::ColumnType;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IdenStatic, IntoActiveModel, Iterable, QueryFilter,
    Value,
};
use syncerd::config::Engine;
use syncerd::db::entities::{casbin_user_rule, group, syncer_change, syncer_link, user};
use syncerd::db::{Db, RunStatus};
use syncerd::dingtalk::types::{Directory, DirectoryUser};
use syncerd::pipeline::{ErrorKind, RunContext};

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Casdoor's syncer hash of a user under the stock mapping (spec §2.4).
fn stock_hash(u: &DirectoryUser) -> String {
    let p = &u.profile;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let forbidden = if p.active == Some(true) { "0" } else { "1" };
    md5_hex(&format!(
        "{}|{}|{}|{}|{}|{}|{}|{forbidden}",
        p.userid,
        s(&p.unionid),
        s(&p.name),
        s(&p.email),
        s(&p.mobile),
        s(&p.avatar),
        s(&p.title)
    ))
}

fn groups_json(u: &DirectoryUser) -> String {
    let entries: Vec<String> = u.seen_in.iter().map(|d| format!("\"{ORG}/{d}\"")).collect();
    format!("[{}]", entries.join(","))
}

fn text(s: &str) -> Value {
    Value::String(Some(s.to_owned()))
}

/// The value Casdoor's DingTalk syncer writes into `column` for user `u` (spec §2.1, §2.3),
/// with syncerd's `hash = pre_hash = syncer hash`.
fn expected_insert_value(column: user::Column, u: &DirectoryUser, created: &str) -> Value {
    let p = &u.profile;
    let opt = |v: &Option<String>| text(v.as_deref().unwrap_or_default());
    match column.as_str() {
        "owner" => text(ORG),
        "name" => opt(&p.unionid),
        "created_time" | "updated_time" => text(created),
        "id" | "dingtalk" => text(&p.userid),
        "type" => text("normal-user"),
        "display_name" => opt(&p.name),
        "email" => opt(&p.email),
        "phone" => opt(&p.mobile),
        "avatar" => opt(&p.avatar),
        "title" => opt(&p.title),
        "is_forbidden" => Value::Bool(Some(p.active != Some(true))),
        "hash" | "pre_hash" => text(&stock_hash(u)),
        "register_type" => text("Add Users"),
        "register_source" => text(&format!("{ORG}/{SYNCER}")),
        "groups" => text(&groups_json(u)),
        "properties" => text("{}"),
        "address" => text("[]"),
        "recovery_codes" | "face_ids" | "cart" | "roles" | "permissions" | "mfa_items"
        | "application_scopes" => text("null"),
        _ => match column.def().get_column_type() {
            ColumnType::Boolean => Value::Bool(Some(false)),
            ColumnType::Integer => Value::Int(Some(0)),
            ColumnType::Double => Value::Double(Some(0.0)),
            ColumnType::Blob | ColumnType::VarBinary(_) | ColumnType::Binary(_) => {
                Value::Bytes(Some(b"null".to_vec()))
            }
            _ => text(""),
        },
    }
}

/// Asserts that the stored row of `u` is exactly what Casdoor would have inserted.
fn assert_casdoor_shaped(t: &TestDb, row: &user::Model, u: &DirectoryUser) {
    let created = row.created_time.clone().unwrap_or_default();
    let parsed = DateTime::parse_from_rfc3339(&created);
    assert!(
        parsed.is_ok() && !created.contains('.'),
        "{}: created_time {created:?} is RFC 3339 without fractions",
        t.label()
    );
    let active = row.clone().into_active_model();
    let mut checked = 0;
    for column in user::Column::iter() {
        let stored = active.get(column).into_value();
        let expected = expected_insert_value(column, u, &created);
        assert_eq!(
            stored,
            Some(expected),
            "{}: column {} of {}",
            t.label(),
            column.as_str(),
            u.profile.userid
        );
        checked += 1;
    }
    assert_eq!(checked, 181);
}

#[tokio::test]
async fn first_import_of_2000_users_lands_casdoor_shaped_users_groups_and_memberships() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(500));
        let dir = directory::directory(2000, 40);

        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let c = report.counts;
        assert_eq!(
            (c.fetched, c.created, c.updated, c.unchanged),
            (2000, 2000, 0, 0),
            "{}",
            t.label()
        );
        assert_eq!(c.groups_created, 41, "{}", t.label());
        assert_eq!(c.memberships_changed, 2000, "{}", t.label());
        assert_eq!(report.api_calls, dir.total_calls());
        assert!(report.errors.is_empty(), "{:?}", report.errors);

        assert_eq!(rows(t, &db, "user").await, 2000, "{}", t.label());
        for i in [0, 1, 9, 7, 1234, 1999] {
            let u = &dir.users[i];
            let row = user_row(&db, &unionid(i)).await.expect("user row");
            assert_casdoor_shaped(t, &row, u);
        }

        // Groups: a tree rooted at the organization, only the root a top group.
        let groups = group::Entity::find()
            .filter(group::Column::Owner.eq(ORG))
            .all(db.conn())
            .await
            .unwrap();
        assert_eq!(groups.len(), 41, "{}", t.label());
        let by_name: BTreeMap<&str, &group::Model> =
            groups.iter().map(|g| (g.name.as_str(), g)).collect();
        for d in &dir.departments {
            let g = by_name[d.dept_id.to_string().as_str()];
            let (parent, top, display) = match d.parent_id {
                None => (ORG.to_owned(), true, ORG.to_owned()),
                Some(p) => (p.to_string(), false, d.name.clone().unwrap()),
            };
            assert_eq!(
                g.parent_id.as_deref(),
                Some(parent.as_str()),
                "{}",
                t.label()
            );
            assert_eq!(g.is_top_group, Some(top), "{} {}", t.label(), g.name);
            assert_eq!(g.display_name.as_deref(), Some(display.as_str()));
            assert_eq!(g.r#type.as_deref(), Some("department"));
            assert_eq!(g.is_enabled, Some(true));
            assert_eq!(g.created_time, g.updated_time);
            assert!(g.created_time.as_deref().is_some_and(|c| !c.is_empty()));
            assert_eq!(g.children.as_deref(), Some("null"));
            assert_eq!(g.properties.as_deref(), Some("null"));
            assert_eq!(g.gid_number, Some(0));
            assert_eq!(
                (g.manager.as_deref(), g.title.as_deref(), g.key.as_deref()),
                (Some(""), Some(""), Some(""))
            );
        }

        // Memberships: one casbin `g` row per (user, department), matching user.groups.
        let memberships: usize = dir.users.iter().map(|u| u.seen_in.len()).sum();
        assert_eq!(
            rows(t, &db, "casbin_user_rule").await,
            memberships as i64,
            "{}",
            t.label()
        );
        let u = &dir.users[7];
        let rules = casbin_user_rule::Entity::find()
            .filter(casbin_user_rule::Column::V0.eq(format!("{ORG}/{}", unionid(7))))
            .all(db.conn())
            .await
            .unwrap();
        let mut v1s: Vec<String> = rules.iter().map(|r| r.v1.clone()).collect();
        v1s.sort();
        let mut want: Vec<String> = u
            .seen_in
            .iter()
            .map(|d| format!("group:{ORG}/{d}"))
            .collect();
        want.sort();
        assert_eq!(v1s, want, "{}", t.label());
        for r in &rules {
            assert_eq!(r.ptype, "g");
            assert!(
                [&r.v2, &r.v3, &r.v4, &r.v5].iter().all(|v| v.is_empty()),
                "{r:?}"
            );
        }

        // Ownership: one link per user and per group, last seen in this run.
        assert_eq!(rows(t, &db, "syncer_link").await, 2041, "{}", t.label());
        let link = syncer_link::Entity::find()
            .filter(syncer_link::Column::ExternalId.eq(userid(5)))
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(link.casdoor_name, unionid(5));
        assert_eq!(link.state, "present");
        assert_eq!(link.content_hash, stock_hash(&dir.users[5]));
        assert_eq!(link.first_seen_run, report.run_id);
        assert_eq!(link.last_seen_run, report.run_id);
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_immediate_second_run_writes_no_row_and_reports_all_unchanged() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(300, 12);
        let first = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &first, RunStatus::Succeeded);

        let tables = ["user", "group", "casbin_user_rule", "syncer_link", "syncer"];
        let before = t.dump_tables(&db, &tables).await;
        let second = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &second, RunStatus::Succeeded);
        let c = second.counts;
        assert_eq!(
            (c.created, c.updated, c.unchanged, c.forbidden),
            (0, 0, 300, 0),
            "{}",
            t.label()
        );
        assert_eq!(
            (c.groups_created, c.groups_updated, c.memberships_changed),
            (0, 0, 0)
        );
        assert_eq!(t.dump_tables(&db, &tables).await, before, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn one_title_change_updates_exactly_that_column_and_the_hashes_and_updated_time() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let mut dir = directory::directory(50, 5);
        run(&ctx, &syncer, &dir, apply()).await;
        // Make every row's updated_time old, so a write is visible whatever the clock says.
        t.execute(
            &db,
            &format!(
                "UPDATE {} SET updated_time = '2020-01-01T00:00:00Z'",
                t.quote("user")
            ),
        )
        .await;
        let before = users(&db).await;

        user_mut(&mut dir, 17).title = Some("高级工程师".to_owned());
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(
            (report.counts.updated, report.counts.unchanged),
            (1, 49),
            "{}",
            t.label()
        );

        let after = users(&db).await;
        assert_eq!(before.len(), after.len());
        for (old, new) in before.iter().zip(&after) {
            let (a, b) = (
                old.clone().into_active_model(),
                new.clone().into_active_model(),
            );
            let changed: Vec<&str> = user::Column::iter()
                .filter(|c| a.get(*c).into_value() != b.get(*c).into_value())
                .map(|c| c.as_str())
                .collect();
            if old.name == unionid(17) {
                assert_eq!(
                    changed,
                    ["updated_time", "title", "hash", "pre_hash"],
                    "{}",
                    t.label()
                );
                assert_eq!(new.title.as_deref(), Some("高级工程师"));
                assert_eq!(
                    new.hash.as_deref(),
                    Some(stock_hash(&dir.users[17]).as_str())
                );
                assert_eq!(new.hash, new.pre_hash);
                assert_ne!(new.updated_time.as_deref(), Some("2020-01-01T00:00:00Z"));
            } else {
                assert!(
                    changed.is_empty(),
                    "{}: {} changed {changed:?}",
                    t.label(),
                    old.name
                );
            }
        }
        db.close().await.unwrap();
    })
    .await;
}

/// A minimal Casdoor `token` table.
async fn create_token_table(t: &TestDb, db: &Db) {
    t.execute(
        db,
        &format!(
            "CREATE TABLE token (owner VARCHAR(100) NOT NULL, name VARCHAR(100) NOT NULL, \
             organization VARCHAR(100), {} VARCHAR(100), expires_in INT, PRIMARY KEY (owner, name))",
            t.quote("user")
        ),
    )
    .await;
}

async fn token_expiry(t: &TestDb, db: &Db, name: &str) -> i64 {
    let bigint = if t.engine() == Engine::MySql {
        "SIGNED"
    } else {
        "BIGINT"
    };
    count(
        t,
        db,
        &format!("SELECT CAST(expires_in AS {bigint}) FROM token WHERE name = '{name}'"),
    )
    .await
}

#[tokio::test]
async fn a_leaver_is_forbidden_with_its_tokens_expired_and_a_rehire_is_unforbidden() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        create_token_table(t, &db).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(20, 3);
        run(&ctx, &syncer, &dir, apply()).await;
        for (token, user) in [("t-leaver", unionid(4)), ("t-stayer", unionid(5))] {
            t.execute(
                &db,
                &format!(
                    "INSERT INTO token (owner, name, organization, {}, expires_in) \
                     VALUES ('admin', '{token}', '{ORG}', '{user}', 7200)",
                    t.quote("user")
                ),
            )
            .await;
        }

        let report = run(&ctx, &syncer, &without(&dir, &[4]), apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(
            (report.counts.forbidden, report.counts.unchanged),
            (1, 19),
            "{}",
            t.label()
        );
        let leaver = user_row(&db, &unionid(4)).await.unwrap();
        assert_eq!(leaver.is_forbidden, Some(true), "{}", t.label());
        assert_eq!(token_expiry(t, &db, "t-leaver").await, 0, "{}", t.label());
        assert_eq!(
            token_expiry(t, &db, "t-stayer").await,
            7200,
            "{}",
            t.label()
        );
        let link = syncer_link::Entity::find()
            .filter(syncer_link::Column::ExternalId.eq(userid(4)))
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (link.state.as_str(), link.left_action.as_deref()),
            ("left", Some("forbid"))
        );
        // A leaver's link is not "seen" by the run that found it gone.
        assert_ne!(link.last_seen_run, report.run_id);

        let back = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &back, RunStatus::Succeeded);
        assert_eq!(back.counts.unforbidden, 1, "{}", t.label());
        let rehired = user_row(&db, &unionid(4)).await.unwrap();
        assert_eq!(rehired.is_forbidden, Some(false), "{}", t.label());
        let link = syncer_link::Entity::find()
            .filter(syncer_link::Column::ExternalId.eq(userid(4)))
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((link.state.as_str(), link.left_action), ("present", None));
        db.close().await.unwrap();
    })
    .await;
}

async fn forbidden_users(t: &TestDb, db: &Db) -> i64 {
    let truth = if t.engine() == Engine::Postgres {
        "true"
    } else {
        "1"
    };
    count(
        t,
        db,
        &format!(
            "SELECT COUNT(*) FROM {} WHERE is_forbidden = {truth}",
            t.quote("user")
        ),
    )
    .await
}

#[tokio::test]
async fn an_incomplete_directory_is_partial_and_forbids_nobody() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(20, 3);
        run(&ctx, &syncer, &dir, apply()).await;

        let mut partial = without(&dir, &[1, 2, 3, 4, 5, 6]);
        partial.complete = false;
        partial.incomplete_reasons = vec![
            "department 101 could not be listed: errcode 60011 (outside the app's visible scope)"
                .into(),
        ];
        user_mut(&mut partial, 9).title = Some("总监".into());
        let report = run(&ctx, &syncer, &partial, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(
            (report.counts.forbidden, report.counts.updated),
            (0, 1),
            "{}",
            t.label()
        );
        assert_eq!(forbidden_users(t, &db).await, 0, "{}", t.label());
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.kind == ErrorKind::Department && e.message.contains("60011")),
            "{:?}",
            report.errors
        );
        assert!(report.notices.iter().any(|n| n.contains("incomplete")));
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_empty_directory_forbids_nobody() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(20, 3);
        run(&ctx, &syncer, &dir, apply()).await;

        let mut empty = dir.clone();
        empty.users.clear();
        let report = run(&ctx, &syncer, &empty, apply()).await;
        assert_eq!(report.counts.forbidden, 0, "{}", t.label());
        assert_eq!(forbidden_users(t, &db).await, 0, "{}", t.label());
        assert!(
            report.notices.iter().any(|n| n.contains("no user at all")),
            "{:?}",
            report.notices
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn crossing_the_removal_limit_holds_removals_but_applies_the_rest_until_allowed() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let mut sync = sync_settings(100);
        sync.max_removals = 2;
        let ctx = context(&db, sync);
        let dir = directory::directory(20, 3);
        run(&ctx, &syncer, &dir, apply()).await;

        let mut next = without(&dir, &[10, 11, 12, 13, 14]);
        user_mut(&mut next, 3).title = Some("总监".into());
        next.users.push(directory::user(20, &[1]));
        let held = run(&ctx, &syncer, &next, apply()).await;
        assert_status(t, &held, RunStatus::Held);
        let c = held.counts;
        assert_eq!(
            (c.forbidden, c.held_removals, c.created, c.updated),
            (0, 5, 1, 1),
            "{}",
            t.label()
        );
        assert_eq!(forbidden_users(t, &db).await, 0, "{}", t.label());
        let message = held.held.clone().unwrap_or_default();
        assert!(message.contains("--allow-removals"), "{message}");
        assert!(message.contains(SYNCER), "{message}");
        assert_eq!(
            user_row(&db, &unionid(3)).await.unwrap().title.as_deref(),
            Some("总监")
        );
        assert!(user_row(&db, &unionid(20)).await.is_some());

        // The same directory again is held again; with --allow-removals it goes through.
        let again = run(&ctx, &syncer, &next, apply()).await;
        assert_status(t, &again, RunStatus::Held);
        let mut opts = apply();
        opts.allow_removals = true;
        let released = run(&ctx, &syncer, &next, opts).await;
        assert_status(t, &released, RunStatus::Succeeded);
        assert_eq!(released.counts.forbidden, 5, "{}", t.label());
        assert_eq!(forbidden_users(t, &db).await, 5, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_existing_casdoor_database_with_nulls_and_unowned_users_works_and_leaves_them_alone() {
    on_every_engine(async |t| {
        let db = t.connect().await;
        t.create_casdoor_tables(&db).await;
        syncerd::db::migrate(&db).await.unwrap();
        let syncer = add_syncer(&db).await;
        let q = |s: &str| t.quote(s);
        // A local admin, and a user that matches DingTalk user 3 by id, both mostly NULL.
        let legacy_id = userid(3);
        for (name, id) in [("admin", "admin-id"), ("legacy", legacy_id.as_str())] {
            t.execute(
                &db,
                &format!(
                    "INSERT INTO {} (owner, name, id) VALUES ('{ORG}', '{name}', '{id}')",
                    q("user")
                ),
            )
            .await;
        }
        t.execute(
            &db,
            &format!(
                "INSERT INTO {} (owner, name) VALUES ('{ORG}', 'staff')",
                q("group")
            ),
        )
        .await;
        t.execute(
            &db,
            "INSERT INTO casbin_user_rule (ptype, v0, v1) VALUES ('g', 'acme/admin', 'group:acme/staff')",
        )
        .await;
        let snapshot = async || {
            let admin = user_row(&db, "admin").await.unwrap();
            let legacy = user_row(&db, "legacy").await.unwrap();
            let staff = group::Entity::find()
                .filter(group::Column::Name.eq("staff"))
                .one(db.conn())
                .await
                .unwrap()
                .unwrap();
            let rules = casbin_user_rule::Entity::find()
                .filter(casbin_user_rule::Column::V0.eq("acme/admin"))
                .all(db.conn())
                .await
                .unwrap();
            (admin, legacy, staff, rules)
        };
        let before = snapshot().await;

        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(20, 3);
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(
            (report.counts.created, report.counts.conflicts),
            (19, 1),
            "{}",
            t.label()
        );
        assert!(report.errors.iter().any(|e| e.userid.as_deref() == Some(userid(3).as_str())
            && e.kind == ErrorKind::Conflict));
        assert!(snapshot().await == before, "{}: unowned rows changed", t.label());

        // Adopting takes the NULL-holding user over: mapped columns and memberships are written,
        // everything else stays as it was (NULL).
        let mut opts = apply();
        opts.adopt_existing = true;
        let adopted = run(&ctx, &syncer, &dir, opts).await;
        assert_status(t, &adopted, RunStatus::Succeeded);
        assert_eq!(adopted.counts.updated, 1, "{}", t.label());
        let legacy = user_row(&db, "legacy").await.unwrap();
        assert_eq!(legacy.display_name, dir.users[3].profile.name);
        assert_eq!(legacy.hash.as_deref(), Some(stock_hash(&dir.users[3]).as_str()));
        assert_eq!(legacy.dingtalk.as_deref(), Some(userid(3).as_str()));
        assert_eq!(legacy.groups.as_deref(), Some(groups_json(&dir.users[3]).as_str()));
        assert_eq!(legacy.r#type, None);
        assert_eq!(legacy.properties, None);
        assert_eq!(legacy.created_time, None);
        let admin = user_row(&db, "admin").await.unwrap();
        assert_eq!((admin.hash, admin.is_forbidden), (None, None));
        // The run after the adoption sees nothing to do.
        let settled = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &settled, RunStatus::Succeeded);
        assert_eq!(settled.counts.unchanged, 20, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_600_character_title_or_a_nul_byte_userid_is_a_record_error_not_a_failed_run() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let mut dir = directory::directory(30, 3);
        user_mut(&mut dir, 5).title = Some("长".repeat(600));
        user_mut(&mut dir, 6).userid = "bad\0id".to_owned();
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(
            (report.counts.record_errors, report.counts.created),
            (2, 28),
            "{}",
            t.label()
        );
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.userid.as_deref() == Some(userid(5).as_str())
                    && e.message.contains("title")),
            "{:?}",
            report.errors
        );
        assert!(
            report.errors.iter().any(|e| e.message.contains("NUL")),
            "{:?}",
            report.errors
        );
        assert!(user_row(&db, &unionid(5)).await.is_none());
        assert_eq!(rows(t, &db, "user").await, 28, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_row_the_database_rejects_is_isolated_and_the_rest_commits() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        unique_email_taken_by_outsider(t, &db, "user50@example.com").await;
        let ctx = context(&db, sync_settings(25));
        let dir = directory::directory(120, 4);

        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(
            (report.counts.created, report.counts.rows_rejected),
            (119, 1),
            "{}",
            t.label()
        );
        // On PostgreSQL the first import copies: the batch holding the rejected row is
        // retried through INSERT statements like on the other engines.
        let copied = if t.engine() == Engine::Postgres { 4 } else { 0 };
        assert_eq!(
            (report.batches.copied, report.batches.retried),
            (copied, 1),
            "{}",
            t.label()
        );
        let rejected = report
            .errors
            .iter()
            .find(|e| e.kind == ErrorKind::Row)
            .expect("a row error");
        assert_eq!(rejected.userid.as_deref(), Some(userid(50).as_str()));
        assert!(
            rejected.message.contains(&userid(50)),
            "{}",
            rejected.message
        );
        assert!(user_row(&db, &unionid(50)).await.is_none());
        // Nothing of the rejected user: no link, no casbin rows.
        assert_eq!(
            count(
                t,
                &db,
                &format!(
                    "SELECT COUNT(*) FROM syncer_link WHERE external_id = '{}'",
                    userid(50)
                )
            )
            .await,
            0
        );
        assert_eq!(
            count(
                t,
                &db,
                &format!(
                    "SELECT COUNT(*) FROM casbin_user_rule WHERE v0 = '{ORG}/{}'",
                    unionid(50)
                )
            )
            .await,
            0
        );
        assert_eq!(rows(t, &db, "user").await, 120, "{}", t.label());
        assert_eq!(rows(t, &db, "syncer_link").await, 119 + 5, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn group_names_of_other_organizations_are_avoided_only_while_casdoors_unique_index_exists() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        // Another organization already has a group named like our department 100.
        t.execute(
            &db,
            &format!(
                "INSERT INTO {} (owner, name, type) VALUES ('other', '100', 'department')",
                t.quote("group")
            ),
        )
        .await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(10, 2);
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(report.counts.groups_created, 2, "{}", t.label());
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.department == Some(100) && e.message.contains("UQE_group_name")),
            "{:?}",
            report.errors
        );

        let drop = match t.engine() {
            Engine::MySql => {
                format!("DROP INDEX UQE_group_name ON {}", t.quote("group"))
            }
            _ => "DROP INDEX \"UQE_group_name\"".to_owned(),
        };
        t.execute(&db, &drop).await;
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.groups_created, 1, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_root_group_is_named_after_the_organizations_display_name() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        t.create_organization_table(&db, &[("acme", "Acme 公司 🏢")])
            .await;
        let ctx: RunContext = context(&db, sync_settings(100));
        let dir: Directory = directory::directory(3, 1);
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let root = group::Entity::find()
            .filter(group::Column::Name.eq("1"))
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            root.display_name.as_deref(),
            Some("Acme 公司 🏢"),
            "{}",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn leaver_policy_delete_soft_deletes_like_casdoor_and_a_return_restores_the_user() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        create_token_table(t, &db).await;
        let mut sync = sync_settings(100);
        sync.leaver_policy = syncerd::config::LeaverPolicy::Delete;
        let ctx = context(&db, sync);
        let dir = directory::directory(20, 3);
        run(&ctx, &syncer, &dir, apply()).await;
        t.execute(
            &db,
            &format!(
                "INSERT INTO token (owner, name, organization, {}, expires_in) \
                 VALUES ('admin', 't-leaver', '{ORG}', '{}', 7200)",
                t.quote("user"),
                unionid(4)
            ),
        )
        .await;

        let gone = run(&ctx, &syncer, &without(&dir, &[4]), apply()).await;
        assert_status(t, &gone, RunStatus::Succeeded);
        assert_eq!(
            (gone.counts.deleted, gone.counts.forbidden),
            (1, 0),
            "{}",
            t.label()
        );
        let row = user_row(&db, &unionid(4)).await.unwrap();
        assert_eq!(row.is_deleted, Some(true), "{}", t.label());
        let deleted_time = row.deleted_time.unwrap_or_default();
        assert!(
            DateTime::parse_from_rfc3339(&deleted_time).is_ok(),
            "{deleted_time:?}"
        );
        assert_eq!(token_expiry(t, &db, "t-leaver").await, 0, "{}", t.label());

        let back = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &back, RunStatus::Succeeded);
        let row = user_row(&db, &unionid(4)).await.unwrap();
        assert_eq!(
            (row.is_deleted, row.deleted_time.as_deref()),
            (Some(false), Some("")),
            "{}",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

/// Every row of the tables a first import writes, without what differs between two runs (the
/// run's id and times, the ids the database assigns).
async fn imported_rows(
    db: &Db,
) -> (
    Vec<user::Model>,
    Vec<group::Model>,
    Vec<(String, String)>,
    Vec<syncer_link::Model>,
    Vec<(String, String, String, String)>,
) {
    let mut users = users(db).await;
    for u in &mut users {
        u.created_time = None;
        u.updated_time = None;
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups = group::Entity::find().all(db.conn()).await.unwrap();
    for g in &mut groups {
        g.created_time = None;
        g.updated_time = None;
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rules: Vec<(String, String)> = casbin_user_rule::Entity::find()
        .all(db.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.v0, r.v1))
        .collect();
    rules.sort();
    let mut links = syncer_link::Entity::find().all(db.conn()).await.unwrap();
    for l in &mut links {
        (l.first_seen_run, l.last_seen_run) = (None, None);
        (l.created_at, l.updated_at) = (String::new(), String::new());
        l.casdoor_created_time = None;
    }
    links.sort_by(|a, b| (&a.kind, &a.external_id).cmp(&(&b.kind, &b.external_id)));
    let mut changes: Vec<(String, String, String, String)> = syncer_change::Entity::find()
        .all(db.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.userid, c.casdoor_name, c.action, c.changes))
        .collect();
    changes.sort();
    (users, groups, rules, links, changes)
}

#[tokio::test]
async fn a_postgres_first_import_through_copy_writes_exactly_what_inserts_write() {
    let Some(t) = TestDb::postgres().await else {
        eprintln!("skipped: set SYNCERD_TEST_POSTGRES_URL to compare COPY with INSERT");
        return;
    };
    // Values COPY's text format escapes, and one it must not take for NULL.
    let mut dir = directory::directory(300, 6);
    let awkward = [
        "tab\there",
        "new\nline\r\nand return",
        "back\\slash \\N \\. end",
        "\\N",
        "quote ' \" `; DROP TABLE user; --",
        "中文 😀 \u{7f}",
        "",
    ];
    for (i, value) in awkward.iter().enumerate() {
        let u = user_mut(&mut dir, i * 37 + 1);
        u.title = Some((*value).to_owned());
        u.name = Some(format!("{value} {i}"));
        u.remark = Some((*value).to_owned());
    }
    user_mut(&mut dir, 5).email = None;
    user_mut(&mut dir, 6).active = Some(false);

    let mut imported = Vec::new();
    for copy in [true, false] {
        let target = t.another().await;
        let db = target.migrated().await;
        let db = if copy { db } else { db.without_copy() };
        assert_eq!(db.copies_first_import(), copy);
        let syncer = add_syncer(&db).await;
        let ctx = context(&db, sync_settings(64));
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(&target, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.created, 300);
        // 6 department groups, the root and 300 users in batches of 64: 5 batches.
        let copied = if copy { 5 } else { 0 };
        assert_eq!((report.batches.copied, report.batches.retried), (copied, 0));
        let row = user_row(&db, &unionid(38)).await.expect("user row");
        assert_eq!(row.title.as_deref(), Some("new\nline\r\nand return"));
        let row = user_row(&db, &unionid(112)).await.expect("user row");
        assert_eq!(row.title.as_deref(), Some("\\N"));
        imported.push(imported_rows(&db).await);
        // A second run over COPY's rows finds nothing to change.
        let again = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(&target, &again, RunStatus::Succeeded);
        assert_eq!((again.counts.unchanged, again.counts.updated), (300, 0));
        db.close().await.unwrap();
        target.cleanup().await;
    }
    let (copied, inserted) = (&imported[0], &imported[1]);
    assert_eq!(copied.0.len(), 300);
    for (c, i) in copied.0.iter().zip(&inserted.0) {
        assert!(c == i, "user {} differs between COPY and INSERT", c.name);
    }
    assert!(copied.1 == inserted.1, "groups differ");
    assert_eq!(copied.2, inserted.2);
    assert_eq!(copied.3, inserted.3);
    assert_eq!(copied.4, inserted.4);
    assert_eq!(copied.4.len(), 300);
    t.cleanup().await;
}
