//! Storage: one code path over SQLite, MySQL/MariaDB and PostgreSQL, on Casdoor's own schema.
//!
//! [`connect`] opens a pool with timeouts, [`migrate`] creates what is missing (Casdoor's tables
//! only in embedded mode, syncerd's own tables always), [`check_schema`] verifies a database before
//! a daemon relies on it. Casdoor's tables are read and written through the entities in
//! [`entities`]; [`casdoor`] reads an organization's state for a run and writes its plan;
//! [`syncers`] and [`runs`] hold the small repository functions the CLI and the daemon use.

mod error;
mod schema;
mod tables;
mod time;

pub mod casdoor;
pub mod changes;
pub mod entities;
pub mod inbox;
pub mod leases;
pub mod runs;
pub mod syncers;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use migrations::casdoor::CasdoorTable;
use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{
    ConnAcquireErr, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::{DatabaseSettings, Engine};
use crate::secret::redact_text;

pub use error::DbError;
pub use runs::{
    NewRun, RunCounts, RunFilter, RunKind, RunMode, RunOutcome, RunRow, RunStatus, RunTrigger,
    StaleRunFilter, finish_run, get_run, insert_run, list_runs, mark_interrupted, previous_status,
};
pub use schema::{SchemaError, SchemaProblem, check_schema, table_columns};
pub use syncers::{
    BUILT_IN_ORGANIZATION, CASDOOR_UI_TABLE_COLUMNS, NameFrom, USERID_NAME_TABLE_COLUMNS,
    add_syncer_named_from,
};
pub use syncers::{
    DEFAULT_TABLE_COLUMNS, DINGTALK_TYPE, ERROR_TEXT_MAX_BYTES, NewSyncer, SYNCER_OWNER, SyncerRow,
    add_syncer, append_syncer_error, get_syncer, list_syncers, set_syncer_enabled,
};
pub use tables::{TABLE_PREFIX_MAX_LEN, Table, TableNames, table_prefix_problem};
pub use time::{casdoor_timestamp, parse_utc_millis, utc_millis};

use error::QueryContext as _;

/// SQLite connections in the pool: WAL lets readers run beside the one writer, and the busy
/// timeout queues writers instead of failing them.
const SQLITE_POOL_SIZE: u32 = 4;
/// How long a SQLite statement waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per SQLite connection (sqlx keeps 100). Each table a batch writes
/// has one full-statement shape that every batch reuses and a last statement whose row count
/// varies; the full ones must stay cached: with 16, batches evicted and compiled again their
/// multi-row user INSERTs, programs of tens of thousands of parameters (a 100,000-user import
/// took 61.7 s instead of 44–51 s in the same benchmark run, 2026-12-07). Holding 64 did not
/// raise the import's peak RSS (176 MB with 16 and with 64), and [`Db::release_idle_memory`]
/// empties the caches between runs.
const SQLITE_STATEMENT_CACHE: usize = 64;
/// Prepared statements kept per MySQL/MariaDB or PostgreSQL connection, for the same reason:
/// every eviction makes the server prepare the statement again. With 16, a 100,000-user import
/// took MariaDB 69.2 s (48 s of server CPU) instead of 36–47 s in the same run. The statements
/// live on the server.
const SERVER_STATEMENT_CACHE: usize = 64;
/// How long an unused pooled connection stays open.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SQLite write waits for its turn behind this process's other writers.
const SQLITE_WRITE_TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// An open connection pool and the engine behind it.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    engine: Engine,
    url: String,
    /// SQLite only: this process's writers take turns here, first come first served.
    sqlite_writers: Option<Arc<Mutex<()>>>,
    tables: TableNames,
    /// PostgreSQL: a first import's batches go through `COPY` (see [`casdoor::Writer::copy_batch`]).
    copy_first_import: bool,
}

/// This process's turn to write to SQLite, held until the write transaction ends; nothing on
/// the other engines, whose row locks need no such queue.
#[must_use = "the turn ends when it is dropped"]
pub struct WriteTurn(#[allow(dead_code)] Option<OwnedMutexGuard<()>>);

impl Db {
    /// The sea-orm connection, for entity queries.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The names of the tables in this database (`database.table_prefix`).
    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    /// `table`'s name in this database, for sea-query statements.
    pub fn table(&self, table: Table) -> sea_orm::sea_query::Alias {
        self.tables.iden(table)
    }

    /// What messages may show of the database URL: host, port and database, or the SQLite
    /// file (see [`crate::config::DatabaseUrl::target`]); never the URL or its credentials.
    pub fn redacted_url(&self) -> &str {
        &self.url
    }

    /// Whether a first import writes its batches through `COPY` (PostgreSQL, unless turned off
    /// with [`Db::without_copy`]).
    pub fn copies_first_import(&self) -> bool {
        self.engine == Engine::Postgres && self.copy_first_import
    }

    /// This pool with every batch written as INSERT statements, a first import's too: for tests
    /// and the benchmark, which compare the two paths.
    pub fn without_copy(mut self) -> Self {
        self.copy_first_import = false;
        self
    }

    /// Waits for this process's turn to write (SQLite only).
    ///
    /// SQLite has one writer at a time, and a writer that finds the lock taken polls for it with
    /// growing sleeps. An apply that commits a batch and at once begins the next one leaves
    /// microseconds between the two, so a waiting writer of the same process (a lease renewal,
    /// a run record) could miss every gap until its busy timeout failed it: a 100,000-user
    /// import on a busy machine lost its lease that way. Writers that take their turn here are
    /// served in arrival order, between the apply's batches.
    pub async fn write_turn(&self) -> Result<WriteTurn, DbErr> {
        let Some(writers) = &self.sqlite_writers else {
            return Ok(WriteTurn(None));
        };
        match tokio::time::timeout(SQLITE_WRITE_TURN_TIMEOUT, writers.clone().lock_owned()).await {
            Ok(guard) => Ok(WriteTurn(Some(guard))),
            Err(_) => Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
        }
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a read-then-write transaction waits for other writers instead of
    /// failing when it upgrades its lock.
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
    }

    /// Frees what the pool's idle SQLite connections hold between runs: their cached statements
    /// and their page caches. Nothing on the other engines, whose statements live on the server.
    ///
    /// A run's multi-row INSERTs compile to programs of megabytes each in this process, and
    /// every connection keeps its last [`SQLITE_STATEMENT_CACHE`] of them. The idle timeout
    /// never closes these connections, because the reload pass keeps using them in turn, so an
    /// idle daemon held several megabytes per connection until its next run. Connections in
    /// use are left alone; their run frees them when it ends.
    pub async fn release_idle_memory(&self) {
        if self.engine != Engine::Sqlite {
            return;
        }
        let pool = self.conn.get_sqlite_connection_pool();
        // A connection the run just dropped goes back to the pool in a task of its own: give
        // it a moment, unless every connection is idle already.
        let settle = Instant::now() + Duration::from_millis(100);
        while pool.num_idle() < pool.size() as usize && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Hold every idle connection at once, so each is visited once.
        let mut idle = Vec::new();
        while let Some(conn) = pool.try_acquire() {
            idle.push(conn);
        }
        for conn in &mut idle {
            let freed = tokio::time::timeout(SQLITE_BUSY_TIMEOUT, async {
                sea_orm::sqlx::Connection::clear_cached_statements(&mut **conn).await?;
                sea_orm::sqlx::query("PRAGMA shrink_memory")
                    .persistent(false)
                    .execute(&mut **conn)
                    .await
                    .map(|_| ())
            })
            .await;
            match freed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "could not free an idle SQLite connection's caches")
                }
                Err(_) => tracing::debug!("freeing an idle SQLite connection's caches timed out"),
            }
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(self) -> Result<(), DbError> {
        let context = format!("closing the {} database {}", self.engine, self.url);
        self.conn.close().await.context(context)
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("engine", &self.engine)
            .field("url", &self.url)
            .field("table_prefix", &self.tables.prefix())
            .finish_non_exhaustive()
    }
}

/// Opens a connection pool for `settings`, failing within `connect_timeout` when the database
/// cannot be reached.
pub async fn connect(settings: &DatabaseSettings) -> Result<Db, DbError> {
    let url = settings.url.target();
    let engine = settings
        .url
        .engine()
        .ok_or_else(|| DbError::UnsupportedUrl { url: url.clone() })?;
    let driver_url = driver_url(settings.url.expose(), engine);

    let mut options = ConnectOptions::new(driver_url.clone());
    options
        .sqlx_logging(false)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        // A daemon syncs for seconds an hour: connections idle longer than this are closed, and
        // with them their page caches and prepared statements.
        .idle_timeout(POOL_IDLE_TIMEOUT);
    match engine {
        Engine::Sqlite => {
            // Every connection to `sqlite::memory:` is a database of its own: share one.
            let in_memory = driver_url.contains(":memory:") || driver_url.contains("mode=memory");
            if in_memory {
                // Closing its one connection, idle or old, would drop the database.
                options.idle_timeout(None).max_lifetime(None);
            }
            options
                .max_connections(if in_memory { 1 } else { SQLITE_POOL_SIZE })
                // A SQLite connection is a file handle in this process: it cannot go stale the
                // way a server's socket can, and sqlx's ping before each checkout is a round trip
                // to the connection's worker thread that an idle daemon paid on every query.
                .test_before_acquire(false)
                .map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .busy_timeout(SQLITE_BUSY_TIMEOUT)
                        .statement_cache_capacity(SQLITE_STATEMENT_CACHE)
                });
        }
        Engine::MySql => {
            options
                .max_connections(settings.max_connections.max(1))
                .map_sqlx_mysql_opts(|o| {
                    o.charset("utf8mb4")
                        .statement_cache_capacity(SERVER_STATEMENT_CACHE)
                });
        }
        Engine::Postgres => {
            options
                .max_connections(settings.max_connections.max(1))
                .map_sqlx_postgres_opts(|o| o.statement_cache_capacity(SERVER_STATEMENT_CACHE));
        }
    }

    // The pool's own timeouts bound each attempt; this bounds the whole call, DNS included.
    let deadline = settings.connect_timeout + Duration::from_secs(1);
    let conn = match tokio::time::timeout(deadline, Database::connect(options)).await {
        Err(_) => {
            return Err(DbError::ConnectTimeout {
                engine,
                url,
                timeout: settings.connect_timeout,
            });
        }
        Ok(Err(e)) => {
            // The pool retries refused connections until it times out and then only says so;
            // one direct attempt tells the operator why.
            let cause =
                match direct_connect_error(engine, &driver_url, settings.connect_timeout).await {
                    Some(cause) => format!("{e} ({cause})"),
                    None => e.to_string(),
                };
            return Err(DbError::Connect {
                engine,
                url,
                message: scrub_connect_message(&cause, settings.url.expose(), &driver_url),
            });
        }
        Ok(Ok(conn)) => conn,
    };

    if engine == Engine::MySql {
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT DATABASE() AS db",
            ))
            .await
            .with_context(|| {
                format!("asking the {engine} database {url} which database is selected")
            })?;
        let selected: Option<String> = row.and_then(|r| r.try_get("", "db").ok());
        if selected.is_none() {
            return Err(DbError::NoDatabaseSelected { engine, url });
        }
    }

    let sqlite_writers = (engine == Engine::Sqlite).then(|| Arc::new(Mutex::new(())));
    Ok(Db {
        conn,
        engine,
        url,
        sqlite_writers,
        tables: TableNames::new(settings.table_prefix.clone()),
        copy_first_import: true,
    })
}

/// A driver's message about connecting, without the URL or any part of its password: sqlx
/// quotes the whole URL when it cannot parse it ("The connection string '...' cannot be
/// parsed"), and a password holding `#`, `/` or `?` is exactly what it cannot parse.
fn scrub_connect_message(message: &str, url: &str, driver_url: &str) -> String {
    if message.contains("cannot be parsed") {
        return "the URL cannot be parsed; characters such as # / ? @ : in the user name or \
                password must be percent-encoded (%23 %2F %3F %40 %3A)"
            .to_owned();
    }
    let mut text = message
        .replace(driver_url, "(the database URL)")
        .replace(url, "(the database URL)");
    for part in url_password_parts(url) {
        // Shorter strings would garble the message; the URL itself is gone already.
        if part.chars().count() >= 3 {
            text = text.replace(&part, crate::secret::REDACTED);
        }
    }
    redact_text(&text)
}

/// The password of a URL as written and percent-decoded, found leniently: everything between
/// the user name's `:` and the last `@`, so reserved characters inside it do not hide it.
fn url_password_parts(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let Some((userinfo, _)) = rest.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let mut parts = vec![password.to_owned()];
    let decoded = percent_decode(password);
    if decoded != password {
        parts.push(decoded);
    }
    parts
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes.get(i), hex) {
            (Some(b'%'), Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (Some(&b), _) => {
                out.push(b);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error of one connection attempt outside the pool, if it fails.
async fn direct_connect_error(engine: Engine, url: &str, timeout: Duration) -> Option<String> {
    use sea_orm::sqlx::{Connection, MySqlConnection, PgConnection, SqliteConnection};
    async fn attempt<C: Connection>(url: &str) -> Option<String> {
        match C::connect(url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }
    let attempt = async {
        match engine {
            Engine::Sqlite => attempt::<SqliteConnection>(url).await,
            Engine::MySql => attempt::<MySqlConnection>(url).await,
            Engine::Postgres => attempt::<PgConnection>(url).await,
        }
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// sqlx knows `mysql://` and `postgres://` only; syncerd also accepts `mariadb://` and
/// `postgresql://`.
fn driver_url(url: &str, engine: Engine) -> String {
    let replace = |from: &str, to: &str| match url.strip_prefix(from) {
        Some(rest) => format!("{to}{rest}"),
        None => url.to_owned(),
    };
    match engine {
        Engine::MySql => replace("mariadb://", "mysql://"),
        Engine::Postgres => replace("postgresql://", "postgres://"),
        Engine::Sqlite => url.to_owned(),
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrateReport {
    /// Names of the migrations applied by this call, in order.
    pub applied: Vec<String>,
    /// Casdoor tables this call created because they did not exist (embedded mode).
    pub created_casdoor_tables: Vec<&'static str>,
}

impl MigrateReport {
    pub fn is_up_to_date(&self) -> bool {
        self.applied.is_empty()
    }
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            return f.write_str("already up to date");
        }
        let plural = if self.applied.len() == 1 { "" } else { "s" };
        write!(
            f,
            "applied {} migration{plural} ({})",
            self.applied.len(),
            self.applied.join(", ")
        )?;
        if !self.created_casdoor_tables.is_empty() {
            write!(
                f,
                "; created Casdoor tables {} (embedded mode)",
                self.created_casdoor_tables.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Applies pending migrations: Casdoor's tables where missing, then syncerd's own tables.
/// Running it again is a no-op; existing Casdoor tables are never altered.
pub async fn migrate(db: &Db) -> Result<MigrateReport, DbError> {
    let failed = |e: DbErr| DbError::Migrate {
        engine: db.engine,
        url: db.url.clone(),
        message: redact_text(&e.to_string()),
    };
    let prefix = db.tables.prefix();
    let pending: Vec<String> =
        migrations::with_table_prefix(prefix, Migrator::get_pending_migrations(&db.conn))
            .await
            .map_err(failed)?
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
    if pending.is_empty() {
        return Ok(MigrateReport::default());
    }

    let mut missing = Vec::new();
    for table in CasdoorTable::ALL {
        if !schema::table_exists(db, &table.prefixed_name(prefix)).await? {
            missing.push(table);
        }
    }

    migrations::with_table_prefix(prefix, Migrator::up(&db.conn, None))
        .await
        .map_err(failed)?;

    let mut created = Vec::new();
    for table in missing {
        if schema::table_exists(db, &table.prefixed_name(prefix)).await? {
            created.push(table.name());
        }
    }
    Ok(MigrateReport {
        applied: pending,
        created_casdoor_tables: created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_url_maps_scheme_aliases() {
        assert_eq!(
            driver_url("mariadb://u:p@h:3306/casdoor", Engine::MySql),
            "mysql://u:p@h:3306/casdoor"
        );
        assert_eq!(
            driver_url("postgresql://u@h/casdoor", Engine::Postgres),
            "postgres://u@h/casdoor"
        );
        assert_eq!(
            driver_url("mysql://u@h/casdoor", Engine::MySql),
            "mysql://u@h/casdoor"
        );
        assert_eq!(
            driver_url("sqlite://x.db?mode=rwc", Engine::Sqlite),
            "sqlite://x.db?mode=rwc"
        );
    }

    #[test]
    fn migrate_report_says_what_happened() {
        assert_eq!(MigrateReport::default().to_string(), "already up to date");
        let report = MigrateReport {
            applied: vec!["m1".into(), "m2".into()],
            created_casdoor_tables: vec!["user", "group"],
        };
        assert_eq!(
            report.to_string(),
            "applied 2 migrations (m1, m2); created Casdoor tables user, group (embedded mode)"
        );
    }

    #[tokio::test]
    async fn connect_errors_never_show_the_password() {
        let settings = DatabaseSettings {
            url: crate::config::DatabaseUrl::new(
                "postgres://syncerd:Pg-S3cret@127.0.0.1:1/casdoor",
            ),
            connect_timeout: Duration::from_secs(2),
            ..DatabaseSettings::default()
        };
        let err = connect(&settings).await.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(!err.contains("Pg-S3cret"), "{err}");
        assert!(err.contains("127.0.0.1:1"), "{err}");
        assert!(err.contains("SYNCERD_DATABASE__URL"), "{err}");
    }

    #[test]
    fn connect_messages_lose_the_url_and_the_password() {
        let url = "mysql://u:Sup3r%23Secret@h/db";
        let msg = format!("error with '{url}': auth failed for Sup3r#Secret and Sup3r%23Secret");
        let text = scrub_connect_message(&msg, url, url);
        assert!(!text.contains("Sup3r"), "{text}");
        assert!(text.contains("(the database URL)"), "{text}");
        let parse =
            "Connection Error: The connection string 'mysql://u:a#b@h/db' cannot be parsed.";
        let text = scrub_connect_message(parse, "mysql://u:a#b@h/db", "mysql://u:a#b@h/db");
        assert!(
            !text.contains("a#b") && text.contains("percent-encoded"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unsupported_urls_say_which_forms_work() {
        let settings = DatabaseSettings {
            url: crate::config::DatabaseUrl::new("oracle://scott:tiger@db/orcl"),
            ..DatabaseSettings::default()
        };
        let err = connect(&settings).await.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("sqlite://") && !err.contains("tiger"), "{err}");
    }
}
