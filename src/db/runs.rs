//! Run history (`syncer_run`): one row per sync run, inserted as `running` when the run starts
//! and completed when it ends; rows left `running` by a process that died are marked
//! `interrupted`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait as _,
    ActiveValue::{NotSet, Set},
    ColumnTrait, EntityTrait, IdenStatic as _, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::entities::syncer_run;
use super::error::QueryContext as _;
use super::{Db, DbError, parse_utc_millis, utc_millis};
use crate::secret::redact_text;

/// Declares a fieldless enum stored as lowercase text, with `as_str`, `Display` and `FromStr`.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown value `{other}` (expected one of: {})",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum! {
    /// What started a run.
    RunTrigger {
        Schedule => "schedule",
        Manual => "manual",
        Cli => "cli",
        Startup => "startup",
        Demo => "demo",
        /// A DingTalk event named users or departments: a targeted run looks only them up.
        Event => "event",
        /// A full run after the syncer's event stream was down long enough to miss events.
        Catchup => "catchup",
    }
}

impl RunTrigger {
    /// Whether the trigger runs only an enabled syncer: the schedule and DingTalk events do;
    /// an operator may run a disabled one by hand.
    pub fn needs_enabled(self) -> bool {
        matches!(
            self,
            RunTrigger::Schedule | RunTrigger::Event | RunTrigger::Catchup
        )
    }
}

text_enum! {
    /// Whether a run wrote to Casdoor.
    RunMode {
        Apply => "apply",
        DryRun => "dry_run",
    }
}

text_enum! {
    /// How a run ended (or that it has not yet).
    RunStatus {
        Running => "running",
        /// Everything fetched and applied.
        Succeeded => "succeeded",
        /// Applied, but some records failed.
        Partial => "partial",
        /// A safety limit stopped the run before it wrote (e.g. too many leavers).
        Held => "held",
        Failed => "failed",
        /// The process stopped before the run finished.
        Interrupted => "interrupted",
    }
}

/// The counters of one run, from apply to the run row to the report: apply fills what it
/// wrote, the run adds what it fetched and planned. In a dry run they say what a real run would
/// have done. A new counter is a field here, where it is filled, and where it is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    /// Users the fetch returned.
    pub fetched: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub forbidden: u64,
    pub unforbidden: u64,
    pub deleted: u64,
    pub groups_created: u64,
    pub groups_updated: u64,
    /// Users whose `groups` column or casbin rows changed.
    pub memberships_changed: u64,
    /// DingTalk records that could not be mapped (and were skipped).
    pub record_errors: u64,
    /// Rows the database rejected (rolled back on their own; the rest committed).
    pub rows_rejected: u64,
    pub conflicts: u64,
    /// Leaver removals held back by the removal limits.
    pub held_removals: u64,
}

impl RunCounts {
    /// The counters `syncer_run` has a column for. Rejected rows share the `record_errors`
    /// column; conflicts and held removals are kept only in `details`.
    fn stored(&self) -> [(syncer_run::Column, u64); 11] {
        use syncer_run::Column as C;
        [
            (C::Fetched, self.fetched),
            (C::Created, self.created),
            (C::Updated, self.updated),
            (C::Unchanged, self.unchanged),
            (C::Forbidden, self.forbidden),
            (C::Unforbidden, self.unforbidden),
            (C::Deleted, self.deleted),
            (C::GroupsCreated, self.groups_created),
            (C::GroupsUpdated, self.groups_updated),
            (C::MembershipsChanged, self.memberships_changed),
            (C::RecordErrors, self.record_errors + self.rows_rejected),
        ]
    }

    /// The counters of a `syncer_run` row (the others are zero).
    fn from_stored(m: &syncer_run::Model) -> Self {
        Self {
            fetched: from_db(m.fetched),
            created: from_db(m.created),
            updated: from_db(m.updated),
            unchanged: from_db(m.unchanged),
            forbidden: from_db(m.forbidden),
            unforbidden: from_db(m.unforbidden),
            deleted: from_db(m.deleted),
            groups_created: from_db(m.groups_created),
            groups_updated: from_db(m.groups_updated),
            memberships_changed: from_db(m.memberships_changed),
            record_errors: from_db(m.record_errors),
            ..Self::default()
        }
    }

    /// These counts as the run history keeps them: what [`get_run`] returns once
    /// [`finish_run`] stored them.
    pub fn as_stored(&self) -> Self {
        Self {
            record_errors: self.record_errors + self.rows_rejected,
            rows_rejected: 0,
            conflicts: 0,
            held_removals: 0,
            ..*self
        }
    }

    /// The stored counters by column name, as the run history shows them
    /// (`syncerd runs --format json`).
    pub fn stored_json(&self) -> serde_json::Value {
        self.stored()
            .into_iter()
            .map(|(column, value)| (column.as_str().to_owned(), serde_json::Value::from(value)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// A run that is starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub syncer_name: String,
    pub organization: String,
    pub trigger: RunTrigger,
    pub mode: RunMode,
    pub started_at: DateTime<Utc>,
    /// `hostname:pid` of this process.
    pub instance: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub counts: RunCounts,
    pub api_calls: u64,
    /// The operator-facing message; passed through `redact_text` before it is stored.
    pub error_summary: Option<String>,
    /// Recorded errors, per-endpoint statistics. Must already be free of secrets.
    pub details: Option<serde_json::Value>,
    pub finished_at: DateTime<Utc>,
    pub duration: Duration,
}

/// One row of the run history.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub syncer_name: String,
    pub organization: String,
    pub trigger: RunTrigger,
    pub mode: RunMode,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub counts: RunCounts,
    pub api_calls: u64,
    pub error_summary: Option<String>,
    /// The stored JSON; text that is not JSON comes back as a JSON string.
    pub details: Option<serde_json::Value>,
    pub instance: String,
}

/// Which runs [`list_runs`] returns, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFilter {
    pub syncer: Option<String>,
    pub status: Option<RunStatus>,
    /// Runs started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows.
    pub limit: u64,
}

impl Default for RunFilter {
    fn default() -> Self {
        Self {
            syncer: None,
            status: None,
            since: None,
            limit: 20,
        }
    }
}

/// Users that event runs of `syncer` forbade or deleted since its last full run that applied
/// (succeeded or partial): what a targeted run counts with its own removals against the limits.
pub async fn event_removals_since_full_run(db: &Db, syncer: &str) -> Result<u64, DbError> {
    let filter = RunFilter {
        syncer: Some(syncer.to_owned()),
        limit: 1_000,
        ..RunFilter::default()
    };
    let mut removals = 0u64;
    // Newest first, back to the last full run.
    for run in list_runs(db, &filter).await? {
        let applied = matches!(run.status, RunStatus::Succeeded | RunStatus::Partial);
        if run.trigger != RunTrigger::Event {
            if applied && run.mode == RunMode::Apply {
                break;
            }
            continue;
        }
        if applied {
            removals = removals
                .saturating_add(run.counts.forbidden)
                .saturating_add(run.counts.deleted);
        }
    }
    Ok(removals)
}

/// When the newest full run of `syncer` that wrote Casdoor started: the newest that succeeded,
/// else the newest partial one (among its last 1,000 runs); `None` when there is neither. A
/// leaver gone before that start was found by that run, so a catch-up looks from there.
pub async fn last_full_run_started(
    db: &Db,
    syncer: &str,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let filter = RunFilter {
        syncer: Some(syncer.to_owned()),
        limit: 1_000,
        ..RunFilter::default()
    };
    let runs = list_runs(db, &filter).await?;
    let full = |status: RunStatus| {
        runs.iter()
            .find(|r| {
                r.trigger != RunTrigger::Event && r.mode == RunMode::Apply && r.status == status
            })
            .map(|r| r.started_at)
    };
    Ok(full(RunStatus::Succeeded).or_else(|| full(RunStatus::Partial)))
}

/// Which `running` rows [`mark_interrupted`] closes. Unset fields match every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleRunFilter {
    pub syncer: Option<String>,
    /// Rows of this `hostname:pid` (a process that is known to be gone).
    pub instance: Option<String>,
    /// Rows started before this time.
    pub started_before: Option<DateTime<Utc>>,
    /// Only these run ids.
    pub ids: Option<Vec<i64>>,
}

fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Records a run that is starting (status `running`) and returns its id.
pub async fn insert_run(db: &Db, run: NewRun) -> Result<i64, DbError> {
    let context = || {
        format!(
            "recording a new run of syncer {} in syncer_run",
            run.syncer_name
        )
    };
    let _turn = db.write_turn().await.with_context(context)?;
    let mut row = syncer_run::ActiveModel {
        id: NotSet,
        syncer_name: Set(run.syncer_name.clone()),
        organization: Set(run.organization.clone()),
        trigger: Set(run.trigger.as_str().to_owned()),
        mode: Set(run.mode.as_str().to_owned()),
        status: Set(RunStatus::Running.as_str().to_owned()),
        started_at: Set(utc_millis(run.started_at)),
        finished_at: Set(None),
        duration_ms: Set(None),
        api_calls: Set(0),
        error_summary: Set(None),
        details: Set(None),
        instance: Set(run.instance.clone()),
        ..Default::default()
    };
    for (column, _) in RunCounts::default().stored() {
        row.set(column, 0_i64.into());
    }
    let result = db
        .tables()
        .at(syncer_run::Entity::insert(row))
        .exec(db.conn())
        .await
        .with_context(context)?;
    Ok(result.last_insert_id)
}

/// Completes run `id` with its outcome. [`DbError::RunNotFound`] when there is no such run.
pub async fn finish_run(db: &Db, id: i64, outcome: RunOutcome) -> Result<(), DbError> {
    let context = || format!("recording the outcome of run {id} in syncer_run");
    let _turn = db.write_turn().await.with_context(context)?;
    let details = outcome.details.as_ref().map(serde_json::Value::to_string);
    let mut update = db.tables().at(syncer_run::Entity::update_many());
    for (column, value) in outcome.counts.stored() {
        update = update.col_expr(column, Expr::value(to_db(value)));
    }
    let result = update
        .col_expr(
            syncer_run::Column::Status,
            Expr::value(outcome.status.as_str()),
        )
        .col_expr(
            syncer_run::Column::FinishedAt,
            Expr::value(utc_millis(outcome.finished_at)),
        )
        .col_expr(
            syncer_run::Column::DurationMs,
            Expr::value(duration_ms(outcome.duration)),
        )
        .col_expr(
            syncer_run::Column::ApiCalls,
            Expr::value(to_db(outcome.api_calls)),
        )
        .col_expr(
            syncer_run::Column::ErrorSummary,
            Expr::value(outcome.error_summary.as_deref().map(redact_text)),
        )
        .col_expr(syncer_run::Column::Details, Expr::value(details))
        .filter(syncer_run::Column::Id.eq(id))
        .exec(db.conn())
        .await
        .with_context(context)?;
    if result.rows_affected == 0 {
        return Err(DbError::RunNotFound { id });
    }
    Ok(())
}

/// Runs matching `filter`, newest first.
pub async fn list_runs(db: &Db, filter: &RunFilter) -> Result<Vec<RunRow>, DbError> {
    let mut query = db.tables().at(syncer_run::Entity::find());
    if let Some(syncer) = &filter.syncer {
        query = query.filter(syncer_run::Column::SyncerName.eq(syncer.as_str()));
    }
    if let Some(status) = filter.status {
        query = query.filter(syncer_run::Column::Status.eq(status.as_str()));
    }
    if let Some(since) = filter.since {
        query = query.filter(syncer_run::Column::StartedAt.gte(utc_millis(since)));
    }
    let rows = query
        .order_by_desc(syncer_run::Column::StartedAt)
        .order_by_desc(syncer_run::Column::Id)
        .limit(filter.limit)
        .all(db.conn())
        .await
        .context("listing runs from syncer_run")?;
    rows.into_iter().map(run_row).collect()
}

/// Run `id`, if it exists.
pub async fn get_run(db: &Db, id: i64) -> Result<Option<RunRow>, DbError> {
    let row = db
        .tables()
        .at(syncer_run::Entity::find_by_id(id))
        .one(db.conn())
        .await
        .with_context(|| format!("reading run {id} from syncer_run"))?;
    row.map(run_row).transpose()
}

/// Which earlier run [`previous_status`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Runs of the whole directory (every trigger but `event`).
    Full,
    /// Targeted runs of DingTalk events.
    Event,
}

impl RunKind {
    pub fn of(trigger: RunTrigger) -> Self {
        if trigger == RunTrigger::Event {
            RunKind::Event
        } else {
            RunKind::Full
        }
    }
}

/// How the newest finished run of `syncer` of `kind` before run `before` ended (before every run
/// when `None`): `succeeded`, `partial`, `held` or `failed`. Dry runs, interrupted runs and
/// runs still going are passed over; they say nothing about whether the syncer works.
pub async fn previous_status(
    db: &Db,
    syncer: &str,
    kind: RunKind,
    before: Option<i64>,
) -> Result<Option<RunStatus>, DbError> {
    let finished = [
        RunStatus::Succeeded,
        RunStatus::Partial,
        RunStatus::Held,
        RunStatus::Failed,
    ];
    let event = RunTrigger::Event.as_str();
    let mut query = db
        .tables()
        .at(syncer_run::Entity::find())
        .filter(syncer_run::Column::SyncerName.eq(syncer))
        .filter(syncer_run::Column::Mode.eq(RunMode::Apply.as_str()))
        .filter(syncer_run::Column::Status.is_in(finished.map(RunStatus::as_str)));
    query = match kind {
        RunKind::Full => query.filter(syncer_run::Column::Trigger.ne(event)),
        RunKind::Event => query.filter(syncer_run::Column::Trigger.eq(event)),
    };
    if let Some(before) = before {
        query = query.filter(syncer_run::Column::Id.lt(before));
    }
    let row = query
        .order_by_desc(syncer_run::Column::StartedAt)
        .order_by_desc(syncer_run::Column::Id)
        .one(db.conn())
        .await
        .with_context(|| format!("reading the previous run of syncer {syncer} from syncer_run"))?;
    row.map(|m| run_row(m).map(|r| r.status)).transpose()
}

/// Marks the `running` rows matching `filter` as `interrupted`, finished at `finished_at`,
/// with `reason` as their error summary. Their duration stays unknown (NULL): nobody saw the
/// run end. Returns how many rows changed.
pub async fn mark_interrupted(
    db: &Db,
    filter: &StaleRunFilter,
    finished_at: DateTime<Utc>,
    reason: &str,
) -> Result<u64, DbError> {
    let mut update = db
        .tables()
        .at(syncer_run::Entity::update_many())
        .col_expr(
            syncer_run::Column::Status,
            Expr::value(RunStatus::Interrupted.as_str()),
        )
        .col_expr(
            syncer_run::Column::FinishedAt,
            Expr::value(utc_millis(finished_at)),
        )
        .col_expr(
            syncer_run::Column::ErrorSummary,
            Expr::value(redact_text(reason)),
        )
        .filter(syncer_run::Column::Status.eq(RunStatus::Running.as_str()));
    if let Some(syncer) = &filter.syncer {
        update = update.filter(syncer_run::Column::SyncerName.eq(syncer.as_str()));
    }
    if let Some(instance) = &filter.instance {
        update = update.filter(syncer_run::Column::Instance.eq(instance.as_str()));
    }
    if let Some(before) = filter.started_before {
        update = update.filter(syncer_run::Column::StartedAt.lt(utc_millis(before)));
    }
    if let Some(ids) = &filter.ids {
        update = update.filter(syncer_run::Column::Id.is_in(ids.iter().copied()));
    }
    let result = update
        .exec(db.conn())
        .await
        .context("marking stale running runs as interrupted in syncer_run")?;
    Ok(result.rows_affected)
}

fn run_row(m: syncer_run::Model) -> Result<RunRow, DbError> {
    let id = m.id;
    let bad = |column: &'static str, problem: String| DbError::BadValue {
        table: "syncer_run",
        column,
        row: format!("id {id}"),
        problem,
    };
    let time = |column: &'static str, text: &str| {
        parse_utc_millis(text)
            .map_err(|e| bad(column, format!("`{text}` is not an RFC 3339 time: {e}")))
    };
    Ok(RunRow {
        id,
        trigger: m.trigger.parse().map_err(|e| bad("trigger", e))?,
        mode: m.mode.parse().map_err(|e| bad("mode", e))?,
        status: m.status.parse().map_err(|e| bad("status", e))?,
        started_at: time("started_at", &m.started_at)?,
        finished_at: m
            .finished_at
            .as_deref()
            .map(|t| time("finished_at", t))
            .transpose()?,
        duration: m.duration_ms.map(|ms| Duration::from_millis(from_db(ms))),
        counts: RunCounts::from_stored(&m),
        api_calls: from_db(m.api_calls),
        error_summary: m.error_summary,
        details: m
            .details
            .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))),
        syncer_name: m.syncer_name,
        organization: m.organization,
        instance: m.instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_enums_round_trip_through_their_text() {
        for t in RunTrigger::ALL {
            assert_eq!(t.as_str().parse::<RunTrigger>(), Ok(*t));
        }
        for m in RunMode::ALL {
            assert_eq!(m.as_str().parse::<RunMode>(), Ok(*m));
        }
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(*s));
            assert!(s.as_str().len() <= 16, "fits varchar(16)");
        }
        assert_eq!(RunMode::DryRun.as_str(), "dry_run");
        assert_eq!(
            serde_json::to_string(&RunStatus::Interrupted).unwrap_or_default(),
            "\"interrupted\""
        );
        let err = "done".parse::<RunStatus>().err().unwrap_or_default();
        assert!(err.contains("done") && err.contains("succeeded"), "{err}");
    }

    #[test]
    fn the_run_history_counts_rejected_rows_as_record_errors() {
        let counts = RunCounts {
            record_errors: 2,
            rows_rejected: 3,
            conflicts: 1,
            ..RunCounts::default()
        };
        let stored = counts.stored_json();
        assert_eq!(stored["record_errors"], 5);
        assert_eq!(stored.as_object().map(serde_json::Map::len), Some(11));
        assert_eq!(counts.as_stored().record_errors, 5);
        assert_eq!(counts.as_stored().conflicts, 0);
    }
}
