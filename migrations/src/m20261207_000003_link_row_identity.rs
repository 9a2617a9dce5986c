//! Which user row a `syncer_link` was made for (`casdoor_id`, `casdoor_created_time`), and
//! whether it was adopted. A user deleted in Casdoor and re-created under the same name is
//! another person: a link known by name alone would write to that row and later forbid it.
//! The columns are nullable: links made before this migration are filled on their next run.
//! The table is named through [`crate::prefixed_iden`] (`database.table_prefix`).

use sea_orm_migration::prelude::*;

use crate::prefixed_iden;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SyncerLink {
    Table,
    CasdoorId,
    CasdoorCreatedTime,
    Adopted,
}

/// Casdoor's `user.id` and `user.created_time` are `VARCHAR(100)`.
const CASDOOR_VARCHAR: u32 = 100;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            ColumnDef::new(SyncerLink::CasdoorId)
                .string_len(CASDOOR_VARCHAR)
                .null()
                .to_owned(),
            ColumnDef::new(SyncerLink::CasdoorCreatedTime)
                .string_len(CASDOOR_VARCHAR)
                .null()
                .to_owned(),
            ColumnDef::new(SyncerLink::Adopted)
                .boolean()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(prefixed_iden(SyncerLink::Table))
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            SyncerLink::Adopted.into_iden(),
            SyncerLink::CasdoorCreatedTime.into_iden(),
            SyncerLink::CasdoorId.into_iden(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(prefixed_iden(SyncerLink::Table))
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
