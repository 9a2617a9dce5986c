//! `syncerd syncer ...`: manage DingTalk syncer rows in Casdoor's `syncer` table.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use syncerd::db::{self, Db, NameFrom, NewSyncer};
use syncerd::secret::Secret;

use super::OutputFormat;
use super::output::{one_line, table};

#[derive(Debug, Subcommand)]
pub enum SyncerCommand {
    /// Add a DingTalk syncer row, shaped as Casdoor's UI writes one.
    ///
    /// The row gets owner `admin`, type `DingTalk`, the App Key in `user`, the App Secret in
    /// `password`, `is_read_only = 1` (syncerd never writes to DingTalk), and in `table_columns`
    /// the documented DingTalk mapping: userid → Id, job_number → Name (the userid when the job
    /// number is empty), name → DisplayName, email → Email, mobile → Phone, avatar → Avatar,
    /// title → Title, active → IsForbidden (inverted). --name-from changes the Name entry. Edit
    /// the mapping later on the syncer's page in Casdoor; syncerd never rewrites it, nor an
    /// existing user's name. Reads database.url.
    Add(AddArgs),
    /// List the syncer rows (never shows an App Secret). Reads database.url.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Turn scheduled syncing of a syncer on (`is_enabled = 1`). A running daemon follows
    /// within scheduler.reload_interval.
    Enable {
        /// The syncer's name.
        name: String,
    },
    /// Turn scheduled syncing of a syncer off (`is_enabled = 0`). A running daemon follows
    /// within scheduler.reload_interval.
    Disable {
        /// The syncer's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Unique name of the syncer (Casdoor addresses it as admin/NAME).
    #[arg(long)]
    pub name: String,
    /// Casdoor organization the DingTalk users are written to.
    #[arg(long)]
    pub organization: String,
    /// DingTalk App Key (Client ID) of the internal app.
    #[arg(long)]
    pub app_key: String,
    /// DingTalk App Secret. Visible to other local users in the process list: prefer
    /// --app-secret-file.
    #[arg(
        long,
        conflicts_with = "app_secret_file",
        required_unless_present = "app_secret_file"
    )]
    pub app_secret: Option<String>,
    /// File holding the DingTalk App Secret (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub app_secret_file: Option<PathBuf>,
    /// Seconds between scheduled runs.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub interval: i32,
    /// Enable scheduled syncing right away.
    #[arg(long)]
    pub enabled: bool,
    /// The DingTalk field new users' Casdoor names come from. `job_number` (falls back to the
    /// userid when empty) is the documented mapping; `unionid` is what Casdoor's UI fills in
    /// and what Casdoor's DingTalk login uses as the user name, so pick it when people sign in
    /// to Casdoor with DingTalk; `userid` is stable and always present.
    #[arg(long, value_enum, default_value_t = NameFromArg::JobNumber, value_name = "FIELD")]
    pub name_from: NameFromArg,
}

/// `--name-from` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NameFromArg {
    #[value(name = "job_number")]
    JobNumber,
    Unionid,
    Userid,
}

impl From<NameFromArg> for NameFrom {
    fn from(arg: NameFromArg) -> Self {
        match arg {
            NameFromArg::JobNumber => NameFrom::JobNumber,
            NameFromArg::Unionid => NameFrom::Unionid,
            NameFromArg::Userid => NameFrom::Userid,
        }
    }
}

fn read_secret(args: &AddArgs) -> anyhow::Result<Secret> {
    let text = match (&args.app_secret, &args.app_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the App Secret from standard input")?;
            text
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the App Secret file {}", path.display()))?,
        (None, None) => bail!("give the App Secret with --app-secret-file FILE or --app-secret"),
    };
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.trim().is_empty() {
        bail!("the App Secret is empty");
    }
    Ok(Secret::new(secret))
}

pub async fn run(db: &Db, command: SyncerCommand) -> anyhow::Result<()> {
    match command {
        SyncerCommand::Add(args) => {
            let app_secret = read_secret(&args)?;
            let name = args.name.clone();
            db::add_syncer_named_from(
                db,
                NewSyncer {
                    name: args.name,
                    organization: args.organization,
                    app_key: args.app_key,
                    app_secret,
                    sync_interval: args.interval,
                    enabled: args.enabled,
                },
                args.name_from.into(),
            )
            .await?;
            println!(
                "added syncer {name} ({})",
                if args.enabled {
                    "enabled"
                } else {
                    "disabled; `syncerd syncer enable` turns it on"
                }
            );
        }
        SyncerCommand::List { format } => {
            let syncers = db::list_syncers(db).await?;
            match format {
                OutputFormat::Json => {
                    let rows: Vec<_> = syncers
                        .iter()
                        .map(|s| {
                            json!({
                                "name": s.name,
                                "organization": s.organization,
                                "type": s.syncer_type,
                                "app_key": s.app_key,
                                "app_secret_set": !s.app_secret.is_empty(),
                                "sync_interval": s.sync_interval,
                                "is_enabled": s.is_enabled,
                                "is_read_only": s.is_read_only,
                                "created_time": s.created_time,
                                "last_error": last_error_line(&s.error_text),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                OutputFormat::Table => {
                    if syncers.is_empty() {
                        println!("no syncers; add one with `syncerd syncer add --help`");
                        return Ok(());
                    }
                    let rows: Vec<Vec<String>> = syncers
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.organization.clone(),
                                s.syncer_type.clone(),
                                s.app_key.clone(),
                                if s.is_enabled { "yes" } else { "no" }.to_owned(),
                                format!("{}s", s.sync_interval),
                                one_line(last_error_line(&s.error_text).unwrap_or("-"), 60),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(
                            &[
                                "NAME",
                                "ORGANIZATION",
                                "TYPE",
                                "APP KEY",
                                "ENABLED",
                                "INTERVAL",
                                "LAST ERROR"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        SyncerCommand::Enable { name } => {
            db::set_syncer_enabled(db, &name, true).await?;
            println!("syncer {name} enabled");
        }
        SyncerCommand::Disable { name } => {
            db::set_syncer_enabled(db, &name, false).await?;
            println!("syncer {name} disabled");
        }
    }
    Ok(())
}

/// The newest line of a Casdoor `error_text` column.
fn last_error_line(error_text: &str) -> Option<&str> {
    error_text.lines().rev().find(|l| !l.trim().is_empty())
}
