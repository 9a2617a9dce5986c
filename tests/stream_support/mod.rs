//! Helpers shared by the Stream-mode tests: a recording sink, a running client, condition waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncerd::simulator::{SimulatorConfig, SimulatorHandle};

use crate::dingtalk_support::{init_test_log, start_simulator};
use syncerd::stream::{
    ConnectionState, EventSink, FrameError, StreamConfig, StreamConnector, StreamError,
    StreamEvent, StreamStats, run_stream,
};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
#[error("the inbox is unavailable")]
pub struct InboxDown;

/// A sink that records what it stored, can fail the next N stores, and can hold stores at a
/// gate until the test lets them through.
#[derive(Default)]
pub struct Recorder {
    pub attempts: Mutex<Vec<String>>,
    pub stored: Mutex<Vec<StreamEvent>>,
    pub others: Mutex<Vec<String>>,
    pub refused: Mutex<Vec<String>>,
    pub failures_left: AtomicU64,
    pub gate: Option<Semaphore>,
}

impl Recorder {
    pub fn gated() -> Self {
        Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        }
    }

    pub fn failing(times: u64) -> Self {
        Self {
            failures_left: AtomicU64::new(times),
            ..Self::default()
        }
    }

    pub fn stored(&self) -> Vec<StreamEvent> {
        self.stored.lock().unwrap().clone()
    }

    pub fn attempts(&self) -> Vec<String> {
        self.attempts.lock().unwrap().clone()
    }
}

impl EventSink for Recorder {
    type Error = InboxDown;

    async fn store(&self, event: &StreamEvent) -> Result<(), InboxDown> {
        self.attempts.lock().unwrap().push(event.event_id.clone());
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(InboxDown);
        }
        self.stored.lock().unwrap().push(event.clone());
        Ok(())
    }

    fn other(&self, event: &StreamEvent) {
        self.others.lock().unwrap().push(event.event_type.clone());
    }

    fn refused(&self, message_id: &str, _error: &FrameError) {
        self.refused.lock().unwrap().push(message_id.to_owned());
    }
}

pub struct Client {
    pub state: watch::Receiver<ConnectionState>,
    pub stats: Arc<StreamStats>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), StreamError>>,
}

impl Client {
    /// Waits until the connection state satisfies `cond`; returns that state.
    pub async fn state_until(
        &mut self,
        cond: impl FnMut(&ConnectionState) -> bool,
    ) -> ConnectionState {
        let state = tokio::time::timeout(DEADLINE, self.state.wait_for(cond))
            .await
            .expect("the connection state never got there")
            .expect("the client dropped its state");
        state.clone()
    }

    pub async fn connected(&mut self) {
        self.state_until(|s| matches!(s, ConnectionState::Connected { .. }))
            .await;
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the client did not stop when cancelled")
            .expect("the client task panicked");
        assert_eq!(result, Ok(()));
        assert_eq!(*self.state.borrow(), ConnectionState::Stopped);
    }
}

pub fn config_for(sim: &SimulatorHandle) -> StreamConfig {
    StreamConfig {
        open_api_base: sim.base_url(),
        connect_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        auth_backoff: Duration::from_secs(3600),
        ..StreamConfig::default()
    }
}

pub fn spawn_client(config: StreamConfig, sim: &SimulatorHandle, sink: Arc<Recorder>) -> Client {
    spawn_client_with(config, sim.credentials(), sink)
}

pub fn spawn_client_with(
    config: StreamConfig,
    creds: syncerd::dingtalk::Credentials,
    sink: Arc<Recorder>,
) -> Client {
    let (state_tx, state) = watch::channel(ConnectionState::Connecting);
    let stats = Arc::new(StreamStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (stats, cancel) = (stats.clone(), cancel.clone());
        async move {
            let connector = StreamConnector::new(&config)?;
            run_stream(&connector, &config, &creds, sink, state_tx, stats, cancel).await
        }
    });
    Client {
        state,
        stats,
        cancel,
        task,
    }
}

/// Waits (under [`DEADLINE`]) until `cond` holds, checking whenever the runtime is free.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("timed out waiting for {what}");
    }
}

pub async fn sim_with(config: SimulatorConfig) -> SimulatorHandle {
    init_test_log();
    start_simulator(SimulatorConfig {
        users: 5,
        departments: 2,
        ..config
    })
    .await
}

pub async fn sim() -> SimulatorHandle {
    sim_with(SimulatorConfig::default()).await
}
