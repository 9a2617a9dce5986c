//! `syncer_change`: the per-user change log (created by migration `m20261207_000005`). Domain
//! code reads it through [`crate::db::changes::ChangeRow`].

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "syncer_change")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The run that made the change.
    pub run_id: i64,
    pub syncer_name: String,
    pub organization: String,
    /// The DingTalk userid; `''` when the run did not know it (a membership-only change).
    pub userid: String,
    /// `user.name` within the organization.
    pub casdoor_name: String,
    /// `created`, `updated`, `forbidden`, `unforbidden`, `deleted`, `group-added` or
    /// `group-removed`.
    pub action: String,
    /// JSON: a list of `{column, old, new}` (no values for secret columns), or `{group}` for a
    /// membership change.
    #[sea_orm(column_type = "Text")]
    pub changes: String,
    /// RFC 3339 UTC with milliseconds, so text order is time order.
    pub created_at: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
