//! `syncerd sync NAME`: one run of one syncer in the foreground.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use syncerd::config::Settings;
use syncerd::db::{RunMode, RunTrigger};
use syncerd::dingtalk::{Client, Credentials, FetchProgress};
use syncerd::launch::lease::LeaseTiming;
use syncerd::launch::{Holder, InstanceKind, LaunchError, instance_id, launch};
use syncerd::pipeline::{Phase, Progress, RunContext, RunOptions, RunReport, run_once, run_valid};
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
    let instance = instance_id(InstanceKind::Cli);

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
    let report = match syncer.validate() {
        // A real run takes the syncer's lease (the same as a daemon's run: 12 reload intervals,
        // 60 s by default) so it never overlaps a daemon's run of it; a dry run writes nothing.
        Ok(valid) if !args.dry_run => {
            let holder = Holder {
                instance,
                timing: LeaseTiming::for_reload_interval(settings.scheduler.reload_interval),
                db_timeout: settings
                    .database
                    .connect_timeout
                    .max(Duration::from_secs(1)),
                keeper: None,
            };
            let run = until_signalled(run_valid(&ctx, &valid, fetch, options), &cancel);
            match launch(&db, &valid, &holder, &cancel, run).await {
                Ok(report) => report?,
                Err(LaunchError::Busy { syncer, holder }) => bail!(
                    "syncer `{syncer}` is being synced by another process ({holder}); wait for \
                     that run to end (`syncerd runs --syncer {syncer}`) and try again"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(valid) => until_signalled(run_valid(&ctx, &valid, fetch, options), &cancel).await?,
        // Recorded as a failed run that says why.
        Err(_) => until_signalled(run_once(&ctx, &syncer, fetch, options), &cancel).await?,
    };
    if let Some(bar) = bar {
        let _ = bar.await;
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

/// Polls `run` to its end; Ctrl-C or SIGTERM (systemd, Docker, a CronJob) meanwhile cancels
/// `cancel`, which stops the run at its next safe point.
async fn until_signalled(
    run: impl Future<Output = RunReport>,
    cancel: &CancellationToken,
) -> anyhow::Result<RunReport> {
    tokio::pin!(run);
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(loop {
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
    })
}
