//! Catching up on leavers after the event stream was away: when a syncer's stream starts
//! (daemon start, stream lease taken over) and whenever it reconnects, DingTalk's leave records
//! (`empLeaveRecords`) since the gap began are read, and each record goes into the inbox as a
//! [`LEAVE_RECORD_EVENT`]. The applier turns them into event runs like any `user_leave_org`:
//! `user/get` per user, the syncer's leaver policy, the removal limits, the lease, run history.
//! A record's event id names the user and the leave time, so a record read again by a later,
//! overlapping catch-up is a duplicate the inbox drops.
//!
//! The gap starts where the stream went down, or on start at the newest full run that wrote
//! Casdoor (it saw every leaver gone by then), less [`LEAVE_RECORDS_MARGIN`]. A full run
//! catches up instead when the leave records cannot be read (the app lacks `Contact.Common.Read`,
//! DingTalk or the network fails) or the gap is longer than the 365 days they cover; after a
//! reconnect only when the stream was down for [`CATCH_UP_AFTER`] or more, as before leave
//! records: a short blip does not cost a directory walk. Why the records could not be read is
//! logged as a warning once per reason.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::CATCH_UP_AFTER;
use crate::daemon::events::LEAVE_RECORD_EVENT;
use crate::daemon::scheduler::Shared;
use crate::db::inbox::{InboxEvent, store_events};
use crate::db::leases::epoch_millis;
use crate::db::runs::last_full_run_started;
use crate::db::{Db, RunTrigger};
use crate::dingtalk::leave::{leave_records_max_window, open_api_time};
use crate::dingtalk::{CallCounter, Credentials, LeaveRecords};
use crate::launch::bounded;
use crate::syncer::ValidSyncer;

/// How far before the gap the leave records are read: DingTalk's clock may differ from this
/// host's, and a record may be written a little after the user was removed.
pub(crate) const LEAVE_RECORDS_MARGIN: Duration = Duration::from_secs(600);

/// Why a stream asks for a catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gap {
    /// The stream starts here: nobody here listened before.
    Start,
    /// The stream came back after being down from `since` for `down`.
    Reconnect { since: SystemTime, down: Duration },
}

impl Gap {
    /// One gap covering both.
    fn merge(self, other: Gap) -> Gap {
        match (self, other) {
            (Gap::Reconnect { since: a, down: da }, Gap::Reconnect { since: b, down: db }) => {
                Gap::Reconnect {
                    since: a.min(b),
                    down: da.max(db),
                }
            }
            _ => Gap::Start,
        }
    }

    /// Whether a full run catches up when the leave records cannot: on start, and after a
    /// reconnect from [`CATCH_UP_AFTER`] or more down.
    fn full_run_instead(self) -> bool {
        match self {
            Gap::Start => true,
            Gap::Reconnect { down, .. } => down >= CATCH_UP_AFTER,
        }
    }
}

/// What one catch-up does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Read the leave records from this time on.
    Records { from: DateTime<Utc> },
    /// A full run, for this reason.
    FullRun(String),
}

/// The catch-up of `gap`, `last_full_run` being when the newest full run that wrote Casdoor
/// started (read only for [`Gap::Start`]).
fn plan(gap: Gap, last_full_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Plan {
    let start = match gap {
        Gap::Start => match last_full_run {
            Some(at) => at,
            None => {
                return Plan::FullRun(
                    "the run history has no full run to read the leave records from".to_owned(),
                );
            }
        },
        Gap::Reconnect { since, .. } => DateTime::<Utc>::from(since),
    };
    let margin = chrono::Duration::from_std(LEAVE_RECORDS_MARGIN).unwrap_or_default();
    let from = start - margin;
    // A day short of DingTalk's limit: its clock, not ours, decides.
    if now - from > leave_records_max_window() - TimeDelta::days(1) {
        return Plan::FullRun(format!(
            "the gap since {} is longer than the 365 days DingTalk's leave records cover",
            open_api_time(from)
        ));
    }
    Plan::Records { from }
}

/// The inbox event of one leave record: its id names the user and the leave time, so the same
/// record read twice is one event.
fn leave_event(
    syncer: &str,
    user_id: &str,
    leave_time: Option<DateTime<Utc>>,
    now_ms: i64,
) -> InboxEvent {
    let at = leave_time.map_or_else(
        || "unknown".to_owned(),
        |t| t.timestamp_millis().to_string(),
    );
    InboxEvent {
        syncer_name: syncer.to_owned(),
        event_id: format!("leave-record:{at}:{user_id}"),
        event_type: LEAVE_RECORD_EVENT.to_owned(),
        user_ids: vec![user_id.to_owned()],
        dept_ids: Vec::new(),
        // Not DingTalk's birth of an event: the event-to-row latency counts from storing it.
        born_at: None,
        received_at: now_ms,
    }
}

/// The catch-ups a syncer's stream asked for and not yet done, and the last reason the leave
/// records could not be read that was logged as a warning.
#[derive(Debug, Default)]
pub(crate) struct CatchUps {
    due: Mutex<Option<Gap>>,
    wake: Notify,
    warned: Mutex<Option<String>>,
}

impl CatchUps {
    /// Asks for a catch-up of `gap` (merged with one not yet done).
    pub(crate) fn ask(&self, gap: Gap) {
        {
            let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
            *due = Some(due.map_or(gap, |g| g.merge(gap)));
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Option<Gap> {
        self.due.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether `reason` is new (and now the one warned about).
    fn first_time(&self, reason: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.as_deref() == Some(reason) {
            return false;
        }
        *warned = Some(reason.to_owned());
        true
    }
}

/// Follows the state of a connection: asks for [`Gap::Start`] on its first connection and for
/// a [`Gap::Reconnect`] on every later one.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    connected_before: Option<SystemTime>,
    down_since: Option<(SystemTime, Instant)>,
}

impl GapTracker {
    /// The connection is down (again).
    pub(crate) fn down(&mut self) {
        self.down_since
            .get_or_insert_with(|| (SystemTime::now(), Instant::now()));
    }

    /// The connection is up, since `since`: the gap to catch up on, if any.
    pub(crate) fn up(&mut self, since: SystemTime) -> Option<Gap> {
        let Some(before) = self.connected_before.replace(since) else {
            self.down_since = None;
            return Some(Gap::Start);
        };
        match self.down_since.take() {
            Some((since, at)) => Some(Gap::Reconnect {
                since,
                down: at.elapsed(),
            }),
            // A new connection whose outage went unseen: from the previous one's start.
            None if before != since => Some(Gap::Reconnect {
                since: before,
                down: Duration::ZERO,
            }),
            None => None,
        }
    }
}

/// Does the catch-ups `catch_ups` is asked for, one at a time, until `cancel`; the events
/// stored wake the applier through `applier`.
pub(crate) async fn catch_up_worker(
    shared: &Shared,
    db: &Db,
    syncer: &ValidSyncer,
    catch_ups: &CatchUps,
    applier: &Notify,
    cancel: &CancellationToken,
) {
    loop {
        while let Some(gap) = catch_ups.take() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                () = catch_up(shared, db, syncer, gap, catch_ups, applier) => {}
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = catch_ups.wake.notified() => {}
        }
    }
}

async fn catch_up(
    shared: &Shared,
    db: &Db,
    syncer: &ValidSyncer,
    gap: Gap,
    catch_ups: &CatchUps,
    applier: &Notify,
) {
    let name = syncer.name.as_str();
    let Some(client) = shared.streams().client() else {
        // No DingTalk client to read leave records with (a daemon of placeholder runs): the
        // full run alone, after a long enough outage.
        if matches!(gap, Gap::Reconnect { .. }) && gap.full_run_instead() {
            full_run(shared, name, "its event stream was down").await;
        }
        return;
    };
    let last_full_run = match gap {
        Gap::Start => {
            let read = bounded(
                shared.live().db_timeout,
                "reading the run history",
                last_full_run_started(db, name),
            )
            .await;
            match read {
                Ok(at) => at,
                Err(e) => return fall_back(shared, name, gap, catch_ups, e.to_string()).await,
            }
        }
        Gap::Reconnect { .. } => None,
    };
    let from = match plan(gap, last_full_run, Utc::now()) {
        Plan::Records { from } => from,
        Plan::FullRun(why) => return full_run(shared, name, &why).await,
    };
    let credentials = Credentials {
        app_key: syncer.app_key.clone(),
        app_secret: syncer.app_secret.clone(),
    };
    let calls = CallCounter::new();
    match client.leave_records(&credentials, from, None, &calls).await {
        Ok(listed) => store(shared, db, name, from, &listed, calls.get(), applier).await,
        Err(e) => fall_back(shared, name, gap, catch_ups, e.to_string()).await,
    }
}

/// Puts the leavers of `listed` in the inbox and wakes the applier when any is new.
async fn store(
    shared: &Shared,
    db: &Db,
    name: &str,
    from: DateTime<Utc>,
    listed: &LeaveRecords,
    calls: u64,
    applier: &Notify,
) {
    let now_ms = epoch_millis();
    let events: Vec<InboxEvent> = listed
        .records
        .iter()
        .map(|r| leave_event(name, &r.user_id, r.leave_time, now_ms))
        .collect();
    let skipped = if listed.skipped > 0 {
        format!(", {} without a usable userId skipped", listed.skipped)
    } else {
        String::new()
    };
    let stored = bounded(
        shared.live().db_timeout,
        "storing the leave records in the inbox",
        store_events(db, name, &events),
    )
    .await;
    match stored {
        Ok(new) => {
            let line = format!(
                "syncer {name}: DingTalk's leave records since {}: leavers listed {}, new to the \
                 inbox {new}, DingTalk calls {calls}{skipped}",
                open_api_time(from),
                events.len()
            );
            if new > 0 {
                tracing::info!("{line}");
                applier.notify_one();
            } else {
                tracing::debug!("{line}");
            }
            shared.metrics.record_catch_up(name, "leave_records");
        }
        Err(e) => {
            tracing::warn!(
                "syncer {name}: the leavers DingTalk's leave records list could not be stored, \
                 the next interval run catches up: {e}"
            );
            shared.metrics.record_catch_up(name, "interval_run");
        }
    }
}

/// The leave records could not be read for `reason`: a full run catches up, if the gap calls
/// for one. The reason is a warning the first time, then a debug line.
async fn fall_back(shared: &Shared, name: &str, gap: Gap, catch_ups: &CatchUps, reason: String) {
    let first = catch_ups.first_time(&reason);
    let full = gap.full_run_instead();
    let then = if full {
        "a full run catches up instead"
    } else {
        "the stream was down briefly; the next interval run catches up"
    };
    if first {
        tracing::warn!(
            "syncer {name}: DingTalk's leave records could not be read, {then} (said once per \
             reason): {reason}"
        );
    } else {
        tracing::debug!("syncer {name}: leave records still unreadable, {then}: {reason}");
    }
    if full {
        full_run(shared, name, "the leave records could not be read").await;
    } else {
        shared.metrics.record_catch_up(name, "interval_run");
    }
}

async fn full_run(shared: &Shared, name: &str, why: &str) {
    tracing::info!("syncer {name}: {why}; a full run catches up");
    shared.metrics.record_catch_up(name, "full_run");
    if let Err(e) = shared.trigger(name, RunTrigger::Catchup).await {
        tracing::info!("syncer {name}: catch-up run not started: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_start_reads_from_the_last_full_run_and_a_reconnect_from_the_outage() {
        let now = at("2026-06-01T12:00:00Z");
        assert_eq!(
            plan(Gap::Start, Some(at("2026-06-01T11:00:00Z")), now),
            Plan::Records {
                from: at("2026-06-01T10:50:00Z")
            }
        );
        let since = SystemTime::from(at("2026-06-01T11:59:00Z"));
        let reconnect = Gap::Reconnect {
            since,
            down: Duration::from_secs(60),
        };
        assert_eq!(
            plan(reconnect, None, now),
            Plan::Records {
                from: at("2026-06-01T11:49:00Z")
            }
        );
        assert!(matches!(plan(Gap::Start, None, now), Plan::FullRun(_)));
        let long_ago = Some(at("2025-06-01T12:00:00Z"));
        let Plan::FullRun(why) = plan(Gap::Start, long_ago, now) else {
            panic!("a gap over 365 days needs a full run");
        };
        assert!(why.contains("365 days"), "{why}");
        assert!(matches!(
            plan(Gap::Start, Some(at("2025-06-10T12:00:00Z")), now),
            Plan::Records { .. }
        ));
    }

    #[test]
    fn gaps_merge_into_the_widest_and_only_long_ones_fall_back_to_a_full_run() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let short = Gap::Reconnect {
            since: t(100),
            down: Duration::from_secs(5),
        };
        let long = Gap::Reconnect {
            since: t(50),
            down: CATCH_UP_AFTER,
        };
        assert_eq!(short.merge(long), long.merge(short));
        assert_eq!(
            short.merge(long),
            Gap::Reconnect {
                since: t(50),
                down: CATCH_UP_AFTER
            }
        );
        assert_eq!(short.merge(Gap::Start), Gap::Start);
        assert!(!short.full_run_instead());
        assert!(long.full_run_instead());
        assert!(Gap::Start.full_run_instead());
    }

    #[test]
    fn the_tracker_asks_for_a_start_then_for_each_reconnect() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut tracker = GapTracker::default();
        tracker.down();
        assert_eq!(tracker.up(t(1)), Some(Gap::Start));
        assert_eq!(tracker.up(t(1)), None, "the same connection");
        tracker.down();
        tracker.down();
        assert!(matches!(tracker.up(t(9)), Some(Gap::Reconnect { .. })));
        assert_eq!(
            tracker.up(t(20)),
            Some(Gap::Reconnect {
                since: t(9),
                down: Duration::ZERO
            }),
            "a reconnect whose outage went unseen"
        );
    }

    #[test]
    fn a_record_read_twice_is_one_event() {
        let left = Some(at("2026-06-01T11:30:00Z"));
        let a = leave_event("acme", "u1", left, 1);
        let b = leave_event("acme", "u1", left, 2);
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, leave_event("acme", "u2", left, 1).event_id);
        assert_ne!(a.event_id, leave_event("acme", "u1", None, 1).event_id);
        assert_eq!(a.event_type, LEAVE_RECORD_EVENT);
        assert_eq!(a.user_ids, ["u1"]);
        assert!(
            a.event_id.len() <= 128
                && leave_event("a", &"x".repeat(64), left, 1).event_id.len() <= 128
        );
    }

    #[test]
    fn a_reason_is_a_warning_until_it_changes() {
        let catch_ups = CatchUps::default();
        assert!(catch_ups.first_time("no permission"));
        assert!(!catch_ups.first_time("no permission"));
        assert!(catch_ups.first_time("timeout"));
        assert!(catch_ups.first_time("no permission"));
    }
}
