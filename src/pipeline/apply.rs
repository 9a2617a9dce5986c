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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::Utc;
use sea_orm::sea_query::{
    Alias, Cond, Expr, ExprTrait, InsertStatement, OnConflict, Query, SimpleExpr,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, IdenStatic, Iterable, RuntimeErr,
    TransactionTrait, Value,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Engine;
use crate::db::entities::{casbin_user_rule, group, syncer_link, user};
use crate::db::{Db, RunCounts, RunMode, Table, TableNames, utc_millis};
use crate::secret::redact_text;

use super::columns::FieldRef;
use super::groups::{CasbinGrouping, DEPARTMENT_GROUP_TYPE, GroupCreate, GroupUpdate};
use super::load::{GROUPING_PTYPE, SchemaFacts, link_kind_text, link_state_text};
use super::map::FieldValue;
use super::plan::{
    FieldChange, LeaverAction, LinkKind, LinkState, NewUser, OwnershipLink, Plan, UserUpdate,
};
use super::report::{Phase, Progress};

/// Progress is logged at info at most this often.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

/// `user.type` of the users syncerd creates.
const NORMAL_USER: &str = "normal-user";
/// `user.register_type` of users a syncer creates.
const REGISTER_TYPE: &str = "Add Users";
/// JSON text columns Casdoor writes as `null` for a new user (nil slices and structs).
const NULL_JSON_USER_COLUMNS: &[&str] = &[
    "recovery_codes",
    "face_ids",
    "cart",
    "roles",
    "permissions",
    "mfa_items",
    "application_scopes",
];

/// Bind parameters one statement may carry on `engine`.
fn bind_limit(engine: Engine) -> usize {
    match engine {
        Engine::Sqlite => 32_766,
        Engine::MySql | Engine::Postgres => 65_535,
    }
}

/// Rows per multi-row statement when each row binds `params_per_row` values (plus `fixed`).
fn rows_per_statement(engine: Engine, params_per_row: usize, fixed: usize) -> usize {
    (bind_limit(engine).saturating_sub(fixed) / params_per_row.max(1)).max(1)
}

/// Splits `rows` into the statements that write them: as many full statements as fit under the
/// bind limit, then, on SQLite and MySQL/MariaDB, the rest in power-of-two pieces (138 rows as
/// 128 + 8 + 2).
///
/// Every distinct row count is a statement the driver prepares and caches per connection. With
/// counts that follow each batch's content (casbin rows, links) a run would prepare a new one
/// every batch and the cache would evict one each time. On MySQL/MariaDB the eviction's
/// `COM_STMT_CLOSE` ahead of the next `COM_STMT_EXECUTE` meets Nagle's algorithm and the
/// server's delayed ACK: 40 ms lost per batch, 24.5 s instead of 15 s for 100,000 users. On
/// SQLite each preparation is compiled again in this process. Power-of-two pieces bound a
/// table's shapes to about 1 + log2(rows per statement), all of which stay cached.
///
/// PostgreSQL keeps the fewest statements instead: evictions cost it nothing measurable, but
/// over TCP each statement risks the same delayed ACK (sqlx sets no `TCP_NODELAY`), and the
/// pieces made a 100,000-user import 47 s instead of 38 s.
fn statement_chunks<T>(
    rows: &[T],
    engine: Engine,
    params_per_row: usize,
    fixed: usize,
) -> impl Iterator<Item = &[T]> {
    let full = rows_per_statement(engine, params_per_row, fixed);
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let take = if rest.len() >= full || engine == Engine::Postgres {
            full
        } else {
            1_usize << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        Some(head)
    })
}

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
    /// Cancelled at a safe point: the remaining batches were not written.
    pub interrupted: bool,
    pub failure: Option<ApplyError>,
}

/// A user row write other than an insert.
#[derive(Debug, Clone, Copy)]
enum RowUpdate<'p> {
    Directory(&'p UserUpdate),
    Leaver(&'p LeaverAction),
}

impl RowUpdate<'_> {
    fn changes(&self) -> &[FieldChange] {
        match self {
            RowUpdate::Directory(u) => &u.changes,
            RowUpdate::Leaver(l) => &l.changes,
        }
    }
}

/// Everything written together or not at all.
#[derive(Debug)]
struct Unit<'p> {
    subject: Subject,
    group_create: Option<&'p GroupCreate>,
    group_update: Option<&'p GroupUpdate>,
    user_create: Option<&'p NewUser>,
    user_update: Option<RowUpdate<'p>>,
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

    /// Adds what this unit did, once it is committed, to `outcome`.
    fn count(&self, outcome: &mut ApplyOutcome, token_table: bool, session_table: bool) {
        let c = &mut outcome.counts;
        c.created += u64::from(self.user_create.is_some());
        c.updated += u64::from(matches!(self.user_update, Some(RowUpdate::Directory(_))));
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
            || matches!(self.user_update, Some(RowUpdate::Directory(u)) if u.groups.is_some())
            || matches!(self.user_update, Some(RowUpdate::Leaver(l))
                if l.changes.iter().any(|c| c.column == "groups"));
        c.memberships_changed += u64::from(
            groups_written || !self.casbin_add.is_empty() || !self.casbin_remove.is_empty(),
        );
        outcome.tokens_revoked += u64::from(self.revoke_tokens && token_table);
        outcome.sessions_deleted += u64::from(self.revoke_tokens && session_table);
    }
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
        unit.user_update = Some(RowUpdate::Directory(u));
    }
    for l in plan.leavers.iter().filter(|l| !l.changes.is_empty()) {
        users
            .entry(l.name.as_str())
            .or_insert_with(|| Unit::user(Some(&l.userid), &l.name))
            .user_update = Some(RowUpdate::Leaver(l));
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

/// Whether an error means the database cannot be worked with right now (connection lost, pool
/// exhausted, lock or statement timeout, deadlock), as opposed to rejecting this data. Such an
/// error stops the apply instead of being retried row by row.
fn is_systemic(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    let sqlx_error = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match &**sqlx_error {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::Protocol(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed
        | SqlxError::BeginFailed => true,
        SqlxError::Database(db_err) => {
            let code = db_err.code().unwrap_or_default();
            if db_err
                .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                .is_some()
            {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                return code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
            }
            if let Some(mysql) =
                db_err.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                && matches!(mysql.number(), 1205 | 1213)
            {
                // Lock wait timeout, deadlock.
                return true;
            }
            // SQLSTATE classes: 08 connection, 40 rollback (deadlock, serialization),
            // 53 resources, 57 operator intervention (statement timeout, shutdown);
            // 55P03 lock not available.
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }
        _ => false,
    }
}

fn db_message(err: &DbErr) -> String {
    redact_text(&err.to_string())
}

/// Builds and runs the statements of a batch of units.
struct Writer<'a> {
    engine: Engine,
    organization: &'a str,
    syncer: &'a str,
    run_id: Option<i64>,
    now: &'a str,
    now_utc: String,
    token_table: bool,
    session_table: bool,
    tables: TableNames,
    /// `<org>/<syncer>`, the `register_source` of every new user.
    register_source: String,
    user_columns: Vec<user::Column>,
    user_index: HashMap<&'static str, usize>,
    user_template: Vec<Value>,
}

fn text(s: &str) -> Value {
    Value::String(Some(s.to_owned()))
}

fn field_value(value: FieldRef<'_>) -> Value {
    match value {
        FieldRef::Text(s) => text(s),
        FieldRef::Bool(b) => Value::Bool(Some(b)),
        FieldRef::Int(i) => Value::Int(Some(i32::try_from(i).unwrap_or(if i < 0 {
            i32::MIN
        } else {
            i32::MAX
        }))),
    }
}

/// Casdoor's insert value of a user column nobody set: zero values, JSON defaults.
fn user_default(column: user::Column) -> Value {
    use sea_orm::sea_query::ColumnType;
    let name = column.as_str();
    match name {
        "type" => return text(NORMAL_USER),
        "register_type" => return text(REGISTER_TYPE),
        "properties" => return text("{}"),
        "address" => return text("[]"),
        "groups" => return text("[]"),
        n if NULL_JSON_USER_COLUMNS.contains(&n) => return text("null"),
        _ => {}
    }
    match column.def().get_column_type() {
        ColumnType::Boolean => Value::Bool(Some(false)),
        ColumnType::Integer => Value::Int(Some(0)),
        ColumnType::BigInteger => Value::BigInt(Some(0)),
        ColumnType::Double | ColumnType::Float => Value::Double(Some(0.0)),
        // Every BLOB column of `user` holds JSON (addresses, webauthnCredentials,
        // managedAccounts, mfaAccounts): Go writes nil as `null`.
        ColumnType::Blob | ColumnType::Binary(_) | ColumnType::VarBinary(_) => {
            Value::Bytes(Some(b"null".to_vec()))
        }
        _ => text(""),
    }
}

/// The users of `units` newly forbidden or deleted: their tokens are expired and their
/// sessions deleted, as Casdoor forces such a user offline.
fn revoked_names<'u>(units: &[&'u Unit<'_>]) -> Vec<&'u str> {
    units
        .iter()
        .filter(|u| u.revoke_tokens)
        .filter_map(|u| u.user_name())
        .collect()
}

impl<'a> Writer<'a> {
    fn new(settings: &ApplySettings<'a>, db: &Db) -> Self {
        let engine = db.engine();
        let user_columns: Vec<user::Column> = user::Column::iter().collect();
        let user_index = user_columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let user_template = user_columns.iter().map(|c| user_default(*c)).collect();
        Self {
            engine,
            organization: settings.organization,
            syncer: settings.syncer,
            run_id: settings.run_id,
            now: settings.now,
            now_utc: utc_millis(Utc::now()),
            token_table: settings.facts.token_table,
            session_table: settings.facts.session_table,
            tables: db.tables().clone(),
            register_source: format!("{}/{}", settings.organization, settings.syncer),
            user_columns,
            user_index,
            user_template,
        }
    }

    fn user_column(&self, name: &str) -> Result<user::Column, DbErr> {
        self.user_index
            .get(name)
            .and_then(|i| self.user_columns.get(*i).copied())
            .ok_or_else(|| DbErr::Custom(format!("`{name}` is not a column of table user")))
    }

    /// The 181 values of a new user row, in column order.
    fn user_row(&self, new: &NewUser) -> Result<Vec<SimpleExpr>, DbErr> {
        let mut row = self.user_template.clone();
        let mut set = |column: &str, value: Value| -> Result<(), DbErr> {
            let i = self.user_index.get(column).copied().ok_or_else(|| {
                DbErr::Custom(format!("`{column}` is not a column of table user"))
            })?;
            if let Some(slot) = row.get_mut(i) {
                *slot = value;
            }
            Ok(())
        };
        for (column, value) in new.values.iter() {
            if let Some(value) = value {
                set(column, field_value(value))?;
            }
        }
        set("owner", text(self.organization))?;
        set("name", text(&new.name))?;
        set("created_time", text(self.now))?;
        set("updated_time", text(self.now))?;
        set("hash", text(&new.hash.as_text()))?;
        set("pre_hash", text(&new.hash.as_text()))?;
        set("register_source", text(&self.register_source))?;
        set("dingtalk", text(&new.dingtalk))?;
        set("groups", text(&new.groups))?;
        Ok(row.into_iter().map(SimpleExpr::from).collect())
    }

    fn user_update_values(
        &self,
        update: RowUpdate<'_>,
    ) -> Result<Vec<(user::Column, Value)>, DbErr> {
        let mut values = Vec::new();
        for change in update.changes() {
            values.push((
                self.user_column(&change.column)?,
                field_value(change.new.as_ref()),
            ));
        }
        if let RowUpdate::Directory(u) = update {
            if let Some(hash) = &u.hash {
                values.push((user::Column::Hash, text(hash)));
                values.push((user::Column::PreHash, text(hash)));
            }
            if let Some(dingtalk) = &u.dingtalk {
                values.push((user::Column::Dingtalk, text(dingtalk)));
            }
            if let Some(groups) = &u.groups {
                values.push((user::Column::Groups, text(groups)));
            }
        }
        values.push((user::Column::UpdatedTime, text(self.now)));
        Ok(values)
    }

    async fn write(&self, txn: &DatabaseTransaction, units: &[&Unit<'_>]) -> Result<(), DbErr> {
        self.insert_groups(txn, units).await?;
        for unit in units {
            if let Some(g) = unit.group_update.filter(|g| !g.changes.is_empty()) {
                self.update_group(txn, g).await?;
            }
        }
        self.insert_users(txn, units).await?;
        for unit in units {
            if let (Some(update), Some(name)) = (unit.user_update, unit.user_name()) {
                let values = self.user_update_values(update)?;
                let stmt = Query::update()
                    .table(self.tables.aliased(Table::User))
                    .values(values.into_iter().map(|(c, v)| (c, Expr::from(v))))
                    .and_where(user::Column::Owner.eq(self.organization))
                    .and_where(user::Column::Name.eq(name))
                    .to_owned();
                txn.execute(&stmt).await?;
            }
        }
        self.delete_groupings(txn, units).await?;
        self.insert_groupings(txn, units).await?;
        self.upsert_links(txn, units).await?;
        self.delete_links(txn, units).await?;
        self.revoke_tokens(txn, units).await?;
        self.delete_sessions(txn, units).await
    }

    async fn insert_groups(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        let creates: Vec<&GroupCreate> = units.iter().filter_map(|u| u.group_create).collect();
        let columns = [
            group::Column::Owner,
            group::Column::Name,
            group::Column::CreatedTime,
            group::Column::UpdatedTime,
            group::Column::DisplayName,
            group::Column::Manager,
            group::Column::ContactEmail,
            group::Column::Type,
            group::Column::ParentId,
            group::Column::IsTopGroup,
            group::Column::Title,
            group::Column::Key,
            group::Column::Children,
            group::Column::IsEnabled,
            group::Column::GidNumber,
            group::Column::Properties,
        ];
        for chunk in statement_chunks(&creates, self.engine, columns.len(), 0) {
            let mut stmt = Query::insert()
                .into_table(self.tables.iden(Table::Group))
                .columns(columns)
                .to_owned();
            for g in chunk {
                let row: Vec<SimpleExpr> = vec![
                    text(self.organization).into(),
                    text(&g.name).into(),
                    text(&g.created_time).into(),
                    text(&g.created_time).into(),
                    text(&g.display_name).into(),
                    text("").into(),
                    text("").into(),
                    text(DEPARTMENT_GROUP_TYPE).into(),
                    text(&g.parent_id).into(),
                    Value::Bool(Some(g.is_top_group)).into(),
                    text("").into(),
                    text("").into(),
                    text("null").into(),
                    Value::Bool(Some(true)).into(),
                    Value::Int(Some(0)).into(),
                    text("null").into(),
                ];
                values_row(&mut stmt, row)?;
            }
            txn.execute(&stmt).await?;
        }
        Ok(())
    }

    async fn update_group(&self, txn: &DatabaseTransaction, g: &GroupUpdate) -> Result<(), DbErr> {
        let mut values = Vec::new();
        for change in &g.changes {
            let column = match change.column.as_str() {
                "display_name" => group::Column::DisplayName,
                "parent_id" => group::Column::ParentId,
                "is_top_group" => group::Column::IsTopGroup,
                other => {
                    return Err(DbErr::Custom(format!(
                        "`{other}` is not a group column syncerd writes"
                    )));
                }
            };
            values.push((column, field_value(change.new.as_ref())));
        }
        values.push((group::Column::UpdatedTime, text(self.now)));
        let stmt = Query::update()
            .table(self.tables.aliased(Table::Group))
            .values(values.into_iter().map(|(c, v)| (c, Expr::from(v))))
            .and_where(group::Column::Owner.eq(self.organization))
            .and_where(group::Column::Name.eq(g.name.as_str()))
            .to_owned();
        txn.execute(&stmt).await.map(|_| ())
    }

    async fn insert_users(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        let creates: Vec<&NewUser> = units.iter().filter_map(|u| u.user_create).collect();
        for chunk in statement_chunks(&creates, self.engine, self.user_columns.len(), 0) {
            let mut stmt = Query::insert()
                .into_table(self.tables.iden(Table::User))
                .columns(self.user_columns.iter().copied())
                .to_owned();
            for new in chunk {
                values_row(&mut stmt, self.user_row(new)?)?;
            }
            txn.execute(&stmt).await?;
        }
        Ok(())
    }

    async fn delete_groupings(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        let rules: Vec<&CasbinGrouping> = units
            .iter()
            .flat_map(|u| u.casbin_remove.iter().copied())
            .collect();
        for chunk in statement_chunks(&rules, self.engine, 2, 1) {
            let mut any = Cond::any();
            for rule in chunk {
                any = any.add(
                    Cond::all()
                        .add(casbin_user_rule::Column::V0.eq(rule.v0.as_str()))
                        .add(casbin_user_rule::Column::V1.eq(rule.v1.as_str())),
                );
            }
            let stmt = Query::delete()
                .from_table(casbin_user_rule::Entity)
                .and_where(casbin_user_rule::Column::Ptype.eq(GROUPING_PTYPE))
                .cond_where(any)
                .to_owned();
            txn.execute(&stmt).await?;
        }
        Ok(())
    }

    async fn insert_groupings(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        let rules: Vec<&CasbinGrouping> = units
            .iter()
            .flat_map(|u| u.casbin_add.iter().copied())
            .collect();
        let columns = [
            casbin_user_rule::Column::Ptype,
            casbin_user_rule::Column::V0,
            casbin_user_rule::Column::V1,
            casbin_user_rule::Column::V2,
            casbin_user_rule::Column::V3,
            casbin_user_rule::Column::V4,
            casbin_user_rule::Column::V5,
        ];
        for chunk in statement_chunks(&rules, self.engine, columns.len(), 0) {
            let mut stmt = Query::insert()
                .into_table(casbin_user_rule::Entity)
                .columns(columns)
                .to_owned();
            for rule in chunk {
                let row: Vec<SimpleExpr> = vec![
                    text(GROUPING_PTYPE).into(),
                    text(&rule.v0).into(),
                    text(&rule.v1).into(),
                    text("").into(),
                    text("").into(),
                    text("").into(),
                    text("").into(),
                ];
                values_row(&mut stmt, row)?;
            }
            txn.execute(&stmt).await?;
        }
        Ok(())
    }

    /// Inserts or overwrites links by (syncer, kind, external_id). A new link's
    /// `first_seen_run` and `created_at` are kept on overwrite; `last_seen_run` moves to this
    /// run for present links only (a left link was not seen).
    async fn upsert_links(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        use syncer_link::Column as L;
        let links: Vec<&OwnershipLink> =
            units.iter().flat_map(|u| u.links.iter().copied()).collect();
        let columns = [
            L::SyncerName,
            L::Kind,
            L::ExternalId,
            L::Organization,
            L::CasdoorName,
            L::ContentHash,
            L::State,
            L::LeftAction,
            L::FirstSeenRun,
            L::LastSeenRun,
            L::CreatedAt,
            L::UpdatedAt,
            L::CasdoorId,
            L::CasdoorCreatedTime,
            L::Adopted,
        ];
        for state in [LinkState::Present, LinkState::Left] {
            let of_state: Vec<&&OwnershipLink> =
                links.iter().filter(|l| l.state == state).collect();
            let mut update = vec![
                L::Organization,
                L::CasdoorName,
                L::ContentHash,
                L::State,
                L::LeftAction,
                L::UpdatedAt,
                L::CasdoorId,
                L::CasdoorCreatedTime,
                L::Adopted,
            ];
            if state == LinkState::Present {
                update.push(L::LastSeenRun);
            }
            for chunk in statement_chunks(&of_state, self.engine, columns.len(), 0) {
                let mut stmt = Query::insert()
                    .into_table(self.tables.iden(Table::SyncerLink))
                    .columns(columns)
                    .on_conflict(
                        OnConflict::columns([L::SyncerName, L::Kind, L::ExternalId])
                            .update_columns(update.clone())
                            .to_owned(),
                    )
                    .to_owned();
                for link in chunk {
                    let last_seen = match state {
                        LinkState::Present => self.run_id,
                        LinkState::Left => None,
                    };
                    let row: Vec<SimpleExpr> = vec![
                        text(self.syncer).into(),
                        text(link_kind_text(link.kind)).into(),
                        text(&link.external_id).into(),
                        text(self.organization).into(),
                        text(&link.casdoor_name).into(),
                        text(&link.content_hash.as_text()).into(),
                        text(link_state_text(link.state)).into(),
                        Value::String(link.left_action.map(|a| a.as_str().to_owned())).into(),
                        Value::BigInt(self.run_id).into(),
                        Value::BigInt(last_seen).into(),
                        text(&self.now_utc).into(),
                        text(&self.now_utc).into(),
                        Value::String(link.row.as_ref().map(|r| r.id.clone())).into(),
                        Value::String(link.row.as_ref().map(|r| r.created_time.clone())).into(),
                        Value::Bool((link.kind == LinkKind::User).then_some(link.adopted)).into(),
                    ];
                    values_row(&mut stmt, row)?;
                }
                txn.execute(&stmt).await?;
            }
        }
        Ok(())
    }

    async fn delete_links(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        use syncer_link::Column as L;
        for kind in [LinkKind::User, LinkKind::Group] {
            let ids: Vec<&str> = units
                .iter()
                .flat_map(|u| u.link_deletes.iter())
                .filter(|l| l.kind == kind)
                .map(|l| l.external_id.as_str())
                .collect();
            for chunk in statement_chunks(&ids, self.engine, 1, 2) {
                let stmt = Query::delete()
                    .from_table(self.tables.iden(Table::SyncerLink))
                    .and_where(Expr::col(L::SyncerName).eq(self.syncer))
                    .and_where(Expr::col(L::Kind).eq(link_kind_text(kind)))
                    .and_where(Expr::col(L::ExternalId).is_in(chunk.iter().copied()))
                    .to_owned();
                txn.execute(&stmt).await?;
            }
        }
        Ok(())
    }

    /// Casdoor's own revocation: `UPDATE token SET expires_in = 0 WHERE organization = ? AND
    /// "user" = ?` (spec §9), for users newly forbidden or deleted.
    async fn revoke_tokens(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        if !self.token_table {
            return Ok(());
        }
        let names = revoked_names(units);
        for chunk in statement_chunks(&names, self.engine, 1, 2) {
            let stmt = Query::update()
                .table(self.tables.iden(Table::Token))
                .value(Alias::new("expires_in"), 0_i32)
                .and_where(Expr::col(Alias::new("organization")).eq(self.organization))
                .and_where(Expr::col(Alias::new("user")).is_in(chunk.iter().copied()))
                .to_owned();
            txn.execute(&stmt).await?;
        }
        Ok(())
    }

    /// Casdoor's DeleteUser forces the user offline by deleting its `session` rows (key
    /// `owner` = organization, `name` = user name, `application`); so does forbidding or
    /// deleting a user here, for every application.
    async fn delete_sessions(
        &self,
        txn: &DatabaseTransaction,
        units: &[&Unit<'_>],
    ) -> Result<(), DbErr> {
        if !self.session_table {
            return Ok(());
        }
        let names = revoked_names(units);
        for chunk in statement_chunks(&names, self.engine, 1, 1) {
            let stmt = Query::delete()
                .from_table(self.tables.iden(Table::Session))
                .and_where(Expr::col(Alias::new("owner")).eq(self.organization))
                .and_where(Expr::col(Alias::new("name")).is_in(chunk.iter().copied()))
                .to_owned();
            txn.execute(&stmt).await?;
        }
        Ok(())
    }
}

fn values_row(stmt: &mut InsertStatement, row: Vec<SimpleExpr>) -> Result<(), DbErr> {
    stmt.values(row)
        .map(|_| ())
        .map_err(|e| DbErr::Custom(format!("building an INSERT: {e}")))
}

/// PostgreSQL waits for a row lock forever by default; a batch blocked by another writer
/// (Casdoor itself) gives up after this and the run fails saying so. MySQL/MariaDB stop waiting
/// after `innodb_lock_wait_timeout` (50 s by default), SQLite after the pool's busy timeout.
const POSTGRES_TIMEOUTS: [&str; 2] = [
    "SET LOCAL lock_timeout = '60s'",
    "SET LOCAL statement_timeout = '300s'",
];

/// A write transaction whose statements cannot wait forever.
async fn begin_bounded(db: &Db) -> Result<DatabaseTransaction, DbErr> {
    let txn = db.begin_write().await?;
    if db.engine() == Engine::Postgres {
        for sql in POSTGRES_TIMEOUTS {
            if let Err(e) = txn.execute_unprepared(sql).await {
                let _ = txn.rollback().await;
                return Err(e);
            }
        }
    }
    Ok(txn)
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

    /// Writes `units` in one transaction, committed when every statement succeeds.
    async fn write(&self, writer: &Writer<'_>, units: &[&Unit<'_>]) -> Result<(), DbErr> {
        // One batch per turn: this process's other writers (a lease renewal, a run record)
        // go between two batches instead of starving behind them.
        let _turn = match self {
            Scope::Pool(db) => Some(db.write_turn().await?),
            Scope::DryRun(_) => None,
        };
        let txn = self.begin().await?;
        match writer.write(&txn, units).await {
            Ok(()) => txn.commit().await,
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

/// Writes `plan`. Never panics and never returns early without saying why: a fatal database
/// problem is in [`ApplyOutcome::failure`], rejected rows in [`ApplyOutcome::row_errors`].
pub async fn apply_plan(db: &Db, plan: &Plan, settings: ApplySettings<'_>) -> ApplyOutcome {
    let units = build_units(plan, settings.organization);
    let writer = Writer::new(&settings, db);
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
        match scope.write(&writer, batch).await {
            Ok(()) => {
                for unit in batch {
                    unit.count(&mut outcome, writer.token_table, writer.session_table);
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
                for unit in batch {
                    match scope.write(&writer, &[unit]).await {
                        Ok(()) => {
                            unit.count(&mut outcome, writer.token_table, writer.session_table);
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
    use std::collections::BTreeSet;

    use super::*;
    use crate::pipeline::columns::Columns;
    use crate::pipeline::hash::ContentHash;
    use crate::pipeline::plan::{LeftAction, Plan};

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

    #[test]
    fn new_users_get_casdoors_insert_defaults() {
        let get = |name: &str| {
            user::Column::iter()
                .find(|c| c.as_str() == name)
                .map(user_default)
        };
        assert_eq!(get("type"), Some(text("normal-user")));
        assert_eq!(get("register_type"), Some(text("Add Users")));
        assert_eq!(get("properties"), Some(text("{}")));
        assert_eq!(get("address"), Some(text("[]")));
        assert_eq!(get("roles"), Some(text("null")));
        assert_eq!(get("email_verified"), Some(Value::Bool(Some(false))));
        assert_eq!(get("score"), Some(Value::Int(Some(0))));
        assert_eq!(get("balance"), Some(Value::Double(Some(0.0))));
        assert_eq!(
            get("webauthnCredentials"),
            Some(Value::Bytes(Some(b"null".to_vec())))
        );
        assert_eq!(get("github"), Some(text("")));
    }

    #[test]
    fn statements_stay_under_the_bind_parameter_limits() {
        assert_eq!(rows_per_statement(Engine::Sqlite, 181, 0), 181);
        assert_eq!(rows_per_statement(Engine::Postgres, 181, 0), 362);
        assert_eq!(rows_per_statement(Engine::MySql, 181, 0), 362);
        assert!(rows_per_statement(Engine::Sqlite, 2, 1) * 2 < 32_766);
        assert_eq!(rows_per_statement(Engine::Sqlite, 100_000, 0), 1);
    }

    fn sizes(rows: usize, engine: Engine, params_per_row: usize) -> Vec<usize> {
        let rows: Vec<usize> = (0..rows).collect();
        let chunks: Vec<&[usize]> = statement_chunks(&rows, engine, params_per_row, 0).collect();
        let rejoined: Vec<usize> = chunks.concat();
        assert_eq!(rejoined, rows, "every row once, in order");
        chunks.iter().map(|c| c.len()).collect()
    }

    #[test]
    fn statements_are_full_then_power_of_two_pieces() {
        assert_eq!(sizes(500, Engine::MySql, 181), vec![362, 128, 8, 2]);
        assert_eq!(sizes(1_000, Engine::MySql, 181), vec![362, 362, 256, 16, 4]);
        assert_eq!(sizes(181, Engine::Sqlite, 181), vec![181]);
        assert_eq!(sizes(7, Engine::Sqlite, 181), vec![4, 2, 1]);
        assert!(sizes(0, Engine::Postgres, 7).is_empty());
        assert_eq!(sizes(3, Engine::Sqlite, 100_000), vec![1, 1, 1]);
        assert_eq!(sizes(500, Engine::Postgres, 181), vec![362, 138]);
    }

    #[test]
    fn any_batch_of_casbin_rows_needs_few_statement_shapes() {
        // Casbin rows per batch follow the batch's users: every count up to 5,000 together
        // prepares 1 + log2(5,000) shapes, not 5,000.
        let mut shapes = BTreeSet::new();
        for rows in 1..=5_000 {
            shapes.extend(sizes(rows, Engine::MySql, 7));
        }
        assert_eq!(shapes.len(), 13, "{shapes:?}");
    }
}
