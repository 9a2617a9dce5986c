//! `syncer_event`: DingTalk Stream events stored before they are acknowledged (the inbox).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "syncer_event")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub syncer_name: String,
    /// DingTalk's `eventId`: an event delivered twice is stored once.
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: String,
    /// DingTalk's `eventType` (`user_leave_org`, `org_dept_create`, ...).
    pub event_type: String,
    /// JSON array of DingTalk userids.
    #[sea_orm(column_type = "Text")]
    pub user_ids: String,
    /// JSON array of DingTalk department ids.
    #[sea_orm(column_type = "Text")]
    pub dept_ids: String,
    /// Epoch milliseconds of `eventBornTime`, when DingTalk sent one.
    pub born_at: Option<i64>,
    /// Epoch milliseconds at which syncerd stored the event.
    pub received_at: i64,
    /// `pending`, `applied` or `ignored`.
    pub state: String,
    /// The run that applied it.
    pub run_id: Option<i64>,
    /// Epoch milliseconds at which it was applied or ignored.
    pub done_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
