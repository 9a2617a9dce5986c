//! One path for a run, whoever starts it (`syncerd sync`, the scheduler, the admin API).
//!
//! [`launch`] takes the syncer's lease (or refuses: another process runs it), closes the runs
//! of that syncer that a dead process left `running`, renews the lease while the work goes on
//! (cancelling it when the lease is lost or about to expire), and gives the lease back after.
//! The work itself (`pipeline::run_valid` with a DingTalk fetch) records its own run. A dry
//! run writes nothing and takes no lease.

pub mod keeper;
pub mod lease;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::leases::{
    ORPHANED_RUN_REASON, acquire_lease, epoch_millis, get_lease, interrupt_orphaned_runs,
    release_lease, renew_lease,
};
use crate::db::{Db, DbError};
use crate::syncer::ValidSyncer;

use keeper::{KeptLease, LeaseKeeper};
use lease::{HeldLease, LeaseTiming, Renewal};

/// What kind of process runs syncers; the last part of its [`instance_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceKind {
    /// `syncerd run`: a random tag tells a restarted daemon (same host, maybe the same pid in a
    /// container) from its previous life.
    Daemon,
    /// `syncerd sync`: one command, one process.
    Cli,
}

/// `hostname:pid:tag`, where the tag is six random hex digits for a daemon and `cli` for the
/// command line. It names the process as a lease holder and in `syncer_run.instance`, where
/// crash recovery matches a `running` row to its syncer's lease by it.
pub fn instance_id(kind: InstanceKind) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let pid = std::process::id();
    match kind {
        InstanceKind::Daemon => format!("{host}:{pid}:{:06x}", random_u64() & 0xff_ffff),
        InstanceKind::Cli => format!("{host}:{pid}:cli"),
    }
}

/// A pseudo-random number from the standard library's per-process random hash keys.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Who takes leases, and how long each lease call may take.
#[derive(Debug, Clone)]
pub struct Holder {
    /// [`instance_id`] of this process.
    pub instance: String,
    pub timing: LeaseTiming,
    /// Bound of each lease call (`database.connect_timeout`): a database gone silent must not
    /// hold a run start or a shutdown.
    pub db_timeout: Duration,
    /// Renews the leases taken with this holder together with the keeper's others (the
    /// daemon's stream leases); `None`: each lease has a renewing task of its own.
    pub keeper: Option<LeaseKeeper>,
}

/// Why a launch did not run its work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// Another process holds the syncer's lease: it runs the syncer now.
    #[error("syncer `{syncer}` is being synced by another process ({holder})")]
    Busy { syncer: String, holder: String },
    /// The lease could not be taken (the database failed or did not answer).
    #[error("syncer `{syncer}`: taking its lease failed: {message}")]
    Lease { syncer: String, message: String },
}

/// Runs `work` for `syncer` under its lease; see the module docs. `cancel` is the work's token:
/// it is cancelled when the lease is lost or about to expire unrenewed.
pub async fn launch<T>(
    db: &Db,
    syncer: &ValidSyncer,
    holder: &Holder,
    cancel: &CancellationToken,
    work: impl Future<Output = T>,
) -> Result<T, LaunchError> {
    let name = syncer.name.as_str();
    hold_lease(db, name, LeaseFor::Run, holder, cancel, async {
        close_orphaned_runs(db, name, holder.db_timeout).await;
        work.await
    })
    .await
}

/// What a lease is held for. A syncer has two: one for its runs, so that two processes never
/// run it at once, and one for its DingTalk event stream, so that one replica listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseFor {
    Run,
    Stream,
}

impl LeaseFor {
    /// The `syncer_lease` key: the syncer's name for its runs, `stream:NAME` for its stream
    /// (`stream:` and the MD5 of the name when that would outgrow the 100-character column).
    pub fn key(self, syncer: &str) -> String {
        match self {
            LeaseFor::Run => syncer.to_owned(),
            LeaseFor::Stream => {
                let key = format!("stream:{syncer}");
                if key.chars().count() <= 100 {
                    key
                } else {
                    use md5::Digest as _;
                    let digest = md5::Md5::digest(syncer.as_bytes());
                    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    format!("stream:#{hex}")
                }
            }
        }
    }

    /// What stops when the lease is lost, for log lines.
    fn activity(self) -> &'static str {
        match self {
            LeaseFor::Run => "the run at its next safe point",
            LeaseFor::Stream => "its event stream",
        }
    }
}

/// Runs `work` while holding `syncer`'s lease of kind `what`: takes it (or answers
/// [`LaunchError::Busy`]), renews it while `work` goes on (cancelling `cancel` when it is lost or
/// about to expire unrenewed) and gives it back after.
pub async fn hold_lease<T>(
    db: &Db,
    syncer: &str,
    what: LeaseFor,
    holder: &Holder,
    cancel: &CancellationToken,
    work: impl Future<Output = T>,
) -> Result<T, LaunchError> {
    let key = what.key(syncer);
    let timing = holder.timing;
    let taken_at = epoch_millis();
    let acquired = bounded(
        holder.db_timeout,
        "taking the lease",
        acquire_lease(db, &key, &holder.instance, taken_at, timing.ttl),
    )
    .await;
    let lease_error = |message| LaunchError::Lease {
        syncer: syncer.to_owned(),
        message,
    };
    if !acquired.map_err(lease_error)? {
        let current = bounded(holder.db_timeout, "reading the lease", get_lease(db, &key)).await;
        let holder = match current {
            Ok(Some(lease)) => lease.holder,
            _ => "unknown".to_owned(),
        };
        return Err(LaunchError::Busy {
            syncer: syncer.to_owned(),
            holder,
        });
    }

    // The lease is renewed by another task: renewing in between polls of the work would stop
    // polling it, and the work may hold SQLite's write turn the renewal waits for.
    let renewer = match &holder.keeper {
        Some(keeper) => {
            Renewer::Kept(keeper.keep(db, holder, (syncer, what), taken_at, cancel.clone()))
        }
        None => Renewer::Own(AbortOnDrop(tokio::spawn(keep_lease(
            db.clone(),
            holder.clone(),
            (syncer.to_owned(), what),
            taken_at,
            cancel.clone(),
        )))),
    };
    let output = work.await;
    drop(renewer);

    let released = bounded(
        holder.db_timeout,
        "releasing the lease",
        release_lease(db, &key, &holder.instance),
    )
    .await;
    if let Err(e) = released {
        tracing::warn!("syncer {syncer}: releasing its lease failed ({e}); it expires by itself");
    }
    Ok(output)
}

/// Holding the lease, any `running` row of this syncer belongs to a process that died (`kill
/// -9`, a crash): close it, as the daemon's reconcile pass would.
async fn close_orphaned_runs(db: &Db, name: &str, db_timeout: Duration) {
    let closed = bounded(
        db_timeout,
        "recovering interrupted runs",
        interrupt_orphaned_runs(
            db,
            Some(name),
            epoch_millis(),
            Utc::now(),
            ORPHANED_RUN_REASON,
        ),
    )
    .await;
    match closed {
        Ok(orphaned) => log_orphaned(&orphaned),
        Err(e) => tracing::warn!("syncer {name}: looking for runs left running failed: {e}"),
    }
}

/// One warning per run closed because its process is gone.
pub fn log_orphaned(orphaned: &[crate::db::leases::OrphanedRun]) {
    for o in orphaned {
        tracing::warn!(
            "run {} of syncer {} was left running by a process that is gone ({}): recorded as \
             interrupted",
            o.id,
            o.syncer_name,
            o.instance
        );
    }
}

/// What renews a held lease until dropped.
enum Renewer {
    Own(#[allow(dead_code)] AbortOnDrop),
    Kept(#[allow(dead_code)] KeptLease),
}

/// Aborts a helper task when the launch that started it ends, whichever way.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease of `syncer` every third of its TTL until aborted; cancels the work when the
/// lease is lost or about to expire unrenewed.
async fn keep_lease(
    db: Db,
    holder: Holder,
    (syncer, what): (String, LeaseFor),
    taken_at: i64,
    cancel: CancellationToken,
) {
    let key = what.key(&syncer);
    let stopping = what.activity();
    let timing = holder.timing;
    let mut held = HeldLease::taken(timing, taken_at);
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + timing.renew_every,
        timing.renew_every,
    );
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A renewal that hangs (a database gone silent) counts as failed once the next is due.
    let limit = holder.db_timeout.min(timing.renew_every);
    loop {
        renew.tick().await;
        let now = epoch_millis();
        let attempt = bounded(
            limit,
            "renewing the lease",
            renew_lease(&db, &key, &holder.instance, now, timing.ttl),
        )
        .await;
        let error = attempt.as_ref().err().cloned().unwrap_or_default();
        let renewal = held.renewal(now, attempt.ok(), epoch_millis());
        act_on_renewal(renewal, &syncer, stopping, &error, &cancel);
    }
}

/// Logs what a renewal attempt of `syncer`'s lease means and, when the lease is lost or about
/// to expire unrenewed, cancels the work holding it (`stopping` names that work).
fn act_on_renewal(
    renewal: Renewal,
    syncer: &str,
    stopping: &str,
    error: &str,
    cancel: &CancellationToken,
) {
    match renewal {
        Renewal::Renewed => {}
        Renewal::Lost => {
            tracing::warn!(
                "syncer {syncer}: lost its lease (it expired and another process took it); \
                 stopping {stopping}"
            );
            cancel.cancel();
        }
        Renewal::Expiring => {
            tracing::warn!(
                "syncer {syncer}: cannot renew its lease ({error}) and it is about to expire; \
                 stopping {stopping}"
            );
            cancel.cancel();
        }
        Renewal::Retry => {
            tracing::warn!("syncer {syncer}: renewing its lease failed: {error}; retrying");
        }
    }
}

/// Runs `fut` (a database call) within `after`; the error is one operator-facing line.
pub(crate) async fn bounded<T>(
    after: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, DbError>>,
) -> Result<T, String> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{what} took longer than {after:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syncer_s_stream_lease_is_another_row_than_its_run_lease_and_fits_the_column() {
        assert_eq!(LeaseFor::Run.key("acme"), "acme");
        assert_eq!(LeaseFor::Stream.key("acme"), "stream:acme");
        let long = "钉".repeat(100);
        let key = LeaseFor::Stream.key(&long);
        assert!(
            key.starts_with("stream:#") && key.chars().count() <= 100,
            "{key}"
        );
        assert_ne!(key, LeaseFor::Stream.key(&"钉".repeat(99)));
    }

    #[test]
    fn the_instance_is_host_pid_and_a_tag() {
        let pid = format!(":{}:", std::process::id());
        let daemon = instance_id(InstanceKind::Daemon);
        assert!(daemon.contains(&pid), "{daemon}");
        let tag = daemon.rsplit(':').next().unwrap_or_default();
        assert!(
            tag.len() == 6 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "{daemon}"
        );
        let cli = instance_id(InstanceKind::Cli);
        assert!(cli.ends_with(&format!("{pid}cli")), "{cli}");
    }
}
