//! PostgreSQL's `COPY ... FROM STDIN` for a batch of a first import.
//!
//! A batch that only inserts (new groups, new users, their casbin rows, their links and the
//! change log's `created` rows) of a syncer that owned nothing when the run began goes to the
//! server as one `COPY` per table instead of multi-row INSERTs: no statement to parse, no
//! parameters to bind. The rows are the very values the INSERT path binds
//! ([`Writer::push_user`] and its siblings), written in COPY's text format. Everything happens
//! in one transaction, with the same lock and statement timeouts as [`super::begin_bounded`];
//! a failure rolls it back whole and the caller retries the batch unit by unit through the
//! INSERT path, as for any rejected batch.
//!
//! sea-orm does not hand out the connection of its transactions, so this path takes its own
//! connection from the pool behind it and runs its own transaction there.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::{self, Acquire, PgConnection};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QuerySelect, RuntimeErr, Value};

use super::rows::Shape;
use super::write::{Batch, POSTGRES_TIMEOUTS, Writer};
use crate::config::Engine;
use crate::db::Db;
use crate::db::entities::syncer_link;

/// The whole COPY of one batch gives up after this (the server's `statement_timeout` bounds
/// each statement; this bounds the connection too).
const COPY_BATCH_TIMEOUT: Duration = Duration::from_secs(330);

fn sqlx_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

/// Appends `text` as a field of COPY's text format: backslash, newline, carriage return and
/// tab escaped, everything else as it is (so `\N` in a value is the two characters, not NULL).
fn push_text(buf: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            _ => buf.push(b),
        }
    }
}

/// Appends one value as a field of COPY's text format: what PostgreSQL's input function of
/// the column reads as the value the INSERT path binds.
fn push_field(buf: &mut Vec<u8>, value: &Value) -> Result<(), DbErr> {
    let mut number = String::new();
    match value {
        Value::String(Some(s)) => push_text(buf, s),
        Value::Bool(Some(b)) => buf.push(if *b { b't' } else { b'f' }),
        Value::Int(Some(i)) => {
            let _ = write!(number, "{i}");
        }
        Value::BigInt(Some(i)) => {
            let _ = write!(number, "{i}");
        }
        Value::Double(Some(d)) if d.is_finite() => {
            let _ = write!(number, "{d}");
        }
        Value::Double(Some(d)) if d.is_nan() => number.push_str("NaN"),
        Value::Double(Some(d)) if *d > 0.0 => number.push_str("Infinity"),
        Value::Double(Some(_)) => number.push_str("-Infinity"),
        // bytea in hex (`\x6e756c6c`), its backslash escaped for COPY.
        Value::Bytes(Some(bytes)) => {
            buf.extend_from_slice(b"\\\\x");
            for byte in bytes {
                let _ = write!(number, "{byte:02x}");
            }
        }
        Value::String(None)
        | Value::Bool(None)
        | Value::Int(None)
        | Value::BigInt(None)
        | Value::Double(None)
        | Value::Bytes(None) => buf.extend_from_slice(b"\\N"),
        other => {
            return Err(DbErr::Custom(format!(
                "COPY has no text for the value {other:?}"
            )));
        }
    }
    buf.extend_from_slice(number.as_bytes());
    Ok(())
}

/// `COPY "table" ("a", "b", ...) FROM STDIN`. Table names are checked ASCII letters, digits
/// and `_` (`database.table_prefix`), column names are the entities' own.
fn copy_statement(table: &str, columns: &[&str]) -> String {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let columns: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    format!("COPY {} ({}) FROM STDIN", quote(table), columns.join(", "))
}

/// The COPY text of `items`, one row each; `push` appends an item's values in column order.
pub(super) fn copy_text<T>(
    width: usize,
    items: &[T],
    push: impl Fn(&T, &mut Vec<Value>) -> Result<(), DbErr>,
) -> Result<Vec<u8>, DbErr> {
    let mut buf = Vec::new();
    let mut row = Vec::with_capacity(width);
    for item in items {
        row.clear();
        push(item, &mut row)?;
        if row.len() != width {
            return Err(DbErr::Custom(format!(
                "{} values for a row of {width} columns",
                row.len()
            )));
        }
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                buf.push(b'\t');
            }
            push_field(&mut buf, value)?;
        }
        buf.push(b'\n');
    }
    Ok(buf)
}

impl Writer<'_> {
    /// Copies `items` into `shape`'s table on `conn`.
    async fn copy_rows<T>(
        &self,
        conn: &mut PgConnection,
        shape: Shape,
        items: &[T],
        push: impl Fn(&T, &mut Vec<Value>) -> Result<(), DbErr>,
    ) -> Result<(), DbErr> {
        if items.is_empty() {
            return Ok(());
        }
        let columns = self.columns(shape);
        let data = copy_text(columns.len(), items, push)?;
        let statement = copy_statement(&self.tables.name(shape.table()), columns);
        let mut copy = conn.copy_in_raw(&statement).await.map_err(sqlx_err)?;
        if let Err(e) = copy.send(data).await {
            // The server has not seen the end of the data: tell it to give up.
            let _ = copy.abort("syncerd: sending the rows failed").await;
            return Err(sqlx_err(e));
        }
        let copied = copy.finish().await.map_err(sqlx_err)?;
        if copied != items.len() as u64 {
            return Err(DbErr::Custom(format!(
                "COPY wrote {copied} of {} rows",
                items.len()
            )));
        }
        Ok(())
    }

    /// Every table's rows of `batch`, in the order the INSERT path writes them.
    async fn copy_all(&self, conn: &mut PgConnection, batch: &Batch<'_>) -> Result<(), DbErr> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(POSTGRES_TIMEOUTS.join("; ")))
            .execute(&mut *conn)
            .await
            .map_err(sqlx_err)?;
        self.copy_rows(conn, Shape::Groups, &batch.group_creates, |g, out| {
            self.push_group(g, out);
            Ok(())
        })
        .await?;
        self.copy_rows(conn, Shape::Users, &batch.user_creates, |new, out| {
            self.push_user(new, out)
        })
        .await?;
        self.copy_rows(conn, Shape::Groupings, &batch.casbin_add, |rule, out| {
            Self::push_grouping(rule, out);
            Ok(())
        })
        .await?;
        self.copy_rows(conn, Shape::PresentLinks, &batch.links, |link, out| {
            self.push_link(link, out);
            Ok(())
        })
        .await?;
        if let Some(run_id) = self.run_id {
            self.copy_rows(conn, Shape::Changes, &batch.changes, |change, out| {
                self.push_change(run_id, change, out);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Writes `batch`, which must only insert rows no other row conflicts with (see
    /// [`Batch::inserts_only`]), through COPY in one transaction of its own: committed whole
    /// or rolled back whole.
    pub async fn copy_batch(&self, db: &Db, batch: &Batch<'_>) -> Result<(), DbErr> {
        if db.engine() != Engine::Postgres || !batch.inserts_only() {
            return Err(DbErr::Custom(
                "only a PostgreSQL batch that only inserts can be copied".to_owned(),
            ));
        }
        let pool = db.conn().get_postgres_connection_pool();
        let work = async {
            let mut conn = pool.acquire().await.map_err(sqlx_err)?;
            let mut txn = conn.begin().await.map_err(sqlx_err)?;
            match self.copy_all(&mut txn, batch).await {
                Ok(()) => txn.commit().await.map_err(sqlx_err),
                Err(e) => {
                    if let Err(rollback) = txn.rollback().await {
                        tracing::debug!(error = %rollback, "rolling back a failed COPY failed too");
                    }
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(COPY_BATCH_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(sqlx_err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "writing a batch through COPY took longer than {} s",
                    COPY_BATCH_TIMEOUT.as_secs()
                ),
            )))),
        }
    }
}

/// Whether `syncer` owns any row yet (has a link). A run of a syncer that owns nothing is a
/// first import: none of the links it writes can exist, so its batches may be copied.
pub async fn syncer_owns_rows(db: &Db, syncer: &str) -> Result<bool, DbErr> {
    let link = db
        .tables()
        .at(syncer_link::Entity::find())
        .select_only()
        .column(syncer_link::Column::SyncerName)
        .filter(syncer_link::Column::SyncerName.eq(syncer))
        .limit(1)
        .into_tuple::<String>()
        .one(db.conn())
        .await?;
    Ok(link.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(value: Value) -> String {
        let mut buf = Vec::new();
        push_field(&mut buf, &value)
            .map_err(|e| e.to_string())
            .unwrap_or_default();
        String::from_utf8(buf).unwrap_or_default()
    }

    #[test]
    fn values_are_written_in_copys_text_format() {
        let s = |t: &str| Value::String(Some(t.to_owned()));
        assert_eq!(field(s("plain 中文 😀")), "plain 中文 😀");
        assert_eq!(field(s("a\tb\nc\rd\\e")), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(field(s("\\N")), "\\\\N");
        assert_eq!(field(s("\\.")), "\\\\.");
        assert_eq!(field(Value::String(None)), "\\N");
        assert_eq!(field(Value::Bool(Some(true))), "t");
        assert_eq!(field(Value::Bool(Some(false))), "f");
        assert_eq!(field(Value::Int(Some(-7))), "-7");
        assert_eq!(field(Value::BigInt(Some(1 << 40))), "1099511627776");
        assert_eq!(field(Value::BigInt(None)), "\\N");
        assert_eq!(field(Value::Double(Some(0.0))), "0");
        assert_eq!(field(Value::Double(Some(f64::INFINITY))), "Infinity");
        assert_eq!(field(Value::Bytes(Some(b"null".to_vec()))), "\\\\x6e756c6c");
        let mut buf = Vec::new();
        assert!(push_field(&mut buf, &Value::Char(Some('x'))).is_err());
    }

    #[test]
    fn rows_are_tab_separated_lines() {
        let rows = [("a\tb", 1), ("", 2)];
        let text = copy_text(2, &rows, |(t, n), out| {
            out.push(Value::String(Some((*t).to_owned())));
            out.push(Value::Int(Some(*n)));
            Ok(())
        });
        assert_eq!(text.ok(), Some(b"a\\tb\t1\n\t2\n".to_vec()));
        let short = copy_text(3, &rows, |_, out| {
            out.push(Value::Int(Some(1)));
            Ok(())
        });
        assert!(short.is_err());
        assert_eq!(
            copy_statement("p_user", &["name", "webauthnCredentials"]),
            r#"COPY "p_user" ("name", "webauthnCredentials") FROM STDIN"#
        );
    }
}
