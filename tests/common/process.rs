//! The real `syncerd` binary as a child process: a clean environment, loopback only, its
//! stdout and stderr in files the test reads, signals sent by pid.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use syncerd::db::{self, Db, RunStatus};
use tokio::process::{Child, Command};

use super::runs_of;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `syncerd` with a clean environment, the database at `db_url`, its HTTP endpoints on
/// loopback `port`, and DingTalk at a closed loopback port unless `env` names another.
pub fn syncerd_command(dir: &Path, db_url: &str, port: u16, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncerd"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SYNCERD_DATABASE__URL", db_url)
        .env("SYNCERD_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("SYNCERD_DATABASE__CONNECT_TIMEOUT", "3s")
        // Tests never reach the real DingTalk: a closed loopback port unless a test sets one.
        .env("SYNCERD_DINGTALK__API_BASE", "http://127.0.0.1:9")
        .env("SYNCERD_DINGTALK__MAX_ATTEMPTS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A running `syncerd` process; killed when dropped.
pub struct Syncerd {
    child: Child,
    pub port: u16,
    log: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Syncerd {
    /// `syncerd ARGS...` (the subcommand first).
    pub fn spawn(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Syncerd {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("stderr.log");
        let out = dir.path().join("stdout.txt");
        let mut cmd = syncerd_command(dir.path(), db_url, port, env);
        cmd.args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        Syncerd {
            child: cmd.spawn().unwrap(),
            port,
            log,
            out,
            _dir: dir,
        }
    }

    /// The daemon: `syncerd run ARGS...`.
    /// `syncerd run`. Its DingTalk event streams are off unless `env` turns them on
    /// (`SYNCERD_STREAM__ENABLED=true`): most tests count the runs of the schedule alone.
    pub fn daemon(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Syncerd {
        let all: Vec<&str> = ["run"].iter().chain(args).copied().collect();
        let mut env_all = vec![("SYNCERD_STREAM__ENABLED", "false")];
        env_all.extend_from_slice(env);
        Syncerd::spawn(db_url, &all, &env_all)
    }

    /// The daemon with the usual test settings: 200 ms reload, 1 s minimum interval.
    pub fn fast_daemon(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> Syncerd {
        let mut all = vec![
            ("SYNCERD_SCHEDULER__RELOAD_INTERVAL", "200ms"),
            ("SYNCERD_SCHEDULER__MIN_INTERVAL", "1"),
        ];
        all.extend_from_slice(env);
        Syncerd::daemon(db_url, args, &all)
    }

    pub fn pid(&self) -> String {
        self.child.id().unwrap().to_string()
    }

    /// Sends `signal` (`TERM`, `KILL`, `HUP`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("syncerd did not exit within {limit:?}:\n{}", self.stderr()),
        }
    }

    /// The body of `/metrics` (empty when the daemon does not answer).
    pub async fn metrics(&self) -> String {
        let answer = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match answer {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn readyz(&self) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/readyz", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some((response.status().as_u16(), response.text().await.unwrap()))
    }

    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no `{needle}` in the log within {within:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The id of the first `running` run of syncer `name`, once there is one (8 s at most).
pub async fn wait_for_running(db: &Db, name: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if let Some(r) = runs_of(db, name)
            .await
            .into_iter()
            .find(|r| r.status == RunStatus::Running)
        {
            return r.id;
        }
        assert!(Instant::now() < deadline, "no running run of {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of run `id`.
pub async fn run_status(db: &Db, id: i64) -> RunStatus {
    db::get_run(db, id).await.unwrap().unwrap().status
}
