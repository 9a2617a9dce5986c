#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad configuration through the real binary: every kind of invalid syncer row makes
//! `syncerd sync` fail with one clear line and one `error_text` line, without touching the
//! valid syncer beside it; a broken config file or an unknown key in it is named.

mod common;

use std::path::Path;
use std::process::Output;

use common::process::{free_port, syncerd_command};
use common::{TestDb, on_every_engine};
use syncerd::db::{self, NewSyncer, RunStatus};
use syncerd::secret::Secret;
use syncerd::simulator::{DEFAULT_APP_KEY, Simulator, SimulatorConfig, SimulatorHandle};

const SECRET: &str = "Cfg-Canary-S3cret-c41";

fn syncerd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_syncerd"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SYNCERD_DINGTALK__MAX_ATTEMPTS", "2");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// 25 users in 3 departments, answering to the tests' App Secret.
async fn small_simulator() -> SimulatorHandle {
    Simulator::start(
        SimulatorConfig {
            users: 25,
            departments: 3,
            app_secret: Secret::new(SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_syncer_row_fails_sync_with_one_clear_line_and_the_valid_one_still_syncs() {
    let sim = small_simulator().await;
    let base = sim.base_url();
    on_every_engine(async |t: &TestDb| {
        let work = tempfile::tempdir().unwrap();
        let url = t.url().to_owned();
        let env = [
            ("SYNCERD_DATABASE__URL", url.as_str()),
            ("SYNCERD_DINGTALK__API_BASE", base.as_str()),
        ];
        let run = |args: Vec<String>| {
            let dir = work.path().to_owned();
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            async move {
                tokio::task::spawn_blocking(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    syncerd(&dir, &args, &env)
                })
                .await
                .unwrap()
            }
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(run(s(&["migrate"])).await.status.success());

        // (name, corruption, words the message must contain)
        let user = t.quote("user");
        let password = t.quote("password");
        let cases: Vec<(&str, String, &[&str])> = vec![
            ("no-key", format!("{user} = ''"), &["App Key", "`user`"]),
            (
                "no-secret",
                format!("{password} = ''"),
                &["App Secret", "`password`"],
            ),
            (
                "blank-secret",
                format!("{password} = '   '"),
                &["App Secret"],
            ),
            ("ldap", "type = 'LDAP'".to_owned(), &["LDAP"]),
            (
                "broken-columns",
                "table_columns = '{broken'".to_owned(),
                &["table_columns"],
            ),
            ("no-org", "organization = ''".to_owned(), &["organization"]),
        ];
        let mut names: Vec<&str> = cases.iter().map(|c| c.0).collect();
        names.extend(["good", "interval-0", "interval-neg"]);
        for name in &names {
            // Each valid syncer imports into an organization of its own.
            let org = match *name {
                "interval-0" => "zero",
                "interval-neg" => "neg",
                _ => "acme",
            };
            let out = run(s(&[
                "syncer",
                "add",
                "--name",
                name,
                "--organization",
                org,
                "--app-key",
                "sim-app-key",
                "--app-secret",
                SECRET,
            ]))
            .await;
            assert!(out.status.success(), "{}", text(&out));
        }
        let db = t.connect().await;
        for (name, set, _) in &cases {
            t.execute(
                &db,
                &format!("UPDATE syncer SET {set} WHERE name = '{name}'"),
            )
            .await;
        }
        t.execute(
            &db,
            "UPDATE syncer SET sync_interval = 0 WHERE name = 'interval-0'",
        )
        .await;
        t.execute(
            &db,
            "UPDATE syncer SET sync_interval = -5 WHERE name = 'interval-neg'",
        )
        .await;

        for (name, _, words) in &cases {
            let out = run(s(&["sync", name])).await;
            let all = text(&out);
            assert!(!out.status.success(), "{}: {name}: {all}", t.label());
            // The report says why in one line.
            let line = all
                .lines()
                .find(|l| l.contains("cannot run:"))
                .unwrap_or_else(|| panic!("{}: {name}: no reason line: {all}", t.label()));
            assert!(line.contains(name), "{}: {line}", t.label());
            for word in *words {
                assert!(
                    line.contains(word),
                    "{}: {name}: `{word}` in {line}",
                    t.label()
                );
            }
            assert!(!all.contains(SECRET), "{}: {name}: {all}", t.label());
            let error_text = t
                .query_texts(
                    &db,
                    &format!("SELECT error_text FROM syncer WHERE name = '{name}'"),
                )
                .await
                .join("");
            assert_eq!(
                error_text.trim_end().lines().count(),
                1,
                "{}: {name}: {error_text:?}",
                t.label()
            );
            assert!(!error_text.contains(SECRET));
        }
        // Nothing was written for them.
        let users = t
            .query_texts(
                &db,
                &format!("SELECT name FROM {user} WHERE owner = 'acme'"),
            )
            .await;
        assert!(users.is_empty(), "{}: {users:?}", t.label());

        // The valid syncer syncs cleanly.
        let out = run(s(&["sync", "good"])).await;
        assert!(out.status.success(), "{}: {}", t.label(), text(&out));
        let error_text = t
            .query_texts(&db, "SELECT error_text FROM syncer WHERE name = 'good'")
            .await;
        assert_eq!(error_text, vec![String::new()], "{}", t.label());
        // An interval of 0 or -5 only matters to the daemon's schedule: a one-shot sync runs.
        // (Its groups conflict with `good`'s, as Casdoor's group names are global: partial.)
        for name in ["interval-0", "interval-neg"] {
            let out = run(s(&["sync", name])).await;
            assert!(
                !text(&out).contains("cannot run"),
                "{}: {}",
                t.label(),
                text(&out)
            );
        }
        for org in ["acme", "zero", "neg"] {
            let users = t
                .query_texts(
                    &db,
                    &format!("SELECT name FROM {user} WHERE owner = '{org}'"),
                )
                .await;
            assert_eq!(users.len(), 25, "{}: {org}", t.label());
        }
        drop(db);
    })
    .await;
    sim.shutdown().await.unwrap();
}

/// `syncerd ARGS` from an async test, against `db_url` and DingTalk at `api_base`.
async fn syncerd_at(dir: &Path, db_url: &str, api_base: &str, args: &[&str]) -> Output {
    syncerd_command(
        dir,
        db_url,
        free_port(),
        &[("SYNCERD_DINGTALK__API_BASE", api_base)],
    )
    .args(args)
    .output()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_casdoor_does_not_know_fails_the_run_before_any_call_or_write() {
    let sim = small_simulator().await;
    let base = sim.base_url();
    on_every_engine(async |t: &TestDb| {
        let work = tempfile::tempdir().unwrap();
        let run = |args: &'static [&'static str]| syncerd_at(work.path(), t.url(), &base, args);
        let db = t.migrated().await;
        for (name, organization) in [("good", "acme"), ("ghost", "ghost-org")] {
            db::add_syncer(
                &db,
                NewSyncer {
                    name: name.into(),
                    organization: organization.into(),
                    app_key: DEFAULT_APP_KEY.into(),
                    app_secret: Secret::new(SECRET),
                    sync_interval: 3600,
                    enabled: true,
                },
            )
            .await
            .unwrap();
        }
        // Beside Casdoor: its organization table knows acme, not ghost-org.
        t.create_organization_table(&db, &[("acme", "Acme")]).await;
        let user = t.quote("user");
        let users_of = |org: &'static str| {
            let sql = format!("SELECT name FROM {user} WHERE owner = '{org}'");
            let db = db.clone();
            async move { t.query_texts(&db, &sql).await.len() }
        };

        sim.reset_stats();
        let out = run(&["sync", "ghost"]).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {all}", t.label());
        let line = all
            .lines()
            .find(|l| l.contains("cannot run:"))
            .unwrap_or_else(|| panic!("{}: no reason line: {all}", t.label()));
        for words in [
            "ghost",
            "`ghost-org` does not exist",
            "create the organization in Casdoor",
        ] {
            assert!(line.contains(words), "{}: `{words}` in {line}", t.label());
        }
        assert!(!all.contains(SECRET), "{all}");
        // Stopped before the fetch and before any write.
        assert_eq!(
            sim.stats().total_calls(),
            0,
            "{}: DingTalk was called",
            t.label()
        );
        assert_eq!(
            t.query_texts(&db, &format!("SELECT name FROM {user}"))
                .await
                .len(),
            0
        );
        let history = common::runs_of(&db, "ghost").await;
        assert_eq!(history.len(), 1, "{}", t.label());
        assert_eq!(history[0].status, RunStatus::Failed);
        assert_eq!(history[0].api_calls, 0);
        let summary = history[0].error_summary.clone().unwrap_or_default();
        assert!(summary.contains("`ghost-org` does not exist"), "{summary}");
        let error_text = db::get_syncer(&db, "ghost")
            .await
            .unwrap()
            .unwrap()
            .error_text;
        assert_eq!(error_text.trim_end().lines().count(), 1, "{error_text:?}");
        assert!(
            error_text.contains("`ghost-org` does not exist"),
            "{error_text}"
        );

        // `check` says so too, and vouches for the organization that exists.
        let out = run(&["check", "ghost"]).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {all}", t.label());
        assert!(
            all.contains("[FAILED]  Casdoor organization `ghost-org` (table organization)")
                && all.contains("create the organization in Casdoor"),
            "{}: {all}",
            t.label()
        );
        let out = run(&["check", "good"]).await;
        let all = text(&out);
        assert!(out.status.success(), "{}: {all}", t.label());
        assert!(
            all.contains("[ok]      Casdoor organization `acme` (table organization): exists"),
            "{all}"
        );

        // The other syncer is unaffected.
        let out = run(&["sync", "good"]).await;
        assert!(out.status.success(), "{}: {}", t.label(), text(&out));
        assert_eq!(users_of("acme").await, 25, "{}", t.label());

        // Without Casdoor's organization table (syncerd's embedded database) organizations need
        // no row, as before. (Group names are global in Casdoor, so ghost's clash with good's:
        // the run may end partial, but it runs.)
        t.execute(&db, "DROP TABLE organization").await;
        let out = run(&["sync", "ghost"]).await;
        let all = text(&out);
        assert!(!all.contains("cannot run"), "{}: {all}", t.label());
        assert_eq!(users_of("ghost-org").await, 25, "{}: {all}", t.label());
        let out = run(&["check", "ghost"]).await;
        let all = text(&out);
        assert!(out.status.success(), "{}: {all}", t.label());
        assert!(!all.contains("Casdoor organization"), "{all}");
        db.close().await.unwrap();
    })
    .await;
    sim.shutdown().await.unwrap();
}

#[test]
fn a_broken_config_file_is_named_and_an_unknown_key_in_it_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[database]\nurl = \"sqlite://x.db\n[sync\nbatch_size = 5\n",
    )
    .unwrap();
    let out = syncerd(
        dir.path(),
        &["--config", broken.to_str().unwrap(), "config", "show"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The file, the line and what is wrong there.
    assert!(
        stderr.starts_with("error: ") && stderr.contains("broken.toml"),
        "{stderr}"
    );
    assert!(stderr.contains("line 2"), "{stderr}");

    let wrong_type = dir.path().join("wrong-type.toml");
    std::fs::write(&wrong_type, "[sync]\nbatch_size = \"many\"\n").unwrap();
    let out = syncerd(
        dir.path(),
        &["--config", wrong_type.to_str().unwrap(), "config", "show"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("batch_size"), "{stderr}");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[sync]\nbatch_sise = 5\n[databse]\nurl = \"x\"\n").unwrap();
    let out = syncerd(
        dir.path(),
        &["--config", typo.to_str().unwrap(), "config", "show"],
        &[],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for key in ["batch_sise", "databse"] {
        assert!(all.contains(key), "`{key}` not named: {all}");
    }
}
