#![allow(clippy::unwrap_used, clippy::expect_used)]
//! No secret ever leaves its place: the App Secret (right or wrong), DingTalk access tokens,
//! the database password and the admin token are absent from every output, log file,
//! run-history column, `error_text`, `/metrics` and admin API answer, across successful and
//! failed syncs, a daemon run at trace level and every read-only command, on every engine.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;
use common::pipeline::ALL_TABLES;
use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use syncerd::config::Engine;
use syncerd::secret::Secret;
use syncerd::simulator::{BanStyle, Simulator, SimulatorConfig};
use tokio::process::Command;

/// The App Secret the simulator accepts.
const APP_SECRET: &str = "Canary-AppSecret-Qx7-密钥-41d0";
/// A wrong App Secret stored in a second syncer.
const WRONG_SECRET: &str = "Canary-WrongSecret-Vb3-e9a2";
/// The password of the database user the commands connect as (server engines).
const DB_PASSWORD: &str = "Canary-DbPw-5e1b";
/// A wrong password for the same database user (refused by MariaDB; PostgreSQL here trusts
/// loopback, so there it only has to stay out of the output).
const WRONG_DB_PASSWORD: &str = "Canary-WrongDbPw-0c7d";
/// The bearer token of the daemon's admin API.
const ADMIN_TOKEN: &str = "Canary-AdminTok-77aa";
/// Every access token the simulator issues starts with this.
const TOKEN_PREFIX: &str = "simtok";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the real binary with a clean environment and `env`.
async fn syncerd(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncerd"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("syncerd {args:?} did not finish within 30 s"))
        .unwrap()
}

/// A database user with [`DB_PASSWORD`] that owns the test database, and the URL to connect as
/// it. SQLite has no password: its URL is returned unchanged.
struct PasswordUser {
    url: String,
    drop_sql: Option<(String, String)>,
}

fn server_parts(t: &TestDb) -> (String, String) {
    let url = t.url();
    let (base, database) = url.rsplit_once('/').unwrap();
    (base.to_owned(), database.to_owned())
}

async fn admin(url: &str, sql: &str) {
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).max_connections(1);
    let conn = Database::connect(options).await.unwrap();
    conn.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    conn.close().await.unwrap();
}

async fn password_user(t: &TestDb) -> PasswordUser {
    let (admin_url, database) = server_parts(t);
    let user = format!("canary_{}", std::process::id());
    match t.engine() {
        Engine::Sqlite => PasswordUser {
            url: t.url().to_owned(),
            drop_sql: None,
        },
        Engine::MySql => {
            for sql in [
                format!("CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{DB_PASSWORD}'"),
                format!(
                    "CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}'"
                ),
                format!("GRANT ALL ON `{database}`.* TO '{user}'@'%'"),
                format!("GRANT ALL ON `{database}`.* TO '{user}'@'localhost'"),
            ] {
                admin(&admin_url, &sql).await;
            }
            PasswordUser {
                url: format!("mysql://{user}:{DB_PASSWORD}@127.0.0.1:3306/{database}"),
                drop_sql: Some((
                    admin_url,
                    format!("DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost'"),
                )),
            }
        }
        Engine::Postgres => {
            admin(
                &admin_url,
                &format!("CREATE ROLE {user} LOGIN PASSWORD '{DB_PASSWORD}'"),
            )
            .await;
            admin(
                &admin_url,
                &format!("ALTER DATABASE \"{database}\" OWNER TO {user}"),
            )
            .await;
            PasswordUser {
                url: format!("postgres://{user}:{DB_PASSWORD}@127.0.0.1:5432/{database}"),
                drop_sql: Some((admin_url, format!("DROP ROLE IF EXISTS {user}"))),
            }
        }
    }
}

/// Everything the scenario produced, labelled.
#[derive(Default)]
struct Evidence(Vec<(String, String)>);

impl Evidence {
    fn output(&mut self, what: &str, out: &Output) {
        self.0.push((
            format!("{what}: stdout"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
        self.0.push((
            format!("{what}: stderr"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }

    fn text(&mut self, what: &str, text: String) {
        self.0.push((what.to_owned(), text));
    }

    /// Panics naming the first place any needle (or, for MySQL dumps, its hex) shows up.
    fn assert_free_of(&self, label: &str, needles: &[&str]) {
        for (what, text) in &self.0 {
            let upper = text.to_uppercase();
            for needle in needles {
                let hex: String = needle.bytes().map(|b| format!("{b:02X}")).collect();
                assert!(
                    !text.contains(needle) && !upper.contains(&hex),
                    "{label}: `{needle}` leaked into {what}:\n{text}"
                );
            }
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn scenario(t: &TestDb) -> Option<(String, String)> {
    let label = t.label();
    let sim = Simulator::start(
        SimulatorConfig {
            users: 40,
            departments: 4,
            app_key: "canary-app-key".to_owned(),
            app_secret: Secret::new(APP_SECRET),
            // A revoked token every 20 calls: several tokens issued. (Much more often, a fresh
            // token can be revoked before its first use, and the client gives up by design.)
            invalidate_token_every: Some(20),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let user = password_user(t).await;
    let env = |api_base: &str| -> Vec<(String, String)> {
        [
            ("SYNCERD_DATABASE__URL", user.url.as_str()),
            ("SYNCERD_DINGTALK__API_BASE", api_base),
            ("SYNCERD_DINGTALK__MAX_ATTEMPTS", "8"),
            ("SYNCERD_DINGTALK__IP_BAN_PAUSE", "300ms"),
            ("SYNCERD_DINGTALK__REQUEST_TIMEOUT", "5s"),
            ("SYNCERD_DATABASE__CONNECT_TIMEOUT", "3s"),
            ("SYNCERD_LOG__LEVEL", "trace"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let sim_env = env(&sim.base_url());
    let mut ev = Evidence::default();

    let out = syncerd(dir, &["migrate"], &sim_env).await;
    assert!(out.status.success(), "{label}: {}", stderr(&out));
    ev.output("migrate", &out);
    for (name, secret) in [("good", APP_SECRET), ("bad", WRONG_SECRET)] {
        let out = syncerd(
            dir,
            &[
                "syncer",
                "add",
                "--name",
                name,
                "--organization",
                "acme",
                "--app-key",
                "canary-app-key",
                "--app-secret",
                secret,
                "--interval",
                "1",
            ],
            &sim_env,
        )
        .await;
        assert!(out.status.success(), "{label}: {}", stderr(&out));
        ev.output(&format!("syncer add {name}"), &out);
    }

    // A successful sync through revoked tokens.
    let out = syncerd(dir, &["sync", "good"], &sim_env).await;
    assert!(
        out.status.success(),
        "{label}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    ev.output("sync good", &out);
    let stats = sim.stats();
    assert!(
        stats.total_calls() > 10,
        "{label}: the sync really talked to DingTalk"
    );
    // Throttled answers (the binary backs off for a second or more each: two attempts only).
    let calm = sim.faults();
    let mut throttled = calm.clone();
    throttled.throttle_rate = 0.3;
    sim.set_faults(throttled).unwrap();
    let mut few_attempts = sim_env.clone();
    few_attempts.push(("SYNCERD_DINGTALK__MAX_ATTEMPTS".into(), "2".into()));
    let out = syncerd(dir, &["sync", "good"], &few_attempts).await;
    ev.output("sync throttled", &out);
    sim.set_faults(calm).unwrap();
    // Failures: wrong secret, closed port, IP ban, a database that is not there.
    let out = syncerd(dir, &["sync", "bad", "--format", "json"], &sim_env).await;
    assert!(!out.status.success(), "{label}: wrong secret must fail");
    ev.output("sync bad", &out);
    let mut closed = env("http://127.0.0.1:9");
    closed.push(("SYNCERD_DINGTALK__MAX_ATTEMPTS".into(), "2".into()));
    let out = syncerd(dir, &["sync", "good"], &closed).await;
    assert!(!out.status.success(), "{label}: closed port must fail");
    ev.output("sync closed port", &out);
    sim.ban_ip_for(Duration::from_secs(60), BanStyle::Html);
    let out = syncerd(dir, &["sync", "good"], &few_attempts).await;
    ev.output("sync banned", &out);
    sim.ban_ip_for(Duration::ZERO, BanStyle::Json);
    let mut no_db = sim_env.clone();
    let closed_db = format!("mysql://canary:{DB_PASSWORD}@127.0.0.1:9/casdoor");
    no_db.push(("SYNCERD_DATABASE__URL".into(), closed_db.clone()));
    let out = syncerd(dir, &["sync", "good"], &no_db).await;
    assert!(!out.status.success(), "{label}: closed database port");
    ev.output("sync no database", &out);
    let out = syncerd(
        dir,
        &["config", "show", "--database-url", &closed_db],
        &no_db,
    )
    .await;
    ev.output("config show closed db", &out);
    if user.drop_sql.is_some() {
        let wrong = user.url.replace(DB_PASSWORD, WRONG_DB_PASSWORD);
        let mut wrong_env = sim_env.clone();
        wrong_env.push(("SYNCERD_DATABASE__URL".into(), wrong));
        for args in [vec!["sync", "good"], vec!["syncer", "list"], vec!["runs"]] {
            let out = syncerd(dir, &args, &wrong_env).await;
            if t.engine() == Engine::MySql {
                assert!(
                    !out.status.success(),
                    "{label}: a wrong password is refused"
                );
            }
            ev.output(&format!("{} with a wrong password", args.join(" ")), &out);
        }
    }

    // Read-only commands.
    for args in [
        vec!["runs"],
        vec!["runs", "--format", "json"],
        vec!["syncer", "list"],
        vec!["syncer", "list", "--format", "json"],
        vec!["check", "good"],
        vec!["check", "bad"],
        vec!["config", "show"],
    ] {
        let out = syncerd(dir, &args, &sim_env).await;
        ev.output(&args.join(" "), &out);
    }
    let runs: serde_json::Value = serde_json::from_str(&stdout(
        &syncerd(dir, &["runs", "--format", "json"], &sim_env).await,
    ))
    .unwrap();
    let runs = runs.as_array().unwrap();
    assert!(runs.len() >= 3, "{label}: {runs:?}");
    for run in runs {
        let id = run["id"].to_string();
        for format in ["table", "json"] {
            let out = syncerd(dir, &["runs", "show", &id, "--format", format], &sim_env).await;
            assert!(out.status.success(), "{label}: {}", stderr(&out));
            ev.output(&format!("runs show {id} {format}"), &out);
        }
    }

    // The daemon, logging JSON to files at trace level, until it recorded scheduled runs.
    let logs = dir.join("logs");
    let port = free_port();
    let mut daemon_env = sim_env.clone();
    for (k, v) in [
        ("SYNCERD_LOG__DIR", logs.to_str().unwrap()),
        ("SYNCERD_LOG__FORMAT", "json"),
        ("SYNCERD_HTTP__LISTEN", &format!("127.0.0.1:{port}")),
        ("SYNCERD_SCHEDULER__RELOAD_INTERVAL", "200ms"),
        ("SYNCERD_SCHEDULER__MIN_INTERVAL", "1"),
        ("SYNCERD_SCHEDULER__CLAIMED_SYNCERS", "good,bad"),
        ("SYNCERD_HTTP__ADMIN_TOKEN", ADMIN_TOKEN),
    ] {
        daemon_env.push((k.to_owned(), v.to_owned()));
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncerd"));
    cmd.arg("run")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(daemon_env.iter().map(|(k, v)| (k, v)))
        .stdout(std::fs::File::create(dir.join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("daemon.err")).unwrap())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let before = runs.len();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = syncerd(dir, &["runs", "--format", "json"], &sim_env).await;
        let now: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
        let scheduled = now
            .as_array()
            .map(|r| r.iter().filter(|r| r["trigger"] != "cli").count())
            .unwrap_or(0);
        if now.as_array().map_or(0, Vec::len) >= before + 2 && scheduled >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the daemon recorded no runs within 15 s: {}",
            std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("syncerd_runs_total"), "{metrics}");
    ev.text("/metrics", metrics);
    let http = reqwest::Client::new();
    for path in ["/readyz", "/healthz", "/api/v1/syncers"] {
        let response = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        ev.text(path, response.text().await.unwrap());
    }
    // A manual run through the admin API, and one refused for a wrong token.
    for token in [ADMIN_TOKEN, "wrong-token"] {
        let response = http
            .post(format!("http://127.0.0.1:{port}/api/v1/syncers/good/run"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        ev.text(
            "POST /api/v1/syncers/good/run",
            response.text().await.unwrap(),
        );
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{label}: daemon exit {exit:?}");
    for name in ["daemon.out", "daemon.err"] {
        ev.text(name, std::fs::read_to_string(dir.join(name)).unwrap());
    }
    let mut log_lines = 0;
    for entry in std::fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        let content = std::fs::read_to_string(&path).unwrap();
        log_lines += content.lines().count();
        ev.text(&path.display().to_string(), content);
    }
    assert!(log_lines > 10, "{label}: the daemon logged at trace level");

    // The database: every table but `syncer` whole, and `syncer.error_text`.
    let db = t.connect().await;
    let tables: Vec<&str> = ALL_TABLES.into_iter().filter(|t| *t != "syncer").collect();
    let dump = t.dump_tables(&db, &tables).await;
    assert!(
        dump.lines().count() > 40,
        "{label}: users and runs were written"
    );
    ev.text("database dump", dump);
    let errors = t
        .query_texts(&db, "SELECT error_text FROM syncer ORDER BY name")
        .await;
    assert!(
        errors.iter().any(|e| e.contains("40089")),
        "{label}: the wrong secret is reported: {errors:?}"
    );
    ev.text("syncer.error_text", errors.join("\n"));
    drop(db);

    // The scan is only worth something if tokens were issued and revoked, faults were served,
    // and the evidence holds what may be shown (the App Key is not a secret).
    let served = sim.stats();
    let count = |f: fn(&syncerd::simulator::SimEndpointStats) -> u64| -> u64 {
        served.endpoints.values().map(f).sum()
    };
    assert!(count(|s| s.token_rejected) > 0, "{label}: no token revoked");
    assert!(count(|s| s.injected_throttle) > 0, "{label}: no throttling");
    assert!(count(|s| s.ip_banned) > 0, "{label}: no IP ban");
    assert!(
        ev.0.iter().any(|(_, text)| text.contains("canary-app-key")),
        "{label}: the evidence misses the command outputs"
    );
    ev.assert_free_of(
        &label,
        &[
            APP_SECRET,
            WRONG_SECRET,
            DB_PASSWORD,
            WRONG_DB_PASSWORD,
            TOKEN_PREFIX,
            ADMIN_TOKEN,
        ],
    );

    sim.shutdown().await.unwrap();
    user.drop_sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_password_leaks_into_outputs_logs_history_or_metrics() {
    for t in TestDb::all().await {
        let drop_user = scenario(&t).await;
        // The database goes first: PostgreSQL refuses to drop the role that owns it.
        t.cleanup().await;
        if let Some((admin_url, sql)) = drop_user {
            admin(&admin_url, &sql).await;
        }
    }
}
