//! `syncer_change`: the per-user change log. Every change a run makes to a user (created,
//! updated with its fields' old and new values, forbidden, unforbidden, deleted, added to or
//! removed from a group) is one row, written in the transaction of the change itself, so a
//! rolled-back batch leaves no row behind. Secret columns never have their values stored.
//! `created_at` is RFC 3339 UTC text with milliseconds, as in `syncer_run`.
//! The table is named through [`crate::prefixed_iden`] (`database.table_prefix`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::{prefixed, prefixed_iden};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SyncerChange {
    Table,
    Id,
    RunId,
    SyncerName,
    Organization,
    Userid,
    CasdoorName,
    Action,
    Changes,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut table = Table::create();
        table
            .table(prefixed_iden(SyncerChange::Table))
            .if_not_exists()
            .col(
                ColumnDef::new(SyncerChange::Id)
                    .big_integer()
                    .not_null()
                    .auto_increment()
                    .primary_key(),
            )
            .col(ColumnDef::new(SyncerChange::RunId).big_integer().not_null())
            .col(varchar(SyncerChange::SyncerName, 100))
            .col(varchar(SyncerChange::Organization, 100))
            // `''` when the run did not know the DingTalk userid (a membership-only change).
            .col(varchar(SyncerChange::Userid, 100))
            .col(varchar(SyncerChange::CasdoorName, 255))
            .col(varchar(SyncerChange::Action, 16))
            // JSON: the changed fields, or the group of a membership change.
            .col(ColumnDef::new(SyncerChange::Changes).text().not_null())
            .col(varchar(SyncerChange::CreatedAt, 32));
        if backend == DbBackend::MySql {
            table.character_set("utf8mb4");
        }
        manager.create_table(table.to_owned()).await?;
        manager
            .create_index(
                Index::create()
                    .name(prefixed("idx_syncer_change_run"))
                    .table(prefixed_iden(SyncerChange::Table))
                    .col(SyncerChange::RunId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(prefixed("idx_syncer_change_org_name"))
                    .table(prefixed_iden(SyncerChange::Table))
                    .col(SyncerChange::Organization)
                    .col(SyncerChange::CasdoorName)
                    .col(SyncerChange::Id)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(prefixed_iden(SyncerChange::Table))
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

/// A `VARCHAR(len) NOT NULL` column.
fn varchar(name: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(name).string_len(len).not_null().to_owned()
}
