//! syncerd's own tables: run history (`syncer_run`), ownership of the users and groups a syncer
//! created or adopted (`syncer_link`) and the one-holder-per-syncer lease (`syncer_lease`).
//!
//! Times that humans read are RFC 3339 UTC text with milliseconds (`2026-11-25T03:04:05.678Z`), so
//! string order is time order on every engine; lease times are epoch milliseconds because they
//! are compared arithmetically.
//!
//! Tables and indexes take the table prefix of the run ([`crate::with_table_prefix`]); a later
//! migration names its tables through [`crate::prefixed_iden`] too.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::{prefixed, prefixed_iden};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Length of the RFC 3339 UTC timestamps syncerd writes (24 characters, with room to spare).
const TIMESTAMP_LEN: u32 = 32;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        // Atomic on PostgreSQL and SQLite; MySQL commits each DDL statement implicitly anyway.
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        manager.create_table(syncer_run(backend)).await?;
        manager
            .create_index(
                Index::create()
                    .name(prefixed("idx_syncer_run_syncer_started"))
                    .table(prefixed_iden(SyncerRun::Table))
                    .col(SyncerRun::SyncerName)
                    .col(SyncerRun::StartedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(prefixed("idx_syncer_run_status"))
                    .table(prefixed_iden(SyncerRun::Table))
                    .col(SyncerRun::Status)
                    .to_owned(),
            )
            .await?;

        manager.create_table(syncer_link(backend)).await?;
        manager
            .create_index(
                Index::create()
                    .name(prefixed("idx_syncer_link_org_kind_name"))
                    .table(prefixed_iden(SyncerLink::Table))
                    .col(SyncerLink::Organization)
                    .col(SyncerLink::Kind)
                    .col(SyncerLink::CasdoorName)
                    .to_owned(),
            )
            .await?;

        manager.create_table(syncer_lease(backend)).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            prefixed_iden(SyncerLease::Table),
            prefixed_iden(SyncerLink::Table),
            prefixed_iden(SyncerRun::Table),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum SyncerRun {
    Table,
    Id,
    SyncerName,
    Organization,
    Trigger,
    Mode,
    Status,
    StartedAt,
    FinishedAt,
    DurationMs,
    Fetched,
    Created,
    Updated,
    Unchanged,
    Forbidden,
    Unforbidden,
    Deleted,
    GroupsCreated,
    GroupsUpdated,
    MembershipsChanged,
    RecordErrors,
    ApiCalls,
    ErrorSummary,
    Details,
    Instance,
}

#[derive(DeriveIden)]
enum SyncerLink {
    Table,
    SyncerName,
    Kind,
    ExternalId,
    Organization,
    CasdoorName,
    ContentHash,
    State,
    LeftAction,
    FirstSeenRun,
    LastSeenRun,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SyncerLease {
    Table,
    SyncerName,
    Holder,
    AcquiredAt,
    ExpiresAt,
    RunId,
}

fn syncer_run(backend: DbBackend) -> TableCreateStatement {
    let mut table = Table::create();
    table
        .table(prefixed_iden(SyncerRun::Table))
        .if_not_exists()
        .col(
            ColumnDef::new(SyncerRun::Id)
                .big_integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        )
        .col(varchar(SyncerRun::SyncerName, 100))
        .col(varchar(SyncerRun::Organization, 100))
        .col(varchar(SyncerRun::Trigger, 16))
        .col(varchar(SyncerRun::Mode, 16))
        .col(varchar(SyncerRun::Status, 16))
        .col(varchar(SyncerRun::StartedAt, TIMESTAMP_LEN))
        .col(
            ColumnDef::new(SyncerRun::FinishedAt)
                .string_len(TIMESTAMP_LEN)
                .null(),
        )
        .col(ColumnDef::new(SyncerRun::DurationMs).big_integer().null());
    for count in [
        SyncerRun::Fetched,
        SyncerRun::Created,
        SyncerRun::Updated,
        SyncerRun::Unchanged,
        SyncerRun::Forbidden,
        SyncerRun::Unforbidden,
        SyncerRun::Deleted,
        SyncerRun::GroupsCreated,
        SyncerRun::GroupsUpdated,
        SyncerRun::MembershipsChanged,
        SyncerRun::RecordErrors,
        SyncerRun::ApiCalls,
    ] {
        table.col(
            ColumnDef::new(count)
                .big_integer()
                .not_null()
                .default(0_i64),
        );
    }
    table
        .col(long_text(SyncerRun::ErrorSummary, backend).null())
        .col(long_text(SyncerRun::Details, backend).null())
        .col(varchar(SyncerRun::Instance, 255));
    with_charset(table, backend)
}

fn syncer_link(backend: DbBackend) -> TableCreateStatement {
    let mut table = Table::create();
    table
        .table(prefixed_iden(SyncerLink::Table))
        .if_not_exists()
        .col(varchar(SyncerLink::SyncerName, 100))
        .col(varchar(SyncerLink::Kind, 16))
        .col(varchar(SyncerLink::ExternalId, 100))
        .col(varchar(SyncerLink::Organization, 100))
        .col(varchar(SyncerLink::CasdoorName, 255))
        .col(varchar(SyncerLink::ContentHash, 64))
        .col(varchar(SyncerLink::State, 16))
        .col(ColumnDef::new(SyncerLink::LeftAction).string_len(16).null())
        .col(
            ColumnDef::new(SyncerLink::FirstSeenRun)
                .big_integer()
                .null(),
        )
        .col(ColumnDef::new(SyncerLink::LastSeenRun).big_integer().null())
        .col(varchar(SyncerLink::CreatedAt, TIMESTAMP_LEN))
        .col(varchar(SyncerLink::UpdatedAt, TIMESTAMP_LEN))
        .primary_key(
            Index::create()
                .col(SyncerLink::SyncerName)
                .col(SyncerLink::Kind)
                .col(SyncerLink::ExternalId),
        );
    with_charset(table, backend)
}

fn syncer_lease(backend: DbBackend) -> TableCreateStatement {
    let mut table = Table::create();
    table
        .table(prefixed_iden(SyncerLease::Table))
        .if_not_exists()
        .col(
            ColumnDef::new(SyncerLease::SyncerName)
                .string_len(100)
                .not_null()
                .primary_key(),
        )
        .col(varchar(SyncerLease::Holder, 255))
        .col(
            ColumnDef::new(SyncerLease::AcquiredAt)
                .big_integer()
                .not_null(),
        )
        .col(
            ColumnDef::new(SyncerLease::ExpiresAt)
                .big_integer()
                .not_null(),
        )
        .col(ColumnDef::new(SyncerLease::RunId).big_integer().null());
    with_charset(table, backend)
}

/// A `VARCHAR(len) NOT NULL` column.
fn varchar(name: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(name).string_len(len).not_null().to_owned()
}

/// Free text that may outgrow MySQL's 64 KiB `TEXT` (error lists, per-endpoint statistics).
fn long_text(name: impl IntoIden, backend: DbBackend) -> ColumnDef {
    let mut column = ColumnDef::new(name);
    if backend == DbBackend::MySql {
        column.custom(Alias::new("MEDIUMTEXT"));
    } else {
        column.text();
    }
    column
}

/// MySQL/MariaDB tables get utf8mb4 whatever the server default is.
fn with_charset(mut table: TableCreateStatement, backend: DbBackend) -> TableCreateStatement {
    if backend == DbBackend::MySql {
        table.character_set("utf8mb4");
    }
    table
}
