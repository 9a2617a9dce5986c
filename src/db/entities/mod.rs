//! sea-orm entities: Casdoor's tables, column for column as Casdoor creates them, and syncerd's
//! own tables as `migrations/` creates them. Unit tests below keep the Casdoor entities in step
//! with the DDL the migrations carry.

pub mod casbin_user_rule;
pub mod group;
pub mod syncer;
pub mod syncer_change;
pub mod syncer_event;
pub mod syncer_lease;
pub mod syncer_link;
pub mod syncer_run;
pub mod user;

#[cfg(test)]
mod tests {
    use migrations::casdoor::CasdoorTable;
    use sea_orm::sea_query::ColumnType;
    use sea_orm::{ColumnTrait, DbBackend, EntityTrait, IdenStatic, Iterable};

    use super::*;

    /// `(column, kind, not null)` of each column line of the MySQL DDL, where kind is the Rust
    /// type family the column maps to.
    fn ddl_columns(table: CasdoorTable) -> Vec<(String, &'static str, bool)> {
        let create = table.statements(DbBackend::MySql).remove(0);
        create
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let rest = line.strip_prefix('`')?;
                let (name, rest) = rest.split_once('`')?;
                let sql_type = rest.split_whitespace().next().unwrap_or_default();
                let kind = match sql_type {
                    t if t.starts_with("VARCHAR") || t == "TEXT" || t == "MEDIUMTEXT" => "text",
                    "INT" => "i32",
                    t if t.starts_with("BIGINT") => "i64",
                    "DOUBLE" => "f64",
                    "TINYINT(1)" => "bool",
                    "BLOB" => "bytes",
                    other => panic!("unexpected type {other} in {line}"),
                };
                Some((name.to_owned(), kind, rest.contains("NOT NULL")))
            })
            .collect()
    }

    fn kind(column_type: &ColumnType) -> &'static str {
        match column_type {
            ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_) => "text",
            ColumnType::Integer => "i32",
            ColumnType::BigInteger => "i64",
            ColumnType::Double | ColumnType::Float => "f64",
            ColumnType::Boolean => "bool",
            ColumnType::Binary(_) | ColumnType::VarBinary(_) | ColumnType::Blob => "bytes",
            other => panic!("unexpected column type {other:?}"),
        }
    }

    fn entity_columns<E: EntityTrait>() -> Vec<(String, &'static str, bool)> {
        E::Column::iter()
            .map(|c| {
                let def = c.def();
                (
                    c.as_str().to_owned(),
                    kind(def.get_column_type()),
                    !def.is_null(),
                )
            })
            .collect()
    }

    #[test]
    fn casdoor_entities_mirror_the_ddl_column_for_column() {
        assert_eq!(
            entity_columns::<syncer::Entity>(),
            ddl_columns(CasdoorTable::Syncer)
        );
        assert_eq!(
            entity_columns::<user::Entity>(),
            ddl_columns(CasdoorTable::User)
        );
        assert_eq!(
            entity_columns::<group::Entity>(),
            ddl_columns(CasdoorTable::Group)
        );
        assert_eq!(
            entity_columns::<casbin_user_rule::Entity>(),
            ddl_columns(CasdoorTable::CasbinUserRule)
        );
        assert_eq!(entity_columns::<user::Entity>().len(), 181);
    }

    #[test]
    fn camel_case_and_reserved_columns_keep_their_names() {
        let names: Vec<&str> = user::Column::iter().map(|c| c.as_str()).collect();
        for name in [
            "webauthnCredentials",
            "managedAccounts",
            "mfaAccounts",
            "type",
            "groups",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        assert_eq!(syncer::Column::Type.as_str(), "type");
        assert_eq!(syncer::Column::User.as_str(), "user");
        assert_eq!(group::Column::Key.as_str(), "key");
    }

    #[test]
    fn debug_of_casdoor_rows_hides_passwords() {
        let row = syncer::Model {
            owner: "admin".into(),
            name: "s".into(),
            created_time: None,
            organization: None,
            r#type: None,
            database_type: None,
            ssl_mode: None,
            ssh_type: None,
            host: None,
            port: None,
            user: Some("dingkey".into()),
            password: Some("AppSecret-xyz".into()),
            ssh_host: None,
            ssh_port: None,
            ssh_user: None,
            ssh_password: Some("ssh-pw-xyz".into()),
            cert: None,
            database: None,
            table: None,
            table_columns: None,
            affiliation_table: None,
            avatar_base_url: None,
            error_text: None,
            sync_interval: None,
            is_read_only: None,
            is_enabled: None,
        };
        let debug = format!("{row:?}");
        assert!(
            !debug.contains("AppSecret-xyz") && !debug.contains("ssh-pw-xyz"),
            "{debug}"
        );
        assert!(
            debug.contains("dingkey") && debug.contains("[redacted]"),
            "{debug}"
        );
    }
}
