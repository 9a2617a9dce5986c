//! syncerd's schema migrations: Casdoor's tables where they are missing (embedded mode), then
//! syncerd's own tables. Applied migrations are recorded in `syncerd_migrations`, a name that
//! says whose they are inside a shared Casdoor database.
pub use sea_orm_migration::prelude::*;

pub mod casdoor;
mod m20261125_000001_casdoor_tables;
mod m20261125_000002_syncerd_tables;
mod m20261207_000003_link_row_identity;
mod m20261207_000004_event_inbox;
mod m20261207_000005_change_log;
mod prefix;

pub use prefix::{prefixed, prefixed_iden, table_prefix, with_table_prefix};

/// Name of the table recording which migrations ran (after the table prefix, if any).
pub const MIGRATION_TABLE: &str = "syncerd_migrations";

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_casdoor_tables::Migration),
            Box::new(m20261125_000002_syncerd_tables::Migration),
            Box::new(m20261207_000003_link_row_identity::Migration),
            Box::new(m20261207_000004_event_inbox::Migration),
            Box::new(m20261207_000005_change_log::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        // Each table prefix has its own tables, so its own record of what ran.
        Alias::new(prefixed(MIGRATION_TABLE)).into_iden()
    }
}
