#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad configuration through the real binary: every kind of invalid syncer row makes
//! `syncerd sync` fail with one clear line and one `error_text` line, without touching the
//! valid syncer beside it; a broken config file or an unknown key in it is named.

mod common;

use std::path::Path;
use std::process::Output;

use common::{TestDb, on_every_engine};
use syncerd::dingtalk::simulator::{Simulator, SimulatorConfig};
use syncerd::secret::Secret;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_syncer_row_fails_sync_with_one_clear_line_and_the_valid_one_still_syncs() {
    let sim = Simulator::start(
        SimulatorConfig {
            users: 25,
            departments: 3,
            app_secret: Secret::new(SECRET),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
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
