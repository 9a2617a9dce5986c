//! The shared integration-test harness: a fresh database per test on every available engine.
//!
//! * SQLite: a temp file, always available.
//! * MySQL/MariaDB and PostgreSQL: a database with a unique name created on the server named by
//!   `SYNCERD_TEST_MYSQL_URL` / `SYNCERD_TEST_POSTGRES_URL` (server URLs without a database,
//!   e.g. `mysql://root@127.0.0.1:3306`, `postgres://postgres@127.0.0.1:5432`) and dropped
//!   afterwards. Unset variable: the engine is skipped with one line on stderr. Set but the
//!   server is unreachable: the test fails.
//!
//! Cleanup: call [`TestDb::cleanup`] at the end of a test; if the test panics first, `Drop`
//! drops the database from a helper thread.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod console;
pub mod directory;
pub mod pipeline;
pub mod process;

use std::io::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use migrations::casdoor::CasdoorTable;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use syncerd::config::{DatabaseSettings, DatabaseUrl, Engine};
use syncerd::db::{self, Db, RunFilter};

pub const MYSQL_ENV: &str = "SYNCERD_TEST_MYSQL_URL";
pub const POSTGRES_ENV: &str = "SYNCERD_TEST_POSTGRES_URL";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One test's database.
pub struct TestDb {
    engine: Engine,
    url: String,
    server: Option<Server>,
    /// Keeps the SQLite file alive for the test.
    _dir: Option<tempfile::TempDir>,
}

/// The server a MySQL/PostgreSQL test database lives on.
struct Server {
    /// Server URL without a database, for CREATE/DROP DATABASE.
    admin_url: String,
    database: String,
    dropped: bool,
}

impl TestDb {
    /// A fresh SQLite file in a temp directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir for the SQLite test database");
        let path = dir.path().join("syncerd-test.db");
        TestDb {
            engine: Engine::Sqlite,
            url: format!("sqlite://{}?mode=rwc", path.display()),
            server: None,
            _dir: Some(dir),
        }
    }

    /// A fresh database on the MySQL/MariaDB server of `SYNCERD_TEST_MYSQL_URL`, or `None` when
    /// the variable is unset.
    pub async fn mysql() -> Option<TestDb> {
        Self::on_server(Engine::MySql, MYSQL_ENV, "mysql://root@127.0.0.1:3306").await
    }

    /// A fresh database on the PostgreSQL server of `SYNCERD_TEST_POSTGRES_URL`, or `None` when
    /// the variable is unset.
    pub async fn postgres() -> Option<TestDb> {
        Self::on_server(
            Engine::Postgres,
            POSTGRES_ENV,
            "postgres://postgres@127.0.0.1:5432",
        )
        .await
    }

    /// SQLite, plus MySQL/MariaDB and PostgreSQL where configured.
    pub async fn all() -> Vec<TestDb> {
        let mut dbs = vec![Self::sqlite().await];
        dbs.extend(Self::mysql().await);
        dbs.extend(Self::postgres().await);
        dbs
    }

    /// Another fresh database on the same engine (and server) as `self`.
    pub async fn another(&self) -> TestDb {
        match self.engine {
            Engine::Sqlite => Self::sqlite().await,
            Engine::MySql => Self::mysql()
                .await
                .expect("MySQL was configured a moment ago"),
            Engine::Postgres => Self::postgres()
                .await
                .expect("PostgreSQL was configured a moment ago"),
        }
    }

    async fn on_server(engine: Engine, var: &str, example: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(var) else {
            skip_notice(engine, var, example);
            return None;
        };
        let admin_url = admin_url.trim_end_matches('/').to_owned();
        let database = unique_database_name();
        let create = match engine {
            // As Casdoor creates its database when asked to.
            Engine::MySql => format!(
                "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
            ),
            _ => format!("CREATE DATABASE \"{database}\""),
        };
        admin_execute(&admin_url, &create)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{var} is set, but creating test database {database} on {} failed: {e}",
                    DatabaseUrl::new(admin_url.clone()).redacted()
                )
            });
        Some(TestDb {
            engine,
            url: with_database(&admin_url, &database),
            server: Some(Server {
                admin_url,
                database,
                dropped: false,
            }),
            _dir: None,
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn backend(&self) -> DbBackend {
        match self.engine {
            Engine::Sqlite => DbBackend::Sqlite,
            Engine::MySql => DbBackend::MySql,
            Engine::Postgres => DbBackend::Postgres,
        }
    }

    /// The engine's name, for assertion messages.
    pub fn label(&self) -> String {
        self.engine.to_string()
    }

    /// The test database's URL (for spawning the real binary with `SYNCERD_DATABASE__URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: DatabaseUrl::new(self.url.clone()),
            max_connections: 5,
            connect_timeout: CONNECT_TIMEOUT,
            ..DatabaseSettings::default()
        }
    }

    /// Connects through syncerd's own [`db::connect`].
    pub async fn connect(&self) -> Db {
        db::connect(&self.settings())
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e}", self.label()))
    }

    /// Connects and runs syncerd's migrations (an embedded-mode database).
    pub async fn migrated(&self) -> Db {
        let db = self.connect().await;
        db::migrate(&db)
            .await
            .unwrap_or_else(|e| panic!("{}: migrate: {e}", self.label()));
        db
    }

    /// Creates Casdoor's four tables from the spec's DDL exactly as Casdoor does, without
    /// syncerd (no charset clause, no migration record): an "existing Casdoor database".
    pub async fn create_casdoor_tables(&self, db: &Db) {
        for table in CasdoorTable::ALL {
            for statement in table.statements(self.backend()) {
                self.execute(db, &statement).await;
            }
        }
    }

    /// Casdoor's `organization` table, cut to the columns syncerd reads (Casdoor's own has many
    /// more), with a row (owner `admin`) for each of `organizations`: syncerd beside Casdoor.
    pub async fn create_organization_table(&self, db: &Db, organizations: &[(&str, &str)]) {
        self.execute(
            db,
            "CREATE TABLE organization (owner VARCHAR(100) NOT NULL, name VARCHAR(100) NOT NULL, \
             display_name VARCHAR(100), PRIMARY KEY (owner, name))",
        )
        .await;
        for (name, display_name) in organizations {
            self.execute(
                db,
                &format!(
                    "INSERT INTO organization (owner, name, display_name) \
                     VALUES ('admin', '{name}', '{display_name}')"
                ),
            )
            .await;
        }
    }

    /// Like [`TestDb::create_casdoor_tables`], but `table` lacks `column` (and any index on it):
    /// an old or foreign schema.
    pub async fn create_casdoor_tables_without(&self, db: &Db, table: &str, column: &str) {
        let quoted = [format!("`{column}`"), format!("\"{column}\"")];
        for t in CasdoorTable::ALL {
            for statement in t.statements(self.backend()) {
                let statement = if t.name() == table {
                    if statement.starts_with("CREATE INDEX")
                        && quoted.iter().any(|q| statement.contains(&format!("({q})")))
                    {
                        continue;
                    }
                    statement
                        .lines()
                        .filter(|l| {
                            !quoted
                                .iter()
                                .any(|q| l.trim_start().starts_with(q.as_str()))
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    statement
                };
                self.execute(db, &statement).await;
            }
        }
    }

    /// Quotes an identifier for this engine.
    pub fn quote(&self, ident: &str) -> String {
        match self.engine {
            Engine::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// Runs one statement, failing the test on error.
    pub async fn execute(&self, db: &Db, sql: &str) {
        db.conn()
            .execute_raw(Statement::from_string(self.backend(), sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{}: `{sql}` failed: {e}", self.label()));
    }

    /// The first column of every row of `sql`, as text (NULL as `NULL`).
    pub async fn query_texts(&self, db: &Db, sql: &str) -> Vec<String> {
        self.query_column(db, sql, 0).await
    }

    async fn query_column(&self, db: &Db, sql: &str, index: usize) -> Vec<String> {
        let rows = db
            .conn()
            .query_all_raw(Statement::from_string(self.backend(), sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{}: `{sql}` failed: {e}", self.label()));
        rows.iter()
            .map(|r| {
                r.try_get_by_index::<Option<String>>(index)
                    .unwrap_or_else(|e| panic!("{}: `{sql}`: column {index}: {e}", self.label()))
                    .unwrap_or_else(|| "NULL".to_owned())
            })
            .collect()
    }

    /// A byte-exact dump of the definitions (columns, types, indexes, charset) and every row of
    /// `tables`, to prove that something left them untouched.
    pub async fn dump_tables(&self, db: &Db, tables: &[&str]) -> String {
        let mut out = String::new();
        for table in tables {
            out.push_str(&format!("== {table}\n"));
            for line in self.dump_definition(db, table).await {
                out.push_str(&line);
                out.push('\n');
            }
            let columns = db::table_columns(db, table)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", self.label()));
            assert!(
                !columns.is_empty(),
                "{}: table {table} has no columns",
                self.label()
            );
            let row_text = match self.engine {
                // quote() renders NULL, numbers, text and blobs as distinct SQL literals.
                Engine::Sqlite => columns
                    .iter()
                    .map(|c| format!("quote({})", self.quote(c)))
                    .collect::<Vec<_>>()
                    .join(" || ',' || "),
                Engine::MySql => format!(
                    "CONCAT_WS(',', {})",
                    columns
                        .iter()
                        .map(|c| format!("IFNULL(HEX(CONCAT({})), 'NULL')", self.quote(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Engine::Postgres => "t::text".to_owned(),
            };
            let rows = self
                .query_texts(
                    db,
                    &format!("SELECT {row_text} FROM {} t ORDER BY 1", self.quote(table)),
                )
                .await;
            for row in rows {
                out.push_str(&row);
                out.push('\n');
            }
        }
        out
    }

    async fn dump_definition(&self, db: &Db, table: &str) -> Vec<String> {
        match self.engine {
            Engine::Sqlite => {
                self.query_texts(
                    db,
                    &format!(
                        "SELECT type || ' ' || name || ': ' || IFNULL(sql, '') FROM sqlite_master \
                         WHERE tbl_name = '{table}' ORDER BY type, name"
                    ),
                )
                .await
            }
            Engine::MySql => {
                self.query_column(db, &format!("SHOW CREATE TABLE {}", self.quote(table)), 1)
                    .await
            }
            Engine::Postgres => {
                let mut lines = self
                    .query_texts(
                        db,
                        &format!(
                            "SELECT concat_ws(' ', ordinal_position, column_name, data_type, \
                             character_maximum_length, is_nullable, column_default, collation_name) \
                             FROM information_schema.columns \
                             WHERE table_schema = current_schema() AND table_name = '{table}' \
                             ORDER BY ordinal_position"
                        ),
                    )
                    .await;
                lines.extend(
                    self.query_texts(
                        db,
                        &format!(
                            "SELECT indexname || ': ' || indexdef FROM pg_indexes \
                             WHERE schemaname = current_schema() AND tablename = '{table}' \
                             ORDER BY indexname"
                        ),
                    )
                    .await,
                );
                lines
            }
        }
    }

    /// Drops the server database (nothing to do for SQLite: the temp dir goes with `self`).
    pub async fn cleanup(mut self) {
        if let Some(server) = self.server.as_mut() {
            drop_database(self.engine, &server.admin_url, &server.database).await;
            server.dropped = true;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.dropped {
            return;
        }
        server.dropped = true;
        // Usually reached while a failed test unwinds inside its tokio runtime, which cannot
        // block: drop the database from a thread with a runtime of its own.
        let (engine, admin_url, database) = (
            self.engine,
            server.admin_url.clone(),
            server.database.clone(),
        );
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for dropping the test database");
            runtime.block_on(drop_database(engine, &admin_url, &database));
        });
        let _ = dropper.join();
    }
}

async fn drop_database(engine: Engine, admin_url: &str, database: &str) {
    let sql = match engine {
        Engine::MySql => format!("DROP DATABASE IF EXISTS `{database}`"),
        // FORCE: pools of the test may still hold connections.
        _ => format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
    };
    if let Err(e) = admin_execute(admin_url, &sql).await {
        let _ = writeln!(
            std::io::stderr(),
            "could not drop test database {database}: {e}"
        );
    }
}

async fn admin_connection(admin_url: &str) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new(admin_url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT);
    Database::connect(options).await
}

async fn admin_execute(admin_url: &str, sql: &str) -> Result<(), sea_orm::DbErr> {
    let conn = admin_connection(admin_url).await?;
    let result = conn.execute_unprepared(sql).await.map(|_| ());
    let _ = conn.close().await;
    result
}

/// One line per engine and test process, written past libtest's output capture so it shows.
fn skip_notice(engine: Engine, var: &str, example: &str) {
    static MYSQL: Once = Once::new();
    static POSTGRES: Once = Once::new();
    let once = if engine == Engine::MySql {
        &MYSQL
    } else {
        &POSTGRES
    };
    once.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "skipped {engine} suite: set {var}={example} to run it"
        );
    });
}

fn unique_database_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "syncerd_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `scheme://auth@host:port[/x][?q]` with `/database` as its path.
fn with_database(server_url: &str, database: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Polls `check` every 50 ms until it holds; fails the test after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every run of syncer `name` in the history, newest first.
pub async fn runs_of(db: &Db, name: &str) -> Vec<db::RunRow> {
    db::list_runs(
        db,
        &RunFilter {
            syncer: Some(name.into()),
            limit: 10_000,
            ..RunFilter::default()
        },
    )
    .await
    .unwrap()
}

/// Runs `test` once on every available engine, each with a fresh database that is dropped
/// afterwards (also when `test` panics).
pub async fn on_every_engine(test: impl AsyncFn(&TestDb)) {
    for t in TestDb::all().await {
        test(&t).await;
        t.cleanup().await;
    }
}
