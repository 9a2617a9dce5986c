//! One run of one syncer, end to end: validate → record `running` → fetch → map → load → plan →
//! apply → record the outcome.
//!
//! The fetch is a seam: [`run_once`] takes the fetch as a future (built by the caller from the
//! DingTalk client, not polled before the syncer is validated and the run recorded), and
//! [`run_with_directory`] takes an already fetched directory, so everything after the fetch is
//! tested with hand-built directories. A run never panics: whatever happens ends up in the
//! [`RunReport`], the run history and, for failed, partial and held runs, one line of
//! `syncer.error_text`.

use std::fmt::Display;
use std::future::Future;
use std::time::Instant;

use chrono::{Local, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::config::SyncSettings;
use crate::db::casdoor::{DbState, OrganizationRow, SchemaFacts, find_organization, load_state};
use crate::db::runs::event_removals_since_full_run;
use crate::db::{
    self, Db, DbError, NewRun, RunCounts, RunMode, RunOutcome, RunStatus, RunTrigger, SyncerRow,
    casdoor_timestamp, utc_millis,
};
use crate::dingtalk::types::{Department, Directory, DirectoryUser};
use crate::dingtalk::{CallCounter, FetchError, LookupError, Targets};
use crate::secret::redact_text;
use crate::syncer::{SyncerProblem, ValidSyncer};

use super::apply::{ApplyError, ApplyOutcome, ApplySettings, apply_plan};
use super::map::{MappedUser, Mapping, RecordError, map_directory};
use super::model::{Plan, PlanInput, PlanOptions};
use super::plan::plan;
use super::report::{ErrorKind, Phase, Progress, ReportError, RunReport, planned_changes};

/// What every run of this process shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub db: Db,
    pub sync: SyncSettings,
    /// Who runs, recorded with each run ([`crate::launch::instance_id`]); crash recovery
    /// matches a `running` row to its syncer's lease holder by it.
    pub instance: String,
}

/// How one run is carried out.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub trigger: RunTrigger,
    pub mode: RunMode,
    /// One-shot override of the removal limits.
    pub allow_removals: bool,
    /// Take over unowned users and groups that match DingTalk objects.
    pub adopt_existing: bool,
    /// Cancelling stops the run at the next safe point (between batches) as `interrupted`.
    pub cancel: CancellationToken,
    pub progress: Option<watch::Sender<Progress>>,
    /// The calls of the fetch as they are sent (give it to
    /// [`Client::fetch_directory_counted`](crate::dingtalk::Client::fetch_directory_counted)):
    /// a run cancelled mid-fetch drops the fetch and records this count.
    pub api_calls: CallCounter,
}

impl RunOptions {
    /// Options with no overrides, a fresh token and no progress channel.
    pub fn new(trigger: RunTrigger, mode: RunMode) -> Self {
        Self {
            trigger,
            mode,
            allow_removals: false,
            adopt_existing: false,
            cancel: CancellationToken::new(),
            progress: None,
            api_calls: CallCounter::new(),
        }
    }
}

/// Runs mapping or planning, which hold the CPU for up to a second at 100,000 users, without
/// stalling the runtime's other tasks: on a multi-thread runtime `block_in_place` hands them to
/// the other workers. Not `spawn_blocking`: the work borrows from the run. A panic comes back as
/// its message.
fn cpu_bound<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    let guarded = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    let outcome = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(guarded),
        _ => guarded(),
    };
    outcome.map_err(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        format!("panicked: {text}")
    })
}

/// Why a run failed as a whole. Every message is operator-facing and secret-free.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("syncer {syncer} cannot run: {problem}")]
    InvalidSyncer {
        syncer: String,
        problem: SyncerProblem,
    },
    #[error(
        "syncer {syncer}: recording the run in syncer_run failed: {source}; nothing was fetched or written"
    )]
    History { syncer: String, source: DbError },
    #[error(
        "syncer {syncer}: fetching the DingTalk directory failed: {message}; nothing was written"
    )]
    Fetch { syncer: String, message: String },
    #[error(
        "syncer {syncer}: reading organization {organization} from the database failed: {source}; nothing was written"
    )]
    Load {
        syncer: String,
        organization: String,
        source: DbError,
    },
    #[error(
        "syncer {syncer}: {message}; nothing was written and nobody was taken as gone (the next event or full run tries again)"
    )]
    Lookup { syncer: String, message: String },
    #[error("syncer {syncer}: {what} failed unexpectedly ({message}); nothing was written")]
    Internal {
        syncer: String,
        what: &'static str,
        message: String,
    },
    #[error("syncer {syncer}: {source}")]
    Apply { syncer: String, source: ApplyError },
}

/// A failed fetch as a run sees it: `Display` is the operator-facing, secret-free message, and
/// the calls made before the failure still go into the run history (they used API budget).
pub trait FetchFailure: Display {
    /// DingTalk API calls made before the fetch failed.
    fn api_calls(&self) -> u64;
}

impl FetchFailure for FetchError {
    fn api_calls(&self) -> u64 {
        self.total_calls()
    }
}

impl FetchFailure for LookupError {
    fn api_calls(&self) -> u64 {
        self.calls
    }
}

/// A bare message, from a fetch that made no calls of its own (hand-built directories).
impl FetchFailure for String {
    fn api_calls(&self) -> u64 {
        0
    }
}

/// [`run_once`] with a directory that is already fetched (or a fetch that already failed).
pub async fn run_with_directory<E: FetchFailure>(
    ctx: &RunContext,
    syncer: &SyncerRow,
    fetched: Result<Directory, E>,
    opts: RunOptions,
) -> RunReport {
    run_once(ctx, syncer, std::future::ready(fetched), opts).await
}

/// Runs `syncer` once: validates it, then [`run_valid`]. An invalid row is recorded as a failed
/// run (outside dry run) that names the problem. `fetch` is polled only after the syncer is
/// validated and (outside dry run) the run is recorded as `running`; its error's `Display` must
/// be operator-facing and secret-free, and the calls it made are recorded. A dry run plans and
/// applies inside a rolled-back transaction and records no history and no `error_text`.
pub async fn run_once<F, E>(
    ctx: &RunContext,
    syncer: &SyncerRow,
    fetch: F,
    opts: RunOptions,
) -> RunReport
where
    F: Future<Output = Result<Directory, E>>,
    E: FetchFailure,
{
    let checked = syncer.validate().map(|valid| valid.mapping().clone());
    run_checked(ctx, syncer, checked, None, fetch, opts).await
}

/// [`run_once`] for a syncer validated already (by [`crate::launch`]).
pub async fn run_valid<F, E>(
    ctx: &RunContext,
    syncer: &ValidSyncer,
    fetch: F,
    opts: RunOptions,
) -> RunReport
where
    F: Future<Output = Result<Directory, E>>,
    E: FetchFailure,
{
    let checked = Ok(syncer.mapping().clone());
    run_checked(ctx, syncer.row(), checked, None, fetch, opts).await
}

/// A targeted run, for an event's hint: [`run_valid`], but `lookup` reads only `targets` (give
/// it [`Client::lookup_targets`](crate::dingtalk::Client::lookup_targets) with
/// `opts.api_calls`) and the plan speaks only for them. A target user found is created or
/// updated with its memberships as a full run would; one DingTalk no longer has (60121) is a
/// leaver under the syncer's policy, within the removal limits counted against every user the
/// syncer owns. Nobody outside `targets` is written. A target department found is created or
/// updated; one that is gone (60003) is reported and its group kept, as a full run does. A
/// failed lookup fails the run: nothing is written and nobody is taken as gone. Recorded like
/// every run, with `opts.trigger` (normally [`RunTrigger::Event`]).
pub async fn run_targets<F, E>(
    ctx: &RunContext,
    syncer: &ValidSyncer,
    targets: &Targets,
    lookup: F,
    opts: RunOptions,
) -> RunReport
where
    F: Future<Output = Result<Directory, E>>,
    E: FetchFailure,
{
    let checked = Ok(syncer.mapping().clone());
    run_checked(ctx, syncer.row(), checked, Some(targets), lookup, opts).await
}

/// `scope`: the targets of a targeted run, `None` for a full run.
async fn run_checked<F, E>(
    ctx: &RunContext,
    syncer: &SyncerRow,
    checked: Result<Mapping, SyncerProblem>,
    scope: Option<&Targets>,
    fetch: F,
    opts: RunOptions,
) -> RunReport
where
    F: Future<Output = Result<Directory, E>>,
    E: FetchFailure,
{
    let span = info_span!("sync_run", syncer = %syncer.name, run_id = tracing::field::Empty);
    Runner {
        ctx,
        syncer,
        opts: &opts,
        scope,
        started: Instant::now(),
        report: RunReport::new(
            &syncer.name,
            &syncer.organization,
            opts.trigger,
            opts.mode,
            utc_millis(Utc::now()),
        ),
    }
    .run(checked, fetch)
    .instrument(span)
    .await
}

/// Why a run ends before its last phase.
enum Stop {
    Failed(RunError),
    /// Cancelled at a safe point; the message says what was written.
    Interrupted(String),
}

impl From<RunError> for Stop {
    fn from(error: RunError) -> Self {
        Stop::Failed(error)
    }
}

/// The mapped directory and the database's state, for planning.
struct Loaded {
    users: Vec<MappedUser>,
    record_errors: Vec<RecordError>,
    state: DbState,
}

struct Runner<'a> {
    ctx: &'a RunContext,
    syncer: &'a SyncerRow,
    opts: &'a RunOptions,
    /// The targets of a targeted run; `None` for a full run.
    scope: Option<&'a Targets>,
    started: Instant,
    report: RunReport,
}

impl Runner<'_> {
    fn phase(&self, phase: Phase) {
        if let Some(progress) = &self.opts.progress {
            progress.send_replace(Progress::at(phase));
        }
    }

    fn name(&self) -> String {
        self.syncer.name.clone()
    }

    /// `checked` is the row's mapping, or why the row cannot run: an invalid row is recorded
    /// as a failed run.
    async fn run<F, E>(mut self, checked: Result<Mapping, SyncerProblem>, fetch: F) -> RunReport
    where
        F: Future<Output = Result<Directory, E>>,
        E: FetchFailure,
    {
        self.phase(Phase::Starting);
        if let Err(error) = self.record_start().await {
            return self.fail(error).await;
        }
        info!(
            trigger = %self.opts.trigger,
            mode = %self.opts.mode,
            organization = %self.syncer.organization,
            "run started"
        );
        if let Some(targets) = self.scope {
            let mut notice = format!(
                "targeted run: looked up {} users and {} departments only; nothing else was read or written",
                targets.user_ids.len(),
                targets.dept_ids.len()
            );
            if !targets.dept_ids.is_empty() {
                notice.push_str(
                    "; a department DingTalk no longer has keeps its group, as in a full run, and its members leave it when their own records are synced",
                );
            }
            self.report.notices.push(notice);
        }

        let mapping = match checked {
            Ok(m) => m.with_lowercase_names(self.ctx.sync.lowercase_names),
            Err(problem) => {
                let error = RunError::InvalidSyncer {
                    syncer: self.name(),
                    problem,
                };
                return self.fail(error).await;
            }
        };
        if !mapping.ignored_fields().is_empty() {
            let notice = format!(
                "table_columns maps to {}, which Casdoor's DingTalk syncer ignores; syncerd leaves them out (remove them on the syncer's page in Casdoor to silence this)",
                mapping.ignored_fields().join(", ")
            );
            warn!("{notice}");
            self.report.notices.push(notice);
        }
        match self.carry_out(&mapping, fetch).await {
            Ok(status) => self.finish(status).await,
            Err(Stop::Failed(error)) => self.fail(error).await,
            Err(Stop::Interrupted(message)) => self.interrupt(&message).await,
        }
    }

    /// Records the run as `running` (not in a dry run), so the fetch's calls have a row.
    async fn record_start(&mut self) -> Result<(), RunError> {
        if self.opts.mode != RunMode::Apply {
            return Ok(());
        }
        let new_run = NewRun {
            syncer_name: self.syncer.name.clone(),
            organization: self.syncer.organization.clone(),
            trigger: self.opts.trigger,
            mode: self.opts.mode,
            started_at: Utc::now(),
            instance: self.ctx.instance.clone(),
        };
        let id = db::insert_run(&self.ctx.db, new_run)
            .await
            .map_err(|source| RunError::History {
                syncer: self.name(),
                source,
            })?;
        self.report.run_id = Some(id);
        tracing::Span::current().record("run_id", id);
        Ok(())
    }

    /// Every phase after validation; the status the run ends with, or why it stopped early.
    async fn carry_out<F, E>(&mut self, mapping: &Mapping, fetch: F) -> Result<RunStatus, Stop>
    where
        F: Future<Output = Result<Directory, E>>,
        E: FetchFailure,
    {
        self.check_organization().await?;
        if !self.syncer.is_read_only {
            debug!(
                "is_read_only is off on this syncer; it changes nothing: syncerd never writes back to DingTalk"
            );
        }

        self.phase(Phase::Fetching);
        let Directory {
            departments,
            users,
            complete,
            ..
        } = self.fetch(fetch).await?;

        self.phase(Phase::Loading);
        let loaded = self.map_and_load(users, mapping).await?;

        self.phase(Phase::Planning);
        let now = casdoor_timestamp(Local::now());
        let facts = loaded.state.facts;
        let earlier_removals = self.earlier_removals().await?;
        let plan = self
            .plan(
                mapping,
                loaded,
                departments,
                complete,
                &now,
                earlier_removals,
            )
            .map_err(|message| RunError::Internal {
                syncer: self.name(),
                what: "planning",
                message,
            })?;
        if self.opts.cancel.is_cancelled() {
            return Err(Stop::Interrupted(
                "cancelled before writing; nothing was written".to_owned(),
            ));
        }

        self.phase(Phase::Applying);
        let outcome = self.apply(&plan, facts, &now).await;
        self.fold(&plan, &outcome);
        if let Some(source) = outcome.failure {
            return Err(Stop::Failed(RunError::Apply {
                syncer: self.name(),
                source,
            }));
        }
        if outcome.interrupted {
            return Err(Stop::Interrupted(format!(
                "cancelled between batches: {} of {} rows were written, the rest was not (the next run picks it up)",
                outcome.rows_written, outcome.rows_total
            )));
        }
        Ok(if plan.held.is_some() {
            RunStatus::Held
        } else if self.report.errors_total > 0 || !complete {
            RunStatus::Partial
        } else {
            RunStatus::Succeeded
        })
    }

    /// Beside Casdoor, users of an organization it does not know would be unreachable: stop
    /// before spending API calls. syncerd's embedded database has no organization table.
    async fn check_organization(&self) -> Result<(), RunError> {
        let organization = self.syncer.organization.clone();
        match find_organization(&self.ctx.db, &organization).await {
            Ok(OrganizationRow::Missing) => Err(RunError::InvalidSyncer {
                syncer: self.name(),
                problem: SyncerProblem::UnknownOrganization { organization },
            }),
            Ok(OrganizationRow::NoTable | OrganizationRow::Found { .. }) => Ok(()),
            Err(source) => Err(RunError::Load {
                syncer: self.name(),
                organization,
                source,
            }),
        }
    }

    /// Waits for the directory (or a cancellation); keeps its call count and why it is
    /// incomplete.
    async fn fetch<F, E>(&mut self, fetch: F) -> Result<Directory, Stop>
    where
        F: Future<Output = Result<Directory, E>>,
        E: FetchFailure,
    {
        let fetched = tokio::select! {
            biased;
            () = self.opts.cancel.cancelled() => {
                self.report.api_calls = self.opts.api_calls.get();
                return Err(Stop::Interrupted(
                    "cancelled while fetching the DingTalk directory; nothing was written".to_owned(),
                ));
            }
            fetched = fetch => fetched,
        };
        let directory = match fetched {
            Ok(d) => d,
            Err(e) => {
                self.report.api_calls = e.api_calls();
                let (syncer, message) = (self.name(), redact_text(&e.to_string()));
                return Err(Stop::Failed(match self.scope {
                    None => RunError::Fetch { syncer, message },
                    Some(_) => RunError::Lookup { syncer, message },
                }));
            }
        };
        self.report.counts.fetched = directory.users.len() as u64;
        self.report.api_calls = directory.total_calls();
        for reason in &directory.incomplete_reasons {
            self.report.push_error(ReportError {
                kind: ErrorKind::Department,
                userid: None,
                department: None,
                message: reason.clone(),
            });
        }
        Ok(directory)
    }

    /// Maps the directory's users and reads the organization's state from the database.
    async fn map_and_load(
        &self,
        directory_users: Vec<DirectoryUser>,
        mapping: &Mapping,
    ) -> Result<Loaded, RunError> {
        let phase_started = Instant::now();
        let mapped = cpu_bound(|| map_directory(directory_users, mapping));
        let (users, record_errors) = mapped.map_err(|message| RunError::Internal {
            syncer: self.name(),
            what: "mapping the directory",
            message,
        })?;
        let organization = &self.syncer.organization;
        let state = load_state(&self.ctx.db, organization, &self.syncer.name, mapping)
            .await
            .map_err(|source| RunError::Load {
                syncer: self.name(),
                organization: organization.clone(),
                source,
            })?;
        debug!(
            elapsed_ms = phase_started.elapsed().as_millis() as u64,
            "mapped and loaded"
        );
        Ok(Loaded {
            users,
            record_errors,
            state,
        })
    }

    /// For a targeted run, the removals event runs made since the last full run (0 otherwise).
    async fn earlier_removals(&self) -> Result<u64, RunError> {
        if self.scope.is_none() {
            return Ok(0);
        }
        event_removals_since_full_run(&self.ctx.db, &self.syncer.name)
            .await
            .map_err(|source| RunError::Load {
                syncer: self.name(),
                organization: self.syncer.organization.clone(),
                source,
            })
    }

    /// Decides what to write, on the CPU without stalling the runtime; a panic comes back as
    /// its message.
    fn plan(
        &self,
        mapping: &Mapping,
        loaded: Loaded,
        departments: Vec<Department>,
        directory_complete: bool,
        now: &str,
        earlier_removals: u64,
    ) -> Result<Plan, String> {
        let phase_started = Instant::now();
        let Loaded {
            users,
            record_errors,
            state,
        } = loaded;
        let input = PlanInput {
            organization: self.syncer.organization.clone(),
            root_group_display_name: state.root_group_display_name,
            syncer: self.syncer.name.clone(),
            key_column: mapping.key_column().to_owned(),
            users,
            record_errors,
            departments,
            directory_complete,
            existing_users: state.existing_users,
            links: state.links,
            foreign_claims: state.foreign_claims,
            existing_groups: state.existing_groups,
            group_names_in_other_orgs: state.group_names_in_other_orgs,
            organization_names: state.organization_names,
            casbin_groupings: state.casbin_groupings,
            options: PlanOptions {
                earlier_removals,
                ..PlanOptions::from_settings(
                    &self.ctx.sync,
                    self.opts.allow_removals,
                    self.opts.adopt_existing,
                )
            },
            now: now.to_owned(),
            scope: self.scope.cloned(),
        };
        let plan = cpu_bound(|| plan(input))?;
        let summary = plan.summary();
        debug!(%summary, elapsed_ms = phase_started.elapsed().as_millis() as u64, "planned");
        Ok(plan)
    }

    /// Writes the plan (in a dry run: inside a transaction that is rolled back).
    async fn apply(&self, plan: &Plan, facts: SchemaFacts, now: &str) -> ApplyOutcome {
        let phase_started = Instant::now();
        let outcome = apply_plan(
            &self.ctx.db,
            plan,
            ApplySettings {
                organization: &self.syncer.organization,
                syncer: &self.syncer.name,
                run_id: self.report.run_id,
                batch_size: self.ctx.sync.batch_size,
                mode: self.opts.mode,
                facts,
                now,
                cancel: &self.opts.cancel,
                progress: self.opts.progress.as_ref(),
            },
        )
        .await;
        debug!(
            elapsed_ms = phase_started.elapsed().as_millis() as u64,
            "applied"
        );
        outcome
    }

    /// Puts the plan's and the apply's counts, errors and notices into the report.
    fn fold(&mut self, plan: &Plan, outcome: &ApplyOutcome) {
        self.report.counts = RunCounts {
            fetched: self.report.counts.fetched,
            unchanged: plan.unchanged as u64,
            record_errors: plan.record_errors.len() as u64,
            conflicts: plan.conflicts.len() as u64,
            held_removals: plan.held.as_ref().map_or(0, |h| h.removals as u64),
            ..outcome.counts
        };
        for e in &plan.record_errors {
            self.report.push_error(ReportError::from_record(e));
        }
        for c in &plan.conflicts {
            self.report.push_error(ReportError::from_conflict(c));
        }
        for e in &outcome.row_errors {
            self.report.push_error(ReportError {
                kind: ErrorKind::Row,
                userid: e.userid().map(str::to_owned),
                department: e.department(),
                message: e.to_string(),
            });
        }
        self.report
            .notices
            .extend(plan.notices.iter().map(ToString::to_string));
        if outcome.tokens_revoked > 0 {
            self.report.notices.push(format!(
                "expired the Casdoor tokens (if any) of {} users who were forbidden or deleted",
                outcome.tokens_revoked
            ));
        }
        if outcome.sessions_deleted > 0 {
            self.report.notices.push(format!(
                "deleted the Casdoor sessions (if any) of {} users who were forbidden or deleted",
                outcome.sessions_deleted
            ));
        }
        self.report.held = plan.held.as_ref().map(ToString::to_string);
        self.report.batches = outcome.batches;
        if self.opts.mode == RunMode::DryRun {
            self.report.changes = planned_changes(plan);
        }
    }

    async fn fail(mut self, error: RunError) -> RunReport {
        self.report.message = Some(redact_text(&error.to_string()));
        self.finish(RunStatus::Failed).await
    }

    async fn interrupt(mut self, message: &str) -> RunReport {
        self.report.message = Some(message.to_owned());
        self.finish(RunStatus::Interrupted).await
    }

    /// Sets the status, scrubs the secret, records history and `error_text` (retrying briefly,
    /// so a database blip at the end of a run does not leave its row `running`), logs the end.
    async fn finish(mut self, status: RunStatus) -> RunReport {
        let report = &mut self.report;
        report.status = status;
        report.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        report.scrub(self.syncer.app_secret.expose());
        let db = &self.ctx.db;

        if self.opts.mode == RunMode::Apply {
            if let Some(id) = report.run_id {
                let outcome = RunOutcome {
                    status,
                    counts: report.counts,
                    api_calls: report.api_calls,
                    error_summary: report.summary_line(),
                    details: Some(report.details()),
                    finished_at: Utc::now(),
                    duration: self.started.elapsed(),
                };
                let recorded = retry_briefly(|| db::finish_run(db, id, outcome.clone())).await;
                if let Err(e) = recorded {
                    warn!(error = %e, "could not record the outcome of the run in syncer_run");
                    report.notices.push(format!(
                        "the outcome could not be recorded in syncer_run: {e}"
                    ));
                }
            }
            if matches!(
                status,
                RunStatus::Failed | RunStatus::Partial | RunStatus::Held
            ) && let Some(line) = report.summary_line()
                && let Err(e) =
                    retry_briefly(|| db::append_syncer_error(db, &self.syncer.name, &line)).await
            {
                warn!(error = %e, "could not append to the syncer's error_text");
            }
        }
        self.phase_done();
        let report = self.report;
        let c = &report.counts;
        info!(
            status = %report.status,
            fetched = c.fetched,
            created = c.created,
            updated = c.updated,
            unchanged = c.unchanged,
            forbidden = c.forbidden,
            unforbidden = c.unforbidden,
            deleted = c.deleted,
            groups_created = c.groups_created,
            groups_updated = c.groups_updated,
            memberships_changed = c.memberships_changed,
            record_errors = c.record_errors,
            rows_rejected = c.rows_rejected,
            conflicts = c.conflicts,
            api_calls = report.api_calls,
            duration_ms = report.duration_ms,
            "run finished"
        );
        if let Some(message) = &report.message {
            info!(%message, "run did not complete");
        }
        report
    }

    fn phase_done(&self) {
        if let Some(progress) = &self.opts.progress {
            let current = *progress.borrow();
            progress.send_replace(Progress {
                phase: Phase::Done,
                ..current
            });
        }
    }
}

/// Attempts of the final history writes of a run.
const FINAL_WRITE_ATTEMPTS: u32 = 5;

/// Runs `write` until it succeeds, at most [`FINAL_WRITE_ATTEMPTS`] times, waiting 250 ms, then
/// twice as long after each failure (under 8 s in all); returns the last error.
async fn retry_briefly<F, Fut, T>(mut write: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    let mut wait = std::time::Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt >= FINAL_WRITE_ATTEMPTS => return Err(e),
            Err(e) => {
                debug!(error = %e, attempt, "recording the run failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon spawns runs on the multi-threaded runtime: the future must be `Send`.
    #[allow(dead_code)]
    fn run_once_is_send(ctx: &RunContext, syncer: &SyncerRow) {
        fn is_send<T: Send>(_: &T) {}
        let fetched = std::future::ready(Ok::<Directory, String>(Directory::default()));
        let run = run_once(
            ctx,
            syncer,
            fetched,
            RunOptions::new(RunTrigger::Schedule, RunMode::Apply),
        );
        is_send(&run);
    }
}
