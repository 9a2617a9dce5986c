//! syncerd's run history, `syncer_run` (created by migration `m20261125_000002`). Domain code
//! reads it through [`crate::db::RunRow`].

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "syncer_run")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub syncer_name: String,
    pub organization: String,
    /// `schedule`, `manual`, `cli`, `startup` or `demo`.
    pub trigger: String,
    /// `apply` or `dry_run`.
    pub mode: String,
    /// `running`, `succeeded`, `partial`, `held`, `failed` or `interrupted`.
    pub status: String,
    /// RFC 3339 UTC with milliseconds, so text order is time order.
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub fetched: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub forbidden: i64,
    pub unforbidden: i64,
    pub deleted: i64,
    pub groups_created: i64,
    pub groups_updated: i64,
    pub memberships_changed: i64,
    pub record_errors: i64,
    pub api_calls: i64,
    /// The operator-facing message of a run that did not fully succeed.
    pub error_summary: Option<String>,
    /// JSON: recorded errors, per-endpoint statistics.
    pub details: Option<String>,
    /// `hostname:pid` of the process that ran it.
    pub instance: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
