//! Schema checks against the database catalog: does this database hold every column syncerd
//! reads or writes, and have syncerd's migrations run?

use std::fmt;

use migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, EntityTrait, IdenStatic, Iterable, Statement};

use super::entities::{
    casbin_user_rule, group, syncer, syncer_change, syncer_event, syncer_lease, syncer_link,
    syncer_run, user,
};
use super::error::QueryContext as _;
use super::{Db, DbError, Table};
use crate::config::Engine;

/// Why a database does not fit syncerd, as found by [`check_schema`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaProblem {
    MissingCasdoorTable { table: String },
    MissingCasdoorColumns { table: String, columns: Vec<String> },
    MissingSyncerdTables { tables: Vec<String> },
    MissingSyncerdColumns { table: String, columns: Vec<String> },
    PendingMigrations { names: Vec<String> },
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaProblem::MissingCasdoorTable { table } => write!(
                f,
                "Casdoor table `{table}` does not exist (or this database user cannot see it): \
                 check that database.url points at Casdoor's database and that \
                 database.table_prefix equals Casdoor's tableNamePrefix, or run `syncerd migrate` \
                 to create Casdoor's tables (embedded mode)"
            ),
            SchemaProblem::MissingCasdoorColumns { table, columns } => write!(
                f,
                "Casdoor table `{table}` lacks column(s) {}: check that database.url points at a \
                 current Casdoor database (Casdoor adds missing columns when it starts); for an \
                 embedded database run `syncerd migrate`",
                quoted_list(columns)
            ),
            SchemaProblem::MissingSyncerdTables { tables } => write!(
                f,
                "syncerd's table(s) {} do not exist: run `syncerd migrate`",
                quoted_list(tables)
            ),
            SchemaProblem::MissingSyncerdColumns { table, columns } => write!(
                f,
                "syncerd's table `{table}` lacks column(s) {}: it no longer matches syncerd's \
                 migrations (altered by hand?); restore it from a backup or drop it and run \
                 `syncerd migrate`",
                quoted_list(columns)
            ),
            SchemaProblem::PendingMigrations { names } => write!(
                f,
                "migration(s) {} have not been applied: run `syncerd migrate`",
                quoted_list(names)
            ),
        }
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The database cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the {engine} database {url} does not fit syncerd: {}", join_problems(.problems))]
    Mismatch {
        engine: Engine,
        url: String,
        problems: Vec<SchemaProblem>,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

fn join_problems(problems: &[SchemaProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The column names an entity reads and writes.
fn entity_columns<E: EntityTrait>() -> Vec<&'static str> {
    E::Column::iter().map(|c| c.as_str()).collect()
}

/// Verifies that every Casdoor column syncerd reads or writes exists, and that syncerd's own
/// tables are migrated. Extra columns are fine. Reports every problem at once.
pub async fn check_schema(db: &Db) -> Result<(), SchemaError> {
    let name = |table: Table| db.tables().name(table);
    let casdoor = [
        (name(Table::Syncer), entity_columns::<syncer::Entity>()),
        (name(Table::User), entity_columns::<user::Entity>()),
        (name(Table::Group), entity_columns::<group::Entity>()),
        (
            name(Table::CasbinUserRule),
            entity_columns::<casbin_user_rule::Entity>(),
        ),
    ];
    let own = [
        (
            name(Table::SyncerRun),
            entity_columns::<syncer_run::Entity>(),
        ),
        (
            name(Table::SyncerLink),
            entity_columns::<syncer_link::Entity>(),
        ),
        (
            name(Table::SyncerLease),
            entity_columns::<syncer_lease::Entity>(),
        ),
        (
            name(Table::SyncerEvent),
            entity_columns::<syncer_event::Entity>(),
        ),
        (
            name(Table::SyncerChange),
            entity_columns::<syncer_change::Entity>(),
        ),
    ];

    let mut problems = Vec::new();
    for (table, required) in casdoor {
        match missing_columns(db, &table, &required).await? {
            None => problems.push(SchemaProblem::MissingCasdoorTable {
                table: table.clone(),
            }),
            Some(columns) if !columns.is_empty() => {
                problems.push(SchemaProblem::MissingCasdoorColumns {
                    table: table.clone(),
                    columns,
                })
            }
            Some(_) => {}
        }
    }

    let mut missing_tables = Vec::new();
    for (table, required) in own {
        match missing_columns(db, &table, &required).await? {
            None => missing_tables.push(table.clone()),
            Some(columns) if !columns.is_empty() => {
                problems.push(SchemaProblem::MissingSyncerdColumns {
                    table: table.clone(),
                    columns,
                })
            }
            Some(_) => {}
        }
    }
    if !missing_tables.is_empty() {
        problems.push(SchemaProblem::MissingSyncerdTables {
            tables: missing_tables,
        });
    }

    let pending: Vec<String> = migrations::with_table_prefix(
        db.tables().prefix(),
        Migrator::get_pending_migrations_read_only(db.conn()),
    )
    .await
    .with_context(|| {
        format!(
            "reading syncerd's applied migrations from {}",
            db.redacted_url()
        )
    })?
    .iter()
    .map(|m| m.name().to_owned())
    .collect();
    if !pending.is_empty() {
        problems.push(SchemaProblem::PendingMigrations { names: pending });
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Mismatch {
            engine: db.engine(),
            url: db.redacted_url().to_owned(),
            problems,
        })
    }
}

/// `None` when `table` does not exist, else the `required` columns it lacks.
async fn missing_columns(
    db: &Db,
    table: &str,
    required: &[&str],
) -> Result<Option<Vec<String>>, DbError> {
    let present = table_columns(db, table).await?;
    if present.is_empty() {
        return Ok(None);
    }
    // PostgreSQL keeps quoted identifiers case-sensitive; MySQL and SQLite compare column names
    // without case.
    let same = |a: &str, b: &str| match db.engine() {
        Engine::Postgres => a == b,
        Engine::MySql | Engine::Sqlite => a.eq_ignore_ascii_case(b),
    };
    Ok(Some(
        required
            .iter()
            .filter(|r| !present.iter().any(|p| same(p, r)))
            .map(|r| (*r).to_owned())
            .collect(),
    ))
}

/// Whether `table` exists in the current database (MySQL) or schema (PostgreSQL).
pub(crate) async fn table_exists(db: &Db, table: &str) -> Result<bool, DbError> {
    Ok(!table_columns(db, table).await?.is_empty())
}

/// The column names of `table` in catalog order, from the current database (MySQL) or schema
/// (PostgreSQL); empty when the table does not exist.
pub async fn table_columns(db: &Db, table: &str) -> Result<Vec<String>, DbError> {
    let sql = match db.engine() {
        Engine::Sqlite => "SELECT name AS column_name FROM pragma_table_info(?) ORDER BY cid",
        // `CAST`: MySQL 8 reports catalog names in a binary-ish charset.
        Engine::MySql => {
            "SELECT CAST(column_name AS CHAR) AS column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position"
        }
        // `::text`: `column_name` is of the `sql_identifier` domain.
        Engine::Postgres => {
            "SELECT column_name::text AS column_name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
        }
    };
    let conn = db.conn();
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            sql,
            [table.into()],
        ))
        .await
        .with_context(|| format!("reading the columns of table `{table}` from the catalog"))?;
    rows.iter()
        .map(|row| row.try_get::<String>("", "column_name"))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the columns of table `{table}` from the catalog"))
}
