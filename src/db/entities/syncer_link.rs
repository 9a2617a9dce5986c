//! `syncer_link`: which Casdoor users and groups a syncer created or adopted, keyed by the
//! DingTalk identity, so a syncer only ever changes what it owns.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "syncer_link")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub syncer_name: String,
    /// `user` or `group`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// DingTalk userid, or the department id as decimal text.
    #[sea_orm(primary_key, auto_increment = false)]
    pub external_id: String,
    pub organization: String,
    /// `user.name` or `group.name` in Casdoor.
    pub casdoor_name: String,
    /// Hash of the DingTalk content last written, to skip unchanged records.
    pub content_hash: String,
    /// `present` or `left`.
    pub state: String,
    /// What was done when the record left DingTalk (`forbid`, `keep`, `delete`).
    pub left_action: Option<String>,
    pub first_seen_run: Option<i64>,
    pub last_seen_run: Option<i64>,
    /// RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// RFC 3339 UTC with milliseconds.
    pub updated_at: String,
    /// `user.id` of the linked row when the link was made (users; NULL until recorded).
    pub casdoor_id: Option<String>,
    /// `user.created_time` of the linked row (users; NULL until recorded).
    pub casdoor_created_time: Option<String>,
    /// The user row was adopted rather than created (NULL: not recorded, read as created).
    pub adopted: Option<bool>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
