//! One task renews every stream lease of this process.
//!
//! A run renews its own lease (it lives minutes, and renews a few times). A stream lease lives
//! as long as the daemon, one per syncer: with a task per lease, an idle daemon of 50 syncers
//! wrote 50 renewals and read 50 leases back every renewal period, most of its idle CPU. The
//! keeper renews every lease due within half a period of the earliest in one `UPDATE` and one
//! read-back ([`renew_leases`]), so leases taken around the same time (a daemon's start) are
//! renewed together from then on, and a lease taken later joins them after one renewal.
//!
//! Each lease keeps its own [`HeldLease`]: a lost or expiring lease cancels only its own work,
//! with the same rules and log lines as a run's lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::db::leases::{epoch_millis, renew_leases};

use super::lease::{HeldLease, LeaseTiming};
use super::{Holder, LeaseFor, act_on_renewal, bounded};

/// Renews the leases registered with it; cheap to clone (one keeper per daemon).
#[derive(Clone, Default)]
pub struct LeaseKeeper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("leases", &self.state().leases.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// A lease was registered: its renewal may be due before the task's next wake.
    registered: Notify,
}

#[derive(Default)]
struct State {
    leases: HashMap<u64, Kept>,
    next_id: u64,
    /// The renewing task, while there are leases to renew.
    task: Option<JoinHandle<()>>,
}

struct Kept {
    key: String,
    syncer: String,
    what: LeaseFor,
    timing: LeaseTiming,
    held: HeldLease,
    /// When its next renewal is due.
    due: Instant,
    cancel: CancellationToken,
}

/// A lease the keeper renews until this is dropped.
pub struct KeptLease {
    keeper: LeaseKeeper,
    id: u64,
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.keeper.state().leases.remove(&self.id);
    }
}

impl LeaseKeeper {
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many leases it renews now.
    pub fn len(&self) -> usize {
        self.state().leases.len()
    }

    /// Whether it renews no lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renews the lease of `syncer` (kind `what`, taken at `taken_at_ms` by `holder`) until the
    /// answer is dropped; cancels `cancel` when the lease is lost or about to expire unrenewed.
    pub(super) fn keep(
        &self,
        db: &Db,
        holder: &Holder,
        (syncer, what): (&str, LeaseFor),
        taken_at_ms: i64,
        cancel: CancellationToken,
    ) -> KeptLease {
        let timing = holder.timing;
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.leases.insert(
            id,
            Kept {
                key: what.key(syncer),
                syncer: syncer.to_owned(),
                what,
                timing,
                held: HeldLease::taken(timing, taken_at_ms),
                due: Instant::now() + timing.renew_every,
                cancel,
            },
        );
        if state.task.as_ref().is_none_or(JoinHandle::is_finished) {
            state.task = Some(tokio::spawn(renew(
                self.clone(),
                db.clone(),
                holder.instance.clone(),
                holder.db_timeout,
            )));
        }
        drop(state);
        self.inner.registered.notify_one();
        KeptLease {
            keeper: self.clone(),
            id,
        }
    }

    /// The leases to renew now: every lease due within half its period of `now`, with the key
    /// and TTL of each. `None` when no lease is left (the task ends).
    fn due(&self, now: Instant) -> Option<Vec<(u64, String, LeaseTiming)>> {
        let mut state = self.state();
        if state.leases.is_empty() {
            state.task = None;
            return None;
        }
        Some(
            state
                .leases
                .iter()
                .filter(|(_, k)| k.due <= now + k.timing.renew_every / 2)
                .map(|(id, k)| (*id, k.key.clone(), k.timing))
                .collect(),
        )
    }

    /// When the earliest renewal is due.
    fn next_due(&self) -> Option<Instant> {
        self.state().leases.values().map(|k| k.due).min()
    }
}

/// The keeper's task: sleeps until the earliest renewal is due, renews every lease due by then
/// in one go, and ends when no lease is left.
async fn renew(keeper: LeaseKeeper, db: Db, instance: String, db_timeout: std::time::Duration) {
    loop {
        let Some(wake) = keeper.next_due() else {
            // Ends only under the lock, so a lease registered meanwhile starts a new task.
            if keeper.due(Instant::now()).is_none() {
                return;
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = keeper.inner.registered.notified() => continue,
        }
        let now = Instant::now();
        let Some(due) = keeper.due(now) else {
            return;
        };
        if due.is_empty() {
            continue;
        }
        let mut keys: Vec<String> = due.iter().map(|(_, key, _)| key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        // Every TTL is the same in practice; the shortest is the safe one for all.
        let (ttl, renew_every) = due
            .iter()
            .map(|(_, _, t)| (t.ttl, t.renew_every))
            .min()
            .unwrap_or_default();
        let attempted_at = epoch_millis();
        // A renewal that hangs (a database gone silent) counts as failed once the next is due.
        let attempt = bounded(
            db_timeout.min(renew_every),
            "renewing the stream leases",
            renew_leases(&db, &keys, &instance, attempted_at, ttl),
        )
        .await;
        let error = attempt.as_ref().err().cloned().unwrap_or_default();
        let finished_at = epoch_millis();
        let mut state = keeper.state();
        for (id, key, _) in &due {
            let Some(kept) = state.leases.get_mut(id) else {
                continue;
            };
            kept.due = now + kept.timing.renew_every;
            let renewed = attempt.as_ref().ok().map(|set| set.contains(key));
            let renewal = kept.held.renewal(attempted_at, renewed, finished_at);
            act_on_renewal(
                renewal,
                &kept.syncer,
                kept.what.activity(),
                &error,
                &kept.cancel,
            );
        }
    }
}
