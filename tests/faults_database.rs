#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Database faults during a run: the server cuts syncerd's connections in the middle of the
//! apply. Whatever the run's outcome, only whole batches are in the database, the history
//! tells, and the next run completes.

mod common;

use common::directory::{self, unionid};
use common::pipeline::{add_syncer, apply, context, count, rows, run, sync_settings, user_row};
use common::{TestDb, on_every_engine};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use syncerd::config::Engine;
use syncerd::db::{self, RunStatus};
use syncerd::pipeline::{Phase, Progress};
use tokio::sync::watch;

const BATCH: u64 = 50;
const USERS: usize = 1_500;

/// A connection to the test database's server as the admin, outside syncerd's pool.
async fn admin(t: &TestDb) -> DatabaseConnection {
    let (server, _) = t.url().rsplit_once('/').unwrap();
    let mut options = ConnectOptions::new(server.to_owned());
    options.sqlx_logging(false).max_connections(1);
    Database::connect(options).await.unwrap()
}

/// Kills every session on the test database but the caller's own; returns how many.
async fn kill_sessions(t: &TestDb, admin: &DatabaseConnection) -> usize {
    let database = t.url().rsplit_once('/').unwrap().1.to_owned();
    match t.engine() {
        Engine::Postgres => {
            let killed = admin
                .query_all_raw(Statement::from_string(
                    t.backend(),
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                    ),
                ))
                .await
                .unwrap();
            killed.len()
        }
        Engine::MySql => {
            let ids = admin
                .query_all_raw(Statement::from_string(
                    t.backend(),
                    format!(
                        "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
                         WHERE db = '{database}' AND id <> CONNECTION_ID()"
                    ),
                ))
                .await
                .unwrap();
            let mut killed = 0;
            for row in ids {
                let id: i64 = row.try_get_by_index(0).unwrap();
                // The session may be gone already.
                if admin
                    .execute_unprepared(&format!("KILL {id}"))
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            killed
        }
        Engine::Sqlite => unreachable!("no server to cut"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_apply_leave_whole_batches_only_and_the_next_run_completes() {
    on_every_engine(async |t: &TestDb| {
        if t.engine() == Engine::Sqlite {
            return; // No server whose sessions could be cut.
        }
        let db = t.migrated().await;
        let syncer = add_syncer(&db).await;
        let ctx = context(&db, sync_settings(BATCH as usize));
        let dir = directory::directory(USERS, 20);
        let groups = dir.departments.len() as i64;

        let (tx, mut rx) = watch::channel(Progress::at(Phase::Starting));
        let mut opts = apply();
        opts.progress = Some(tx);
        let killer_admin = admin(t).await;
        let killer = async move {
            while rx.changed().await.is_ok() {
                let p = *rx.borrow();
                if p.phase == Phase::Applying && p.rows_written >= 3 * BATCH {
                    break;
                }
            }
        };
        let run_fut = run(&ctx, &syncer, &dir, opts);
        let cut = async {
            killer.await;
            // One sweep: the batch in flight loses its connection; the pool reconnects for
            // the history write. (A database still unreachable at that moment leaves the row
            // `running`: `finish_run` is tried once.)
            kill_sessions(t, &killer_admin).await
        };
        let (report, killed) = tokio::join!(run_fut, cut);
        assert!(killed > 0, "{}: no session was cut", t.label());
        killer_admin.close().await.unwrap();

        // Whatever the outcome, the database holds whole batches with their links and
        // memberships, and the report says what is there.
        let users = rows(t, &db, "user").await;
        assert_eq!(
            users,
            report.counts.created as i64,
            "{}: {}",
            t.label(),
            report.render_text()
        );
        assert_eq!(
            rows(t, &db, "syncer_link").await,
            users + report.counts.groups_created as i64,
            "{}",
            t.label()
        );
        assert_eq!(
            count(t, &db, "SELECT COUNT(DISTINCT v0) FROM casbin_user_rule").await,
            users,
            "{}",
            t.label()
        );
        let written = report.counts.created + report.counts.groups_created;
        if report.status != RunStatus::Succeeded {
            assert_eq!(written % BATCH, 0, "{}: whole batches only", t.label());
            assert_eq!(report.status, RunStatus::Failed, "{}", report.render_text());
            let message = report.message.clone().unwrap_or_default();
            assert!(message.contains("batch"), "{}: {message}", t.label());
        }
        eprintln!(
            "{}: cut {killed} sessions; run {} with {users} of {USERS} users",
            t.label(),
            report.status
        );
        // The history row is finished, not left `running`.
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, report.status, "{}", t.label());

        // The next run lands the rest.
        let rest = run(&ctx, &syncer, &dir, apply()).await;
        assert_eq!(
            rest.status,
            RunStatus::Succeeded,
            "{}: {}",
            t.label(),
            rest.render_text()
        );
        assert_eq!(rows(t, &db, "user").await, USERS as i64, "{}", t.label());
        assert_eq!(
            rows(t, &db, "syncer_link").await,
            USERS as i64 + groups,
            "{}",
            t.label()
        );
        assert!(user_row(&db, &unionid(USERS - 1)).await.is_some());
        db.close().await.unwrap();
    })
    .await;
}

/// A database blip right when a run ends (every session killed, fresh connections refused for
/// a moment) must not leave the run's history row `running`: `Runner::finish` retries its
/// final writes briefly. Timing-dependent by nature: before that retry this failed about one
/// run in three here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_blip_at_the_end_of_a_run_still_records_its_outcome() {
    on_every_engine(async |t: &TestDb| {
        if t.engine() == Engine::Sqlite {
            return;
        }
        let db = t.migrated().await;
        let syncer = add_syncer(&db).await;
        let ctx = context(&db, sync_settings(BATCH as usize));
        let dir = directory::directory(USERS, 20);
        let (tx, mut rx) = watch::channel(Progress::at(Phase::Starting));
        let mut opts = apply();
        opts.progress = Some(tx);
        let killer_admin = admin(t).await;
        let cut = async {
            while rx.changed().await.is_ok() {
                let p = *rx.borrow();
                if p.phase == Phase::Applying && p.rows_written >= 3 * BATCH {
                    break;
                }
            }
            // Every session is cut, again and again, for about a second.
            for _ in 0..50 {
                kill_sessions(t, &killer_admin).await;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        let (report, ()) = tokio::join!(run(&ctx, &syncer, &dir, opts), cut);
        killer_admin.close().await.unwrap();
        let row = db::get_run(&db, report.run_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.status,
            report.status,
            "{}: the history row was left behind: {}",
            t.label(),
            report.render_text()
        );
        db.close().await.unwrap();
    })
    .await;
}
