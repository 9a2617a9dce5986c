//! "Can this syncer run?": the report `syncerd check NAME` prints and the console's **Test
//! connection** shows. One function builds it for both, so they never disagree.

use crate::config::StreamSettings;
use crate::db::{Db, DbError, SyncerRow};
use std::time::Duration;

use crate::dingtalk::{CallCounter, CheckReport, CheckStep, Client, Credentials, StepOutcome};
use crate::pipeline::{OrganizationRow, find_organization};
use crate::stream::{StreamConfig, check_open};
use crate::syncer::SyncerProblem;

/// The report of one syncer: DingTalk's steps (token, permissions, field samples), the Casdoor
/// organization, and whether Stream mode works for the app.
#[derive(Debug, Clone)]
pub struct SyncerCheck {
    pub report: CheckReport,
    /// One line about Stream mode; events are an addition, so it never decides `can_sync`.
    pub stream: String,
    /// When Stream mode works: one line about the leave records its catch-up reads.
    pub leave_records: Option<String>,
}

impl SyncerCheck {
    /// Whether a sync can run with these credentials and this organization.
    pub fn can_sync(&self) -> bool {
        self.report.can_sync()
    }

    /// The text `syncerd check` prints.
    pub fn render(&self) -> String {
        let mut text = format!("{}{}\n", self.report.render(), self.stream);
        if let Some(line) = &self.leave_records {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Checks `row` against DingTalk (with `client`) and the Casdoor organization table of `db`.
/// Only reads: nothing is written and no lease is taken.
pub async fn check_syncer(
    client: &Client,
    stream: &StreamSettings,
    open_api_base: &str,
    db: &Db,
    row: &SyncerRow,
) -> Result<SyncerCheck, DbError> {
    let organization = find_organization(db, &row.organization).await?;
    let credentials = Credentials {
        app_key: row.app_key.clone(),
        app_secret: row.app_secret.clone(),
    };
    let mut report = client.check(&credentials).await;
    report
        .steps
        .extend(organization_step(&row.organization, organization));
    let (stream, streams) = stream_line(stream, open_api_base, &row.name, &credentials).await;
    let leave_records = if streams {
        Some(leave_records_line(client, &credentials).await)
    } else {
        None
    };
    Ok(SyncerCheck {
        report,
        stream,
        leave_records,
    })
}

/// The step about the syncer's Casdoor organization; none in syncerd's embedded database,
/// which has no organization table.
fn organization_step(name: &str, row: OrganizationRow) -> Option<CheckStep> {
    let outcome = match row {
        OrganizationRow::NoTable => return None,
        OrganizationRow::Found { .. } => StepOutcome::Ok {
            detail: "exists".to_owned(),
        },
        OrganizationRow::Missing => StepOutcome::Failed {
            message: SyncerProblem::UnknownOrganization {
                organization: name.to_owned(),
            }
            .to_string(),
            code: None,
            permission: None,
        },
    };
    Some(CheckStep {
        name: format!("Casdoor organization `{name}` (table organization)"),
        outcome,
    })
}

/// How long the check waits for the leave records.
const LEAVE_RECORDS_CHECK: Duration = Duration::from_secs(10);

/// What the check says of Stream mode for the syncer: off by configuration, or whether DingTalk
/// hands the app a Stream ticket (`connections/open`); and whether it does.
async fn stream_line(
    settings: &StreamSettings,
    open_api_base: &str,
    name: &str,
    credentials: &Credentials,
) -> (String, bool) {
    const LINE: &str = "Stream mode (POST /v1.0/gateway/connections/open)";
    if !settings.streams(name) {
        let off = format!("{LINE}: off (stream.enabled, stream.disabled_syncers)");
        return (off, false);
    }
    let config = StreamConfig {
        open_api_base: open_api_base.to_owned(),
        ..Default::default()
    };
    match check_open(&config, credentials).await {
        Ok(()) => (
            format!("{LINE}: ok, changes are applied within seconds"),
            true,
        ),
        Err(e) => (
            format!(
                "{LINE}: unavailable ({e}); the interval runs still sync. Turn on Stream mode \
                 and the address-book events in the app's developer console, or list the syncer \
                 in stream.disabled_syncers"
            ),
            false,
        ),
    }
}

/// What the check says of the leave records a streaming syncer's catch-up reads
/// (`empLeaveRecords`, the `Contact.Common.Read` permission), within [`LEAVE_RECORDS_CHECK`].
async fn leave_records_line(client: &Client, credentials: &Credentials) -> String {
    const LINE: &str = "Leave records (GET /v1.0/contact/empLeaveRecords)";
    let since = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let calls = CallCounter::new();
    let read = client.leave_records(credentials, since, None, &calls);
    let failure = match tokio::time::timeout(LEAVE_RECORDS_CHECK, read).await {
        Ok(Ok(_)) => {
            return format!("{LINE}: ok, leavers missed while the stream was away are caught up");
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "no answer within {} s at dingtalk.open_api_base",
            LEAVE_RECORDS_CHECK.as_secs()
        ),
    };
    format!(
        "{LINE}: unavailable; after the stream was away a full run catches up instead: {failure}"
    )
}
