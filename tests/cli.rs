#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real `syncerd` binary: help texts, exit codes, and the storage commands on every engine.

mod common;

use std::process::{Command, Output};

use common::{TestDb, on_every_engine};

const SECRET: &str = "Cli-S3cret-9f2c";

/// Runs the binary with a clean environment apart from the database URL and `extra`.
fn syncerd(db_url: Option<&str>, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncerd"));
    cmd.args(args)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Some(url) = db_url {
        cmd.env("SYNCERD_DATABASE__URL", url);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// [`syncerd`] from an async test, on a blocking thread, against `db_url` and, when given, a
/// DingTalk API base URL (the in-process simulator).
async fn syncerd_async(db_url: &str, api_base: Option<&str>, args: &[&str]) -> Output {
    let db_url = db_url.to_owned();
    let api_base = api_base.map(str::to_owned);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The simulator serves both API families (and Stream mode).
        let extra: Vec<(&str, &str)> = api_base
            .as_deref()
            .map(|base| {
                [
                    ("SYNCERD_DINGTALK__API_BASE", base),
                    ("SYNCERD_DINGTALK__OPEN_API_BASE", base),
                ]
            })
            .into_iter()
            .flatten()
            .collect();
        syncerd(Some(&db_url), &args, &extra)
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_explains_itself_in_help() {
    for args in [
        vec!["--help"],
        vec!["migrate", "--help"],
        vec!["syncer", "--help"],
        vec!["syncer", "add", "--help"],
        vec!["syncer", "list", "--help"],
        vec!["syncer", "enable", "--help"],
        vec!["syncer", "disable", "--help"],
        vec!["runs", "--help"],
        vec!["runs", "show", "--help"],
        vec!["config", "show", "--help"],
        vec!["check", "--help"],
        vec!["sync", "--help"],
        vec!["demo", "--help"],
        vec!["run", "--help"],
        vec!["healthcheck", "--help"],
        vec!["simulate", "--help"],
    ] {
        let out = syncerd(None, &args, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stdout.contains("Usage: syncerd"), "{args:?}: {stdout}");
        assert!(
            stdout.lines().count() > 4,
            "{args:?} help is too thin: {stdout}"
        );
    }
    let (root, _) = text(&syncerd(None, &["--help"], &[]));
    assert!(root.contains("SYNCERD_DATABASE__URL"), "{root}");
    let (add, _) = text(&syncerd(None, &["syncer", "add", "--help"], &[]));
    assert!(
        add.contains("--app-secret-file") && add.contains("database.url"),
        "{add}"
    );
}

#[test]
fn errors_exit_non_zero_with_one_clear_line() {
    let out = syncerd(
        None,
        &["config", "show"],
        &[("SYNCERD_DINGTALK__QPS_PER_API", "lots")],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("SYNCERD_DINGTALK__QPS_PER_API"),
        "{stderr}"
    );

    let out = syncerd(
        None,
        &["--config", "/nonexistent/syncerd.toml", "config", "show"],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/syncerd.toml"), "{stderr}");
}

#[test]
fn config_show_redacts_every_secret_and_warns_about_unknown_keys() {
    let out = syncerd(
        Some("postgres://syncerd:Pg-Pa55-cli@db:5432/casdoor"),
        &["config", "show"],
        &[
            ("SYNCERD_HTTP__ADMIN_TOKEN", "adm-tok-cli-77"),
            ("SYNCERD_SYNC__BATCHSIZE", "3"),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        !all.contains("Pg-Pa55-cli") && !all.contains("adm-tok-cli-77"),
        "{all}"
    );
    assert!(
        stdout.contains("url = \"PostgreSQL database `casdoor` on db:5432\""),
        "{stdout}"
    );
    assert!(stdout.contains("admin_token = \"[redacted]\""), "{stdout}");
    assert!(all.contains("SYNCERD_SYNC__BATCHSIZE"), "{all}");
}

#[tokio::test]
async fn storage_commands_work_on_every_engine_and_never_print_the_secret() {
    on_every_engine(async |t: &TestDb| {
        let url = t.url().to_owned();

        // Before migrate, commands refuse with a hint.
        let out = syncerd_async(&url, None, &["syncer", "list"]).await;
        assert!(!out.status.success(), "{}", t.label());
        assert!(text(&out).1.contains("syncerd migrate"), "{}", text(&out).1);

        let out = syncerd_async(&url, None, &["migrate"]).await;
        assert!(out.status.success(), "{}: {}", t.label(), text(&out).1);
        assert!(text(&out).0.contains("applied"), "{}", text(&out).0);
        let out = syncerd_async(&url, None, &["migrate"]).await;
        assert!(out.status.success());
        assert!(
            text(&out).0.contains("already up to date"),
            "{}",
            text(&out).0
        );

        let out = syncerd_async(
            &url,
            None,
            &[
                "syncer",
                "add",
                "--name",
                "acme-dt",
                "--organization",
                "acme",
                "--app-key",
                "dingkey01",
                "--app-secret",
                SECRET,
                "--interval",
                "120",
            ],
        )
        .await;
        assert!(out.status.success(), "{}: {}", t.label(), text(&out).1);

        let list = syncerd_async(&url, None, &["syncer", "list"]).await;
        let (stdout, stderr) = text(&list);
        assert!(list.status.success(), "{stderr}");
        assert!(
            stdout.contains("acme-dt") && stdout.contains("dingkey01") && stdout.contains("no"),
            "{stdout}"
        );
        assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

        assert!(
            syncerd_async(&url, None, &["syncer", "enable", "acme-dt"])
                .await
                .status
                .success()
        );
        let json = syncerd_async(&url, None, &["syncer", "list", "--format", "json"]).await;
        let (stdout, _) = text(&json);
        assert!(!stdout.contains(SECRET), "{stdout}");
        let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(rows[0]["name"], "acme-dt");
        assert_eq!(rows[0]["is_enabled"], true);
        assert_eq!(rows[0]["sync_interval"], 120);
        assert_eq!(rows[0]["app_secret_set"], true);

        assert!(
            syncerd_async(&url, None, &["syncer", "disable", "acme-dt"])
                .await
                .status
                .success()
        );
        let json = syncerd_async(&url, None, &["syncer", "list", "--format", "json"]).await;
        let rows: serde_json::Value = serde_json::from_str(&text(&json).0).unwrap();
        assert_eq!(rows[0]["is_enabled"], false);

        let missing = syncerd_async(&url, None, &["syncer", "enable", "nope"]).await;
        assert!(!missing.status.success());
        assert!(
            text(&missing).1.contains("no syncer named `nope`"),
            "{}",
            text(&missing).1
        );

        // The row is what Casdoor's UI writes: secret in `password`, key in `user`.
        let db = t.connect().await;
        let stored = t
            .query_texts(
                &db,
                &format!(
                    "SELECT {} FROM syncer WHERE name = 'acme-dt'",
                    t.quote("password")
                ),
            )
            .await;
        assert_eq!(stored, vec![SECRET.to_owned()]);

        let runs = syncerd_async(&url, None, &["runs"]).await;
        assert!(runs.status.success(), "{}", text(&runs).1);
        assert!(text(&runs).0.contains("no runs recorded yet"));
        let config = syncerd_async(&url, None, &["config", "show"]).await;
        assert!(!text(&config).0.contains(SECRET));
    })
    .await;
}

#[tokio::test]
async fn check_says_ok_against_the_simulator_and_names_bad_credentials() {
    use syncerd::simulator::{Simulator, SimulatorConfig};
    let sim = Simulator::start(
        SimulatorConfig {
            users: 30,
            departments: 4,
            app_secret: syncerd::secret::Secret::new("Sim-Check-S3cret"),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let t = TestDb::sqlite().await;
    let url = t.url().to_owned();
    let base = sim.base_url();
    assert!(
        syncerd_async(&url, Some(&base), &["migrate"])
            .await
            .status
            .success()
    );
    for (name, secret) in [("good", "Sim-Check-S3cret"), ("bad", "Wrong-S3cret-42")] {
        let out = syncerd_async(
            &url,
            Some(&base),
            &[
                "syncer",
                "add",
                "--name",
                name,
                "--organization",
                "acme",
                "--app-key",
                "sim-app-key",
                "--app-secret",
                secret,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let good = syncerd_async(&url, Some(&base), &["check", "good"]).await;
    let (stdout, stderr) = text(&good);
    assert!(good.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("can sync"), "{stdout}");
    assert!(
        stdout.contains("Stream mode (POST /v1.0/gateway/connections/open): ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mobile") && stdout.contains("email"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Leave records (GET /v1.0/contact/empLeaveRecords): ok"),
        "{stdout}"
    );
    sim.set_faults(syncerd::simulator::Faults {
        leave_records_denied: true,
        ..Default::default()
    })
    .unwrap();
    let denied = syncerd_async(&url, Some(&base), &["check", "good"]).await;
    let (stdout, stderr) = text(&denied);
    assert!(denied.status.success(), "still syncs: {stdout}{stderr}");
    assert!(
        stdout.contains("empLeaveRecords): unavailable") && stdout.contains("Contact.Common.Read"),
        "{stdout}"
    );
    sim.set_faults(syncerd::simulator::Faults::default())
        .unwrap();

    let bad = syncerd_async(&url, Some(&base), &["check", "bad"]).await;
    let (stdout, stderr) = text(&bad);
    assert!(!bad.status.success());
    assert!(
        stdout.contains("40089") && stdout.contains("App Secret"),
        "{stdout}"
    );
    assert!(
        stdout.contains("connections/open): unavailable") && stdout.contains("interval runs"),
        "{stdout}"
    );
    for secret in ["Sim-Check-S3cret", "Wrong-S3cret-42"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    let missing = syncerd_async(&url, Some(&base), &["check", "nope"]).await;
    assert!(!missing.status.success());
    assert!(text(&missing).1.contains("no syncer named `nope`"));
    sim.shutdown().await.unwrap();
    t.cleanup().await;
}

#[test]
fn log_dir_writes_rotating_files_that_are_flushed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let out = syncerd(
        None,
        &["config", "show"],
        &[
            ("SYNCERD_LOG__DIR", logs.to_str().unwrap()),
            ("SYNCERD_LOG__FORMAT", "json"),
            ("SYNCERD_LOG__ROTATION", "hourly"),
            ("SYNCERD_TYPO_KEY", "1"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let files: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("syncerd.") && name.ends_with(".log"),
        "{name}"
    );
    let content = std::fs::read_to_string(&files[0]).unwrap();
    let line: serde_json::Value = serde_json::from_str(content.lines().next().unwrap()).unwrap();
    assert_eq!(line["level"], "WARN");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("SYNCERD_TYPO_KEY"),
        "{content}"
    );
}

#[tokio::test]
async fn sync_imports_the_simulated_directory_then_finds_nothing_to_change() {
    use syncerd::simulator::{Simulator, SimulatorConfig};
    let sim = Simulator::start(
        SimulatorConfig {
            users: 120,
            departments: 6,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let secret = sim.credentials().app_secret.expose().to_owned();
    on_every_engine(async |t: &TestDb| {
        let url = t.url().to_owned();
        assert!(
            syncerd_async(&url, Some(&base), &["migrate"])
                .await
                .status
                .success()
        );
        let add = syncerd_async(
            &url,
            Some(&base),
            &[
                "syncer",
                "add",
                "--name",
                "sim",
                "--organization",
                "acme",
                "--app-key",
                "sim-app-key",
                "--app-secret",
                &secret,
            ],
        )
        .await;
        assert!(add.status.success(), "{}", text(&add).1);

        let dry = syncerd_async(
            &url,
            Some(&base),
            &["sync", "sim", "--dry-run", "--format", "json"],
        )
        .await;
        assert!(dry.status.success(), "{}: {}", t.label(), text(&dry).1);
        let report: serde_json::Value = serde_json::from_str(&text(&dry).0).unwrap();
        assert_eq!(report["mode"], "dry_run");
        assert_eq!(report["counts"]["created"], 120);
        let db = t.connect().await;
        assert!(
            t.query_texts(&db, "SELECT syncer_name FROM syncer_run")
                .await
                .is_empty()
        );

        let first = syncerd_async(&url, Some(&base), &["sync", "sim", "--format", "json"]).await;
        assert!(first.status.success(), "{}: {}", t.label(), text(&first).1);
        let report: serde_json::Value = serde_json::from_str(&text(&first).0).unwrap();
        assert_eq!(report["status"], "succeeded");
        assert_eq!(report["counts"]["created"], 120);
        let users = t
            .query_texts(
                &db,
                &format!("SELECT name FROM {} WHERE owner = 'acme'", t.quote("user")),
            )
            .await;
        assert_eq!(users.len(), 120);

        let second = syncerd_async(&url, Some(&base), &["sync", "sim"]).await;
        let (stdout, stderr) = text(&second);
        assert!(second.status.success(), "{stderr}");
        assert!(
            stdout.contains("unchanged") && stdout.contains("120"),
            "{stdout}"
        );
        let all = format!("{stdout}{stderr}{}{}", text(&first).0, text(&first).1);
        assert!(
            !all.contains(&secret),
            "the App Secret leaked into the output"
        );

        let history = syncerd_async(
            &url,
            Some(&base),
            &["runs", "--syncer", "sim", "--format", "json"],
        )
        .await;
        let rows: serde_json::Value = serde_json::from_str(&text(&history).0).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 2);
        assert_eq!(rows[0]["counts"]["unchanged"], 120);
        assert_eq!(rows[1]["counts"]["created"], 120);
    })
    .await;
    sim.shutdown().await.unwrap();
}

#[test]
fn demo_exits_zero_and_its_database_holds_the_synced_organization() {
    let dir = tempfile::tempdir().unwrap();
    let db_file = dir.path().join("demo.db");
    let out = syncerd(
        None,
        &[
            "demo",
            "--users",
            "40",
            "--departments",
            "4",
            "--cycles",
            "5",
            "--interval",
            "1",
            "--database",
            db_file.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "run 1: succeeded",
        "run 5: succeeded",
        "hired",
        "left the company",
        "new title",
        "moved",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("sim-app-secret") && !stderr.contains("sim-app-secret"));
    // The console's address and a fresh 64-hex-digit token to sign in with.
    let console = stdout
        .lines()
        .find(|l| l.starts_with("web console: http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no console line in:\n{stdout}"));
    let token = console
        .split("token ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{console}"
    );
    assert!(
        !stderr.contains(token),
        "the token is printed once, not logged"
    );

    // The kept database: 40 generated users plus the hire, the leaver forbidden, five runs.
    let url = format!("sqlite://{}?mode=rwc", db_file.display());
    let json = syncerd(Some(&url), &["runs", "--format", "json"], &[]);
    let runs: serde_json::Value = serde_json::from_str(&text(&json).0).unwrap();
    let runs = runs.as_array().unwrap();
    // Five interval runs, and the event runs DingTalk Stream brought between them.
    let interval = runs.iter().filter(|r| r["trigger"] != "event").count();
    assert_eq!(interval, 5, "{runs:?}");
    assert!(runs.iter().any(|r| r["trigger"] == "event"), "{runs:?}");
    assert!(
        stdout.contains("after the change (DingTalk Stream"),
        "{stdout}"
    );
    assert!(runs.iter().all(|r| r["status"] == "succeeded"));
    let total_created: u64 = runs
        .iter()
        .map(|r| r["counts"]["created"].as_u64().unwrap())
        .sum();
    let total_forbidden: u64 = runs
        .iter()
        .map(|r| r["counts"]["forbidden"].as_u64().unwrap())
        .sum();
    assert_eq!(total_created, 41);
    assert_eq!(total_forbidden, 1);
    assert!(
        runs.iter().any(|r| r["counts"]["updated"] == 1),
        "the title change updates one user"
    );
    assert!(
        runs.iter().any(|r| r["counts"]["groups_updated"] == 1),
        "the move updates one group"
    );

    // A second demo refuses to reuse the file.
    let again = syncerd(
        None,
        &["demo", "--database", db_file.to_str().unwrap()],
        &[],
    );
    assert!(!again.status.success());
    assert!(
        text(&again).1.contains("already exists"),
        "{}",
        text(&again).1
    );
}
