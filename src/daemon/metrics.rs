//! The daemon's counters, rendered in the Prometheus text format by `/metrics`.
//!
//! Rendered by hand: a dozen series do not justify a recorder crate. Labels are syncer names,
//! run statuses and fixed reasons only, never a credential; label values are escaped as the
//! exposition format requires.

use crate::db::RunStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::RunSummary;
use crate::stream::{StreamStats, StreamStatsSnapshot};

/// Upper bounds (seconds) of the run-duration histogram buckets.
const DURATION_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Why a tick did not start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// The previous run of the syncer was still going in this process.
    Overlap,
    /// Another process holds the syncer's lease.
    Lease,
}

impl SkipReason {
    fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Lease => "lease",
        }
    }
}

/// What became of a notice (`notify.webhook_url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoticeResult {
    /// The webhook took it.
    Sent,
    /// Every attempt failed.
    Failed,
    /// Never attempted: the queue was full or the daemon stopped first.
    Dropped,
}

impl NoticeResult {
    fn as_str(self) -> &'static str {
        match self {
            NoticeResult::Sent => "sent",
            NoticeResult::Failed => "failed",
            NoticeResult::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    /// The exposition lines of this histogram of `syncer` (escaped already).
    fn lines(&self, syncer: &str) -> Vec<String> {
        let mut lines: Vec<String> = DURATION_BUCKETS
            .iter()
            .zip(self.buckets)
            .map(|(bound, n)| format!("_bucket{{syncer=\"{syncer}\",le=\"{bound}\"}} {n}"))
            .collect();
        lines.push(format!(
            "_bucket{{syncer=\"{syncer}\",le=\"+Inf\"}} {}",
            self.count
        ));
        lines.push(format!("_sum{{syncer=\"{syncer}\"}} {:.3}", self.sum));
        lines.push(format!("_count{{syncer=\"{syncer}\"}} {}", self.count));
        lines
    }
}

#[derive(Debug, Default)]
struct Inner {
    runs: BTreeMap<(String, &'static str), u64>,
    last_success: BTreeMap<String, f64>,
    durations: BTreeMap<String, Histogram>,
    users: BTreeMap<(String, &'static str), u64>,
    api_calls: BTreeMap<String, u64>,
    skipped: BTreeMap<(String, SkipReason), u64>,
    notices: BTreeMap<NoticeResult, u64>,
    reconciles: u64,
    reconcile_errors: u64,
    invalid_syncers: u64,
    scheduled_syncers: u64,
    runs_in_progress: u64,
    ready: bool,
    /// DingTalk Stream events by syncer and whether the inbox had them already.
    stream_events: BTreeMap<(String, &'static str), u64>,
    stream_applied: BTreeMap<String, u64>,
    /// From `eventBornTime` to the run that applied the event having finished.
    stream_latency: BTreeMap<String, Histogram>,
    stream_connected: BTreeMap<String, bool>,
    /// Catch-ups after a stream start or reconnect, by syncer and how they caught up.
    stream_catchups: BTreeMap<(String, &'static str), u64>,
    /// The live counters of each syncer's Stream client.
    stream_clients: BTreeMap<String, Arc<StreamStats>>,
}

/// All counters of one daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// A finished run of `syncer`, finished at `finished_unix` (seconds since the epoch).
    pub fn record_run(&self, syncer: &str, summary: &RunSummary, finished_unix: f64) {
        self.with(|m| {
            *m.runs
                .entry((syncer.to_owned(), summary.status.as_str()))
                .or_default() += 1;
            if summary.status == RunStatus::Succeeded {
                m.last_success.insert(syncer.to_owned(), finished_unix);
            }
            m.durations
                .entry(syncer.to_owned())
                .or_default()
                .observe(summary.duration.as_secs_f64());
            let c = &summary.counts;
            for (action, n) in [
                ("created", c.created),
                ("updated", c.updated),
                ("forbidden", c.forbidden),
                ("deleted", c.deleted),
            ] {
                *m.users.entry((syncer.to_owned(), action)).or_default() += n;
            }
            *m.api_calls.entry(syncer.to_owned()).or_default() += summary.api_calls;
        });
    }

    pub fn record_skip(&self, syncer: &str, reason: SkipReason) {
        self.with(|m| *m.skipped.entry((syncer.to_owned(), reason)).or_default() += 1);
    }

    /// Ticks of `syncer` skipped for `reason` so far.
    pub fn skipped(&self, syncer: &str, reason: SkipReason) -> u64 {
        self.with(|m| {
            m.skipped
                .get(&(syncer.to_owned(), reason))
                .copied()
                .unwrap_or_default()
        })
    }

    /// `n` notices that ended as `result`.
    pub fn record_notices(&self, result: NoticeResult, n: u64) {
        self.with(|m| *m.notices.entry(result).or_default() += n);
    }

    /// Notices that ended as `result` so far.
    pub fn notices(&self, result: NoticeResult) -> u64 {
        self.with(|m| m.notices.get(&result).copied().unwrap_or_default())
    }

    pub fn record_reconcile(&self, ok: bool) {
        self.with(|m| {
            m.reconciles += 1;
            if !ok {
                m.reconcile_errors += 1;
            }
        });
    }

    pub fn set_syncer_counts(&self, scheduled: u64, invalid: u64) {
        self.with(|m| {
            m.scheduled_syncers = scheduled;
            m.invalid_syncers = invalid;
        });
    }

    pub fn set_ready(&self, ready: bool) {
        self.with(|m| m.ready = ready);
    }

    pub fn run_started(&self) {
        self.with(|m| m.runs_in_progress += 1);
    }

    pub fn run_ended(&self) {
        self.with(|m| m.runs_in_progress = m.runs_in_progress.saturating_sub(1));
    }

    /// A DingTalk Stream event of `syncer` received; `duplicate` when the inbox had it.
    pub fn record_event(&self, syncer: &str, duplicate: bool) {
        let outcome = if duplicate { "duplicate" } else { "stored" };
        self.with(|m| {
            *m.stream_events
                .entry((syncer.to_owned(), outcome))
                .or_default() += 1
        });
    }

    /// Events of `syncer` applied by a run, with the seconds from each one's birth in DingTalk
    /// to its run having finished.
    pub fn record_events_applied(&self, syncer: &str, latencies: &[f64]) {
        self.with(|m| {
            *m.stream_applied.entry(syncer.to_owned()).or_default() += latencies.len() as u64;
            let h = m.stream_latency.entry(syncer.to_owned()).or_default();
            for &secs in latencies {
                h.observe(secs);
            }
        });
    }

    /// A catch-up of `syncer`'s stream: `leave_records` (the leavers went to the inbox),
    /// `full_run` (one was asked for instead) or `interval_run` (nothing now: the records
    /// could not be read or stored after a short outage; the next interval run covers it).
    pub fn record_catch_up(&self, syncer: &str, outcome: &'static str) {
        self.with(|m| {
            *m.stream_catchups
                .entry((syncer.to_owned(), outcome))
                .or_default() += 1
        });
    }

    /// Whether `syncer`'s Stream connection is up (`None`: it has none any more).
    pub fn set_stream_connected(&self, syncer: &str, connected: Option<bool>) {
        self.with(|m| match connected {
            Some(up) => {
                m.stream_connected.insert(syncer.to_owned(), up);
            }
            None => {
                m.stream_connected.remove(syncer);
                m.stream_clients.remove(syncer);
            }
        });
    }

    /// The counters of `syncer`'s Stream client, read at every render.
    pub fn watch_stream_client(&self, syncer: &str, stats: Arc<StreamStats>) {
        self.with(|m| {
            m.stream_clients.insert(syncer.to_owned(), stats);
        });
    }

    /// Runs that hold their lease and are under way in this process.
    pub fn runs_in_progress(&self) -> u64 {
        self.with(|m| m.runs_in_progress)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();

            let lines = m.runs.iter().map(|((syncer, status), n)| {
                format!("{{syncer=\"{}\",status=\"{status}\"}} {n}", escape(syncer))
            });
            family(
                &mut out,
                "syncerd_runs_total",
                "counter",
                "Finished runs by syncer and final status.",
                lines,
            );

            let lines = m
                .last_success
                .iter()
                .map(|(syncer, at)| format!("{{syncer=\"{}\"}} {at:.3}", escape(syncer)));
            family(
                &mut out,
                "syncerd_last_success_timestamp_seconds",
                "gauge",
                "When each syncer last finished a run that succeeded (Unix time).",
                lines,
            );

            let lines = m
                .durations
                .iter()
                .flat_map(|(syncer, h)| h.lines(&escape(syncer)));
            family(
                &mut out,
                "syncerd_run_duration_seconds",
                "histogram",
                "How long runs took, by syncer.",
                lines,
            );

            let lines = m.users.iter().map(|((syncer, action), n)| {
                format!("{{syncer=\"{}\",action=\"{action}\"}} {n}", escape(syncer))
            });
            family(
                &mut out,
                "syncerd_users_total",
                "counter",
                "Casdoor users changed by runs, by syncer and action (created, updated, forbidden, deleted).",
                lines,
            );

            let lines = m
                .api_calls
                .iter()
                .map(|(syncer, n)| format!("{{syncer=\"{}\"}} {n}", escape(syncer)));
            family(
                &mut out,
                "syncerd_dingtalk_api_calls_total",
                "counter",
                "DingTalk API calls made by runs, by syncer.",
                lines,
            );

            let lines = m.skipped.iter().map(|((syncer, reason), n)| {
                format!(
                    "{{syncer=\"{}\",reason=\"{}\"}} {n}",
                    escape(syncer),
                    reason.as_str()
                )
            });
            family(
                &mut out,
                "syncerd_skipped_ticks_total",
                "counter",
                "Ticks that started no run: overlap (still running here) or lease (running elsewhere).",
                lines,
            );

            let lines = m
                .notices
                .iter()
                .map(|(result, n)| format!("{{result=\"{}\"}} {n}", result.as_str()));
            family(
                &mut out,
                "syncerd_notices_total",
                "counter",
                "Notices for notify.webhook_url: sent, failed (every attempt), or dropped (never attempted).",
                lines,
            );

            for (name, kind, help, value) in [
                (
                    "syncerd_reconciles_total",
                    "counter",
                    "Passes over the syncer table.",
                    m.reconciles,
                ),
                (
                    "syncerd_reconcile_errors_total",
                    "counter",
                    "Passes over the syncer table that failed (database errors, timeouts).",
                    m.reconcile_errors,
                ),
                (
                    "syncerd_syncers_scheduled",
                    "gauge",
                    "Enabled, valid syncers with a job.",
                    m.scheduled_syncers,
                ),
                (
                    "syncerd_syncers_invalid",
                    "gauge",
                    "Enabled syncers skipped because their row is invalid.",
                    m.invalid_syncers,
                ),
                (
                    "syncerd_runs_in_progress",
                    "gauge",
                    "Runs under way in this process.",
                    m.runs_in_progress,
                ),
                (
                    "syncerd_ready",
                    "gauge",
                    "1 when /readyz answers 200.",
                    u64::from(m.ready),
                ),
            ] {
                family(&mut out, name, kind, help, [format!(" {value}")].into_iter());
            }
            render_stream(m, &mut out);
            out
        })
    }
}

/// The DingTalk Stream families.
fn render_stream(m: &Inner, out: &mut String) {
    let lines = m
        .stream_connected
        .iter()
        .map(|(syncer, up)| format!("{{syncer=\"{}\"}} {}", escape(syncer), u8::from(*up)));
    family(
        out,
        "syncerd_stream_connected",
        "gauge",
        "1 while the syncer's DingTalk Stream connection is up in this process.",
        lines,
    );
    let lines = m.stream_events.iter().map(|((syncer, outcome), n)| {
        format!(
            "{{syncer=\"{}\",outcome=\"{outcome}\"}} {n}",
            escape(syncer)
        )
    });
    family(
        out,
        "syncerd_stream_events_total",
        "counter",
        "DingTalk address-book events received, by syncer: stored, or duplicate (the inbox had it).",
        lines,
    );
    let lines = m
        .stream_applied
        .iter()
        .map(|(syncer, n)| format!("{{syncer=\"{}\"}} {n}", escape(syncer)));
    family(
        out,
        "syncerd_stream_events_applied_total",
        "counter",
        "DingTalk events applied by event runs, by syncer.",
        lines,
    );
    let lines = m.stream_catchups.iter().map(|((syncer, outcome), n)| {
        format!(
            "{{syncer=\"{}\",outcome=\"{outcome}\"}} {n}",
            escape(syncer)
        )
    });
    family(
        out,
        "syncerd_stream_catchups_total",
        "counter",
        "Catch-ups after a stream started or reconnected, by syncer: leave_records (leavers read \
         from DingTalk's leave records), full_run (a full run instead) or interval_run (left to \
         the next interval run).",
        lines,
    );
    let clients: Vec<(String, StreamStatsSnapshot)> = m
        .stream_clients
        .iter()
        .map(|(syncer, stats)| (escape(syncer), stats.snapshot()))
        .collect();
    let per_client = |pick: fn(&StreamStatsSnapshot) -> String| {
        clients
            .iter()
            .map(move |(s, snap)| format!("{{syncer=\"{s}\"}} {}", pick(snap)))
            .collect::<Vec<_>>()
            .into_iter()
    };
    for (name, kind, help, pick) in [
        (
            "syncerd_stream_connections_total",
            "counter",
            "WebSocket connections the Stream client opened (a reconnection adds one).",
            (|s| s.connections.to_string()) as fn(&StreamStatsSnapshot) -> String,
        ),
        (
            "syncerd_stream_events_later_total",
            "counter",
            "Events answered LATER because the inbox could not store them.",
            |s| s.events_later.to_string(),
        ),
        (
            "syncerd_stream_ack_latency_seconds_sum",
            "counter",
            "Time from an event's arrival to its acknowledgement (stored in the inbox), summed.",
            |s| format!("{:.6}", s.ack_latency_micros_total as f64 / 1e6),
        ),
        (
            "syncerd_stream_ack_latency_seconds_count",
            "counter",
            "Events acknowledged.",
            |s| s.events_acked.to_string(),
        ),
        (
            "syncerd_stream_ack_latency_seconds_max",
            "gauge",
            "The longest time from an event's arrival to its acknowledgement.",
            |s| format!("{:.6}", s.ack_latency_micros_max as f64 / 1e6),
        ),
    ] {
        family(out, name, kind, help, per_client(pick));
    }
    let lines = m
        .stream_latency
        .iter()
        .flat_map(|(syncer, h)| h.lines(&escape(syncer)));
    family(
        out,
        "syncerd_stream_event_latency_seconds",
        "histogram",
        "From an event's birth in DingTalk to the run that applied it having finished.",
        lines,
    );
}

/// Writes one metric family: its HELP and TYPE lines, then `name` + each suffix.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    lines: impl Iterator<Item = String>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for line in lines {
        let _ = writeln!(out, "{name}{line}");
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds since the epoch, for timestamps in metrics.
pub fn unix_seconds_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn summary(status: RunStatus, secs: f64) -> RunSummary {
        RunSummary {
            counts: crate::db::RunCounts {
                created: 3,
                updated: 2,
                forbidden: 1,
                ..Default::default()
            },
            api_calls: 7,
            ..RunSummary::bare(status, Duration::from_secs_f64(secs), None)
        }
    }

    #[test]
    fn metrics_render_runs_durations_users_and_skips() {
        let m = Metrics::default();
        m.record_run("acme", &summary(RunStatus::Succeeded, 1.5), 1_700_000_000.0);
        m.record_run("acme", &summary(RunStatus::Failed, 0.2), 1_700_000_100.0);
        m.record_skip("acme", SkipReason::Overlap);
        m.record_skip("acme", SkipReason::Overlap);
        m.record_skip("acme", SkipReason::Lease);
        m.record_reconcile(true);
        m.record_reconcile(false);
        m.record_notices(NoticeResult::Sent, 2);
        m.record_notices(NoticeResult::Dropped, 1);
        let text = m.render();
        for line in [
            "syncerd_runs_total{syncer=\"acme\",status=\"succeeded\"} 1",
            "syncerd_runs_total{syncer=\"acme\",status=\"failed\"} 1",
            "syncerd_last_success_timestamp_seconds{syncer=\"acme\"} 1700000000.000",
            "syncerd_run_duration_seconds_bucket{syncer=\"acme\",le=\"0.5\"} 1",
            "syncerd_run_duration_seconds_bucket{syncer=\"acme\",le=\"2.5\"} 2",
            "syncerd_run_duration_seconds_bucket{syncer=\"acme\",le=\"+Inf\"} 2",
            "syncerd_run_duration_seconds_count{syncer=\"acme\"} 2",
            "syncerd_users_total{syncer=\"acme\",action=\"created\"} 6",
            "syncerd_users_total{syncer=\"acme\",action=\"forbidden\"} 2",
            "syncerd_dingtalk_api_calls_total{syncer=\"acme\"} 14",
            "syncerd_skipped_ticks_total{syncer=\"acme\",reason=\"overlap\"} 2",
            "syncerd_skipped_ticks_total{syncer=\"acme\",reason=\"lease\"} 1",
            "syncerd_reconcile_errors_total 1",
            "syncerd_reconciles_total 2",
            "syncerd_notices_total{result=\"sent\"} 2",
            "syncerd_notices_total{result=\"dropped\"} 1",
            "# TYPE syncerd_run_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert_eq!(m.skipped("acme", SkipReason::Overlap), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.record_skip("we\"ird\\name\n", SkipReason::Lease);
        let text = m.render();
        assert!(
            text.contains("syncer=\"we\\\"ird\\\\name\\n\""),
            "label not escaped:\n{text}"
        );
    }
}
