//! The pure half of a reconcile pass: what a syncer row asks for ([`Desired`]), what in it
//! decides its job ([`Fingerprint`]), and the step from what was to what should be
//! ([`transition`]). No I/O, no clock: the pass in `pass.rs` does the rest.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::db::SyncerRow;

/// A newly enabled (or fixed, or re-configured) syncer runs within this much time, spread so
/// that many syncers enabled at once do not all start in the same second.
pub const MAX_START_JITTER: Duration = Duration::from_secs(3);

/// Whether the daemon schedules this row: `is_enabled`, or named in `scheduler.claimed_syncers`
/// (which lets a Casdoor on the same database, which runs only enabled rows, leave it alone).
pub fn runs_scheduled(row: &SyncerRow, claimed: &[String]) -> bool {
    row.is_enabled || claimed.iter().any(|name| name == &row.name)
}

/// The interval a syncer runs at: its `sync_interval` seconds, floored at `min_interval` (in
/// whole seconds, at least 1: the job scheduler counts whole seconds). The flag says whether the
/// floor applied.
pub fn effective_interval(sync_interval: i32, min_interval: Duration) -> (Duration, bool) {
    let floor = min_interval.as_secs() + u64::from(min_interval.subsec_nanos() > 0);
    let floor = floor.max(1);
    let configured = u64::try_from(sync_interval).unwrap_or_default();
    if configured < floor {
        (Duration::from_secs(floor), true)
    } else {
        (Duration::from_secs(configured), false)
    }
}

/// What in a syncer row decides its job. Secrets enter only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub interval: Duration,
    credentials: u64,
    mapping: u64,
}

impl Fingerprint {
    pub(crate) fn of(row: &SyncerRow, interval: Duration) -> Self {
        let hash = |parts: &[&str]| {
            let mut h = DefaultHasher::new();
            parts.hash(&mut h);
            h.finish()
        };
        Fingerprint {
            interval,
            credentials: hash(&[&row.app_key, row.app_secret.expose()]),
            mapping: hash(&[&row.organization, &row.table_columns, &row.avatar_base_url]),
        }
    }

    /// Names of what changed from `old` to `self`, for the log.
    pub(crate) fn changes(&self, old: &Fingerprint) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.interval != old.interval {
            changed.push("sync_interval");
        }
        if self.credentials != old.credentials {
            changed.push("App Key/Secret");
        }
        if self.mapping != old.mapping {
            changed.push("organization/table_columns/avatar_base_url");
        }
        changed
    }
}

/// What a syncer row asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Desired {
    Disabled,
    Invalid(String),
    Valid(Fingerprint),
}

impl Desired {
    pub(crate) fn of(row: &SyncerRow, min_interval: Duration, claimed: &[String]) -> Self {
        if !runs_scheduled(row, claimed) {
            return Desired::Disabled;
        }
        match row.validate_for_schedule() {
            Err(problem) => Desired::Invalid(problem.to_string()),
            Ok(_) => {
                let (interval, _) = effective_interval(row.sync_interval, min_interval);
                Desired::Valid(Fingerprint::of(row, interval))
            }
        }
    }
}

/// What a reconcile pass does about one syncer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    Nothing,
    /// Add the job and run soon (new, enabled, fixed).
    Start,
    /// Replace the job; run soon when credentials or mapping changed.
    Reschedule {
        run_soon: bool,
    },
    /// Remove the job (disabled).
    Stop,
    /// Remove any job; report the reason unless it was reported already.
    Invalid {
        report: bool,
    },
}

/// The step from what was (`old`, with or without a live job, reason last reported) to `new`.
pub(crate) fn transition(
    old: Option<&Desired>,
    has_job: bool,
    reported: Option<&str>,
    new: &Desired,
) -> Transition {
    match new {
        Desired::Disabled if has_job => Transition::Stop,
        Desired::Disabled => Transition::Nothing,
        Desired::Invalid(reason) => Transition::Invalid {
            report: reported != Some(reason.as_str()),
        },
        Desired::Valid(fp) => match old {
            Some(Desired::Valid(old_fp)) if has_job => {
                if old_fp == fp {
                    Transition::Nothing
                } else {
                    Transition::Reschedule {
                        run_soon: old_fp.credentials != fp.credentials
                            || old_fp.mapping != fp.mapping,
                    }
                }
            }
            _ => Transition::Start,
        },
    }
}

/// The start delay for random value `r`: uniform over `[0, max]` in whole milliseconds.
pub fn start_jitter(r: u64, max: Duration) -> Duration {
    let span = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(r % span.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::launch::random_u64;
    use crate::secret::Secret;

    fn row() -> SyncerRow {
        SyncerRow {
            owner: "admin".into(),
            name: "acme".into(),
            created_time: String::new(),
            organization: "acme".into(),
            syncer_type: "DingTalk".into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new("S3cret-value"),
            table_columns: String::new(),
            avatar_base_url: String::new(),
            error_text: String::new(),
            sync_interval: 60,
            is_read_only: true,
            is_enabled: true,
        }
    }

    #[test]
    fn intervals_are_floored_at_the_minimum_in_whole_seconds() {
        let min = Duration::from_secs(30);
        assert_eq!(
            effective_interval(600, min),
            (Duration::from_secs(600), false)
        );
        assert_eq!(effective_interval(5, min), (Duration::from_secs(30), true));
        assert_eq!(
            effective_interval(30, min),
            (Duration::from_secs(30), false)
        );
        assert_eq!(
            effective_interval(1, Duration::from_millis(1500)),
            (Duration::from_secs(2), true)
        );
        assert_eq!(
            effective_interval(1, Duration::ZERO),
            (Duration::from_secs(1), false)
        );
    }

    #[test]
    fn fingerprints_see_interval_credential_and_mapping_changes_but_not_error_text() {
        let a = row();
        let fp = |r: &SyncerRow| Fingerprint::of(r, Duration::from_secs(r.sync_interval as u64));
        let mut b = a.clone();
        b.error_text = "[t] something\n".into();
        assert_eq!(fp(&a), fp(&b));
        b.app_secret = Secret::new("other");
        assert_eq!(fp(&b).changes(&fp(&a)), vec!["App Key/Secret"]);
        let mut c = a.clone();
        c.sync_interval = 120;
        c.avatar_base_url = "https://cdn/".into();
        assert_eq!(
            fp(&c).changes(&fp(&a)),
            vec![
                "sync_interval",
                "organization/table_columns/avatar_base_url"
            ]
        );
        assert!(!format!("{:?}", fp(&a)).contains("S3cret"));
    }

    #[test]
    fn transitions_start_stop_reschedule_and_report_once() {
        let min = Duration::from_secs(1);
        let valid = Desired::of(&row(), min, &[]);
        let mut slower = row();
        slower.sync_interval = 120;
        let slower = Desired::of(&slower, min, &[]);
        let mut rekeyed = row();
        rekeyed.app_key = "newkey".into();
        let rekeyed = Desired::of(&rekeyed, min, &[]);
        let bad = Desired::Invalid("the App Key is empty".into());

        // New row, enabled and valid: start (and run soon).
        assert_eq!(transition(None, false, None, &valid), Transition::Start);
        // Enabled later.
        assert_eq!(
            transition(Some(&Desired::Disabled), false, None, &valid),
            Transition::Start
        );
        // Unchanged: nothing.
        assert_eq!(
            transition(Some(&valid), true, None, &valid),
            Transition::Nothing
        );
        // A failed job add is retried.
        assert_eq!(
            transition(Some(&valid), false, None, &valid),
            Transition::Start
        );
        assert_eq!(
            transition(Some(&valid), true, None, &slower),
            Transition::Reschedule { run_soon: false }
        );
        assert_eq!(
            transition(Some(&valid), true, None, &rekeyed),
            Transition::Reschedule { run_soon: true }
        );
        assert_eq!(
            transition(Some(&valid), true, None, &Desired::Disabled),
            Transition::Stop
        );
        assert_eq!(
            transition(Some(&Desired::Disabled), false, None, &Desired::Disabled),
            Transition::Nothing
        );
        // Invalid: reported the first time, not again for the same reason, again for a new one.
        assert_eq!(
            transition(Some(&valid), true, None, &bad),
            Transition::Invalid { report: true }
        );
        assert_eq!(
            transition(Some(&bad), false, Some("the App Key is empty"), &bad),
            Transition::Invalid { report: false }
        );
        assert_eq!(
            transition(
                Some(&bad),
                false,
                Some("the App Key is empty"),
                &Desired::Invalid("sync_interval is 0".into())
            ),
            Transition::Invalid { report: true }
        );
        // Fixed: start again.
        assert_eq!(
            transition(Some(&bad), false, Some("the App Key is empty"), &valid),
            Transition::Start
        );
    }

    #[test]
    fn start_jitter_stays_within_its_bound() {
        let max = MAX_START_JITTER;
        assert_eq!(start_jitter(0, max), Duration::ZERO);
        assert_eq!(start_jitter(3000, max), max);
        assert_eq!(start_jitter(3001, max), Duration::ZERO);
        for _ in 0..1000 {
            assert!(start_jitter(random_u64(), max) <= max);
        }
        // Not all the same: the spread is the point.
        let distinct: HashSet<u128> = (0..50)
            .map(|_| start_jitter(random_u64(), max).as_millis())
            .collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }
}
