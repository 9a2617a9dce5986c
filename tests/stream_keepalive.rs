//! Stream-mode keep-alive and secrecy: idle pings keep a live connection, a silent peer is
//! dropped after the pong timeout, and the App Secret and tickets never reach the logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;
mod stream_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dingtalk_support::*;
use httpmock::prelude::*;
use serde_json::json;
use stream_support::*;
use syncerd::simulator::{SimUser, SimulatorConfig};
use syncerd::stream::{ConnectionState, StreamConfig, StreamError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pings_are_answered_and_the_connection_stays() {
    let sim = sim().await;
    let config = StreamConfig {
        idle_ping: Duration::from_millis(20),
        ..config_for(&sim)
    };
    let mut client = spawn_client(config, &sim, Arc::default());
    client.connected().await;
    until("three keep-alive pings", || {
        client.stats.snapshot().keepalive_pings >= 3
    })
    .await;
    assert!(matches!(
        *client.state.borrow(),
        ConnectionState::Connected { .. }
    ));
    assert_eq!(client.stats.snapshot().connections, 1);
    assert_eq!(sim.stream_stats().connections, 1);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_a_ping_is_dropped_after_the_pong_timeout() {
    init_test_log();
    // A WebSocket server that completes handshakes and then never reads (so never pongs).
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn({
        let held = held.clone();
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    held.lock().unwrap().push(ws);
                }
            }
        }
    });
    let open = MockServer::start_async().await;
    open.mock_async(|when, then| {
        when.method(POST).path("/v1.0/gateway/connections/open");
        then.status(200)
            .json_body(json!({"endpoint": format!("ws://{ws_addr}/connect"), "ticket": "t-1"}));
    })
    .await;
    let config = StreamConfig {
        open_api_base: open.base_url(),
        idle_ping: Duration::from_millis(30),
        pong_timeout: Duration::from_millis(30),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        ..StreamConfig::default()
    };
    let mut client = spawn_client_with(config, creds("k", "s"), Arc::default());
    let state = client
        .state_until(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await;
    assert!(
        matches!(
            state,
            ConnectionState::Reconnecting {
                last_error: StreamError::PongTimeout(_),
                ..
            }
        ),
        "{state:?}"
    );
    assert!(client.stats.snapshot().keepalive_pings >= 1);
    client.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_endpoint_goes_through_rustls_and_failures_are_typed() {
    init_test_log();
    // Nothing listens there: the TLS config is built, the TCP connect fails, no panic.
    let closed = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let open = MockServer::start_async().await;
    open.mock_async(|when, then| {
        when.method(POST).path("/v1.0/gateway/connections/open");
        then.status(200).json_body(
            json!({"endpoint": format!("wss://{addr}/connect"), "ticket": "tkt-secret-1"}),
        );
    })
    .await;
    let config = StreamConfig {
        open_api_base: open.base_url(),
        backoff_min: Duration::from_secs(3600),
        backoff_max: Duration::from_secs(3600),
        ..StreamConfig::default()
    };
    let creds = creds("ding-key", "a-realistic-app-secret-of-some-length");
    let mut client = spawn_client_with(config, creds, Arc::default());
    let state = client
        .state_until(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await;
    let ConnectionState::Reconnecting { last_error, .. } = &state else {
        unreachable!()
    };
    let text = last_error.to_string();
    assert!(
        matches!(last_error, StreamError::WebSocket { .. }),
        "{text}"
    );
    assert!(
        text.contains("wss://") && text.contains("refused"),
        "{text}"
    );
    assert!(!format!("{state:?} {text}").contains("tkt-secret-1"));
    client.stop().await;
}

/// A `Write` into a shared buffer, for capturing log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One thread runs every task here, so the thread-local subscriber sees the client's logs.
#[tokio::test(flavor = "current_thread")]
async fn logs_never_carry_the_app_secret_or_a_ticket() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = start_simulator(SimulatorConfig {
        users: 3,
        departments: 1,
        stream_later_delay: Duration::ZERO,
        ..SimulatorConfig::default()
    })
    .await;
    let wrong = "wrong-secret-in-a-log-would-be-a-leak";
    let mut refused = spawn_client_with(
        config_for(&sim),
        creds(sim.app_key(), wrong),
        Arc::default(),
    );
    refused
        .state_until(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await;
    refused.stop().await;

    let sink = Arc::new(Recorder::failing(1));
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    sim.add_user(SimUser::new("log-u1", "日志", vec![1]))
        .unwrap();
    until("the event stored", || sink.stored().len() == 1).await;
    sim.stream_disconnect();
    until("a reconnect", || sim.stream_stats().connections == 2).await;
    client.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Stream connected"),
        "nothing captured: {logs}"
    );
    assert!(
        logs.contains("not stored"),
        "the LATER was not logged: {logs}"
    );
    let secret = sim.credentials().app_secret.expose().to_owned();
    for leak in [secret.as_str(), wrong, "simticket"] {
        assert!(!logs.contains(leak), "`{leak}` in the logs:\n{logs}");
    }
}
