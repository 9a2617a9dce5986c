//! How long a run's lease lives and how often it is renewed.
//!
//! The TTL bounds how long a crashed holder blocks its syncer (and how long until its `running`
//! row is recovered), so it is short; a run renews its lease three times per TTL, so a single
//! failed renewal does not lose it. Until there is a `scheduler.lease_ttl` key, the TTL follows
//! `scheduler.reload_interval` (12 reconcile passes, between 2 s and 60 s: 60 s by default).

use std::time::Duration;

use crate::db::leases::lease_expiry;

/// Shortest lease TTL, whatever the reload interval.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// Longest lease TTL (the default with a 5 s reload interval).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(60);

/// A stream lease's TTL in run-lease TTLs ([`LeaseTiming::for_stream`]).
const STREAM_TTL_FACTOR: u32 = 5;

/// The lease TTL and renewal period in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_every: Duration,
}

impl LeaseTiming {
    /// 12 reload intervals, clamped to [`MIN_LEASE_TTL`, `MAX_LEASE_TTL`]; renewed every third.
    pub fn for_reload_interval(reload_interval: Duration) -> Self {
        let ttl = reload_interval
            .saturating_mul(12)
            .clamp(MIN_LEASE_TTL, MAX_LEASE_TTL);
        LeaseTiming {
            ttl,
            renew_every: ttl / 3,
        }
    }

    /// The timing of a Stream connection's lease: five times a run's (5 minutes by default),
    /// renewed every third. A stream lease is held for days, not minutes, so its renewals are
    /// what an idle daemon spends its time on (50 syncers renewing every 20 s were a database
    /// write every 0.4 s); the price is that a crashed replica's streams move to another one
    /// after up to 5 minutes, while the interval runs, with their own short lease, go on.
    pub fn for_stream(self) -> Self {
        let ttl = self.ttl.saturating_mul(STREAM_TTL_FACTOR);
        LeaseTiming {
            ttl,
            renew_every: ttl / 3,
        }
    }

    /// Whether a run whose lease is known to hold until `held_until_ms` must stop now at
    /// `now_ms`: the next renewal might come too late, after which another replica may take
    /// the lease and start the same syncer.
    pub fn must_stop(&self, held_until_ms: i64, now_ms: i64) -> bool {
        let margin = i64::try_from(self.renew_every.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_add(margin) >= held_until_ms
    }
}

/// A lease a run holds: until when it is known to hold, and what each renewal attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    timing: LeaseTiming,
    held_until_ms: i64,
}

/// What one renewal attempt means for the run holding the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed for another TTL.
    Renewed,
    /// The lease expired and another process took it: stop now.
    Lost,
    /// The attempt failed (a busy or unreachable database) but the lease holds until the next
    /// one: keep running.
    Retry,
    /// The attempt failed and the lease may expire before the next one: stop now.
    Expiring,
}

impl HeldLease {
    /// A lease taken at `taken_at_ms`.
    pub fn taken(timing: LeaseTiming, taken_at_ms: i64) -> Self {
        HeldLease {
            timing,
            held_until_ms: lease_expiry(taken_at_ms, timing.ttl),
        }
    }

    /// Records a renewal attempted at `attempted_at_ms`: `Some(true)` renewed, `Some(false)` held
    /// by another process, `None` failed. A single failure (SQLite's writer lock taken by the
    /// run's own batches for longer than the busy timeout, a blip of the network) must not stop
    /// a run whose lease still holds.
    pub fn renewal(&mut self, attempted_at_ms: i64, renewed: Option<bool>, now_ms: i64) -> Renewal {
        match renewed {
            Some(true) => {
                self.held_until_ms = lease_expiry(attempted_at_ms, self.timing.ttl);
                Renewal::Renewed
            }
            Some(false) => Renewal::Lost,
            None if self.timing.must_stop(self.held_until_ms, now_ms) => Renewal::Expiring,
            None => Renewal::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttl_follows_the_reload_interval_within_bounds() {
        let t = LeaseTiming::for_reload_interval(Duration::from_secs(5));
        assert_eq!(t.ttl, Duration::from_secs(60));
        assert_eq!(t.renew_every, Duration::from_secs(20));
        let t = LeaseTiming::for_reload_interval(Duration::from_millis(200));
        assert_eq!(t.ttl, Duration::from_millis(2400));
        assert_eq!(t.renew_every, Duration::from_millis(800));
        let t = LeaseTiming::for_reload_interval(Duration::from_millis(10));
        assert_eq!(t.ttl, MIN_LEASE_TTL);
        let stream = LeaseTiming::for_reload_interval(Duration::from_secs(5)).for_stream();
        assert_eq!(
            (stream.ttl, stream.renew_every),
            (Duration::from_secs(300), Duration::from_secs(100))
        );
        let t = LeaseTiming::for_reload_interval(Duration::from_secs(3600));
        assert_eq!(t.ttl, MAX_LEASE_TTL);
    }

    #[test]
    fn a_run_stops_after_two_missed_renewals_not_one() {
        let t = LeaseTiming::for_reload_interval(Duration::from_secs(5));
        let renewed_at = 1_000_000;
        let held_until = renewed_at + 60_000;
        // First renewal (20 s later) failed: 40 s left, keep going.
        assert!(!t.must_stop(held_until, renewed_at + 20_000));
        // Second one (40 s later) failed too: the third might be too late.
        assert!(t.must_stop(held_until, renewed_at + 40_000));
        assert!(t.must_stop(held_until, held_until + 1));
    }

    #[test]
    fn a_failed_renewal_is_retried_while_the_lease_holds() {
        let t = LeaseTiming::for_reload_interval(Duration::from_secs(5));
        let start = 1_000_000;
        let mut lease = HeldLease::taken(t, start);
        assert_eq!(
            lease.renewal(start + 20_000, None, start + 25_000),
            Renewal::Retry
        );
        // A later success moves the expiry, so the next failure is retried again.
        let renewed = start + 40_000;
        assert_eq!(
            lease.renewal(renewed, Some(true), renewed),
            Renewal::Renewed
        );
        assert_eq!(
            lease.renewal(renewed + 20_000, None, renewed + 20_000),
            Renewal::Retry
        );
        assert_eq!(
            lease.renewal(renewed + 40_000, None, renewed + 40_000),
            Renewal::Expiring
        );
        assert_eq!(
            lease.renewal(renewed + 41_000, Some(false), renewed + 41_000),
            Renewal::Lost
        );
    }
}
