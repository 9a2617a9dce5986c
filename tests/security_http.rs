#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The daemon's HTTP face and its logs against hostile or careless clients, through the real
//! binary: database URLs never printed, half-sent requests closed, connections capped, "sync
//! now" rate-limited, the admin token checked strictly, and log lines that cannot be forged.

mod common;

use std::time::{Duration, Instant};

use common::process::{Syncerd, free_port, syncerd_command};
use common::{TestDb, eventually, on_every_engine};
use syncerd::db::{self, Db, NewSyncer};
use syncerd::secret::Secret;
use syncerd::simulator::Simulator;
use syncerd::simulator::SimulatorConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "Http-Adm1n-Token-5f0c2e";

async fn add(db: &Db, name: &str, interval: i32, enabled: bool) {
    db::add_syncer(
        db,
        NewSyncer {
            name: name.into(),
            organization: "acme".into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new("Http-S3cret"),
            sync_interval: interval,
            enabled,
        },
    )
    .await
    .unwrap();
}

/// GET `path` on `port`: status and body, or `None` when nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    Some((response.status().as_u16(), response.text().await.unwrap()))
}

/// Waits until `/healthz` answers on `port`.
async fn wait_serving(d: &Syncerd) {
    eventually(Duration::from_secs(10), "/healthz to answer", || async {
        get(d.port, "/healthz").await.is_some()
    })
    .await;
}

/// What a raw client gets back before the server closes or `within` passes: the bytes read and
/// whether the server closed the connection.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0_u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A connection that sent the start of a request and then nothing.
async fn half_sent(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: syncerd\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

/// One whole request on a connection of its own: the raw answer.
async fn whole_request(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: syncerd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the server kept a Connection: close request open: {answer}"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_with_reserved_characters_is_never_printed() {
    // Every password fragment holds "Sup3r"; the user name is "canaryuser".
    let mut urls = vec![
        // `#`, `/` and `?` unescaped: the driver cannot parse it, and its message quoted it.
        "mysql://canaryuser:Sup3r#Se/cr?et@127.0.0.1:3306/casdoor".to_owned(),
        "postgres://canaryuser:Sup3r/Se#cret@127.0.0.1:5432/casdoor".to_owned(),
        // Parseable, nothing listening, secrets in the query under any case.
        "postgres://canaryuser:Sup3r%23Secret@127.0.0.1:9/casdoor?sslmode=disable\
         &Password=Sup3rQuery&sslpassword=Sup3rSsl"
            .to_owned(),
    ];
    // Real servers with a wrong password: their refusal names the user (fine in the log,
    // not on /readyz).
    if std::env::var("SYNCERD_TEST_MYSQL_URL").is_ok() {
        urls.push("mysql://canaryuser:Sup3r%23Secret%2F@127.0.0.1:3306/casdoor".to_owned());
    }
    if std::env::var("SYNCERD_TEST_POSTGRES_URL").is_ok() {
        urls.push("postgres://canaryuser:Sup3r%3FSecret@127.0.0.1:5432/casdoor".to_owned());
    }
    let dir = tempfile::tempdir().unwrap();
    for url in &urls {
        let mut printed = Vec::new();
        for args in [vec!["config", "show"], vec!["syncer", "list"]] {
            let out = syncerd_command(dir.path(), url, free_port(), &[])
                .args(&args)
                .output()
                .await
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if args[0] == "config" {
                assert!(out.status.success(), "{url}: {text}");
                assert!(text.contains("url = \""), "{text}");
            } else {
                assert!(!out.status.success(), "{url}: {text}");
            }
            printed.push((args.join(" "), text));
        }
        let mut d = Syncerd::daemon(url, &[], &[("SYNCERD_DATABASE__CONNECT_TIMEOUT", "1s")]);
        d.wait_for_log(
            "database not available (attempt 2)",
            Duration::from_secs(15),
        )
        .await;
        let (status, readyz) = get(d.port, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{readyz}");
        assert!(readyz.contains("database not available"), "{readyz}");
        let (_, metrics) = get(d.port, "/metrics").await.unwrap();
        for (what, text) in [("/readyz", &readyz), ("/metrics", &metrics)] {
            for needle in ["canaryuser", "127.0.0.1", "casdoor"] {
                assert!(
                    !text.contains(needle),
                    "{url}: {what} shows {needle}: {text}"
                );
            }
        }
        d.signal("TERM");
        assert!(d.exit_within(Duration::from_secs(10)).await.success());
        printed.push(("daemon log".into(), d.stderr()));
        printed.push(("/readyz".into(), readyz));
        for (what, text) in &printed {
            assert!(
                !text.contains("Sup3r"),
                "{url}: {what} shows the password:\n{text}"
            );
            for needle in ["canaryuser:", "@127.0.0.1"] {
                assert!(
                    !text.contains(needle),
                    "{url}: {what} shows a database URL:\n{text}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed_within_their_timeouts() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    let d = Syncerd::fast_daemon(
        t.url(),
        &[],
        &[
            ("SYNCERD_HTTP__HEADER_READ_TIMEOUT", "1s"),
            ("SYNCERD_HTTP__IDLE_TIMEOUT", "30s"),
        ],
    );
    wait_serving(&d).await;
    let mut stalled = Vec::new();
    for _ in 0..30 {
        stalled.push(half_sent(d.port).await);
    }
    let sent = Instant::now();
    for stream in &mut stalled {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(6)).await;
        assert!(closed, "a half-sent request was still open after 6 s");
    }
    eprintln!("30 half-sent requests closed after {:?}", sent.elapsed());
    assert!(whole_request(d.port).await.starts_with("HTTP/1.1 200"));
    drop(d);

    // An idle keep-alive connection, and one that never sends anything, end at idle_timeout
    // (1 s), long before the header timeout (10 s).
    let d = Syncerd::fast_daemon(
        t.url(),
        &[],
        &[
            ("SYNCERD_HTTP__HEADER_READ_TIMEOUT", "10s"),
            ("SYNCERD_HTTP__IDLE_TIMEOUT", "1s"),
        ],
    );
    wait_serving(&d).await;
    let mut kept = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: syncerd\r\n\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
    let (answer, closed) = read_until_closed(&mut kept, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed,
        "an idle keep-alive connection stayed open: {answer}"
    );
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(6)).await;
    assert!(closed, "a connection that sent nothing stayed open");
    drop(d);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_and_the_server_recovers() {
    let t = TestDb::sqlite().await;
    let db = t.migrated().await;
    let d = Syncerd::fast_daemon(
        t.url(),
        &[],
        &[
            ("SYNCERD_HTTP__MAX_CONNECTIONS", "4"),
            ("SYNCERD_HTTP__HEADER_READ_TIMEOUT", "10s"),
            ("SYNCERD_HTTP__IDLE_TIMEOUT", "10s"),
        ],
    );
    // Raw requests that end with the server's close: no client pool keeps a connection open.
    eventually(Duration::from_secs(10), "a first answer", || async {
        match TcpStream::connect(("127.0.0.1", d.port)).await {
            Err(_) => false,
            Ok(mut stream) => {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
                closed && answer.starts_with("HTTP/1.1 200")
            }
        }
    })
    .await;
    // Under the cap, stalled clients leave room for a real request.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(half_sent(d.port).await);
    }
    assert!(whole_request(d.port).await.starts_with("HTTP/1.1 200"));
    // Three more stalled clients: the cap holds four, the others are refused at once.
    for _ in 0..3 {
        stalled.push(half_sent(d.port).await);
    }
    let outcomes = futures_util::future::join_all(
        stalled
            .iter_mut()
            .map(|s| read_until_closed(s, Duration::from_secs(2))),
    )
    .await;
    let refused: Vec<&String> = outcomes
        .iter()
        .filter(|(_, closed)| *closed)
        .map(|(answer, _)| answer)
        .collect();
    assert_eq!(refused.len(), 2, "{outcomes:?}");
    for answer in refused {
        assert!(
            answer.is_empty()
                || (answer.starts_with("HTTP/1.1 503") && answer.contains("http.max_connections")),
            "{answer}"
        );
    }
    // The four held ones still hold every slot: a real request is refused too.
    let answer = whole_request(d.port).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "a connection over the cap was served: {answer}"
    );
    // The stalled clients go away: served again.
    drop(stalled);
    eventually(Duration::from_secs(5), "a request served again", || async {
        whole_request(d.port).await.starts_with("HTTP/1.1 200")
    })
    .await;
    drop(d);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_runs_are_rate_limited_and_a_disabled_syncer_needs_force() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "busy", 3600, true).await;
        add(&db, "off", 3600, false).await;
        // Real runs, against a simulated DingTalk that knows the syncers' app.
        let sim = Simulator::start(
            SimulatorConfig {
                users: 20,
                departments: 2,
                app_key: "dingkey".into(),
                app_secret: Secret::new("Http-S3cret"),
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let base = sim.base_url();
        let d = Syncerd::daemon(
            t.url(),
            &[],
            &[
                ("SYNCERD_DINGTALK__API_BASE", &base),
                ("SYNCERD_SCHEDULER__RELOAD_INTERVAL", "200ms"),
                ("SYNCERD_SCHEDULER__MIN_INTERVAL", "60s"),
                ("SYNCERD_HTTP__ADMIN_TOKEN", TOKEN),
            ],
        );
        eventually(Duration::from_secs(10), "ready", || async {
            get(d.port, "/readyz").await.is_some_and(|(s, _)| s == 200)
        })
        .await;
        let http = reqwest::Client::new();
        let port = d.port;
        let post = |path: String| {
            let http = http.clone();
            async move {
                let response = http
                    .post(format!("http://127.0.0.1:{port}{path}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (
                    response.status().as_u16(),
                    retry_after,
                    response.text().await.unwrap(),
                )
            }
        };
        let mut started = 0;
        let mut limited = 0;
        for _ in 0..10 {
            let (status, retry_after, body) = post("/api/v1/syncers/busy/run".into()).await;
            match status {
                202 => started += 1,
                409 => assert!(body.contains("already"), "{}: {body}", t.label()),
                429 => {
                    limited += 1;
                    let seconds: u64 = retry_after.unwrap().parse().unwrap();
                    assert!((1..=60).contains(&seconds), "{seconds}");
                    assert!(body.contains("scheduler.min_interval"), "{body}");
                }
                other => panic!("{}: {other} {body}", t.label()),
            }
        }
        assert!(started <= 1, "{}: {started} manual runs started", t.label());
        // Once no run is going, "sync now" is still refused until min_interval has passed.
        eventually(Duration::from_secs(10), "the run to end", || async {
            let response = http
                .get(format!("http://127.0.0.1:{port}/api/v1/syncers"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let json: serde_json::Value = response.json().await.unwrap();
            json["syncers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "busy" && s["running"] == false && s["last_run"].is_object())
        })
        .await;
        let (status, retry_after, body) = post("/api/v1/syncers/busy/run".into()).await;
        assert_eq!(status, 429, "{}: {body}", t.label());
        limited += 1;
        let seconds: u64 = retry_after.unwrap().parse().unwrap();
        assert!((1..=60).contains(&seconds), "{seconds}");
        eprintln!("{}: {started} started, {limited} answered 429", t.label());

        // The scheme in any case, as HTTP allows.
        for scheme in ["bearer", "BEARER"] {
            let response = http
                .get(format!("http://127.0.0.1:{port}/api/v1/syncers"))
                .header("Authorization", format!("{scheme} {TOKEN}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200, "{scheme}");
        }

        let (status, _, body) = post("/api/v1/syncers/off/run".into()).await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body.contains("disabled") && body.contains("force=true"),
            "{body}"
        );
        let (status, _, body) = post("/api/v1/syncers/off/run?force=true".into()).await;
        assert_eq!(status, 202, "{body}");
        let (status, _, body) = post("/api/v1/syncers/off/run?force=true".into()).await;
        assert!(status == 429 || status == 409, "{status} {body}");
        let (status, _, body) = post("/api/v1/syncers/off/run?force=maybe".into()).await;
        assert_eq!(status, 400, "{body}");

        // Probes answer without the token and name no host or user of the database.
        let (_, readyz) = get(d.port, "/readyz").await.unwrap();
        let (_, metrics) = get(d.port, "/metrics").await.unwrap();
        for text in [&readyz, &metrics] {
            for needle in ["127.0.0.1", "root@", "postgres@", "syncerd.db", ".db?"] {
                assert!(!text.contains(needle), "{}: {needle} in {text}", t.label());
            }
        }
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_admin_token_shorter_than_16_bytes_is_refused_at_start_up() {
    let t = TestDb::sqlite().await;
    let _db = t.migrated().await;
    let mut d = Syncerd::daemon(
        t.url(),
        &[],
        &[("SYNCERD_HTTP__ADMIN_TOKEN", "short-tok-15byt")],
    );
    let status = d.exit_within(Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = d.stderr();
    assert!(
        log.contains("http.admin_token") && log.contains("at least 16"),
        "{log}"
    );
    assert!(!log.contains("short-tok-15byt"), "{log}");
}

/// A daemon on `t` whose admin token is read from a file (`http.admin_token_file`), holding
/// [`TOKEN`]: the daemon, the token file (to rewrite before a SIGHUP) and the directory that
/// keeps both files alive.
fn daemon_with_token_file(t: &TestDb) -> (Syncerd, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("syncerd.toml");
    std::fs::write(
        &config,
        format!("[http]\nadmin_token_file = \"{}\"\n", token_file.display()),
    )
    .unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let d = Syncerd::daemon(t.url(), &["--config", &config_arg], &[]);
    (d, token_file, dir)
}

/// The status of `GET /api/v1/syncers` with `token` on `port` (0: no answer).
async fn list_status(port: u16, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/syncers"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_short_admin_token_keeps_the_running_one() {
    let t = TestDb::sqlite().await;
    t.migrated().await.close().await.unwrap();
    let (mut d, token_file, _dir) = daemon_with_token_file(&t);
    let port = d.port;
    let list = |token: &'static str| list_status(port, token);
    eventually(Duration::from_secs(10), "the admin API", || async {
        list(TOKEN).await == 200
    })
    .await;
    std::fs::write(&token_file, "short-tok-15byt\n").unwrap();
    d.signal("HUP");
    d.wait_for_log(
        "reload: keeping the running configuration",
        Duration::from_secs(5),
    )
    .await;
    let log = d.stderr();
    assert!(log.contains("at least 16"), "{log}");
    assert!(!log.contains("short-tok-15byt"), "{log}");
    assert_eq!(list(TOKEN).await, 200);
    assert_eq!(list("short-tok-15byt").await, 401);
    d.signal("TERM");
    assert!(d.exit_within(Duration::from_secs(10)).await.success());
}

/// A SIGHUP that arrives while the daemon still waits for its database is done once the
/// database is reached (here: a new token that is too short, so the running one stays), not
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_asked_for_before_the_database_is_reached_is_done_once_connected() {
    // An empty SQLite file: reachable, but without syncerd's tables the daemon keeps retrying.
    let t = TestDb::sqlite().await;
    let (mut d, token_file, _dir) = daemon_with_token_file(&t);
    d.wait_for_log(
        "database not available (attempt 1)",
        Duration::from_secs(10),
    )
    .await;
    std::fs::write(&token_file, "short-tok-15byt\n").unwrap();
    d.signal("HUP");
    d.wait_for_log(
        "reload requested before the database was reached",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        !d.stderr()
            .contains("reload: keeping the running configuration")
    );
    // The database becomes usable: the daemon connects, then does the reload it was asked for.
    t.migrated().await.close().await.unwrap();
    d.wait_for_log(
        "reload: keeping the running configuration",
        Duration::from_secs(20),
    )
    .await;
    let log = d.stderr();
    assert!(log.contains("at least 16"), "{log}");
    assert!(!log.contains("short-tok-15byt"), "{log}");
    assert_eq!(list_status(d.port, TOKEN).await, 200);
    d.signal("TERM");
    assert!(d.exit_within(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_a_syncer_name_cannot_forge_a_log_line() {
    on_every_engine(async |t: &TestDb| {
        let db = t.migrated().await;
        add(&db, "a\nFAKE LINE level=ERROR\r\x1b[31m", 3600, true).await;
        let mut d = Syncerd::fast_daemon(t.url(), &[], &[]);
        d.wait_for_log("FAKE LINE", Duration::from_secs(10)).await;
        d.signal("TERM");
        assert!(d.exit_within(Duration::from_secs(10)).await.success());
        let log = d.stderr();
        assert!(log.contains("a\\nFAKE LINE"), "{log}");
        for line in log.lines() {
            assert!(
                !line.starts_with("FAKE"),
                "{}: forged line in\n{log}",
                t.label()
            );
            assert!(!line.contains('\r') && !line.contains('\x1b'), "{line:?}");
        }
        db.close().await.unwrap();
    })
    .await;
}
