use std::time::Duration;

use sea_orm::DbErr;

use crate::config::Engine;
use crate::secret::redact_text;

/// A storage failure. Messages name the database (with its password redacted), the table, row
/// or column involved, and what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "database.url `{url}` names no supported database; use sqlite://PATH?mode=rwc, \
         mysql://USER:PASS@HOST:PORT/DB or postgres://USER:PASS@HOST:PORT/DB \
         (database.url / SYNCERD_DATABASE__URL)"
    )]
    UnsupportedUrl { url: String },

    #[error(
        "cannot connect to the {engine} database {url}: {message}. Is the server running and \
         reachable, and are the credentials right? Check database.url / SYNCERD_DATABASE__URL"
    )]
    Connect {
        engine: Engine,
        url: String,
        message: String,
    },

    #[error(
        "no answer from the {engine} database {url} within {timeout:?}. Is the server running and \
         reachable? Check database.url / SYNCERD_DATABASE__URL, or raise database.connect_timeout"
    )]
    ConnectTimeout {
        engine: Engine,
        url: String,
        timeout: Duration,
    },

    #[error(
        "the {engine} URL {url} names no database; add it to the path, e.g. \
         mysql://USER:PASS@HOST:3306/casdoor (database.url / SYNCERD_DATABASE__URL)"
    )]
    NoDatabaseSelected { engine: Engine, url: String },

    #[error("migrating the {engine} database {url} failed: {message}")]
    Migrate {
        engine: Engine,
        url: String,
        message: String,
    },

    /// A statement failed; `context` says what syncerd was doing (`"reading syncer admin/x"`).
    #[error("{context}: {message}")]
    Query { context: String, message: String },

    #[error(
        "a syncer named `{name}` already exists (table syncer, owner admin); choose another name"
    )]
    SyncerExists { name: String },

    #[error(
        "no syncer named `{name}` (table syncer, owner admin); `syncerd syncer list` shows the \
         existing ones"
    )]
    SyncerNotFound { name: String },

    #[error("no run with id {id} in table syncer_run; `syncerd runs` lists recent runs")]
    RunNotFound { id: i64 },

    #[error("invalid {what}: {problem}")]
    InvalidInput { what: &'static str, problem: String },

    /// A stored value syncerd cannot interpret.
    #[error("table {table}, row {row}, column {column}: {problem}")]
    BadValue {
        table: &'static str,
        column: &'static str,
        row: String,
        problem: String,
    },
}

impl DbError {
    /// Wraps a sea-orm error with what syncerd was doing. The driver's text passes through
    /// [`redact_text`] because sqlx errors can embed connection strings.
    pub(crate) fn query(context: impl Into<String>, err: DbErr) -> Self {
        DbError::Query {
            context: context.into(),
            message: redact_text(&err.to_string()),
        }
    }
}

/// `result.context("reading syncer admin/x")?` for sea-orm results.
pub(crate) trait QueryContext<T> {
    fn context(self, context: impl Into<String>) -> Result<T, DbError>;
    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T, DbError>;
}

impl<T> QueryContext<T> for Result<T, DbErr> {
    fn context(self, context: impl Into<String>) -> Result<T, DbError> {
        self.map_err(|e| DbError::query(context, e))
    }

    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T, DbError> {
        self.map_err(|e| DbError::query(context(), e))
    }
}
