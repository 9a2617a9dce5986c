//! `syncer_lease`: at most one process runs a given syncer at a time, across replicas.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "syncer_lease")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub syncer_name: String,
    /// `hostname:pid` of the holder.
    pub holder: String,
    /// Epoch milliseconds.
    pub acquired_at: i64,
    /// Epoch milliseconds; the lease is free once this has passed.
    pub expires_at: i64,
    pub run_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
