//! The Stream-mode client against the simulator's Stream mode over a real loopback WebSocket:
//! acknowledgement only after the sink stored an event, LATER and redelivery, duplicates, pings,
//! disconnects, tickets, refused credentials, unknown types and frames over the size cap.
//!
//! Nothing here waits for time to pass: every wait is for a condition, under a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;
mod stream_support;

use std::sync::Arc;
use std::time::Duration;

use dingtalk_support::*;
use serde_json::json;
use stream_support::*;
use syncerd::simulator::{SimUser, SimulatorConfig, SimulatorHandle};
use syncerd::stream::{
    Change, ConnectionState, DeptChange, StreamConfig, StreamError, StreamEvent, UserChange,
};

fn ids(event: &StreamEvent) -> Vec<String> {
    match &event.change {
        Change::Users { user_ids, .. } => user_ids.clone(),
        Change::Departments { dept_ids, .. } => dept_ids.iter().map(i64::to_string).collect(),
        Change::Other => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_acknowledged_only_after_the_sink_stored_them() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::gated());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;

    let userid = sim
        .add_user(SimUser::new("stream-u1", "流用户", vec![1]))
        .unwrap();
    until("the sink to be asked to store", || {
        sink.attempts().len() == 1
    })
    .await;
    // The sink holds the event: nothing may be acknowledged yet.
    let stats = sim.stream_stats();
    assert_eq!((stats.acks, stats.pending), (0, 1), "{stats:?}");
    sink.gate.as_ref().unwrap().add_permits(1);
    until("the ack", || sim.stream_stats().acks == 1).await;
    assert_eq!(sim.stream_stats().pending, 0);

    let dept = sim.add_department("流部门", 1).unwrap();
    sink.gate.as_ref().unwrap().add_permits(1);
    until("the second ack", || sim.stream_stats().acks == 2).await;

    let stored = sink.stored();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].change,
        Change::Users {
            kind: UserChange::Add,
            user_ids: vec![userid]
        }
    );
    assert_eq!(
        stored[1].change,
        Change::Departments {
            kind: DeptChange::Create,
            dept_ids: vec![dept]
        }
    );
    assert_ne!(stored[0].event_id, stored[1].event_id);
    assert!(!stored[0].corp_id.is_empty() && stored[0].born_time_ms.is_some());
    let stats = client.stats.snapshot();
    assert_eq!((stats.events_received, stats.events_acked), (2, 2));
    assert!(stats.ack_latency_micros_max > 0);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_organization_change_becomes_its_event() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;

    let dept = sim.add_department("临时部门", 1).unwrap();
    sim.rename_department(dept, "改名部门").unwrap();
    let user = sim.add_user(SimUser::new("", "新人", vec![dept])).unwrap();
    sim.update_user(
        &user,
        syncerd::simulator::UserPatch {
            title: Some("工程师".into()),
            ..Default::default()
        },
    )
    .unwrap();
    sim.remove_user(&user).unwrap();
    sim.remove_department(dept).unwrap();
    until("six events stored", || sink.stored().len() == 6).await;
    let got: Vec<(String, Vec<String>)> = sink
        .stored()
        .iter()
        .map(|e| (e.event_type.clone(), ids(e)))
        .collect();
    let d = dept.to_string();
    let want = [
        ("org_dept_create", &d),
        ("org_dept_modify", &d),
        ("user_add_org", &user),
        ("user_modify_org", &user),
        ("user_leave_org", &user),
        ("org_dept_remove", &d),
    ]
    .map(|(t, id)| (t.to_owned(), vec![id.clone()]));
    assert_eq!(got, want);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_failure_answers_later_and_the_event_comes_back_until_stored() {
    let sim = sim_with(SimulatorConfig {
        stream_later_delay: Duration::ZERO,
        ..SimulatorConfig::default()
    })
    .await;
    let sink = Arc::new(Recorder::failing(2));
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;

    sim.add_user(SimUser::new("later-u1", "稍后", vec![1]))
        .unwrap();
    until("the event stored", || sink.stored().len() == 1).await;
    until("the ack", || sim.stream_stats().acks == 1).await;
    let attempts = sink.attempts();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|id| *id == sink.stored()[0].event_id));
    let stats = sim.stream_stats();
    assert_eq!(
        (
            stats.later_replies,
            stats.redeliveries,
            stats.acks,
            stats.pending
        ),
        (2, 2, 1, 0),
        "{stats:?}"
    );
    let client_stats = client.stats.snapshot();
    assert_eq!(
        (client_stats.events_later, client_stats.events_acked),
        (2, 1)
    );
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_after_the_ack_is_delivered_again_with_the_same_event_id() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    assert!(sim.stream_duplicate().is_err(), "nothing acknowledged yet");

    sim.remove_user(&sim.org().users[0].profile.userid).unwrap();
    until("the ack", || sim.stream_stats().acks == 1).await;
    let duplicated = sim.stream_duplicate().unwrap();
    until("the duplicate stored", || sink.stored().len() == 2).await;
    until("the duplicate acknowledged", || {
        sim.stream_stats().acks == 2
    })
    .await;
    let stored = sink.stored();
    assert_eq!(stored[0].event_id, duplicated);
    assert_eq!(stored[1].event_id, duplicated);
    assert_eq!(stored[0], stored[1]);
    assert_eq!(sim.stream_stats().duplicates_sent, 1);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_with_the_same_message_id_and_data() {
    let sim = sim().await;
    let mut client = spawn_client(config_for(&sim), &sim, Arc::default());
    client.connected().await;
    sim.stream_ping();
    sim.stream_ping();
    until("two pings answered", || {
        sim.stream_stats().pings_answered == 2
    })
    .await;
    let stats = sim.stream_stats();
    assert_eq!((stats.pings_sent, stats.replies_unrecognized), (2, 0));
    assert_eq!(client.stats.snapshot().pings_answered, 2);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_is_acknowledged_and_the_client_reconnects_with_a_fresh_ticket() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    sim.stream_disconnect();
    until("a second connection after the ack", || {
        let s = sim.stream_stats();
        s.connections == 2 && s.disconnect_acks == 1
    })
    .await;
    let stats = sim.stream_stats();
    assert_eq!(
        (
            stats.open_calls,
            stats.disconnects_sent,
            stats.disconnect_acks
        ),
        (2, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.tickets_refused, 0);
    // The new connection carries events.
    sim.add_user(SimUser::new("after-reconnect", "重连", vec![1]))
        .unwrap();
    until("the event stored", || sink.stored().len() == 1).await;
    let client_stats = client.stats.snapshot();
    assert_eq!((client_stats.tickets, client_stats.connections), (2, 2));
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ticket_is_refused_and_the_client_recovers_with_a_new_one() {
    let sim = sim().await;
    sim.stream_expire_next_tickets(1);
    let mut client = spawn_client(config_for(&sim), &sim, Arc::default());
    client.connected().await;
    // The client sees the handshake done before the simulator's side has counted it.
    until("the simulator's side", || {
        sim.stream_stats().connections == 1
    })
    .await;
    let stats = sim.stream_stats();
    assert_eq!(
        (stats.open_calls, stats.tickets_refused, stats.connections),
        (2, 1, 1),
        "{stats:?}"
    );
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_connection_only() {
    let sim = sim().await;
    let url = open_ticket(&sim).await;
    let first = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(first.is_ok(), "{:?}", first.err());
    let second = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(second.is_err(), "a used ticket opened a second connection");
    until("the first connection counted", || {
        sim.stream_stats().connections == 1
    })
    .await;
    let stats = sim.stream_stats();
    assert_eq!((stats.connections, stats.tickets_refused), (1, 1));
}

/// Opens a ticket by hand; returns the WebSocket URL with it.
async fn open_ticket(sim: &SimulatorHandle) -> String {
    let creds = sim.credentials();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1.0/gateway/connections/open", sim.base_url()))
        .json(&json!({
            "clientId": creds.app_key,
            "clientSecret": creds.app_secret.expose(),
            "subscriptions": [{"type": "EVENT", "topic": "*"}],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = answer["endpoint"].as_str().unwrap();
    let ticket = answer["ticket"].as_str().unwrap();
    format!("{endpoint}?ticket={ticket}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_typed_error_without_a_tight_loop_or_the_secret() {
    let sim = sim().await;
    let secret = "wrong-secret-NEVER-PRINT-4711";
    let creds = creds(sim.app_key(), secret);
    let config = config_for(&sim);
    let auth_backoff = config.auth_backoff;
    let mut client = spawn_client_with(config, creds, Arc::default());
    let state = client
        .state_until(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await;
    let ConnectionState::Reconnecting {
        last_error,
        retry_in,
        ..
    } = &state
    else {
        unreachable!()
    };
    assert!(last_error.is_unauthorized(), "{last_error:?}");
    assert!(matches!(
        last_error,
        StreamError::Unauthorized { status: 401, .. }
    ));
    assert!(*retry_in >= auth_backoff, "{retry_in:?}");
    let message = last_error.to_string();
    assert!(
        message.contains("dingtalk.app_secret"),
        "the message says what to check: {message}"
    );
    for text in [message, format!("{state:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    let stats = sim.stream_stats();
    assert_eq!((stats.open_calls, stats.open_refused), (1, 1));
    // Cancelling during the long wait stops the client at once.
    client.stop().await;
    assert_eq!(sim.stream_stats().open_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_types_are_acknowledged_without_storing() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    sim.stream_push_event("org_admin_add", r#"{"userId":["boss"]}"#);
    sim.stream_push_event("label_user_change", "not even JSON");
    until("both acknowledged", || sim.stream_stats().acks == 2).await;
    assert!(sink.stored().is_empty());
    assert!(sink.attempts().is_empty());
    assert_eq!(
        *sink.others.lock().unwrap(),
        ["org_admin_add", "label_user_change"]
    );
    let stats = client.stats.snapshot();
    assert_eq!((stats.events_other, stats.events_acked), (2, 2));
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_events_are_acknowledged_and_reported_to_the_sink() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let config = StreamConfig {
        max_ids_per_event: 10,
        ..config_for(&sim)
    };
    let mut client = spawn_client(config, &sim, sink.clone());
    client.connected().await;
    let many: Vec<String> = (0..11).map(|i| format!("u{i}")).collect();
    sim.stream_push_event("user_modify_org", &json!({"userId": many}).to_string());
    sim.stream_push_event("org_dept_modify", r#"{"deptId":["not-a-number"]}"#);
    until("both acknowledged", || sim.stream_stats().acks == 2).await;
    assert!(sink.stored().is_empty());
    assert_eq!(sink.refused.lock().unwrap().len(), 2);
    assert_eq!(client.stats.snapshot().frames_refused, 2);
    assert_eq!(sim.stream_stats().connections, 1);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_frame_is_ignored_and_the_connection_stays() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    sim.stream_send_raw("{\"type\":\"EVENT\",garbled".into());
    sim.add_user(SimUser::new("after-garble", "乱码后", vec![1]))
        .unwrap();
    until("the event stored", || sink.stored().len() == 1).await;
    assert_eq!(client.stats.snapshot().frames_refused, 1);
    assert_eq!(sim.stream_stats().connections, 1);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_cap_is_refused_and_the_client_reconnects() {
    let sim = sim().await;
    let sink = Arc::new(Recorder::default());
    let config = StreamConfig {
        max_frame_bytes: 4096,
        // Long enough for the test to see the Reconnecting state it checks.
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        ..config_for(&sim)
    };
    let mut client = spawn_client(config, &sim, sink.clone());
    client.connected().await;
    sim.stream_send_raw("x".repeat(64 * 1024));
    let state = client
        .state_until(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await;
    assert!(
        matches!(
            state,
            ConnectionState::Reconnecting {
                last_error: StreamError::FrameTooLarge { limit: 4096 },
                ..
            }
        ),
        "{state:?}"
    );
    until("a second connection", || {
        sim.stream_stats().connections == 2
    })
    .await;
    sim.add_user(SimUser::new("after-big", "大帧后", vec![1]))
        .unwrap();
    until("the event stored", || sink.stored().len() == 1).await;
    assert_eq!(client.stats.snapshot().frames_refused, 1);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_left_unacknowledged_go_to_the_next_connection() {
    let sim = sim().await;
    // A client that reads one event and goes away without a reply.
    let (mut ws, _) = tokio_tungstenite::connect_async(open_ticket(&sim).await.as_str())
        .await
        .unwrap();
    sim.add_user(SimUser::new("held", "挂起", vec![1])).unwrap();
    let first = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    let event_id = frame["headers"]["eventId"].as_str().unwrap().to_owned();
    drop(ws);
    until("the first connection closed", || {
        sim.stream_stats().open_connections == 0
    })
    .await;

    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    until("the redelivery stored", || sink.stored().len() == 1).await;
    assert_eq!(sink.stored()[0].event_id, event_id);
    until("the ack", || sim.stream_stats().acks == 1).await;
    assert_eq!(sim.stream_stats().redeliveries, 1);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_drives_stream_mode_over_http() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}/_sim/stream/{path}"))
            .json(&body)
            .send()
    };
    let refused = post("duplicate", json!({})).await.unwrap();
    assert_eq!(refused.status(), 400, "nothing acknowledged to duplicate");
    post("tickets/expire", json!({"count": 1}))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let sink = Arc::new(Recorder::default());
    let mut client = spawn_client(config_for(&sim), &sim, sink.clone());
    client.connected().await;
    post("ping", json!({}))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    http.post(format!("{base}/_sim/users"))
        .json(&json!({"profile": {"userid": "ctl-u1", "name": "控制", "dept_id_list": [1]}}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    until("the event stored", || sink.stored().len() == 1).await;
    until("the ack", || sim.stream_stats().acks == 1).await;
    let duplicate: serde_json::Value = post("duplicate", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(duplicate["event_id"], sink.stored()[0].event_id.as_str());
    until("the duplicate stored", || sink.stored().len() == 2).await;
    until("the ping answered", || {
        sim.stream_stats().pings_answered == 1
    })
    .await;

    let stats: syncerd::simulator::SimStreamStats = http
        .get(format!("{base}/_sim/stream/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.tickets_refused, 1, "{stats:?}");
    assert_eq!(stats.events_created, 1, "{stats:?}");
    assert_eq!(stats.duplicates_sent, 1, "{stats:?}");
    client.stop().await;
}
