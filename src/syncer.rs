//! A `syncer` row checked once: [`SyncerRow::validate`] turns a row into a [`ValidSyncer`]
//! (the row and its field mapping), or says in one operator-facing line why it cannot run.
//!
//! Every trigger (the CLI, the scheduler, the admin API) validates here and hands the
//! [`ValidSyncer`] on, so a run never re-checks its row. Scheduled runs also need a positive
//! `sync_interval` ([`ValidSyncer::check_schedule`]); a run asked for by hand does not.

use crate::db::{BUILT_IN_ORGANIZATION, DINGTALK_TYPE, SyncerRow};
use crate::pipeline::{Mapping, MappingError};

/// Why a syncer row cannot run. Messages name the column to fix and never hold the App Secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncerProblem {
    #[error("its type is {found:?}; syncerd runs only syncers of type \"DingTalk\"")]
    WrongType { found: String },
    #[error(
        "its organization is empty (column `organization`); choose one on the syncer's page in Casdoor"
    )]
    NoOrganization,
    #[error(
        "its organization is `built-in`, Casdoor's administrators' organization, where every user is a global administrator; choose an organization of its own on the syncer's page in Casdoor"
    )]
    BuiltInOrganization,
    #[error("its App Key (column `user`) is empty; set it on the syncer's page in Casdoor")]
    NoAppKey,
    #[error("its App Secret (column `password`) is empty; set it on the syncer's page in Casdoor")]
    NoAppSecret,
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// Only scheduled runs need an interval.
    #[error("sync_interval is {0}; set a positive number of seconds")]
    NoInterval(i32),
    #[error(
        "organization `{organization}` does not exist in Casdoor (its table `organization` has no row \
         with owner `admin` and name `{organization}`); create the organization in Casdoor, or choose \
         an existing one on the syncer's page"
    )]
    UnknownOrganization { organization: String },
}

/// A syncer row that can run, with the field mapping its `table_columns` describe.
#[derive(Debug, Clone)]
pub struct ValidSyncer {
    row: SyncerRow,
    mapping: Mapping,
}

impl SyncerRow {
    /// Checks the row (type, organization, credentials, mapping) once, for every kind of run.
    pub fn validate(&self) -> Result<ValidSyncer, SyncerProblem> {
        if self.syncer_type != DINGTALK_TYPE {
            return Err(SyncerProblem::WrongType {
                found: self.syncer_type.clone(),
            });
        }
        if self.organization.trim().is_empty() {
            return Err(SyncerProblem::NoOrganization);
        }
        if self.organization.trim() == BUILT_IN_ORGANIZATION {
            return Err(SyncerProblem::BuiltInOrganization);
        }
        if self.app_key.trim().is_empty() {
            return Err(SyncerProblem::NoAppKey);
        }
        if self.app_secret.expose().trim().is_empty() {
            return Err(SyncerProblem::NoAppSecret);
        }
        let mapping = Mapping::from_syncer(Some(&self.table_columns), &self.avatar_base_url)?;
        Ok(ValidSyncer {
            row: self.clone(),
            mapping,
        })
    }

    /// [`SyncerRow::validate`] plus what a scheduled run needs ([`ValidSyncer::check_schedule`]).
    pub fn validate_for_schedule(&self) -> Result<ValidSyncer, SyncerProblem> {
        let valid = self.validate()?;
        valid.check_schedule()?;
        Ok(valid)
    }
}

/// A valid syncer reads as its row (`valid.name`, `valid.organization`).
impl std::ops::Deref for ValidSyncer {
    type Target = SyncerRow;

    fn deref(&self) -> &SyncerRow {
        &self.row
    }
}

impl ValidSyncer {
    pub fn row(&self) -> &SyncerRow {
        &self.row
    }

    /// The mapping of `table_columns`, before `sync.lowercase_names` applies.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// A scheduler needs a positive `sync_interval`; a run started by hand does not.
    pub fn check_schedule(&self) -> Result<(), SyncerProblem> {
        if self.row.sync_interval <= 0 {
            return Err(SyncerProblem::NoInterval(self.row.sync_interval));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn row() -> SyncerRow {
        SyncerRow {
            owner: "admin".into(),
            name: "dt".into(),
            created_time: String::new(),
            organization: "acme".into(),
            syncer_type: "DingTalk".into(),
            app_key: "key".into(),
            app_secret: Secret::new("S3cret-value"),
            table_columns: crate::db::DEFAULT_TABLE_COLUMNS.into(),
            avatar_base_url: String::new(),
            error_text: String::new(),
            sync_interval: 600,
            is_read_only: false,
            is_enabled: true,
        }
    }

    fn problem(f: fn(&mut SyncerRow)) -> String {
        let mut r = row();
        f(&mut r);
        r.validate_for_schedule()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn validation_names_the_problem_and_never_the_secret() {
        assert!(row().validate_for_schedule().is_ok());
        for (f, needle) in [
            (
                (|r| r.syncer_type = "Database".into()) as fn(&mut SyncerRow),
                "\"Database\"",
            ),
            (|r| r.syncer_type = "dingtalk".into(), "DingTalk"),
            (|r| r.organization = " ".into(), "organization"),
            (|r| r.organization = String::new(), "organization"),
            (
                |r| r.organization = "built-in".into(),
                "global administrator",
            ),
            (|r| r.app_key = " ".into(), "App Key"),
            (|r| r.app_secret = Secret::new(""), "App Secret"),
            (|r| r.sync_interval = 0, "sync_interval is 0"),
            (|r| r.sync_interval = -5, "positive"),
            (|r| r.table_columns = "{not json".into(), "table_columns"),
            (|r| r.table_columns = "{".into(), "table_columns"),
        ] {
            let reason = problem(f);
            assert!(reason.contains(needle), "{needle}: {reason}");
            assert!(!reason.contains("S3cret-value"), "{reason}");
        }
    }

    #[test]
    fn only_scheduled_runs_need_an_interval() {
        let mut r = row();
        r.sync_interval = 0;
        assert!(r.validate().is_ok());
        assert_eq!(
            r.validate_for_schedule().err(),
            Some(SyncerProblem::NoInterval(0))
        );
    }
}
