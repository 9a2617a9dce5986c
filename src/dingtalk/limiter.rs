//! Client-side flow control: a per-API rate limiter that slows down when DingTalk throttles, the
//! jittered exponential back-off between retries, and the pause gate used after an IP ban.
//!
//! Everything here reads time from `tokio::time`, so it is tested with a paused clock.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::rng::SplitMix64;

/// DingTalk's QPS windows are one second long.
const WINDOW: Duration = Duration::from_secs(1);
/// A throttling answer halves the rate, at most once per this interval (many requests in flight
/// are throttled together; that is one signal, not many).
const SLOWDOWN_GAP: Duration = Duration::from_secs(1);
/// Every second without a throttling answer gives back a tenth of the configured rate.
const RECOVERY_STEP: Duration = Duration::from_secs(1);
const RECOVERY_FRACTION: f64 = 0.1;

/// A token bucket (capacity one: requests are spaced evenly at the current rate) with a hard
/// guard of at most `rate` requests in any trailing second, measured when a request is let go.
/// The guard keeps the promise even when the scheduler wakes several waiters late at once.
///
/// After a throttling answer ([`RateLimiter::slow_down`]) the rate halves and then recovers
/// linearly to the configured rate.
#[derive(Debug)]
pub struct RateLimiter {
    max_rate: f64,
    min_rate: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    rate: f64,
    next_free: Instant,
    recent: VecDeque<Instant>,
    last_adjust: Instant,
    last_slowdown: Option<Instant>,
}

impl RateLimiter {
    /// A limiter letting `qps` requests per second through (at least one).
    pub fn new(qps: u32) -> Self {
        let max_rate = f64::from(qps.max(1));
        let now = Instant::now();
        Self {
            max_rate,
            min_rate: (max_rate / 16.0).clamp(0.5_f64.min(max_rate), max_rate),
            state: Mutex::new(BucketState {
                rate: max_rate,
                next_free: now,
                recent: VecDeque::new(),
                last_adjust: now,
                last_slowdown: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BucketState> {
        // The state stays consistent even if a holder panicked: every update is a plain store.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until one more request may be sent now.
    pub async fn acquire(&self) {
        loop {
            let wake_at = {
                let mut s = self.lock();
                let now = Instant::now();
                self.recover(&mut s, now);
                while s.recent.front().is_some_and(|t| *t + WINDOW <= now) {
                    s.recent.pop_front();
                }
                let cap = (s.rate.floor() as usize).max(1);
                let window_free_at = if s.recent.len() >= cap {
                    s.recent
                        .get(s.recent.len() - cap)
                        .map_or(now, |t| *t + WINDOW)
                } else {
                    now
                };
                let at = s.next_free.max(window_free_at);
                if at <= now {
                    s.recent.push_back(now);
                    s.next_free = now + Duration::from_secs_f64(1.0 / s.rate);
                    return;
                }
                at
            };
            tokio::time::sleep_until(wake_at).await;
        }
    }

    /// Called on a throttling answer: halve the rate (not below a floor), once per second at most.
    /// Returns the new rate when it changed.
    pub fn slow_down(&self) -> Option<f64> {
        let mut s = self.lock();
        let now = Instant::now();
        if s.last_slowdown.is_some_and(|t| now < t + SLOWDOWN_GAP) {
            return None;
        }
        self.recover(&mut s, now);
        let new_rate = (s.rate / 2.0).max(self.min_rate);
        s.last_slowdown = Some(now);
        s.last_adjust = now;
        // Push the next slot out at the new, slower pace.
        s.next_free = s.next_free.max(now) + Duration::from_secs_f64(1.0 / new_rate);
        if (new_rate - s.rate).abs() < f64::EPSILON {
            return None;
        }
        s.rate = new_rate;
        Some(new_rate)
    }

    /// The rate currently applied (requests per second).
    pub fn current_rate(&self) -> f64 {
        let mut s = self.lock();
        self.recover(&mut s, Instant::now());
        s.rate
    }

    /// The configured rate.
    pub fn max_rate(&self) -> f64 {
        self.max_rate
    }

    fn recover(&self, s: &mut BucketState, now: Instant) {
        if s.rate >= self.max_rate {
            s.last_adjust = now;
            return;
        }
        let elapsed = now.saturating_duration_since(s.last_adjust);
        let steps = (elapsed.as_secs_f64() / RECOVERY_STEP.as_secs_f64()).floor();
        if steps >= 1.0 {
            s.rate = (s.rate + steps * RECOVERY_FRACTION * self.max_rate).min(self.max_rate);
            s.last_adjust += RECOVERY_STEP.mul_f64(steps);
        }
    }
}

/// Jittered exponential back-off: retry `n` (1-based) waits a uniformly random time between half
/// and all of `min(max, base * 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let factor = 1u32 << exponent;
        self.base.saturating_mul(factor).min(self.max)
    }

    pub fn delay(&self, retry: u32, rng: &mut SplitMix64) -> Duration {
        let ceiling = self.ceiling(retry);
        ceiling.mul_f64(0.5 + 0.5 * rng.next_f64())
    }
}

/// Holds every call of one App Key while DingTalk's IP ban lasts.
#[derive(Debug, Default)]
pub struct PauseGate {
    until: Mutex<Option<Instant>>,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pauses every caller of [`PauseGate::wait`] for `pause` from now. Returns true when this
    /// started (or extended) a pause, false when an equal or longer one was already running.
    pub fn pause_for(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        let mut current = self.lock();
        if current.is_some_and(|c| c >= until) {
            return false;
        }
        *current = Some(until);
        true
    }

    /// When the current pause ends, if one is running.
    pub fn paused_until(&self) -> Option<Instant> {
        let current = *self.lock();
        current.filter(|t| *t > Instant::now())
    }

    /// Waits for the end of the current pause (returns at once when there is none).
    pub async fn wait(&self) {
        while let Some(until) = self.paused_until() {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_configured_rate() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            limiter.acquire().await;
            at.push(ms(start.elapsed()));
        }
        assert_eq!(at, vec![0, 100, 200, 300, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_never_exceed_the_rate_in_any_second() {
        let limiter = std::sync::Arc::new(RateLimiter::new(15));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..60 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire().await;
                start.elapsed()
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap());
        }
        times.sort();
        // 60 requests at 15/s take 59/15 s ≈ 3.93 s.
        let last = times.last().copied().unwrap_or_default();
        assert!(last >= Duration::from_millis(3900), "{last:?}");
        assert!(last <= Duration::from_millis(4000), "{last:?}");
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + WINDOW).count();
            assert!(
                in_window <= 15,
                "{in_window} requests in the second after {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_and_it_recovers_gradually() {
        let limiter = RateLimiter::new(20);
        assert_eq!(limiter.current_rate(), 20.0);
        assert_eq!(limiter.slow_down(), Some(10.0));
        // A second throttling answer within the same second is the same signal.
        assert_eq!(limiter.slow_down(), None);
        assert_eq!(limiter.current_rate(), 10.0);

        // One calm second gives back 2 (a tenth of 20) before the next halving: 12 / 2.
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(limiter.slow_down(), Some(6.0));

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(limiter.current_rate(), 6.0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limiter.current_rate(), 8.0);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(limiter.current_rate(), 14.0);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limiter.current_rate(), 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowed_limiter_spaces_requests_further_apart() {
        let limiter = RateLimiter::new(10);
        limiter.acquire().await;
        limiter.slow_down();
        let start = Instant::now();
        limiter.acquire().await;
        let first = start.elapsed();
        limiter.acquire().await;
        let gap = start.elapsed() - first;
        assert_eq!(ms(gap), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_never_drops_below_its_floor() {
        let limiter = RateLimiter::new(16);
        for _ in 0..20 {
            limiter.slow_down();
            tokio::time::advance(Duration::from_millis(1000)).await;
            // Recovery adds 1.6 per second; reading it does not matter for the floor check.
        }
        assert!(limiter.current_rate() >= 1.0);
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
        let mut rng = SplitMix64::new(3);
        let mut distinct = std::collections::BTreeSet::new();
        for retry in 1..8 {
            for _ in 0..100 {
                let d = b.delay(retry, &mut rng);
                assert!(d >= b.ceiling(retry) / 2, "{d:?}");
                assert!(d <= b.ceiling(retry), "{d:?}");
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 100, "jitter should spread delays");
    }

    #[tokio::test(start_paused = true)]
    async fn pause_gate_holds_callers_until_the_pause_ends() {
        let gate = PauseGate::default();
        let start = Instant::now();
        gate.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);

        assert!(gate.pause_for(Duration::from_secs(300)));
        assert!(!gate.pause_for(Duration::from_secs(10)), "shorter pause");
        gate.wait().await;
        assert_eq!(start.elapsed().as_secs(), 300);
        assert!(gate.paused_until().is_none());
    }
}
