//! Embedded/standalone mode: creates Casdoor's `syncer`, `user`, `group` and `casbin_user_rule`
//! tables, with their indexes, exactly as Casdoor would — but only those that do not exist yet.
//!
//! An existing Casdoor table is never altered, whatever its shape (older installations carry
//! extra columns, NULLs and other charsets; Casdoor's own start-up adds what it misses). On
//! MySQL/MariaDB the tables syncerd creates get `DEFAULT CHARSET=utf8mb4` so Chinese names and
//! emoji round-trip even when the server default is latin1; existing Casdoor tables are left
//! with whatever charset they have. Under a table prefix (Casdoor's `tableNamePrefix`) the
//! tables are looked for and created under their prefixed names, `casbin_user_rule` excepted.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::casdoor::CasdoorTable;
use crate::table_prefix;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        // Atomic on PostgreSQL and SQLite; MySQL commits each DDL statement implicitly anyway.
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let prefix = table_prefix();
        for table in CasdoorTable::ALL {
            if manager.has_table(table.prefixed_name(&prefix)).await? {
                continue;
            }
            for statement in table.statements_with_prefix(backend, &prefix) {
                let sql = if backend == DbBackend::MySql && statement.starts_with("CREATE TABLE") {
                    format!("{statement} DEFAULT CHARSET=utf8mb4")
                } else {
                    statement
                };
                manager
                    .get_connection()
                    .execute_raw(Statement::from_string(backend, sql))
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Casdoor's tables hold identity data that may predate syncerd, or that Casdoor itself
        // has written since: never drop them.
        Ok(())
    }
}
