//! `syncerd sync NAME`: one run of one syncer in the foreground.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use clap::Args;
use syncerd::config::Settings;
use syncerd::daemon::lease::{HeldLease, LeaseTiming, Renewal};
use syncerd::db::leases::{
    ORPHANED_RUN_REASON, acquire_lease, epoch_millis, get_lease, release_lease, renew_lease,
};
use syncerd::db::{Db, RunMode, RunTrigger, StaleRunFilter, mark_interrupted};
use syncerd::dingtalk::{Client, Credentials, FetchProgress};
use syncerd::pipeline::{Phase, Progress, RunContext, RunOptions, process_instance, run_once};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::OutputFormat;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The syncer's name.
    pub name: String,
    /// Plan and apply inside a transaction that is rolled back: every database constraint is
    /// checked as in a real run, nothing is written (no run history either), and the planned
    /// changes are printed per user.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply leaver actions even when they exceed sync.max_removals / sync.max_removal_percent
    /// (releases a `held` run, once).
    #[arg(long)]
    pub allow_removals: bool,
    /// Take over matching users and groups that no syncer owns (sync.adopt_existing, once).
    #[arg(long)]
    pub adopt_existing: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

/// Draws the run's progress on one terminal line until the run's channel closes: departments
/// walked and users fetched while fetching, then rows written of the total.
async fn draw_progress(
    mut rx: watch::Receiver<Progress>,
    mut fetch: watch::Receiver<FetchProgress>,
) {
    let mut stderr = std::io::stderr();
    loop {
        let p = *rx.borrow_and_update();
        let f = *fetch.borrow_and_update();
        let line = if p.phase == Phase::Fetching || (p.phase == Phase::Starting && f.calls > 0) {
            format!(
                "\rfetching   {} of {} departments walked, {} users, {} DingTalk calls ",
                f.departments_walked, f.departments_found, f.users, f.calls
            )
        } else if p.rows_total > 0 {
            let width = 30usize;
            let done = ((p.rows_written.min(p.rows_total) as f64 / p.rows_total as f64)
                * width as f64) as usize;
            format!(
                "\r{:<10} [{}{}] {}/{} rows ",
                format!("{:?}", p.phase).to_lowercase(),
                "#".repeat(done),
                " ".repeat(width - done),
                p.rows_written,
                p.rows_total
            )
        } else {
            format!(
                "\r{:<10} {:<40}",
                format!("{:?}", p.phase).to_lowercase(),
                ""
            )
        };
        let _ = stderr.write_all(line.as_bytes());
        let _ = stderr.flush();
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = fetch.changed() => {
                // At most ten redraws a second while the fetch reports every answer.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let _ = stderr.write_all(b"\r\x1b[K");
}

pub async fn run(settings: &Settings, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let db = super::open_db(settings, false).await?;
    let syncer = super::find_syncer(&db, &args.name).await?;
    let mode = if args.dry_run {
        RunMode::DryRun
    } else {
        RunMode::Apply
    };
    let instance = format!("{}:cli", process_instance());
    // The same lease as a daemon's run: 12 reload intervals (60 s by default), renewed every
    // third of that.
    let timing = LeaseTiming::for_reload_interval(settings.scheduler.reload_interval);

    // A real run takes the syncer's lease so it never overlaps a daemon's run of it.
    let lease = if args.dry_run {
        None
    } else {
        if !acquire_lease(&db, &syncer.name, &instance, epoch_millis(), timing.ttl).await? {
            let holder = get_lease(&db, &syncer.name)
                .await?
                .map(|l| l.holder)
                .unwrap_or_default();
            bail!(
                "syncer `{}` is being synced by another process ({holder}); wait for that run to end \
                 (`syncerd runs --syncer {}`) and try again",
                syncer.name,
                syncer.name
            );
        }
        // Holding the lease, any `running` row of this syncer belongs to a process that died
        // (`kill -9`, a crash): close it, as a daemon's reconcile pass would.
        let filter = StaleRunFilter {
            syncer: Some(syncer.name.clone()),
            ..StaleRunFilter::default()
        };
        let closed = mark_interrupted(&db, &filter, Utc::now(), ORPHANED_RUN_REASON).await?;
        if closed > 0 {
            tracing::warn!(
                "{closed} earlier run(s) of syncer {} were left running by a process that is gone: \
                 recorded as interrupted",
                syncer.name
            );
        }
        Some(instance.clone())
    };

    let cancel = CancellationToken::new();
    let mut options = RunOptions::new(RunTrigger::Cli, mode);
    options.allow_removals = args.allow_removals;
    options.adopt_existing = args.adopt_existing || settings.sync.adopt_existing;
    options.cancel = cancel.clone();
    let (fetch_tx, fetch_rx) = watch::channel(FetchProgress::default());
    let bar = if std::io::stderr().is_terminal() && args.format == OutputFormat::Table {
        let (tx, rx) = watch::channel(Progress::at(Phase::Starting));
        options.progress = Some(tx);
        Some(tokio::spawn(draw_progress(rx, fetch_rx)))
    } else {
        None
    };

    let client = Client::new((&settings.dingtalk).into())?;
    let credentials = Credentials {
        app_key: syncer.app_key.clone(),
        app_secret: syncer.app_secret.clone(),
    };
    let ctx = RunContext {
        db: db.clone(),
        sync: settings.sync.clone(),
        instance: instance.clone(),
    };
    let fetch =
        client.fetch_directory_counted(&credentials, Some(fetch_tx), options.api_calls.clone());
    let run = run_once(&ctx, &syncer, fetch, options);
    tokio::pin!(run);

    // The lease is renewed by a task of its own: renewing inside the loop below would stop
    // polling the run, which may hold SQLite's write turn the renewal waits for.
    let renewer = lease.as_ref().map(|holder| {
        tokio::spawn(keep_lease(
            db.clone(),
            timing,
            syncer.name.clone(),
            holder.clone(),
            cancel.clone(),
        ))
    });

    // Ctrl-C or SIGTERM (systemd, Docker, a CronJob) stops the run at its next safe point.
    let mut terminate = signal(SignalKind::terminate())?;
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            _ = tokio::signal::ctrl_c(), if !cancel.is_cancelled() => {
                tracing::warn!("interrupt: stopping at the next safe point (between batches)");
                cancel.cancel();
            }
            _ = terminate.recv(), if !cancel.is_cancelled() => {
                tracing::warn!("SIGTERM: stopping at the next safe point (between batches)");
                cancel.cancel();
            }
        }
    };
    if let Some(renewer) = renewer {
        renewer.abort();
    }
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    if let Some(holder) = &lease {
        release_lease(&db, &syncer.name, holder).await?;
    }
    db.close().await?;

    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => print!("{}", report.render_text()),
    }
    Ok(if report.exit_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Renews the lease of `syncer` every third of its TTL until aborted; cancels the run when the
/// lease is lost or about to expire unrenewed.
async fn keep_lease(
    db: Db,
    timing: LeaseTiming,
    syncer: String,
    holder: String,
    cancel: CancellationToken,
) {
    let mut held = HeldLease::taken(timing, epoch_millis());
    let mut renew = tokio::time::interval(timing.renew_every);
    renew.tick().await;
    loop {
        renew.tick().await;
        let now = epoch_millis();
        // A renewal that hangs (a database gone silent) counts as failed once the next is due.
        let attempt = tokio::time::timeout(
            timing.renew_every,
            renew_lease(&db, &syncer, &holder, now, timing.ttl),
        )
        .await;
        let (renewed, error) = match attempt {
            Ok(Ok(held)) => (Some(held), String::new()),
            Ok(Err(e)) => (None, e.to_string()),
            Err(_) => (None, format!("no answer within {:?}", timing.renew_every)),
        };
        match held.renewal(now, renewed, epoch_millis()) {
            Renewal::Renewed => {}
            Renewal::Lost => {
                tracing::warn!(
                    "lost the lease of syncer {syncer} to another process; stopping at the next safe point"
                );
                cancel.cancel();
            }
            Renewal::Expiring => {
                tracing::warn!(
                    "cannot renew the lease of syncer {syncer} ({error}) and it is about to expire; stopping at the next safe point"
                );
                cancel.cancel();
            }
            Renewal::Retry => {
                tracing::warn!("renewing the lease of syncer {syncer} failed: {error}; retrying");
            }
        }
    }
}
