//! Casdoor's own tables, as Casdoor (xorm) creates them on each engine.
//!
//! The DDL lives in `sql/<engine>/<table>.sql`, copied verbatim from the spec's appendices, so
//! the embedded-mode migration and the integration tests (which build a database "as Casdoor
//! would") use exactly the same text.

use sea_orm_migration::sea_orm::DbBackend;

/// A Casdoor table syncerd reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CasdoorTable {
    Syncer,
    User,
    Group,
    CasbinUserRule,
}

impl CasdoorTable {
    /// Every Casdoor table syncerd needs, in creation order.
    pub const ALL: [CasdoorTable; 4] = [
        CasdoorTable::Syncer,
        CasdoorTable::User,
        CasdoorTable::Group,
        CasdoorTable::CasbinUserRule,
    ];

    /// The table name (unprefixed; syncerd does not support Casdoor's `tableNamePrefix`).
    pub fn name(self) -> &'static str {
        match self {
            CasdoorTable::Syncer => "syncer",
            CasdoorTable::User => "user",
            CasdoorTable::Group => "group",
            CasdoorTable::CasbinUserRule => "casbin_user_rule",
        }
    }

    /// The DDL file for this table on `backend`: one `CREATE TABLE` followed by its indexes.
    pub fn ddl(self, backend: DbBackend) -> &'static str {
        use CasdoorTable::*;
        match (backend, self) {
            (DbBackend::MySql, Syncer) => include_str!("sql/mysql/syncer.sql"),
            (DbBackend::MySql, User) => include_str!("sql/mysql/user.sql"),
            (DbBackend::MySql, Group) => include_str!("sql/mysql/group.sql"),
            (DbBackend::MySql, CasbinUserRule) => include_str!("sql/mysql/casbin_user_rule.sql"),
            (DbBackend::Postgres, Syncer) => include_str!("sql/postgres/syncer.sql"),
            (DbBackend::Postgres, User) => include_str!("sql/postgres/user.sql"),
            (DbBackend::Postgres, Group) => include_str!("sql/postgres/group.sql"),
            (DbBackend::Postgres, CasbinUserRule) => {
                include_str!("sql/postgres/casbin_user_rule.sql")
            }
            // `DbBackend` is non-exhaustive; anything that is not MySQL or PostgreSQL is SQLite.
            (_, Syncer) => include_str!("sql/sqlite/syncer.sql"),
            (_, User) => include_str!("sql/sqlite/user.sql"),
            (_, Group) => include_str!("sql/sqlite/group.sql"),
            (_, CasbinUserRule) => include_str!("sql/sqlite/casbin_user_rule.sql"),
        }
    }

    /// The statements of [`CasdoorTable::ddl`], one per element, without comments or the
    /// trailing `;`.
    pub fn statements(self, backend: DbBackend) -> Vec<String> {
        split_statements(self.ddl(backend))
    }
}

/// Splits a DDL script into statements. The Casdoor DDL holds no `;` inside literals, and its
/// comments are whole `--` lines.
fn split_statements(script: &str) -> Vec<String> {
    let without_comments: String = script
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: [DbBackend; 3] = [DbBackend::MySql, DbBackend::Postgres, DbBackend::Sqlite];

    #[test]
    fn each_script_is_one_create_table_then_its_indexes() {
        for backend in BACKENDS {
            for table in CasdoorTable::ALL {
                let stmts = table.statements(backend);
                let first = stmts.first().map(String::as_str).unwrap_or_default();
                let quoted_name = [
                    format!("`{}` (", table.name()),
                    format!("\"{}\" (", table.name()),
                ];
                assert!(
                    first.starts_with("CREATE TABLE IF NOT EXISTS")
                        && quoted_name.iter().any(|q| first.contains(q.as_str())),
                    "{backend:?} {table:?}: {first}"
                );
                for stmt in &stmts[1..] {
                    assert!(
                        stmt.starts_with("CREATE INDEX") || stmt.starts_with("CREATE UNIQUE INDEX"),
                        "{backend:?} {table:?}: {stmt}"
                    );
                }
            }
        }
    }

    #[test]
    fn index_counts_match_the_spec() {
        for backend in BACKENDS {
            let count = |t: CasdoorTable| t.statements(backend).len() - 1;
            assert_eq!(count(CasdoorTable::Syncer), 0);
            assert_eq!(count(CasdoorTable::User), 9);
            assert_eq!(count(CasdoorTable::Group), 2);
            assert_eq!(count(CasdoorTable::CasbinUserRule), 7);
        }
    }

    #[test]
    fn the_user_table_has_181_columns_on_every_engine() {
        for backend in BACKENDS {
            let create = CasdoorTable::User.statements(backend).remove(0);
            // Column lines are the indented lines of the CREATE TABLE, minus the PRIMARY KEY line.
            let columns = create
                .lines()
                .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("PRIMARY KEY"))
                .count();
            assert_eq!(columns, 181, "{backend:?}");
        }
    }
}
