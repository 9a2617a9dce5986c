//! A DingTalk simulator: an HTTP server speaking the directory API the client uses (same paths,
//! envelopes and error codes) over a generated organization, with the faults DingTalk produces
//! (busy, 502 pages, garbled bodies, throttling, token invalidation, IP ban, department errors).
//!
//! Used by the demo (`syncerd simulate`), the integration tests and benchmarks. The organization
//! is deterministic for a seed, and so is fault injection: each fault kind decides from its own
//! count of the calls that reached it, never from the clock or from other kinds' draws.
//! `*_every` schedules serve a kind at every Nth such call, so a run of at least N calls meets
//! it whatever the timing; `*_rate` draws from a seeded stream of the kind's own (which request
//! meets a fault still depends on arrival order when requests are concurrent, how many do not).
//! A control API changes the organization between runs and reads call counters, in-process
//! through [`SimulatorHandle`] or over HTTP under `/_sim/` (see [`control`]). Stream mode (the
//! event WebSocket) is in [`stream`].

pub mod cli;
pub mod control;
mod leave;
pub mod org;
pub mod server;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cli::{SimulateArgs, run_simulate};
pub use org::{OrgSnapshot, SimDepartment, SimLeaveRecord, SimUser, UserPatch};
pub use server::{SimEndpointStats, SimStats};
pub use stream::SimStreamStats;

use self::org::{Org, OrgShape};
use self::server::Shared;
use crate::dingtalk::types::{Credentials, User};
use crate::secret::Secret;

/// The App Key the simulator accepts by default.
pub const DEFAULT_APP_KEY: &str = "sim-app-key";
/// The App Secret the simulator accepts by default (a made-up value, not a real secret).
pub const DEFAULT_APP_SECRET: &str = "sim-app-secret";

/// What the simulator serves and how badly it behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Users in the generated organization.
    pub users: usize,
    /// Departments below the root (the root, id 1, always exists in addition).
    pub departments: usize,
    /// Levels of departments below the root, at most.
    pub max_depth: usize,
    pub seed: u64,
    pub app_key: String,
    pub app_secret: Secret,
    /// The root department's name (`department/get` of 1).
    pub company_name: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Calls per second per API per App Key before answering 88/90018; `None` = unlimited.
    pub qps: Option<u32>,
    /// Lifetime of an access token (`expires_in`).
    pub token_ttl: Duration,
    /// Share of calls answered -1 "系统繁忙".
    pub busy_rate: f64,
    /// Share of calls answered HTTP 502 with an HTML page.
    pub bad_gateway_rate: f64,
    /// Share of calls answered with truncated JSON.
    pub malformed_rate: f64,
    /// Share of calls answered 88/90018 regardless of the QPS window.
    pub throttle_rate: f64,
    /// Revoke the current token every N authenticated calls (that call answers 88/40014, and so
    /// does the old token until a new `gettoken`).
    pub invalidate_token_every: Option<u64>,
    /// Answer every Nth call that reaches each fault with it (see [`Faults`]).
    pub busy_every: Option<u64>,
    pub bad_gateway_every: Option<u64>,
    pub malformed_every: Option<u64>,
    pub throttle_every: Option<u64>,
    /// Root's `listsub` also shows the family-school directory (id -1).
    pub family_school_department: bool,
    /// How long a Stream-mode ticket stays valid (DingTalk: 90 s).
    pub stream_ticket_ttl: Duration,
    /// An unacknowledged Stream event is delivered again after this long.
    pub stream_redelivery: Duration,
    /// An event answered LATER is delivered again after this long (zero: at once).
    pub stream_later_delay: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            users: 200,
            departments: 20,
            max_depth: 3,
            seed: 1,
            app_key: DEFAULT_APP_KEY.to_owned(),
            app_secret: Secret::new(DEFAULT_APP_SECRET),
            company_name: "模拟科技有限公司".to_owned(),
            latency: Duration::ZERO,
            qps: None,
            token_ttl: Duration::from_secs(7200),
            busy_rate: 0.0,
            bad_gateway_rate: 0.0,
            malformed_rate: 0.0,
            throttle_rate: 0.0,
            invalidate_token_every: None,
            busy_every: None,
            bad_gateway_every: None,
            malformed_every: None,
            throttle_every: None,
            family_school_department: false,
            stream_ticket_ttl: Duration::from_secs(90),
            stream_redelivery: Duration::from_secs(30),
            stream_later_delay: Duration::from_secs(5),
        }
    }
}

impl SimulatorConfig {
    /// The fault settings that can also be changed while the simulator runs.
    pub fn faults(&self) -> Faults {
        Faults {
            latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
            qps: self.qps,
            busy_rate: self.busy_rate,
            bad_gateway_rate: self.bad_gateway_rate,
            malformed_rate: self.malformed_rate,
            throttle_rate: self.throttle_rate,
            invalidate_token_every: self.invalidate_token_every,
            busy_every: self.busy_every,
            bad_gateway_every: self.bad_gateway_every,
            malformed_every: self.malformed_every,
            throttle_every: self.throttle_every,
            leave_records_denied: false,
        }
    }

    fn validate(&self) -> Result<(), SimulatorError> {
        self.faults().validate()?;
        if self.stream_redelivery.is_zero() {
            return Err(SimulatorError::Invalid(
                "stream_redelivery must be positive".into(),
            ));
        }
        if self.token_ttl.is_zero() {
            return Err(SimulatorError::Invalid("token_ttl must be positive".into()));
        }
        if self.app_key.is_empty() || self.app_secret.is_empty() {
            return Err(SimulatorError::Invalid(
                "app_key and app_secret must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// Fault settings that can change while the simulator runs (`PUT /_sim/faults`). Setting them
/// restarts every kind's call count and seeded stream, so the same settings on the same calls
/// serve the same faults.
///
/// The faults are checked in this order, each over the calls the earlier ones let through: IP
/// ban, 502 page, garbled body, (token checks), QPS window, busy, throttled. A kind is served
/// when its `*_every` schedule says so (the Nth, 2Nth, ... call to reach it) or its `*_rate`
/// draw does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub latency_ms: u64,
    pub qps: Option<u32>,
    pub busy_rate: f64,
    pub bad_gateway_rate: f64,
    pub malformed_rate: f64,
    pub throttle_rate: f64,
    pub invalidate_token_every: Option<u64>,
    pub busy_every: Option<u64>,
    pub bad_gateway_every: Option<u64>,
    pub malformed_every: Option<u64>,
    pub throttle_every: Option<u64>,
    /// Answer `empLeaveRecords` with DingTalk's 403 for an app without the
    /// `Contact.Common.Read` scope.
    pub leave_records_denied: bool,
}

impl Faults {
    fn validate(&self) -> Result<(), SimulatorError> {
        for (name, rate) in [
            ("busy_rate", self.busy_rate),
            ("bad_gateway_rate", self.bad_gateway_rate),
            ("malformed_rate", self.malformed_rate),
            ("throttle_rate", self.throttle_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimulatorError::Invalid(format!(
                    "{name} must be between 0 and 1, not {rate}"
                )));
            }
        }
        for (name, every) in [
            ("busy_every", self.busy_every),
            ("bad_gateway_every", self.bad_gateway_every),
            ("malformed_every", self.malformed_every),
            ("throttle_every", self.throttle_every),
        ] {
            if every == Some(0) {
                return Err(SimulatorError::Invalid(format!(
                    "{name} must be at least 1 (leave it unset for none)"
                )));
            }
        }
        if self.qps == Some(0) {
            return Err(SimulatorError::Invalid(
                "qps must be at least 1 (leave it unset for no limit)".into(),
            ));
        }
        Ok(())
    }
}

/// What DingTalk's IP-ban answer looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanStyle {
    /// An HTML "access denied" page.
    #[default]
    Html,
    /// JSON `{"status":1111,"wait":5,...}`.
    Json,
}

/// Why the simulator could not start or a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the simulator's HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("invalid simulator request: {0}")]
    Invalid(String),
    #[error("no user with userid `{0}`")]
    UnknownUser(String),
    #[error("no department with id {0}")]
    UnknownDepartment(i64),
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Generates the organization and serves it on `listen_addr` (port 0 picks a free port).
    pub async fn start(
        config: SimulatorConfig,
        listen_addr: SocketAddr,
    ) -> Result<SimulatorHandle, SimulatorError> {
        config.validate()?;
        let mut org = Org::generate(
            OrgShape {
                users: config.users,
                departments: config.departments,
                max_depth: config.max_depth,
                seed: config.seed,
            },
            &config.company_name,
        );
        org.family_school = config.family_school_department;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared::new(
            org,
            config.faults(),
            config.app_key.clone(),
            config.app_secret.clone(),
            config.token_ttl,
            config.seed,
        ));
        shared.lock().stream.configure(
            [
                config.stream_ticket_ttl,
                config.stream_redelivery,
                config.stream_later_delay,
            ],
            cancel.child_token(),
        );
        let listener = tokio::net::TcpListener::bind(listen_addr)
            .await
            .map_err(|source| SimulatorError::Bind {
                addr: listen_addr,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimulatorError::Bind {
                addr: listen_addr,
                source,
            })?;
        let app = server::router(shared.clone());
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        tracing::info!(%addr, users = config.users, departments = config.departments, "DingTalk simulator started");
        Ok(SimulatorHandle {
            addr,
            app_key: config.app_key,
            shared,
            cancel,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server; [`SimulatorHandle::shutdown`] also waits.
pub struct SimulatorHandle {
    addr: SocketAddr,
    app_key: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for SimulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorHandle")
            .field("addr", &self.addr)
            .field("app_key", &self.app_key)
            .finish_non_exhaustive()
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SimulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, to use as `dingtalk.api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn app_key(&self) -> &str {
        &self.app_key
    }

    /// The App Key and App Secret the simulator accepts.
    pub fn credentials(&self) -> Credentials {
        let state = self.shared.lock();
        Credentials {
            app_key: state.app_key.clone(),
            app_secret: state.app_secret.clone(),
        }
    }

    /// A copy of the organization as it is now.
    pub fn org(&self) -> OrgSnapshot {
        self.shared.lock().org.snapshot()
    }

    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.shared.lock().reset_stats();
    }

    /// Adds a user (an empty userid gets a generated one; no `dept_id_list` means the root).
    pub fn add_user(&self, user: SimUser) -> Result<String, SimulatorError> {
        self.shared.lock().add_user(user)
    }

    pub fn update_user(&self, userid: &str, patch: UserPatch) -> Result<(), SimulatorError> {
        self.shared.lock().update_user(userid, patch)
    }

    /// Removes a user, as when someone leaves the organization (a `user_leave_org` event and a
    /// leave record dated now).
    pub fn remove_user(&self, userid: &str) -> Result<(), SimulatorError> {
        self.shared.lock().remove_user(userid)
    }

    /// Adds a leave record (say, of someone who left long ago), without changing the users.
    pub fn record_leave(&self, record: SimLeaveRecord) {
        self.shared.lock().org.record_leave(record);
    }

    /// Every leave record, oldest first.
    pub fn leave_records(&self) -> Vec<SimLeaveRecord> {
        self.shared.lock().org.leave_records()
    }

    /// Adds a department under `parent_id`; returns its id.
    pub fn add_department(&self, name: &str, parent_id: i64) -> Result<i64, SimulatorError> {
        self.shared.lock().add_department(name, parent_id)
    }

    pub fn rename_department(&self, dept_id: i64, name: &str) -> Result<(), SimulatorError> {
        self.shared.lock().rename_department(dept_id, name)
    }

    pub fn move_department(&self, dept_id: i64, new_parent: i64) -> Result<(), SimulatorError> {
        self.shared.lock().move_department(dept_id, new_parent)
    }

    /// Removes a department without sub-departments; its members lose that membership.
    pub fn remove_department(&self, dept_id: i64) -> Result<(), SimulatorError> {
        self.shared.lock().remove_department(dept_id)
    }

    /// Makes every call about `dept_id` answer `code` (e.g. 60003 or 50004); `None` heals it.
    pub fn set_department_error(&self, dept_id: i64, code: Option<i64>) {
        let mut state = self.shared.lock();
        match code {
            Some(code) => state.dept_errors.insert(dept_id, code),
            None => state.dept_errors.remove(&dept_id),
        };
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), SimulatorError> {
        faults.validate()?;
        self.shared.lock().set_faults(faults);
        Ok(())
    }

    /// Answers every call with the IP-ban signature for `duration`.
    pub fn ban_ip_for(&self, duration: Duration, style: BanStyle) {
        self.shared.lock().ban = Some((tokio::time::Instant::now() + duration, style));
    }

    /// Answers the next `calls` calls with the IP-ban signature, however long they take to come
    /// (deterministic, unlike [`SimulatorHandle::ban_ip_for`]).
    pub fn ban_ip_next_calls(&self, calls: u64, style: BanStyle) {
        self.shared.lock().ban_calls = Some((calls, style));
    }

    /// Revokes the current access token now (it answers 88/40014 until a new `gettoken`).
    pub fn invalidate_token(&self) {
        self.shared.lock().invalidate_token();
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<(), SimulatorError> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result.map_err(SimulatorError::Serve),
                Err(join) => Err(SimulatorError::Serve(std::io::Error::other(
                    join.to_string(),
                ))),
            },
            None => Ok(()),
        }
    }
}

impl SimUser {
    /// A user with the given id, name and departments and nothing else set.
    pub fn new(userid: &str, name: &str, dept_id_list: Vec<i64>) -> Self {
        SimUser {
            profile: User {
                userid: userid.to_owned(),
                name: Some(name.to_owned()),
                dept_id_list: Some(dept_id_list),
                active: Some(true),
                ..Default::default()
            },
            leader_in: Default::default(),
        }
    }
}
