//! One reconcile pass over the `syncer` table: recover runs a dead process left `running`,
//! read our rows, and per row apply the [`transition`] from what was to what should be to the
//! job table; report each invalid row once in its `error_text`.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;

use super::health::LastRun;
use super::jobs::SyncerJobs;
use super::reconcile::{Desired, Transition, effective_interval, runs_scheduled, transition};
use super::{LiveSettings, Shared};
use crate::db::leases::{ORPHANED_RUN_REASON, epoch_millis, interrupt_orphaned_runs};
use crate::db::{self, Db, SYNCER_OWNER, SyncerRow};
use crate::launch::{bounded, log_orphaned};

/// One syncer row of ours, as last reconciled.
pub(crate) struct Entry {
    pub row: SyncerRow,
    pub desired: Desired,
    pub jobs: SyncerJobs,
    /// The invalid-row reason last reported.
    reported: Option<String>,
    /// The `sync_interval` last warned about for being below `scheduler.min_interval`.
    floor_warned: Option<i32>,
    /// The settings `desired` was worked out under: `scheduler.min_interval` and whether the
    /// row runs on schedule (`is_enabled`, or `scheduler.claimed_syncers` names it).
    basis: Option<(std::time::Duration, bool)>,
    pub last_run: Option<LastRun>,
}

/// An invalid row to report in its `error_text`: (name, reason, the `error_text` read).
type Report = (String, String, String);

impl Shared {
    /// One pass over the `syncer` table; see the module docs. Returns how many syncers have a
    /// job.
    pub(crate) async fn reconcile_once(&self) -> Result<usize, String> {
        let db = self
            .db()
            .ok_or_else(|| "not connected to the database".to_owned())?;
        let live = self.live();
        self.start_jobs();
        self.recover_orphaned_runs(db, &live).await?;

        let rows = bounded(
            live.db_timeout,
            "reading the syncer table",
            db::list_syncers(db),
        )
        .await?;
        let ours: Vec<SyncerRow> = rows
            .into_iter()
            .filter(|r| r.owner == SYNCER_OWNER && live.accepted_types.contains(&r.syncer_type))
            .collect();

        let (scheduled, invalid, reports) = {
            let mut syncers = self.syncers.lock().await;
            self.forget_gone(&mut syncers, &ours);
            let mut reports = Vec::new();
            for row in ours {
                if let Some(report) = self.reconcile_row(&mut syncers, row, &live) {
                    reports.push(report);
                }
            }
            let scheduled = syncers.values().filter(|e| e.jobs.every.is_some()).count();
            self.follow_streams(&self.streaming(&syncers));
            let invalid = syncers
                .values()
                .filter(|e| matches!(e.desired, Desired::Invalid(_)))
                .count();
            (scheduled, invalid, reports)
        };
        self.metrics
            .set_syncer_counts(scheduled as u64, invalid as u64);
        self.report_invalid(db, &live, reports).await;
        self.retention
            .prune(db, live.keep_days, live.db_timeout)
            .await;
        Ok(scheduled)
    }

    /// The syncers that keep an event stream: enabled (or claimed), valid, and streaming.
    fn streaming<'a>(&self, syncers: &'a BTreeMap<String, Entry>) -> Vec<&'a SyncerRow> {
        syncers
            .values()
            .filter(|e| {
                matches!(e.desired, Desired::Valid(_)) && self.streams().streams(&e.row.name)
            })
            .map(|e| &e.row)
            .collect()
    }

    /// Runs left `running` by a process that is gone (older than a lease, so never a run that
    /// is just starting).
    async fn recover_orphaned_runs(&self, db: &Db, live: &LiveSettings) -> Result<(), String> {
        let started_before = Utc::now()
            - chrono::Duration::from_std(live.lease.ttl).unwrap_or(chrono::Duration::zero());
        let orphaned = bounded(
            live.db_timeout,
            "recovering interrupted runs",
            interrupt_orphaned_runs(
                db,
                None,
                epoch_millis(),
                started_before,
                ORPHANED_RUN_REASON,
            ),
        )
        .await?;
        log_orphaned(&orphaned);
        Ok(())
    }

    /// Unschedules the syncers that are no longer rows of ours.
    fn forget_gone(&self, syncers: &mut BTreeMap<String, Entry>, ours: &[SyncerRow]) {
        let names: HashSet<&str> = ours.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<String> = syncers
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut entry) = syncers.remove(&name)
                && self.jobs.remove(&mut entry.jobs)
            {
                tracing::info!(
                    "syncer {name} is gone (deleted, renamed, or no longer a syncer of ours): \
                     unscheduled"
                );
            }
        }
    }

    /// Brings the entry of `row` in step with it; returns the problem to report, if any.
    fn reconcile_row(
        &self,
        syncers: &mut BTreeMap<String, Entry>,
        row: SyncerRow,
        live: &LiveSettings,
    ) -> Option<Report> {
        let name = row.name.clone();
        let basis = (live.min_interval, runs_scheduled(&row, &live.claimed));
        let is_new = !syncers.contains_key(&name);
        let entry = syncers.entry(name.clone()).or_insert_with(|| Entry {
            row: row.clone(),
            desired: Desired::Disabled,
            jobs: SyncerJobs::default(),
            reported: None,
            floor_warned: None,
            basis: None,
            last_run: None,
        });
        let old = (!is_new).then(|| entry.desired.clone());
        // Most passes find every row as it was: what it asks for is then what it asked for,
        // without validating its `table_columns` again. The transition below still runs, so a
        // job that could not be scheduled is tried again.
        let new = match &old {
            Some(desired) if entry.row == row && entry.basis == Some(basis) => desired.clone(),
            _ => Desired::of(&row, live.min_interval, &live.claimed),
        };
        entry.basis = Some(basis);
        if let Desired::Valid(fp) = &new {
            let (_, floored) = effective_interval(row.sync_interval, live.min_interval);
            if floored && entry.floor_warned != Some(row.sync_interval) {
                tracing::warn!(
                    "syncer {name}: sync_interval {} s is below scheduler.min_interval; \
                     running every {} s instead",
                    row.sync_interval,
                    fp.interval.as_secs()
                );
                entry.floor_warned = Some(row.sync_interval);
            }
        }
        let step = transition(
            old.as_ref(),
            entry.jobs.every.is_some(),
            entry.reported.as_deref(),
            &new,
        );
        let report = self.apply_transition(entry, step, old.as_ref(), &new);
        if let Some(reason) = &report {
            entry.reported = Some(reason.clone());
        } else if !matches!(new, Desired::Invalid(_)) {
            entry.reported = None;
        }
        let report = report.map(|reason| (name, reason, row.error_text.clone()));
        entry.row = row;
        entry.desired = new;
        report
    }

    /// Carries out one [`Transition`] on the job table; returns the reason to report.
    fn apply_transition(
        &self,
        entry: &mut Entry,
        step: Transition,
        old: Option<&Desired>,
        new: &Desired,
    ) -> Option<String> {
        let name = entry.row.name.clone();
        match (step, new) {
            (Transition::Start, Desired::Valid(fp)) => {
                let was = match old {
                    Some(Desired::Invalid(_)) => " (its row was fixed)",
                    Some(Desired::Disabled) => " (enabled)",
                    _ => "",
                };
                if self.schedule(&name, &mut entry.jobs, fp.interval, true) {
                    tracing::info!(
                        "syncer {name}: scheduled every {} s{was}",
                        fp.interval.as_secs()
                    );
                }
            }
            (Transition::Reschedule { run_soon }, Desired::Valid(fp)) => {
                if let Some(Desired::Valid(old_fp)) = old {
                    let changed = fp.changes(old_fp).join(", ");
                    if self.schedule(&name, &mut entry.jobs, fp.interval, run_soon) {
                        tracing::info!(
                            "syncer {name}: {changed} changed; rescheduled every {} s",
                            fp.interval.as_secs()
                        );
                    }
                }
            }
            (Transition::Stop, _) => {
                self.jobs.remove(&mut entry.jobs);
                tracing::info!("syncer {name}: disabled; unscheduled");
            }
            (Transition::Invalid { report }, _) => {
                if self.jobs.remove(&mut entry.jobs) {
                    tracing::info!("syncer {name}: unscheduled (invalid row)");
                }
                if let (true, Desired::Invalid(reason)) = (report, new) {
                    tracing::warn!("syncer {name} is skipped: {reason}");
                    return Some(reason.clone());
                }
            }
            _ => {}
        }
        None
    }

    /// Appends each newly invalid row's reason to its `error_text`, once per change, also
    /// across restarts and replicas: not when it is the last line already.
    async fn report_invalid(&self, db: &Db, live: &LiveSettings, reports: Vec<Report>) {
        for (name, reason, error_text) in reports {
            let message = format!("syncerd skips this syncer: {reason}");
            let already = error_text
                .lines()
                .last()
                .is_some_and(|line| line.ends_with(&format!("] {message}")));
            if already {
                continue;
            }
            if let Err(e) = bounded(
                live.db_timeout,
                "recording the problem in error_text",
                db::append_syncer_error(db, &name, &message),
            )
            .await
            {
                tracing::warn!("syncer {name}: could not record the problem in error_text: {e}");
            }
        }
    }
}
