#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The benchmark of issue 7, in one run so that its ratios hold: `syncerd simulate` runs as its
//! own process and everything is measured against it on this machine.
//!
//! ```text
//! SYNCERD_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306 \
//! SYNCERD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432 \
//!     cargo bench --bench syncerd
//! ```
//!
//! 1. Fetch only at 1k / 10k / 100k users against `--qps 20`: wall time, calls by endpoint,
//!    achieved rate of the busiest API over the client's budget, calls against the minimum and
//!    against Casdoor's pattern.
//! 2. Latency-bound fetch (`--latency-ms 50`, no cap): 8 requests in flight against 1.
//! 3. First import of 100k users per engine against a plain batched multi-row INSERT of the
//!    same rows.
//! 4. A no-change run over the same users: rows written and time against fetch only.
//! 5. Peak RSS of `syncerd sync` (first import and no-change run) and idle RSS of `syncerd run`
//!    with 50 enabled syncers.
//! 6. DingTalk Stream events (issue 15, [`stream`]): event-to-row latency, a burst of leavers,
//!    an idle daemon holding 50 Stream connections.
//!
//! `SYNCERD_BENCH_QUICK=1` runs every step at a small size (a smoke test of the runner),
//! `SYNCERD_BENCH_ONLY=memory` only step 5, `SYNCERD_BENCH_ONLY=import` only steps 3–4 (fetched
//! without a QPS cap), `SYNCERD_BENCH_ONLY=stream` only step 6 (`stream-idle`: only 6.3). The report is printed and
//! written to `target/bench-report.md`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "syncerd/stream.rs"]
mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestDb;
use common::pipeline::{add_syncer, apply, context, run, sync_settings};
use common::process::free_port;
use sea_orm::{DbBackend, EntityTrait, IntoActiveModel, Iterable, TransactionTrait};
use syncerd::config::{DatabaseSettings, DatabaseUrl};
use syncerd::db::entities::{casbin_user_rule, group, syncer_change, syncer_link, user};
use syncerd::db::{self, Db, RunFilter, RunStatus};
use syncerd::dingtalk::{Client, ClientConfig, Credentials, Directory};
use syncerd::secret::Secret;
use syncerd::simulator::{OrgSnapshot, SimStats};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_syncerd");
const APP_KEY: &str = "sim-app-key";
const APP_SECRET: &str = "sim-app-secret";
/// The client's default per-API budget (`dingtalk.qps_per_api`).
const CLIENT_QPS: u32 = 15;
const BATCH: usize = 500;

struct Sizes {
    fetch: Vec<(usize, usize)>,
    latency: (usize, usize),
    import: (usize, usize),
    idle_syncers: usize,
    idle_window: Duration,
    /// Further wait before the second idle reading (past the pool's 60 s idle timeout).
    pool_idle_wait: Duration,
}

fn sizes() -> Sizes {
    if std::env::var_os("SYNCERD_BENCH_QUICK").is_some() {
        Sizes {
            fetch: vec![(300, 10), (1_000, 40)],
            latency: (500, 20),
            import: (1_000, 40),
            idle_syncers: 5,
            idle_window: Duration::from_secs(3),
            pool_idle_wait: Duration::from_secs(2),
        }
    } else {
        Sizes {
            fetch: vec![(1_000, 50), (10_000, 500), (100_000, 2_000)],
            latency: (10_000, 500),
            import: (100_000, 2_000),
            idle_syncers: 50,
            idle_window: Duration::from_secs(30),
            pool_idle_wait: Duration::from_secs(60),
        }
    }
}

/// `syncerd simulate` as its own process.
struct Sim {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Sim {
    async fn start(users: usize, departments: usize, extra: &[&str]) -> Sim {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--users", &users.to_string()])
            .args(["--departments", &departments.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start syncerd simulate");
        let sim = Sim {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while sim.get("/_sim/stats").await.is_err() {
            assert!(Instant::now() < deadline, "the simulator did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sim
    }

    async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .error_for_status()
    }

    async fn stats(&self) -> SimStats {
        self.get("/_sim/stats").await.unwrap().json().await.unwrap()
    }

    async fn reset(&self) {
        self.http
            .post(format!("{}/_sim/stats/reset", self.base))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    async fn org(&self) -> OrgSnapshot {
        self.get("/_sim/org").await.unwrap().json().await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn client(base: &str, qps_per_api: u32, max_concurrency: usize) -> Client {
    Client::new(ClientConfig {
        api_base: base.to_owned(),
        qps_per_api,
        max_concurrency,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn credentials() -> Credentials {
    Credentials {
        app_key: APP_KEY.to_owned(),
        app_secret: Secret::new(APP_SECRET),
    }
}

/// D (departments with the root), P (user-list pages, at least one per department), U.
fn call_model(org: &OrgSnapshot) -> (u64, u64, u64) {
    let mut members: BTreeMap<i64, u64> = org.departments.iter().map(|d| (d.dept_id, 0)).collect();
    for u in &org.users {
        for dept in u.profile.dept_id_list.iter().flatten() {
            *members.entry(*dept).or_default() += 1;
        }
    }
    let pages = members.values().map(|n| n.div_ceil(100).max(1)).sum();
    (org.departments.len() as u64, pages, org.users.len() as u64)
}

struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }
}

struct Fetched {
    users: usize,
    secs: f64,
    directory: Directory,
}

async fn fetch_only(r: &mut Report, sizes: &Sizes) -> Vec<Fetched> {
    r.line("## 1. Fetch only, simulator at `--qps 20`, client at its defaults (15 calls/s per API, 8 in flight)\n");
    r.line("| users | departments | wall | calls: token / root get / listsub / user list | refused | busiest API: calls/s ÷ 15 | calls ÷ minimum 2+D+P | Casdoor 2+3D+P+U |");
    r.line("|---|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for &(users, departments) in &sizes.fetch {
        let sim = Sim::start(users, departments, &["--qps", "20"]).await;
        let (d, p, u) = call_model(&sim.org().await);
        sim.reset().await;
        let started = Instant::now();
        let directory = client(&sim.base, CLIENT_QPS, 8)
            .fetch_directory(&credentials())
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let stats = sim.stats().await;
        let calls = |path: &str| stats.endpoints.get(path).map_or(0, |e| e.calls);
        let (token, root_get, listsub, list) = (
            calls("/gettoken"),
            calls("/topapi/v2/department/get"),
            calls("/topapi/v2/department/listsub"),
            calls("/topapi/v2/user/list"),
        );
        let total = stats.total_calls();
        // One token, one `department/get` of the root, one listsub per department, the pages.
        let minimum = 2 + d + p;
        let busiest = listsub.max(list) as f64 / secs;
        assert_eq!(directory.users.len() as u64, u, "the fetch missed users");
        r.line(format!(
            "| {users} | {d} | {secs:.1} s | {token} / {root_get} / {listsub} / {list} = {total} | {} | {busiest:.1}/s ÷ 15 = **{:.2}** | {total} ÷ {minimum} = **{:.3}** | {} ({:.1}× ours) |",
            stats.total_qps_rejected(),
            busiest / f64::from(CLIENT_QPS),
            total as f64 / minimum as f64,
            2 + 3 * d + p + u,
            (2 + 3 * d + p + u) as f64 / total as f64,
        ));
        out.push(Fetched {
            users,
            secs,
            directory,
        });
        sim.stop().await;
    }
    r.line("");
    out
}

/// The import's directory fetched without a QPS cap, for `SYNCERD_BENCH_ONLY=import`: the
/// no-change column is then against this quick fetch, not DingTalk's pace.
async fn fetch_uncapped(r: &mut Report, (users, departments): (usize, usize)) -> Fetched {
    let sim = Sim::start(users, departments, &[]).await;
    let started = Instant::now();
    let directory = client(&sim.base, 10_000, 8)
        .fetch_directory(&credentials())
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    sim.stop().await;
    r.line(format!(
        "Steps 3–4 alone: {users} users fetched without a QPS cap in {secs:.1} s.\n"
    ));
    Fetched {
        users,
        secs,
        directory,
    }
}

async fn latency_bound(r: &mut Report, sizes: &Sizes) {
    let (users, departments) = sizes.latency;
    r.line(format!("## 2. Latency-bound fetch: {users} users, {departments} departments, `--latency-ms 50`, no QPS cap\n"));
    let sim = Sim::start(users, departments, &["--latency-ms", "50"]).await;
    let mut secs = BTreeMap::new();
    for concurrency in [1, 8] {
        sim.reset().await;
        let started = Instant::now();
        client(&sim.base, 10_000, concurrency)
            .fetch_directory(&credentials())
            .await
            .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        let calls = sim.stats().await.total_calls();
        r.line(format!(
            "- {concurrency} in flight: {elapsed:.1} s for {calls} calls ({:.1} calls/s)",
            calls as f64 / elapsed
        ));
        secs.insert(concurrency, elapsed);
    }
    r.line(format!(
        "- speed-up of 8 over 1: **{:.1}×**\n",
        secs[&1] / secs[&8]
    ));
    sim.stop().await;
}

/// Rows per INSERT statement under the engine's bind-parameter limit.
fn rows_per_statement(backend: DbBackend, columns: usize) -> usize {
    let limit = match backend {
        DbBackend::Sqlite => 32_766,
        _ => 65_535,
    };
    (limit / columns).max(1)
}

/// Inserts `models` in transactions of [`BATCH`] rows, each as few multi-row INSERTs as the
/// engine's bind limit allows.
async fn insert_plain<E>(db: &Db, backend: DbBackend, models: Vec<E::Model>)
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone,
{
    let columns = <E::Column as Iterable>::iter().count();
    let per_statement = rows_per_statement(backend, columns).min(BATCH);
    for batch in models.chunks(BATCH) {
        let txn = db.conn().begin().await.unwrap();
        for chunk in batch.chunks(per_statement) {
            E::insert_many(
                chunk
                    .iter()
                    .cloned()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec_without_returning(&txn)
            .await
            .unwrap();
        }
        txn.commit().await.unwrap();
    }
}

/// How long plain batched INSERTs of what a sync wrote take in a fresh database.
struct Plain {
    /// Users, groups, casbin rows and links.
    secs: f64,
    /// The same and the run's change-log rows.
    with_changes_secs: f64,
}

/// Copies what a sync wrote into a fresh database with plain batched INSERTs.
async fn plain_insert_baseline(t: &TestDb, source: &Db) -> Plain {
    let users = user::Entity::find().all(source.conn()).await.unwrap();
    let groups = group::Entity::find().all(source.conn()).await.unwrap();
    let rules = casbin_user_rule::Entity::find()
        .all(source.conn())
        .await
        .unwrap();
    let links = syncer_link::Entity::find()
        .all(source.conn())
        .await
        .unwrap();
    let changes = syncer_change::Entity::find()
        .all(source.conn())
        .await
        .unwrap();
    let target = t.another().await;
    let db = target.migrated().await;
    let backend = t.backend();
    let started = Instant::now();
    insert_plain::<group::Entity>(&db, backend, groups).await;
    insert_plain::<user::Entity>(&db, backend, users).await;
    insert_plain::<casbin_user_rule::Entity>(&db, backend, rules).await;
    insert_plain::<syncer_link::Entity>(&db, backend, links).await;
    let secs = started.elapsed().as_secs_f64();
    insert_plain::<syncer_change::Entity>(&db, backend, changes).await;
    let with_changes_secs = started.elapsed().as_secs_f64();
    db.close().await.unwrap();
    target.cleanup().await;
    Plain {
        secs,
        with_changes_secs,
    }
}

/// PostgreSQL only: the rows a sync wrote (change log included), copied into a fresh database
/// with `COPY ... FROM STDIN` of each table's own `COPY ... TO STDOUT` text: the fastest way
/// PostgreSQL takes these rows, nothing parsed per statement. Returns the seconds of the
/// `FROM STDIN` side only.
async fn raw_copy_baseline(t: &TestDb, source: &Db) -> Option<f64> {
    use futures_util::TryStreamExt as _;
    if t.backend() != DbBackend::Postgres {
        return None;
    }
    let tables = [
        "group",
        "user",
        "casbin_user_rule",
        "syncer_link",
        "syncer_change",
    ];
    let mut texts = Vec::new();
    let mut conn = source
        .conn()
        .get_postgres_connection_pool()
        .acquire()
        .await
        .unwrap();
    for table in tables {
        let out = conn
            .copy_out_raw(&format!("COPY \"{table}\" TO STDOUT"))
            .await
            .unwrap();
        let chunks: Vec<_> = out.try_collect().await.unwrap();
        texts.push((table, chunks.concat()));
    }
    drop(conn);
    let target = t.another().await;
    let db = target.migrated().await;
    let mut conn = db
        .conn()
        .get_postgres_connection_pool()
        .acquire()
        .await
        .unwrap();
    let started = Instant::now();
    for (table, text) in texts {
        let mut copy = conn
            .copy_in_raw(&format!("COPY \"{table}\" FROM STDIN"))
            .await
            .unwrap();
        copy.send(text).await.unwrap();
        copy.finish().await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    drop(conn);
    db.close().await.unwrap();
    target.cleanup().await;
    Some(secs)
}

fn rows_written(report: &syncerd::pipeline::RunReport) -> u64 {
    let c = &report.counts;
    c.created
        + c.updated
        + c.forbidden
        + c.unforbidden
        + c.deleted
        + c.groups_created
        + c.groups_updated
        + c.memberships_changed
}

async fn max_updated_time(t: &TestDb, db: &Db) -> String {
    t.query_texts(
        db,
        &format!("SELECT MAX(updated_time) FROM {}", t.quote("user")),
    )
    .await
    .into_iter()
    .next()
    .unwrap_or_default()
}

async fn imports(r: &mut Report, fetched: &Fetched) {
    let users = fetched.users;
    r.line(format!("## 3–4. First import and no-change run of {users} users (batch {BATCH}), against plain batched INSERTs of the same rows\n"));
    r.line("The plain INSERT copies every row the import wrote (users, groups, casbin rows, links, and its change-log rows) into a fresh database, in transactions of 500 rows, as few multi-row statements as the bind limit allows, with nothing read, planned or compared; in brackets, the same without the change-log rows. Raw COPY (PostgreSQL): the same rows, each table's `COPY ... TO STDOUT` text sent back through one `COPY ... FROM STDIN`.\n");
    r.line("| engine | first import | plain INSERT | import ÷ plain | raw COPY | import ÷ COPY | no-change run (after the fetch) | rows written | fetch + no-change ÷ fetch |");
    r.line("|---|---|---|---|---|---|---|---|---|");
    for t in TestDb::all().await {
        let db = t.migrated().await;
        let syncer = add_syncer(&db).await;
        let ctx = context(&db, sync_settings(BATCH));
        let started = Instant::now();
        let first = run(&ctx, &syncer, &fetched.directory, apply()).await;
        let first_secs = started.elapsed().as_secs_f64();
        assert_eq!(
            first.status,
            RunStatus::Succeeded,
            "{}",
            first.render_text()
        );
        assert_eq!(first.counts.created, users as u64);
        let plain = plain_insert_baseline(&t, &db).await;
        let copy = raw_copy_baseline(&t, &db).await;

        let before = max_updated_time(&t, &db).await;
        let started = Instant::now();
        let again = run(&ctx, &syncer, &fetched.directory, apply()).await;
        let again_secs = started.elapsed().as_secs_f64();
        assert_eq!(again.status, RunStatus::Succeeded);
        let after = max_updated_time(&t, &db).await;
        assert_eq!(before, after, "a no-change run touched a user row");
        r.line(format!(
            "| {} | {first_secs:.1} s | {:.1} s ({:.1} s) | **{:.2}×** ({:.2}×) | {} | {} | {again_secs:.1} s | **{}** | ({:.1} + {again_secs:.1}) ÷ {:.1} = **{:.2}** |",
            t.label(),
            plain.with_changes_secs,
            plain.secs,
            first_secs / plain.with_changes_secs,
            first_secs / plain.secs,
            copy.map_or("–".to_owned(), |c| format!("{c:.1} s")),
            copy.map_or("–".to_owned(), |c| format!("**{:.2}×**", first_secs / c)),
            rows_written(&again),
            fetched.secs,
            fetched.secs,
            (fetched.secs + again_secs) / fetched.secs,
        ));
        db.close().await.unwrap();
        t.cleanup().await;
    }
    r.line("");
}

/// Polls a process's `VmHWM` (peak resident set) until it exits; returns (peak KiB, seconds).
/// Its stderr goes to `log`, shown when it fails.
async fn peak_rss(mut cmd: Command, log: &Path) -> (u64, f64) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut peak = 0;
    loop {
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            if !status.success() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                panic!(
                    "{cmd:?} failed: {status}; its last log lines, newest first:\n{}",
                    tail.join("\n")
                );
            }
            return (peak, started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident KiB of the mappings of the `syncerd` executable itself (code and constants).
fn binary_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_binary = false;
    let mut total = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Rss:") if in_binary => {
                total += fields
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                in_binary = line.ends_with("/syncerd");
            }
            _ => {}
        }
    }
    total
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn syncerd(dir: &Path, db_url: &str, api_base: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SYNCERD_DATABASE__URL", db_url)
        .env("SYNCERD_DINGTALK__API_BASE", api_base)
        // The simulator is DingTalk's Stream gateway too: the daemon's default streams connect
        // to it rather than to the real api.dingtalk.com.
        .env("SYNCERD_DINGTALK__OPEN_API_BASE", api_base)
        .kill_on_drop(true);
    cmd
}

async fn status_ok(mut cmd: Command) {
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn add_syncers(dir: &Path, db_url: &str, base: &str, count: usize, enabled: bool) {
    status_ok({
        let mut c = syncerd(dir, db_url, base);
        c.arg("migrate");
        c
    })
    .await;
    for i in 0..count {
        let mut c = syncerd(dir, db_url, base);
        c.args(["syncer", "add", "--name", &format!("s{i:02}")])
            .args(["--organization", &format!("org{i:02}")])
            .args(["--app-key", APP_KEY, "--app-secret", APP_SECRET])
            .args(["--interval", "3600"]);
        if enabled {
            c.arg("--enabled");
        }
        status_ok(c).await;
    }
}

async fn memory(r: &mut Report, sizes: &Sizes) {
    let (users, departments) = sizes.import;
    let dir = tempfile::tempdir().unwrap();
    r.line("## 5. Memory\n");
    r.line("`syncerd sync` as a process on a fresh SQLite file, simulator uncapped, client at `dingtalk.qps_per_api = 10000` (pacing does not change what is held); `VmHWM` polled every 20 ms.\n");
    let sim = Sim::start(users, departments, &[]).await;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("rss.db").display());
    add_syncers(dir.path(), &db_url, &sim.base, 1, false).await;
    for label in ["first import", "no-change run"] {
        let mut cmd = syncerd(dir.path(), &db_url, &sim.base);
        cmd.env("SYNCERD_DINGTALK__QPS_PER_API", "10000")
            .args(["sync", "s00"]);
        let (kib, secs) = peak_rss(cmd, &dir.path().join("sync.log")).await;
        r.line(format!(
            "- {label} of {users} users: peak RSS **{:.0} MB** ({secs:.1} s)",
            kib as f64 / 1024.0
        ));
    }
    sim.stop().await;

    let count = sizes.idle_syncers;
    let sim = Sim::start(200, 20, &[]).await;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("idle.db").display());
    add_syncers(dir.path(), &db_url, &sim.base, count, true).await;
    let mut daemon = syncerd(dir.path(), &db_url, &sim.base);
    // The target predates Stream mode: the daemon holding 50 connections is step 6.3's.
    daemon
        .env("SYNCERD_STREAM__ENABLED", "false")
        .env("SYNCERD_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = daemon.spawn().unwrap();
    let pid = child.id().unwrap();
    let db = db::connect(&DatabaseSettings {
        url: DatabaseUrl::new(db_url.clone()),
        ..DatabaseSettings::default()
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let runs = db::list_runs(
            &db,
            &RunFilter {
                limit: 1_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Finished, whatever the outcome: syncers of one DingTalk app in several organizations
        // meet Casdoor's globally unique group names, which makes all but one `partial`.
        let done = runs
            .iter()
            .filter(|r| r.status != RunStatus::Running)
            .count();
        if done >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {count} runs finished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_before = cpu_ticks(pid);
    tokio::time::sleep(sizes.idle_window).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    let rss = status_kib(pid, "VmRSS:").unwrap();
    let hwm = status_kib(pid, "VmHWM:").unwrap();
    let code = binary_rss_kib(pid);
    r.line(format!(
        "- `syncerd run` with {count} enabled syncers and `stream.enabled = false`, idle after each ran once (all on one 200-user simulated organization): RSS **{:.1} MB** ({:.1} MB of it the binary's own pages; peak {:.1} MB), CPU {:.2} s over {} s = **{:.2} %** of a core",
        rss as f64 / 1024.0,
        code as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ticks as f64 / 100.0,
        sizes.idle_window.as_secs(),
        ticks as f64 / sizes.idle_window.as_secs_f64()
    ));
    // Later, once the pool has closed the connections the runs left idle (60 s), as a daemon
    // between hourly runs is.
    tokio::time::sleep(sizes.pool_idle_wait).await;
    let settled = status_kib(pid, "VmRSS:").unwrap();
    r.line(format!(
        "- the same daemon {} s after the runs, once the pool closed its idle connections: RSS **{:.1} MB**",
        (sizes.pool_idle_wait + sizes.idle_window + Duration::from_secs(5)).as_secs(),
        settled as f64 / 1024.0
    ));
    let _ = child.kill().await;
    sim.stop().await;
    r.line("");
}

fn report_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-report.md")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sizes = sizes();
        let mut r = Report {
            text: String::new(),
        };
        r.line(format!(
            "# syncerd benchmark, {} ({} cores)\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        let started = Instant::now();
        let only = std::env::var("SYNCERD_BENCH_ONLY").unwrap_or_default();
        if only == "import" {
            let fetched = fetch_uncapped(&mut r, sizes.import).await;
            imports(&mut r, &fetched).await;
        } else if only != "memory" && !only.starts_with("stream") {
            let fetched = fetch_only(&mut r, &sizes).await;
            latency_bound(&mut r, &sizes).await;
            let biggest = fetched
                .iter()
                .find(|f| f.users == sizes.import.0)
                .expect("the import size is one of the fetch sizes");
            imports(&mut r, biggest).await;
        }
        if only.is_empty() || only == "memory" {
            memory(&mut r, &sizes).await;
        }
        if only.is_empty() || only.starts_with("stream") {
            stream::stream(&mut r, only == "stream-idle").await;
        }
        r.line(format!(
            "Whole benchmark: {:.0} s.",
            started.elapsed().as_secs_f64()
        ));
        std::fs::create_dir_all(report_path().parent().unwrap()).unwrap();
        std::fs::write(report_path(), &r.text).unwrap();
        eprintln!("report written to {}", report_path().display());
    });
}
