//! Casdoor's `group` table, as Casdoor's own DDL declares it on the three engines; `group` is a
//! reserved word, so it is always quoted (sea-orm quotes every identifier).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "group")]
pub struct Model {
    /// Organization name (primary key with `name`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner: String,
    /// Group name (primary key with `owner`; also globally unique while `UQE_group_name` exists). DingTalk departments use the decimal department id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub created_time: Option<String>,
    pub updated_time: Option<String>,
    pub display_name: Option<String>,
    pub manager: Option<String>,
    pub contact_email: Option<String>,
    pub r#type: Option<String>,
    /// Parent group name, or the organization name for a top-level group.
    pub parent_id: Option<String>,
    pub is_top_group: Option<bool>,
    pub title: Option<String>,
    pub key: Option<String>,
    pub children: Option<String>,
    pub is_enabled: Option<bool>,
    pub gid_number: Option<i32>,
    pub properties: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
