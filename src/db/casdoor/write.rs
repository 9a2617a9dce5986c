//! Writes one [`Batch`] of a plan to Casdoor's tables in a transaction the caller holds:
//! multi-row statements under each engine's bind limit, new users with Casdoor's insert
//! defaults, links upserted by (syncer, kind, external id), and the revocations Casdoor itself
//! does for a user who is forbidden or deleted.

use std::collections::HashMap;

use chrono::Utc;
use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, IdenStatic, Iterable, RuntimeErr,
    Value,
};

use crate::config::Engine;
use crate::db::changes::NewChange;
use crate::db::entities::{casbin_user_rule, group, syncer_link, user};
use crate::db::{Db, Table, TableNames, utc_millis};
use crate::pipeline::columns::FieldRef;
use crate::pipeline::model::{
    CasbinGrouping, FieldChange, GroupCreate, GroupUpdate, LeaverAction, LinkKind, LinkState,
    NewUser, OwnershipLink, UserUpdate,
};

use super::rows::{Shape, SqlCache};
use super::{GROUPING_PTYPE, SchemaFacts, link_kind_text};

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

/// Splits `rows` into the statements that write them: as many rows per statement as fit under
/// the bind limit, then the rest: on SQLite in power-of-two pieces (138 rows as 128 + 8 + 2), on
/// MySQL/MariaDB and PostgreSQL in one last statement.
///
/// Every distinct row count is a statement the driver prepares and caches per connection
/// ([`crate::db`]'s statement caches hold 64). On SQLite a cached statement is a compiled
/// program in this process, and the rest of a batch's casbin rows follows the batch's content:
/// in one piece, every batch would add a new program of thousands of parameters to the cache of
/// its connection until the cache is full, on each of the pool's connections. Power-of-two
/// pieces bound a table's shapes to about 1 + log2(rows per statement), which all stay cached.
///
/// On the servers the statements live on the server. The pieces were there for them too,
/// because with sqlx 0.9.0 (no `TCP_NODELAY`) every extra statement or cache eviction over TCP
/// could wait 40 ms for a delayed ACK; sqlx 0.9.1 sets `TCP_NODELAY` again, and in one benchmark
/// run of a 100,000-user first import (2026-12-07, BENCHMARKS.md) one last statement was
/// faster: MariaDB 36.5 s against 41–47 s with the pieces, PostgreSQL the same (39.4 s, 38.9 s).
pub(super) fn statement_chunks<T>(
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
        let take = if rest.len() >= full || engine != Engine::Sqlite {
            full
        } else {
            1_usize << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        Some(head)
    })
}

/// A user row write other than an insert.
#[derive(Debug, Clone, Copy)]
pub enum UserRowUpdate<'p> {
    Directory(&'p UserUpdate),
    Leaver(&'p LeaverAction),
}

impl UserRowUpdate<'_> {
    /// The user columns this write changes.
    pub fn changes(&self) -> &[FieldChange] {
        match self {
            UserRowUpdate::Directory(u) => &u.changes,
            UserRowUpdate::Leaver(l) => &l.changes,
        }
    }
}

/// A slice of a plan that is written in one transaction, or not at all.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub group_creates: Vec<&'a GroupCreate>,
    pub group_updates: Vec<&'a GroupUpdate>,
    pub user_creates: Vec<&'a NewUser>,
    /// By user name.
    pub user_updates: Vec<(&'a str, UserRowUpdate<'a>)>,
    pub casbin_remove: Vec<&'a CasbinGrouping>,
    pub casbin_add: Vec<&'a CasbinGrouping>,
    pub links: Vec<&'a OwnershipLink>,
    pub link_deletes: Vec<&'a OwnershipLink>,
    /// Users newly forbidden or deleted: their tokens are expired and their sessions deleted,
    /// as Casdoor forces such a user offline.
    pub revoke: Vec<&'a str>,
    /// The change log's rows of the users written (not written in a dry run).
    pub changes: Vec<NewChange<'a>>,
}

impl Batch<'_> {
    /// Whether the batch only inserts: no row to update or delete, no revocation. Its links
    /// are still upserts; only a caller that knows none of them exists may write it through
    /// [`Writer::copy_batch`].
    pub fn inserts_only(&self) -> bool {
        self.group_updates.iter().all(|g| g.changes.is_empty())
            && self.user_updates.is_empty()
            && self.casbin_remove.is_empty()
            && self.link_deletes.is_empty()
            && self.revoke.is_empty()
    }
}

/// Builds and runs the statements of a [`Batch`] for one organization and syncer.
pub struct Writer<'a> {
    pub(super) engine: Engine,
    pub(super) organization: &'a str,
    pub(super) syncer: &'a str,
    pub(super) run_id: Option<i64>,
    pub(super) now: &'a str,
    pub(super) now_utc: String,
    token_table: bool,
    session_table: bool,
    pub(super) tables: TableNames,
    /// `<org>/<syncer>`, the `register_source` of every new user.
    pub(super) register_source: String,
    user_columns: Vec<user::Column>,
    pub(super) user_column_names: Vec<&'static str>,
    pub(super) user_index: HashMap<&'static str, usize>,
    pub(super) user_template: Vec<Value>,
    pub(super) sql_cache: SqlCache,
}

pub(super) fn text(s: &str) -> Value {
    Value::String(Some(s.to_owned()))
}

pub(super) fn field_value(value: FieldRef<'_>) -> Value {
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

impl<'a> Writer<'a> {
    /// A writer of `syncer`'s rows in `organization`; `run_id` goes into the links (`None` in a
    /// dry run), `now` (Casdoor's timestamp text) into `created_time`/`updated_time`.
    pub fn new(
        db: &Db,
        organization: &'a str,
        syncer: &'a str,
        run_id: Option<i64>,
        now: &'a str,
        facts: SchemaFacts,
    ) -> Self {
        let engine = db.engine();
        let user_columns: Vec<user::Column> = user::Column::iter().collect();
        let user_index = user_columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let user_template = user_columns.iter().map(|c| user_default(*c)).collect();
        let user_column_names = user_columns.iter().map(|c| c.as_str()).collect();
        Self {
            engine,
            organization,
            syncer,
            run_id,
            now,
            now_utc: utc_millis(Utc::now()),
            token_table: facts.token_table,
            session_table: facts.session_table,
            tables: db.tables().clone(),
            register_source: format!("{organization}/{syncer}"),
            user_columns,
            user_column_names,
            user_index,
            user_template,
            sql_cache: SqlCache::default(),
        }
    }

    fn user_column(&self, name: &str) -> Result<user::Column, DbErr> {
        self.user_index
            .get(name)
            .and_then(|i| self.user_columns.get(*i).copied())
            .ok_or_else(|| DbErr::Custom(format!("`{name}` is not a column of table user")))
    }

    fn user_update_values(
        &self,
        update: UserRowUpdate<'_>,
    ) -> Result<Vec<(user::Column, Value)>, DbErr> {
        let mut values = Vec::new();
        for change in update.changes() {
            values.push((
                self.user_column(&change.column)?,
                field_value(change.new.as_ref()),
            ));
        }
        if let UserRowUpdate::Directory(u) = update {
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

    /// Runs every statement of `batch` in `txn`: groups, users, casbin rows, links, the
    /// revocations, then the change log's rows. The caller commits or rolls back, so the log
    /// holds exactly what was committed.
    pub async fn write(&self, txn: &DatabaseTransaction, batch: &Batch<'_>) -> Result<(), DbErr> {
        self.insert_groups(txn, &batch.group_creates).await?;
        for g in batch.group_updates.iter().filter(|g| !g.changes.is_empty()) {
            self.update_group(txn, g).await?;
        }
        self.insert_users(txn, &batch.user_creates).await?;
        for (name, update) in &batch.user_updates {
            let values = self.user_update_values(*update)?;
            let stmt = Query::update()
                .table(self.tables.aliased(Table::User))
                .values(values.into_iter().map(|(c, v)| (c, Expr::from(v))))
                .and_where(user::Column::Owner.eq(self.organization))
                .and_where(user::Column::Name.eq(*name))
                .to_owned();
            txn.execute(&stmt).await?;
        }
        self.delete_groupings(txn, &batch.casbin_remove).await?;
        self.insert_groupings(txn, &batch.casbin_add).await?;
        self.upsert_links(txn, &batch.links).await?;
        self.delete_links(txn, &batch.link_deletes).await?;
        self.revoke_tokens(txn, &batch.revoke).await?;
        self.delete_sessions(txn, &batch.revoke).await?;
        self.insert_changes(txn, &batch.changes).await
    }

    async fn insert_groups(
        &self,
        txn: &DatabaseTransaction,
        creates: &[&GroupCreate],
    ) -> Result<(), DbErr> {
        self.insert_rows(txn, Shape::Groups, creates, |g, out| {
            self.push_group(g, out);
            Ok(())
        })
        .await
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
        creates: &[&NewUser],
    ) -> Result<(), DbErr> {
        self.insert_rows(txn, Shape::Users, creates, |new, out| {
            self.push_user(new, out)
        })
        .await
    }

    async fn delete_groupings(
        &self,
        txn: &DatabaseTransaction,
        rules: &[&CasbinGrouping],
    ) -> Result<(), DbErr> {
        for chunk in statement_chunks(rules, self.engine, 2, 1) {
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
        rules: &[&CasbinGrouping],
    ) -> Result<(), DbErr> {
        self.insert_rows(txn, Shape::Groupings, rules, |rule, out| {
            Self::push_grouping(rule, out);
            Ok(())
        })
        .await
    }

    /// Inserts or overwrites links by (syncer, kind, external_id). A new link's
    /// `first_seen_run` and `created_at` are kept on overwrite; `last_seen_run` moves to this
    /// run for present links only (a left link was not seen).
    async fn upsert_links(
        &self,
        txn: &DatabaseTransaction,
        links: &[&OwnershipLink],
    ) -> Result<(), DbErr> {
        for (state, shape) in [
            (LinkState::Present, Shape::PresentLinks),
            (LinkState::Left, Shape::LeftLinks),
        ] {
            let of_state: Vec<&OwnershipLink> =
                links.iter().copied().filter(|l| l.state == state).collect();
            self.insert_rows(txn, shape, &of_state, |link, out| {
                self.push_link(link, out);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn delete_links(
        &self,
        txn: &DatabaseTransaction,
        links: &[&OwnershipLink],
    ) -> Result<(), DbErr> {
        use syncer_link::Column as L;
        for kind in [LinkKind::User, LinkKind::Group] {
            let ids: Vec<&str> = links
                .iter()
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
    /// "user" = ?`, for users newly forbidden or deleted.
    async fn revoke_tokens(&self, txn: &DatabaseTransaction, names: &[&str]) -> Result<(), DbErr> {
        if !self.token_table {
            return Ok(());
        }
        for chunk in statement_chunks(names, self.engine, 1, 2) {
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
        names: &[&str],
    ) -> Result<(), DbErr> {
        if !self.session_table {
            return Ok(());
        }
        for chunk in statement_chunks(names, self.engine, 1, 1) {
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

impl Writer<'_> {
    /// The change log's rows of this batch, as multi-row inserts; none without a run (a dry
    /// run records nothing).
    async fn insert_changes(
        &self,
        txn: &DatabaseTransaction,
        changes: &[NewChange<'_>],
    ) -> Result<(), DbErr> {
        let Some(run_id) = self.run_id else {
            return Ok(());
        };
        self.insert_rows(txn, Shape::Changes, changes, |change, out| {
            self.push_change(run_id, change, out);
            Ok(())
        })
        .await
    }
}

/// PostgreSQL waits for a row lock forever by default; a batch blocked by another writer
/// (Casdoor itself) gives up after this and the run fails saying so. MySQL/MariaDB stop waiting
/// after `innodb_lock_wait_timeout` (50 s by default), SQLite after the pool's busy timeout.
pub(super) const POSTGRES_TIMEOUTS: [&str; 2] = [
    "SET LOCAL lock_timeout = '60s'",
    "SET LOCAL statement_timeout = '300s'",
];

/// A write transaction whose statements cannot wait forever.
pub async fn begin_bounded(db: &Db) -> Result<DatabaseTransaction, DbErr> {
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

/// Whether an error means the database cannot be worked with right now (connection lost, pool
/// exhausted, lock or statement timeout, deadlock), as opposed to rejecting this data. Such an
/// error stops the apply instead of being retried row by row.
pub fn is_systemic(err: &DbErr) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn statements_are_full_then_the_rest_in_one_or_on_sqlite_in_power_of_two_pieces() {
        assert_eq!(sizes(500, Engine::MySql, 181), vec![362, 138]);
        assert_eq!(sizes(1_000, Engine::MySql, 181), vec![362, 362, 276]);
        assert_eq!(sizes(500, Engine::Postgres, 181), vec![362, 138]);
        assert!(sizes(0, Engine::Postgres, 7).is_empty());
        assert_eq!(sizes(181, Engine::Sqlite, 181), vec![181]);
        assert_eq!(sizes(500, Engine::Sqlite, 181), vec![181, 181, 128, 8, 2]);
        assert_eq!(sizes(7, Engine::Sqlite, 181), vec![4, 2, 1]);
        assert_eq!(sizes(3, Engine::Sqlite, 100_000), vec![1, 1, 1]);
    }

    #[test]
    fn any_sqlite_batch_of_casbin_rows_needs_few_statement_shapes() {
        // Casbin rows per batch follow the batch's users: every count up to 5,000 together
        // prepares the full statement of 4,680 rows and 13 powers of two, not 5,000 shapes.
        let mut shapes = std::collections::BTreeSet::new();
        for rows in 1..=5_000 {
            shapes.extend(sizes(rows, Engine::Sqlite, 7));
        }
        assert_eq!(shapes.len(), 14, "{shapes:?}");
    }
}
