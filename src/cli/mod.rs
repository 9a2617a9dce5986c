//! Command-line interface: clap definitions and the glue from each command to the library.
//! `anyhow` lives here and in `main.rs` only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use syncerd::config::{ConfigSources, LoadedConfig, Settings};
use syncerd::db::{self, Db};
use syncerd::telemetry::LogGuard;

mod changes;
mod daemon;
mod demo;
mod output;
mod runs;
mod sync;
mod syncer;

const CONFIG_HELP: &str = "\
Configuration layers, later ones win: built-in defaults, the TOML file (--config FILE, else
/etc/syncerd/syncerd.toml or ./syncerd.toml when present), SYNCERD_* environment variables
(`__` nests: SYNCERD_DATABASE__URL is database.url), then command-line flags. Secrets also
accept a *_FILE variant (SYNCERD_DATABASE__URL_FILE, SYNCERD_HTTP__ADMIN_TOKEN_FILE).
`syncerd config show` prints the effective configuration with secrets redacted.";

/// syncerd keeps a Casdoor identity database in step with a DingTalk (钉钉) directory.
///
/// It reads the DingTalk syncer rows of Casdoor's `syncer` table, fetches each organization's
/// departments and users from DingTalk, and writes new and changed users (and departments as
/// groups) into the database, recording every run.
#[derive(Debug, Parser)]
#[command(name = "syncerd", version, after_long_help = CONFIG_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// TOML configuration file (default: /etc/syncerd/syncerd.toml or ./syncerd.toml if present).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL, overriding database.url (sqlite://FILE?mode=rwc, mysql://..., postgres://...).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log filter, overriding log.level (for example info, debug, info,syncerd=debug).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format, overriding log.format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people (also `text`).
    #[default]
    #[value(alias = "text")]
    Table,
    /// One JSON document for programs.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create syncerd's tables, and Casdoor's tables where they do not exist (embedded mode).
    ///
    /// Never alters an existing Casdoor table; running it again is a no-op. Every other command
    /// that touches the database first checks that the Casdoor columns syncerd uses exist.
    /// Reads database.url.
    Migrate,
    /// Add, list, enable and disable DingTalk syncers (rows of Casdoor's `syncer` table).
    #[command(subcommand)]
    Syncer(syncer::SyncerCommand),
    /// Read the run history, newest first; `syncerd runs show ID` for one run in full.
    Runs(runs::RunsArgs),
    /// The history of one Casdoor user across runs, newest first: created, updated (each field
    /// old → new), forbidden, unforbidden, deleted, added to or removed from a group.
    ///
    /// Read from the change log (table syncer_change), which every run that writes fills in the
    /// transaction of each change; a dry run records nothing. Values of secret columns are never
    /// recorded. The daemon deletes changes older than history.keep_days (90 by default).
    Changes(changes::ChangesArgs),
    /// See the whole product work, with nothing configured: a simulated DingTalk organization,
    /// a fresh SQLite file, and the real daemon syncing it for a few cycles.
    ///
    /// Between runs the simulated organization changes (a hire, a leaver, a title change, a
    /// department move); at the end the run history and a sample of the synced users and groups
    /// are printed. Exits 0 when every run succeeded. Never touches database.url. Prints the web
    /// console's address and a fresh token to sign in with (--stay keeps it running).
    Demo(demo::DemoArgs),
    /// Run one syncer once, in the foreground, and exit 0 only if the run succeeded.
    ///
    /// Fetches the whole DingTalk directory, maps and plans it against the database, writes the
    /// changes in batches, records the run in the history (and failures in the syncer's
    /// error_text), and prints a report. Takes the syncer's lease, so it never overlaps a running
    /// daemon's run, and records earlier runs of it left `running` by a process that died as
    /// interrupted. Ctrl-C or SIGTERM stops at the next safe point (the run is `interrupted`).
    /// Reads database.url, dingtalk.* and sync.*.
    Sync(sync::SyncArgs),
    /// Test a syncer's DingTalk connection, as Casdoor's "Test Connection" should.
    ///
    /// Fetches a token, lists the root department's children and reads one page of users, then
    /// says what works, which DingTalk permission each failure means, and whether mobile numbers
    /// and e-mail addresses come back (two separate field permissions). On a Casdoor database it
    /// also checks that the syncer's organization exists. Exits 0 only when a sync can run.
    /// Reads database.url and the dingtalk.* keys.
    Check {
        /// The syncer's name.
        name: String,
    },
    /// Serve a simulated DingTalk organization on a local port, for demos, tests and benchmarks.
    ///
    /// Point dingtalk.api_base at the printed address and use the App Key / App Secret it
    /// prints. The organization is generated from the seed, so the same flags always give the
    /// same users. A control API under /_sim/ (JSON) changes the organization and reads call
    /// counters; it has no authentication, so keep it on a loopback address. Ctrl-C stops it.
    Simulate(syncerd::simulator::SimulateArgs),
    /// Inspect the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the daemon: schedule every enabled DingTalk syncer until SIGTERM/SIGINT.
    ///
    /// Follows the `syncer` table (scheduler.reload_interval, and at once on SIGHUP, which also
    /// re-reads the configuration file), waits for the database while it is down, takes a
    /// per-syncer lease so replicas never run one syncer twice, and serves /healthz, /readyz,
    /// /metrics, the admin API and the web console (at /, signed in with http.admin_token) on
    /// http.listen. With notify.webhook_url set it reports failed, held, partial and recovered
    /// runs there.
    Run,
    /// Ask the local daemon's /readyz (at http.listen): exit 0 when ready, 1 otherwise.
    ///
    /// For Docker's HEALTHCHECK; waits at most 3 seconds.
    Healthcheck,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML, every secret and URL password redacted.
    ///
    /// Also lists unknown keys (typos) found in the file or the environment.
    Show,
}

impl GlobalOpts {
    fn sources(&self) -> ConfigSources {
        let mut sources = ConfigSources::from_process(self.config.clone());
        if let Some(url) = &self.database_url {
            sources.overrides.push(("database.url".into(), url.clone()));
        }
        if let Some(level) = &self.log_level {
            sources.overrides.push(("log.level".into(), level.clone()));
        }
        if let Some(format) = self.log_format {
            let value = match format {
                LogFormatArg::Text => "text",
                LogFormatArg::Json => "json",
            };
            sources.overrides.push(("log.format".into(), value.into()));
        }
        sources
    }
}

/// Loads the configuration, starts logging and reports configuration warnings. The returned
/// guard keeps the log file writer alive; drop it last.
fn load_config(global: &GlobalOpts) -> anyhow::Result<(LoadedConfig, LogGuard)> {
    let loaded = Settings::load(&global.sources()).context("cannot load the configuration")?;
    let guard = syncerd::telemetry::init(&loaded.settings.log)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok((loaded, guard))
}

/// Connects to the configured database and, unless `migrating`, checks that the Casdoor columns
/// and syncerd tables exist.
async fn open_db(settings: &Settings, migrating: bool) -> anyhow::Result<Db> {
    let db = db::connect(&settings.database).await?;
    if !migrating {
        db::check_schema(&db).await?;
    }
    Ok(db)
}

/// The syncer row named `name`, or the storage layer's "no syncer named" error.
async fn find_syncer(db: &Db, name: &str) -> anyhow::Result<db::SyncerRow> {
    let row = db::get_syncer(db, name).await?;
    Ok(row.ok_or_else(|| db::DbError::SyncerNotFound {
        name: name.to_owned(),
    })?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs one command to completion and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (loaded, _log_guard) = load_config(&cli.global)?;
    let settings = &loaded.settings;
    match cli.command {
        Command::Migrate => runtime()?.block_on(async {
            let db = open_db(settings, true).await?;
            let report = db::migrate(&db).await?;
            db::check_schema(&db).await?;
            println!("{} database {}: {report}", db.engine(), db.redacted_url());
            db.close().await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Syncer(command) => runtime()?.block_on(async {
            let db = open_db(settings, false).await?;
            syncer::run(&db, command).await?;
            db.close().await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Demo(args) => runtime()?.block_on(demo::run(settings, args)),
        Command::Sync(args) => runtime()?.block_on(sync::run(settings, args)),
        Command::Check { name } => runtime()?.block_on(async {
            let db = open_db(settings, false).await?;
            let syncer = find_syncer(&db, &name).await?;
            let client = syncerd::dingtalk::Client::new((&settings.dingtalk).into())?;
            let check = syncerd::checkup::check_syncer(
                &client,
                &settings.stream,
                &settings.dingtalk.open_api_base,
                &db,
                &syncer,
            )
            .await;
            db.close().await?;
            let check = check?;
            print!("{}", check.render());
            Ok(if check.can_sync() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
        Command::Simulate(args) => runtime()?.block_on(async {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            syncerd::simulator::run_simulate(args, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Runs(args) => runtime()?.block_on(async {
            let db = open_db(settings, false).await?;
            runs::run(&db, args).await?;
            db.close().await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Changes(args) => runtime()?.block_on(async {
            let db = open_db(settings, false).await?;
            changes::run(&db, args).await?;
            db.close().await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Run => daemon::run(&cli.global, loaded),
        Command::Healthcheck => daemon::healthcheck(settings),
        Command::Config(ConfigCommand::Show) => {
            if let Some(file) = &loaded.file {
                println!("# configuration file: {}", file.display());
            } else {
                println!("# no configuration file; defaults, environment and flags only");
            }
            for warning in &loaded.warnings {
                println!("# warning: {warning}");
            }
            print!("{}", loaded.settings.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
