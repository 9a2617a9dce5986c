#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Casdoor database compatibility, on every engine (SQLite always; MariaDB and PostgreSQL when
//! `SYNCERD_TEST_MYSQL_URL` / `SYNCERD_TEST_POSTGRES_URL` are set): what Casdoor's own code does
//! to the rows around a user or a group, syncerd does too.
//!
//! * A user deleted as a leaver leaves its managed groups (`user.groups` and casbin `g` rows),
//!   as Casdoor's DeleteUser drops a user's memberships; manual memberships stay.
//! * Forbidding or deleting a leaver deletes its rows in Casdoor's `session` table.
//! * No department group is named like an organization (Casdoor refuses such a group).
//! * `database.table_prefix` is Casdoor's `tableNamePrefix`: every table but
//!   `casbin_user_rule` carries it, syncerd's own tables too.

mod common;

use std::time::Duration;

use common::directory::{self, unionid, without};
use common::pipeline::{ORG, SYNCER, add_syncer, apply, context, count, run, setup, sync_settings};
use common::{TestDb, on_every_engine};
use syncerd::config::{DatabaseSettings, Engine, LeaverPolicy};
use syncerd::db::{self, Db, RunFilter, RunStatus, leases};
use syncerd::pipeline::RunReport;

fn assert_status(t: &TestDb, report: &RunReport, status: RunStatus) {
    assert_eq!(
        report.status,
        status,
        "{}: {:?} {:?}",
        t.label(),
        report.message,
        report.errors
    );
}

/// Casdoor's `session` table as its ORM creates it: primary key (owner, name, application),
/// `session_id` a JSON list of the web session ids.
async fn create_session_table(t: &TestDb, db: &Db, table: &str) {
    let text = if t.engine() == Engine::Sqlite {
        "TEXT"
    } else {
        "VARCHAR(100)"
    };
    let q = |i: &str| t.quote(i);
    t.execute(
        db,
        &format!(
            "CREATE TABLE IF NOT EXISTS {} ({} {text} NOT NULL, {} {text} NOT NULL, {} {text} NOT NULL, \
             {} {text} NULL, {} TEXT NULL, PRIMARY KEY ({}, {}, {}))",
            q(table),
            q("owner"),
            q("name"),
            q("application"),
            q("created_time"),
            q("session_id"),
            q("owner"),
            q("name"),
            q("application"),
        ),
    )
    .await;
}

async fn add_session(t: &TestDb, db: &Db, table: &str, owner: &str, name: &str, app: &str) {
    t.execute(
        db,
        &format!(
            "INSERT INTO {} (owner, name, application, created_time, session_id) \
             VALUES ('{owner}', '{name}', '{app}', '2026-12-01T10:00:00+08:00', '[\"s-{name}-{app}\"]')",
            t.quote(table)
        ),
    )
    .await;
}

/// `(owner, name, application)` of every session row, sorted.
async fn sessions(t: &TestDb, db: &Db, table: &str) -> Vec<String> {
    let sql = format!(
        "SELECT {} FROM {} ORDER BY 1",
        concat3(t, "owner", "name", "application"),
        t.quote(table)
    );
    t.query_texts(db, &sql).await
}

/// SQL concatenating three columns with `/` on this engine.
fn concat3(t: &TestDb, a: &str, b: &str, c: &str) -> String {
    match t.engine() {
        Engine::MySql => format!("CONCAT({a}, '/', {b}, '/', {c})"),
        _ => format!("{a} || '/' || {b} || '/' || {c}"),
    }
}

/// `v1` of the casbin `g` rows of user `name` of `ORG`, sorted.
async fn casbin_groups_of(t: &TestDb, db: &Db, name: &str) -> Vec<String> {
    t.query_texts(
        db,
        &format!(
            "SELECT v1 FROM casbin_user_rule WHERE ptype = 'g' AND v0 = '{ORG}/{name}' ORDER BY v1"
        ),
    )
    .await
}

async fn groups_json_of(t: &TestDb, db: &Db, user_table: &str, name: &str) -> Vec<String> {
    let text = t
        .query_texts(
            db,
            &format!(
                "SELECT {} FROM {} WHERE owner = '{ORG}' AND name = '{name}'",
                t.quote("groups"),
                t.quote(user_table)
            ),
        )
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: no user {name}", t.label()));
    let mut groups: Vec<String> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: groups {text:?}: {e}", t.label()));
    groups.sort();
    groups
}

#[tokio::test]
async fn a_deleted_leaver_leaves_its_managed_groups_and_sessions_as_casdoors_delete_user_does() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        create_session_table(t, &db, "session").await;
        let mut sync = sync_settings(100);
        sync.leaver_policy = LeaverPolicy::Delete;
        let ctx = context(&db, sync);
        let dir = directory::directory(20, 3);
        let first = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &first, RunStatus::Succeeded);

        // An administrator also put the leaver-to-be into a group of their own.
        let leaver = unionid(7);
        let managed = groups_json_of(t, &db, "user", &leaver).await;
        assert_eq!(managed.len(), 2, "{}: {managed:?}", t.label());
        let user = t.quote("user");
        let groups = t.quote("groups");
        t.execute(
            &db,
            &format!(
                "UPDATE {user} SET {groups} = REPLACE({groups}, '[', '[\"{ORG}/admins\",') \
                 WHERE owner = '{ORG}' AND name = '{leaver}'"
            ),
        )
        .await;
        t.execute(
            &db,
            &format!(
                "INSERT INTO casbin_user_rule (ptype, v0, v1, v2, v3, v4, v5) \
                 VALUES ('g', '{ORG}/{leaver}', 'group:{ORG}/admins', '', '', '', '')"
            ),
        )
        .await;
        for app in ["app-built-in", "app-portal"] {
            add_session(t, &db, "session", ORG, &leaver, app).await;
        }
        add_session(t, &db, "session", ORG, &unionid(8), "app-built-in").await;
        add_session(t, &db, "session", "other-org", &leaver, "app-built-in").await;

        let gone = run(&ctx, &syncer, &without(&dir, &[7]), apply()).await;
        assert_status(t, &gone, RunStatus::Succeeded);
        assert_eq!(gone.counts.deleted, 1, "{}", t.label());
        assert_eq!(gone.counts.memberships_changed, 1, "{}", t.label());
        assert_eq!(
            groups_json_of(t, &db, "user", &leaver).await,
            [format!("{ORG}/admins")],
            "{}: only the manual membership stays in user.groups",
            t.label()
        );
        assert_eq!(
            casbin_groups_of(t, &db, &leaver).await,
            [format!("group:{ORG}/admins")],
            "{}: only the manual casbin row stays",
            t.label()
        );
        assert_eq!(
            sessions(t, &db, "session").await,
            [
                format!("{ORG}/{}/app-built-in", unionid(8)),
                format!("other-org/{leaver}/app-built-in"),
            ],
            "{}: every session of the leaver is gone, no other",
            t.label()
        );
        assert!(
            gone.notices.iter().any(|n| n.contains("sessions")),
            "{:?}",
            gone.notices
        );
        // Other users keep their memberships.
        assert_eq!(
            casbin_groups_of(t, &db, &unionid(8)).await.len(),
            groups_json_of(t, &db, "user", &unionid(8)).await.len(),
            "{}",
            t.label()
        );

        // Nothing more to do while the user stays gone.
        let again = run(&ctx, &syncer, &without(&dir, &[7]), apply()).await;
        assert_status(t, &again, RunStatus::Succeeded);
        assert_eq!(
            (again.counts.deleted, again.counts.memberships_changed),
            (0, 0),
            "{}",
            t.label()
        );

        // A user an older syncerd deleted kept its department memberships: they go too.
        let mut old_groups = managed.clone();
        old_groups.push(format!("{ORG}/admins"));
        let old_json = serde_json::to_string(&old_groups).unwrap();
        t.execute(
            &db,
            &format!(
                "UPDATE {user} SET {groups} = '{old_json}' WHERE owner = '{ORG}' AND name = '{leaver}'"
            ),
        )
        .await;
        for g in &managed {
            t.execute(
                &db,
                &format!(
                    "INSERT INTO casbin_user_rule (ptype, v0, v1, v2, v3, v4, v5) \
                     VALUES ('g', '{ORG}/{leaver}', 'group:{g}', '', '', '', '')"
                ),
            )
            .await;
        }
        let cleaned = run(&ctx, &syncer, &without(&dir, &[7]), apply()).await;
        assert_status(t, &cleaned, RunStatus::Succeeded);
        assert_eq!(
            (cleaned.counts.deleted, cleaned.counts.memberships_changed),
            (0, 1),
            "{}",
            t.label()
        );
        assert_eq!(
            groups_json_of(t, &db, "user", &leaver).await,
            [format!("{ORG}/admins")],
            "{}",
            t.label()
        );
        assert_eq!(
            casbin_groups_of(t, &db, &leaver).await,
            [format!("group:{ORG}/admins")],
            "{}",
            t.label()
        );

        // A return restores the row and its department memberships; the manual one was kept.
        let back = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &back, RunStatus::Succeeded);
        let mut expected = managed.clone();
        expected.push(format!("{ORG}/admins"));
        expected.sort();
        assert_eq!(
            groups_json_of(t, &db, "user", &leaver).await,
            expected,
            "{}",
            t.label()
        );
        assert_eq!(
            casbin_groups_of(t, &db, &leaver).await.len(),
            3,
            "{}",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_forbidden_leaver_keeps_its_groups_but_loses_its_sessions() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        create_session_table(t, &db, "session").await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(20, 3);
        run(&ctx, &syncer, &dir, apply()).await;
        let leaver = unionid(4);
        add_session(t, &db, "session", ORG, &leaver, "app-built-in").await;
        add_session(t, &db, "session", ORG, &unionid(5), "app-built-in").await;
        let rules_before = casbin_groups_of(t, &db, &leaver).await;

        let gone = run(&ctx, &syncer, &without(&dir, &[4]), apply()).await;
        assert_status(t, &gone, RunStatus::Succeeded);
        assert_eq!(gone.counts.forbidden, 1, "{}", t.label());
        assert_eq!(
            sessions(t, &db, "session").await,
            [format!("{ORG}/{}/app-built-in", unionid(5))],
            "{}",
            t.label()
        );
        assert_eq!(
            casbin_groups_of(t, &db, &leaver).await,
            rules_before,
            "{}: forbidding is reversible, memberships stay",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_department_named_like_an_organization_is_a_conflict_not_a_group() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        // Casdoor refuses a group named like any organization, whoever owns it.
        t.create_organization_table(&db, &[(ORG, "Acme"), ("101", "Org 101")])
            .await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(12, 3);
        let report = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        assert_eq!(report.counts.groups_created, 3, "{}", t.label());
        let conflict = report
            .errors
            .iter()
            .find(|e| e.department == Some(101))
            .unwrap_or_else(|| panic!("{}: {:?}", t.label(), report.errors));
        assert!(
            conflict.message.contains("organization"),
            "{}",
            conflict.message
        );
        let group = t.quote("group");
        assert_eq!(
            count(
                t,
                &db,
                &format!("SELECT COUNT(*) FROM {group} WHERE name = '101'")
            )
            .await,
            0,
            "{}",
            t.label()
        );
        assert_eq!(
            count(
                t,
                &db,
                "SELECT COUNT(*) FROM casbin_user_rule WHERE v1 LIKE '%/101'"
            )
            .await,
            0,
            "{}: nobody is made a member of the group that was not created",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

const PREFIX: &str = "cd_";

/// The tables syncerd writes, unprefixed, with Casdoor's `casbin_user_rule` as the only one
/// the prefix leaves alone.
const UNPREFIXED: [&str; 4] = ["syncer", "user", "group", "organization"];

#[tokio::test]
async fn a_table_prefix_puts_every_table_but_casbin_user_rule_under_the_prefix() {
    on_every_engine(async |t| {
        // An existing unprefixed Casdoor in the same database must not be touched.
        let plain = t.connect().await;
        t.create_casdoor_tables(&plain).await;
        t.create_organization_table(&plain, &[(ORG, "Plain Acme")])
            .await;
        t.execute(
            &plain,
            &format!(
                "INSERT INTO {} (owner, name, id) VALUES ('{ORG}', '{}', 'u000003')",
                t.quote("user"),
                unionid(3)
            ),
        )
        .await;
        create_session_table(t, &plain, "session").await;
        add_session(t, &plain, "session", ORG, &unionid(3), "app-built-in").await;
        let mut untouched = UNPREFIXED.to_vec();
        untouched.push("session");
        let before = t.dump_tables(&plain, &untouched).await;

        let settings = DatabaseSettings {
            table_prefix: PREFIX.to_owned(),
            ..t.settings()
        };
        let db = db::connect(&settings).await.unwrap();
        let report = db::migrate(&db).await.unwrap();
        assert_eq!(
            report.created_casdoor_tables,
            ["syncer", "user", "group"],
            "{}: casbin_user_rule exists already, unprefixed",
            t.label()
        );
        db::check_schema(&db)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", t.label()));
        // Casdoor's organization and session tables, under the prefix.
        t.execute(
            &db,
            &format!(
                "CREATE TABLE {} (owner VARCHAR(100) NOT NULL, name VARCHAR(100) NOT NULL, \
                 display_name VARCHAR(100), PRIMARY KEY (owner, name))",
                t.quote("cd_organization")
            ),
        )
        .await;
        t.execute(
            &db,
            "INSERT INTO cd_organization (owner, name, display_name) VALUES ('admin', 'acme', 'Prefixed Acme')",
        )
        .await;
        create_session_table(t, &db, "cd_session").await;
        add_session(t, &db, "cd_session", ORG, &unionid(3), "app-built-in").await;
        t.execute(
            &db,
            &format!(
                "CREATE TABLE cd_token (owner VARCHAR(100) NOT NULL, name VARCHAR(100) NOT NULL, \
                 organization VARCHAR(100), {} VARCHAR(100), expires_in INT, PRIMARY KEY (owner, name))",
                t.quote("user")
            ),
        )
        .await;
        t.execute(
            &db,
            &format!(
                "INSERT INTO cd_token (owner, name, organization, {}, expires_in) \
                 VALUES ('admin', 't-leaver', '{ORG}', '{}', 7200)",
                t.quote("user"),
                unionid(3)
            ),
        )
        .await;

        let syncer = add_syncer(&db).await;
        assert_eq!(
            db::list_syncers(&db).await.unwrap().len(),
            1,
            "{}",
            t.label()
        );
        db::set_syncer_enabled(&db, SYNCER, true).await.unwrap();
        db::append_syncer_error(&db, SYNCER, "a test line")
            .await
            .unwrap();

        let ctx = context(&db, sync_settings(7));
        let dir = directory::directory(20, 3);
        let first = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &first, RunStatus::Succeeded);
        assert_eq!(first.counts.created, 20, "{}", t.label());
        let gone = run(&ctx, &syncer, &without(&dir, &[3]), apply()).await;
        assert_status(t, &gone, RunStatus::Succeeded);
        assert_eq!(gone.counts.forbidden, 1, "{}", t.label());

        let n = async |sql: String| count(t, &db, &sql).await;
        let q = |table: &str| t.quote(table);
        assert_eq!(n(format!("SELECT COUNT(*) FROM {}", q("cd_user"))).await, 20);
        assert_eq!(n(format!("SELECT COUNT(*) FROM {}", q("cd_group"))).await, 4);
        assert_eq!(
            n(format!(
                "SELECT COUNT(*) FROM {} WHERE name = '1' AND display_name = 'Prefixed Acme'",
                q("cd_group")
            ))
            .await,
            1,
            "{}: the root group is named from cd_organization",
            t.label()
        );
        assert!(
            n("SELECT COUNT(*) FROM casbin_user_rule".to_owned()).await >= 20,
            "{}",
            t.label()
        );
        assert_eq!(
            n(format!("SELECT COUNT(*) FROM {}", q("cd_syncer_link"))).await,
            24
        );
        assert_eq!(
            sessions(t, &db, "cd_session").await,
            Vec::<String>::new(),
            "{}: the leaver's prefixed session is gone",
            t.label()
        );
        assert_eq!(
            n("SELECT COUNT(*) FROM cd_token WHERE expires_in = 0".to_owned()).await,
            1,
            "{}: the leaver's token in cd_token is expired",
            t.label()
        );
        assert_eq!(
            n(format!(
                "SELECT COUNT(*) FROM {} WHERE error_text LIKE '%a test line%' AND is_enabled = {}",
                q("cd_syncer"),
                if t.engine() == Engine::Postgres { "true" } else { "1" }
            ))
            .await,
            1,
            "{}",
            t.label()
        );

        // Run history and leases live in the prefixed tables.
        let runs = db::list_runs(
            &db,
            &RunFilter {
                syncer: Some(SYNCER.into()),
                limit: 10,
                ..RunFilter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(runs.len(), 2, "{}", t.label());
        assert!(db::get_run(&db, runs[0].id).await.unwrap().is_some());
        assert_eq!(
            n(format!("SELECT COUNT(*) FROM {}", q("cd_syncer_run"))).await,
            2
        );
        let ttl = Duration::from_secs(60);
        assert!(
            leases::acquire_lease(&db, SYNCER, "host:1", 1_000, ttl)
                .await
                .unwrap()
        );
        assert!(
            !leases::acquire_lease(&db, SYNCER, "host:2", 2_000, ttl)
                .await
                .unwrap()
        );
        assert!(
            leases::renew_lease(&db, SYNCER, "host:1", 3_000, ttl)
                .await
                .unwrap()
        );
        assert_eq!(
            n(format!("SELECT COUNT(*) FROM {}", q("cd_syncer_lease"))).await,
            1
        );
        leases::release_lease(&db, SYNCER, "host:1").await.unwrap();
        assert_eq!(
            n(format!("SELECT COUNT(*) FROM {}", q("cd_syncer_lease"))).await,
            0
        );
        assert_eq!(
            leases::release_all_leases(&db, "host:1").await.unwrap(),
            0
        );
        let orphaned = leases::interrupt_orphaned_runs(
            &db,
            None,
            10_000,
            chrono::Utc::now(),
            leases::ORPHANED_RUN_REASON,
        )
        .await
        .unwrap();
        assert!(orphaned.is_empty(), "{}: {orphaned:?}", t.label());

        // syncerd's bookkeeping is per prefix: the prefixed migrations are recorded under the
        // prefix, and a second migrate does nothing.
        assert!(
            n(format!("SELECT COUNT(*) FROM {}", q("cd_syncerd_migrations"))).await >= 2,
            "{}",
            t.label()
        );
        assert!(db::migrate(&db).await.unwrap().is_up_to_date());
        for table in [
            "syncer_run",
            "syncer_link",
            "syncer_lease",
            "syncer_event",
            "syncer_change",
            "syncerd_migrations",
        ] {
            assert!(
                db::table_columns(&plain, table).await.unwrap().is_empty(),
                "{}: unprefixed {table} was created",
                t.label()
            );
        }
        // A daemon pointed at the unprefixed tables would find syncerd's tables missing.
        assert!(db::check_schema(&plain).await.is_err());

        let after = t.dump_tables(&plain, &untouched).await;
        assert_eq!(
            before,
            after,
            "{}: the unprefixed tables changed",
            t.label()
        );
        db.close().await.unwrap();
        plain.close().await.unwrap();
    })
    .await;
}

/// Runs the real binary with `SYNCERD_DATABASE__URL` and `SYNCERD_DATABASE__TABLE_PREFIX`.
async fn syncerd_with_prefix(url: &str, prefix: &str, args: &[&str]) -> (bool, String) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncerd"))
            .args(&args)
            .current_dir(std::env::temp_dir())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SYNCERD_DATABASE__URL", url)
            .env("SYNCERD_DATABASE__TABLE_PREFIX", prefix)
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn syncerd_migrate_creates_the_prefixed_tables_named_by_the_setting() {
    on_every_engine(async |t| {
        let (ok, out) = syncerd_with_prefix(t.url(), "tenant2_", &["migrate"]).await;
        assert!(ok, "{}: {out}", t.label());
        let db = t.connect().await;
        for table in [
            "tenant2_syncer",
            "tenant2_user",
            "tenant2_group",
            "casbin_user_rule",
            "tenant2_syncer_run",
            "tenant2_syncer_link",
            "tenant2_syncer_lease",
            "tenant2_syncerd_migrations",
        ] {
            assert!(
                !db::table_columns(&db, table).await.unwrap().is_empty(),
                "{}: {table} missing",
                t.label()
            );
        }
        for table in [
            "syncer",
            "user",
            "group",
            "syncer_run",
            "syncerd_migrations",
        ] {
            assert!(
                db::table_columns(&db, table).await.unwrap().is_empty(),
                "{}: unprefixed {table} was created",
                t.label()
            );
        }
        // The other commands find the prefixed tables.
        let (ok, out) = syncerd_with_prefix(t.url(), "tenant2_", &["runs"]).await;
        assert!(ok, "{}: {out}", t.label());
        // Without the prefix the same database lacks Casdoor's tables, and says so.
        let (ok, out) = syncerd_with_prefix(t.url(), "", &["runs"]).await;
        assert!(
            !ok && out.contains("database.table_prefix"),
            "{}: {out}",
            t.label()
        );
        // A prefix that is not a plain identifier is refused before anything is touched.
        let (ok, out) = syncerd_with_prefix(t.url(), "bad-prefix", &["migrate"]).await;
        assert!(
            !ok && out.contains("database.table_prefix") && out.contains("'-'"),
            "{}: {out}",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}
