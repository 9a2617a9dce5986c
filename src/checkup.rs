//! "Can this syncer run?": the report `syncerd check NAME` prints and the console's **Test
//! connection** shows. One function builds it for both, so they never disagree.

use crate::config::StreamSettings;
use crate::db::{Db, DbError, SyncerRow};
use crate::dingtalk::{CheckReport, CheckStep, Client, Credentials, StepOutcome};
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
}

impl SyncerCheck {
    /// Whether a sync can run with these credentials and this organization.
    pub fn can_sync(&self) -> bool {
        self.report.can_sync()
    }

    /// The text `syncerd check` prints.
    pub fn render(&self) -> String {
        format!("{}{}\n", self.report.render(), self.stream)
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
    let stream = stream_line(stream, open_api_base, &row.name, &credentials).await;
    Ok(SyncerCheck { report, stream })
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

/// What the check says of Stream mode for the syncer: off by configuration, or whether DingTalk
/// hands the app a Stream ticket (`connections/open`).
async fn stream_line(
    settings: &StreamSettings,
    open_api_base: &str,
    name: &str,
    credentials: &Credentials,
) -> String {
    const LINE: &str = "Stream mode (POST /v1.0/gateway/connections/open)";
    if !settings.streams(name) {
        return format!("{LINE}: off (stream.enabled, stream.disabled_syncers)");
    }
    let config = StreamConfig {
        open_api_base: open_api_base.to_owned(),
        ..Default::default()
    };
    match check_open(&config, credentials).await {
        Ok(()) => format!("{LINE}: ok, changes are applied within seconds"),
        Err(e) => format!(
            "{LINE}: unavailable ({e}); the interval runs still sync. Turn on Stream mode and \
             the address-book events in the app's developer console, or list the syncer in \
             stream.disabled_syncers"
        ),
    }
}
