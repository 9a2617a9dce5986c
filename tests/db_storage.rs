#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The storage layer on every available engine (SQLite always; MariaDB and PostgreSQL when
//! `SYNCERD_TEST_MYSQL_URL` / `SYNCERD_TEST_POSTGRES_URL` are set).

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestDb, on_every_engine};
use sea_orm::sea_query::{ColumnType, Expr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IdenStatic, Iterable, ModelTrait, QueryFilter,
    Value,
};
use syncerd::config::Engine;
use syncerd::db::entities::{casbin_user_rule, group, syncer, user};
use syncerd::db::{
    self, DEFAULT_TABLE_COLUMNS, DbError, NewRun, NewSyncer, RunCounts, RunFilter, RunMode,
    RunOutcome, RunStatus, RunTrigger, SchemaError, SchemaProblem, StaleRunFilter,
};
use syncerd::secret::Secret;

const CASDOOR_TABLES: [&str; 4] = ["syncer", "user", "group", "casbin_user_rule"];
const ALL_TABLES: [&str; 9] = [
    "syncer",
    "user",
    "group",
    "casbin_user_rule",
    "syncer_run",
    "syncer_link",
    "syncer_lease",
    "syncer_event",
    "syncer_change",
];

fn new_syncer(name: &str) -> NewSyncer {
    NewSyncer {
        name: name.to_owned(),
        organization: "acme".to_owned(),
        app_key: "dingappkey123".to_owned(),
        app_secret: Secret::new("S3cret-秘密-xyz"),
        sync_interval: 600,
        enabled: true,
    }
}

#[tokio::test]
async fn migrate_creates_everything_once_and_a_second_run_is_a_noop() {
    on_every_engine(async |t| {
        let db = t.connect().await;
        let first = db::migrate(&db).await.unwrap();
        assert_eq!(
            first.applied,
            [
                "m20261125_000001_casdoor_tables",
                "m20261125_000002_syncerd_tables",
                "m20261207_000003_link_row_identity",
                "m20261207_000004_event_inbox",
                "m20261207_000005_change_log"
            ],
            "{}",
            t.label()
        );
        assert_eq!(
            first.created_casdoor_tables,
            CASDOOR_TABLES,
            "{}",
            t.label()
        );
        assert!(first.to_string().contains("embedded mode"), "{first}");

        let before = t.dump_tables(&db, &ALL_TABLES).await;
        for index in [
            "IDX_user_uid_number",
            "UQE_group_name",
            "IDX_casbin_user_rule_v5",
            "idx_syncer_run_syncer_started",
            "idx_syncer_run_status",
            "idx_syncer_link_org_kind_name",
        ] {
            assert!(
                before.contains(index),
                "{}: no {index} in\n{before}",
                t.label()
            );
        }
        if t.engine() == Engine::MySql {
            for table in ALL_TABLES {
                let ddl = t.dump_tables(&db, &[table]).await;
                assert!(ddl.contains("CHARSET=utf8mb4"), "{table}: {ddl}");
            }
        }

        let second = db::migrate(&db).await.unwrap();
        assert!(second.is_up_to_date(), "{}: {second:?}", t.label());
        assert_eq!(second.to_string(), "already up to date");
        assert_eq!(
            t.dump_tables(&db, &ALL_TABLES).await,
            before,
            "{}",
            t.label()
        );
        db::check_schema(&db).await.unwrap();

        // The Casdoor tables syncerd creates are the ones Casdoor creates.
        let casdoor = t.another().await;
        let casdoor_db = casdoor.connect().await;
        casdoor.create_casdoor_tables(&casdoor_db).await;
        assert_eq!(
            casdoor.dump_tables(&casdoor_db, &CASDOOR_TABLES).await,
            t.dump_tables(&db, &CASDOOR_TABLES).await,
            "{}",
            t.label()
        );
        casdoor_db.close().await.unwrap();
        casdoor.cleanup().await;
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn migrate_leaves_an_existing_casdoor_database_untouched_and_reads_its_nulls() {
    on_every_engine(async |t| {
        let db = t.connect().await;
        t.create_casdoor_tables(&db).await;
        let (syncer_t, user_t) = (t.quote("syncer"), t.quote("user"));
        t.execute(
            &db,
            &format!("INSERT INTO {syncer_t} (owner, name) VALUES ('admin', 'legacy')"),
        )
        .await;
        t.execute(
            &db,
            &format!("INSERT INTO {user_t} (owner, name) VALUES ('acme', 'old-user')"),
        )
        .await;
        // Drift: a leftover column of an older Casdoor.
        let text_type = if t.engine() == Engine::Sqlite {
            "TEXT"
        } else {
            "VARCHAR(100)"
        };
        t.execute(
            &db,
            &format!(
                "ALTER TABLE {user_t} ADD COLUMN {} {text_type} NULL",
                t.quote("access_key")
            ),
        )
        .await;
        t.execute(
            &db,
            &format!("UPDATE {user_t} SET {} = 'leftover'", t.quote("access_key")),
        )
        .await;

        let before = t.dump_tables(&db, &CASDOOR_TABLES).await;
        let report = db::migrate(&db).await.unwrap();
        assert_eq!(report.applied.len(), 5, "{}", t.label());
        assert!(report.created_casdoor_tables.is_empty(), "{report:?}");
        db::check_schema(&db).await.unwrap();

        let syncers = db::list_syncers(&db).await.unwrap();
        assert_eq!(syncers.len(), 1, "{}", t.label());
        let legacy = &syncers[0];
        assert_eq!(
            (legacy.owner.as_str(), legacy.name.as_str()),
            ("admin", "legacy")
        );
        assert_eq!(legacy.organization, "");
        assert_eq!(legacy.app_key, "");
        assert!(legacy.app_secret.is_empty());
        assert_eq!(legacy.table_columns, "");
        assert_eq!(legacy.sync_interval, 0);
        assert!(!legacy.is_enabled && !legacy.is_read_only);
        assert_eq!(
            db::get_syncer(&db, "legacy").await.unwrap().as_ref(),
            Some(legacy)
        );

        let users = user::Entity::find().all(db.conn()).await.unwrap();
        assert_eq!(users.len(), 1, "{}", t.label());
        let old = &users[0];
        assert_eq!(
            (old.owner.as_str(), old.name.as_str()),
            ("acme", "old-user")
        );
        for column in user::Column::iter() {
            if matches!(column, user::Column::Owner | user::Column::Name) {
                continue;
            }
            assert!(
                is_null(&old.get(column)),
                "{}: {} should be NULL",
                t.label(),
                column.as_str()
            );
        }

        assert_eq!(
            t.dump_tables(&db, &CASDOOR_TABLES).await,
            before,
            "{}: migrate or the reads changed Casdoor's tables",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

fn is_null(value: &Value) -> bool {
    matches!(
        value,
        Value::String(None)
            | Value::Int(None)
            | Value::Double(None)
            | Value::Bool(None)
            | Value::Bytes(None)
    )
}

/// A distinct value for column number `i` that fits its type (the narrowest text column is
/// `country_code`, VARCHAR(6)).
fn sample_value(i: usize, column_type: &ColumnType) -> Value {
    match column_type {
        ColumnType::String(_) | ColumnType::Text => Value::from(format!("{i}张🎉")),
        ColumnType::Integer => Value::from(i32::try_from(i).unwrap() * 7 - 500),
        ColumnType::Double => Value::from(i as f64 + 0.125),
        ColumnType::Boolean => Value::from(i.is_multiple_of(2)),
        ColumnType::Binary(_) | ColumnType::VarBinary(_) | ColumnType::Blob => {
            // Not valid UTF-8: the bytes must come back as bytes.
            Value::from(vec![0_u8, 0xff, 0xfe, u8::try_from(i % 256).unwrap(), b'{'])
        }
        other => panic!("no sample for {other:?}"),
    }
}

#[tokio::test]
async fn a_user_with_every_column_set_round_trips_through_the_entity() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let mut row = <user::ActiveModel as ActiveModelTrait>::default();
        let mut expected = Vec::new();
        for (i, column) in user::Column::iter().enumerate() {
            let value = match column {
                user::Column::Owner => Value::from("acme"),
                user::Column::Name => Value::from("张三🎉"),
                user::Column::DisplayName => Value::from("张三 👩‍💻 O'Brien \"quoted\""),
                _ => sample_value(i, column.def().get_column_type()),
            };
            row.set(column, value.clone());
            expected.push((column, value));
        }
        assert_eq!(expected.len(), 181);
        user::Entity::insert(row)
            .exec_without_returning(db.conn())
            .await
            .unwrap_or_else(|e| panic!("{}: insert: {e}", t.label()));

        let stored = user::Entity::find_by_id(("acme".to_owned(), "张三🎉".to_owned()))
            .one(db.conn())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: the user is gone", t.label()));
        for (column, value) in expected {
            assert_eq!(
                stored.get(column),
                value,
                "{}: column {}",
                t.label(),
                column.as_str()
            );
        }
        // Both boolean values survive (TINYINT(1) / BOOL / INTEGER).
        assert_eq!(
            (stored.is_forbidden, stored.is_deleted),
            (Some(true), Some(false))
        );

        // group and casbin_user_rule, written as the pipeline will.
        let group_row = group::Model {
            owner: "acme".into(),
            name: "5823".into(),
            created_time: Some("2026-08-22T16:53:36+08:00".into()),
            updated_time: Some("2026-08-22T16:53:36+08:00".into()),
            display_name: Some("研发部 🚀".into()),
            manager: Some(String::new()),
            contact_email: Some(String::new()),
            r#type: Some("department".into()),
            parent_id: Some("1".into()),
            is_top_group: Some(false),
            title: Some(String::new()),
            key: Some(String::new()),
            children: Some("null".into()),
            is_enabled: Some(true),
            gid_number: Some(0),
            properties: Some("null".into()),
        };
        group::Entity::insert(sea_orm::IntoActiveModel::into_active_model(
            group_row.clone(),
        ))
        .exec_without_returning(db.conn())
        .await
        .unwrap();
        let groups = group::Entity::find().all(db.conn()).await.unwrap();
        assert_eq!(groups, vec![group_row], "{}", t.label());

        let rule = casbin_user_rule::ActiveModel {
            ptype: sea_orm::Set("g".into()),
            v0: sea_orm::Set("acme/张三🎉".into()),
            v1: sea_orm::Set("group:acme/5823".into()),
            ..Default::default()
        };
        let inserted = casbin_user_rule::Entity::insert(rule)
            .exec(db.conn())
            .await
            .unwrap();
        let rule = casbin_user_rule::Entity::find_by_id(inserted.last_insert_id)
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (rule.v0.as_str(), rule.v1.as_str(), rule.v2.as_str()),
            ("acme/张三🎉", "group:acme/5823", ""),
            "{}: v2..v5 take the column default",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn add_syncer_writes_a_casdoor_shaped_row_that_list_and_enable_work_on() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let before = Utc::now();
        db::add_syncer(&db, new_syncer("dingtalk_acme"))
            .await
            .unwrap();

        let raw = syncer::Entity::find_by_id(("admin".to_owned(), "dingtalk_acme".to_owned()))
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        let created = raw.created_time.clone().unwrap();
        let created_at = DateTime::parse_from_rfc3339(&created).unwrap();
        assert!(!created.contains('.'), "no fractions: {created}");
        assert!(
            (created_at.with_timezone(&Utc) - before)
                .num_seconds()
                .abs()
                <= 5,
            "{created}"
        );
        let s = |v: &str| Some(v.to_owned());
        let expected = syncer::Model {
            owner: "admin".into(),
            name: "dingtalk_acme".into(),
            created_time: Some(created),
            organization: s("acme"),
            r#type: s("DingTalk"),
            database_type: s("mysql"),
            ssl_mode: s(""),
            ssh_type: s(""),
            host: s(""),
            port: Some(3306),
            user: s("dingappkey123"),
            password: s("S3cret-秘密-xyz"),
            ssh_host: s(""),
            ssh_port: Some(0),
            ssh_user: s(""),
            ssh_password: s(""),
            cert: s(""),
            database: s("dbName"),
            table: s("table_name"),
            table_columns: s(DEFAULT_TABLE_COLUMNS),
            affiliation_table: s(""),
            avatar_base_url: s(""),
            error_text: s(""),
            sync_interval: Some(600),
            is_read_only: Some(true),
            is_enabled: Some(true),
        };
        assert_eq!(raw, expected, "{}", t.label());

        let duplicate = db::add_syncer(&db, new_syncer("dingtalk_acme")).await;
        assert!(
            matches!(&duplicate, Err(DbError::SyncerExists { name }) if name == "dingtalk_acme"),
            "{}: {duplicate:?}",
            t.label()
        );

        let listed = db::list_syncers(&db).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].app_secret.expose(), "S3cret-秘密-xyz");
        assert_eq!(listed[0].app_key, "dingappkey123");
        assert_eq!(listed[0].syncer_type, "DingTalk");
        assert!(listed[0].is_enabled && listed[0].is_read_only);

        db::set_syncer_enabled(&db, "dingtalk_acme", false)
            .await
            .unwrap();
        assert!(
            !db::get_syncer(&db, "dingtalk_acme")
                .await
                .unwrap()
                .unwrap()
                .is_enabled
        );
        // Unchanged value: MySQL reports 0 affected rows, which is not "not found".
        db::set_syncer_enabled(&db, "dingtalk_acme", false)
            .await
            .unwrap();
        db::set_syncer_enabled(&db, "dingtalk_acme", true)
            .await
            .unwrap();
        assert!(
            db::get_syncer(&db, "dingtalk_acme")
                .await
                .unwrap()
                .unwrap()
                .is_enabled
        );
        let missing = db::set_syncer_enabled(&db, "nope", true).await;
        assert!(
            matches!(&missing, Err(DbError::SyncerNotFound { name }) if name == "nope"),
            "{missing:?}"
        );
        assert!(db::get_syncer(&db, "nope").await.unwrap().is_none());

        // Newest first by created_time, like Casdoor.
        syncer::Entity::update_many()
            .col_expr(
                syncer::Column::CreatedTime,
                Expr::value("2020-01-01T00:00:00+08:00"),
            )
            .filter(syncer::Column::Name.eq("dingtalk_acme"))
            .exec(db.conn())
            .await
            .unwrap();
        db::add_syncer(&db, new_syncer("b_newer")).await.unwrap();
        let names: Vec<String> = db::list_syncers(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["b_newer", "dingtalk_acme"], "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn debug_of_a_stored_syncer_row_never_shows_the_secret() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        db::add_syncer(&db, new_syncer("s1")).await.unwrap();
        let row = db::get_syncer(&db, "s1").await.unwrap().unwrap();
        let raw = syncer::Entity::find()
            .one(db.conn())
            .await
            .unwrap()
            .unwrap();
        for debug in [
            format!("{row:?}"),
            format!("{row:#?}"),
            format!("{raw:?}"),
            format!("{db:?}"),
        ] {
            assert!(!debug.contains("S3cret"), "{}: {debug}", t.label());
        }
        assert!(format!("{row:?}").contains("dingappkey123"));
        db.close().await.unwrap();
    })
    .await;
}

/// Splits an `error_text` line into its time and message, checking Casdoor's format.
fn parse_error_line(line: &str) -> (DateTime<chrono::FixedOffset>, &str) {
    let rest = line
        .strip_prefix('[')
        .unwrap_or_else(|| panic!("no `[`: {line}"));
    let (time, message) = rest
        .split_once("] ")
        .unwrap_or_else(|| panic!("no `] `: {line}"));
    assert!(!time.contains('.'), "no fractions: {time}");
    (DateTime::parse_from_rfc3339(time).unwrap(), message)
}

#[tokio::test]
async fn append_syncer_error_keeps_casdoor_format_and_the_64_kib_cap() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        db::add_syncer(&db, new_syncer("s1")).await.unwrap();
        db::append_syncer_error(
            &db,
            "s1",
            "failed to get access token: errcode=40089, errmsg=不合法的corpid或corpsecret",
        )
        .await
        .unwrap();
        db::append_syncer_error(
            &db,
            "s1",
            "GET https://oapi.dingtalk.com/gettoken?appkey=k&appsecret=leaky-secret failed",
        )
        .await
        .unwrap();
        let text = db::get_syncer(&db, "s1").await.unwrap().unwrap().error_text;
        assert!(text.ends_with('\n'), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        let (_, first) = parse_error_line(lines[0]);
        assert_eq!(
            first,
            "failed to get access token: errcode=40089, errmsg=不合法的corpid或corpsecret"
        );
        let (_, second) = parse_error_line(lines[1]);
        assert!(
            second.contains("appsecret=[redacted]") && !second.contains("leaky"),
            "{second}"
        );

        // 21,846 three-byte characters = 65,538 bytes: the cut lands inside the characters.
        let filler = "张".repeat(21_846);
        syncer::Entity::update_many()
            .col_expr(syncer::Column::ErrorText, Expr::value(filler))
            .filter(syncer::Column::Name.eq("s1"))
            .exec(db.conn())
            .await
            .unwrap();
        db::append_syncer_error(&db, "s1", "tail message")
            .await
            .unwrap();
        let text = db::get_syncer(&db, "s1").await.unwrap().unwrap().error_text;
        assert!(
            text.len() <= 65_536 && text.len() > 65_536 - 3,
            "{}: {} bytes",
            t.label(),
            text.len()
        );
        let (head, last) = text.trim_end_matches('\n').rsplit_once('[').unwrap();
        assert!(head.chars().all(|c| c == '张'), "{}", t.label());
        assert_eq!(parse_error_line(&format!("[{last}")).1, "tail message");

        let missing = db::append_syncer_error(&db, "nope", "x").await;
        assert!(
            matches!(missing, Err(DbError::SyncerNotFound { .. })),
            "{missing:?}"
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn concurrent_error_appends_lose_no_line() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        db::add_syncer(&db, new_syncer("s1")).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    db::append_syncer_error(&db, "s1", &format!("error {i}")).await
                })
            })
            .collect();
        for task in tasks {
            task.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e}", t.label()));
        }
        let text = db::get_syncer(&db, "s1").await.unwrap().unwrap().error_text;
        let mut messages: Vec<&str> = text.lines().map(|l| parse_error_line(l).1).collect();
        messages.sort_unstable();
        let expected: Vec<String> = (0..8).map(|i| format!("error {i}")).collect();
        assert_eq!(messages, expected, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn new_run(syncer: &str, started: &str) -> NewRun {
    NewRun {
        syncer_name: syncer.to_owned(),
        organization: "acme".to_owned(),
        trigger: RunTrigger::Schedule,
        mode: RunMode::Apply,
        started_at: at(started),
        instance: "host-a:4242".to_owned(),
    }
}

#[tokio::test]
async fn run_history_records_outcomes_filters_and_lists_newest_first() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let r1 = db::insert_run(&db, new_run("alpha", "2026-11-25T01:00:00.000Z"))
            .await
            .unwrap();
        let r2 = db::insert_run(
            &db,
            NewRun {
                trigger: RunTrigger::Cli,
                mode: RunMode::DryRun,
                ..new_run("beta", "2026-11-25T02:00:00.000Z")
            },
        )
        .await
        .unwrap();
        let r3 = db::insert_run(&db, new_run("alpha", "2026-11-25T03:00:00.500Z"))
            .await
            .unwrap();
        assert!(r1 < r2 && r2 < r3, "{}: ids {r1} {r2} {r3}", t.label());

        let started = db::get_run(&db, r1).await.unwrap().unwrap();
        assert_eq!(started.status, RunStatus::Running);
        assert_eq!(started.finished_at, None);
        assert_eq!(started.counts, RunCounts::default());
        assert_eq!(started.instance, "host-a:4242");

        let details = serde_json::json!({
            "errors": [{"userid": "u1", "message": "名字太长"}],
            "endpoints": {"topapi/v2/user/list": {"calls": 12, "retries": 1}}
        });
        let outcome = RunOutcome {
            status: RunStatus::Partial,
            counts: RunCounts {
                fetched: 120,
                created: 3,
                updated: 4,
                unchanged: 110,
                forbidden: 1,
                unforbidden: 2,
                deleted: 0,
                groups_created: 5,
                groups_updated: 6,
                memberships_changed: 7,
                record_errors: 1,
                ..RunCounts::default()
            },
            api_calls: 42,
            error_summary: Some(
                "1 record failed; token call to https://h/gettoken?appsecret=oops".to_owned(),
            ),
            details: Some(details.clone()),
            finished_at: at("2026-11-25T01:00:01.234Z"),
            duration: Duration::from_millis(1234),
        };
        db::finish_run(&db, r1, outcome.clone()).await.unwrap();
        let done = db::get_run(&db, r1).await.unwrap().unwrap();
        assert_eq!(done.status, RunStatus::Partial);
        assert_eq!(done.counts, outcome.counts);
        assert_eq!(done.api_calls, 42);
        assert_eq!(done.details, Some(details));
        assert_eq!(done.duration, Some(Duration::from_millis(1234)));
        assert_eq!(done.finished_at, Some(at("2026-11-25T01:00:01.234Z")));
        assert_eq!(done.started_at, at("2026-11-25T01:00:00.000Z"));
        let summary = done.error_summary.unwrap();
        assert!(summary.contains("appsecret=[redacted]") && !summary.contains("oops"));
        assert!(matches!(
            db::finish_run(&db, 999_999, outcome.clone()).await,
            Err(DbError::RunNotFound { id: 999_999 })
        ));
        assert!(db::get_run(&db, 999_999).await.unwrap().is_none());

        let ids = |rows: Vec<db::RunRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let all = db::list_runs(&db, &RunFilter::default()).await.unwrap();
        assert_eq!(ids(all), [r3, r2, r1], "{}: newest first", t.label());
        let alpha = RunFilter {
            syncer: Some("alpha".into()),
            ..RunFilter::default()
        };
        assert_eq!(ids(db::list_runs(&db, &alpha).await.unwrap()), [r3, r1]);
        let running = RunFilter {
            status: Some(RunStatus::Running),
            ..RunFilter::default()
        };
        assert_eq!(ids(db::list_runs(&db, &running).await.unwrap()), [r3, r2]);
        let since = RunFilter {
            since: Some(at("2026-11-25T02:00:00.000Z")),
            ..RunFilter::default()
        };
        assert_eq!(ids(db::list_runs(&db, &since).await.unwrap()), [r3, r2]);
        let one = RunFilter {
            limit: 1,
            ..RunFilter::default()
        };
        assert_eq!(ids(db::list_runs(&db, &one).await.unwrap()), [r3]);
        let beta = db::get_run(&db, r2).await.unwrap().unwrap();
        assert_eq!(
            (beta.trigger, beta.mode),
            (RunTrigger::Cli, RunMode::DryRun)
        );

        // Only `running` rows that match the filter are closed.
        let stale = StaleRunFilter {
            syncer: Some("alpha".into()),
            instance: Some("host-a:4242".into()),
            started_before: Some(at("2026-11-25T04:00:00.000Z")),
            ids: None,
        };
        let changed = db::mark_interrupted(
            &db,
            &stale,
            at("2026-11-25T05:00:00.000Z"),
            "syncerd stopped before the run finished",
        )
        .await
        .unwrap();
        assert_eq!(changed, 1, "{}: only r3 (r1 is finished)", t.label());
        let r3_row = db::get_run(&db, r3).await.unwrap().unwrap();
        assert_eq!(r3_row.status, RunStatus::Interrupted);
        assert_eq!(r3_row.finished_at, Some(at("2026-11-25T05:00:00.000Z")));
        assert_eq!(r3_row.duration, None);
        assert_eq!(
            db::get_run(&db, r1).await.unwrap().unwrap().status,
            RunStatus::Partial
        );
        assert_eq!(
            db::get_run(&db, r2).await.unwrap().unwrap().status,
            RunStatus::Running
        );
        let everything = StaleRunFilter::default();
        let changed = db::mark_interrupted(&db, &everything, Utc::now(), "gone")
            .await
            .unwrap();
        assert_eq!(changed, 1, "{}: r2", t.label());
        db.close().await.unwrap();
    })
    .await;
}

/// Records a finished run of `syncer` and returns its id.
async fn finished_run(
    db: &db::Db,
    syncer: &str,
    trigger: RunTrigger,
    mode: RunMode,
    status: RunStatus,
    started: &str,
) -> i64 {
    let id = db::insert_run(
        db,
        NewRun {
            trigger,
            mode,
            ..new_run(syncer, started)
        },
    )
    .await
    .unwrap();
    if status != RunStatus::Running {
        let outcome = RunOutcome {
            status,
            counts: RunCounts::default(),
            api_calls: 0,
            error_summary: None,
            details: None,
            finished_at: at(started),
            duration: Duration::ZERO,
        };
        db::finish_run(db, id, outcome).await.unwrap();
    }
    id
}

#[tokio::test]
async fn the_previous_status_of_a_run_skips_dry_interrupted_and_other_kinds_of_runs() {
    use RunStatus::{Failed, Held, Interrupted, Running, Succeeded};
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let previous = |kind, before| db::previous_status(&db, "alpha", kind, before);
        let (full, event) = (db::RunKind::Full, db::RunKind::Event);
        assert_eq!(previous(full, None).await.unwrap(), None, "{}", t.label());

        let (schedule, apply) = (RunTrigger::Schedule, RunMode::Apply);
        let f1 = finished_run(
            &db,
            "alpha",
            schedule,
            apply,
            Failed,
            "2026-11-25T01:00:00Z",
        )
        .await;
        let e1 = finished_run(
            &db,
            "alpha",
            RunTrigger::Event,
            apply,
            Held,
            "2026-11-25T01:10:00Z",
        )
        .await;
        // Neither a dry run, an interrupted one, one still going nor another syncer's counts.
        finished_run(
            &db,
            "alpha",
            RunTrigger::Cli,
            RunMode::DryRun,
            Succeeded,
            "2026-11-25T01:20:00Z",
        )
        .await;
        finished_run(
            &db,
            "alpha",
            schedule,
            apply,
            Interrupted,
            "2026-11-25T01:30:00Z",
        )
        .await;
        finished_run(
            &db,
            "beta",
            schedule,
            apply,
            Succeeded,
            "2026-11-25T01:40:00Z",
        )
        .await;
        let s2 = finished_run(
            &db,
            "alpha",
            RunTrigger::Manual,
            apply,
            Succeeded,
            "2026-11-25T02:00:00Z",
        )
        .await;
        let now = finished_run(
            &db,
            "alpha",
            schedule,
            apply,
            Running,
            "2026-11-25T03:00:00Z",
        )
        .await;

        assert_eq!(
            previous(full, Some(now)).await.unwrap(),
            Some(Succeeded),
            "{}",
            t.label()
        );
        assert_eq!(
            previous(full, Some(s2)).await.unwrap(),
            Some(Failed),
            "{}",
            t.label()
        );
        assert_eq!(
            previous(full, Some(f1)).await.unwrap(),
            None,
            "{}",
            t.label()
        );
        assert_eq!(
            previous(event, Some(now)).await.unwrap(),
            Some(Held),
            "{}",
            t.label()
        );
        assert_eq!(
            previous(event, Some(e1)).await.unwrap(),
            None,
            "{}",
            t.label()
        );
        // Without an id of its own (the run could not record itself): the newest finished run.
        assert_eq!(
            previous(full, None).await.unwrap(),
            Some(Succeeded),
            "{}",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

fn problems(result: Result<(), SchemaError>) -> (Vec<SchemaProblem>, String) {
    match result {
        Err(e @ SchemaError::Mismatch { .. }) => {
            let message = e.to_string();
            let SchemaError::Mismatch { problems, .. } = e else {
                unreachable!()
            };
            (problems, message)
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn check_schema_names_missing_tables_and_columns_and_says_what_to_do() {
    on_every_engine(async |t| {
        // An empty database: nothing is there.
        let db = t.connect().await;
        let (found, message) = problems(db::check_schema(&db).await);
        for table in CASDOOR_TABLES {
            assert!(
                found.contains(&SchemaProblem::MissingCasdoorTable {
                    table: table.to_owned()
                }),
                "{}: {found:?}",
                t.label()
            );
        }
        assert!(found.contains(&SchemaProblem::MissingSyncerdTables {
            tables: vec![
                "syncer_run".into(),
                "syncer_link".into(),
                "syncer_lease".into(),
                "syncer_event".into(),
                "syncer_change".into()
            ]
        }));
        assert!(message.contains("`syncerd migrate`"), "{message}");

        // Casdoor's tables, but syncerd never migrated.
        t.create_casdoor_tables(&db).await;
        let (found, message) = problems(db::check_schema(&db).await);
        assert_eq!(found.len(), 2, "{}: {found:?}", t.label());
        assert!(
            matches!(&found[0], SchemaProblem::MissingSyncerdTables { tables } if tables.len() == 5)
        );
        assert!(
            matches!(&found[1], SchemaProblem::PendingMigrations { names } if names.len() == 5)
        );
        assert!(
            message.contains("syncer_run") && message.contains("run `syncerd migrate`"),
            "{message}"
        );
        db.close().await.unwrap();

        // A `user` table without `dingtalk` (a foreign or very old schema), then migrated.
        let other = t.another().await;
        let db = other.connect().await;
        other
            .create_casdoor_tables_without(&db, "user", "dingtalk")
            .await;
        db::migrate(&db).await.unwrap();
        let (found, message) = problems(db::check_schema(&db).await);
        assert_eq!(
            found,
            [SchemaProblem::MissingCasdoorColumns {
                table: "user".into(),
                columns: vec!["dingtalk".into()]
            }],
            "{}",
            t.label()
        );
        assert!(
            message.contains("`user`")
                && message.contains("`dingtalk`")
                && message.contains("Casdoor database")
                && message.contains("`syncerd migrate`"),
            "{message}"
        );
        assert!(
            !message.contains("webauthnCredentials"),
            "camelCase columns are found: {message}"
        );
        db.close().await.unwrap();
        other.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn connect_fails_fast_and_redacted_when_the_server_is_not_there() {
    let settings = syncerd::config::DatabaseSettings {
        url: syncerd::config::DatabaseUrl::new("mysql://root:Hunter2-pw@127.0.0.1:1/casdoor"),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = db::connect(&settings).await.err().unwrap().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(!err.contains("Hunter2-pw"), "{err}");
    assert!(
        err.contains("MySQL/MariaDB")
            && err.contains("127.0.0.1:1")
            && err.contains("database.url"),
        "{err}"
    );
}

#[tokio::test]
async fn mysql_urls_without_a_database_are_refused_with_a_hint() {
    let Some(t) = TestDb::mysql().await else {
        return;
    };
    let server = std::env::var(common::MYSQL_ENV).unwrap();
    let settings = syncerd::config::DatabaseSettings {
        url: syncerd::config::DatabaseUrl::new(server),
        ..t.settings()
    };
    let err = db::connect(&settings).await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(err.contains("names no database"), "{err}");
    t.cleanup().await;
}

/// Between runs an idle SQLite connection gives up its cached statements (megabytes each for a
/// run's multi-row INSERTs); a connection keeps working afterwards.
#[tokio::test]
async fn release_idle_memory_empties_the_idle_sqlite_connections_statement_caches() {
    use sea_orm::sqlx::{Connection, Executor};

    let t = TestDb::sqlite().await;
    let db = t.connect().await;
    db::migrate(&db).await.unwrap();
    db::add_syncer(&db, new_syncer("s1")).await.unwrap();
    let pool = db.conn().get_sqlite_connection_pool();
    // Two connections at once, each preparing (and caching) a statement.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.acquire().await.unwrap();
        let n: i64 = sea_orm::sqlx::query_scalar("SELECT COUNT(*) FROM syncer WHERE name = ?")
            .bind("s1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(conn.cached_statements_size() > 0);
        held.push(conn);
    }
    drop(held);

    db.release_idle_memory().await;

    // Connections go back to the pool in tasks of their own.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.num_idle() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conns = Vec::new();
    while let Some(conn) = pool.try_acquire() {
        conns.push(conn);
    }
    assert!(conns.len() >= 2, "{} idle connections", conns.len());
    for conn in &mut conns {
        assert_eq!(conn.cached_statements_size(), 0);
        conn.execute("SELECT 1").await.unwrap();
    }
    drop(conns);
    assert_eq!(db::list_syncers(&db).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_last_full_run_is_the_newest_that_wrote_casdoor_whole() {
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let run = async |trigger, mode, status, started: &str| {
            let id = db::insert_run(
                &db,
                NewRun {
                    trigger,
                    mode,
                    ..new_run("alpha", started)
                },
            )
            .await
            .unwrap();
            let outcome = RunOutcome {
                status,
                counts: RunCounts::default(),
                api_calls: 1,
                error_summary: None,
                details: None,
                finished_at: at(started),
                duration: Duration::from_millis(1),
            };
            db::finish_run(&db, id, outcome).await.unwrap();
        };
        let last = async || db::runs::last_full_run_started(&db, "alpha").await.unwrap();
        assert_eq!(last().await, None, "{}", t.label());
        use RunStatus::*;
        run(
            RunTrigger::Schedule,
            RunMode::Apply,
            Partial,
            "2026-11-25T01:00:00.000Z",
        )
        .await;
        assert_eq!(
            last().await,
            Some(at("2026-11-25T01:00:00.000Z")),
            "partial only"
        );
        run(
            RunTrigger::Catchup,
            RunMode::Apply,
            Succeeded,
            "2026-11-25T02:00:00.000Z",
        )
        .await;
        // Newer, but none of them a full run that wrote Casdoor whole.
        run(
            RunTrigger::Event,
            RunMode::Apply,
            Succeeded,
            "2026-11-25T03:00:00.000Z",
        )
        .await;
        run(
            RunTrigger::Manual,
            RunMode::DryRun,
            Succeeded,
            "2026-11-25T04:00:00.000Z",
        )
        .await;
        run(
            RunTrigger::Schedule,
            RunMode::Apply,
            Failed,
            "2026-11-25T05:00:00.000Z",
        )
        .await;
        run(
            RunTrigger::Schedule,
            RunMode::Apply,
            Partial,
            "2026-11-25T06:00:00.000Z",
        )
        .await;
        assert_eq!(
            last().await,
            Some(at("2026-11-25T02:00:00.000Z")),
            "{}",
            t.label()
        );
        assert_eq!(
            db::runs::last_full_run_started(&db, "beta").await.unwrap(),
            None
        );
        db.close().await.unwrap();
    })
    .await;
}
