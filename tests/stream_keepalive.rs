//! Stream-mode keep-alive and TLS: idle pings keep a live connection, a silent peer is dropped
//! after the pong timeout, and a wss:// endpoint goes through rustls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;
mod stream_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dingtalk_support::*;
use httpmock::prelude::*;
use serde_json::json;
use stream_support::*;
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
