//! What one run did, for people (`render_text`), programs (`Serialize`, `--format json`) and the
//! run history (`details`; the counters are [`RunCounts`]).
//!
//! A report never holds the App Secret: every message is operator-facing text that was redacted
//! where it was made, and [`RunReport::scrub`] removes the syncer's secret once more before the
//! report leaves the pipeline.

use std::fmt::Write as _;

use serde::Serialize;

use crate::db::{RunCounts, RunMode, RunStatus, RunTrigger};
use crate::secret::REDACTED;

use super::columns::FieldRef;
use super::map::RecordError;
use super::model::{Conflict, FieldChange, Plan};

/// At most this many errors are kept in a report (and in the run history).
pub const MAX_REPORTED_ERRORS: usize = 100;
/// `render_text` lists at most this many errors.
const MAX_RENDERED_ERRORS: usize = 20;
/// `render_text` lists at most this many planned changes.
const MAX_RENDERED_CHANGES: usize = 200;

/// Where a run is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Fetching,
    Loading,
    Planning,
    Applying,
    Done,
}

/// Progress of one run. A "row" is one unit of apply: a user or group row with its memberships
/// and ownership link (a link-only or membership-only change counts as one too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub rows_written: u64,
    pub rows_total: u64,
}

impl Progress {
    pub fn at(phase: Phase) -> Self {
        Self {
            phase,
            rows_written: 0,
            rows_total: 0,
        }
    }
}

/// What kind of thing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Part of the DingTalk directory could not be read (the directory is incomplete).
    Department,
    /// A DingTalk record could not be mapped.
    Record,
    /// The plan left something alone; the operator decides.
    Conflict,
    /// The database rejected a row.
    Row,
}

/// One error of a run, naming the DingTalk userid or department it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportError {
    pub kind: ErrorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<i64>,
    pub message: String,
}

impl ReportError {
    pub fn from_record(error: &RecordError) -> Self {
        Self {
            kind: ErrorKind::Record,
            userid: error.userid().map(str::to_owned),
            department: None,
            message: error.to_string(),
        }
    }

    pub fn from_conflict(conflict: &Conflict) -> Self {
        let (userid, department) = match conflict {
            Conflict::NameTaken { userid, .. }
            | Conflict::SameNameInDirectory { userid, .. }
            | Conflict::AmbiguousKey { userid, .. }
            | Conflict::DuplicateKeyInDirectory { userid, .. }
            | Conflict::NotOwned { userid, .. }
            | Conflict::OwnedByAnotherSyncer { userid, .. }
            | Conflict::OwnedForAnotherUserid { userid, .. }
            | Conflict::UserClaimedTwice { userid, .. }
            | Conflict::GroupsNotAList { userid, .. }
            | Conflict::MembershipTooLong { userid, .. }
            | Conflict::AdoptionRefused { userid, .. }
            | Conflict::LinkedRowReplaced { userid, .. } => (Some(userid.clone()), None),
            Conflict::GroupNotDepartment { dept_id, .. }
            | Conflict::GroupNotOwned { dept_id, .. }
            | Conflict::GroupOwnedByAnotherSyncer { dept_id, .. }
            | Conflict::GroupNameUsedByAnotherOrg { dept_id, .. }
            | Conflict::GroupNameIsOrganization { dept_id, .. }
            | Conflict::GroupDisplayNameUnusable { dept_id } => (None, Some(*dept_id)),
        };
        Self {
            kind: ErrorKind::Conflict,
            userid,
            department,
            message: conflict.to_string(),
        }
    }
}

/// What kind of Casdoor object a planned change touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    User,
    Group,
}

/// What a planned change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    Create,
    Update,
    /// A leaver's row changes (forbid or soft delete).
    Leave,
}

/// One column of a planned change. `old` is absent for a creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnChange {
    pub column: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<serde_json::Value>,
    pub new: serde_json::Value,
}

/// A per-object change of a dry run: which columns of which row would be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedChange {
    pub object: ObjectKind,
    pub action: ChangeAction,
    /// The DingTalk userid, or the department id.
    pub external_id: String,
    /// `user.name` or `group.name`.
    pub name: String,
    pub columns: Vec<ColumnChange>,
}

fn json_value(value: FieldRef<'_>) -> serde_json::Value {
    match value {
        FieldRef::Text(s) => serde_json::Value::String(s.to_owned()),
        FieldRef::Bool(b) => serde_json::Value::Bool(b),
        FieldRef::Int(i) => serde_json::Value::from(i),
    }
}

fn text_value(text: &str) -> serde_json::Value {
    serde_json::Value::String(text.to_owned())
}

fn column_changes(changes: &[FieldChange]) -> Vec<ColumnChange> {
    changes
        .iter()
        .map(|c| ColumnChange {
            column: c.column.clone(),
            old: Some(json_value(c.old.as_ref())),
            new: json_value(c.new.as_ref()),
        })
        .collect()
}

/// The per-object changes of a plan, in plan order: groups, then users, then leavers.
pub fn planned_changes(plan: &Plan) -> Vec<PlannedChange> {
    let mut out = Vec::new();
    for g in &plan.group_creates {
        out.push(PlannedChange {
            object: ObjectKind::Group,
            action: ChangeAction::Create,
            external_id: g.dept_id.to_string(),
            name: g.name.clone(),
            columns: vec![
                ColumnChange {
                    column: "display_name".into(),
                    old: None,
                    new: text_value(&g.display_name),
                },
                ColumnChange {
                    column: "parent_id".into(),
                    old: None,
                    new: text_value(&g.parent_id),
                },
                ColumnChange {
                    column: "is_top_group".into(),
                    old: None,
                    new: serde_json::Value::Bool(g.is_top_group),
                },
            ],
        });
    }
    for g in plan.group_updates.iter().filter(|g| !g.changes.is_empty()) {
        out.push(PlannedChange {
            object: ObjectKind::Group,
            action: ChangeAction::Update,
            external_id: g.dept_id.to_string(),
            name: g.name.clone(),
            columns: column_changes(&g.changes),
        });
    }
    for c in &plan.creates {
        let mut columns: Vec<ColumnChange> = c
            .values
            .iter()
            .filter_map(|(column, value)| {
                Some(ColumnChange {
                    column: column.to_owned(),
                    old: None,
                    new: json_value(value?),
                })
            })
            .collect();
        columns.push(ColumnChange {
            column: "groups".into(),
            old: None,
            new: text_value(&c.groups),
        });
        out.push(PlannedChange {
            object: ObjectKind::User,
            action: ChangeAction::Create,
            external_id: c.userid.clone(),
            name: c.name.clone(),
            columns,
        });
    }
    for u in &plan.updates {
        let mut columns = column_changes(&u.changes);
        if let Some(groups) = &u.groups {
            columns.push(ColumnChange {
                column: "groups".into(),
                old: None,
                new: text_value(groups),
            });
        }
        if let Some(dingtalk) = &u.dingtalk {
            columns.push(ColumnChange {
                column: "dingtalk".into(),
                old: None,
                new: text_value(dingtalk),
            });
        }
        if let Some(hash) = &u.hash {
            columns.push(ColumnChange {
                column: "hash".into(),
                old: None,
                new: text_value(hash),
            });
        }
        out.push(PlannedChange {
            object: ObjectKind::User,
            action: ChangeAction::Update,
            external_id: u.userid.clone(),
            name: u.name.clone(),
            columns,
        });
    }
    for l in plan.leavers.iter().filter(|l| !l.changes.is_empty()) {
        out.push(PlannedChange {
            object: ObjectKind::User,
            action: ChangeAction::Leave,
            external_id: l.userid.clone(),
            name: l.name.clone(),
            columns: column_changes(&l.changes),
        });
    }
    out
}

/// The outcome of one run of one syncer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub syncer: String,
    pub organization: String,
    /// The `syncer_run` row; `None` in a dry run (which records no history) or when recording
    /// failed.
    pub run_id: Option<i64>,
    pub trigger: RunTrigger,
    pub mode: RunMode,
    pub status: RunStatus,
    /// RFC 3339 UTC with milliseconds.
    pub started_at: String,
    pub duration_ms: u64,
    /// In a dry run: what a real run would have done.
    pub counts: RunCounts,
    /// DingTalk API calls the fetch made.
    pub api_calls: u64,
    /// Why the run failed or was interrupted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The held-removals message, saying how to release them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The first [`MAX_REPORTED_ERRORS`] errors.
    pub errors: Vec<ReportError>,
    /// How many errors there were in all.
    pub errors_total: u64,
    pub notices: Vec<String>,
    /// Dry run only: what would be written, per user and group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<PlannedChange>,
    /// How the apply wrote its batches (what it wrote is in `counts`).
    pub batches: BatchStats,
}

/// How a run's batches were written: not part of [`RunCounts`], which a dry run must predict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BatchStats {
    /// Written through PostgreSQL's `COPY` (batches of a first import).
    pub copied: u64,
    /// Rejected whole by the database, then written unit by unit.
    pub retried: u64,
}

impl RunReport {
    pub fn new(
        syncer: &str,
        organization: &str,
        trigger: RunTrigger,
        mode: RunMode,
        started_at: String,
    ) -> Self {
        Self {
            syncer: syncer.to_owned(),
            organization: organization.to_owned(),
            run_id: None,
            trigger,
            mode,
            status: RunStatus::Running,
            started_at,
            duration_ms: 0,
            counts: RunCounts::default(),
            api_calls: 0,
            message: None,
            held: None,
            errors: Vec::new(),
            errors_total: 0,
            notices: Vec::new(),
            changes: Vec::new(),
            batches: BatchStats::default(),
        }
    }

    /// Whether the run did everything it set out to do.
    pub fn exit_ok(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// Keeps the error (if fewer than [`MAX_REPORTED_ERRORS`] are kept) and counts it.
    pub fn push_error(&mut self, error: ReportError) {
        self.errors_total += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(error);
        }
    }

    /// Replaces every occurrence of `secret` in the report's text with `[redacted]`. A no-op for
    /// an empty secret.
    pub fn scrub(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let clean = |s: &mut String| {
            if s.contains(secret) {
                *s = s.replace(secret, REDACTED);
            }
        };
        for s in [&mut self.message, &mut self.held].into_iter().flatten() {
            clean(s);
        }
        for e in &mut self.errors {
            clean(&mut e.message);
            if let Some(u) = &mut e.userid {
                clean(u);
            }
        }
        for n in &mut self.notices {
            clean(n);
        }
        for c in &mut self.changes {
            clean(&mut c.name);
            clean(&mut c.external_id);
            for col in &mut c.columns {
                for v in [Some(&mut col.new), col.old.as_mut()].into_iter().flatten() {
                    if let serde_json::Value::String(s) = v {
                        clean(s);
                    }
                }
            }
        }
    }

    /// One line for the run history's `error_summary` and for `syncer.error_text`; `None` for a
    /// run that succeeded.
    pub fn summary_line(&self) -> Option<String> {
        let line = match self.status {
            RunStatus::Succeeded | RunStatus::Running => return None,
            RunStatus::Failed | RunStatus::Interrupted => self
                .message
                .clone()
                .unwrap_or_else(|| format!("the run {}", self.status)),
            RunStatus::Held => {
                let mut line = self.held.clone().unwrap_or_default();
                if self.errors_total > 0 {
                    let _ = write!(line, "; also {}", self.problem_tally());
                }
                line
            }
            RunStatus::Partial => format!(
                "syncer {} finished partially{}: {}",
                self.syncer,
                self.run_id
                    .map(|id| format!(" (run {id})"))
                    .unwrap_or_default(),
                self.problem_tally()
            ),
        };
        Some(one_line(&line))
    }

    /// "2 record errors, 1 conflict; first: ..." for the summary line.
    fn problem_tally(&self) -> String {
        let c = &self.counts;
        let mut parts = Vec::new();
        let department_errors = self
            .errors
            .iter()
            .filter(|e| e.kind == ErrorKind::Department)
            .count();
        if department_errors > 0 {
            parts.push(plural(department_errors as u64, "directory error"));
        }
        if c.record_errors > 0 {
            parts.push(plural(c.record_errors, "record error"));
        }
        if c.rows_rejected > 0 {
            parts.push(plural(c.rows_rejected, "row rejected by the database"));
        }
        if c.conflicts > 0 {
            parts.push(plural(c.conflicts, "conflict"));
        }
        let mut text = parts.join(", ");
        if let Some(first) = self.errors.first() {
            let _ = write!(text, "; first: {}", first.message);
        }
        text
    }

    /// The JSON kept in the run history's `details`: errors, notices, the held message.
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "errors": self.errors,
            "errors_total": self.errors_total,
            "notices": self.notices,
            "held": self.held,
            "counts": self.counts,
        })
    }

    /// A human summary: status line, counts, first errors, held instructions, notices, and for
    /// a dry run the per-field changes.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let run = match (self.mode, self.run_id) {
            (RunMode::DryRun, _) => "dry run".to_owned(),
            (RunMode::Apply, Some(id)) => format!("run {id}"),
            (RunMode::Apply, None) => "run (not recorded)".to_owned(),
        };
        let _ = writeln!(
            out,
            "syncer {} (organization {}): {} — {run}, trigger {}, {:.1} s, {} DingTalk API calls",
            self.syncer,
            self.organization,
            self.status,
            self.trigger,
            self.duration_ms as f64 / 1000.0,
            self.api_calls
        );
        if let Some(message) = &self.message {
            let _ = writeln!(out, "  {message}");
        }
        let c = &self.counts;
        let verb = if self.mode == RunMode::DryRun {
            " (would be)"
        } else {
            ""
        };
        let _ = writeln!(out, "\ncounts{verb}:");
        for (label, value) in [
            ("fetched", c.fetched),
            ("created", c.created),
            ("updated", c.updated),
            ("unchanged", c.unchanged),
            ("forbidden", c.forbidden),
            ("unforbidden", c.unforbidden),
            ("deleted", c.deleted),
            ("groups created", c.groups_created),
            ("groups updated", c.groups_updated),
            ("memberships changed", c.memberships_changed),
            ("record errors", c.record_errors),
            ("rows rejected", c.rows_rejected),
            ("conflicts", c.conflicts),
            ("held removals", c.held_removals),
        ] {
            let _ = writeln!(out, "  {label:<20} {value:>8}");
        }
        let b = self.batches;
        if b.copied > 0 || b.retried > 0 {
            let _ = writeln!(
                out,
                "\nbatches: {} written through COPY, {} rejected whole and retried row by row",
                b.copied, b.retried
            );
        }
        if let Some(held) = &self.held {
            let _ = writeln!(out, "\nheld: {held}");
        }
        if !self.errors.is_empty() {
            let shown = self.errors.len().min(MAX_RENDERED_ERRORS);
            let _ = writeln!(out, "\nerrors (first {shown} of {}):", self.errors_total);
            for e in self.errors.iter().take(shown) {
                let kind = match e.kind {
                    ErrorKind::Department => "directory",
                    ErrorKind::Record => "record",
                    ErrorKind::Conflict => "conflict",
                    ErrorKind::Row => "database",
                };
                let _ = writeln!(out, "  - [{kind}] {}", e.message);
            }
        }
        if !self.notices.is_empty() {
            let _ = writeln!(out, "\nnotices:");
            for n in &self.notices {
                let _ = writeln!(out, "  - {n}");
            }
        }
        if self.mode == RunMode::DryRun {
            let _ = writeln!(
                out,
                "\nplanned changes ({}; nothing was written):",
                self.changes.len()
            );
            for change in self.changes.iter().take(MAX_RENDERED_CHANGES) {
                render_change(&mut out, change);
            }
            if self.changes.len() > MAX_RENDERED_CHANGES {
                let _ = writeln!(
                    out,
                    "  ... and {} more (use --format json for all)",
                    self.changes.len() - MAX_RENDERED_CHANGES
                );
            }
        }
        out
    }
}

fn render_change(out: &mut String, change: &PlannedChange) {
    let (mark, action) = match change.action {
        ChangeAction::Create => ('+', "create"),
        ChangeAction::Update => ('~', "update"),
        ChangeAction::Leave => ('-', "leaver"),
    };
    let (object, id_label) = match change.object {
        ObjectKind::User => ("user", "userid"),
        ObjectKind::Group => ("group", "department"),
    };
    let _ = writeln!(
        out,
        "  {mark} {action} {object} {:?} ({id_label} {}):",
        change.name, change.external_id
    );
    for col in &change.columns {
        match &col.old {
            Some(old) => {
                let _ = writeln!(out, "      {}: {old} -> {}", col.column, col.new);
            }
            None => {
                let _ = writeln!(out, "      {}: {}", col.column, col.new);
            }
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else if let Some(stem) = what.strip_suffix(" by the database") {
        format!("{n} {stem}s by the database")
    } else {
        format!("{n} {what}s")
    }
}

/// Newlines would break Casdoor's one-line-per-entry `error_text`.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        RunReport::new(
            "dt",
            "acme",
            RunTrigger::Cli,
            RunMode::Apply,
            "2026-11-25T03:04:05.678Z".into(),
        )
    }

    #[test]
    fn only_a_succeeded_run_exits_ok() {
        for status in RunStatus::ALL {
            let mut r = report();
            r.status = *status;
            assert_eq!(r.exit_ok(), *status == RunStatus::Succeeded);
        }
    }

    #[test]
    fn errors_beyond_the_cap_are_counted_not_kept() {
        let mut r = report();
        for i in 0..150 {
            r.push_error(ReportError {
                kind: ErrorKind::Row,
                userid: Some(format!("u{i}")),
                department: None,
                message: "x".into(),
            });
        }
        assert_eq!(r.errors.len(), MAX_REPORTED_ERRORS);
        assert_eq!(r.errors_total, 150);
    }

    #[test]
    fn scrub_removes_the_secret_everywhere() {
        let mut r = report();
        r.status = RunStatus::Failed;
        r.message = Some("token call failed: appsecret=Sec-123 rejected".into());
        r.push_error(ReportError {
            kind: ErrorKind::Row,
            userid: None,
            department: None,
            message: "Sec-123".into(),
        });
        r.notices.push("Sec-123!".into());
        r.scrub("Sec-123");
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(!json.contains("Sec-123"), "{json}");
        assert!(json.contains(REDACTED), "{json}");
        assert!(!r.render_text().contains("Sec-123"));
    }

    #[test]
    fn the_summary_line_is_one_line_and_names_the_first_problem() {
        let mut r = report();
        r.status = RunStatus::Partial;
        r.run_id = Some(7);
        r.counts.record_errors = 2;
        r.counts.conflicts = 1;
        r.push_error(ReportError {
            kind: ErrorKind::Record,
            userid: Some("u1".into()),
            department: None,
            message: "DingTalk user \"u1\": bad\nvalue".into(),
        });
        let line = r.summary_line().unwrap_or_default();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("run 7"), "{line}");
        assert!(line.contains("2 record errors, 1 conflict"), "{line}");
        assert!(line.contains("\"u1\""), "{line}");
        r.status = RunStatus::Succeeded;
        assert_eq!(r.summary_line(), None);
    }
}
