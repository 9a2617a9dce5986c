//! The web console at `/`: the Syncers tab served by the daemon itself.
//!
//! Pages (server-rendered HTML, no script): the syncers with their state and actions, a
//! syncer's run history with a chart, a run with its change log, and the results of Test
//! connection and Dry run. Every action is a POST that needs a live session (see `session.rs`)
//! and an `Origin` naming this host, and goes through the same code as the CLI and the admin
//! API: runs through [`Shared::trigger`] (the launcher, its lease and limits), the toggle
//! through `set_syncer_enabled`, Test connection through [`crate::checkup`]. With no
//! `http.admin_token` the console only says how to turn it on. No page shows an App Secret or
//! a token; assets are compiled into the binary.

mod chart;
mod pages;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;

pub(crate) use session::Console;
use session::{Flash, SignInError, cleared_cookie, same_origin, session_cookie};

use super::scheduler::{Desired, Shared, SyncerState};
use crate::db::{self, Db, RunFilter, RunRow, RunStatus, SyncerRow};
use crate::secret::Secret;
use pages::{RunPage, SyncerLine};

/// Bound of each database look-up a page makes.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of Test connection (a token, a department list, a few users, connections/open).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a dry run: a whole directory walk at DingTalk's rate limit.
const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Runs on a syncer's page and in its chart.
const RUNS_SHOWN: u64 = 50;
/// Change rows per page of a run.
const CHANGES_PER_PAGE: u64 = 200;
/// Largest form body accepted (a token, a flag).
const MAX_FORM_BYTES: usize = 8 * 1024;

const CSS: &str = include_str!("console.css");
/// What a page says while the daemon has no database connection.
const NO_DB: &str = "The database is not connected yet; the daemon keeps trying.";

/// The console's routes, to merge into the daemon's router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/syncers/{name}", get(syncer_page))
        .route("/syncers/{name}/sync", post(sync_now))
        .route("/syncers/{name}/enabled", post(set_enabled))
        .route("/syncers/{name}/test", post(test_connection))
        .route("/syncers/{name}/dry-run", post(dry_run))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/approve", post(approve))
        .route("/assets/console.css", get(css))
        .route("/assets/favicon.svg", get(favicon))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(guard_headers))
}

/// Headers on every console answer: no caching, no framing, nothing loaded from elsewhere, no
/// inline script or style, and `Origin` kept on the console's own form posts.
async fn guard_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// Who is asking: the admin token in force and the caller's session.
struct SignedIn {
    session: String,
}

/// The signed-in caller of a page, or the answer to send: the set-up page without a token, a
/// redirect to the sign-in form without a session.
fn signed_in(shared: &Shared, headers: &HeaderMap) -> Result<SignedIn, Box<Response>> {
    let Some(token) = shared.admin_token().filter(|t| !t.is_empty()) else {
        return Err(Box::new(html(StatusCode::NOT_FOUND, pages::setup())));
    };
    match shared.console().session(&token, headers) {
        Some(session) => Ok(SignedIn { session }),
        None => Err(Box::new(Redirect::to("/").into_response())),
    }
}

/// [`signed_in`] for an action: the POST must also come from a console page.
fn may_act(shared: &Shared, headers: &HeaderMap) -> Result<SignedIn, Box<Response>> {
    if !same_origin(headers) {
        return Err(Box::new(refused_origin()));
    }
    signed_in(shared, headers)
}

fn refused_origin() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            "Refused",
            "This action must be sent from the console's own page (its Origin header did not \
             name this host).",
        ),
    )
}

/// Tells the session how the action went and sends the browser to `to`.
fn done(shared: &Shared, who: &SignedIn, ok: bool, text: String, to: &str) -> Response {
    shared.console().set_flash(&who.session, Flash { ok, text });
    Redirect::to(to).into_response()
}

async fn lookup<T, E: std::fmt::Display>(
    what: &str,
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::warn!("console: reading {what} failed: {e}");
            Err(format!("reading {what} failed; the syncerd log says why"))
        }
        Err(_) => Err(format!(
            "reading {what} took longer than {} s; is the database overloaded?",
            LOOKUP_TIMEOUT.as_secs()
        )),
    }
}

fn unavailable(text: &str) -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message("Unavailable", text),
    )
}

fn no_db() -> Response {
    unavailable(NO_DB)
}

fn not_found(text: &str) -> Response {
    html(StatusCode::NOT_FOUND, pages::message("Not found", text))
}

async fn index(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(token) = shared.admin_token().filter(|t| !t.is_empty()) else {
        return html(StatusCode::OK, pages::setup());
    };
    let Some(session) = shared.console().session(&token, &headers) else {
        return html(StatusCode::OK, pages::login(None));
    };
    let flash = shared.console().take_flash(&session);
    let (lines, problem) = syncer_lines(&shared).await;
    html(
        StatusCode::OK,
        pages::syncers(&lines, problem.as_deref(), flash.as_ref()),
    )
}

/// Every syncer of the scheduler's snapshot with its row's last error and its last run; the
/// problem to show when the database could not be read.
async fn syncer_lines(shared: &Shared) -> (Vec<SyncerLine>, Option<String>) {
    let snapshot = shared.snapshot().await;
    let Some(db) = snapshot.db.clone() else {
        return (
            snapshot
                .syncers
                .into_iter()
                .map(|s| line(s, None, None))
                .collect(),
            Some(NO_DB.into()),
        );
    };
    let mut problem = None;
    let rows = match lookup("the syncer table", db::list_syncers(&db)).await {
        Ok(rows) => rows,
        Err(e) => {
            problem = Some(e);
            Vec::new()
        }
    };
    let mut lines = Vec::with_capacity(snapshot.syncers.len());
    for state in snapshot.syncers {
        let row = rows.iter().find(|r| r.name == state.name);
        let last = last_runs(&db, &state.name, 1)
            .await
            .ok()
            .and_then(|mut r| r.pop());
        lines.push(line(state, row, last));
    }
    (lines, problem)
}

async fn last_runs(db: &Db, name: &str, limit: u64) -> Result<Vec<RunRow>, String> {
    let filter = RunFilter {
        syncer: Some(name.to_owned()),
        limit,
        ..RunFilter::default()
    };
    lookup("the run history", db::list_runs(db, &filter)).await
}

/// The last line of `error_text`, cut to a readable length.
fn last_error(error_text: &str) -> Option<String> {
    let line = error_text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut text: String = line.chars().take(300).collect();
    if text.len() < line.len() {
        text.push('…');
    }
    Some(text)
}

fn line(state: SyncerState, row: Option<&SyncerRow>, last_run: Option<RunRow>) -> SyncerLine {
    let invalid_reason = match state.desired {
        Desired::Invalid(reason) => Some(reason),
        _ => None,
    };
    SyncerLine {
        name: state.name,
        organization: state.organization,
        enabled: state.enabled,
        invalid_reason,
        interval_seconds: state.interval.as_secs(),
        stream: state.stream,
        running: state.running,
        next_run: state.next_run,
        last_run,
        last_error: row.and_then(|r| last_error(&r.error_text)),
    }
}

/// The line of syncer `name`, when it is one of the daemon's.
async fn find_line(shared: &Shared, name: &str) -> Option<SyncerLine> {
    let (lines, _) = syncer_lines(shared).await;
    lines.into_iter().find(|l| l.name == name)
}

fn no_syncer(name: &str) -> Response {
    not_found(&format!(
        "This daemon runs no syncer named `{name}` (owner admin, a DingTalk type)."
    ))
}

async fn syncer_page(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match signed_in(&shared, &headers) {
        Ok(who) => who,
        Err(answer) => return *answer,
    };
    let Some(line) = find_line(&shared, &name).await else {
        return no_syncer(&name);
    };
    let Some(db) = shared.db().cloned() else {
        return no_db();
    };
    let runs = match last_runs(&db, &name, RUNS_SHOWN).await {
        Ok(runs) => runs,
        Err(e) => return unavailable(&e),
    };
    let flash = shared.console().take_flash(&who.session);
    html(StatusCode::OK, pages::syncer(&line, &runs, flash.as_ref()))
}

/// Run `id` from the history, or the answer to send.
async fn find_run(shared: &Shared, id: i64) -> Result<(Db, RunRow), Box<Response>> {
    let Some(db) = shared.db().cloned() else {
        return Err(Box::new(no_db()));
    };
    match lookup("the run history", db::get_run(&db, id)).await {
        Ok(Some(run)) => Ok((db, run)),
        Ok(None) => Err(Box::new(not_found(&format!(
            "No run {id} in the run history."
        )))),
        Err(e) => Err(Box::new(unavailable(&e))),
    }
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    page: Option<u64>,
}

async fn run_page(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let who = match signed_in(&shared, &headers) {
        Ok(who) => who,
        Err(answer) => return *answer,
    };
    let (db, run) = match find_run(&shared, id).await {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let page = query.page.unwrap_or(1).clamp(1, 100_000);
    let offset = (page - 1) * CHANGES_PER_PAGE;
    let changes = db::changes::run_changes_page(&db, id, offset, CHANGES_PER_PAGE);
    let (changes, total_changes) = match lookup("the change log", changes).await {
        Ok(found) => found,
        Err(e) => return unavailable(&e),
    };
    let approvable = approvable(&shared, &db, &run).await;
    let flash = shared.console().take_flash(&who.session);
    let view = RunPage {
        run: &run,
        changes: &changes,
        page,
        per_page: CHANGES_PER_PAGE,
        total_changes,
        approvable,
    };
    html(StatusCode::OK, pages::run(&view, flash.as_ref()))
}

/// A held run may be approved while it is its syncer's newest run and the syncer is ours.
async fn approvable(shared: &Shared, db: &Db, run: &RunRow) -> bool {
    if run.status != RunStatus::Held {
        return false;
    }
    let ours = shared.snapshot().await.syncer(&run.syncer_name).is_some();
    let newest = last_runs(db, &run.syncer_name, 1)
        .await
        .ok()
        .and_then(|mut r| r.pop())
        .is_some_and(|r| r.id == run.id);
    ours && newest
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return refused_origin();
    }
    let Some(token) = shared.admin_token().filter(|t| !t.is_empty()) else {
        return html(StatusCode::NOT_FOUND, pages::setup());
    };
    let given = form.map(|Form(f)| f.token).unwrap_or_default();
    match shared.console().sign_in(&token, given.trim()) {
        Ok(id) => {
            let mut response = Redirect::to("/").into_response();
            if let Some(cookie) = session_cookie(&id, shared.console().lifetime()) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            tracing::info!("console: signed in");
            response
        }
        Err(SignInError::WrongToken) => {
            tracing::warn!("console: sign-in refused: wrong admin token");
            html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("That is not the admin token.")),
            )
        }
        Err(SignInError::TooManyAttempts) => html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(
                "Too many wrong tokens in the last minute; wait a minute and try again.",
            )),
        ),
        Err(SignInError::NoRandomness) => {
            unavailable("The operating system gave no random bytes for a session; try again.")
        }
    }
}

async fn logout(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return refused_origin();
    }
    if let Some(token) = shared.admin_token()
        && let Some(session) = shared.console().session(&token, &headers)
    {
        shared.console().sign_out(&session);
    }
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cleared_cookie());
    response
}

async fn sync_now(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match may_act(&shared, &headers) {
        Ok(who) => who,
        Err(answer) => return *answer,
    };
    let to = pages::syncer_path(&name);
    let Some(line) = find_line(&shared, &name).await else {
        return no_syncer(&name);
    };
    match shared.trigger(&name, db::RunTrigger::Manual).await {
        Ok(()) => {
            let once = if line.enabled {
                ""
            } else {
                " (the syncer is disabled: this is a single run)"
            };
            done(
                &shared,
                &who,
                true,
                format!("Run of {name} started{once}."),
                &to,
            )
        }
        Err(e) => done(&shared, &who, false, format!("Not started: {e}."), &to),
    }
}

#[derive(Deserialize)]
struct EnabledForm {
    enabled: bool,
}

async fn set_enabled(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    form: Result<Form<EnabledForm>, FormRejection>,
) -> Response {
    let who = match may_act(&shared, &headers) {
        Ok(who) => who,
        Err(answer) => return *answer,
    };
    let Ok(Form(EnabledForm { enabled })) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message(
                "Bad request",
                "The form needs enabled=true or enabled=false.",
            ),
        );
    };
    if find_line(&shared, &name).await.is_none() {
        return no_syncer(&name);
    }
    let Some(db) = shared.db().cloned() else {
        return no_db();
    };
    if let Err(e) = lookup(
        "the syncer table",
        db::set_syncer_enabled(&db, &name, enabled),
    )
    .await
    {
        return done(&shared, &who, false, e, "/");
    }
    // The daemon follows the table: schedule or unschedule now rather than at the next pass.
    shared.reconcile_soon();
    let text = if enabled {
        format!("{name} is enabled: it runs every interval from now on.")
    } else {
        format!("{name} is disabled: no new run starts; a run going on finishes.")
    };
    tracing::info!("console: syncer {name}: is_enabled set to {enabled}");
    done(&shared, &who, true, text, "/")
}

/// The row of syncer `name` when it is one of ours, else the answer to send.
async fn our_row(shared: &Shared, name: &str) -> Result<(Db, SyncerRow), Box<Response>> {
    if find_line(shared, name).await.is_none() {
        return Err(Box::new(no_syncer(name)));
    }
    let Some(db) = shared.db().cloned() else {
        return Err(Box::new(no_db()));
    };
    match lookup("the syncer table", db::get_syncer(&db, name)).await {
        Ok(Some(row)) => Ok((db, row)),
        Ok(None) => Err(Box::new(no_syncer(name))),
        Err(e) => Err(Box::new(unavailable(&e))),
    }
}

/// Removes the App Secret from text shown on a page, should any message have quoted it.
fn scrub(text: &str, secret: &Secret) -> String {
    let secret = secret.expose();
    if secret.len() >= 6 {
        text.replace(secret, "***")
    } else {
        text.to_owned()
    }
}

fn busy() -> Response {
    html(
        StatusCode::TOO_MANY_REQUESTS,
        pages::message(
            "Busy",
            "A Test connection or Dry run is already going on; try again when it has finished.",
        ),
    )
}

async fn test_connection(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = may_act(&shared, &headers) {
        return *answer;
    }
    let (db, row) = match our_row(&shared, &name).await {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let Some(tools) = shared.tools() else {
        return unavailable("Test connection is not available in this process.");
    };
    let Ok(_permit) = shared.console().probe.try_acquire() else {
        return busy();
    };
    match tokio::time::timeout(CHECK_TIMEOUT, tools.check(&db, &row)).await {
        Ok(Ok(check)) => {
            let text = scrub(&check.render(), &row.app_secret);
            html(StatusCode::OK, pages::check(&name, &text, check.can_sync()))
        }
        Ok(Err(e)) => {
            tracing::warn!("console: test connection of {name}: {e}");
            unavailable("Reading the organization table failed; the syncerd log says why.")
        }
        Err(_) => unavailable(&format!(
            "Test connection took longer than {} s and was stopped.",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

async fn dry_run(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = may_act(&shared, &headers) {
        return *answer;
    }
    let (db, row) = match our_row(&shared, &name).await {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let Some(tools) = shared.tools() else {
        return unavailable("Dry run is not available in this process.");
    };
    let valid = match row.validate() {
        Ok(valid) => valid,
        Err(problem) => {
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::message("Invalid syncer row", &problem.to_string()),
            );
        }
    };
    let Ok(_permit) = shared.console().probe.try_acquire() else {
        return busy();
    };
    let cancel = shared.stream_token();
    let run = tools.dry_run(db, &valid, shared.instance.clone(), cancel.clone());
    match tokio::time::timeout(DRY_RUN_TIMEOUT, run).await {
        Ok(mut report) => {
            report.scrub(row.app_secret.expose());
            html(StatusCode::OK, pages::dry_run(&name, &report))
        }
        Err(_) => {
            cancel.cancel();
            unavailable(&format!(
                "The dry run took longer than {} s and was stopped; `syncerd sync {name} \
                 --dry-run` has no time limit.",
                DRY_RUN_TIMEOUT.as_secs()
            ))
        }
    }
}

async fn approve(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    let who = match may_act(&shared, &headers) {
        Ok(who) => who,
        Err(answer) => return *answer,
    };
    let (db, run) = match find_run(&shared, id).await {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let to = format!("/runs/{id}");
    if !approvable(&shared, &db, &run).await {
        return done(
            &shared,
            &who,
            false,
            "Only the newest run of a syncer, when it was held, can be approved.".into(),
            &to,
        );
    }
    let name = run.syncer_name;
    let to = pages::syncer_path(&name);
    match shared.trigger_approved(&name).await {
        Ok(()) => {
            tracing::info!("console: removals of held run {id} approved; syncer {name} runs");
            done(
                &shared,
                &who,
                true,
                format!("Run of {name} started with removals approved."),
                &to,
            )
        }
        Err(e) => done(&shared, &who, false, format!("Not started: {e}."), &to),
    }
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], pages::FAVICON).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_is_the_last_line_cut_to_length() {
        assert_eq!(
            last_error("[t1] first\n[t2] second\n\n").as_deref(),
            Some("[t2] second")
        );
        let cut = last_error(&"x".repeat(400)).unwrap();
        assert_eq!(cut.chars().count(), 301);
        assert_eq!(last_error(""), None);
    }

    #[test]
    fn a_short_secret_is_not_used_to_scrub() {
        let secret = Secret::new("app-secret-value");
        assert_eq!(scrub("x app-secret-value y", &secret), "x *** y");
        assert_eq!(scrub("a b", &Secret::new("a")), "a b");
    }
}
