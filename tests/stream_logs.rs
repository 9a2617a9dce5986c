//! Secrecy of the Stream client's logs: with every level captured, neither the App Secret nor a
//! ticket appears while the client is refused, connects, answers LATER, stores and reconnects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dingtalk_support;
mod stream_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dingtalk_support::*;
use stream_support::*;
use syncerd::simulator::{SimUser, SimulatorConfig};
use syncerd::stream::ConnectionState;

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

/// The only test of this binary: the subscriber is the process-wide default, so every thread's
/// log lines are captured (a thread-local one misses callsites other tests registered first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    tracing::subscriber::set_global_default(subscriber).unwrap();

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
