#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Pipeline safety on every available engine: adoption never takes over privileged or
//! password-protected users, links hold the row they were made for (not just its name), a few
//! leavers of a small team are not held, and look-alike names collide.

mod common;

use common::directory::{self, unionid, user_mut, userid, without};
use common::pipeline::{
    ORG, apply, assert_status, context, run, setup, sync_settings, user_row, users,
};
use common::{TestDb, on_every_engine};
use migrations::{Migrator, MigratorTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use syncerd::config::{Engine, SyncSettings};
use syncerd::db::entities::syncer_link;
use syncerd::db::{self, Db, RunStatus};
use syncerd::pipeline::{ErrorKind, RunReport};

/// A boolean literal of this engine.
fn truth(t: &TestDb) -> &'static str {
    if t.engine() == Engine::Postgres {
        "true"
    } else {
        "1"
    }
}

async fn insert_user(t: &TestDb, db: &Db, columns: &str, values: &str) {
    t.execute(
        db,
        &format!(
            "INSERT INTO {} (owner, name, {columns}) VALUES ('{ORG}', {values})",
            t.quote("user")
        ),
    )
    .await;
}

async fn link_of(db: &Db, external_id: &str) -> Option<syncer_link::Model> {
    syncer_link::Entity::find()
        .filter(syncer_link::Column::Kind.eq("user"))
        .filter(syncer_link::Column::ExternalId.eq(external_id))
        .one(db.conn())
        .await
        .unwrap()
}

fn conflict_of<'r>(report: &'r RunReport, userid: &str) -> Option<&'r str> {
    report
        .errors
        .iter()
        .find(|e| e.kind == ErrorKind::Conflict && e.userid.as_deref() == Some(userid))
        .map(|e| e.message.as_str())
}

const PASSWORD_HASH: &str = "$2a$10$Q9yH0aWcXq2n1ZpD5rE6OeJ5z0m3k8h7g6f5e4d3c2b1a0Z9y8x7w";

#[tokio::test]
async fn adoption_refuses_admins_password_holders_and_other_dingtalk_accounts() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let bool_type = match t.engine() {
            Engine::Postgres => "BOOLEAN",
            Engine::MySql => "TINYINT(1)",
            Engine::Sqlite => "INTEGER",
        };
        // Older Casdoor had a second admin flag.
        t.execute(
            &db,
            &format!(
                "ALTER TABLE {} ADD COLUMN is_global_admin {bool_type} NULL",
                t.quote("user")
            ),
        )
        .await;
        let yes = truth(t);
        let recovery = "email, phone";
        let old = |who: &str| format!("'{who}@corp.example', '1390000{}'", who.len());
        insert_user(
            t,
            &db,
            &format!("id, is_admin, {recovery}"),
            &format!("'root', '{}', {yes}, {}", userid(1), old("root")),
        )
        .await;
        insert_user(
            t,
            &db,
            &format!("id, password, {recovery}"),
            &format!(
                "'pwuser', '{}', '{PASSWORD_HASH}', {}",
                userid(2),
                old("pwuser")
            ),
        )
        .await;
        insert_user(
            t,
            &db,
            &format!("id, dingtalk, {recovery}"),
            &format!("'oauth', '{}', 'openid-8c1f', {}", userid(3), old("oauth")),
        )
        .await;
        insert_user(
            t,
            &db,
            &format!("id, is_global_admin, {recovery}"),
            &format!("'gadmin', '{}', {yes}, {}", userid(4), old("gadmin")),
        )
        .await;
        insert_user(
            t,
            &db,
            &format!("id, created_time, {recovery}"),
            &format!(
                "'plain', '{}', '2025-03-01T08:00:00+08:00', {}",
                userid(5),
                old("plain")
            ),
        )
        .await;
        insert_user(
            t,
            &db,
            &format!("id, is_admin, password, dingtalk, {recovery}"),
            &format!(
                "'ops', '{}', {yes}, '{PASSWORD_HASH}', '{}', {}",
                userid(6),
                userid(6),
                old("ops")
            ),
        )
        .await;
        let refused = ["root", "pwuser", "oauth", "gadmin"];
        let mut before = Vec::new();
        for name in refused {
            before.push(user_row(&db, name).await.unwrap());
        }

        let ctx = context(
            &db,
            SyncSettings {
                adopt_only: vec!["ops".to_owned()],
                ..sync_settings(100)
            },
        );
        let dir = directory::directory(8, 2);
        let mut opts = apply();
        opts.adopt_existing = true;
        let report = run(&ctx, &syncer, &dir, opts).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(report.counts.conflicts, 4, "{}", t.label());
        for (i, name) in refused.iter().enumerate() {
            let message = conflict_of(&report, &userid(i + 1))
                .unwrap_or_else(|| panic!("{}: no conflict for {name}", t.label()));
            assert!(
                message.contains(&format!("{name:?}")) && message.contains("sync.adopt_only"),
                "{}: {message}",
                t.label()
            );
            assert!(!message.contains("corp.example"), "{message}");
            assert!(link_of(&db, &userid(i + 1)).await.is_none(), "{name}");
        }
        assert!(
            !report.render_text().contains(PASSWORD_HASH)
                && !report.render_text().contains("openid-8c1f"),
            "{}",
            report.render_text()
        );
        for (name, was) in refused.iter().zip(&before) {
            assert!(
                user_row(&db, name).await.unwrap() == *was,
                "{}: {name} changed",
                t.label()
            );
        }

        // Adopted rows get the DingTalk columns except e-mail and phone.
        for (i, name) in [(5, "plain"), (6, "ops")] {
            let row = user_row(&db, name).await.unwrap();
            assert_eq!(
                row.display_name,
                dir.users[i].profile.name,
                "{}: {name}",
                t.label()
            );
            assert_eq!(
                row.email.as_deref(),
                Some(format!("{name}@corp.example").as_str())
            );
            assert_eq!(
                row.phone.as_deref(),
                Some(format!("1390000{}", name.len()).as_str())
            );
            let link = link_of(&db, &userid(i)).await.unwrap();
            assert_eq!(link.casdoor_name, name);
            assert_eq!(link.adopted, Some(true), "{}", t.label());
            assert_eq!(link.casdoor_id.as_deref(), Some(userid(i).as_str()));
        }
        let plain_link = link_of(&db, &userid(5)).await.unwrap();
        assert_eq!(
            plain_link.casdoor_created_time.as_deref(),
            Some("2025-03-01T08:00:00+08:00")
        );
        // Created users are links of created rows.
        assert_eq!(link_of(&db, &userid(0)).await.unwrap().adopted, Some(false));

        // Later runs keep the adopted rows' e-mail and phone, whatever DingTalk says.
        let mut changed = dir.clone();
        user_mut(&mut changed, 6).email = Some("attacker@example.com".into());
        user_mut(&mut changed, 6).mobile = Some("13700000000".into());
        user_mut(&mut changed, 6).title = Some("SRE".into());
        let later = run(&ctx, &syncer, &changed, apply()).await;
        assert_eq!(later.counts.conflicts, 4, "{}", t.label());
        let ops = user_row(&db, "ops").await.unwrap();
        assert_eq!(ops.email.as_deref(), Some("ops@corp.example"));
        assert_eq!(ops.phone.as_deref(), Some("13900003"));
        assert_eq!(ops.title.as_deref(), Some("SRE"));
        assert_eq!(ops.is_admin, Some(true));
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_user_recreated_under_the_same_name_is_neither_written_nor_forbidden() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(10, 2);
        let first = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &first, RunStatus::Succeeded);
        let name = unionid(2);
        let created = user_row(&db, &name).await.unwrap();
        let link = link_of(&db, &userid(2)).await.unwrap();
        assert_eq!(link.casdoor_id.as_deref(), Some(userid(2).as_str()));
        assert_eq!(link.casdoor_created_time, created.created_time);
        assert_eq!(link.adopted, Some(false));

        // Links made before the identity was recorded (the migration undone and redone) are
        // filled from their row, once.
        // (Three steps down: the event inbox and the change log came after the link identity.)
        Migrator::down(db.conn(), Some(3)).await.unwrap();
        assert!(
            !db::table_columns(&db, "syncer_link")
                .await
                .unwrap()
                .iter()
                .any(|c| c == "casdoor_id")
        );
        let upgrade = db::migrate(&db).await.unwrap();
        assert_eq!(
            upgrade.applied,
            [
                "m20261207_000003_link_row_identity",
                "m20261207_000004_event_inbox",
                "m20261207_000005_change_log"
            ]
        );
        let link = link_of(&db, &userid(2)).await.unwrap();
        assert_eq!(
            (link.casdoor_id, link.casdoor_created_time, link.adopted),
            (None, None, None)
        );
        let filled = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &filled, RunStatus::Succeeded);
        let link = link_of(&db, &userid(2)).await.unwrap();
        assert_eq!(link.casdoor_id.as_deref(), Some(userid(2).as_str()));
        assert_eq!(link.casdoor_created_time, created.created_time);
        let settled = run(&ctx, &syncer, &dir, apply()).await;
        assert_eq!(settled.counts.unchanged, 10, "{}", t.label());

        // Someone deletes the user in Casdoor and creates another person under that name.
        let table = t.quote("user");
        t.execute(
            &db,
            &format!("DELETE FROM {table} WHERE owner = '{ORG}' AND name = '{name}'"),
        )
        .await;
        insert_user(
            t,
            &db,
            "id, created_time, email, phone, is_forbidden",
            &format!(
                "'{name}', '0b7e2c3a-new-person', '2026-12-06T09:00:00+08:00', \
                 'newcomer@corp.example', '13911112222', {}",
                if t.engine() == Engine::Postgres {
                    "false"
                } else {
                    "0"
                }
            ),
        )
        .await;
        let newcomer = user_row(&db, &name).await.unwrap();

        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        let message = conflict_of(&report, &userid(2))
            .unwrap_or_else(|| panic!("{}: {}", t.label(), report.render_text()));
        assert!(message.contains(&format!("{name:?}")), "{message}");
        assert!(
            user_row(&db, &name).await.unwrap() == newcomer,
            "{}",
            t.label()
        );

        // The DingTalk user leaves: the newcomer is not forbidden.
        let gone = without(&dir, &[2]);
        let report = run(&ctx, &syncer, &gone, apply()).await;
        assert_eq!(report.counts.forbidden, 0, "{}", t.label());
        assert!(conflict_of(&report, &userid(2)).is_some(), "{}", t.label());
        assert!(
            user_row(&db, &name).await.unwrap() == newcomer,
            "{}",
            t.label()
        );
        let link = link_of(&db, &userid(2)).await.unwrap();
        assert_eq!(link.state, "present");
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn one_leaver_of_a_nine_person_team_is_forbidden_not_held() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let small = |min_removals_allowed| SyncSettings {
            max_removal_percent: 10.0,
            min_removals_allowed,
            ..sync_settings(100)
        };
        let ctx = context(&db, small(SyncSettings::default().min_removals_allowed));
        let dir = directory::directory(9, 2);
        assert_status(
            t,
            &run(&ctx, &syncer, &dir, apply()).await,
            RunStatus::Succeeded,
        );

        // Without the allowance, one of nine (11%) is held.
        let strict = context(&db, small(0));
        let held = run(&strict, &syncer, &without(&dir, &[4]), apply()).await;
        assert_status(t, &held, RunStatus::Held);

        let report = run(&ctx, &syncer, &without(&dir, &[4]), apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.forbidden, 1, "{}", t.label());
        let name = unionid(4);
        assert_eq!(user_row(&db, &name).await.unwrap().is_forbidden, Some(true));

        // Four more of the remaining eight are over the allowance and the percentage: held.
        let report = run(&ctx, &syncer, &without(&dir, &[4, 5, 6, 7, 8]), apply()).await;
        assert_status(t, &report, RunStatus::Held);
        assert_eq!(report.counts.held_removals, 4, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_full_width_look_alike_of_an_existing_name_is_not_created() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        insert_user(
            t,
            &db,
            "id, is_admin",
            &format!("'admin', 'x-admin', {}", truth(t)),
        )
        .await;
        let ctx = context(&db, sync_settings(100));
        let mut dir = directory::directory(3, 1);
        user_mut(&mut dir, 1).unionid = Some("ａｄｍｉｎ".into());
        user_mut(&mut dir, 2).unionid = Some("ﬁnance".into());
        let mut dir2 = dir.clone();
        dir2.users.push(directory::user(3, &[1]));
        user_mut(&mut dir2, 3).unionid = Some("FINANCE".into());
        let report = run(&ctx, &syncer, &dir2, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(report.counts.created, 1, "{}", t.label());
        for i in [1, 2, 3] {
            assert!(
                conflict_of(&report, &userid(i)).is_some(),
                "{}: {}",
                t.label(),
                report.render_text()
            );
        }
        // Compared here, not in SQL: MySQL's collation may itself equate look-alikes.
        let names: Vec<String> = users(&db).await.into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["admin".to_owned(), unionid(0)], "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}
