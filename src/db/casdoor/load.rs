//! Reads the database state one plan needs: the organization's users (only the columns planning
//! reads), this syncer's links, other syncers' claims, the organization's groups and casbin `g`
//! rows, and the few facts about Casdoor's schema that change what may be written.
//!
//! NULLs read as zero values (`''`, false, 0), as Casdoor reads them. Nothing here writes.

use std::collections::BTreeSet;

use futures_util::StreamExt as _;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, LikeExpr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, IdenStatic, Iterable,
    QueryFilter, QueryResult, QuerySelect, QueryTrait, Statement, StatementBuilder, StreamTrait,
};
use tracing::{debug, warn};

use crate::config::Engine;
use crate::db::entities::{casbin_user_rule, group, syncer_link, user};
use crate::db::{Db, DbError, SYNCER_OWNER, Table, table_columns};
use crate::pipeline::columns::{Columns, FieldValue};
use crate::pipeline::hash::ContentHash;
use crate::pipeline::map::Mapping;
use crate::pipeline::model::{
    CasbinGrouping, ExistingGroup, ExistingUser, ForeignClaim, LeftAction, OwnershipLink,
    RowIdentity,
};
use crate::pipeline::table_columns::{ColumnKind, column_spec};

use super::{GROUPING_PTYPE, parse_link_kind, parse_link_state};

/// What the database holds for one syncer's organization, in the shapes the plan takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbState {
    pub existing_users: Vec<ExistingUser>,
    /// This syncer's links in the organization.
    pub links: Vec<OwnershipLink>,
    /// Rows of the organization other syncers own.
    pub foreign_claims: Vec<ForeignClaim>,
    pub existing_groups: Vec<ExistingGroup>,
    /// Group names of other organizations, filled only while `UQE_group_name` exists.
    pub group_names_in_other_orgs: BTreeSet<String>,
    /// Casbin `g` rows whose subject is a user of the organization.
    pub casbin_groupings: Vec<CasbinGrouping>,
    /// The organization's display name (Casdoor's `organization` table), else its name.
    pub root_group_display_name: String,
    /// Every organization name of Casdoor's `organization` table (empty without one): Casdoor
    /// refuses a group named like an organization.
    pub organization_names: BTreeSet<String>,
    pub facts: SchemaFacts,
}

/// Facts about the Casdoor schema that change what apply may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchemaFacts {
    /// Casdoor's `token` table exists with `organization`, `user` and `expires_in`: tokens of
    /// users that get forbidden or deleted are expired, as Casdoor does.
    pub token_table: bool,
    /// Casdoor's global unique index on `group.name` (`UQE_group_name`, or any unique index on
    /// `name` alone) exists: group names must be unique across organizations.
    pub unique_group_names: bool,
    /// Casdoor's `session` table exists with `owner` and `name`: the sessions of users that get
    /// forbidden or deleted are deleted, as Casdoor's DeleteUser does. Looked up once per run;
    /// syncerd never creates it.
    pub session_table: bool,
}

/// Reads everything [`DbState`] holds for `organization` and syncer `syncer`.
pub async fn load_state(
    db: &Db,
    organization: &str,
    syncer: &str,
    mapping: &Mapping,
) -> Result<DbState, DbError> {
    let facts = schema_facts(db).await?;
    let existing_users = load_users(db, organization, mapping).await?;
    let (links, foreign_claims) = load_links(db, organization, syncer).await?;
    let existing_groups = load_groups(db, organization).await?;
    let group_names_in_other_orgs = if facts.unique_group_names {
        load_group_names_elsewhere(db, organization).await?
    } else {
        BTreeSet::new()
    };
    let casbin_groupings = load_groupings(db, organization).await?;
    let root_group_display_name = load_org_display_name(db, organization).await?;
    let organization_names = load_organization_names(db).await?;
    debug!(
        users = existing_users.len(),
        links = links.len(),
        foreign_claims = foreign_claims.len(),
        groups = existing_groups.len(),
        casbin_rows = casbin_groupings.len(),
        token_table = facts.token_table,
        unique_group_names = facts.unique_group_names,
        "loaded the organization's state"
    );
    Ok(DbState {
        existing_users,
        links,
        foreign_claims,
        existing_groups,
        group_names_in_other_orgs,
        casbin_groupings,
        root_group_display_name,
        organization_names,
        facts,
    })
}

fn query_error(context: String, err: DbErr) -> DbError {
    DbError::query(context, err)
}

async fn query_all<S: sea_orm::StatementBuilder>(
    db: &Db,
    stmt: &S,
    context: impl FnOnce() -> String,
) -> Result<Vec<QueryResult>, DbError> {
    db.conn()
        .query_all(stmt)
        .await
        .map_err(|e| query_error(context(), e))
}

/// Runs `stmt` and hands each row to `each` as it arrives, so a 100,000-row result is never held
/// as raw rows next to what is made of them.
async fn for_each_row<S: StatementBuilder + Sync>(
    db: &Db,
    stmt: &S,
    context: impl Fn() -> String,
    mut each: impl FnMut(&QueryResult) -> Result<(), DbErr>,
) -> Result<(), DbError> {
    let mut rows = db
        .conn()
        .stream(stmt)
        .await
        .map_err(|e| query_error(context(), e))?;
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| query_error(context(), e))?;
        each(&row).map_err(|e| query_error(context(), e))?;
    }
    Ok(())
}

/// The user columns planning reads, each once, in a stable order.
pub fn user_columns_to_read(mapping: &Mapping) -> Vec<user::Column> {
    let mut wanted: Vec<&str> = vec![
        "owner",
        "name",
        mapping.key_column(),
        "hash",
        "pre_hash",
        "is_forbidden",
        "is_deleted",
        "deleted_time",
        "groups",
        "dingtalk",
        "id",
        "created_time",
        "is_admin",
    ];
    wanted.extend(mapping.target_columns());
    let mut seen = BTreeSet::new();
    wanted
        .into_iter()
        .filter(|c| seen.insert(*c))
        .filter_map(|c| user::Column::iter().find(|col| col.as_str() == c))
        .collect()
}

fn text(row: &QueryResult, column: &str) -> Result<String, DbErr> {
    Ok(row
        .try_get::<Option<String>>("", column)?
        .unwrap_or_default())
}

fn flag(row: &QueryResult, column: &str) -> Result<bool, DbErr> {
    Ok(row.try_get::<Option<bool>>("", column)?.unwrap_or_default())
}

fn int(row: &QueryResult, column: &str) -> Result<i64, DbErr> {
    Ok(row
        .try_get::<Option<i32>>("", column)?
        .map(i64::from)
        .unwrap_or_default())
}

fn field(row: &QueryResult, column: &str) -> Result<FieldValue, DbErr> {
    let kind = column_spec(column).map_or(ColumnKind::Text, |s| s.kind);
    Ok(match kind {
        ColumnKind::Text => FieldValue::Text(text(row, column)?),
        ColumnKind::Bool => FieldValue::Bool(flag(row, column)?),
        ColumnKind::Int => FieldValue::Int(int(row, column)?),
    })
}

/// Alias of the "has a password" flag: the password (hash) itself is never read.
const HAS_PASSWORD: &str = "syncerd_has_password";
/// Alias of `is_global_admin`, read only where the column exists (older Casdoor).
const GLOBAL_ADMIN: &str = "syncerd_is_global_admin";

async fn load_users(
    db: &Db,
    organization: &str,
    mapping: &Mapping,
) -> Result<Vec<ExistingUser>, DbError> {
    let context = || format!("reading the users of organization {organization} (table user)");
    let columns = user_columns_to_read(mapping);
    let global_admin_column = table_columns(db, &db.tables().name(Table::User))
        .await?
        .iter()
        .any(|c| c.eq_ignore_ascii_case("is_global_admin"));
    let mut stmt = Query::select()
        .columns(columns)
        .from(db.table(Table::User))
        .and_where(Expr::col(user::Column::Owner).eq(organization))
        .to_owned();
    // Text, not a number: engines disagree on the integer type of a CASE.
    stmt.expr_as(
        Expr::case(
            Expr::col(user::Column::Password)
                .is_not_null()
                .and(Expr::col(user::Column::Password).ne("")),
            "y",
        )
        .finally(""),
        Alias::new(HAS_PASSWORD),
    );
    if global_admin_column {
        stmt.expr_as(
            Expr::col(Alias::new("is_global_admin")),
            Alias::new(GLOBAL_ADMIN),
        );
    }
    let key_column = mapping.key_column();
    let targets = mapping.target_columns();
    let read = |row: &QueryResult| -> Result<ExistingUser, DbErr> {
        let name = text(row, "name")?;
        let mut values = Vec::with_capacity(targets.len());
        for column in &targets {
            values.push((*column, Some(field(row, column)?)));
        }
        let values = Columns::from_entries(values);
        let key_value = match field(row, key_column)? {
            FieldValue::Text(t) => t,
            other => other.canonical(),
        };
        Ok(ExistingUser {
            owner: text(row, "owner")?,
            key_value,
            values,
            hash: ContentHash::from(text(row, "hash")?),
            pre_hash: ContentHash::from(text(row, "pre_hash")?),
            is_forbidden: flag(row, "is_forbidden")?,
            is_deleted: flag(row, "is_deleted")?,
            deleted_time: text(row, "deleted_time")?,
            groups: row.try_get::<Option<String>>("", "groups")?,
            dingtalk: text(row, "dingtalk")?,
            id: text(row, "id")?,
            created_time: text(row, "created_time")?,
            is_admin: flag(row, "is_admin")? || (global_admin_column && flag(row, GLOBAL_ADMIN)?),
            has_password: !text(row, HAS_PASSWORD)?.is_empty(),
            name,
        })
    };
    let mut users = Vec::new();
    for_each_row(db, &stmt, context, |row| {
        users.push(read(row)?);
        Ok(())
    })
    .await?;
    Ok(users)
}

async fn load_links(
    db: &Db,
    organization: &str,
    syncer: &str,
) -> Result<(Vec<OwnershipLink>, Vec<ForeignClaim>), DbError> {
    let stmt = db
        .tables()
        .at(syncer_link::Entity::find())
        .filter(syncer_link::Column::Organization.eq(organization))
        .into_query();
    // Each row is kept in its planning shape as it arrives: whole rows of 100,000 links would
    // double the links' memory while they load.
    let mut own = Vec::new();
    let mut foreign = Vec::new();
    for_each_row(
        db,
        &stmt,
        || format!("reading the links of organization {organization} (table syncer_link)"),
        |row| {
            let row = syncer_link::Model::from_query_result(row, "")?;
            let Some(kind) = parse_link_kind(&row.kind) else {
                warn!(
                    syncer = %row.syncer_name,
                    kind = %row.kind,
                    "ignoring a syncer_link row of unknown kind"
                );
                return Ok(());
            };
            if row.syncer_name != syncer {
                foreign.push(ForeignClaim {
                    kind,
                    casdoor_name: row.casdoor_name,
                    syncer: row.syncer_name,
                });
                return Ok(());
            }
            let Some(state) = parse_link_state(&row.state) else {
                warn!(
                    syncer = %row.syncer_name,
                    external_id = %row.external_id,
                    state = %row.state,
                    "ignoring a syncer_link row of unknown state"
                );
                return Ok(());
            };
            own.push(OwnershipLink {
                kind,
                external_id: row.external_id,
                casdoor_name: row.casdoor_name,
                content_hash: ContentHash::from(row.content_hash),
                state,
                left_action: row.left_action.as_deref().and_then(LeftAction::parse),
                row: match (row.casdoor_id, row.casdoor_created_time) {
                    (Some(id), Some(created_time)) => Some(RowIdentity { id, created_time }),
                    _ => None,
                },
                adopted: row.adopted.unwrap_or_default(),
            });
            Ok(())
        },
    )
    .await?;
    Ok((own, foreign))
}

/// `owner, name, display_name, parent_id, is_top_group, type` of a group row.
type GroupRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
);

async fn load_groups(db: &Db, organization: &str) -> Result<Vec<ExistingGroup>, DbError> {
    let rows: Vec<GroupRow> = db
        .tables()
        .at(group::Entity::find())
        .select_only()
        .column(group::Column::Owner)
        .column(group::Column::Name)
        .column(group::Column::DisplayName)
        .column(group::Column::ParentId)
        .column(group::Column::IsTopGroup)
        .column(group::Column::Type)
        .filter(group::Column::Owner.eq(organization))
        .into_tuple()
        .all(db.conn())
        .await
        .map_err(|e| {
            query_error(
                format!("reading the groups of organization {organization} (table group)"),
                e,
            )
        })?;
    Ok(rows
        .into_iter()
        .map(
            |(owner, name, display_name, parent_id, is_top_group, group_type)| ExistingGroup {
                owner,
                name,
                display_name: display_name.unwrap_or_default(),
                parent_id: parent_id.unwrap_or_default(),
                is_top_group: is_top_group.unwrap_or_default(),
                group_type: group_type.unwrap_or_default(),
            },
        )
        .collect())
}

async fn load_group_names_elsewhere(
    db: &Db,
    organization: &str,
) -> Result<BTreeSet<String>, DbError> {
    let names: Vec<String> = db
        .tables()
        .at(group::Entity::find())
        .select_only()
        .column(group::Column::Name)
        .filter(group::Column::Owner.ne(organization))
        .into_tuple()
        .all(db.conn())
        .await
        .map_err(|e| {
            query_error(
                format!("reading the group names of organizations other than {organization}"),
                e,
            )
        })?;
    Ok(names.into_iter().collect())
}

/// `LIKE` pattern for "starts with `prefix`", escaping with `!`.
fn starts_with_pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 2);
    for ch in prefix.chars() {
        if matches!(ch, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

async fn load_groupings(db: &Db, organization: &str) -> Result<Vec<CasbinGrouping>, DbError> {
    let prefix = format!("{organization}/");
    let stmt = Query::select()
        .columns([casbin_user_rule::Column::V0, casbin_user_rule::Column::V1])
        .from(casbin_user_rule::Entity)
        .and_where(casbin_user_rule::Column::Ptype.eq(GROUPING_PTYPE))
        .and_where(
            Expr::col(casbin_user_rule::Column::V0)
                .like(LikeExpr::new(starts_with_pattern(&prefix)).escape('!')),
        )
        .to_owned();
    let mut rows: Vec<CasbinGrouping> = Vec::new();
    for_each_row(
        db,
        &stmt,
        || {
            format!(
                "reading the casbin memberships of organization {organization} (table casbin_user_rule)"
            )
        },
        |row| {
            let v0: String = row.try_get("", "v0")?;
            // LIKE ignores case on MySQL: keep exact prefixes only.
            if v0.starts_with(&prefix) {
                rows.push(CasbinGrouping {
                    v0,
                    v1: row.try_get("", "v1")?,
                });
            }
            Ok(())
        },
    )
    .await?;
    Ok(rows)
}

async fn load_org_display_name(db: &Db, organization: &str) -> Result<String, DbError> {
    Ok(match find_organization(db, organization).await? {
        OrganizationRow::Found {
            display_name: Some(display_name),
        } => display_name,
        _ => organization.to_owned(),
    })
}

/// What Casdoor's `organization` table says about one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrganizationRow {
    /// No `organization` table with `owner` and `name` columns: syncerd's embedded database,
    /// where an organization is just the `owner` of its users.
    NoTable,
    /// Casdoor's table exists, but has no row with owner `admin` and this name.
    Missing,
    /// The organization exists; its display name when it has a non-blank one.
    Found { display_name: Option<String> },
}

/// Looks `organization` up in Casdoor's `organization` table (owner `admin`), if there is one.
pub async fn find_organization(db: &Db, organization: &str) -> Result<OrganizationRow, DbError> {
    let columns = table_columns(db, &db.tables().name(Table::Organization)).await?;
    let has = |c: &str| columns.iter().any(|x| x.eq_ignore_ascii_case(c));
    if !(has("owner") && has("name")) {
        return Ok(OrganizationRow::NoTable);
    }
    let with_display_name = has("display_name");
    let mut stmt = Query::select();
    stmt.from(db.table(Table::Organization))
        .and_where(Expr::col(Alias::new("owner")).eq(SYNCER_OWNER))
        .and_where(Expr::col(Alias::new("name")).eq(organization));
    if with_display_name {
        stmt.column(Alias::new("display_name"));
    } else {
        stmt.column(Alias::new("name"));
    }
    let rows = query_all(db, &stmt, || {
        format!("reading organization {organization} from Casdoor's table organization")
    })
    .await?;
    let Some(row) = rows.first() else {
        return Ok(OrganizationRow::Missing);
    };
    let display_name = with_display_name
        .then(|| row.try_get::<Option<String>>("", "display_name").ok())
        .flatten()
        .flatten()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Ok(OrganizationRow::Found { display_name })
}

/// Every name in Casdoor's `organization` table, of any owner; empty when there is no such
/// table (syncerd's embedded database).
async fn load_organization_names(db: &Db) -> Result<BTreeSet<String>, DbError> {
    let table = db.tables().name(Table::Organization);
    let columns = table_columns(db, &table).await?;
    if !columns.iter().any(|c| c.eq_ignore_ascii_case("name")) {
        return Ok(BTreeSet::new());
    }
    let stmt = Query::select()
        .column(Alias::new("name"))
        .from(db.table(Table::Organization))
        .to_owned();
    let mut names = BTreeSet::new();
    for_each_row(
        db,
        &stmt,
        || format!("reading the organization names of Casdoor's table {table}"),
        |row| {
            if let Some(name) = row.try_get::<Option<String>>("", "name")? {
                names.insert(name);
            }
            Ok(())
        },
    )
    .await?;
    Ok(names)
}

/// Whether the token and session tables can be revoked from, and whether group names are
/// globally unique.
pub async fn schema_facts(db: &Db) -> Result<SchemaFacts, DbError> {
    let token_columns = table_columns(db, &db.tables().name(Table::Token)).await?;
    let has = |c: &str| token_columns.iter().any(|x| x.eq_ignore_ascii_case(c));
    let token_table = has("organization") && has("user") && has("expires_in");
    let session_columns = table_columns(db, &db.tables().name(Table::Session)).await?;
    let has = |c: &str| session_columns.iter().any(|x| x.eq_ignore_ascii_case(c));
    let session_table = has("owner") && has("name");
    Ok(SchemaFacts {
        token_table,
        unique_group_names: unique_index_on_group_name(db).await?,
        session_table,
    })
}

/// Whether a unique index on `group(name)` alone exists (Casdoor's `UQE_group_name`, whatever
/// its name). The primary key (`owner`, `name`) does not count.
async fn unique_index_on_group_name(db: &Db) -> Result<bool, DbError> {
    let sql = match db.engine() {
        Engine::Sqlite => {
            "SELECT il.name AS index_name FROM pragma_index_list(?) AS il \
             WHERE il.\"unique\" = 1 \
             AND (SELECT COUNT(*) FROM pragma_index_info(il.name)) = 1 \
             AND (SELECT ii.name FROM pragma_index_info(il.name) AS ii) = 'name'"
        }
        Engine::MySql => {
            "SELECT CAST(index_name AS CHAR) AS index_name FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = ? AND non_unique = 0 \
             GROUP BY index_name \
             HAVING COUNT(*) = 1 AND MAX(CAST(column_name AS CHAR)) = 'name'"
        }
        Engine::Postgres => {
            "SELECT i.relname::text AS index_name FROM pg_index x \
             JOIN pg_class t ON t.oid = x.indrelid \
             JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] \
             WHERE n.nspname = current_schema() AND t.relname = $1 \
             AND x.indisunique AND x.indnatts = 1 AND a.attname = 'name'"
        }
    };
    let conn = db.conn();
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            sql,
            [db.tables().name(Table::Group).into()],
        ))
        .await
        .map_err(|e| {
            query_error(
                "looking for Casdoor's unique index on group.name (UQE_group_name)".to_owned(),
                e,
            )
        })?;
    Ok(!rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(starts_with_pattern("acme/"), "acme/%");
        assert_eq!(starts_with_pattern("a_b%c!/"), "a!_b!%c!!/%");
    }

    #[test]
    fn only_needed_user_columns_are_read() {
        let mapping = Mapping::default_mapping("").unwrap_or_else(|e| panic!("{e}"));
        let columns: Vec<&str> = user_columns_to_read(&mapping)
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert!(columns.len() < 20, "{columns:?}");
        for c in [
            "owner",
            "name",
            "id",
            "hash",
            "pre_hash",
            "is_forbidden",
            "groups",
            "dingtalk",
            "title",
        ] {
            assert!(columns.contains(&c), "{c} in {columns:?}");
        }
        let unique: BTreeSet<&str> = columns.iter().copied().collect();
        assert_eq!(unique.len(), columns.len());
    }
}
