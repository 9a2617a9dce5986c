//! The Stream-mode client: `connections/open` for a ticket, one WebSocket, events to the sink,
//! replies back, keep-alive pings, and reconnection with back-off.
//!
//! Secrets: the App Secret travels only in the `connections/open` body and the ticket only in
//! the WebSocket URL; every error text passes through [`scrub`] (the repository's URL redaction
//! plus the literal values), so neither reaches a log line, an error or [`ConnectionState`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The WebSocket's read buffer: DingTalk's frames are a few hundred bytes.
const WS_READ_BUFFER: usize = 4 * 1024;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::frame::{self, Change, FrameLimits, Incoming, Refused, StreamEvent};
use super::{ConnectionState, EventSink, StreamStats};
use crate::dingtalk::rng::SplitMix64;
use crate::dingtalk::types::Credentials;
use crate::secret::{REDACTED, Secret, redact_text, redact_url};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest error body of `connections/open` that is read.
const MAX_OPEN_ANSWER_BYTES: usize = 64 * 1024;
/// Distinct unknown event types remembered, so each is logged once.
const MAX_OTHER_TYPES_LOGGED: usize = 64;

/// How the Stream client connects, keeps alive and backs off.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// Base of `connections/open` (`https://api.dingtalk.com`; the simulator's URL in tests).
    pub open_api_base: String,
    /// Bound on `connections/open` and on the WebSocket handshake, each.
    pub connect_timeout: Duration,
    /// Bound on sending one reply or closing the socket.
    pub io_timeout: Duration,
    /// Bound on [`EventSink::store`]; a store that takes longer is answered LATER.
    pub store_timeout: Duration,
    /// Send a WebSocket ping after this long without a frame from DingTalk.
    pub idle_ping: Duration,
    /// Reconnect when the pong takes longer than this.
    pub pong_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The least wait after DingTalk refused the credentials (they will not fix themselves).
    pub auth_backoff: Duration,
    /// A connection that stayed up this long resets the back-off.
    pub stable_after: Duration,
    pub max_frame_bytes: usize,
    pub max_ids_per_event: usize,
    /// Sent as `ua` in `connections/open`.
    pub ua: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            open_api_base: "https://api.dingtalk.com".to_owned(),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            store_timeout: Duration::from_secs(10),
            idle_ping: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            auth_backoff: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            max_ids_per_event: frame::DEFAULT_MAX_IDS_PER_EVENT,
            ua: format!("syncerd/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl StreamConfig {
    fn limits(&self) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_ids_per_event: self.max_ids_per_event,
        }
    }

    fn validate(&self) -> Result<(), StreamError> {
        let positive = [
            ("connect_timeout", self.connect_timeout),
            ("io_timeout", self.io_timeout),
            ("store_timeout", self.store_timeout),
            ("idle_ping", self.idle_ping),
            ("pong_timeout", self.pong_timeout),
            ("backoff_min", self.backoff_min),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(StreamError::Config(format!(
                "stream.{name} must be positive"
            )));
        }
        if self.backoff_max < self.backoff_min {
            return Err(StreamError::Config(
                "stream.backoff_max must be at least stream.backoff_min".into(),
            ));
        }
        if self.max_frame_bytes < 1024 || self.max_ids_per_event == 0 {
            return Err(StreamError::Config(
                "stream.max_frame_bytes must be at least 1024 and stream.max_ids_per_event at \
                 least 1"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Why a Stream connection failed or ended. Texts never hold the App Secret or a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error(
        "DingTalk refused the App Key and App Secret for Stream mode (HTTP {status}{detail}); \
         check dingtalk.app_key and dingtalk.app_secret"
    )]
    Unauthorized { status: u16, detail: String },
    #[error("connections/open answered HTTP {status}{detail}")]
    OpenFailed { status: u16, detail: String },
    #[error("connections/open answered without {0}")]
    BadOpenAnswer(&'static str),
    #[error("cannot reach {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{step} did not finish within {limit:?}")]
    Timeout { step: &'static str, limit: Duration },
    #[error("the Stream endpoint `{0}` is not a ws:// or wss:// URL")]
    BadEndpoint(String),
    #[error("WebSocket to {endpoint} failed: {reason}")]
    WebSocket { endpoint: String, reason: String },
    #[error("no pong within {0:?} after a ping; reconnecting")]
    PongTimeout(Duration),
    #[error(
        "DingTalk sent a frame over the {limit}-byte cap (stream.max_frame_bytes); reconnecting"
    )]
    FrameTooLarge { limit: usize },
    #[error("DingTalk closed the connection")]
    Closed,
    #[error("DingTalk asked to reconnect ({reason})")]
    Disconnected { reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("invalid Stream setting: {0}")]
    Config(String),
}

impl StreamError {
    /// The credentials were refused: retrying soon cannot help.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, StreamError::Unauthorized { .. })
    }
}

/// Runs the Stream client until `cancel`: connects, serves events to `sink`, reconnects with
/// back-off. Returns early only for settings that can never work; `state` ends `Stopped`.
pub async fn run_stream<S: EventSink>(
    connector: &StreamConnector,
    config: &StreamConfig,
    creds: &Credentials,
    sink: S,
    state: watch::Sender<ConnectionState>,
    stats: Arc<StreamStats>,
    cancel: CancellationToken,
) -> Result<(), StreamError> {
    let session = Session {
        config,
        creds,
        sink: &sink,
        stats: &stats,
        cancel: &cancel,
        state: &state,
        connector,
        other_types: Mutex::new(BTreeSet::new()),
    };
    let result = run_until_cancelled(&session).await;
    state.send_replace(ConnectionState::Stopped);
    result
}

/// Asks `connections/open` for a ticket and lets it expire unused: whether the app may use
/// Stream mode (for `syncerd check`). Opens no WebSocket.
pub async fn check_open(config: &StreamConfig, creds: &Credentials) -> Result<(), StreamError> {
    /// Nothing arrives without a WebSocket.
    struct NoEvents;
    impl EventSink for NoEvents {
        type Error = std::convert::Infallible;
        async fn store(&self, _event: &StreamEvent) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    config.validate()?;
    let (state, _) = watch::channel(ConnectionState::Connecting);
    let session = Session {
        config,
        creds,
        sink: &NoEvents,
        stats: &StreamStats::default(),
        cancel: &CancellationToken::new(),
        state: &state,
        connector: &StreamConnector::new(config)?,
        other_types: Mutex::new(BTreeSet::new()),
    };
    session.open().await.map(|_| ())
}

/// What every Stream connection of a process can share: the HTTP client of
/// `connections/open` and the TLS configuration of the WebSocket. Each holds the platform's
/// root certificates (a few hundred kilobytes), so a daemon keeping 50 connections builds
/// them once, not 50 times.
pub struct StreamConnector {
    http: reqwest::Client,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl StreamConnector {
    /// The connector for `config`'s `connect_timeout` and `ua`.
    pub fn new(config: &StreamConfig) -> Result<Self, StreamError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.connect_timeout)
            .user_agent(config.ua.clone())
            // The App Secret is in the body: never resend it to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StreamError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(StreamConnector {
            http,
            tls: OnceLock::new(),
        })
    }

    /// rustls with the platform's verifier (as the DingTalk HTTP client), built on first use.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, StreamError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        use rustls_platform_verifier::BuilderVerifierExt;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StreamError::Tls(e.to_string()))?
            .with_platform_verifier()
            .map_err(|e| StreamError::Tls(e.to_string()))?
            .with_no_client_auth();
        Ok(self.tls.get_or_init(|| Arc::new(config)).clone())
    }
}

impl std::fmt::Debug for StreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConnector").finish_non_exhaustive()
    }
}

async fn run_until_cancelled<S: EventSink>(session: &Session<'_, S>) -> Result<(), StreamError> {
    let Session {
        config,
        cancel,
        state,
        ..
    } = *session;
    config.validate()?;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    while !cancel.is_cancelled() {
        state.send_replace(ConnectionState::Connecting);
        let (end, connected_for) = session.connect_and_serve().await;
        let error = match end {
            Ok(()) => break,
            Err(error) => error,
        };
        if connected_for.is_some_and(|up| up >= config.stable_after) {
            backoff.reset();
        }
        let mut retry_in = backoff.next_delay();
        if error.is_unauthorized() {
            retry_in = retry_in.max(config.auth_backoff);
        }
        tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "Stream connection lost; reconnecting");
        state.send_replace(ConnectionState::Reconnecting {
            since: SystemTime::now(),
            last_error: error,
            retry_in,
        });
        tokio::select! {
            () = cancel.cancelled() => break,
            () = sleep(retry_in) => {}
        }
    }
    tracing::info!("Stream client stopped");
    Ok(())
}

/// Everything one connection attempt needs.
struct Session<'a, S> {
    config: &'a StreamConfig,
    creds: &'a Credentials,
    sink: &'a S,
    stats: &'a StreamStats,
    cancel: &'a CancellationToken,
    state: &'a watch::Sender<ConnectionState>,
    connector: &'a StreamConnector,
    other_types: Mutex<BTreeSet<String>>,
}

#[derive(Deserialize)]
struct OpenAnswer {
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    ticket: String,
}

impl<S: EventSink> Session<'_, S> {
    /// One connection: `Ok` when cancelled, else why it ended and how long it was up.
    async fn connect_and_serve(&self) -> (Result<(), StreamError>, Option<Duration>) {
        let mut ws = tokio::select! {
            () = self.cancel.cancelled() => return (Ok(()), None),
            ws = self.connect() => match ws {
                Ok(ws) => ws,
                Err(e) => return (Err(e), None),
            },
        };
        let connected = Instant::now();
        self.stats
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state.send_replace(ConnectionState::Connected {
            since: SystemTime::now(),
        });
        tracing::info!("Stream connected");
        let end = self.serve(&mut ws).await;
        let _ = timeout(self.config.io_timeout, ws.close(None)).await;
        (end, Some(connected.elapsed()))
    }

    /// Removes the App Secret and the ticket from a text, then redacts URL secrets.
    fn scrub(&self, text: &str, ticket: Option<&Secret>) -> String {
        scrub(text, [Some(&self.creds.app_secret), ticket])
    }

    async fn open(&self) -> Result<(String, Secret), StreamError> {
        let base = self.config.open_api_base.trim_end_matches('/');
        let url = format!("{base}/v1.0/gateway/connections/open");
        let body = json!({
            "clientId": self.creds.app_key,
            "clientSecret": self.creds.app_secret.expose(),
            "subscriptions": [{"type": "EVENT", "topic": "*"}],
            "ua": self.config.ua,
        });
        let limit = self.config.connect_timeout;
        let step = "connections/open";
        let request = self
            .connector
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send();
        let mut response = timeout(limit, request)
            .await
            .map_err(|_| StreamError::Timeout { step, limit })?
            .map_err(|e| StreamError::Http {
                url: redact_url(&url),
                reason: self.scrub(&e.to_string(), None),
            })?;
        let status = response.status();
        let mut bytes = Vec::new();
        let read = async {
            while let Some(chunk) = response.chunk().await? {
                let room = MAX_OPEN_ANSWER_BYTES.saturating_sub(bytes.len());
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok::<(), reqwest::Error>(())
        };
        timeout(limit, read)
            .await
            .map_err(|_| StreamError::Timeout { step, limit })?
            .map_err(|e| StreamError::Http {
                url: redact_url(&url),
                reason: self.scrub(&e.to_string(), None),
            })?;
        if !status.is_success() {
            return Err(self.open_refused(status.as_u16(), &bytes));
        }
        let answer: OpenAnswer = serde_json::from_slice(&bytes)
            .map_err(|_| StreamError::BadOpenAnswer("a JSON body"))?;
        if answer.endpoint.trim().is_empty() {
            return Err(StreamError::BadOpenAnswer("an endpoint"));
        }
        if answer.ticket.trim().is_empty() {
            return Err(StreamError::BadOpenAnswer("a ticket"));
        }
        Ok((answer.endpoint, Secret::new(answer.ticket)))
    }

    /// The error for a non-2xx `connections/open`, with DingTalk's `code` and `message`.
    fn open_refused(&self, status: u16, body: &[u8]) -> StreamError {
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let field = |k: &str| parsed.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let (code, message) = (field("code"), field("message"));
        let detail = if code.is_empty() && message.is_empty() {
            String::new()
        } else {
            let text: String = format!("{code}: {message}").chars().take(200).collect();
            format!(", {}", self.scrub(&text, None))
        };
        let code_says_auth = ["auth", "secret", "credential", "clientid"]
            .iter()
            .any(|w| code.to_ascii_lowercase().contains(w));
        if status == 401 || status == 403 || (status == 400 && code_says_auth) {
            StreamError::Unauthorized { status, detail }
        } else {
            StreamError::OpenFailed { status, detail }
        }
    }

    async fn connect(&self) -> Result<WsStream, StreamError> {
        let (endpoint, ticket) = self.open().await?;
        self.stats
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shown = redact_url(&endpoint);
        let mut url = reqwest::Url::parse(&endpoint)
            .map_err(|_| StreamError::BadEndpoint(shown.chars().take(200).collect()))?;
        let connector = match url.scheme() {
            "ws" => Connector::Plain,
            "wss" => Connector::Rustls(self.connector.tls_config()?),
            _ => return Err(StreamError::BadEndpoint(shown.chars().take(200).collect())),
        };
        url.query_pairs_mut().append_pair("ticket", ticket.expose());
        let ws_failed = |reason: String| StreamError::WebSocket {
            endpoint: shown.clone(),
            reason: self.scrub(&reason, Some(&ticket)),
        };
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_failed(e.to_string()))?;
        // A Stream connection idles for hours between small frames, and a daemon holds one per
        // syncer: read in 4 KiB chunks (not tungstenite's 128 KiB) and write each reply at once
        // (it is flushed anyway), so 50 connections do not keep megabytes of buffers.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes));
        tracing::debug!(endpoint = %shown, "opening the Stream WebSocket");
        let limit = self.config.connect_timeout;
        let handshake = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(ws_config),
            true,
            Some(connector),
        );
        match timeout(limit, handshake).await {
            Err(_) => Err(StreamError::Timeout {
                step: "the Stream WebSocket handshake",
                limit,
            }),
            Ok(Err(e)) => Err(ws_failed(e.to_string())),
            Ok(Ok((ws, _response))) => Ok(ws),
        }
    }

    /// Reads frames until cancelled (`Ok`) or the connection ends (`Err`, the reason).
    async fn serve(&self, ws: &mut WsStream) -> Result<(), StreamError> {
        let mut last_heard = Instant::now();
        let mut pong_due: Option<Instant> = None;
        loop {
            let deadline = pong_due.unwrap_or(last_heard + self.config.idle_ping);
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                () = sleep_until(deadline) => {
                    if pong_due.is_some() {
                        return Err(StreamError::PongTimeout(self.config.pong_timeout));
                    }
                    self.send(ws, Message::Ping(Default::default())).await?;
                    StreamStats::bump(&self.stats.keepalive_pings);
                    pong_due = Some(Instant::now() + self.config.pong_timeout);
                }
                message = ws.next() => {
                    last_heard = Instant::now();
                    match message {
                        None => return Err(StreamError::Closed),
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            StreamStats::bump(&self.stats.frames_refused);
                            return Err(StreamError::FrameTooLarge {
                                limit: self.config.max_frame_bytes,
                            });
                        }
                        Some(Err(e)) => {
                            return Err(StreamError::WebSocket {
                                endpoint: "the Stream connection".into(),
                                reason: self.scrub(&e.to_string(), None),
                            });
                        }
                        Some(Ok(Message::Text(text))) => self.on_text(ws, text.as_str()).await?,
                        Some(Ok(Message::Pong(_))) => pong_due = None,
                        Some(Ok(Message::Close(_))) => return Err(StreamError::Closed),
                        Some(Ok(Message::Binary(_))) => {
                            StreamStats::bump(&self.stats.frames_refused);
                            tracing::warn!("refused a binary Stream frame");
                        }
                        Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                    }
                }
            }
        }
    }

    async fn send(&self, ws: &mut WsStream, message: Message) -> Result<(), StreamError> {
        let limit = self.config.io_timeout;
        match timeout(limit, ws.send(message)).await {
            Err(_) => Err(StreamError::Timeout {
                step: "sending a Stream reply",
                limit,
            }),
            Ok(Err(e)) => Err(StreamError::WebSocket {
                endpoint: "the Stream connection".into(),
                reason: self.scrub(&e.to_string(), None),
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn reply(&self, ws: &mut WsStream, text: String) -> Result<(), StreamError> {
        self.send(ws, Message::text(text)).await
    }

    async fn on_text(&self, ws: &mut WsStream, text: &str) -> Result<(), StreamError> {
        let incoming = match frame::parse_frame(text, &self.config.limits()) {
            Ok(incoming) => incoming,
            Err(refused) => return self.on_refused(ws, refused).await,
        };
        match incoming {
            Incoming::Event { message_id, event } => self.on_event(ws, &message_id, event).await,
            Incoming::Ping { message_id, data } => {
                self.reply(ws, frame::ping_reply(&message_id, &data))
                    .await?;
                StreamStats::bump(&self.stats.pings_answered);
                Ok(())
            }
            Incoming::Disconnect { message_id, reason } => {
                self.reply(ws, frame::ack_reply(&message_id)).await?;
                tracing::info!(reason = %reason, "DingTalk asked to reconnect");
                Err(StreamError::Disconnected { reason })
            }
            Incoming::System { message_id, topic } => {
                tracing::debug!(topic = %topic, "acknowledging a SYSTEM frame of another topic");
                self.reply(ws, frame::ack_reply(&message_id)).await
            }
            Incoming::Callback { message_id, topic } => {
                tracing::debug!(topic = %topic, "acknowledging a CALLBACK frame");
                self.reply(ws, frame::ack_reply(&message_id)).await
            }
        }
    }

    /// A refused frame is acknowledged when it has a `messageId`: the same bytes would only be
    /// refused again. The sink hears of refused events (a full sync is the backstop).
    async fn on_refused(&self, ws: &mut WsStream, refused: Refused) -> Result<(), StreamError> {
        StreamStats::bump(&self.stats.frames_refused);
        tracing::warn!(error = %refused.error, "refused a Stream frame");
        let Some(message_id) = refused.message_id else {
            return Ok(());
        };
        if matches!(
            refused.error,
            frame::FrameError::BadEventData { .. } | frame::FrameError::TooManyIds { .. }
        ) {
            self.sink.refused(&message_id, &refused.error);
        }
        self.reply(ws, frame::ack_reply(&message_id)).await
    }

    async fn on_event(
        &self,
        ws: &mut WsStream,
        message_id: &str,
        event: StreamEvent,
    ) -> Result<(), StreamError> {
        StreamStats::bump(&self.stats.events_received);
        if event.change == Change::Other {
            self.log_other_once(&event.event_type);
            self.sink.other(&event);
            self.reply(ws, frame::ack_reply(message_id)).await?;
            StreamStats::bump(&self.stats.events_other);
            StreamStats::bump(&self.stats.events_acked);
            return Ok(());
        }
        let started = Instant::now();
        let stored = timeout(self.config.store_timeout, self.sink.store(&event)).await;
        let failure = match stored {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(self.scrub(&e.to_string(), None)),
            Err(_) => Some(format!(
                "the sink did not finish within {:?} (stream.store_timeout)",
                self.config.store_timeout
            )),
        };
        match failure {
            None => {
                self.reply(ws, frame::ack_reply(message_id)).await?;
                StreamStats::bump(&self.stats.events_acked);
                self.stats.record_ack_latency(started.elapsed());
                tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, "event stored and acknowledged");
            }
            Some(reason) => {
                self.reply(ws, frame::later_reply(message_id)).await?;
                StreamStats::bump(&self.stats.events_later);
                tracing::warn!(event_id = %event.event_id, event_type = %event.event_type, error = %reason, "event not stored; asked DingTalk to deliver it later");
            }
        }
        Ok(())
    }

    fn log_other_once(&self, event_type: &str) {
        let mut seen = self
            .other_types
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.len() < MAX_OTHER_TYPES_LOGGED && seen.insert(event_type.to_owned()) {
            tracing::debug!(event_type = %event_type, "acknowledging events of a type syncerd does not use");
        }
    }
}

/// `text` without the given secret values, then with URL secrets redacted. Every occurrence is
/// replaced, however short the secret (a toy secret mangles words; a leak would be worse).
fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = Option<&'a Secret>>) -> String {
    let mut text = text.to_owned();
    for secret in secrets.into_iter().flatten() {
        if !secret.is_empty() {
            text = text.replace(secret.expose(), REDACTED);
        }
    }
    redact_text(&text)
}

/// Exponential back-off with up to 20 % jitter, capped at `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: SplitMix64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            rng: SplitMix64::from_entropy(),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        let jitter = base.mul_f64(0.2 * self.rng.next_f64());
        (base + jitter).min(self.max)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
