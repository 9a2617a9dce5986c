#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Whole runs: dry run, run history, `error_text`, secrets, failed fetches, invalid syncers and
//! cancellation, on every available engine.

mod common;

use chrono::DateTime;
use common::directory::{self, unionid, user_mut, userid, without};
use common::pipeline::{
    ALL_TABLES, ORG, SECRET, SYNCER, apply, assert_status, context, count, dry_run, rows, run,
    setup, sync_settings, unique_email_taken_by_outsider, user_row,
};
use common::{TestDb, on_every_engine};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use syncerd::db::entities::syncer;
use syncerd::db::{self, Db, RunMode, RunStatus, RunTrigger};
use syncerd::dingtalk::types::Department;
use syncerd::pipeline::{
    ChangeAction, ErrorKind, ObjectKind, Phase, Progress, run_once, run_with_directory,
};
use tokio::sync::watch;

/// Asserts two dumps are equal, showing only the lines that differ.
///
/// InnoDB's `AUTO_INCREMENT` counter (shown in `SHOW CREATE TABLE`) is not transactional: a
/// rolled-back insert into `casbin_user_rule` still advances it, exactly like a PostgreSQL
/// sequence (which the dump does not show). No row or definition changes; only the next id has
/// a gap, as after any rolled-back transaction. That table option is left out of the comparison.
fn assert_same_dump(t: &TestDb, before: &str, after: &str) {
    let strip = |dump: &str| -> String {
        dump.lines()
            .map(|line| match line.find(" AUTO_INCREMENT=") {
                Some(at) if line.starts_with(") ENGINE=") => {
                    let rest = &line[at + " AUTO_INCREMENT=".len()..];
                    let digits = rest.chars().take_while(char::is_ascii_digit).count();
                    format!("{}{}", &line[..at], &rest[digits..])
                }
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (before, after) = (strip(before), strip(after));
    if before != after {
        let old: Vec<&str> = before
            .lines()
            .filter(|l| !after.lines().any(|a| a == *l))
            .collect();
        let new: Vec<&str> = after
            .lines()
            .filter(|l| !before.lines().any(|b| b == *l))
            .collect();
        panic!(
            "{}: the database changed\n- {old:#?}\n+ {new:#?}",
            t.label()
        );
    }
}

async fn error_text(db: &Db) -> String {
    db::get_syncer(db, SYNCER)
        .await
        .unwrap()
        .unwrap()
        .error_text
}

/// Asserts that `text` is Casdoor-format lines `[<RFC 3339>] <message>\n`, and returns the
/// messages.
fn error_lines(text: &str) -> Vec<String> {
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    text.lines()
        .map(|line| {
            let rest = line.strip_prefix('[').expect("line starts with [");
            let (time, message) = rest.split_once("] ").expect("] after the time");
            assert!(
                DateTime::parse_from_rfc3339(time).is_ok() && !time.contains('.'),
                "{time:?}"
            );
            message.to_owned()
        })
        .collect()
}

/// Whether `text` holds the test App Secret, as text or as MySQL's hex dump of it.
fn holds_secret(text: &str) -> bool {
    let hex: String = SECRET.bytes().map(|b| format!("{b:02X}")).collect();
    text.contains(SECRET) || text.contains(&hex)
}

/// The directory after a day of changes: user 30 joins a new department, user 3's title
/// changes, user 4 leaves.
fn changed(dir: &syncerd::dingtalk::types::Directory) -> syncerd::dingtalk::types::Directory {
    let mut next = without(dir, &[4]);
    next.departments.push(Department {
        dept_id: 200,
        name: Some("新部门 ✨".into()),
        parent_id: Some(1),
    });
    next.users.push(directory::user(30, &[200]));
    user_mut(&mut next, 3).title = Some("首席 🦄".into());
    next
}

#[tokio::test]
async fn a_dry_run_leaves_every_table_byte_for_byte_unchanged_and_writes_no_history() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(10));
        let dir = directory::directory(30, 3);
        run(&ctx, &syncer, &dir, apply()).await;
        let next = changed(&dir);

        let before = t.dump_tables(&db, &ALL_TABLES).await;
        let report = run(&ctx, &syncer, &next, dry_run()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.run_id, None);
        assert_eq!(report.mode, RunMode::DryRun);
        let c = report.counts;
        assert_eq!(
            (c.created, c.updated, c.forbidden, c.groups_created),
            (1, 1, 1, 1),
            "{}",
            t.label()
        );
        assert_same_dump(t, &before, &t.dump_tables(&db, &ALL_TABLES).await);

        // The report shows per-field changes.
        let title = report
            .changes
            .iter()
            .find(|c| c.external_id == userid(3))
            .expect("title change");
        assert_eq!(
            (title.object, title.action, title.name.as_str()),
            (ObjectKind::User, ChangeAction::Update, unionid(3).as_str())
        );
        let column = title.columns.iter().find(|c| c.column == "title").unwrap();
        assert_eq!(column.new, serde_json::json!("首席 🦄"));
        assert!(column.old.is_some());
        assert!(
            report
                .changes
                .iter()
                .any(|c| c.action == ChangeAction::Leave && c.external_id == userid(4))
        );
        assert!(
            report
                .changes
                .iter()
                .any(|c| c.action == ChangeAction::Create
                    && c.object == ObjectKind::Group
                    && c.external_id == "200")
        );
        let text = report.render_text();
        assert!(
            text.contains("dry run") && text.contains("首席 🦄"),
            "{text}"
        );

        // A real run then does exactly what the dry run said.
        let real = run(&ctx, &syncer, &next, apply()).await;
        assert_status(t, &real, RunStatus::Succeeded);
        assert_eq!(real.counts, report.counts, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_dry_run_checks_database_constraints_exactly_like_a_real_run() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        unique_email_taken_by_outsider(t, &db, "user7@example.com").await;
        let ctx = context(&db, sync_settings(8));
        let dir = directory::directory(40, 2);
        let before = t.dump_tables(&db, &ALL_TABLES).await;
        let dry = run(&ctx, &syncer, &dir, dry_run()).await;
        assert_status(t, &dry, RunStatus::Partial);
        assert_eq!(
            (dry.counts.created, dry.counts.rows_rejected),
            (39, 1),
            "{}",
            t.label()
        );
        assert!(
            dry.errors.iter().any(
                |e| e.kind == ErrorKind::Row && e.userid.as_deref() == Some(userid(7).as_str())
            )
        );
        assert_same_dump(t, &before, &t.dump_tables(&db, &ALL_TABLES).await);

        let real = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &real, RunStatus::Partial);
        assert_eq!(real.counts, dry.counts, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn run_history_and_error_text_are_written_as_specified_and_never_hold_the_secret() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let mut sync = sync_settings(50);
        sync.max_removals = 1;
        let ctx = context(&db, sync);
        let dir = directory::directory(30, 3);
        let mut reports = Vec::new();

        // Succeeded: a complete history row, nothing in error_text.
        let ok = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &ok, RunStatus::Succeeded);
        let id = ok.run_id.expect("run id");
        let row = db::get_run(&db, id).await.unwrap().unwrap();
        assert_eq!(row.status, RunStatus::Succeeded);
        assert_eq!(
            (row.trigger, row.mode, row.instance.as_str()),
            (RunTrigger::Cli, RunMode::Apply, "test-host:4242")
        );
        assert_eq!(row.syncer_name, SYNCER);
        assert_eq!(row.organization, ORG);
        assert_eq!(row.counts, ok.counts.as_stored());
        assert_eq!(row.counts.created, 30);
        assert_eq!(row.api_calls, dir.total_calls());
        assert!(row.finished_at.is_some() && row.duration.is_some());
        assert_eq!(row.error_summary, None);
        assert_eq!(error_text(&db).await, "", "{}", t.label());
        reports.push(ok);

        // Partial: one line naming the record.
        let mut bad = dir.clone();
        user_mut(&mut bad, 8).title = Some("长".repeat(600));
        let partial = run(&ctx, &syncer, &bad, apply()).await;
        assert_status(t, &partial, RunStatus::Partial);
        let row = db::get_run(&db, partial.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Partial);
        assert_eq!(row.counts.record_errors, 1);
        let summary = row.error_summary.clone().unwrap_or_default();
        assert!(summary.contains(&userid(8)), "{summary}");
        let details = row.details.clone().unwrap();
        assert_eq!(details["errors"][0]["userid"], serde_json::json!(userid(8)));
        let lines = error_lines(&error_text(&db).await);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&userid(8)) && lines[0].contains("partially"), "{lines:?}");
        reports.push(partial);

        // Held: the line says how to release the removals.
        let held = run(&ctx, &syncer, &without(&dir, &[1, 2, 3]), apply()).await;
        assert_status(t, &held, RunStatus::Held);
        let lines = error_lines(&error_text(&db).await);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("--allow-removals"), "{lines:?}");
        reports.push(held);

        // Failed fetch, from a client that (wrongly) put the secret in its message: scrubbed.
        let failed = run_with_directory(
            &ctx,
            &syncer,
            Err::<syncerd::dingtalk::types::Directory, _>(format!(
                "GET https://oapi.dingtalk.com/gettoken?appkey=k&appsecret={SECRET} timed out (secret {SECRET})"
            )),
            apply(),
        )
        .await;
        assert_status(t, &failed, RunStatus::Failed);
        let message = failed.message.clone().unwrap_or_default();
        assert!(message.contains("fetching the DingTalk directory failed"), "{message}");
        let row = db::get_run(&db, failed.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Failed);
        let lines = error_lines(&error_text(&db).await);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[2].contains("fetching the DingTalk directory failed"), "{lines:?}");
        reports.push(failed);

        // An invalid syncer is a failed run naming the problem.
        syncer::Entity::update_many()
            .col_expr(syncer::Column::User, Expr::value(""))
            .filter(syncer::Column::Name.eq(SYNCER))
            .exec(db.conn())
            .await
            .unwrap();
        let invalid_row = db::get_syncer(&db, SYNCER).await.unwrap().unwrap();
        let invalid = run(&ctx, &invalid_row, &dir, apply()).await;
        assert_status(t, &invalid, RunStatus::Failed);
        let message = invalid.message.clone().unwrap_or_default();
        assert!(message.contains("App Key"), "{message}");
        let lines = error_lines(&error_text(&db).await);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[3].contains("App Key"), "{lines:?}");
        reports.push(invalid);

        // The secret is nowhere: not in the history, not in error_text, not in any report.
        let history = t.dump_tables(&db, &["syncer_run", "syncer_link"]).await;
        assert!(!holds_secret(&history), "{}: secret in syncer_run", t.label());
        assert!(!holds_secret(&error_text(&db).await));
        for report in &reports {
            let json = serde_json::to_string(report).unwrap();
            assert!(!holds_secret(&json), "{json}");
            assert!(!holds_secret(&report.render_text()));
        }
        let runs = db::list_runs(
            &db,
            &db::RunFilter {
                limit: 100,
                ..db::RunFilter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(runs.len(), 5, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_failed_fetch_writes_no_user_and_acts_on_no_leaver() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(50));
        let dir = directory::directory(20, 2);
        run(&ctx, &syncer, &dir, apply()).await;
        let tables = ["user", "group", "casbin_user_rule", "syncer_link"];
        let before = t.dump_tables(&db, &tables).await;
        let report = run_with_directory(
            &ctx,
            &syncer,
            Err::<syncerd::dingtalk::types::Directory, _>(
                "DingTalk answered errcode 88 (sub_code 40014: invalid access token)".to_owned(),
            ),
            apply(),
        )
        .await;
        assert_status(t, &report, RunStatus::Failed);
        assert_eq!(report.counts.forbidden, 0);
        assert_eq!(t.dump_tables(&db, &tables).await, before, "{}", t.label());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn cancellation_between_batches_interrupts_with_whole_batches_only() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        const BATCH: u64 = 20;
        let ctx = context(&db, sync_settings(BATCH as usize));
        let dir = directory::directory(300, 12);
        let groups = dir.departments.len() as u64;

        let (tx, mut rx) = watch::channel(Progress::at(Phase::Starting));
        let mut opts = apply();
        opts.progress = Some(tx);
        let cancel = opts.cancel.clone();
        let watcher = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = *rx.borrow();
                if p.phase == Phase::Applying && p.rows_written >= 3 * BATCH {
                    cancel.cancel();
                    break;
                }
            }
        });
        let report = run(&ctx, &syncer, &dir, opts).await;
        watcher.await.unwrap();
        assert_status(t, &report, RunStatus::Interrupted);
        let written = report.counts.created + report.counts.groups_created;
        assert_eq!(written % BATCH, 0, "{}: whole batches only", t.label());
        assert!(
            (3 * BATCH..300).contains(&report.counts.created),
            "{}: {}",
            t.label(),
            report.counts.created
        );
        // What was written is whole: every committed user has its link and memberships.
        let created = report.counts.created as i64;
        assert_eq!(rows(t, &db, "user").await, created, "{}", t.label());
        assert_eq!(
            rows(t, &db, "syncer_link").await,
            created + groups as i64,
            "{}",
            t.label()
        );
        assert_eq!(
            count(t, &db, "SELECT COUNT(DISTINCT v0) FROM casbin_user_rule").await,
            created,
            "{}",
            t.label()
        );
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Interrupted);
        assert_eq!(row.counts.created, report.counts.created);
        assert_eq!(
            error_text(&db).await,
            "",
            "interrupted runs add no error_text line"
        );

        // The next run picks up the rest.
        let rest = run(&ctx, &syncer, &dir, apply()).await;
        assert_status(t, &rest, RunStatus::Succeeded);
        assert_eq!(rest.counts.created, 300 - report.counts.created);
        assert!(user_row(&db, &unionid(299)).await.is_some());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn cancellation_during_the_fetch_interrupts_before_anything_is_written() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(50));
        let opts = apply();
        let cancel = opts.cancel.clone();
        let fetch = async move {
            cancel.cancel();
            std::future::pending::<Result<syncerd::dingtalk::types::Directory, String>>().await
        };
        let report = run_once(&ctx, &syncer, fetch, opts).await;
        assert_status(t, &report, RunStatus::Interrupted);
        assert!(
            report
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("fetching"),
            "{:?}",
            report.message
        );
        assert_eq!(rows(t, &db, "user").await, 0);
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, RunStatus::Interrupted);
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn progress_ends_done_with_every_row_written() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(50));
        let dir = directory::directory(120, 4);
        let (tx, rx) = watch::channel(Progress::at(Phase::Starting));
        let mut opts = apply();
        opts.progress = Some(tx);
        let report = run(&ctx, &syncer, &dir, opts).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let last = *rx.borrow();
        assert_eq!(last.phase, Phase::Done);
        assert_eq!(
            (last.rows_written, last.rows_total),
            (125, 125),
            "{}",
            t.label()
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_database_that_stays_locked_fails_the_run_instead_of_rejecting_every_row() {
    // SQLite only: another writer takes the database lock during the fetch and keeps it for 7 s,
    // past the busy timeout (5 s) of the first batch, then lets the history be written.
    let t = TestDb::sqlite().await;
    let (db, syncer) = setup(&t).await;
    let ctx = context(&db, sync_settings(10));
    let dir = directory::directory(50, 2);
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let releaser = tokio::spawn(async move {
        let lock: sea_orm::DatabaseTransaction = locked_rx.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(7)).await;
        lock.rollback().await.unwrap();
    });
    let fetch = {
        let lock_db = t.connect().await;
        async move {
            let lock = lock_db.begin_write().await.unwrap();
            locked_tx.send(lock).ok();
            Ok::<_, String>(dir)
        }
    };
    let report = run_once(&ctx, &syncer, fetch, apply()).await;
    releaser.await.unwrap();
    assert_status(&t, &report, RunStatus::Failed);
    let message = report.message.clone().unwrap_or_default();
    assert!(message.contains("batch 1 of"), "{message}");
    assert_eq!(report.counts.created, 0);
    assert_eq!(report.counts.rows_rejected, 0, "not retried row by row");
    assert_eq!(rows(&t, &db, "user").await, 0);
    let row = db::get_run(&db, report.run_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, RunStatus::Failed);
    assert!(
        row.error_summary.unwrap_or_default().contains("batch 1 of"),
        "the failure is recorded"
    );
    db.close().await.unwrap();
}
