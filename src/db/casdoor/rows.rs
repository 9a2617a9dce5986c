//! The rows a batch inserts, table by table: each table's columns, one row's values in column
//! order, and the multi-row INSERT that writes them.
//!
//! The SQL text of an INSERT of `n` rows into a table depends on nothing but `n`, so a writer
//! builds it once (with sea-query, which quotes and spells the conflict clause per engine) and
//! reuses it for every later statement of that shape; the values go to the driver as one flat
//! list. Building a sea-query expression per value and rendering the same text again for
//! every statement cost more than SQLite's own work on a 100,000-user import. PostgreSQL's
//! `COPY` path ([`super::copy`]) writes the very same values.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sea_orm::sea_query::{Alias, InsertStatement, OnConflict, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, Value};

use crate::config::Engine;
use crate::db::Table;
use crate::db::changes::NewChange;
use crate::pipeline::groups::DEPARTMENT_GROUP_TYPE;
use crate::pipeline::model::{
    CasbinGrouping, GroupCreate, LinkKind, LinkState, NewUser, OwnershipLink,
};

use super::write::{Writer, statement_chunks, text};
use super::{GROUPING_PTYPE, link_kind_text, link_state_text};

/// A table's INSERT as a batch writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Groups,
    Users,
    Groupings,
    /// Links upserted as present: an overwrite moves `last_seen_run`.
    PresentLinks,
    /// Links upserted as left: an overwrite keeps `last_seen_run`.
    LeftLinks,
    Changes,
}

const GROUP_COLUMNS: &[&str] = &[
    "owner",
    "name",
    "created_time",
    "updated_time",
    "display_name",
    "manager",
    "contact_email",
    "type",
    "parent_id",
    "is_top_group",
    "title",
    "key",
    "children",
    "is_enabled",
    "gid_number",
    "properties",
];

const GROUPING_COLUMNS: &[&str] = &["ptype", "v0", "v1", "v2", "v3", "v4", "v5"];

const LINK_COLUMNS: &[&str] = &[
    "syncer_name",
    "kind",
    "external_id",
    "organization",
    "casdoor_name",
    "content_hash",
    "state",
    "left_action",
    "first_seen_run",
    "last_seen_run",
    "created_at",
    "updated_at",
    "casdoor_id",
    "casdoor_created_time",
    "adopted",
];

/// What an overwrite of a link changes: not `first_seen_run` nor `created_at`.
const LINK_UPDATE_COLUMNS: &[&str] = &[
    "organization",
    "casdoor_name",
    "content_hash",
    "state",
    "left_action",
    "updated_at",
    "casdoor_id",
    "casdoor_created_time",
    "adopted",
];

const LINK_KEY_COLUMNS: &[&str] = &["syncer_name", "kind", "external_id"];

const CHANGE_COLUMNS: &[&str] = &[
    "run_id",
    "syncer_name",
    "organization",
    "userid",
    "casdoor_name",
    "action",
    "changes",
    "created_at",
];

/// The SQL text of each (shape, row count) a writer has used.
#[derive(Debug, Default)]
pub struct SqlCache(Mutex<HashMap<(Shape, usize), String>>);

impl Shape {
    pub fn table(self) -> Table {
        match self {
            Shape::Groups => Table::Group,
            Shape::Users => Table::User,
            Shape::Groupings => Table::CasbinUserRule,
            Shape::PresentLinks | Shape::LeftLinks => Table::SyncerLink,
            Shape::Changes => Table::SyncerChange,
        }
    }
}

fn backend(engine: Engine) -> DbBackend {
    match engine {
        Engine::Sqlite => DbBackend::Sqlite,
        Engine::MySql => DbBackend::MySql,
        Engine::Postgres => DbBackend::Postgres,
    }
}

impl Writer<'_> {
    /// The columns `shape` writes, in the order of its values.
    pub fn columns(&self, shape: Shape) -> &[&'static str] {
        match shape {
            Shape::Groups => GROUP_COLUMNS,
            Shape::Users => &self.user_column_names,
            Shape::Groupings => GROUPING_COLUMNS,
            Shape::PresentLinks | Shape::LeftLinks => LINK_COLUMNS,
            Shape::Changes => CHANGE_COLUMNS,
        }
    }

    /// The INSERT of `shape` without its rows.
    fn insert_template(&self, shape: Shape) -> InsertStatement {
        let mut stmt = Query::insert()
            .into_table(self.tables.iden(shape.table()))
            .columns(self.columns(shape).iter().map(|c| Alias::new(*c)))
            .to_owned();
        if matches!(shape, Shape::PresentLinks | Shape::LeftLinks) {
            let mut update: Vec<&str> = LINK_UPDATE_COLUMNS.to_vec();
            if shape == Shape::PresentLinks {
                update.push("last_seen_run");
            }
            stmt.on_conflict(
                OnConflict::columns(LINK_KEY_COLUMNS.iter().map(|c| Alias::new(*c)))
                    .update_columns(update.into_iter().map(Alias::new))
                    .to_owned(),
            );
        }
        stmt
    }

    /// The SQL text of an INSERT of `rows` rows of `shape`, built the first time it is needed.
    fn insert_sql(&self, shape: Shape, rows: usize) -> Result<String, DbErr> {
        let mut cache = self
            .sql_cache
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sql) = cache.get(&(shape, rows)) {
            return Ok(sql.clone());
        }
        let width = self.columns(shape).len();
        let mut stmt = self.insert_template(shape);
        for _ in 0..rows {
            let row = vec![SimpleExpr::from(Value::String(None)); width];
            stmt.values(row)
                .map_err(|e| DbErr::Custom(format!("building an INSERT: {e}")))?;
        }
        let built = backend(self.engine).build(&stmt);
        let params = built.values.as_ref().map_or(0, |v| v.0.len());
        if params != rows * width {
            return Err(DbErr::Custom(format!(
                "an INSERT of {rows} rows of {width} columns took {params} parameters"
            )));
        }
        cache.insert((shape, rows), built.sql.clone());
        Ok(built.sql)
    }

    /// Inserts one row of `shape` per item, as multi-row statements under the bind limit;
    /// `push` appends an item's values in column order.
    pub async fn insert_rows<T>(
        &self,
        txn: &DatabaseTransaction,
        shape: Shape,
        items: &[T],
        push: impl Fn(&T, &mut Vec<Value>) -> Result<(), DbErr>,
    ) -> Result<(), DbErr> {
        let width = self.columns(shape).len();
        for chunk in statement_chunks(items, self.engine, width, 0) {
            let mut values = Vec::with_capacity(chunk.len() * width);
            for item in chunk {
                push(item, &mut values)?;
            }
            if values.len() != chunk.len() * width {
                return Err(DbErr::Custom(format!(
                    "{} values for {} rows of {width} columns",
                    values.len(),
                    chunk.len()
                )));
            }
            let sql = self.insert_sql(shape, chunk.len())?;
            txn.execute_raw(Statement::from_sql_and_values(
                backend(self.engine),
                sql,
                values,
            ))
            .await?;
        }
        Ok(())
    }

    pub fn push_group(&self, g: &GroupCreate, out: &mut Vec<Value>) {
        out.extend([
            text(self.organization),
            text(&g.name),
            text(&g.created_time),
            text(&g.created_time),
            text(&g.display_name),
            text(""),
            text(""),
            text(DEPARTMENT_GROUP_TYPE),
            text(&g.parent_id),
            Value::Bool(Some(g.is_top_group)),
            text(""),
            text(""),
            text("null"),
            Value::Bool(Some(true)),
            Value::Int(Some(0)),
            text("null"),
        ]);
    }

    /// The 181 values of a new user row, in column order: Casdoor's insert defaults, then
    /// what the plan set.
    pub fn push_user(&self, new: &NewUser, out: &mut Vec<Value>) -> Result<(), DbErr> {
        let start = out.len();
        out.extend(self.user_template.iter().cloned());
        let row = &mut out[start..];
        let mut set = |column: &str, value: Value| -> Result<(), DbErr> {
            let slot = self
                .user_index
                .get(column)
                .and_then(|i| row.get_mut(*i))
                .ok_or_else(|| {
                    DbErr::Custom(format!("`{column}` is not a column of table user"))
                })?;
            *slot = value;
            Ok(())
        };
        for (column, value) in new.values.iter() {
            if let Some(value) = value {
                set(column, super::write::field_value(value))?;
            }
        }
        set("owner", text(self.organization))?;
        set("name", text(&new.name))?;
        set("created_time", text(self.now))?;
        set("updated_time", text(self.now))?;
        let hash = new.hash.as_text().into_owned();
        set("hash", text(&hash))?;
        set("pre_hash", Value::String(Some(hash)))?;
        set("register_source", text(&self.register_source))?;
        set("dingtalk", text(&new.dingtalk))?;
        set("groups", text(&new.groups))?;
        Ok(())
    }

    pub fn push_grouping(rule: &CasbinGrouping, out: &mut Vec<Value>) {
        out.extend([
            text(GROUPING_PTYPE),
            text(&rule.v0),
            text(&rule.v1),
            text(""),
            text(""),
            text(""),
            text(""),
        ]);
    }

    /// A link's row; a left link was not seen by this run.
    pub fn push_link(&self, link: &OwnershipLink, out: &mut Vec<Value>) {
        let last_seen = match link.state {
            LinkState::Present => self.run_id,
            LinkState::Left => None,
        };
        out.extend([
            text(self.syncer),
            text(link_kind_text(link.kind)),
            text(&link.external_id),
            text(self.organization),
            text(&link.casdoor_name),
            Value::String(Some(link.content_hash.as_text().into_owned())),
            text(link_state_text(link.state)),
            Value::String(link.left_action.map(|a| a.as_str().to_owned())),
            Value::BigInt(self.run_id),
            Value::BigInt(last_seen),
            text(&self.now_utc),
            text(&self.now_utc),
            Value::String(link.row.as_ref().map(|r| r.id.clone())),
            Value::String(link.row.as_ref().map(|r| r.created_time.clone())),
            Value::Bool((link.kind == LinkKind::User).then_some(link.adopted)),
        ]);
    }

    pub fn push_change(&self, run_id: i64, change: &NewChange<'_>, out: &mut Vec<Value>) {
        out.extend([
            Value::BigInt(Some(run_id)),
            text(self.syncer),
            text(self.organization),
            text(change.userid),
            text(change.casdoor_name),
            text(change.action.as_str()),
            Value::String(Some(change.detail.to_json_text())),
            text(&self.now_utc),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{EntityName, IdenStatic, Iterable};

    use super::*;
    use crate::db::entities::{casbin_user_rule, group, syncer_change, syncer_link};

    fn names<C: IdenStatic>(columns: impl Iterator<Item = C>) -> Vec<&'static str> {
        columns.map(|c| c.as_str()).collect()
    }

    #[test]
    fn every_column_written_is_a_column_of_its_table() {
        let group = names(group::Column::iter());
        assert!(GROUP_COLUMNS.iter().all(|c| group.contains(c)));
        // Everything but the id, which the database assigns.
        let rule = names(casbin_user_rule::Column::iter());
        assert_eq!(&rule[1..], GROUPING_COLUMNS);
        assert_eq!(names(syncer_link::Column::iter()), LINK_COLUMNS);
        assert_eq!(&names(syncer_change::Column::iter())[1..], CHANGE_COLUMNS);
        for c in LINK_UPDATE_COLUMNS.iter().chain(LINK_KEY_COLUMNS) {
            assert!(LINK_COLUMNS.contains(c), "{c}");
        }
        assert_eq!(casbin_user_rule::Entity.table_name(), "casbin_user_rule");
    }

    #[test]
    fn a_shapes_text_does_not_depend_on_its_values() {
        // The cached text is built from placeholder NULLs: real values of every type give the
        // same text with the same number of parameters, on every engine.
        for engine in [Engine::Sqlite, Engine::MySql, Engine::Postgres] {
            let row = || {
                vec![
                    SimpleExpr::from(text("a'b\\c")),
                    Value::Bool(Some(true)).into(),
                    Value::Int(Some(7)).into(),
                    Value::BigInt(None).into(),
                    Value::Double(Some(0.5)).into(),
                    Value::Bytes(Some(b"null".to_vec())).into(),
                ]
            };
            let template = || {
                Query::insert()
                    .into_table(Alias::new("t"))
                    .columns(["a", "b", "c", "d", "e", "f"].map(Alias::new))
                    .on_conflict(
                        OnConflict::columns([Alias::new("a")])
                            .update_columns([Alias::new("b")])
                            .to_owned(),
                    )
                    .to_owned()
            };
            let (mut real, mut placeholders) = (template(), template());
            for _ in 0..3 {
                real.values(row()).ok();
                placeholders
                    .values(vec![SimpleExpr::from(Value::String(None)); 6])
                    .ok();
            }
            let real = backend(engine).build(&real);
            let placeholders = backend(engine).build(&placeholders);
            assert_eq!(real.sql, placeholders.sql, "{engine}");
            assert_eq!(real.values.map(|v| v.0.len()), Some(18), "{engine}");
        }
    }
}
