//! `syncer_event`: the inbox of DingTalk Stream events. An event is stored here before it is
//! acknowledged, so a crash between the acknowledgement and its application loses nothing: the
//! daemon drains what is `pending` when it starts. The key is `(syncer_name, event_id)`, so an
//! event DingTalk delivers twice is stored once.
//! The table is named through [`crate::prefixed_iden`] (`database.table_prefix`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::{prefixed, prefixed_iden};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SyncerEvent {
    Table,
    SyncerName,
    EventId,
    EventType,
    UserIds,
    DeptIds,
    BornAt,
    ReceivedAt,
    State,
    RunId,
    DoneAt,
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
            .table(prefixed_iden(SyncerEvent::Table))
            .if_not_exists()
            .col(varchar(SyncerEvent::SyncerName, 100))
            // DingTalk's event ids are 32-character hex strings; room to spare.
            .col(varchar(SyncerEvent::EventId, 128))
            .col(varchar(SyncerEvent::EventType, 64))
            // JSON arrays of ids; bounded by the stream client's per-event cap.
            .col(ColumnDef::new(SyncerEvent::UserIds).text().not_null())
            .col(ColumnDef::new(SyncerEvent::DeptIds).text().not_null())
            .col(ColumnDef::new(SyncerEvent::BornAt).big_integer().null())
            .col(
                ColumnDef::new(SyncerEvent::ReceivedAt)
                    .big_integer()
                    .not_null(),
            )
            .col(varchar(SyncerEvent::State, 16))
            .col(ColumnDef::new(SyncerEvent::RunId).big_integer().null())
            .col(ColumnDef::new(SyncerEvent::DoneAt).big_integer().null())
            .primary_key(
                Index::create()
                    .col(SyncerEvent::SyncerName)
                    .col(SyncerEvent::EventId),
            );
        if backend == DbBackend::MySql {
            table.character_set("utf8mb4");
        }
        manager.create_table(table.to_owned()).await?;
        manager
            .create_index(
                Index::create()
                    .name(prefixed("idx_syncer_event_syncer_state"))
                    .table(prefixed_iden(SyncerEvent::Table))
                    .col(SyncerEvent::SyncerName)
                    .col(SyncerEvent::State)
                    .col(SyncerEvent::ReceivedAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(prefixed_iden(SyncerEvent::Table))
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
