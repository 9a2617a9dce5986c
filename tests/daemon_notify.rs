#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `syncerd run` under systemd's `Type=notify`: READY once it follows the syncer table,
//! WATCHDOG pings from the scheduler loop, STOPPING when SIGTERM arrives.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Collects datagrams until one contains `wanted` or `limit` passes.
fn wait_for(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.contains(wanted);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn run_tells_systemd_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("notify.db").display()
    );
    let bin = env!("CARGO_BIN_EXE_syncerd");
    let migrate = Command::new(bin)
        .arg("migrate")
        .env("SYNCERD_DATABASE__URL", &db_url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut child = Command::new(bin)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SYNCERD_DATABASE__URL", &db_url)
        .env("SYNCERD_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("SYNCERD_SCHEDULER__RELOAD_INTERVAL", "200ms")
        .env("SYNCERD_DINGTALK__API_BASE", "http://127.0.0.1:9")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "10000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut seen = Vec::new();
    let ready = wait_for(&socket, "READY=1", &mut seen, Duration::from_secs(15));
    let watchdog = wait_for(&socket, "WATCHDOG=1", &mut seen, Duration::from_secs(5));
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let stopping = wait_for(&socket, "STOPPING=1", &mut seen, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready, "no READY=1 among {seen:?}");
    assert!(watchdog, "no WATCHDOG=1 among {seen:?}");
    assert!(stopping, "no STOPPING=1 among {seen:?}");
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
}
