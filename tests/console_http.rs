#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The web console over HTTP, against the real daemon and the simulated DingTalk: sign-in,
//! the session cookie, the `Origin` check of every action, the pages' content (and that none
//! shows a secret), and what each action does to the database. The browser test
//! (`console_browser.rs`) drives the same pages in Chromium.

mod common;

use common::console::{Browser, ConsoleSetup, SYNCER, TOKEN, WITHIN};
use common::pipeline::SECRET;
use common::{eventually, runs_of};
use syncerd::db::{self, RunStatus, RunTrigger};
use syncerd::simulator::UserPatch;

/// The text of a page without its tags, for "does the page say X" checks.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Presses `path` (Sync now, Approve removals) until a run starts: manual runs of a syncer start
/// at most once per scheduler.min_interval (1 s here) after its last start, and not while the
/// previous run is still ending, so the first press may be told to wait; it must never be
/// refused for another reason. Answers the flash.
async fn press_until_started(browser: &Browser, path: &str) -> String {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let answer = browser.post(path, &[]).await;
        assert_eq!(answer.status, 303, "{answer:?}");
        let page = browser.get(answer.location().unwrap()).await;
        if page.body.contains("Run of ") {
            return text(&page.body);
        }
        // The run before may still be ending (its row is written before its lease is given
        // back): single flight says so, and the next press starts one.
        let wait = page.body.contains("retry in") || page.body.contains("is already going");
        assert!(wait, "{}", page.body);
        assert!(std::time::Instant::now() < deadline, "no run started");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn signed_in(setup: &ConsoleSetup) -> Browser {
    let mut browser = Browser::new(&setup.base());
    let answer = browser.sign_in(TOKEN).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    browser
}

#[tokio::test]
async fn without_an_admin_token_the_console_only_says_how_to_turn_it_on() {
    let setup = ConsoleSetup::start(None).await;
    let browser = Browser::new(&setup.base());
    let index = browser.get("/").await;
    assert_eq!(index.status, 200);
    assert!(index.body.contains("The console is off"), "{}", index.body);
    assert!(index.body.contains("http.admin_token"));
    assert!(!index.body.contains(SYNCER), "no syncer is shown");
    assert!(!index.body.contains("login-token"), "no sign-in form");

    for path in [format!("/syncers/{SYNCER}"), "/runs/1".to_owned()] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, 404, "{path}");
        assert!(!page.body.contains(SYNCER), "{path}: {}", page.body);
    }
    let login = browser
        .post("/login", &[("token", "anything-at-all-0123")])
        .await;
    assert_eq!(login.status, 404);
    assert!(login.headers.get("set-cookie").is_none());
    setup.finish().await;
}

#[tokio::test]
async fn signing_in_needs_the_token_and_the_consoles_own_page() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let mut browser = Browser::new(&setup.base());

    let index = browser.get("/").await;
    assert_eq!(index.status, 200);
    assert!(index.body.contains("data-testid=\"login-token\""));
    assert!(!index.body.contains(SYNCER), "signed out: nothing shown");
    // The console's pages load nothing from elsewhere and run no inline script.
    let csp = index.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(index.headers["cache-control"], "no-store");

    let wrong = browser.sign_in("not-the-token-at-all").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("data-testid=\"login-error\""));
    assert!(wrong.headers.get("set-cookie").is_none());
    assert!(browser.cookie.is_none());

    // The right token from another site, or with no Origin, grants nothing.
    for origin in [None, Some("http://evil.example"), Some("null")] {
        let answer = browser
            .post_from(origin, "/login", &[("token", TOKEN)])
            .await;
        assert_eq!(answer.status, 403, "{origin:?}");
        assert!(answer.headers.get("set-cookie").is_none(), "{origin:?}");
    }

    let right = browser.sign_in(TOKEN).await;
    assert_eq!(right.status, 303);
    assert_eq!(right.location(), Some("/"));
    let cookie = right.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let index = browser.get("/").await;
    assert!(
        index
            .body
            .contains(&format!("data-testid=\"syncer-row-{SYNCER}\"")),
        "{}",
        index.body
    );
    assert!(text(&index.body).contains("succeeded"));

    // Signing out ends the session on the server, not only in the browser.
    let old_cookie = browser.cookie.clone();
    let out = browser.post("/logout", &[]).await;
    assert_eq!(out.status, 303);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    browser.cookie = old_cookie;
    let after = browser.get("/").await;
    assert!(after.body.contains("login-token"));
    assert!(!after.body.contains(SYNCER));
    let page = browser.get(&format!("/syncers/{SYNCER}")).await;
    assert_eq!((page.status, page.location()), (303, Some("/")));
    setup.finish().await;
}

#[tokio::test]
async fn no_page_shows_the_app_secret_or_the_token() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    let run = runs_of(&setup.db, SYNCER).await.pop().unwrap();
    let mut pages = Vec::new();
    for path in [
        "/".to_owned(),
        format!("/syncers/{SYNCER}"),
        format!("/runs/{}", run.id),
    ] {
        pages.push(browser.get(&path).await);
    }
    pages.push(browser.post(&format!("/syncers/{SYNCER}/test"), &[]).await);
    pages.push(
        browser
            .post(&format!("/syncers/{SYNCER}/dry-run"), &[])
            .await,
    );
    for page in &pages {
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!page.body.contains(SECRET), "{}", page.body);
        assert!(!page.body.contains(TOKEN), "{}", page.body);
    }
    setup.finish().await;
}

#[tokio::test]
async fn sync_now_starts_one_run_and_a_forged_post_starts_none() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    let path = format!("/syncers/{SYNCER}/sync");

    // Another site's page in the signed-in browser, and a request without the session.
    let forged = browser
        .post_from(Some("http://evil.example"), &path, &[])
        .await;
    assert_eq!(forged.status, 403);
    let anonymous = Browser::new(&setup.base()).post(&path, &[]).await;
    assert_eq!((anonymous.status, anonymous.location()), (303, Some("/")));

    let flash = press_until_started(&browser, &path).await;
    assert!(flash.contains("Run of acme-dingtalk started"), "{flash}");
    eventually(WITHIN, "the manual run to finish", || async {
        runs_of(&setup.db, SYNCER)
            .await
            .iter()
            .any(|r| r.trigger == RunTrigger::Manual && r.status == RunStatus::Succeeded)
    })
    .await;
    let manual = runs_of(&setup.db, SYNCER)
        .await
        .into_iter()
        .filter(|r| r.trigger == RunTrigger::Manual)
        .count();
    assert_eq!(manual, 1);
    let page = browser.get(&format!("/syncers/{SYNCER}")).await;
    for run in runs_of(&setup.db, SYNCER).await {
        assert!(
            page.body
                .contains(&format!("data-testid=\"run-link-{}\"", run.id))
        );
    }
    assert!(page.body.contains("data-testid=\"runs-chart\""));
    setup.finish().await;
}

#[tokio::test]
async fn the_toggle_sets_is_enabled_in_the_database() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    let path = format!("/syncers/{SYNCER}/enabled");

    let forged = browser
        .post_from(Some("http://evil.example"), &path, &[("enabled", "false")])
        .await;
    assert_eq!(forged.status, 403);
    assert!(
        db::get_syncer(&setup.db, SYNCER)
            .await
            .unwrap()
            .unwrap()
            .is_enabled
    );

    let off = browser.post(&path, &[("enabled", "false")]).await;
    assert_eq!(off.status, 303);
    assert!(
        !db::get_syncer(&setup.db, SYNCER)
            .await
            .unwrap()
            .unwrap()
            .is_enabled
    );
    eventually(WITHIN, "the daemon to follow the table", || async {
        let page = browser.get("/").await;
        page.body
            .contains(&format!("data-testid=\"enabled-{SYNCER}\">off<"))
    })
    .await;

    let on = browser.post(&path, &[("enabled", "true")]).await;
    assert_eq!(on.status, 303);
    assert!(
        db::get_syncer(&setup.db, SYNCER)
            .await
            .unwrap()
            .unwrap()
            .is_enabled
    );
    let bad = browser.post(&path, &[("enabled", "maybe")]).await;
    assert_eq!(bad.status, 400);
    setup.finish().await;
}

#[tokio::test]
async fn a_run_page_shows_its_counts_and_change_log() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    let first = runs_of(&setup.db, SYNCER).await.pop().unwrap();
    let changes = db::changes::run_changes(&setup.db, first.id).await.unwrap();
    assert!(!changes.is_empty());

    let page = browser.get(&format!("/runs/{}", first.id)).await;
    assert_eq!(page.status, 200);
    let body = &page.body;
    assert!(
        body.contains(&format!("Changes ({})", changes.len())),
        "{body}"
    );
    for change in &changes {
        assert!(
            body.contains(&format!("data-testid=\"change-{}\"", change.casdoor_name)),
            "{} missing",
            change.casdoor_name
        );
    }
    assert!(text(body).contains(&format!("{}", first.api_calls)));
    assert!(
        !body.contains("approve-removals"),
        "a succeeded run is not approvable"
    );
    let missing = browser.get("/runs/999999").await;
    assert_eq!(missing.status, 404);
    setup.finish().await;
}

#[tokio::test]
async fn a_dry_run_shows_the_change_and_writes_nothing() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    let user = setup.sim.org().users[0].profile.userid.clone();
    setup
        .sim
        .update_user(
            &user,
            UserPatch {
                title: Some("Chief Dry-Run Officer".into()),
                ..UserPatch::default()
            },
        )
        .unwrap();
    let runs_before = runs_of(&setup.db, SYNCER).await.len();

    let page = browser
        .post(&format!("/syncers/{SYNCER}/dry-run"), &[])
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Chief Dry-Run Officer"), "{}", page.body);
    assert!(page.body.contains("Planned changes (1)"), "{}", page.body);
    assert_eq!(
        runs_of(&setup.db, SYNCER).await.len(),
        runs_before,
        "no run recorded"
    );
    let titles = setup
        .test_db
        .query_texts(
            &setup.db,
            "SELECT title FROM user WHERE title = 'Chief Dry-Run Officer'",
        )
        .await;
    assert!(titles.is_empty(), "nothing written: {titles:?}");

    let check = browser.post(&format!("/syncers/{SYNCER}/test"), &[]).await;
    assert_eq!(check.status, 200);
    assert!(check.body.contains("can sync"), "{}", check.body);
    assert!(check.body.contains("access token"));
    setup.finish().await;
}

#[tokio::test]
async fn a_held_run_is_approved_from_its_page() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    // Four leavers of twelve: past both removal limits (10 %, and 3 always allowed).
    let leavers: Vec<String> = setup.sim.org().users[..4]
        .iter()
        .map(|u| u.profile.userid.clone())
        .collect();
    for userid in &leavers {
        setup.sim.remove_user(userid).unwrap();
    }
    press_until_started(&browser, &format!("/syncers/{SYNCER}/sync")).await;
    eventually(WITHIN, "the run to be held", || async {
        runs_of(&setup.db, SYNCER)
            .await
            .first()
            .is_some_and(|r| r.status == RunStatus::Held)
    })
    .await;
    let held = runs_of(&setup.db, SYNCER).await.remove(0);
    let page = browser.get(&format!("/runs/{}", held.id)).await;
    let button = format!("data-testid=\"approve-removals-{}\"", held.id);
    assert!(page.body.contains(&button), "{}", page.body);

    let forged = browser
        .post_from(
            Some("http://evil.example"),
            &format!("/runs/{}/approve", held.id),
            &[],
        )
        .await;
    assert_eq!(forged.status, 403);
    let flash = press_until_started(&browser, &format!("/runs/{}/approve", held.id)).await;
    assert!(flash.contains("removals approved"), "{flash}");
    eventually(WITHIN, "the approved run to apply the leavers", || async {
        runs_of(&setup.db, SYNCER).await.first().is_some_and(|r| {
            r.id > held.id && r.status == RunStatus::Succeeded && r.counts.forbidden == 4
        })
    })
    .await;
    // The held run is no longer the newest: its page offers nothing.
    let page = browser.get(&format!("/runs/{}", held.id)).await;
    assert!(!page.body.contains(&button));
    setup.finish().await;
}

#[tokio::test]
async fn a_syncer_named_in_chinese_with_a_question_mark_has_working_pages_and_actions() {
    let setup = ConsoleSetup::start(Some(TOKEN)).await;
    let browser = signed_in(&setup).await;
    let name = "研发 部 a?b#c";
    db::add_syncer(
        &setup.db,
        db::NewSyncer {
            name: name.into(),
            organization: common::pipeline::ORG.into(),
            app_key: "dingkey".into(),
            app_secret: syncerd::secret::Secret::new(SECRET),
            sync_interval: 3600,
            enabled: false,
        },
    )
    .await
    .unwrap();
    let path = "/syncers/%E7%A0%94%E5%8F%91%20%E9%83%A8%20a%3Fb%23c";
    eventually(WITHIN, "the daemon to list the new syncer", || async {
        browser
            .get("/")
            .await
            .body
            .contains(&format!("href=\"{path}\""))
    })
    .await;
    let page = browser.get(path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(name));
    let on = browser
        .post(&format!("{path}/enabled"), &[("enabled", "true")])
        .await;
    assert_eq!((on.status, on.location()), (303, Some("/")));
    assert!(
        db::get_syncer(&setup.db, name)
            .await
            .unwrap()
            .unwrap()
            .is_enabled
    );
    let flash = press_until_started(&browser, &format!("{path}/sync")).await;
    assert!(flash.contains(&format!("Run of {name} started")), "{flash}");
    setup.finish().await;
}
