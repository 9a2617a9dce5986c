//! `syncer_change`: the per-user change log. Apply writes one row per change it makes to a user,
//! in the transaction of the change itself (`casdoor::Writer`), so what a batch rolled back
//! left no row here; `syncerd runs show ID --changes` and `syncerd changes --user NAME` read it;
//! the daemon prunes it after `history.keep_days`.
//!
//! The values of secret columns are never stored: such a column is named with `"secret": true`
//! and no old or new value.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};

use super::entities::syncer_change;
use super::error::QueryContext as _;
use super::{Db, DbError, parse_utc_millis, utc_millis};
use crate::pipeline::columns::FieldValue;
use crate::pipeline::model::FieldChange;

/// What a change did to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeAction {
    Created,
    /// Columns changed; the row lists them with their old and new values.
    Updated,
    Forbidden,
    /// A forbidden (or deleted) user's leaver action undone.
    Unforbidden,
    Deleted,
    GroupAdded,
    GroupRemoved,
}

impl ChangeAction {
    pub const ALL: &[ChangeAction] = &[
        ChangeAction::Created,
        ChangeAction::Updated,
        ChangeAction::Forbidden,
        ChangeAction::Unforbidden,
        ChangeAction::Deleted,
        ChangeAction::GroupAdded,
        ChangeAction::GroupRemoved,
    ];

    /// The text stored in `syncer_change.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Created => "created",
            ChangeAction::Updated => "updated",
            ChangeAction::Forbidden => "forbidden",
            ChangeAction::Unforbidden => "unforbidden",
            ChangeAction::Deleted => "deleted",
            ChangeAction::GroupAdded => "group-added",
            ChangeAction::GroupRemoved => "group-removed",
        }
    }
}

impl fmt::Display for ChangeAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChangeAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown change action `{s}`"))
    }
}

/// Whether `column` holds a credential: its values never reach the change log. The mapping
/// refuses such columns already; this keeps the log clean should one ever be written.
pub fn is_secret_column(column: &str) -> bool {
    const MARKS: &[&str] = &[
        "password",
        "secret",
        "token",
        "salt",
        "recovery",
        "credential",
        "access_key",
        "mfa",
        "totp",
    ];
    let column = column.to_ascii_lowercase();
    MARKS.iter().any(|mark| column.contains(mark))
}

/// What a change row records besides its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeDetail<'a> {
    /// The columns changed, with old and new values.
    Fields(Vec<&'a FieldChange>),
    /// A new user: its `groups` JSON.
    Created { groups: &'a str },
    /// The group of a membership change (`org/name`).
    Group(&'a str),
}

/// One change about to be written (borrowed from the plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange<'a> {
    /// The DingTalk userid, `""` when the plan does not know it (a membership-only change).
    pub userid: &'a str,
    pub casdoor_name: &'a str,
    pub action: ChangeAction,
    pub detail: ChangeDetail<'a>,
}

fn field_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::Text(s) => Value::from(s.as_str()),
        FieldValue::Bool(b) => Value::from(*b),
        FieldValue::Int(i) => Value::from(*i),
    }
}

impl ChangeDetail<'_> {
    /// The `changes` column: JSON, with no value of a secret column.
    pub fn to_json_text(&self) -> String {
        let value = match self {
            ChangeDetail::Fields(fields) => Value::Array(
                fields
                    .iter()
                    .map(|f| {
                        if is_secret_column(&f.column) {
                            json!({ "column": f.column, "secret": true })
                        } else {
                            json!({
                                "column": f.column,
                                "old": field_json(&f.old),
                                "new": field_json(&f.new),
                            })
                        }
                    })
                    .collect(),
            ),
            // A first import writes one of these per user: spelled out instead of built as a
            // JSON tree (the same text, keys in serde_json's order).
            ChangeDetail::Created { groups } => {
                let groups = Value::from(*groups).to_string();
                return format!(r#"[{{"column":"groups","new":{groups},"old":null}}]"#);
            }
            ChangeDetail::Group(group) => json!({ "group": group }),
        };
        value.to_string()
    }
}

/// One row of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub id: i64,
    pub run_id: i64,
    pub syncer_name: String,
    pub organization: String,
    pub userid: String,
    pub casdoor_name: String,
    pub action: ChangeAction,
    /// The stored JSON; text that is not JSON comes back as a JSON string.
    pub changes: Value,
    pub created_at: DateTime<Utc>,
}

/// The changes run `run_id` made, in the order it made them.
pub async fn run_changes(db: &Db, run_id: i64) -> Result<Vec<ChangeRow>, DbError> {
    let rows = db
        .tables()
        .at(syncer_change::Entity::find())
        .filter(syncer_change::Column::RunId.eq(run_id))
        .order_by_asc(syncer_change::Column::Id)
        .all(db.conn())
        .await
        .with_context(|| format!("reading the changes of run {run_id} from syncer_change"))?;
    rows.into_iter().map(change_row).collect()
}

/// One page of the changes run `run_id` made (`limit` rows from `offset`, in the order it made
/// them) and how many it made in all: the console shows a first import's 100,000 rows a page
/// at a time.
pub async fn run_changes_page(
    db: &Db,
    run_id: i64,
    offset: u64,
    limit: u64,
) -> Result<(Vec<ChangeRow>, u64), DbError> {
    let context = || format!("reading the changes of run {run_id} from syncer_change");
    let query = db
        .tables()
        .at(syncer_change::Entity::find())
        .filter(syncer_change::Column::RunId.eq(run_id));
    let total = query.clone().count(db.conn()).await.with_context(context)?;
    let rows = query
        .order_by_asc(syncer_change::Column::Id)
        .offset(offset)
        .limit(limit)
        .all(db.conn())
        .await
        .with_context(context)?;
    let rows = rows.into_iter().map(change_row).collect::<Result<_, _>>()?;
    Ok((rows, total))
}

/// The history of the user `name` in `organizations`, newest first, at most `limit` rows.
pub async fn user_changes(
    db: &Db,
    organizations: &[String],
    name: &str,
    limit: u64,
) -> Result<Vec<ChangeRow>, DbError> {
    let rows = db
        .tables()
        .at(syncer_change::Entity::find())
        .filter(syncer_change::Column::Organization.is_in(organizations.iter().map(String::as_str)))
        .filter(syncer_change::Column::CasdoorName.eq(name))
        .order_by_desc(syncer_change::Column::Id)
        .limit(limit)
        .all(db.conn())
        .await
        .with_context(|| format!("reading the changes of user {name:?} from syncer_change"))?;
    rows.into_iter().map(change_row).collect()
}

/// Deletes the change rows written before `before` (retention). Returns how many.
pub async fn prune_changes(db: &Db, before: DateTime<Utc>) -> Result<u64, DbError> {
    let context = "pruning old rows from syncer_change";
    let _turn = db.write_turn().await.context(context)?;
    // Unqualified columns: a prefixed table cannot be aliased in a DELETE on MariaDB.
    let result = db
        .tables()
        .at(syncer_change::Entity::delete_many())
        .filter(Expr::col(syncer_change::Column::CreatedAt).lt(utc_millis(before)))
        .exec(db.conn())
        .await
        .context(context)?;
    Ok(result.rows_affected)
}

/// Deletes the change rows more than `keep_days` days older than `now` (`history.keep_days`;
/// `0` keeps everything). Returns how many were deleted.
pub async fn prune_older_than(db: &Db, keep_days: u32, now: DateTime<Utc>) -> Result<u64, DbError> {
    if keep_days == 0 {
        return Ok(0);
    }
    prune_changes(db, now - chrono::Duration::days(i64::from(keep_days))).await
}

fn change_row(m: syncer_change::Model) -> Result<ChangeRow, DbError> {
    let id = m.id;
    let bad = |column: &'static str, problem: String| DbError::BadValue {
        table: "syncer_change",
        column,
        row: format!("id {id}"),
        problem,
    };
    Ok(ChangeRow {
        id,
        run_id: m.run_id,
        action: m.action.parse().map_err(|e| bad("action", e))?,
        changes: serde_json::from_str(&m.changes).unwrap_or(Value::String(m.changes)),
        created_at: parse_utc_millis(&m.created_at).map_err(|e| {
            bad(
                "created_at",
                format!("`{}` is not an RFC 3339 time: {e}", m.created_at),
            )
        })?,
        syncer_name: m.syncer_name,
        organization: m.organization,
        userid: m.userid,
        casdoor_name: m.casdoor_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_and_fit_their_column() {
        for a in ChangeAction::ALL {
            assert_eq!(a.as_str().parse::<ChangeAction>(), Ok(*a));
            assert!(a.as_str().len() <= 16);
        }
        assert!("renamed".parse::<ChangeAction>().is_err());
    }

    #[test]
    fn a_created_rows_text_is_its_json() {
        for groups in [
            "[]",
            r#"["acme/1","acme/2"]"#,
            "[\"a\tb\nc\\d \\N 😀 \u{1}\"]",
        ] {
            let text = ChangeDetail::Created { groups }.to_json_text();
            let expected = json!([{ "column": "groups", "old": null, "new": groups }]);
            assert_eq!(text, expected.to_string());
            assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(expected));
        }
    }

    #[test]
    fn secret_columns_are_named_without_their_values() {
        for column in [
            "password",
            "password_salt",
            "access_key",
            "access_secret",
            "access_token",
            "original_refresh_token",
            "totp_secret",
            "recovery_codes",
            "webauthnCredentials",
        ] {
            assert!(is_secret_column(column), "{column}");
        }
        for column in ["display_name", "email", "phone", "is_forbidden", "title"] {
            assert!(!is_secret_column(column), "{column}");
        }
        let secret = FieldChange {
            column: "password".into(),
            old: FieldValue::Text("old-pw-123".into()),
            new: FieldValue::Text("new-pw-456".into()),
        };
        let title = FieldChange {
            column: "title".into(),
            old: FieldValue::Text("Engineer".into()),
            new: FieldValue::Text("Lead".into()),
        };
        let text = ChangeDetail::Fields(vec![&secret, &title]).to_json_text();
        assert!(
            !text.contains("old-pw-123") && !text.contains("new-pw-456"),
            "{text}"
        );
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(value[0], json!({"column": "password", "secret": true}));
        assert_eq!(
            value[1],
            json!({"column": "title", "old": "Engineer", "new": "Lead"})
        );
        assert_eq!(
            ChangeDetail::Group("acme/1").to_json_text(),
            r#"{"group":"acme/1"}"#
        );
    }
}
