//! `syncer_lease`: at most one process runs a given syncer at a time, across replicas sharing one
//! database. A lease is a row keyed by syncer name; it is free when absent or when `expires_at`
//! (epoch milliseconds) has passed, so a holder that dies without releasing frees it after its TTL.
//!
//! Every change is one atomic statement that only succeeds while the lease is free (or, for
//! renewal and release, still ours); the holder then reads the row back, so the answer never
//! depends on how an engine counts affected rows. Times come from the caller (`now_ms`), which
//! keeps the arithmetic testable; replicas therefore need roughly synchronised clocks (NTP).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::entities::{syncer_lease, syncer_run};
use super::error::QueryContext as _;
use super::{Db, DbError, RunStatus, StaleRunFilter, mark_interrupted, utc_millis};

/// One lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub syncer_name: String,
    /// `hostname:pid:random` of the process holding it.
    pub holder: String,
    /// Epoch milliseconds.
    pub acquired_at: i64,
    /// Epoch milliseconds; the lease is free from this instant on.
    pub expires_at: i64,
}

impl Lease {
    /// Whether the lease still binds others at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        !lease_expired(self.expires_at, now_ms)
    }
}

impl From<syncer_lease::Model> for Lease {
    fn from(m: syncer_lease::Model) -> Self {
        Lease {
            syncer_name: m.syncer_name,
            holder: m.holder,
            acquired_at: m.acquired_at,
            expires_at: m.expires_at,
        }
    }
}

/// The current time in epoch milliseconds, the unit of `syncer_lease`.
pub fn epoch_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// When a lease taken or renewed at `now_ms` for `ttl` expires.
pub fn lease_expiry(now_ms: i64, ttl: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// A lease expiring at `expires_at` is free at `now_ms` (the expiry instant itself is free).
pub fn lease_expired(expires_at: i64, now_ms: i64) -> bool {
    expires_at <= now_ms
}

/// Takes the lease of `syncer` for `holder` until `now_ms + ttl` if nobody holds it (no row, or
/// an expired one). Returns whether `holder` now holds it. A holder never re-takes a lease it
/// still holds: that would let two runs of one process overlap.
pub async fn acquire_lease(
    db: &Db,
    syncer: &str,
    holder: &str,
    now_ms: i64,
    ttl: Duration,
) -> Result<bool, DbError> {
    let expires_at = lease_expiry(now_ms, ttl);
    let context = || format!("taking the lease of syncer {syncer} in syncer_lease");
    let _turn = db.write_turn().await.with_context(context)?;

    // Take over an expired lease: the condition and the write are one statement.
    let taken = db
        .tables()
        .at(syncer_lease::Entity::update_many())
        .col_expr(syncer_lease::Column::Holder, Expr::value(holder))
        .col_expr(syncer_lease::Column::AcquiredAt, Expr::value(now_ms))
        .col_expr(syncer_lease::Column::ExpiresAt, Expr::value(expires_at))
        .col_expr(
            syncer_lease::Column::RunId,
            Expr::value(Option::<i64>::None),
        )
        .filter(syncer_lease::Column::SyncerName.eq(syncer))
        .filter(syncer_lease::Column::ExpiresAt.lte(now_ms))
        .exec(db.conn())
        .await
        .with_context(context)?;

    if taken.rows_affected == 0 {
        // No row, or a live one: insert; the primary key lets only one contender in.
        let row = syncer_lease::ActiveModel {
            syncer_name: Set(syncer.to_owned()),
            holder: Set(holder.to_owned()),
            acquired_at: Set(now_ms),
            expires_at: Set(expires_at),
            run_id: Set(None),
        };
        db.tables()
            .at(syncer_lease::Entity::insert(row))
            .on_conflict(
                OnConflict::column(syncer_lease::Column::SyncerName)
                    .do_nothing_on([syncer_lease::Column::SyncerName])
                    .to_owned(),
            )
            .exec_without_returning(db.conn())
            .await
            .with_context(context)?;
    }

    let current = get_lease(db, syncer).await?;
    Ok(current.is_some_and(|l| l.holder == holder && l.expires_at == expires_at))
}

/// Extends the lease of `syncer` held by `holder` to `now_ms + ttl`. Returns `false` when
/// `holder` no longer holds it (it expired and someone else took it, or it was deleted).
pub async fn renew_lease(
    db: &Db,
    syncer: &str,
    holder: &str,
    now_ms: i64,
    ttl: Duration,
) -> Result<bool, DbError> {
    let expires_at = lease_expiry(now_ms, ttl);
    let context = || format!("renewing the lease of syncer {syncer} in syncer_lease");
    let turn = db.write_turn().await.with_context(context)?;
    db.tables()
        .at(syncer_lease::Entity::update_many())
        .col_expr(syncer_lease::Column::ExpiresAt, Expr::value(expires_at))
        .filter(syncer_lease::Column::SyncerName.eq(syncer))
        .filter(syncer_lease::Column::Holder.eq(holder))
        .exec(db.conn())
        .await
        .with_context(context)?;
    drop(turn);
    let current = get_lease(db, syncer).await?;
    Ok(current.is_some_and(|l| l.holder == holder && l.expires_at == expires_at))
}

/// Renews every lease of `keys` that `holder` holds, in one `UPDATE` (per 500 keys) and one
/// read-back, until `now_ms + ttl`. Returns the keys it renewed; a key missing from the answer is
/// held by another process now (or no longer exists).
pub async fn renew_leases(
    db: &Db,
    keys: &[String],
    holder: &str,
    now_ms: i64,
    ttl: Duration,
) -> Result<HashSet<String>, DbError> {
    const KEYS_PER_STATEMENT: usize = 500;
    let expires_at = lease_expiry(now_ms, ttl);
    let mut renewed = HashSet::new();
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        let context = || format!("renewing {} leases in syncer_lease", chunk.len());
        let turn = db.write_turn().await.with_context(context)?;
        db.tables()
            .at(syncer_lease::Entity::update_many())
            .col_expr(syncer_lease::Column::ExpiresAt, Expr::value(expires_at))
            .filter(syncer_lease::Column::SyncerName.is_in(chunk.iter().map(String::as_str)))
            .filter(syncer_lease::Column::Holder.eq(holder))
            .exec(db.conn())
            .await
            .with_context(context)?;
        drop(turn);
        let rows = db
            .tables()
            .at(syncer_lease::Entity::find())
            .filter(syncer_lease::Column::SyncerName.is_in(chunk.iter().map(String::as_str)))
            .all(db.conn())
            .await
            .with_context(context)?;
        renewed.extend(
            rows.into_iter()
                .filter(|l| l.holder == holder && l.expires_at == expires_at)
                .map(|l| l.syncer_name),
        );
    }
    Ok(renewed)
}

/// Gives up the lease of `syncer` if `holder` holds it.
pub async fn release_lease(db: &Db, syncer: &str, holder: &str) -> Result<(), DbError> {
    let context = || format!("releasing the lease of syncer {syncer} in syncer_lease");
    let _turn = db.write_turn().await.with_context(context)?;
    // Unqualified columns: a prefixed table cannot be aliased in a DELETE on MariaDB.
    db.tables()
        .at(syncer_lease::Entity::delete_many())
        .filter(Expr::col(syncer_lease::Column::SyncerName).eq(syncer))
        .filter(Expr::col(syncer_lease::Column::Holder).eq(holder))
        .exec(db.conn())
        .await
        .with_context(context)?;
    Ok(())
}

/// Gives up every lease `holder` holds (on exit). Returns how many there were.
pub async fn release_all_leases(db: &Db, holder: &str) -> Result<u64, DbError> {
    let _turn = db
        .write_turn()
        .await
        .context("releasing this process's leases in syncer_lease")?;
    let result = db
        .tables()
        .at(syncer_lease::Entity::delete_many())
        .filter(Expr::col(syncer_lease::Column::Holder).eq(holder))
        .exec(db.conn())
        .await
        .context("releasing this process's leases in syncer_lease")?;
    Ok(result.rows_affected)
}

/// The lease row of `syncer`, live or expired.
pub async fn get_lease(db: &Db, syncer: &str) -> Result<Option<Lease>, DbError> {
    let row = db
        .tables()
        .at(syncer_lease::Entity::find_by_id(syncer.to_owned()))
        .one(db.conn())
        .await
        .with_context(|| format!("reading the lease of syncer {syncer} from syncer_lease"))?;
    Ok(row.map(Lease::from))
}

/// The history's `error_summary` of a run closed because its process is gone.
pub const ORPHANED_RUN_REASON: &str =
    "the syncerd process running it stopped (crash, kill or lost lease) before the run finished";

/// A `running` history row whose process is gone, as closed by [`interrupt_orphaned_runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedRun {
    pub id: i64,
    pub syncer_name: String,
    pub instance: String,
}

/// Marks `interrupted` every `running` row of `syncer_run` (of `syncer`, or of every syncer)
/// started before `started_before` whose instance holds no live lease on its syncer at
/// `now_ms`: the process that ran it died (or lost its lease), so nobody will ever finish the
/// row. Runs hold their lease for their whole duration, so a live run is never touched;
/// `started_before` also spares a very young row. The one way orphaned runs are closed: by the
/// daemon's reconcile pass (every syncer) and by a launch that just took a syncer's lease.
pub async fn interrupt_orphaned_runs(
    db: &Db,
    syncer: Option<&str>,
    now_ms: i64,
    started_before: DateTime<Utc>,
    reason: &str,
) -> Result<Vec<OrphanedRun>, DbError> {
    let mut running = db
        .tables()
        .at(syncer_run::Entity::find())
        .select_only()
        .column(syncer_run::Column::Id)
        .column(syncer_run::Column::SyncerName)
        .column(syncer_run::Column::Instance)
        .filter(syncer_run::Column::Status.eq(RunStatus::Running.as_str()))
        .filter(syncer_run::Column::StartedAt.lt(utc_millis(started_before)));
    if let Some(syncer) = syncer {
        running = running.filter(syncer_run::Column::SyncerName.eq(syncer));
    }
    let running: Vec<(i64, String, String)> = running
        .into_tuple()
        .all(db.conn())
        .await
        .context("looking for running runs in syncer_run")?;
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let leases: Vec<Lease> = db
        .tables()
        .at(syncer_lease::Entity::find())
        .all(db.conn())
        .await
        .context("reading syncer_lease")?
        .into_iter()
        .map(Lease::from)
        .collect();
    let orphaned: Vec<OrphanedRun> = running
        .into_iter()
        .filter(|(_, syncer, instance)| {
            !leases
                .iter()
                .any(|l| &l.syncer_name == syncer && &l.holder == instance && l.is_live(now_ms))
        })
        .map(|(id, syncer_name, instance)| OrphanedRun {
            id,
            syncer_name,
            instance,
        })
        .collect();
    if orphaned.is_empty() {
        return Ok(orphaned);
    }
    let finished_at = DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_else(Utc::now);
    let filter = StaleRunFilter {
        ids: Some(orphaned.iter().map(|o| o.id).collect()),
        ..StaleRunFilter::default()
    };
    mark_interrupted(db, &filter, finished_at, reason).await?;
    Ok(orphaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_free_from_its_expiry_instant_on() {
        let taken_at = 1_000_000;
        let expires = lease_expiry(taken_at, Duration::from_secs(60));
        assert_eq!(expires, 1_060_000);
        assert!(!lease_expired(expires, taken_at));
        assert!(!lease_expired(expires, expires - 1));
        assert!(lease_expired(expires, expires));
        assert!(lease_expired(expires, expires + 1));
        let lease = Lease {
            syncer_name: "s".into(),
            holder: "h:1:abc".into(),
            acquired_at: taken_at,
            expires_at: expires,
        };
        assert!(lease.is_live(expires - 1) && !lease.is_live(expires));
    }

    #[test]
    fn lease_expiry_saturates_instead_of_overflowing() {
        assert_eq!(lease_expiry(i64::MAX - 5, Duration::from_secs(1)), i64::MAX);
        assert_eq!(lease_expiry(0, Duration::from_millis(1500)), 1500);
    }
}
