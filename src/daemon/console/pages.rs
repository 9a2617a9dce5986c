//! The console's HTML, rendered on the server with maud (every value is escaped). The pages
//! carry no script; styles come from the embedded `/assets/console.css`. Test ids
//! (`data-testid`) name what the browser tests and operators' own scripts look for.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::chart;
use super::session::Flash;
use crate::db::changes::{ChangeRow, is_secret_column};
use crate::db::{RunRow, RunStatus};
use crate::pipeline::RunReport;

/// Planned changes shown of a dry run; the CLI prints them all.
pub(crate) const DRY_RUN_CHANGES_SHOWN: usize = 500;

/// One syncer as the Syncers page shows it.
#[derive(Debug, Clone)]
pub(crate) struct SyncerLine {
    pub name: String,
    pub organization: String,
    pub enabled: bool,
    pub invalid_reason: Option<String>,
    pub interval_seconds: u64,
    pub stream: Option<String>,
    pub running: bool,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<RunRow>,
    /// The last line of the row's `error_text` (what Casdoor's UI shows).
    pub last_error: Option<String>,
}

/// A run's page: the run, one page of its change log, and whether it may be approved.
pub(crate) struct RunPage<'a> {
    pub run: &'a RunRow,
    pub changes: &'a [ChangeRow],
    pub page: u64,
    pub per_page: u64,
    pub total_changes: u64,
    pub approvable: bool,
}

/// The console path of syncer `name`, its name percent-encoded (every byte but letters, digits
/// and `-._~`), so a name with spaces, slashes, `?` or Chinese characters stays one segment and
/// a valid `Location` header.
pub(crate) fn syncer_path(name: &str) -> String {
    let mut path = String::from("/syncers/");
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

pub(crate) fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A run's duration: milliseconds under a second, else seconds with one decimal.
fn seconds(ms: u128) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn status_class(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "status ok",
        RunStatus::Running => "status running",
        RunStatus::Partial | RunStatus::Held | RunStatus::Interrupted => "status warn",
        RunStatus::Failed => "status bad",
    }
}

/// The frame of every page: the title bar (with sign-out when signed in) and the flash.
pub(crate) fn layout(title: &str, signed_in: bool, flash: Option<&Flash>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · syncerd" }
                link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header {
                    a.brand href="/" { "syncerd" }
                    span.sub { "DingTalk → Casdoor" }
                    @if signed_in {
                        form.signout method="post" action="/logout" {
                            button type="submit" data-testid="sign-out" { "Sign out" }
                        }
                    }
                }
                main {
                    @if let Some(flash) = flash {
                        p.flash.ok[flash.ok].bad[!flash.ok] data-testid="flash" { (flash.text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// `/` while `http.admin_token` is unset: how to turn the console on, and nothing else.
pub(crate) fn setup() -> Markup {
    layout(
        "Console off",
        false,
        None,
        html! {
            h1 { "The console is off" }
            p {
                "Set an admin token to turn it on: at least 16 random bytes in "
                code { "http.admin_token_file" } " (or " code { "SYNCERD_HTTP__ADMIN_TOKEN_FILE" }
                ", or " code { "http.admin_token" } "), for example:"
            }
            pre { "openssl rand -hex 32 > /etc/syncerd/admin-token\nchmod 600 /etc/syncerd/admin-token" }
            p { "Then reload the daemon (" code { "systemctl reload syncerd" } " or SIGHUP) and sign in here with the token." }
        },
    )
}

pub(crate) fn login(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        false,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error {
                p.flash.bad data-testid="login-error" { (error) }
            }
            form.login method="post" action="/login" {
                label for="token" { "Admin token (" code { "http.admin_token" } ")" }
                input #token type="password" name="token" autocomplete="current-password"
                    required autofocus data-testid="login-token";
                button type="submit" data-testid="login-submit" { "Sign in" }
            }
        },
    )
}

/// A page that only says something (not found, refused, unavailable).
pub(crate) fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        true,
        None,
        html! {
            h1 { (title) }
            p data-testid="message" { (text) }
            p { a href="/" { "Back to the syncers" } }
        },
    )
}

fn action(path: &str, label: &str, testid: &str, hidden: Option<(&str, &str)>) -> Markup {
    html! {
        form.inline method="post" action=(path) {
            @if let Some((name, value)) = hidden {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" data-testid=(testid) { (label) }
        }
    }
}

fn last_run_cell(line: &SyncerLine) -> Markup {
    html! {
        @if let Some(run) = &line.last_run {
            a href=(format!("/runs/{}", run.id)) data-testid=(format!("last-run-{}", line.name)) {
                span class=(status_class(run.status)) { (run.status) }
            }
            br;
            small { (run.trigger) " · " (when(run.started_at)) }
        } @else {
            span.muted { "no run yet" }
        }
        @if line.running { " " span.status.running { "running" } }
    }
}

pub(crate) fn syncers(
    lines: &[SyncerLine],
    problem: Option<&str>,
    flash: Option<&Flash>,
) -> Markup {
    layout(
        "Syncers",
        true,
        flash,
        html! {
            h1 { "Syncers" }
            @if let Some(problem) = problem {
                p.flash.bad data-testid="db-problem" { (problem) }
            }
            @if lines.is_empty() {
                p.muted data-testid="no-syncers" {
                    "No DingTalk syncer of owner admin in the syncer table. Add one with "
                    code { "syncerd syncer add" } " or in Casdoor's Syncers tab."
                }
            } @else {
                table.syncers {
                    (syncer_head())
                    tbody {
                        @for line in lines { (syncer_row(line)) }
                    }
                }
            }
        },
    )
}

fn syncer_head() -> Markup {
    html! {
        thead { tr {
            th { "Name" } th { "Organization" } th { "Enabled" } th { "Interval" }
            th { "Stream" } th { "Last run" } th { "Next run" } th { "Last error" }
            th { "Actions" }
        } }
    }
}

fn syncer_row(line: &SyncerLine) -> Markup {
    let name = &line.name;
    html! {
        tr data-testid=(format!("syncer-row-{name}")) {
            td { a href=(syncer_path(name)) data-testid=(format!("syncer-link-{name}")) { (name) } }
            td { (line.organization) }
            td {
                span data-testid=(format!("enabled-{name}")) {
                    @if line.enabled { "on" } @else { "off" }
                }
                " "
                @let (label, value) = if line.enabled { ("Disable", "false") } else { ("Enable", "true") };
                (action(&format!("{}/enabled", syncer_path(name)), label, &format!("enabled-toggle-{name}"), Some(("enabled", value))))
            }
            td { (line.interval_seconds) " s" }
            td data-testid=(format!("stream-{name}")) {
                (line.stream.as_deref().unwrap_or("—"))
            }
            td data-testid=(format!("last-run-cell-{name}")) { (last_run_cell(line)) }
            td { (line.next_run.map(when).unwrap_or_else(|| "—".into())) }
            td.error {
                @if let Some(reason) = &line.invalid_reason {
                    span.status.bad { "invalid row" } " " (reason)
                } @else if let Some(error) = &line.last_error {
                    (error)
                } @else {
                    span.muted { "—" }
                }
            }
            td.actions {
                (action(&format!("{}/sync", syncer_path(name)), "Sync now", &format!("sync-now-{name}"), None))
                (action(&format!("{}/test", syncer_path(name)), "Test connection", &format!("test-connection-{name}"), None))
                (action(&format!("{}/dry-run", syncer_path(name)), "Dry run", &format!("dry-run-{name}"), None))
            }
        }
    }
}

fn counts_cells(run: &RunRow) -> Markup {
    let c = &run.counts;
    html! {
        td.num { (c.created) } td.num { (c.updated) } td.num { (c.forbidden + c.deleted) }
        td.num { (run.api_calls) }
    }
}

pub(crate) fn syncer(line: &SyncerLine, runs: &[RunRow], flash: Option<&Flash>) -> Markup {
    let name = &line.name;
    layout(
        name,
        true,
        flash,
        html! {
            p.crumbs { a href="/" { "Syncers" } " / " (name) }
            h1 { "Syncer " (name) }
            table.syncers { (syncer_head()) tbody { (syncer_row(line)) } }
            h2 { "Last " (runs.len()) " runs" }
            @if runs.is_empty() {
                p.muted { "No run recorded yet." }
            } @else {
                (chart::runs_chart(runs))
                table.runs data-testid="runs" {
                    thead { tr {
                        th { "Run" } th { "Trigger" } th { "Status" } th { "Started" }
                        th { "Duration" } th { "Created" } th { "Updated" } th { "Removed" }
                        th { "API calls" } th { "Message" }
                    } }
                    tbody {
                        @for run in runs {
                            tr {
                                td { a href=(format!("/runs/{}", run.id)) data-testid=(format!("run-link-{}", run.id)) { "#" (run.id) } }
                                td { (run.trigger) }
                                td { span class=(status_class(run.status)) { (run.status) } }
                                td { (when(run.started_at)) }
                                td.num { (run.duration.map(|d| seconds(d.as_millis())).unwrap_or_else(|| "—".into())) }
                                (counts_cells(run))
                                td.error { (run.error_summary.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn detail_list(details: Option<&Value>, key: &str) -> Vec<String> {
    details
        .and_then(|d| d.get(key))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => {
                        let who = o
                            .get("userid")
                            .and_then(Value::as_str)
                            .map(|u| format!("user {u}: "))
                            .unwrap_or_default();
                        let text = o.get("message").and_then(Value::as_str).unwrap_or("");
                        format!("{who}{text}")
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON value as an operator reads it: text unquoted, nothing as `∅`.
fn value_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "∅".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn change_text(change: &ChangeRow) -> Markup {
    let text = value_text;
    html! {
        @match &change.changes {
            Value::Array(fields) => {
                @for field in fields {
                    @let column = field.get("column").and_then(Value::as_str).unwrap_or("?");
                    div {
                        code { (column) } ": "
                        @if field.get("secret").is_some() {
                            span.muted { "changed (secret, not recorded)" }
                        } @else {
                            del { (text(field.get("old"))) } " → " ins { (text(field.get("new"))) }
                        }
                    }
                }
            }
            Value::Object(o) if o.contains_key("group") => {
                "group " code { (text(o.get("group"))) }
            }
            other => { (other.to_string()) }
        }
    }
}

pub(crate) fn run(page: &RunPage<'_>, flash: Option<&Flash>) -> Markup {
    let run = page.run;
    let c = &run.counts;
    let errors = detail_list(run.details.as_ref(), "errors");
    let notices = detail_list(run.details.as_ref(), "notices");
    let held = run
        .details
        .as_ref()
        .and_then(|d| d.get("held"))
        .and_then(Value::as_str);
    let pages = page.total_changes.div_ceil(page.per_page).max(1);
    layout(
        &format!("Run {}", run.id),
        true,
        flash,
        html! {
            p.crumbs {
                a href="/" { "Syncers" } " / "
                a href=(syncer_path(&run.syncer_name)) { (run.syncer_name) } " / run " (run.id)
            }
            h1 { "Run " (run.id) " " span class=(status_class(run.status)) data-testid="run-status" { (run.status) } }
            dl.facts {
                dt { "Syncer" } dd { (run.syncer_name) " (" (run.organization) ")" }
                dt { "Trigger" } dd { (run.trigger) " · " (run.mode) }
                dt { "Started" } dd { (when(run.started_at)) }
                dt { "Finished" } dd { (run.finished_at.map(when).unwrap_or_else(|| "—".into())) }
                dt { "Duration" } dd { (run.duration.map(|d| seconds(d.as_millis())).unwrap_or_else(|| "—".into())) }
                dt { "DingTalk API calls" } dd data-testid="run-api-calls" { (run.api_calls) }
                dt { "Instance" } dd { (run.instance) }
            }
            table.counts data-testid="run-counts" {
                thead { tr {
                    th { "Fetched" } th { "Created" } th { "Updated" } th { "Unchanged" }
                    th { "Forbidden" } th { "Unforbidden" } th { "Deleted" } th { "Groups created" }
                    th { "Groups updated" } th { "Memberships" } th { "Record errors" }
                } }
                tbody { tr {
                    td.num { (c.fetched) } td.num { (c.created) } td.num { (c.updated) }
                    td.num { (c.unchanged) } td.num { (c.forbidden) } td.num { (c.unforbidden) }
                    td.num { (c.deleted) } td.num { (c.groups_created) } td.num { (c.groups_updated) }
                    td.num { (c.memberships_changed) } td.num { (c.record_errors) }
                } }
            }
            @if let Some(message) = &run.error_summary {
                p.flash.bad data-testid="run-message" { (message) }
            }
            @if let Some(held) = held {
                p.flash.bad { (held) }
            }
            @if page.approvable {
                (action(&format!("/runs/{}/approve", run.id), "Approve removals", &format!("approve-removals-{}", run.id), None))
                p.muted { "Starts a new full run of " (run.syncer_name) " that applies the leaver actions past sync.max_removals / sync.max_removal_percent, once." }
            }
            @if !errors.is_empty() {
                h2 { "Errors" }
                ul.errors data-testid="run-errors" { @for e in &errors { li { (e) } } }
            }
            @if !notices.is_empty() {
                h2 { "Notices" }
                ul { @for n in &notices { li { (n) } } }
            }
            h2 { "Changes (" (page.total_changes) ")" }
            @if page.changes.is_empty() {
                p.muted data-testid="no-changes" { "This run changed no user." }
            } @else {
                table.changes data-testid="changes" {
                    thead { tr { th { "User" } th { "DingTalk userid" } th { "Action" } th { "Fields" } } }
                    tbody {
                        @for change in page.changes {
                            tr data-testid=(format!("change-{}", change.casdoor_name)) {
                                td { (change.casdoor_name) }
                                td { code { (change.userid) } }
                                td { (change.action.as_str()) }
                                td { (change_text(change)) }
                            }
                        }
                    }
                }
                @if pages > 1 {
                    p.pager {
                        @if page.page > 1 { a href=(format!("/runs/{}?page={}", run.id, page.page - 1)) { "← newer" } " " }
                        "page " (page.page) " of " (pages)
                        @if page.page < pages { " " a href=(format!("/runs/{}?page={}", run.id, page.page + 1)) { "more →" } }
                    }
                }
            }
        },
    )
}

pub(crate) fn check(name: &str, text: &str, ok: bool) -> Markup {
    layout(
        &format!("Test connection: {name}"),
        true,
        None,
        html! {
            p.crumbs { a href="/" { "Syncers" } " / " a href=(syncer_path(name)) { (name) } " / test connection" }
            h1 { "Test connection: " (name) " "
                @if ok { span.status.ok data-testid="check-result" { "can sync" } }
                @else { span.status.bad data-testid="check-result" { "cannot sync" } }
            }
            pre data-testid="check-report" { (text) }
        },
    )
}

pub(crate) fn dry_run(name: &str, report: &RunReport) -> Markup {
    let shown = report.changes.len().min(DRY_RUN_CHANGES_SHOWN);
    layout(
        &format!("Dry run: {name}"),
        true,
        None,
        html! {
            p.crumbs { a href="/" { "Syncers" } " / " a href=(syncer_path(name)) { (name) } " / dry run" }
            h1 { "Dry run: " (name) " " span class=(status_class(report.status)) data-testid="dry-run-status" { (report.status) } }
            p { "Fetched, planned and applied inside a transaction that was rolled back: nothing was written." }
            pre data-testid="dry-run-summary" { (report.summary_line().unwrap_or_default()) }
            h2 { "Planned changes (" (report.changes.len()) ")" }
            @if report.changes.is_empty() {
                p.muted data-testid="dry-run-nothing" { "Nothing would change." }
            } @else {
                table.changes data-testid="dry-run-changes" {
                    thead { tr { th { "Object" } th { "Action" } th { "Name" } th { "Fields" } } }
                    tbody {
                        @for change in &report.changes[..shown] {
                            tr {
                                td { (format!("{:?}", change.object).to_lowercase()) }
                                td { (format!("{:?}", change.action).to_lowercase()) }
                                td { (change.name) }
                                td {
                                    @for column in &change.columns {
                                        div {
                                            code { (column.column) } ": "
                                            @if is_secret_column(&column.column) {
                                                span.muted { "changes (secret, not shown)" }
                                            } @else {
                                                @if let Some(old) = &column.old { del { (value_text(Some(old))) } " → " }
                                                ins { (value_text(Some(&column.new))) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if shown < report.changes.len() {
                    p.muted { "and " (report.changes.len() - shown) " more: " code { "syncerd sync " (name) " --dry-run" } " prints them all." }
                }
            }
        },
    )
}

/// The favicon: a small mark, so the browser asks for no `/favicon.ico`.
pub(crate) const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1f6feb\"/>\
<path d=\"M4 8h8M9 5l3 3-3 3\" stroke=\"#fff\" stroke-width=\"2\" fill=\"none\"/></svg>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syncer_path_is_one_ascii_segment_whatever_the_name() {
        assert_eq!(
            syncer_path("acme-dingtalk_1.x~"),
            "/syncers/acme-dingtalk_1.x~"
        );
        assert_eq!(syncer_path("a b/c?d#e"), "/syncers/a%20b%2Fc%3Fd%23e");
        assert_eq!(syncer_path("研发"), "/syncers/%E7%A0%94%E5%8F%91");
    }
}
