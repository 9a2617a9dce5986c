#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The per-user change log (`syncer_change`) on every engine: what apply records, in the
//! transaction of the change, what it does not (dry runs, rolled-back rows, secret values), the
//! CLI that reads it, and its retention.

mod common;

use std::process::Command;

use chrono::{Duration, Utc};
use common::directory::{self, unionid, user_mut, userid, without};
use common::pipeline::{
    ORG, SECRET, apply, assert_status, context, count, dry_run, run, setup, sync_settings,
    unique_email_taken_by_outsider,
};
use common::{TestDb, on_every_engine};
use serde_json::{Value, json};
use syncerd::db::changes::{
    ChangeAction, ChangeRow, prune_older_than, run_changes, run_changes_page, user_changes,
};
use syncerd::db::{Db, RunStatus};
use syncerd::pipeline::RunReport;

async fn changes_of(db: &Db, report: &RunReport) -> Vec<ChangeRow> {
    run_changes(db, report.run_id.expect("a recorded run"))
        .await
        .unwrap()
}

fn of_action(rows: &[ChangeRow], action: ChangeAction) -> Vec<&ChangeRow> {
    rows.iter().filter(|r| r.action == action).collect()
}

async fn change_rows(t: &TestDb, db: &Db) -> i64 {
    count(
        t,
        db,
        &format!("SELECT COUNT(*) FROM {}", t.quote("syncer_change")),
    )
    .await
}

#[tokio::test]
async fn a_first_import_logs_one_created_row_per_user_and_nothing_else() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(7));
        let report = run(&ctx, &syncer, &directory::directory(30, 3), apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let rows = changes_of(&db, &report).await;
        assert_eq!(rows.len(), 30, "{}: {rows:#?}", t.label());
        assert!(rows.iter().all(|r| r.action == ChangeAction::Created));
        let u5 = rows.iter().find(|r| r.userid == userid(5)).unwrap();
        assert_eq!(
            (u5.casdoor_name.as_str(), u5.organization.as_str()),
            (unionid(5).as_str(), ORG)
        );
        assert_eq!(u5.changes[0]["column"], "groups");
        assert!(
            u5.changes[0]["new"].as_str().unwrap().contains("acme/"),
            "{}",
            u5.changes
        );
        assert!((Utc::now() - u5.created_at).num_minutes() < 5);

        // A run that changes nothing logs nothing.
        let again = run(&ctx, &syncer, &directory::directory(30, 3), apply()).await;
        assert!(changes_of(&db, &again).await.is_empty(), "{}", t.label());
        assert_eq!(change_rows(t, &db).await, 30);
    })
    .await;
}

#[tokio::test]
async fn a_runs_changes_are_read_a_page_at_a_time_in_order() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(7));
        let report = run(&ctx, &syncer, &directory::directory(23, 3), apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let all = changes_of(&db, &report).await;
        let id = report.run_id.unwrap();
        let mut paged = Vec::new();
        for offset in (0..30).step_by(10) {
            let (rows, total) = run_changes_page(&db, id, offset, 10).await.unwrap();
            assert_eq!(total, 23, "{}", t.label());
            assert_eq!(
                rows.len(),
                (23 - offset.min(23)).min(10) as usize,
                "{}",
                t.label()
            );
            paged.extend(rows);
        }
        assert_eq!(
            paged,
            all,
            "{}: the pages are the whole log, in order",
            t.label()
        );
        let (none, total) = run_changes_page(&db, id + 1000, 0, 10).await.unwrap();
        assert!(none.is_empty() && total == 0);
    })
    .await;
}

#[tokio::test]
async fn updates_leavers_and_moves_log_their_fields_old_and_new() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(10, 3);
        assert_status(
            t,
            &run(&ctx, &syncer, &dir, apply()).await,
            RunStatus::Succeeded,
        );

        let mut next = without(&dir, &[4]);
        user_mut(&mut next, 1).title = Some("Lead".into());
        // User 2 moves to another department.
        let moved = next
            .users
            .iter_mut()
            .find(|u| u.profile.userid == userid(2))
            .unwrap();
        let from = moved.seen_in.clone();
        let to: Vec<i64> = next_department(&dir, &from);
        moved.seen_in = to.clone();
        moved.profile.dept_id_list = Some(to.clone());
        let report = run(&ctx, &syncer, &next, apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let rows = changes_of(&db, &report).await;

        let updated = of_action(&rows, ChangeAction::Updated);
        let u1 = updated.iter().find(|r| r.userid == userid(1)).unwrap();
        assert_eq!(
            u1.changes,
            json!([{"column": "title", "old": "经理", "new": "Lead"}]),
            "{}",
            t.label()
        );
        assert_eq!(u1.casdoor_name, unionid(1));

        let forbidden = of_action(&rows, ChangeAction::Forbidden);
        assert_eq!(forbidden.len(), 1, "{}: {rows:#?}", t.label());
        assert_eq!(forbidden[0].userid, userid(4));
        assert!(
            forbidden[0]
                .changes
                .as_array()
                .unwrap()
                .contains(&json!({"column": "is_forbidden", "old": false, "new": true})),
            "{}",
            forbidden[0].changes
        );

        let group = |r: &&ChangeRow| r.changes["group"].as_str().unwrap().to_owned();
        let added: Vec<String> = of_action(&rows, ChangeAction::GroupAdded)
            .iter()
            .filter(|r| r.casdoor_name == unionid(2))
            .map(group)
            .collect();
        let removed: Vec<String> = of_action(&rows, ChangeAction::GroupRemoved)
            .iter()
            .filter(|r| r.casdoor_name == unionid(2))
            .map(group)
            .collect();
        assert_eq!(added, vec![format!("{ORG}/{}", to[0])], "{}", t.label());
        assert_eq!(removed, vec![format!("{ORG}/{}", from[0])], "{}", t.label());

        // The leaver comes back: unforbidden.
        let back = run(&ctx, &syncer, &dir, apply()).await;
        let rows = changes_of(&db, &back).await;
        let unforbidden = of_action(&rows, ChangeAction::Unforbidden);
        assert_eq!(unforbidden.len(), 1, "{}: {rows:#?}", t.label());
        assert_eq!(unforbidden[0].userid, userid(4));

        // The history of one person, newest first, across runs.
        let history = user_changes(&db, &[ORG.to_owned()], &unionid(4), 10)
            .await
            .unwrap();
        let actions: Vec<ChangeAction> = history.iter().map(|r| r.action).collect();
        assert_eq!(
            actions,
            [
                ChangeAction::Unforbidden,
                ChangeAction::Forbidden,
                ChangeAction::Created
            ],
            "{}",
            t.label()
        );
    })
    .await;
}

/// A department of `dir` that is not in `from`.
fn next_department(dir: &syncerd::dingtalk::types::Directory, from: &[i64]) -> Vec<i64> {
    let other = dir
        .departments
        .iter()
        .map(|d| d.dept_id)
        .find(|d| !from.contains(d) && *d != 1)
        .unwrap();
    vec![other]
}

#[tokio::test]
async fn a_dry_run_logs_nothing() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(10));
        let report = run(&ctx, &syncer, &directory::directory(25, 2), dry_run()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        assert_eq!(report.counts.created, 25);
        assert_eq!(change_rows(t, &db).await, 0, "{}", t.label());
    })
    .await;
}

#[tokio::test]
async fn a_rolled_back_row_leaves_no_change_behind() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        unique_email_taken_by_outsider(t, &db, "user50@example.com").await;
        let ctx = context(&db, sync_settings(25));
        let report = run(&ctx, &syncer, &directory::directory(120, 4), apply()).await;
        assert_status(t, &report, RunStatus::Partial);
        let rows = changes_of(&db, &report).await;
        assert_eq!(rows.len(), 119, "{}", t.label());
        assert!(
            rows.iter().all(|r| r.userid != userid(50)),
            "{}: the rejected user's change was kept",
            t.label()
        );
        // Every logged user exists: the batch the database rejected was retried row by row,
        // and what committed logged exactly its own changes.
        let users = count(
            t,
            &db,
            &format!(
                "SELECT COUNT(*) FROM {} WHERE owner = '{ORG}' AND name <> 'outsider'",
                t.quote("user")
            ),
        )
        .await;
        assert_eq!(users, 119, "{}", t.label());
        assert_eq!(change_rows(t, &db).await, 119);
    })
    .await;
}

#[tokio::test]
async fn pruning_deletes_only_changes_older_than_keep_days() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let report = run(&ctx, &syncer, &directory::directory(6, 2), apply()).await;
        assert_status(t, &report, RunStatus::Succeeded);
        let table = t.quote("syncer_change");
        let old = (Utc::now() - Duration::days(91)).format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let recent = (Utc::now() - Duration::days(89)).format("%Y-%m-%dT%H:%M:%S%.3fZ");
        for (userids, at) in [
            (["u000000", "u000001"], &old),
            (["u000002", "u000003"], &recent),
        ] {
            t.execute(
                &db,
                &format!(
                    "UPDATE {table} SET created_at = '{at}' WHERE userid IN ('{}', '{}')",
                    userids[0], userids[1]
                ),
            )
            .await;
        }
        assert_eq!(prune_older_than(&db, 0, Utc::now()).await.unwrap(), 0);
        assert_eq!(prune_older_than(&db, 90, Utc::now()).await.unwrap(), 2);
        let left: Vec<String> = changes_of(&db, &report)
            .await
            .into_iter()
            .map(|r| r.userid)
            .collect();
        assert_eq!(
            left,
            ["u000002", "u000003", "u000004", "u000005"],
            "{}",
            t.label()
        );
        assert_eq!(prune_older_than(&db, 90, Utc::now()).await.unwrap(), 0);
    })
    .await;
}

/// The binary against `url`, on a blocking thread.
async fn syncerd(url: &str, args: &[&str]) -> (bool, String, String) {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_syncerd"))
            .args(&args)
            .current_dir(std::env::temp_dir())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SYNCERD_DATABASE__URL", url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_prints_a_runs_changes_and_a_users_history() {
    on_every_engine(async |t| {
        let (db, syncer) = setup(t).await;
        let ctx = context(&db, sync_settings(100));
        let dir = directory::directory(5, 2);
        let first = run(&ctx, &syncer, &dir, apply()).await;
        let mut next = dir.clone();
        user_mut(&mut next, 3).title = Some("Lead".into());
        let second = run(&ctx, &syncer, &next, apply()).await;
        assert_status(t, &second, RunStatus::Succeeded);
        let id = second.run_id.unwrap().to_string();

        let (ok, out, err) = syncerd(t.url(), &["runs", "show", &id, "--changes"]).await;
        assert!(ok, "{}: {err}", t.label());
        assert!(out.contains("changes (1):"), "{out}");
        let line = out.lines().find(|l| l.starts_with("updated")).unwrap();
        for part in [unionid(3).as_str(), &userid(3), "title: 工程师 → Lead"] {
            assert!(line.contains(part), "{}: {line}", t.label());
        }

        let (ok, out, err) = syncerd(
            t.url(),
            &["runs", "show", &id, "--changes", "--format", "json"],
        )
        .await;
        assert!(ok, "{err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["changes"][0]["action"], "updated");
        assert_eq!(doc["changes"][0]["changes"][0]["new"], "Lead");

        let name = unionid(3);
        let (ok, out, err) = syncerd(t.url(), &["changes", "--user", &name]).await;
        assert!(ok, "{}: {err}", t.label());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{out}");
        assert!(
            lines[1].contains("updated") && lines[1].contains(&id),
            "{out}"
        );
        assert!(
            lines[2].contains("created") && lines[2].contains(&first.run_id.unwrap().to_string()),
            "{out}"
        );

        let (ok, out, _) = syncerd(
            t.url(),
            &[
                "changes", "--user", &name, "--limit", "1", "--format", "json",
            ],
        )
        .await;
        assert!(ok);
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc.as_array().map(Vec::len), Some(1), "{out}");
        assert_eq!(doc[0]["action"], "updated");

        let (ok, out, _) = syncerd(t.url(), &["changes", "--user", "nobody"]).await;
        assert!(ok && out.contains("no changes recorded"), "{out}");
        assert!(!out.contains(SECRET));
    })
    .await;
}

#[test]
fn the_change_commands_explain_themselves() {
    for args in [vec!["changes", "--help"], vec!["runs", "show", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncerd"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--changes") || help.contains("--user"),
            "{args:?}: {help}"
        );
    }
}
