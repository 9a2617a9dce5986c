//! DingTalk Stream mode: the transport only. A long-running client ([`run_stream`]) opens a
//! connection with the App Key and App Secret, keeps one WebSocket alive, hands every address-book
//! event to an [`EventSink`] and acknowledges it only once the sink stored it.
//!
//! What the events mean for Casdoor (the inbox, de-duplication on `eventId`, the targeted apply)
//! lives elsewhere; this module never touches the database. The simulator speaks the server side
//! (`simulator::stream`).

pub mod client;
pub mod frame;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub use client::{StreamConfig, StreamConnector, StreamError, check_open, run_stream};
pub use frame::{
    Change, DeptChange, FrameError, FrameLimits, Incoming, StreamEvent, UserChange, parse_frame,
};

/// Where events go before they are acknowledged (the daemon's inbox). An event is acknowledged
/// only after [`EventSink::store`] returned `Ok`; on `Err` DingTalk is asked to deliver it again.
pub trait EventSink: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Stores an address-book event durably. Called for [`Change::Users`] and
    /// [`Change::Departments`]; the same `event_id` may come again (redelivery, duplicates).
    fn store(&self, event: &StreamEvent) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Learns of an event of another type ([`Change::Other`]); it is acknowledged at once.
    fn other(&self, _event: &StreamEvent) {}

    /// Learns of an event that could not be decoded (too many ids, garbled data). It is
    /// acknowledged, since the same bytes would be refused again; a full sync is the backstop.
    fn refused(&self, _message_id: &str, _error: &FrameError) {}
}

impl<T: EventSink> EventSink for Arc<T> {
    type Error = T::Error;

    fn store(&self, event: &StreamEvent) -> impl Future<Output = Result<(), Self::Error>> + Send {
        T::store(self, event)
    }

    fn other(&self, event: &StreamEvent) {
        T::other(self, event);
    }

    fn refused(&self, message_id: &str, error: &FrameError) {
        T::refused(self, message_id, error);
    }
}

/// Where the Stream connection stands, for the daemon's status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    Connecting,
    Connected {
        since: SystemTime,
    },
    /// Waiting `retry_in` before the next attempt because of `last_error`.
    Reconnecting {
        since: SystemTime,
        last_error: StreamError,
        retry_in: Duration,
    },
    Stopped,
}

/// Counters of one client, readable while it runs (`Arc<StreamStats>` shared with the daemon).
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Successful `connections/open` calls (each gives a fresh ticket).
    pub tickets: AtomicU64,
    /// WebSocket connections established.
    pub connections: AtomicU64,
    pub events_received: AtomicU64,
    pub events_acked: AtomicU64,
    /// Events answered LATER because the sink failed or timed out.
    pub events_later: AtomicU64,
    /// Events acknowledged without storing: other types.
    pub events_other: AtomicU64,
    /// Frames refused (too large, garbled, undecodable events).
    pub frames_refused: AtomicU64,
    pub pings_answered: AtomicU64,
    /// WebSocket pings sent after an idle spell.
    pub keepalive_pings: AtomicU64,
    /// Sum and maximum of the time from the start of `store` to the ack sent, in microseconds,
    /// over the stored events (`events_acked - events_other`; refused frames are not timed).
    pub ack_latency_micros_total: AtomicU64,
    pub ack_latency_micros_max: AtomicU64,
}

/// A copy of [`StreamStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStatsSnapshot {
    pub tickets: u64,
    pub connections: u64,
    pub events_received: u64,
    pub events_acked: u64,
    pub events_later: u64,
    pub events_other: u64,
    pub frames_refused: u64,
    pub pings_answered: u64,
    pub keepalive_pings: u64,
    pub ack_latency_micros_total: u64,
    pub ack_latency_micros_max: u64,
}

impl StreamStats {
    pub fn snapshot(&self) -> StreamStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamStatsSnapshot {
            tickets: get(&self.tickets),
            connections: get(&self.connections),
            events_received: get(&self.events_received),
            events_acked: get(&self.events_acked),
            events_later: get(&self.events_later),
            events_other: get(&self.events_other),
            frames_refused: get(&self.frames_refused),
            pings_answered: get(&self.pings_answered),
            keepalive_pings: get(&self.keepalive_pings),
            ack_latency_micros_total: get(&self.ack_latency_micros_total),
            ack_latency_micros_max: get(&self.ack_latency_micros_max),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record_ack_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.ack_latency_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        self.ack_latency_micros_max
            .fetch_max(micros, Ordering::Relaxed);
    }
}
