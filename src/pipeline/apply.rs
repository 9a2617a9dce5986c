//! Writes a [`Plan`] to the database, exactly per its apply contract.
//!
//! The plan is cut into *units*: one user row (insert, update or leaver change) together with its
//! casbin rows, its ownership link and its token revocation; one group row with its link; or one
//! stale link to delete. Units are written in batches of `sync.batch_size`, one transaction per
//! batch. When the database rejects a batch it is rolled back and retried unit by unit, each in
//! its own transaction: a rejected unit becomes a [`RowError`] and writes nothing at all (so a
//! user whose row failed gets no link and no casbin rows), the rest commits.
//!
//! Cancellation is honoured between batches only, so every batch commits or rolls back whole.
//! A dry run takes the same path inside one outer transaction (batches become savepoints) that is
//! rolled back at the end: the database checks every constraint exactly as in a real run, and
//! nothing stays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sea_orm::{DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::db::casdoor::{
    Batch, SchemaFacts, UserRowUpdate, Writer, begin_bounded, is_systemic, link_kind_text,
    syncer_owns_rows,
};
use crate::db::changes::{ChangeAction, ChangeDetail, NewChange};
use crate::db::{Db, RunCounts, RunMode};
use crate::secret::redact_text;

use super::columns::FieldValue;
use super::model::{
    CasbinGrouping, FieldChange, GroupCreate, GroupUpdate, LinkKind, NewUser, OwnershipLink, Plan,
};
use super::report::{BatchStats, Phase, Progress};

/// Progress is logged at info at most this often.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

/// How one apply is carried out.
#[derive(Debug, Clone)]
pub struct ApplySettings<'a> {
    pub organization: &'a str,
    pub syncer: &'a str,
    /// The run writing the links (`first_seen_run`, `last_seen_run`); `None` in a dry run.
    pub run_id: Option<i64>,
    /// Units per transaction (at least 1).
    pub batch_size: usize,
    pub mode: RunMode,
    pub facts: SchemaFacts,
    /// Casdoor's timestamp text of this run, for `updated_time`.
    pub now: &'a str,
    pub cancel: &'a CancellationToken,
    pub progress: Option<&'a watch::Sender<Progress>>,
}

/// What a unit of apply is about, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user row; `userid` is unknown only for a membership-only unit.
    User {
        userid: Option<String>,
        name: String,
    },
    Department {
        dept_id: String,
        group: String,
    },
    /// A stale ownership link.
    Link {
        kind: LinkKind,
        external_id: String,
    },
}

/// A unit the database rejected; nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub subject: Subject,
    /// The database's message, redacted.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.subject {
            Subject::User {
                userid: Some(userid),
                name,
            } => write!(
                f,
                "the database rejected the row of DingTalk user {userid:?} (user {name:?}); nothing of it was written: {}",
                self.message
            ),
            Subject::User { userid: None, name } => write!(
                f,
                "the database rejected the memberships of user {name:?}; nothing of them was written: {}",
                self.message
            ),
            Subject::Department { dept_id, group } => write!(
                f,
                "the database rejected group {group:?} of department {dept_id}; nothing of it was written: {}",
                self.message
            ),
            Subject::Link { kind, external_id } => write!(
                f,
                "the database rejected deleting the {} link of {external_id:?}: {}",
                link_kind_text(*kind),
                self.message
            ),
        }
    }
}

impl RowError {
    /// The DingTalk userid, for user rows.
    pub fn userid(&self) -> Option<&str> {
        match &self.subject {
            Subject::User { userid, .. } => userid.as_deref(),
            Subject::Link {
                kind: LinkKind::User,
                external_id,
            } => Some(external_id),
            _ => None,
        }
    }

    /// The department id, for group rows.
    pub fn department(&self) -> Option<i64> {
        match &self.subject {
            Subject::Department { dept_id, .. } => dept_id.parse().ok(),
            _ => None,
        }
    }
}

/// A failure that stops the apply (the database cannot be talked to, or a dry run's outer
/// transaction failed). Batches committed before it stay committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "writing batch {batch} of {batches} to the database failed: {message}; the batches before it were committed, \
         the rest was not written (the next run picks it up)"
    )]
    Batch {
        batch: usize,
        batches: usize,
        message: String,
    },
    #[error("the dry run could not open its transaction: {message}")]
    DryRunBegin { message: String },
    #[error("the dry run could not roll back its transaction: {message}")]
    DryRunRollback { message: String },
}

/// The result of [`apply_plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// What the committed units did (in a dry run: what they would have done): the write
    /// counters and `rows_rejected`; the run adds the others.
    pub counts: RunCounts,
    /// Users whose tokens were expired.
    pub tokens_revoked: u64,
    /// Users whose rows in Casdoor's `session` table were deleted.
    pub sessions_deleted: u64,
    pub row_errors: Vec<RowError>,
    pub rows_written: u64,
    pub rows_total: u64,
    /// How the batches were written.
    pub batches: BatchStats,
    /// Cancelled at a safe point: the remaining batches were not written.
    pub interrupted: bool,
    pub failure: Option<ApplyError>,
}

/// Everything written together or not at all.
#[derive(Debug)]
struct Unit<'p> {
    subject: Subject,
    group_create: Option<&'p GroupCreate>,
    group_update: Option<&'p GroupUpdate>,
    user_create: Option<&'p NewUser>,
    user_update: Option<UserRowUpdate<'p>>,
    casbin_remove: Vec<&'p CasbinGrouping>,
    casbin_add: Vec<&'p CasbinGrouping>,
    links: Vec<&'p OwnershipLink>,
    link_deletes: Vec<&'p OwnershipLink>,
    /// Expire this user's tokens and delete its sessions (newly forbidden or deleted).
    revoke_tokens: bool,
}

impl<'p> Unit<'p> {
    fn new(subject: Subject) -> Self {
        Self {
            subject,
            group_create: None,
            group_update: None,
            user_create: None,
            user_update: None,
            casbin_remove: Vec::new(),
            casbin_add: Vec::new(),
            links: Vec::new(),
            link_deletes: Vec::new(),
            revoke_tokens: false,
        }
    }

    fn user(userid: Option<&str>, name: &str) -> Self {
        Self::new(Subject::User {
            userid: userid.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    fn user_name(&self) -> Option<&str> {
        match &self.subject {
            Subject::User { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The change log's rows of this unit: what it does to its user.
    fn changes(&self) -> Vec<NewChange<'_>> {
        let Subject::User { userid, name } = &self.subject else {
            return Vec::new();
        };
        let change = |action, detail| NewChange {
            userid: userid.as_deref().unwrap_or_default(),
            casdoor_name: name,
            action,
            detail,
        };
        let mut changes = Vec::new();
        if let Some(new) = self.user_create {
            changes.push(change(
                ChangeAction::Created,
                ChangeDetail::Created {
                    groups: &new.groups,
                },
            ));
        }
        if let Some(update) = self.user_update {
            let (status, fields): (Vec<&FieldChange>, Vec<&FieldChange>) = match update {
                // Everything a leaver action writes belongs to it.
                UserRowUpdate::Leaver(l) => (l.changes.iter().collect(), Vec::new()),
                UserRowUpdate::Directory(u) => u
                    .changes
                    .iter()
                    .partition(|c| STATUS_COLUMNS.contains(&c.column.as_str())),
            };
            match status_action(&status) {
                Some(action) => changes.push(change(action, ChangeDetail::Fields(status))),
                None if !status.is_empty() => {
                    changes.push(change(ChangeAction::Updated, ChangeDetail::Fields(status)))
                }
                None => {}
            }
            if !fields.is_empty() {
                changes.push(change(ChangeAction::Updated, ChangeDetail::Fields(fields)));
            }
        }
        for rule in &self.casbin_remove {
            changes.push(change(
                ChangeAction::GroupRemoved,
                ChangeDetail::Group(group_of(rule)),
            ));
        }
        // A new user's groups are in its `created` row.
        if self.user_create.is_none() {
            for rule in &self.casbin_add {
                changes.push(change(
                    ChangeAction::GroupAdded,
                    ChangeDetail::Group(group_of(rule)),
                ));
            }
        }
        changes
    }

    /// Adds what this unit did, once it is committed, to `outcome`.
    fn count(&self, outcome: &mut ApplyOutcome, token_table: bool, session_table: bool) {
        let c = &mut outcome.counts;
        c.created += u64::from(self.user_create.is_some());
        c.updated += u64::from(matches!(
            self.user_update,
            Some(UserRowUpdate::Directory(_))
        ));
        c.groups_created += u64::from(self.group_create.is_some());
        c.groups_updated += u64::from(self.group_update.is_some_and(|g| !g.changes.is_empty()));
        if let Some(update) = &self.user_update {
            for change in update.changes() {
                match (change.column.as_str(), &change.new) {
                    ("is_forbidden", FieldValue::Bool(true)) => c.forbidden += 1,
                    ("is_forbidden", FieldValue::Bool(false)) => c.unforbidden += 1,
                    ("is_deleted", FieldValue::Bool(true)) => c.deleted += 1,
                    _ => {}
                }
            }
        }
        let groups_written = self.user_create.is_some_and(|c| c.groups != "[]")
            || matches!(self.user_update, Some(UserRowUpdate::Directory(u)) if u.groups.is_some())
            || matches!(self.user_update, Some(UserRowUpdate::Leaver(l))
                if l.changes.iter().any(|c| c.column == "groups"));
        c.memberships_changed += u64::from(
            groups_written || !self.casbin_add.is_empty() || !self.casbin_remove.is_empty(),
        );
        outcome.tokens_revoked += u64::from(self.revoke_tokens && token_table);
        outcome.sessions_deleted += u64::from(self.revoke_tokens && session_table);
    }
}

/// The columns a leaver action (or its undoing) writes.
const STATUS_COLUMNS: &[&str] = &["is_forbidden", "is_deleted", "deleted_time"];

/// The group a casbin `g` row names (`org/name`).
fn group_of(rule: &CasbinGrouping) -> &str {
    rule.v1.strip_prefix("group:").unwrap_or(&rule.v1)
}

/// What the status changes of a user row amount to: deleted over forbidden over unforbidden.
fn status_action(changes: &[&FieldChange]) -> Option<ChangeAction> {
    let mut action = None;
    for c in changes {
        match (c.column.as_str(), &c.new) {
            ("is_deleted", FieldValue::Bool(true)) => return Some(ChangeAction::Deleted),
            ("is_forbidden", FieldValue::Bool(true)) => action = Some(ChangeAction::Forbidden),
            ("is_forbidden" | "is_deleted", FieldValue::Bool(false)) => {
                action = action.or(Some(ChangeAction::Unforbidden))
            }
            _ => {}
        }
    }
    action
}

/// What `units` write, gathered by statement.
fn batch<'a>(units: &[&'a Unit<'_>]) -> Batch<'a> {
    let mut batch = Batch::default();
    for unit in units {
        batch.group_creates.extend(unit.group_create);
        batch.group_updates.extend(unit.group_update);
        batch.user_creates.extend(unit.user_create);
        if let (Some(update), Some(name)) = (unit.user_update, unit.user_name()) {
            batch.user_updates.push((name, update));
        }
        batch
            .casbin_remove
            .extend(unit.casbin_remove.iter().copied());
        batch.casbin_add.extend(unit.casbin_add.iter().copied());
        batch.links.extend(unit.links.iter().copied());
        batch.link_deletes.extend(unit.link_deletes.iter().copied());
        if unit.revoke_tokens {
            batch.revoke.extend(unit.user_name());
        }
        batch.changes.extend(unit.changes());
    }
    batch
}

/// Cuts a plan into units: groups first (by department id), then users (by name), then stale
/// links.
/// The units of one plan, in the order they are written: departments by id, users by name,
/// then link deletions. Kept in the maps they were gathered in: copying 100,000 units into one
/// vector doubled their memory at the peak of a first import (67 MB more at 100,000 users).
struct Units<'p> {
    groups: BTreeMap<(i64, String), Unit<'p>>,
    users: BTreeMap<&'p str, Unit<'p>>,
    link_deletes: Vec<Unit<'p>>,
}

impl<'p> Units<'p> {
    fn len(&self) -> usize {
        self.groups.len() + self.users.len() + self.link_deletes.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Unit<'p>> {
        self.groups
            .values()
            .chain(self.users.values())
            .chain(self.link_deletes.iter())
    }
}

fn build_units<'p>(plan: &'p Plan, organization: &str) -> Units<'p> {
    let mut groups: BTreeMap<(i64, String), Unit<'p>> = BTreeMap::new();
    let group_key = |dept: &str| (dept.parse::<i64>().unwrap_or(i64::MAX), dept.to_owned());
    let group_unit = |dept: &str, group: &str| {
        Unit::new(Subject::Department {
            dept_id: dept.to_owned(),
            group: group.to_owned(),
        })
    };
    for g in &plan.group_creates {
        let dept = g.dept_id.to_string();
        groups
            .entry(group_key(&dept))
            .or_insert_with(|| group_unit(&dept, &g.name))
            .group_create = Some(g);
    }
    for g in &plan.group_updates {
        let dept = g.dept_id.to_string();
        groups
            .entry(group_key(&dept))
            .or_insert_with(|| group_unit(&dept, &g.name))
            .group_update = Some(g);
    }

    let mut users: BTreeMap<&'p str, Unit<'p>> = BTreeMap::new();
    for c in &plan.creates {
        users
            .entry(c.name.as_str())
            .or_insert_with(|| Unit::user(Some(&c.userid), &c.name))
            .user_create = Some(c);
    }
    for u in &plan.updates {
        let unit = users
            .entry(u.name.as_str())
            .or_insert_with(|| Unit::user(Some(&u.userid), &u.name));
        unit.user_update = Some(UserRowUpdate::Directory(u));
    }
    for l in plan.leavers.iter().filter(|l| !l.changes.is_empty()) {
        users
            .entry(l.name.as_str())
            .or_insert_with(|| Unit::user(Some(&l.userid), &l.name))
            .user_update = Some(UserRowUpdate::Leaver(l));
    }
    for link in &plan.link_writes {
        match link.kind {
            LinkKind::Group => groups
                .entry(group_key(&link.external_id))
                .or_insert_with(|| group_unit(&link.external_id, &link.casdoor_name))
                .links
                .push(link),
            LinkKind::User => users
                .entry(link.casdoor_name.as_str())
                .or_insert_with(|| Unit::user(Some(&link.external_id), &link.casdoor_name))
                .links
                .push(link),
        }
    }
    let prefix = format!("{organization}/");
    let subject_name = |rule: &'p CasbinGrouping| rule.v0.strip_prefix(prefix.as_str());
    for rule in &plan.casbin_remove {
        if let Some(name) = subject_name(rule) {
            users
                .entry(name)
                .or_insert_with(|| Unit::user(None, name))
                .casbin_remove
                .push(rule);
        }
    }
    for rule in &plan.casbin_add {
        if let Some(name) = subject_name(rule) {
            users
                .entry(name)
                .or_insert_with(|| Unit::user(None, name))
                .casbin_add
                .push(rule);
        }
    }
    for unit in users.values_mut() {
        unit.revoke_tokens = unit.user_update.is_some_and(|u| {
            u.changes().iter().any(|c| {
                matches!(
                    (c.column.as_str(), &c.new),
                    ("is_forbidden" | "is_deleted", FieldValue::Bool(true))
                )
            })
        });
    }

    let link_deletes = plan
        .link_deletes
        .iter()
        .map(|link| {
            let mut unit = Unit::new(Subject::Link {
                kind: link.kind,
                external_id: link.external_id.clone(),
            });
            unit.link_deletes.push(link);
            unit
        })
        .collect();
    Units {
        groups,
        users,
        link_deletes,
    }
}

fn db_message(err: &DbErr) -> String {
    redact_text(&err.to_string())
}

/// Where batches open their transactions: straight on the pool, or as savepoints of a dry
/// run's outer transaction.
enum Scope<'a> {
    Pool(&'a Db),
    DryRun(&'a DatabaseTransaction),
}

impl Scope<'_> {
    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        match self {
            Scope::Pool(db) => begin_bounded(db).await,
            Scope::DryRun(outer) => outer.begin().await,
        }
    }

    /// Writes `units` in one transaction, committed when every statement succeeds; through
    /// COPY when `copy` says the syncer owned nothing when the apply began and the batch only
    /// inserts. Answers whether it copied.
    async fn write(
        &self,
        writer: &Writer<'_>,
        units: &[&Unit<'_>],
        copy: bool,
    ) -> Result<Written, DbErr> {
        let batch = batch(units);
        if copy
            && let Scope::Pool(db) = self
            && batch.inserts_only()
        {
            return writer
                .copy_batch(db, &batch)
                .await
                .map(|()| Written::Copied);
        }
        // One batch per turn: this process's other writers (a lease renewal, a run record)
        // go between two batches instead of starving behind them.
        let _turn = match self {
            Scope::Pool(db) => Some(db.write_turn().await?),
            Scope::DryRun(_) => None,
        };
        let txn = self.begin().await?;
        match writer.write(&txn, &batch).await {
            Ok(()) => txn.commit().await.map(|()| Written::Inserted),
            Err(e) => {
                if let Err(rollback) = txn.rollback().await {
                    debug!(error = %db_message(&rollback), "rolling back a failed batch failed too");
                }
                Err(e)
            }
        }
    }
}

/// Reports progress to the optional channel and, at most every few seconds, to the log.
struct Reporter<'a> {
    sender: Option<&'a watch::Sender<Progress>>,
    last_log: Instant,
}

impl Reporter<'_> {
    fn publish(&mut self, written: u64, total: u64, done: bool) {
        if let Some(sender) = self.sender {
            sender.send_replace(Progress {
                phase: Phase::Applying,
                rows_written: written,
                rows_total: total,
            });
        }
        if done || self.last_log.elapsed() >= PROGRESS_LOG_EVERY {
            info!(rows_written = written, rows_total = total, "applying");
            self.last_log = Instant::now();
        }
    }
}

/// How a batch was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Inserted,
    Copied,
}

/// Whether this apply writes its batches that only insert through COPY: a real run (not dry)
/// on PostgreSQL of a syncer that owns no row yet, its first import. The rows a rejected batch
/// is retried with, one unit at a time, go through INSERT statements.
async fn copies_batches(db: &Db, settings: &ApplySettings<'_>) -> bool {
    if settings.mode != RunMode::Apply || settings.run_id.is_none() || !db.copies_first_import() {
        return false;
    }
    match syncer_owns_rows(db, settings.syncer).await {
        Ok(owns) => !owns,
        Err(e) => {
            debug!(error = %db_message(&e), "could not tell whether this is a first import; writing INSERT statements");
            false
        }
    }
}

/// Writes `plan`. Never panics and never returns early without saying why: a fatal database
/// problem is in [`ApplyOutcome::failure`], rejected rows in [`ApplyOutcome::row_errors`].
pub async fn apply_plan(db: &Db, plan: &Plan, settings: ApplySettings<'_>) -> ApplyOutcome {
    let units = build_units(plan, settings.organization);
    let writer = Writer::new(
        db,
        settings.organization,
        settings.syncer,
        settings.run_id,
        settings.now,
        settings.facts,
    );
    let (token_table, session_table) = (settings.facts.token_table, settings.facts.session_table);
    let batch_size = settings.batch_size.max(1);
    let batches = units.len().div_ceil(batch_size);
    let mut outcome = ApplyOutcome {
        rows_total: units.len() as u64,
        ..ApplyOutcome::default()
    };
    let mut reporter = Reporter {
        sender: settings.progress,
        last_log: Instant::now(),
    };
    reporter.publish(0, outcome.rows_total, false);
    debug!(
        units = units.len(),
        batches,
        batch_size,
        mode = %settings.mode,
        "applying the plan"
    );

    let outer = match settings.mode {
        RunMode::Apply => None,
        RunMode::DryRun => match begin_bounded(db).await {
            Ok(t) => Some(t),
            Err(e) => {
                outcome.failure = Some(ApplyError::DryRunBegin {
                    message: db_message(&e),
                });
                return outcome;
            }
        },
    };
    let scope = match &outer {
        Some(t) => Scope::DryRun(t),
        None => Scope::Pool(db),
    };

    let copy = copies_batches(db, &settings).await;
    let all: Vec<&Unit<'_>> = units.iter().collect();
    'batches: for (index, batch) in all.chunks(batch_size).enumerate() {
        if settings.cancel.is_cancelled() {
            outcome.interrupted = true;
            info!(
                rows_written = outcome.rows_written,
                rows_total = outcome.rows_total,
                "cancelled: stopping before the next batch"
            );
            break;
        }
        match scope.write(&writer, batch, copy).await {
            Ok(written) => {
                outcome.batches.copied += u64::from(written == Written::Copied);
                for unit in batch {
                    unit.count(&mut outcome, token_table, session_table);
                }
            }
            Err(e) if is_systemic(&e) => {
                outcome.failure = Some(ApplyError::Batch {
                    batch: index + 1,
                    batches,
                    message: db_message(&e),
                });
                break;
            }
            Err(e) => {
                debug!(
                    batch = index + 1,
                    error = %db_message(&e),
                    "the database rejected a batch; retrying it row by row"
                );
                outcome.batches.retried += 1;
                for unit in batch {
                    match scope.write(&writer, &[unit], false).await {
                        Ok(_) => {
                            unit.count(&mut outcome, token_table, session_table);
                        }
                        Err(e) if is_systemic(&e) => {
                            outcome.failure = Some(ApplyError::Batch {
                                batch: index + 1,
                                batches,
                                message: db_message(&e),
                            });
                            break 'batches;
                        }
                        Err(e) => {
                            let error = RowError {
                                subject: unit.subject.clone(),
                                message: db_message(&e),
                            };
                            warn!(
                                userid = error.userid().unwrap_or_default(),
                                department = error.department().unwrap_or_default(),
                                "the database rejected a row; it was skipped"
                            );
                            debug!(error = %error, "rejected row");
                            outcome.row_errors.push(error);
                            outcome.counts.rows_rejected += 1;
                        }
                    }
                }
            }
        }
        outcome.rows_written += batch.len() as u64;
        reporter.publish(outcome.rows_written, outcome.rows_total, false);
    }

    if let Some(outer) = outer
        && let Err(e) = outer.rollback().await
        && outcome.failure.is_none()
    {
        outcome.failure = Some(ApplyError::DryRunRollback {
            message: db_message(&e),
        });
    }
    reporter.publish(outcome.rows_written, outcome.rows_total, true);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::columns::Columns;
    use crate::pipeline::hash::ContentHash;
    use crate::pipeline::model::{FieldChange, LeaverAction, LeftAction, LinkState, Plan};

    fn link(kind: LinkKind, external_id: &str, name: &str) -> OwnershipLink {
        OwnershipLink {
            kind,
            external_id: external_id.into(),
            casdoor_name: name.into(),
            content_hash: ContentHash::Empty,
            state: LinkState::Present,
            left_action: None,
            row: None,
            adopted: false,
        }
    }

    fn new_user(name: &str, userid: &str) -> NewUser {
        NewUser {
            name: name.into(),
            userid: userid.into(),
            values: Columns::new(),
            hash: "h".into(),
            dingtalk: userid.into(),
            groups: "[\"acme/1\"]".into(),
        }
    }

    #[test]
    fn a_users_row_casbin_rows_and_link_form_one_unit() {
        let plan = Plan {
            creates: vec![new_user("alice", "u1"), new_user("bob", "u2")],
            casbin_add: vec![
                CasbinGrouping {
                    v0: "acme/alice".into(),
                    v1: "group:acme/1".into(),
                },
                CasbinGrouping {
                    v0: "acme/carol".into(),
                    v1: "group:acme/1".into(),
                },
            ],
            link_writes: vec![
                link(LinkKind::User, "u1", "alice"),
                link(LinkKind::User, "u2", "bob"),
                link(LinkKind::Group, "1", "1"),
            ],
            group_creates: vec![GroupCreate {
                dept_id: 1,
                name: "1".into(),
                display_name: "Acme".into(),
                parent_id: "acme".into(),
                is_top_group: true,
                created_time: "t".into(),
            }],
            leavers: vec![LeaverAction {
                name: "dave".into(),
                userid: "u4".into(),
                action: LeftAction::Forbid,
                changes: vec![FieldChange {
                    column: "is_forbidden".into(),
                    old: FieldValue::Bool(false),
                    new: FieldValue::Bool(true),
                }],
            }],
            ..Plan::default()
        };
        let built = build_units(&plan, "acme");
        let units: Vec<&Unit<'_>> = built.iter().collect();
        assert_eq!(units.len(), 5, "{units:#?}");
        assert!(matches!(units[0].subject, Subject::Department { .. }));
        assert_eq!(units[0].links.len(), 1);
        let alice = &units[1];
        assert_eq!(alice.user_name(), Some("alice"));
        assert!(alice.user_create.is_some());
        assert_eq!(alice.casbin_add.len(), 1);
        assert_eq!(alice.links.len(), 1);
        let counted = |unit: &Unit<'_>, tables: bool| {
            let mut outcome = ApplyOutcome::default();
            unit.count(&mut outcome, tables, tables);
            outcome
        };
        assert_eq!(counted(alice, true).counts.memberships_changed, 1);
        let carol = &units[3];
        assert_eq!(
            carol.subject,
            Subject::User {
                userid: None,
                name: "carol".into()
            }
        );
        let dave = &units[4];
        assert!(dave.revoke_tokens);
        let applied = counted(dave, true);
        assert_eq!((applied.counts.forbidden, applied.tokens_revoked), (1, 1));
        assert_eq!(counted(dave, false).tokens_revoked, 0);
    }
}
