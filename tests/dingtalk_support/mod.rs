//! Helpers shared by the DingTalk client and simulator tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use syncerd::dingtalk::{ClientConfig, Credentials, Directory};
use syncerd::secret::Secret;
use syncerd::simulator::{OrgSnapshot, Simulator, SimulatorConfig, SimulatorHandle};

/// Logs to stderr when `TEST_LOG` is set (house rule: quiet tests by default).
pub fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,syncerd=debug".to_owned()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// A client configuration with short delays, for tests that provoke retries.
pub fn fast_config(api_base: &str) -> ClientConfig {
    ClientConfig {
        api_base: api_base.to_owned(),
        qps_per_api: 1_000,
        max_concurrency: 8,
        request_timeout: Duration::from_secs(10),
        max_attempts: 4,
        ip_ban_pause: Duration::from_millis(300),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::default()
    }
}

pub fn creds(app_key: &str, app_secret: &str) -> Credentials {
    Credentials {
        app_key: app_key.to_owned(),
        app_secret: Secret::new(app_secret),
    }
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn start_simulator(config: SimulatorConfig) -> SimulatorHandle {
    Simulator::start(config, any_port()).await.unwrap()
}

pub fn org_config(users: usize, departments: usize) -> SimulatorConfig {
    SimulatorConfig {
        users,
        departments,
        ..SimulatorConfig::default()
    }
}

/// Asserts the fetched directory is exactly the simulator's organization: every department
/// (root first, named by `department/get`), every user once, `seen_in` = the user's departments.
pub fn assert_directory_matches(dir: &Directory, org: &OrgSnapshot) {
    assert!(dir.complete, "{:?}", dir.incomplete_reasons);
    let root = &dir.departments[0];
    let root_name = org
        .departments
        .iter()
        .find(|d| d.dept_id == 1)
        .map(|d| d.name.as_str());
    assert!(root_name.is_some_and(|n| !n.is_empty()));
    assert_eq!(
        (root.dept_id, root.name.as_deref(), root.parent_id),
        (1, root_name, None)
    );
    let fetched: BTreeSet<(i64, Option<String>, Option<i64>)> = dir
        .departments
        .iter()
        .skip(1)
        .map(|d| (d.dept_id, d.name.clone(), d.parent_id))
        .collect();
    let expected: BTreeSet<(i64, Option<String>, Option<i64>)> = org
        .departments
        .iter()
        .filter(|d| d.dept_id != 1)
        .map(|d| (d.dept_id, Some(d.name.clone()), d.parent_id))
        .collect();
    assert_eq!(fetched, expected, "departments differ");
    assert_eq!(dir.departments.len(), org.departments.len());

    assert_eq!(dir.users.len(), org.users.len(), "user count");
    let ids: Vec<&str> = dir
        .users
        .iter()
        .map(|u| u.profile.userid.as_str())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "users sorted by userid, each once");
    let by_id: std::collections::HashMap<&str, &syncerd::dingtalk::DirectoryUser> = dir
        .users
        .iter()
        .map(|u| (u.profile.userid.as_str(), u))
        .collect();
    for sim in &org.users {
        let fetched = by_id
            .get(sim.profile.userid.as_str())
            .unwrap_or_else(|| panic!("user {} missing", sim.profile.userid));
        let mut expected: Vec<i64> = sim.profile.dept_id_list.clone().unwrap_or_default();
        expected.sort();
        assert_eq!(
            fetched.seen_in, expected,
            "seen_in of {}",
            sim.profile.userid
        );
        assert_eq!(fetched.profile.name, sim.profile.name);
        assert_eq!(fetched.profile.email, sim.profile.email);
        assert_eq!(fetched.profile.mobile, sim.profile.mobile);
        assert_eq!(fetched.profile.active, sim.profile.active);
    }
}

/// The directory without its call statistics (which differ between runs with faults).
pub fn content(dir: &Directory) -> Directory {
    Directory {
        stats: Default::default(),
        ..dir.clone()
    }
}

/// A `tracing` writer that keeps every line in memory (and echoes it to stderr with `TEST_LOG`).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

static CAPTURE: OnceLock<Option<Captured>> = OnceLock::new();

/// Installs, once per test binary, a global TRACE subscriber (span events included, `log`
/// records bridged) writing into memory, and returns the buffer. A global subscriber sees every
/// thread; a thread-scoped one can miss events whose callsites other tests registered first.
/// `None` when another global subscriber was installed first.
///
/// httpmock's own events are left out: httpmock plays DingTalk's server, and what a server logs
/// about requests it received is not syncerd's logging (it prints the query string verbatim).
pub fn global_capture() -> Option<Captured> {
    CAPTURE
        .get_or_init(|| {
            let captured = Captured::default();
            tracing_subscriber::fmt()
                .with_writer(captured.clone())
                .with_env_filter(tracing_subscriber::EnvFilter::new("trace,httpmock=off"))
                .with_ansi(false)
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
                .try_init()
                .ok()
                .map(|()| captured)
        })
        .clone()
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
