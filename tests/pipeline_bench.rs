#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Measurements, not assertions: a first import of 100,000 users and a run with no change, on
//! every available engine. Ignored by default; run with
//! `cargo test --release --test pipeline_bench -- --ignored --nocapture`
//! (`SYNCERD_BENCH_USERS` overrides the user count).

mod common;

use std::time::Instant;

use common::directory;
use common::directory::user_mut;
use common::on_every_engine;
use common::pipeline::{add_syncer, apply, context, rows, run, sync_settings};
use syncerd::db::RunStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly with --ignored --nocapture"]
async fn measure_a_100k_user_first_import_and_a_no_change_run() {
    let users: usize = std::env::var("SYNCERD_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = directory::directory(users, 500);
    on_every_engine(async |t| {
        let db = t.migrated().await;
        let syncer = add_syncer(&db).await;
        let ctx = context(&db, sync_settings(500));

        let started = Instant::now();
        let first = run(&ctx, &syncer, &dir, apply()).await;
        let first_secs = started.elapsed().as_secs_f64();
        assert_eq!(
            first.status,
            RunStatus::Succeeded,
            "{}",
            first.render_text()
        );
        assert_eq!(rows(t, &db, "user").await, users as i64);

        let started = Instant::now();
        let second = run(&ctx, &syncer, &dir, apply()).await;
        let second_secs = started.elapsed().as_secs_f64();
        assert_eq!(second.counts.unchanged, users as u64);

        let mut changed = dir.clone();
        for i in (0..users).step_by(100) {
            user_mut(&mut changed, i).title = Some("变更 ✨".into());
        }
        let started = Instant::now();
        let third = run(&ctx, &syncer, &changed, apply()).await;
        let third_secs = started.elapsed().as_secs_f64();
        assert_eq!(third.counts.updated, users.div_ceil(100) as u64);

        eprintln!(
            "{:<16} {users} users: first import {first_secs:>7.1} s ({:.0} users/s), \
             no-change run {second_secs:>6.1} s, 1% changed {third_secs:>6.1} s",
            t.label(),
            users as f64 / first_secs
        );
        db.close().await.unwrap();
    })
    .await;
}
