//! Step 6, issue 15: DingTalk Stream events against `syncerd run` and `syncerd simulate`.
//!
//! 1. Event-to-row latency: one syncer streaming, changes made one at a time, each timed from
//!    the change until its Casdoor `user` row shows it (polled every 5 ms); topapi calls per event.
//! 2. A burst of leavers: how many event runs, their statuses against the removal limits, and
//!    whether the inbox holds every leaver DingTalk pushed.
//! 3. An idle daemon holding 50 Stream connections: RSS and CPU.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use syncerd::config::{DatabaseSettings, DatabaseUrl};
use syncerd::db::entities::{syncer_event, user};
use syncerd::db::{self, Db, NewSyncer, RunFilter, RunRow, RunStatus, RunTrigger};
use syncerd::secret::Secret;
use syncerd::simulator::{SimStats, SimStreamStats};
use tokio::process::Child;

use super::common::TestDb;
use super::common::process::free_port;
use super::{APP_KEY, APP_SECRET, Report, Sim, add_syncers, cpu_ticks, status_kib, syncerd};

const SYNCER: &str = "bench";
const ORG: &str = "acme";
/// How often the bench reads the `user` row while it waits for a change.
const POLL: Duration = Duration::from_millis(5);
/// A change not in its row by then counts as lost.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

struct StreamSizes {
    /// Organization of the latency step, and the changes made one at a time.
    latency_org: (usize, usize),
    changes: usize,
    /// Organization of the burst, the leavers, and the time they leave in.
    burst_org: (usize, usize),
    leavers: usize,
    burst_over: Duration,
    /// How long the burst's runs are followed at most.
    burst_watch: Duration,
    idle_syncers: usize,
    idle_window: Duration,
}

fn stream_sizes() -> StreamSizes {
    if std::env::var_os("SYNCERD_BENCH_QUICK").is_some() {
        StreamSizes {
            latency_org: (200, 10),
            changes: 20,
            burst_org: (500, 25),
            leavers: 100,
            burst_over: Duration::from_secs(1),
            burst_watch: Duration::from_secs(60),
            idle_syncers: 5,
            idle_window: Duration::from_secs(10),
        }
    } else {
        StreamSizes {
            latency_org: (1_000, 50),
            changes: 200,
            burst_org: (5_000, 250),
            leavers: 1_000,
            burst_over: Duration::from_secs(5),
            burst_watch: Duration::from_secs(300),
            idle_syncers: 50,
            // Longer than a stream lease's renewal period (100 s by default): every connection
            // renews at least once inside the window.
            idle_window: Duration::from_secs(200),
        }
    }
}

impl Sim {
    async fn patch_user(&self, userid: &str, email: &str) {
        self.http
            .patch(format!("{}/_sim/users/{userid}", self.base))
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    async fn remove_user(&self, userid: &str) {
        self.http
            .delete(format!("{}/_sim/users/{userid}", self.base))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    async fn stream_stats(&self) -> SimStreamStats {
        self.get("/_sim/stream/stats")
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn calls(stats: &SimStats, path: &str) -> u64 {
    stats.endpoints.get(path).map_or(0, |e| e.calls)
}

/// The topapi calls an event run makes: token, user lookups, department lookups.
fn lookup_calls(stats: &SimStats) -> [u64; 3] {
    [
        calls(stats, "/gettoken"),
        calls(stats, "/topapi/v2/user/get"),
        calls(stats, "/topapi/v2/department/get"),
    ]
}

/// Waits until `check` holds; panics with `what` and the daemon's log after `within`.
async fn wait_for<F, Fut>(within: Duration, what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            panic!(
                "{what}: not within {within:?}; the daemon's last log lines, newest first:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `syncerd run` streaming from the simulator, with `coalesce` as the burst window.
fn streaming_daemon(dir: &Path, db_url: &str, sim: &Sim, coalesce: &str) -> Child {
    let mut cmd = syncerd(dir, db_url, &sim.base);
    cmd.env("SYNCERD_DINGTALK__OPEN_API_BASE", &sim.base)
        .env("SYNCERD_STREAM__ENABLED", "true")
        .env("SYNCERD_STREAM__COALESCE_WINDOW", coalesce)
        .env("SYNCERD_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    cmd.spawn().unwrap()
}

async fn add_streaming_syncer(db: &Db) {
    db::add_syncer(
        db,
        NewSyncer {
            name: SYNCER.into(),
            organization: ORG.into(),
            app_key: APP_KEY.into(),
            app_secret: Secret::new(APP_SECRET),
            sync_interval: 3600,
            enabled: true,
        },
    )
    .await
    .unwrap();
}

async fn runs(db: &Db) -> Vec<RunRow> {
    let mut all = db::list_runs(
        db,
        &RunFilter {
            limit: 100_000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    all.reverse();
    all
}

/// Waits for the first run's success and then for the daemon's Stream connection.
async fn first_run_and_connection(db: &Db, sim: &Sim, log: &Path) {
    wait_for(
        Duration::from_secs(600),
        "the first full run",
        log,
        || async {
            runs(db)
                .await
                .iter()
                .any(|r| r.status == RunStatus::Succeeded)
        },
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "the Stream connection",
        log,
        || async {
            let s = sim.stream_stats().await;
            s.connections >= 1 && s.open_connections >= 1
        },
    )
    .await;
}

async fn email_of(db: &Db, userid: &str) -> Option<String> {
    user::Entity::find()
        .filter(user::Column::Owner.eq(ORG))
        .filter(user::Column::Dingtalk.eq(userid))
        .one(db.conn())
        .await
        .unwrap()
        .and_then(|u| u.email)
}

/// The nearest-rank percentile `p` of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One row of the latency table: one engine, one coalesce window.
async fn latency_row(r: &mut Report, t: &TestDb, sizes: &StreamSizes, coalesce: &str) {
    let (users, departments) = sizes.latency_org;
    let sim = Sim::start(users, departments, &[]).await;
    let db = t.migrated().await;
    add_streaming_syncer(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = streaming_daemon(dir.path(), t.url(), &sim, coalesce);
    first_run_and_connection(&db, &sim, &log).await;

    let org = sim.org().await;
    let before = lookup_calls(&sim.stats().await);
    let started = Instant::now();
    let mut secs = Vec::new();
    let mut lost = 0;
    for (i, u) in org.users.iter().take(sizes.changes).enumerate() {
        let userid = &u.profile.userid;
        let email = format!("stream-{i}-{}@example.com", coalesce.trim_end_matches("ms"));
        let changed = Instant::now();
        sim.patch_user(userid, &email).await;
        loop {
            if email_of(&db, userid).await.as_deref() == Some(email.as_str()) {
                secs.push(changed.elapsed().as_secs_f64());
                break;
            }
            if changed.elapsed() > EVENT_TIMEOUT {
                lost += 1;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let after = lookup_calls(&sim.stats().await);
    let [token, user_get, dept_get] = [0, 1, 2].map(|i| after[i] - before[i]);
    let event_runs: Vec<RunRow> = runs(&db)
        .await
        .into_iter()
        .filter(|r| r.trigger == RunTrigger::Event)
        .collect();
    let not_applied = event_runs
        .iter()
        .filter(|r| !matches!(r.status, RunStatus::Succeeded | RunStatus::Partial))
        .count();
    secs.sort_by(f64::total_cmp);
    let n = sizes.changes as f64;
    let ms = |p: f64| percentile(&secs, p) * 1000.0;
    r.line(format!(
        "| {} | {coalesce} | {} in {wall:.0} s | {:.0} ms | {:.0} ms | **{:.0} ms** | {:.0} ms | {lost} | {} ({not_applied} not applied) | {token} / {user_get} / {dept_get} | **{:.2}** |",
        t.label(),
        sizes.changes,
        ms(50.0),
        ms(90.0),
        ms(99.0),
        secs.last().copied().unwrap_or(f64::NAN) * 1000.0,
        event_runs.len(),
        (token + user_get + dept_get) as f64 / n,
    ));
    let _ = daemon.kill().await;
    db.close().await.unwrap();
    sim.stop().await;
}

async fn latency(r: &mut Report, sizes: &StreamSizes) {
    let (users, departments) = sizes.latency_org;
    r.line(format!("### 6.1 Event-to-row latency: {users} users, {departments} departments, one syncer (interval 3600 s), changes one at a time\n"));
    r.line("Each change is an e-mail address set through the simulator's control API (`PATCH /_sim/users/ID`, a `user_modify_org` event); the time runs from just before that request until the bench reads the new address in the syncer's Casdoor `user` row (read every 5 ms). The client is at its defaults (15 calls/s per API). Calls are the simulator's counters over all the changes.\n");
    r.line("| engine | coalesce window | changes | p50 | p90 | p99 | max | lost (> 30 s) | event runs | calls: token / user/get / department/get | calls per event |");
    r.line("|---|---|---|---|---|---|---|---|---|---|---|");
    for t in TestDb::all().await {
        for coalesce in ["300ms", "50ms"] {
            let fresh = t.another().await;
            latency_row(r, &fresh, sizes, coalesce).await;
            fresh.cleanup().await;
        }
        t.cleanup().await;
    }
    r.line("");
}

/// The user ids of the syncer's inbox (`syncer_event`) by event type, and how many events are
/// pending.
async fn inbox(db: &Db, event_type: &str) -> (BTreeSet<String>, u64, u64) {
    let rows = syncer_event::Entity::find()
        .filter(syncer_event::Column::SyncerName.eq(SYNCER))
        .filter(syncer_event::Column::EventType.eq(event_type))
        .all(db.conn())
        .await
        .unwrap();
    let mut ids = BTreeSet::new();
    for row in &rows {
        let list: Vec<String> = serde_json::from_str(&row.user_ids).unwrap_or_default();
        ids.extend(list);
    }
    let pending = rows.iter().filter(|e| e.state == "pending").count() as u64;
    (ids, rows.len() as u64, pending)
}

/// How many of `userids` are forbidden in Casdoor.
async fn forbidden_among(db: &Db, userids: &[String]) -> u64 {
    user::Entity::find()
        .filter(user::Column::Owner.eq(ORG))
        .filter(user::Column::Dingtalk.is_in(userids.iter().map(String::as_str)))
        .filter(user::Column::IsForbidden.eq(true))
        .count(db.conn())
        .await
        .unwrap()
}

/// Removes `leavers` from the simulator spread evenly over `over`.
async fn leave(sim: &Sim, leavers: &[String], over: Duration) -> f64 {
    let started = Instant::now();
    let step = over.div_f64(leavers.len() as f64);
    for (i, userid) in leavers.iter().enumerate() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + step * i as u32)).await;
        sim.remove_user(userid).await;
    }
    started.elapsed().as_secs_f64()
}

fn run_line(r: &mut Report, run: &RunRow, since: chrono::DateTime<chrono::Utc>) {
    let at = (run.started_at - since).num_milliseconds() as f64 / 1000.0;
    let why = run
        .error_summary
        .as_deref()
        .map(|s| s.chars().take(140).collect::<String>())
        .unwrap_or_default();
    r.line(format!(
        "| {} | {at:+.1} s | {} | **{}** | {} | {} | {:.1} s | {why} |",
        run.id,
        run.trigger,
        run.status,
        run.counts.forbidden,
        run.api_calls,
        run.duration.map_or(f64::NAN, |d| d.as_secs_f64()),
    ));
}

async fn burst(r: &mut Report, sizes: &StreamSizes) {
    let (users, departments) = sizes.burst_org;
    let n = sizes.leavers;
    r.line(format!("### 6.2 Burst: {n} of {users} users leave within {} s (SQLite, default `stream.*` and `sync.*` settings: 300 ms window, 30 s retry, at most 100 / 10 % removals)\n", sizes.burst_over.as_secs()));
    let sim = Sim::start(users, departments, &[]).await;
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    add_streaming_syncer(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = streaming_daemon(dir.path(), t.url(), &sim, "300ms");
    first_run_and_connection(&db, &sim, &log).await;

    let leavers: Vec<String> = sim
        .org()
        .await
        .users
        .iter()
        .take(n)
        .map(|u| u.profile.userid.clone())
        .collect();
    let stream_before = sim.stream_stats().await;
    let forbidden_before = forbidden_among(&db, &leavers).await;
    let since = chrono::Utc::now();
    let took = leave(&sim, &leavers, sizes.burst_over).await;
    // Follow the runs until two of them held the leavers back (the second one is a retry), or
    // until the inbox is drained, or the watch ends.
    let watch_started = Instant::now();
    loop {
        let event_runs: Vec<RunRow> = runs(&db)
            .await
            .into_iter()
            .filter(|r| r.trigger == RunTrigger::Event && r.started_at >= since)
            .collect();
        let held = event_runs
            .iter()
            .filter(|r| r.status == RunStatus::Held)
            .count();
        let (_, _, pending) = inbox(&db, "user_leave_org").await;
        let going = event_runs.iter().any(|r| r.status == RunStatus::Running);
        if held >= 2 && !going
            || pending == 0 && !going && !event_runs.is_empty()
            || watch_started.elapsed() > sizes.burst_watch
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let watched = watch_started.elapsed().as_secs_f64();
    let burst = Burst {
        leavers,
        took,
        watched,
        forbidden_before,
        stream_before,
        since,
    };
    burst_report(r, &db, &sim, &burst).await;
    let _ = daemon.kill().await;
    db.close().await.unwrap();
    t.cleanup().await;
    sim.stop().await;
}

/// What the burst did, for its report.
struct Burst {
    leavers: Vec<String>,
    /// Seconds the removals took, and the runs were followed after them.
    took: f64,
    watched: f64,
    forbidden_before: u64,
    stream_before: SimStreamStats,
    since: chrono::DateTime<chrono::Utc>,
}

async fn burst_report(r: &mut Report, db: &Db, sim: &Sim, burst: &Burst) {
    let Burst {
        leavers,
        took,
        watched,
        forbidden_before,
        stream_before,
        since,
    } = burst;
    let since = *since;
    let n = leavers.len();
    r.line(format!("The {n} `DELETE /_sim/users/ID` calls took {took:.1} s; the runs were then followed for {watched:.0} s (until a second held run, a drained inbox, or the watch's end).\n"));
    r.line("| run | started (from the first leaver) | trigger | status | forbidden | API calls | duration | summary |");
    r.line("|---|---|---|---|---|---|---|---|");
    let all = runs(db).await;
    let event_runs: Vec<&RunRow> = all
        .iter()
        .filter(|r| r.started_at >= since && r.trigger == RunTrigger::Event)
        .collect();
    for run in &event_runs {
        run_line(r, run, since);
    }
    let statuses: Vec<String> = event_runs.iter().map(|r| r.status.to_string()).collect();
    let (ids, events, pending) = inbox(db, "user_leave_org").await;
    let wanted: BTreeSet<String> = leavers.iter().cloned().collect();
    let missing = wanted.difference(&ids).count();
    let s = sim.stream_stats().await;
    r.line("");
    r.line(format!(
        "- event runs: **{}** ({})",
        event_runs.len(),
        statuses.join(", ")
    ));
    r.line(format!(
        "- inbox: {events} `user_leave_org` events naming **{} distinct users** ({missing} of the {n} leavers missing); **{pending} still pending**",
        ids.len()
    ));
    r.line(format!(
        "- simulator: {} events created, {} acknowledged, {} redelivered, {} dropped, {} pending",
        s.events_created - stream_before.events_created,
        s.acks - stream_before.acks,
        s.redeliveries - stream_before.redeliveries,
        s.events_dropped - stream_before.events_dropped,
        s.pending
    ));
    r.line(format!(
        "- leavers forbidden in Casdoor: **{}** of {n} ({forbidden_before} before the burst: DingTalk users inactive from the start)",
        forbidden_among(db, leavers).await
    ));
    r.line("");
}

/// Waits until `count` runs have finished and none is going.
async fn runs_finished(db: &Db, count: usize, log: &Path) {
    wait_for(Duration::from_secs(600), "the runs", log, || async {
        let all = runs(db).await;
        let going = all.iter().any(|r| r.status == RunStatus::Running);
        !going && all.len() >= count
    })
    .await;
}

/// Waits for `count` finished runs and lets each syncer's stream start: every syncer of one
/// DingTalk app in another organization meets Casdoor's globally unique group names (the root
/// department's group `1`), so all runs but one end `partial`, and a stream waits for a
/// `succeeded` run. The bench marks those runs `succeeded` in the run history.
async fn first_runs_then_streams(db: &Db, sim: &Sim, count: usize, log: &Path) -> usize {
    runs_finished(db, count, log).await;
    let partial = runs(db)
        .await
        .iter()
        .filter(|r| r.status == RunStatus::Partial)
        .count();
    db.conn()
        .execute_unprepared("UPDATE syncer_run SET status = 'succeeded' WHERE status = 'partial'")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(120),
        "every Stream connection",
        log,
        || async { sim.stream_stats().await.open_connections as usize >= count },
    )
    .await;
    partial
}

/// CPU seconds of `pid` over `window`, and the share of one core.
async fn cpu_over(pid: u32, window: Duration) -> (f64, f64) {
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let secs = (cpu_ticks(pid) - before) as f64 / 100.0;
    (secs, 100.0 * secs / window.as_secs_f64())
}

async fn idle(r: &mut Report, sizes: &StreamSizes) {
    let count = sizes.idle_syncers;
    let window = sizes.idle_window;
    r.line(format!("### 6.3 Idle `syncerd run` with {count} syncers, each holding a Stream connection (SQLite, default settings: reload every 5 s)\n"));
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(200, 20, &[]).await;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("idle.db").display());
    add_syncers(dir.path(), &db_url, &sim.base, count, true).await;
    let db = db::connect(&DatabaseSettings {
        url: DatabaseUrl::new(db_url.clone()),
        ..DatabaseSettings::default()
    })
    .await
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = streaming_daemon(dir.path(), &db_url, &sim, "300ms");
    let pid = daemon.id().unwrap();
    let partial = first_runs_then_streams(&db, &sim, count, &log).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open = sim.stream_stats().await.open_connections;
    let (cpu, share) = cpu_over(pid, window).await;
    let rss = status_kib(pid, "VmRSS:").unwrap();
    let hwm = status_kib(pid, "VmHWM:").unwrap();
    let threads = status_kib(pid, "Threads:").unwrap_or(0);
    let s = sim.stream_stats().await;
    r.line(format!("{partial} of the {count} first runs ended `partial` (each organization's root group `1` is taken by the first), and a stream starts only after a `succeeded` run, so the bench marked those runs `succeeded` in `syncer_run`; then every syncer connected.\n"));
    r.line(format!(
        "- {open} connections open; over {} s idle: RSS **{:.1} MB** (peak {:.1} MB, {threads} threads), CPU {cpu:.2} s = **{share:.2} %** of a core",
        window.as_secs(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    ));
    r.line(format!(
        "- simulator over the whole step: {} `connections/open`, {} WebSocket connections, {} pings sent",
        s.open_calls, s.connections, s.pings_sent
    ));
    let _ = daemon.kill().await;

    // The same database without streams, for the share the connections take. A daemon runs
    // every syncer soon after it starts: measured once those runs are done.
    let mut cmd = syncerd(dir.path(), &db_url, &sim.base);
    cmd.env("SYNCERD_STREAM__ENABLED", "false")
        .env("SYNCERD_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut plain = cmd.spawn().unwrap();
    let pid = plain.id().unwrap();
    runs_finished(&db, 2 * count, &log).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu, share) = cpu_over(pid, window).await;
    let rss = status_kib(pid, "VmRSS:").unwrap();
    r.line(format!(
        "- the same database, a new daemon with `stream.enabled = false`, idle after its start-up runs: RSS {:.1} MB, CPU {cpu:.2} s over {} s = {share:.2} % of a core",
        rss as f64 / 1024.0,
        window.as_secs()
    ));
    let _ = plain.kill().await;
    db.close().await.unwrap();
    sim.stop().await;
    r.line("");
}

/// Step 6: every measurement of issue 15; with `idle_only` (`SYNCERD_BENCH_ONLY=stream-idle`)
/// only the idle daemon.
pub(crate) async fn stream(r: &mut Report, idle_only: bool) {
    let sizes = stream_sizes();
    r.line("## 6. DingTalk Stream events (issue 15)\n");
    r.line("`syncerd run` as a process with `stream.enabled`, against `syncerd simulate` as a process (its Stream gateway and WebSocket at the same address).\n");
    if !idle_only {
        latency(r, &sizes).await;
        burst(r, &sizes).await;
    }
    idle(r, &sizes).await;
}
