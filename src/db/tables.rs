//! The names tables have in one database.
//!
//! Casdoor's `tableNamePrefix` (app.conf, empty by default) is put in front of every table
//! Casdoor's own ORM creates (`user` becomes `<prefix>user`), but not in front of
//! `casbin_user_rule`, which Casdoor's Casbin adapter creates under its fixed name. syncerd
//! mirrors that with `database.table_prefix` and gives its own tables (and its migration
//! bookkeeping) the same prefix, so two Casdoor installations sharing one database under two
//! prefixes also keep two separate syncerd states. Every query names its table through
//! [`TableNames`]; sea-orm entity queries go through [`TableNames::at`].

use sea_orm::sea_query::{Alias, IntoTableRef, TableRef};
use sea_orm::{
    ActiveModelTrait, DeleteMany, EntityTrait, Insert, InsertMany, QueryTrait, Select, UpdateMany,
};

use super::entities::{
    casbin_user_rule, group, syncer, syncer_change, syncer_event, syncer_lease, syncer_link,
    syncer_run, user,
};

/// Longest `database.table_prefix`: index names carry it too, and PostgreSQL cuts identifiers
/// at 63 bytes.
pub const TABLE_PREFIX_MAX_LEN: usize = 30;

/// A table syncerd reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Syncer,
    User,
    Group,
    Organization,
    Token,
    Session,
    CasbinUserRule,
    SyncerRun,
    SyncerLink,
    SyncerLease,
    SyncerEvent,
    SyncerChange,
}

impl Table {
    /// The name without any prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Table::Syncer => "syncer",
            Table::User => "user",
            Table::Group => "group",
            Table::Organization => "organization",
            Table::Token => "token",
            Table::Session => "session",
            Table::CasbinUserRule => "casbin_user_rule",
            Table::SyncerRun => "syncer_run",
            Table::SyncerLink => "syncer_link",
            Table::SyncerLease => "syncer_lease",
            Table::SyncerEvent => "syncer_event",
            Table::SyncerChange => "syncer_change",
        }
    }

    /// Whether the prefix applies: to everything but Casdoor's Casbin rule table.
    fn takes_prefix(self) -> bool {
        self != Table::CasbinUserRule
    }
}

/// Why a `database.table_prefix` cannot be used.
pub fn table_prefix_problem(prefix: &str) -> Option<String> {
    if prefix.len() > TABLE_PREFIX_MAX_LEN {
        return Some(format!(
            "it is {} characters long; at most {TABLE_PREFIX_MAX_LEN} are allowed",
            prefix.len()
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Some(format!(
            "it holds {bad:?}; only ASCII letters, digits and `_` are allowed"
        ));
    }
    None
}

/// The table names of one database: Casdoor's `tableNamePrefix` applied as Casdoor applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableNames {
    prefix: String,
}

impl TableNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The table's name in this database.
    pub fn name(&self, table: Table) -> String {
        if table.takes_prefix() {
            format!("{}{}", self.prefix, table.base_name())
        } else {
            table.base_name().to_owned()
        }
    }

    /// The table, for sea-query statements whose columns are unqualified.
    pub fn iden(&self, table: Table) -> Alias {
        Alias::new(self.name(table))
    }

    /// The table under its unprefixed name as an alias (`"p_user" AS "user"`), for SELECT and
    /// UPDATE statements whose columns sea-orm qualifies with the entity's table name. Not for
    /// INSERT, nor for DELETE (MariaDB has no alias there).
    pub fn aliased(&self, table: Table) -> TableRef {
        let name = self.name(table);
        if name == table.base_name() {
            Alias::new(name).into_table_ref()
        } else {
            Alias::new(name)
                .into_table_ref()
                .alias(Alias::new(table.base_name()))
        }
    }

    /// Points a sea-orm entity query at this database's name of the entity's table. A
    /// `delete_many` must filter on unqualified columns (`Expr::col(Column::X)`).
    pub fn at<Q: OnTable>(&self, query: Q) -> Q {
        if self.prefix.is_empty() {
            query
        } else {
            query.on_table(self)
        }
    }
}

/// The table an entity is stored in.
pub trait StoredIn {
    const TABLE: Table;
}

macro_rules! stored_in {
    ($($entity:path => $table:expr),* $(,)?) => {
        $(impl StoredIn for $entity {
            const TABLE: Table = $table;
        })*
    };
}

stored_in! {
    syncer::Entity => Table::Syncer,
    user::Entity => Table::User,
    group::Entity => Table::Group,
    casbin_user_rule::Entity => Table::CasbinUserRule,
    syncer_run::Entity => Table::SyncerRun,
    syncer_link::Entity => Table::SyncerLink,
    syncer_lease::Entity => Table::SyncerLease,
    syncer_event::Entity => Table::SyncerEvent,
    syncer_change::Entity => Table::SyncerChange,
}

/// A sea-orm query that can be pointed at another name of its table.
pub trait OnTable {
    fn on_table(self, tables: &TableNames) -> Self;
}

impl<E: EntityTrait + StoredIn> OnTable for Select<E> {
    fn on_table(mut self, tables: &TableNames) -> Self {
        QueryTrait::query(&mut self)
            .from_clear()
            .from(tables.aliased(E::TABLE));
        self
    }
}

impl<E: EntityTrait + StoredIn> OnTable for UpdateMany<E> {
    fn on_table(mut self, tables: &TableNames) -> Self {
        QueryTrait::query(&mut self).table(tables.aliased(E::TABLE));
        self
    }
}

impl<E: EntityTrait + StoredIn> OnTable for DeleteMany<E> {
    fn on_table(mut self, tables: &TableNames) -> Self {
        QueryTrait::query(&mut self).from_table(tables.iden(E::TABLE));
        self
    }
}

impl<A> OnTable for Insert<A>
where
    A: ActiveModelTrait,
    A::Entity: StoredIn,
{
    fn on_table(mut self, tables: &TableNames) -> Self {
        QueryTrait::query(&mut self).into_table(tables.iden(<A::Entity as StoredIn>::TABLE));
        self
    }
}

impl<A> OnTable for InsertMany<A>
where
    A: ActiveModelTrait,
    A::Entity: StoredIn,
{
    fn on_table(mut self, tables: &TableNames) -> Self {
        QueryTrait::query(&mut self).into_table(tables.iden(<A::Entity as StoredIn>::TABLE));
        self
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ColumnTrait, DbBackend, EntityName, QueryFilter};

    use super::*;

    /// The entity's table name, and the base name of the table it says it is stored in.
    fn entity_table<E: EntityName + StoredIn + Default>() -> (&'static str, &'static str) {
        (E::default().table_name(), E::TABLE.base_name())
    }

    #[test]
    fn casdoor_prefixes_everything_but_the_casbin_rule_table() {
        let tables = TableNames::new("cd_");
        assert_eq!(tables.name(Table::User), "cd_user");
        assert_eq!(tables.name(Table::Session), "cd_session");
        assert_eq!(tables.name(Table::SyncerLease), "cd_syncer_lease");
        assert_eq!(tables.name(Table::CasbinUserRule), "casbin_user_rule");
        assert_eq!(TableNames::default().name(Table::Group), "group");
    }

    #[test]
    fn entities_name_the_tables_they_are_stored_in() {
        for (entity, base) in [
            entity_table::<syncer::Entity>(),
            entity_table::<user::Entity>(),
            entity_table::<group::Entity>(),
            entity_table::<casbin_user_rule::Entity>(),
            entity_table::<syncer_run::Entity>(),
            entity_table::<syncer_link::Entity>(),
            entity_table::<syncer_lease::Entity>(),
            entity_table::<syncer_event::Entity>(),
            entity_table::<syncer_change::Entity>(),
        ] {
            assert_eq!(entity, base);
        }
    }

    #[test]
    fn entity_queries_read_the_prefixed_table_under_its_own_name() {
        let tables = TableNames::new("cd_");
        let select = tables
            .at(user::Entity::find().filter(user::Column::Owner.eq("acme")))
            .build(DbBackend::Postgres)
            .to_string();
        assert!(
            select.contains(r#"FROM "cd_user" AS "user" WHERE "user"."owner" = 'acme'"#),
            "{select}"
        );
        let unprefixed = TableNames::default()
            .at(user::Entity::find())
            .build(DbBackend::MySql)
            .to_string();
        assert!(unprefixed.ends_with("FROM `user`"), "{unprefixed}");
        let update = tables
            .at(syncer_run::Entity::update_many()
                .col_expr(syncer_run::Column::Status, "x".into())
                .filter(syncer_run::Column::Id.eq(1)))
            .build(DbBackend::MySql)
            .to_string();
        assert!(
            update.starts_with("UPDATE `cd_syncer_run` AS `syncer_run` SET"),
            "{update}"
        );
    }

    #[test]
    fn prefixes_are_plain_identifiers_of_bounded_length() {
        assert_eq!(table_prefix_problem(""), None);
        assert_eq!(table_prefix_problem("casdoor_2"), None);
        assert!(table_prefix_problem("cd-").is_some());
        assert!(table_prefix_problem("a`b").is_some());
        assert!(table_prefix_problem(&"p".repeat(31)).is_some());
    }
}
