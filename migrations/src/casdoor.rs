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

    /// The table name without Casdoor's `tableNamePrefix`.
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

    /// Whether Casdoor puts its `tableNamePrefix` in front of this table's name: its ORM does
    /// for all of its tables, its Casbin adapter does not for `casbin_user_rule`.
    pub fn takes_prefix(self) -> bool {
        self != CasdoorTable::CasbinUserRule
    }

    /// The table's name under `prefix`.
    pub fn prefixed_name(self, prefix: &str) -> String {
        if self.takes_prefix() {
            format!("{prefix}{}", self.name())
        } else {
            self.name().to_owned()
        }
    }

    /// [`CasdoorTable::statements`] as Casdoor runs them under `prefix`: the table and its
    /// index names (`IDX_<table>_<column>`, `UQE_<table>_<column>`) carry the prefix.
    pub fn statements_with_prefix(self, backend: DbBackend, prefix: &str) -> Vec<String> {
        let statements = self.statements(backend);
        if prefix.is_empty() || !self.takes_prefix() {
            return statements;
        }
        let name = self.name();
        let renamed = self.prefixed_name(prefix);
        let mut replacements = Vec::new();
        for quote in ['`', '"'] {
            for before in ["CREATE TABLE IF NOT EXISTS ", " ON "] {
                replacements.push((
                    format!("{before}{quote}{name}{quote}"),
                    format!("{before}{quote}{renamed}{quote}"),
                ));
            }
            for kind in ["IDX", "UQE"] {
                replacements.push((
                    format!("{quote}{kind}_{name}_"),
                    format!("{quote}{kind}_{renamed}_"),
                ));
            }
        }
        statements
            .into_iter()
            .map(|statement| {
                replacements
                    .iter()
                    .fold(statement, |s, (from, to)| s.replace(from.as_str(), to))
            })
            .collect()
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
    fn a_prefix_renames_the_table_and_its_indexes_but_no_column() {
        for backend in BACKENDS {
            let group = CasdoorTable::Group.statements_with_prefix(backend, "cd_");
            assert!(
                group[0].contains("EXISTS `cd_group` (")
                    || group[0].contains("EXISTS \"cd_group\" (")
            );
            assert!(
                group[1].contains("UQE_cd_group_name") && group[1].contains("cd_group"),
                "{}",
                group[1]
            );
            let syncer = CasdoorTable::Syncer
                .statements_with_prefix(backend, "cd_")
                .remove(0);
            // The `user` column of `syncer` keeps its name.
            assert!(
                syncer.contains("`user` ") || syncer.contains("\"user\" "),
                "{syncer}"
            );
            assert_eq!(
                CasdoorTable::CasbinUserRule.statements_with_prefix(backend, "cd_"),
                CasdoorTable::CasbinUserRule.statements(backend)
            );
            let user = CasdoorTable::User.statements_with_prefix(backend, "cd_");
            assert!(
                user.iter()
                    .skip(1)
                    .all(|s| s.contains("IDX_cd_user_") && s.contains("cd_user"))
            );
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
