//! Casdoor's `syncer` rows: reading them NULL-tolerantly, adding one exactly as Casdoor's UI
//! would, switching it on and off, and appending to its `error_text` in Casdoor's format.
//!
//! syncerd addresses syncers as `admin/<name>`, like Casdoor's scheduler: `owner` is always
//! [`SYNCER_OWNER`].

use chrono::Local;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, SqlErr,
};

use super::entities::syncer;
use super::error::QueryContext as _;
use super::{Db, DbError, casdoor_timestamp};
use crate::secret::{Secret, redact_text};

/// The `owner` of every syncer row Casdoor schedules.
pub const SYNCER_OWNER: &str = "admin";

/// `syncer.type` of a DingTalk syncer (case-sensitive).
pub const DINGTALK_TYPE: &str = "DingTalk";

/// Casdoor keeps only the last this-many bytes of `error_text`.
pub const ERROR_TEXT_MAX_BYTES: usize = 65_536;

/// The organization Casdoor keeps its administrators in: every user there is a global
/// administrator, so no directory may be synced into it.
pub const BUILT_IN_ORGANIZATION: &str = "built-in";

/// `table_columns` with the given `Name` entry, byte for byte as Casdoor stores a mapping after a
/// save (compact Go JSON, `isKey:false` materialised), in the documented DingTalk order.
macro_rules! dingtalk_table_columns {
    ($name_from:literal) => {
        concat!(
            "[",
            r#"{"name":"userid","type":"string","casdoorName":"Id","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":""#,
            $name_from,
            r#"","type":"string","casdoorName":"Name","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":"name","type":"string","casdoorName":"DisplayName","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":"email","type":"string","casdoorName":"Email","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":"mobile","type":"string","casdoorName":"Phone","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":"avatar","type":"string","casdoorName":"Avatar","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":"title","type":"string","casdoorName":"Title","isKey":false,"isHashed":true,"values":[]},"#,
            r#"{"name":"active","type":"boolean","casdoorName":"IsForbidden","isKey":false,"isHashed":true,"values":[]}"#,
            "]"
        )
    };
}

/// The documented DingTalk mapping, which `syncer add` writes: userid → Id, job_number → Name
/// (the userid when the job number is empty), name → DisplayName, email → Email, mobile →
/// Phone, avatar → Avatar, title → Title, active → IsForbidden (inverted).
pub const DEFAULT_TABLE_COLUMNS: &str = dingtalk_table_columns!("job_number");

/// The mapping Casdoor's UI fills in for a new DingTalk syncer: as the default, but Name from
/// the unionid, which Casdoor's DingTalk login also uses as the user name.
pub const CASDOOR_UI_TABLE_COLUMNS: &str = dingtalk_table_columns!("unionid");

/// The default mapping with Name from the DingTalk userid.
pub const USERID_NAME_TABLE_COLUMNS: &str = dingtalk_table_columns!("userid");

/// Which DingTalk field names the Casdoor users a new syncer creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameFrom {
    /// The employee's job number, the userid when it is empty (the documented mapping).
    #[default]
    JobNumber,
    /// The unionid: Casdoor's UI default, and the user name Casdoor's DingTalk login uses.
    Unionid,
    /// The userid.
    Userid,
}

impl NameFrom {
    /// The `table_columns` a new syncer gets.
    pub fn table_columns(self) -> &'static str {
        match self {
            Self::JobNumber => DEFAULT_TABLE_COLUMNS,
            Self::Unionid => CASDOOR_UI_TABLE_COLUMNS,
            Self::Userid => USERID_NAME_TABLE_COLUMNS,
        }
    }
}

/// The Casdoor `syncer` columns syncerd uses. NULLs read as `''`, `0` and `false`, as Casdoor
/// reads them. `Debug` never shows the App Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncerRow {
    pub owner: String,
    pub name: String,
    /// RFC 3339 text as Casdoor's UI wrote it; not parsed (only used for ordering).
    pub created_time: String,
    /// Target Casdoor organization.
    pub organization: String,
    /// `DingTalk` for the rows syncerd runs.
    pub syncer_type: String,
    /// DingTalk App Key (`syncer.user`).
    pub app_key: String,
    /// DingTalk App Secret (`syncer.password`).
    pub app_secret: Secret,
    /// The field mapping, raw JSON text as stored.
    pub table_columns: String,
    pub avatar_base_url: String,
    pub error_text: String,
    /// Seconds between runs, as stored (Casdoor treats `<= 0` as 1 s).
    pub sync_interval: i32,
    pub is_read_only: bool,
    pub is_enabled: bool,
}

impl From<syncer::Model> for SyncerRow {
    fn from(m: syncer::Model) -> Self {
        SyncerRow {
            owner: m.owner,
            name: m.name,
            created_time: m.created_time.unwrap_or_default(),
            organization: m.organization.unwrap_or_default(),
            syncer_type: m.r#type.unwrap_or_default(),
            app_key: m.user.unwrap_or_default(),
            app_secret: Secret::new(m.password.unwrap_or_default()),
            table_columns: m.table_columns.unwrap_or_default(),
            avatar_base_url: m.avatar_base_url.unwrap_or_default(),
            error_text: m.error_text.unwrap_or_default(),
            sync_interval: m.sync_interval.unwrap_or_default(),
            is_read_only: m.is_read_only.unwrap_or_default(),
            is_enabled: m.is_enabled.unwrap_or_default(),
        }
    }
}

/// What `syncerd syncer add` asks for.
#[derive(Debug, Clone)]
pub struct NewSyncer {
    pub name: String,
    pub organization: String,
    pub app_key: String,
    pub app_secret: Secret,
    /// Seconds between runs.
    pub sync_interval: i32,
    pub enabled: bool,
}

impl NewSyncer {
    fn validate(&self) -> Result<(), DbError> {
        let invalid = |what, problem: &str| {
            Err(DbError::InvalidInput {
                what,
                problem: problem.to_owned(),
            })
        };
        if self.name.trim().is_empty() {
            return invalid("syncer name", "it is empty");
        }
        if self.name.trim() != self.name || self.name.contains('/') {
            return invalid(
                "syncer name",
                "it must not contain `/` or surrounding spaces (Casdoor addresses syncers as admin/<name>)",
            );
        }
        if self.name.chars().count() > 100 {
            return invalid("syncer name", "it is longer than 100 characters");
        }
        if self.organization.trim().is_empty() {
            return invalid("organization", "it is empty");
        }
        if self.organization.trim() == BUILT_IN_ORGANIZATION {
            return invalid(
                "organization",
                "`built-in` is Casdoor's administrators' organization, where every user is a global administrator; sync DingTalk into an organization of its own",
            );
        }
        if self.app_key.trim().is_empty() {
            return invalid("App Key", "it is empty");
        }
        if self.app_secret.expose().trim().is_empty() {
            return invalid("App Secret", "it is empty");
        }
        if self.sync_interval <= 0 {
            return invalid("sync interval", "it must be a positive number of seconds");
        }
        Ok(())
    }

    /// The row exactly as Casdoor's UI creates a DingTalk syncer, except `is_read_only = 1`
    /// (syncerd never writes back to DingTalk) and the mapping `name_from` chooses.
    fn into_model(self, created_time: String, name_from: NameFrom) -> syncer::Model {
        let text = |s: &str| Some(s.to_owned());
        syncer::Model {
            owner: SYNCER_OWNER.to_owned(),
            name: self.name,
            created_time: Some(created_time),
            organization: Some(self.organization),
            r#type: text(DINGTALK_TYPE),
            database_type: text("mysql"),
            ssl_mode: text(""),
            ssh_type: text(""),
            host: text(""),
            port: Some(3306),
            user: Some(self.app_key),
            password: Some(self.app_secret.expose().to_owned()),
            ssh_host: text(""),
            ssh_port: Some(0),
            ssh_user: text(""),
            ssh_password: text(""),
            cert: text(""),
            database: text("dbName"),
            table: text("table_name"),
            table_columns: text(name_from.table_columns()),
            affiliation_table: text(""),
            avatar_base_url: text(""),
            error_text: text(""),
            sync_interval: Some(self.sync_interval),
            is_read_only: Some(true),
            is_enabled: Some(self.enabled),
        }
    }
}

/// Inserts a DingTalk syncer row shaped like one Casdoor's UI creates, with the documented
/// mapping ([`DEFAULT_TABLE_COLUMNS`]). A syncer of the same name is an error
/// ([`DbError::SyncerExists`]).
pub async fn add_syncer(db: &Db, new: NewSyncer) -> Result<(), DbError> {
    add_syncer_named_from(db, new, NameFrom::default()).await
}

/// [`add_syncer`] with the users' names from `name_from`.
pub async fn add_syncer_named_from(
    db: &Db,
    new: NewSyncer,
    name_from: NameFrom,
) -> Result<(), DbError> {
    new.validate()?;
    let name = new.name.clone();
    let model = new.into_model(casdoor_timestamp(Local::now()), name_from);
    let result = db
        .tables()
        .at(syncer::Entity::insert(model.into_active_model()))
        .exec_without_returning(db.conn())
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Err(DbError::SyncerExists { name })
        }
        Err(e) => Err(DbError::query(
            format!("adding syncer {SYNCER_OWNER}/{name} to table syncer"),
            e,
        )),
    }
}

/// Every syncer row (any owner, any type), newest first like Casdoor's list.
pub async fn list_syncers(db: &Db) -> Result<Vec<SyncerRow>, DbError> {
    let rows = db
        .tables()
        .at(syncer::Entity::find())
        .order_by_desc(syncer::Column::CreatedTime)
        .order_by_asc(syncer::Column::Name)
        .all(db.conn())
        .await
        .context("listing the rows of table syncer")?;
    Ok(rows.into_iter().map(SyncerRow::from).collect())
}

/// The syncer `admin/<name>`, if it exists.
pub async fn get_syncer(db: &Db, name: &str) -> Result<Option<SyncerRow>, DbError> {
    let row = db
        .tables()
        .at(syncer::Entity::find_by_id((
            SYNCER_OWNER.to_owned(),
            name.to_owned(),
        )))
        .one(db.conn())
        .await
        .with_context(|| format!("reading syncer {SYNCER_OWNER}/{name}"))?;
    Ok(row.map(SyncerRow::from))
}

/// Sets `is_enabled` of `admin/<name>`; [`DbError::SyncerNotFound`] when there is no such row.
pub async fn set_syncer_enabled(db: &Db, name: &str, enabled: bool) -> Result<(), DbError> {
    let result = db
        .tables()
        .at(syncer::Entity::update_many())
        .col_expr(syncer::Column::IsEnabled, Expr::value(enabled))
        .filter(syncer::Column::Owner.eq(SYNCER_OWNER))
        .filter(syncer::Column::Name.eq(name))
        .exec(db.conn())
        .await
        .with_context(|| format!("setting is_enabled of syncer {SYNCER_OWNER}/{name}"))?;
    // MySQL counts changed rows only, so 0 may also mean "already set": look before failing.
    if result.rows_affected == 0 && get_syncer(db, name).await?.is_none() {
        return Err(DbError::SyncerNotFound {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Appends `[<RFC 3339 now>] <message>\n` to `error_text` of `admin/<name>`, keeping only the
/// last [`ERROR_TEXT_MAX_BYTES`] bytes (cut on a character boundary, unlike Casdoor's byte cut).
/// The message goes through [`redact_text`] even though callers pass secret-free text.
pub async fn append_syncer_error(db: &Db, name: &str, message: &str) -> Result<(), DbError> {
    let line = format!(
        "[{}] {}\n",
        casdoor_timestamp(Local::now()),
        redact_text(message)
    );
    let context = || format!("appending to error_text of syncer {SYNCER_OWNER}/{name}");

    let _turn = db.write_turn().await.with_context(context)?;
    let txn = db.begin_write().await.with_context(context)?;
    let current: Option<Option<String>> = db
        .tables()
        .at(syncer::Entity::find_by_id((
            SYNCER_OWNER.to_owned(),
            name.to_owned(),
        )))
        .select_only()
        .column(syncer::Column::ErrorText)
        .lock_exclusive()
        .into_tuple()
        .one(&txn)
        .await
        .with_context(context)?;
    let Some(current) = current else {
        return Err(DbError::SyncerNotFound {
            name: name.to_owned(),
        });
    };

    let mut text = current.unwrap_or_default();
    text.push_str(&line);
    let text = keep_last_bytes(&text, ERROR_TEXT_MAX_BYTES).to_owned();

    db.tables()
        .at(syncer::Entity::update_many())
        .col_expr(syncer::Column::ErrorText, Expr::value(text))
        .filter(syncer::Column::Owner.eq(SYNCER_OWNER))
        .filter(syncer::Column::Name.eq(name))
        .exec(&txn)
        .await
        .with_context(context)?;
    txn.commit().await.with_context(context)
}

/// The longest suffix of `text` of at most `max` bytes that starts on a character boundary.
fn keep_last_bytes(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(table_columns: &str) -> Vec<(String, String, String)> {
        let parsed: serde_json::Value = serde_json::from_str(table_columns).unwrap_or_default();
        let entries = parsed.as_array().cloned().unwrap_or_default();
        for e in &entries {
            assert_eq!(e["isKey"], false);
            assert_eq!(e["isHashed"], true);
            assert_eq!(e["values"], serde_json::json!([]));
        }
        entries
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("casdoorName"), s("type"))
            })
            .collect()
    }

    #[test]
    fn the_default_table_columns_are_the_documented_dingtalk_mapping() {
        for (name_from, name_field) in [
            (NameFrom::JobNumber, "job_number"),
            (NameFrom::Unionid, "unionid"),
            (NameFrom::Userid, "userid"),
        ] {
            let expected = [
                ("userid", "Id"),
                (name_field, "Name"),
                ("name", "DisplayName"),
                ("email", "Email"),
                ("mobile", "Phone"),
                ("avatar", "Avatar"),
                ("title", "Title"),
                ("active", "IsForbidden"),
            ];
            let pairs = pairs(name_from.table_columns());
            assert_eq!(pairs.len(), expected.len());
            for ((name, casdoor, ty), (en, ec)) in pairs.iter().zip(expected) {
                assert_eq!((name.as_str(), casdoor.as_str()), (en, ec));
                let want = if en == "active" { "boolean" } else { "string" };
                assert_eq!(ty, want);
            }
            // Key order as Go's encoder writes it, compact.
            assert!(name_from.table_columns().starts_with(
                r#"[{"name":"userid","type":"string","casdoorName":"Id","isKey":false,"isHashed":true,"values":[]},{"name":""#
            ));
            assert!(!name_from.table_columns().contains(' '));
        }
        assert_eq!(NameFrom::default().table_columns(), DEFAULT_TABLE_COLUMNS);
        assert!(
            DEFAULT_TABLE_COLUMNS
                .contains(r#"{"name":"job_number","type":"string","casdoorName":"Name""#)
        );
    }

    #[test]
    fn keep_last_bytes_cuts_on_a_character_boundary() {
        assert_eq!(keep_last_bytes("abc", 5), "abc");
        assert_eq!(keep_last_bytes("abcdef", 3), "def");
        // "张" is 3 bytes: keeping 4 bytes of "x张三" must not split "张".
        assert_eq!(keep_last_bytes("x张三", 4), "三");
        assert_eq!(keep_last_bytes("x张三", 6), "张三");
        assert_eq!(keep_last_bytes("", 0), "");
    }

    #[test]
    fn new_syncer_validation_names_the_field() {
        let good = NewSyncer {
            name: "dingtalk_acme".into(),
            organization: "acme".into(),
            app_key: "dingkey".into(),
            app_secret: Secret::new("s3cret"),
            sync_interval: 600,
            enabled: true,
        };
        assert!(good.validate().is_ok());
        let bad = |f: fn(&mut NewSyncer)| {
            let mut n = good.clone();
            f(&mut n);
            n.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad(|n| n.name = "a/b".into()).contains("syncer name"));
        assert!(bad(|n| n.name = String::new()).contains("syncer name"));
        assert!(bad(|n| n.organization = " ".into()).contains("organization"));
        let built_in = bad(|n| n.organization = "built-in".into());
        assert!(built_in.contains("global administrator"), "{built_in}");
        assert!(bad(|n| n.app_secret = Secret::new("")).contains("App Secret"));
        assert!(bad(|n| n.sync_interval = 0).contains("sync interval"));
    }

    #[test]
    fn syncer_row_debug_hides_the_app_secret() {
        let row = SyncerRow::from(
            NewSyncer {
                name: "s".into(),
                organization: "acme".into(),
                app_key: "dingkey".into(),
                app_secret: Secret::new("TopSecret-123"),
                sync_interval: 10,
                enabled: true,
            }
            .into_model("2026-08-22T16:53:36+08:00".into(), NameFrom::JobNumber),
        );
        assert_eq!(row.app_secret.expose(), "TopSecret-123");
        let debug = format!("{row:?}");
        assert!(!debug.contains("TopSecret-123"), "{debug}");
        assert!(debug.contains("dingkey"), "{debug}");
    }
}
