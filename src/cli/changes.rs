//! `syncerd changes --user NAME`: the history of one Casdoor user across runs (table
//! `syncer_change`), newest first; and the change table `syncerd runs show ID --changes` prints.

use anyhow::bail;
use clap::Args;
use serde_json::{Value, json};
use syncerd::db::changes::{ChangeRow, user_changes};
use syncerd::db::{self, Db};

use super::OutputFormat;
use super::output::{one_line, table};

/// `syncerd changes`
#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// The Casdoor user name (`user.name`, the second half of `org/name`).
    #[arg(long, value_name = "NAME")]
    pub user: String,
    /// The user's organization; by default every organization a syncer writes to.
    #[arg(long, value_name = "ORG")]
    pub organization: Option<String>,
    /// At most this many changes.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

pub async fn run(db: &Db, args: ChangesArgs) -> anyhow::Result<()> {
    let organizations = match &args.organization {
        Some(org) => vec![org.clone()],
        None => {
            let mut orgs: Vec<String> = db::list_syncers(db)
                .await?
                .into_iter()
                .map(|s| s.organization)
                .collect();
            orgs.sort();
            orgs.dedup();
            orgs
        }
    };
    if organizations.is_empty() {
        bail!(
            "no syncer is configured, so no organization to look in: name one with --organization"
        );
    }
    let rows = user_changes(db, &organizations, &args.user, args.limit.max(1)).await?;
    match args.format {
        OutputFormat::Json => {
            let rows: Vec<Value> = rows.iter().map(change_json).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutputFormat::Table if rows.is_empty() => println!(
            "no changes recorded for user {:?} (in {}); changes older than history.keep_days are pruned",
            args.user,
            organizations.join(", ")
        ),
        OutputFormat::Table => print!("{}", changes_table(&rows, true)),
    }
    Ok(())
}

/// One change as JSON (`syncerd changes`, `syncerd runs show ID --changes --format json`).
pub fn change_json(c: &ChangeRow) -> Value {
    json!({
        "id": c.id,
        "run_id": c.run_id,
        "syncer": c.syncer_name,
        "organization": c.organization,
        "userid": c.userid,
        "name": c.casdoor_name,
        "action": c.action.as_str(),
        "changes": c.changes,
        "created_at": c.created_at.to_rfc3339(),
    })
}

/// Changes as aligned columns; `across_runs` adds the time and the run of each.
pub fn changes_table(rows: &[ChangeRow], across_runs: bool) -> String {
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            let mut line = Vec::new();
            if across_runs {
                line.push(c.created_at.format("%Y-%m-%d %H:%M:%SZ").to_string());
                line.push(c.run_id.to_string());
            }
            line.extend([
                c.action.to_string(),
                c.casdoor_name.clone(),
                if c.userid.is_empty() {
                    "-".to_owned()
                } else {
                    c.userid.clone()
                },
                one_line(&describe(&c.changes), 120),
            ]);
            line
        })
        .collect();
    let header: &[&str] = if across_runs {
        &["TIME", "RUN", "ACTION", "NAME", "USERID", "FIELDS"]
    } else {
        &["ACTION", "NAME", "USERID", "FIELDS"]
    };
    table(header, &lines)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `column: old → new; ...` for field changes, the group for membership changes.
fn describe(changes: &Value) -> String {
    match changes {
        Value::Array(fields) => fields
            .iter()
            .map(|f| {
                let column = f.get("column").map(value_text).unwrap_or_default();
                if f.get("secret").and_then(Value::as_bool) == Some(true) {
                    format!("{column}: (secret, not recorded)")
                } else {
                    let old = f.get("old").map(value_text).unwrap_or_default();
                    let new = f.get("new").map(value_text).unwrap_or_default();
                    format!("{column}: {old} → {new}")
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Object(o) => o.get("group").map(value_text).unwrap_or_default(),
        other => value_text(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_old_to_new_and_secrets_say_so() {
        let changes = json!([
            {"column": "title", "old": "Engineer", "new": "Lead"},
            {"column": "is_forbidden", "old": false, "new": true},
            {"column": "password", "secret": true},
        ]);
        assert_eq!(
            describe(&changes),
            "title: Engineer → Lead; is_forbidden: false → true; password: (secret, not recorded)"
        );
        assert_eq!(describe(&json!({"group": "acme/7"})), "acme/7");
    }
}
