//! `syncerd runs`: read the run history (table `syncer_run`), newest first.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use syncerd::db::changes::run_changes;
use syncerd::db::{self, Db, RunFilter, RunRow, RunStatus};

use super::OutputFormat;
use super::changes::{change_json, changes_table};
use super::output::{one_line, table};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// Only runs of this syncer.
    #[arg(long)]
    pub syncer: Option<String>,
    /// Only runs with this status: running, succeeded, partial, held, failed, interrupted.
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs started at or after this time: RFC 3339 (2026-11-25T08:00:00Z) or an age such as
    /// 30m, 12h, 7d.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Show one run in full: its counts, API calls and recorded errors.
    Show {
        /// The run id (first column of `syncerd runs`).
        id: i64,
        /// Also list every change the run made to a user: action, name, DingTalk userid, and
        /// the fields it changed (old → new; values of secret columns are never recorded).
        #[arg(long)]
        changes: bool,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
}

/// Parses `--since`: an RFC 3339 time, or an age like `30m`, `12h`, `7d` counted back from now.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let t = text.trim();
    let (age, days) = match t.strip_suffix('d') {
        Some(n) => (n, true),
        None => (t, false),
    };
    let duration = if days {
        let n: u64 = age.parse().with_context(|| {
            format!("--since {text:?} is neither an RFC 3339 time nor an age like 7d")
        })?;
        std::time::Duration::from_secs(n.saturating_mul(86_400))
    } else {
        syncerd::config::parse_duration(age).map_err(|e| {
            anyhow::anyhow!(
                "--since {text:?} is neither an RFC 3339 time nor an age like 30m, 12h or 7d ({e})"
            )
        })?
    };
    let age = chrono::Duration::from_std(duration).context("--since is too far back")?;
    Ok(now - age)
}

pub async fn run(db: &Db, args: RunsArgs) -> anyhow::Result<()> {
    if let Some(RunsCommand::Show {
        id,
        changes,
        format,
    }) = args.command
    {
        return show(db, id, changes, format).await;
    }
    let status = match &args.status {
        Some(s) => Some(
            s.parse::<RunStatus>()
                .map_err(|e| anyhow::anyhow!("--status: {e}"))?,
        ),
        None => None,
    };
    let since = match &args.since {
        Some(s) => Some(parse_since(s, Utc::now())?),
        None => None,
    };
    let filter = RunFilter {
        syncer: args.syncer.clone(),
        status,
        since,
        limit: args.limit.max(1),
    };
    let runs = db::list_runs(db, &filter).await?;
    match args.format {
        OutputFormat::Json => {
            let rows: Vec<Value> = runs.iter().map(run_json).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutputFormat::Table => {
            if runs.is_empty() {
                println!("no runs recorded yet");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.syncer_name.clone(),
                        r.status.to_string(),
                        r.trigger.to_string(),
                        r.started_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                        r.duration.map(format_secs).unwrap_or_else(|| "-".into()),
                        r.counts.fetched.to_string(),
                        r.counts.created.to_string(),
                        r.counts.updated.to_string(),
                        (r.counts.forbidden + r.counts.deleted).to_string(),
                        r.counts.record_errors.to_string(),
                        one_line(r.error_summary.as_deref().unwrap_or(""), 60),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID", "SYNCER", "STATUS", "TRIGGER", "STARTED", "TOOK", "FETCHED",
                        "CREATED", "UPDATED", "REMOVED", "ERRORS", "MESSAGE"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(())
}

async fn show(db: &Db, id: i64, with_changes: bool, format: OutputFormat) -> anyhow::Result<()> {
    let Some(run) = db::get_run(db, id).await? else {
        bail!("no run with id {id}; `syncerd runs` lists recent runs");
    };
    let changes = if with_changes {
        Some(run_changes(db, id).await?)
    } else {
        None
    };
    match format {
        OutputFormat::Json => {
            let mut doc = run_json(&run);
            if let (Some(changes), Some(obj)) = (&changes, doc.as_object_mut()) {
                let rows: Vec<Value> = changes.iter().map(change_json).collect();
                obj.insert("changes".to_owned(), Value::Array(rows));
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Table => {
            print!("{}", run_detail(&run));
            match &changes {
                Some(rows) if rows.is_empty() => println!(
                    "changes:      none recorded (a dry run records none; older than \
                     history.keep_days they are pruned)"
                ),
                Some(rows) => print!("changes ({}):\n{}", rows.len(), changes_table(rows, false)),
                None => {}
            }
        }
    }
    Ok(())
}

fn format_secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn run_json(r: &RunRow) -> Value {
    json!({
        "id": r.id,
        "syncer": r.syncer_name,
        "organization": r.organization,
        "trigger": r.trigger.as_str(),
        "mode": r.mode.as_str(),
        "status": r.status.as_str(),
        "started_at": r.started_at.to_rfc3339(),
        "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
        "duration_ms": r.duration.map(|d| d.as_millis() as u64),
        "counts": r.counts.stored_json(),
        "api_calls": r.api_calls,
        "error_summary": r.error_summary,
        "details": r.details,
        "instance": r.instance,
    })
}

fn run_detail(r: &RunRow) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("run", r.id.to_string());
    line(
        "syncer",
        format!("{} (organization {})", r.syncer_name, r.organization),
    );
    line("status", r.status.to_string());
    line("trigger", format!("{} ({})", r.trigger, r.mode));
    line("started", r.started_at.to_rfc3339());
    line(
        "finished",
        r.finished_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into()),
    );
    line(
        "took",
        r.duration.map(format_secs).unwrap_or_else(|| "-".into()),
    );
    line("instance", r.instance.clone());
    line("api calls", r.api_calls.to_string());
    let c = &r.counts;
    line(
        "users",
        format!(
            "{} fetched, {} created, {} updated, {} unchanged, {} forbidden, {} unforbidden, {} deleted",
            c.fetched, c.created, c.updated, c.unchanged, c.forbidden, c.unforbidden, c.deleted
        ),
    );
    line(
        "groups",
        format!(
            "{} created, {} updated, {} memberships changed",
            c.groups_created, c.groups_updated, c.memberships_changed
        ),
    );
    line("record errors", c.record_errors.to_string());
    if let Some(summary) = &r.error_summary {
        line("message", summary.clone());
    }
    if let Some(errors) = r
        .details
        .as_ref()
        .and_then(|d| d.get("errors"))
        .and_then(Value::as_array)
    {
        out.push_str("errors:\n");
        for e in errors {
            let text = e
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            out.push_str(&format!("  - {text}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_and_ages() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap();
        assert_eq!(
            parse_since("2026-11-25T08:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-25T08:00:00+00:00"
        );
        assert_eq!(
            parse_since("2h", now).unwrap().to_rfc3339(),
            "2026-11-25T10:00:00+00:00"
        );
        assert_eq!(
            parse_since("7d", now).unwrap().to_rfc3339(),
            "2026-11-18T12:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
