#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The web console in a real browser: Debian's Chromium driven over WebDriver (chromedriver)
//! against the real daemon and the simulated DingTalk. Signs in with a wrong then the right
//! token, reads a syncer's row, presses Sync now, flips the toggle, opens a run with its change
//! log, checks the browser console for errors, signs out, and saves a screenshot
//! (`SYNCERD_CONSOLE_SCREENSHOT=docs/console.png` writes the one the README shows).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). Without them the test says so and passes,
//! unless `SYNCERD_TEST_BROWSER=required`, which CI sets.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::console::{ConsoleSetup, SYNCER, TOKEN, WITHIN};
use common::process::free_port;
use common::runs_of;
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use syncerd::db::{self, RunStatus, RunTrigger};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    _child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

/// Whether the browser suite can run here; panics when CI requires it and it cannot.
fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    let required = std::env::var("SYNCERD_TEST_BROWSER").is_ok_and(|v| v == "required");
    if !present {
        assert!(
            !required,
            "SYNCERD_TEST_BROWSER=required but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: the console's browser test needs {CHROMIUM} and {CHROMEDRIVER} \
             (apt-get install chromium chromium-driver); SYNCERD_TEST_BROWSER=required makes \
             their absence a failure"
        );
    }
    present
}

async fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(&status)
            .await
            .ok()
            .filter(|r| r.status().is_success());
        if ready.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver {
        _child: child,
        url,
        _profile: tempfile::tempdir().unwrap(),
    }
}

/// A headless Chromium session that keeps the browser console's log.
async fn browser(driver: &Driver) -> Client {
    let profile = driver._profile.path().display().to_string();
    let capabilities: Capabilities = serde_json::from_value(json!({
        "browserName": "chrome",
        "goog:loggingPrefs": { "browser": "ALL" },
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1360,900",
                format!("--user-data-dir={profile}"),
            ],
        },
    }))
    .unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap()
}

/// chromedriver's `POST /session/{id}/se/log` (the browser console's entries since the last
/// call), which the WebDriver standard has no command for.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

async fn severe_console_entries(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.unwrap();
    log.as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["level"] == "SEVERE")
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn testid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

async fn find(client: &Client, id: &str) -> Element {
    let css = testid(id);
    tokio::time::timeout(
        Duration::from_secs(20),
        client.wait().for_element(Locator::Css(&css)),
    )
    .await
    .unwrap_or_else(|_| panic!("no element {css}"))
    .unwrap()
}

async fn present(client: &Client, id: &str) -> bool {
    client.find(Locator::Css(&testid(id))).await.is_ok()
}

async fn click(client: &Client, id: &str) {
    find(client, id).await.click().await.unwrap();
}

/// Reloads `path` until `check` holds on the page's text (the console has no script, so a
/// page shows a run's end only when loaded again).
async fn reload_until(
    client: &Client,
    base: &str,
    path: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + WITHIN;
    loop {
        client.goto(&format!("{base}{path}")).await.unwrap();
        let body = client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if check(&body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn screenshot_path() -> PathBuf {
    match std::env::var("SYNCERD_CONSOLE_SCREENSHOT") {
        Ok(path) if !path.is_empty() => Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
        _ => std::env::temp_dir().join("syncerd-console.png"),
    }
}

#[tokio::test]
async fn an_operator_signs_in_syncs_toggles_and_reads_a_run_in_chromium() {
    if !browser_available() {
        return;
    }
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let driver = start_driver().await;
    let client = browser(&driver).await;
    let base = setup.base();
    let outcome = tokio::time::timeout(
        Duration::from_secs(180),
        operator_session(&client, &setup, &base),
    )
    .await;
    let _ = client.close().await;
    outcome.expect("the browser session took more than 3 minutes");
    setup.finish().await;
}

async fn operator_session(client: &Client, setup: &ConsoleSetup, base: &str) {
    // Signed out: the form and nothing else.
    client.goto(&format!("{base}/")).await.unwrap();
    find(client, "login-token").await;
    assert!(!present(client, &format!("syncer-row-{SYNCER}")).await);

    // A wrong token: an error, no session.
    find(client, "login-token")
        .await
        .send_keys("wrong-token-guess")
        .await
        .unwrap();
    click(client, "login-submit").await;
    let error = find(client, "login-error").await.text().await.unwrap();
    assert!(error.contains("not the admin token"), "{error}");
    assert!(!present(client, &format!("syncer-row-{SYNCER}")).await);
    // The refusal is a 401, which the browser logs; it must be the only entry so far.
    let severe = severe_console_entries(client).await;
    assert!(
        severe.len() == 1 && severe[0].contains("/login") && severe[0].contains("401"),
        "{severe:?}"
    );

    // The right one: the syncer's row with its succeeded first run.
    find(client, "login-token")
        .await
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(client, "login-submit").await;
    let row = find(client, &format!("syncer-row-{SYNCER}")).await;
    let row_text = row.text().await.unwrap();
    assert!(row_text.contains("succeeded"), "{row_text}");
    assert!(row_text.contains("acme"), "{row_text}");

    sync_now(client, setup, base).await;
    toggle(client, setup, base).await;
    read_first_run(client, setup, base).await;

    // The screenshot the README shows: a syncer's page with its chart and runs.
    client
        .goto(&format!("{base}/syncers/{SYNCER}"))
        .await
        .unwrap();
    find(client, "runs-chart").await;
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    std::fs::write(screenshot_path(), &png).unwrap();

    let severe = severe_console_entries(client).await;
    assert!(severe.is_empty(), "browser console errors: {severe:?}");

    // Signed out: nothing visible any more, not even by going back to a page's address.
    click(client, "sign-out").await;
    find(client, "login-token").await;
    client
        .goto(&format!("{base}/syncers/{SYNCER}"))
        .await
        .unwrap();
    find(client, "login-token").await;
    assert!(!present(client, &format!("syncer-row-{SYNCER}")).await);
    assert!(!present(client, "runs-chart").await);
}

async fn sync_now(client: &Client, setup: &ConsoleSetup, base: &str) {
    let manual = || async {
        runs_of(&setup.db, SYNCER)
            .await
            .into_iter()
            .filter(|r| r.trigger == RunTrigger::Manual)
            .collect::<Vec<_>>()
    };
    assert!(manual().await.is_empty());
    // A change in DingTalk for the run to bring.
    let user = setup.sim.org().users[0].profile.userid.clone();
    let patch = syncerd::simulator::UserPatch {
        title: Some("Head of Synchronisation".into()),
        ..Default::default()
    };
    setup.sim.update_user(&user, patch).unwrap();
    // Manual runs wait scheduler.min_interval (1 s) after the last start and for the run before
    // to end: press again when told.
    let deadline = Instant::now() + WITHIN;
    loop {
        client.goto(&format!("{base}/")).await.unwrap();
        click(client, &format!("sync-now-{SYNCER}")).await;
        let flash = find(client, "flash").await.text().await.unwrap();
        if flash.contains("Run of ") {
            break;
        }
        // Told to wait: min_interval, or the first run still ending (single flight).
        let wait = flash.contains("retry in") || flash.contains("is already going");
        assert!(wait, "{flash}");
        assert!(Instant::now() < deadline, "Sync now never started a run");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    common::eventually(WITHIN, "the manual run to finish", || async {
        manual()
            .await
            .iter()
            .any(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    let run = manual().await.remove(0);
    assert_eq!(run.counts.updated, 1, "the title change");
    let link = format!("run-link-{}", run.id);
    client
        .goto(&format!("{base}/syncers/{SYNCER}"))
        .await
        .unwrap();
    let text = find(client, &link).await.text().await.unwrap();
    assert_eq!(text, format!("#{}", run.id));
}

async fn toggle(client: &Client, setup: &ConsoleSetup, base: &str) {
    client.goto(&format!("{base}/")).await.unwrap();
    click(client, &format!("enabled-toggle-{SYNCER}")).await;
    let flash = find(client, "flash").await.text().await.unwrap();
    assert!(flash.contains("disabled"), "{flash}");
    let row = db::get_syncer(&setup.db, SYNCER).await.unwrap().unwrap();
    assert!(
        !row.is_enabled,
        "the toggle sets is_enabled in the database"
    );
    // The page after the toggle shows the row as the daemon reads it again from the table.
    reload_until(client, base, "/", "the row to say off", |body| {
        body.contains("Enable")
    })
    .await;
    let state = find(client, &format!("enabled-{SYNCER}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(state, "off");
    // And back on.
    click(client, &format!("enabled-toggle-{SYNCER}")).await;
    find(client, "flash").await;
    let row = db::get_syncer(&setup.db, SYNCER).await.unwrap().unwrap();
    assert!(row.is_enabled);
}

async fn read_first_run(client: &Client, setup: &ConsoleSetup, base: &str) {
    let first = runs_of(&setup.db, SYNCER).await.pop().unwrap();
    let changes = db::changes::run_changes(&setup.db, first.id).await.unwrap();
    assert!(!changes.is_empty());
    client
        .goto(&format!("{base}/syncers/{SYNCER}"))
        .await
        .unwrap();
    click(client, &format!("run-link-{}", first.id)).await;
    let status = find(client, "run-status").await.text().await.unwrap();
    assert_eq!(status, first.status.to_string());
    let api_calls = find(client, "run-api-calls").await.text().await.unwrap();
    assert_eq!(api_calls, first.api_calls.to_string());
    let table = find(client, "changes").await.text().await.unwrap();
    for change in &changes {
        assert!(
            table.contains(&change.casdoor_name),
            "{} missing",
            change.casdoor_name
        );
        let row = find(client, &format!("change-{}", change.casdoor_name)).await;
        let text = row.text().await.unwrap();
        assert!(text.contains(change.action.as_str()), "{text}");
    }
}
