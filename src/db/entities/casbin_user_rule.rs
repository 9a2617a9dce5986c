//! Casdoor's user-group Casbin rules, `casbin_user_rule` (`g` rows: user, group). Unlike the
//! other Casdoor tables its columns are NOT NULL with a default of `''`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "casbin_user_rule")]
pub struct Model {
    /// Auto-increment key.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `g` for a user-group membership.
    pub ptype: String,
    /// `<org>/<user name>` for a membership.
    pub v0: String,
    /// `group:<org>/<group name>` for a membership.
    pub v1: String,
    pub v2: String,
    pub v3: String,
    pub v4: String,
    pub v5: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
