//! Casdoor's `syncer` table, as Casdoor's own DDL declares it. Every column but the primary key may be
//! NULL in a real installation, hence the `Option`s; domain code reads it through
//! [`crate::db::SyncerRow`], which hides the App Secret behind `Secret`.

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "syncer")]
pub struct Model {
    /// Always `admin` (primary key with `name`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner: String,
    /// Syncer name (primary key with `owner`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// RFC 3339 text; Casdoor lists syncers by it, newest first.
    pub created_time: Option<String>,
    pub organization: Option<String>,
    /// `DingTalk` selects the DingTalk provider (case-sensitive).
    pub r#type: Option<String>,
    pub database_type: Option<String>,
    pub ssl_mode: Option<String>,
    pub ssh_type: Option<String>,
    pub host: Option<String>,
    pub port: Option<i32>,
    /// DingTalk App Key.
    pub user: Option<String>,
    /// DingTalk App Secret, in plaintext. Never log it; domain code wraps it in `Secret`.
    pub password: Option<String>,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<String>,
    /// Database-syncer field; not used by DingTalk syncers.
    pub ssh_password: Option<String>,
    pub cert: Option<String>,
    pub database: Option<String>,
    pub table: Option<String>,
    /// JSON array of `{name,type,casdoorName,isKey,isHashed,values}`: the field mapping.
    pub table_columns: Option<String>,
    pub affiliation_table: Option<String>,
    pub avatar_base_url: Option<String>,
    /// Append-only error log, lines `[<RFC 3339>] <message>\n`, capped at 65,536 bytes.
    pub error_text: Option<String>,
    /// Seconds between scheduled runs.
    pub sync_interval: Option<i32>,
    /// When 0, Casdoor tries (and fails) to write back to DingTalk.
    pub is_read_only: Option<bool>,
    pub is_enabled: Option<bool>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Shows every column except the two passwords, which print as `[redacted]` when set.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| crate::secret::REDACTED);
        f.debug_struct("syncer::Model")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("created_time", &self.created_time)
            .field("organization", &self.organization)
            .field("type", &self.r#type)
            .field("database_type", &self.database_type)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssh_type", &self.ssh_type)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("ssh_host", &self.ssh_host)
            .field("ssh_port", &self.ssh_port)
            .field("ssh_user", &self.ssh_user)
            .field("ssh_password", &redacted(&self.ssh_password))
            .field("cert", &self.cert)
            .field("database", &self.database)
            .field("table", &self.table)
            .field("table_columns", &self.table_columns)
            .field("affiliation_table", &self.affiliation_table)
            .field("avatar_base_url", &self.avatar_base_url)
            .field("error_text", &self.error_text)
            .field("sync_interval", &self.sync_interval)
            .field("is_read_only", &self.is_read_only)
            .field("is_enabled", &self.is_enabled)
            .finish()
    }
}
