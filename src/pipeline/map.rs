//! DingTalk user → Casdoor user columns, as Casdoor's `table_columns` semantics define it.
//!
//! Pure: values in, values out. An absent DingTalk field (no permission, not returned) maps to
//! `None`, which never clears a stored value; only a present value — even an empty one — is
//! written. Per-record problems are [`RecordError`]s and never stop the other records.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::db::DEFAULT_TABLE_COLUMNS;
use crate::dingtalk::types::{DirectoryUser, User};

use super::columns::{Columns, FieldValue};
use super::hash::{ContentHash, hash_input};
use super::table_columns::{
    ColumnKind, ColumnSpec, Limit, MappedColumn, MappingError, SourceField, TableColumn,
    column_spec, parse_table_columns, validate_columns,
};

/// A validated field mapping of one syncer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    columns: Vec<MappedColumn>,
    key: usize,
    avatar_base_url: String,
    is_default: bool,
    /// Fields Casdoor ignores that the mapping names (left out; each run warns once).
    ignored: Vec<&'static str>,
    /// Casdoor's hash recipe (see `ValidatedColumns::hash_slots`).
    hash_slots: Vec<Option<&'static ColumnSpec>>,
    /// The DingTalk field of the last column mapped to `Name`.
    name_field: Option<SourceField>,
    /// Casdoor's `isUsernameLowered`: names of new users are lower-cased.
    lowercase_names: bool,
}

impl Mapping {
    /// The mapping of a syncer row. Empty, NULL, `null` or `[]` `table_columns` give the default
    /// mapping (the documented DingTalk table); anything else must be a valid Casdoor mapping.
    pub fn from_syncer(
        table_columns: Option<&str>,
        avatar_base_url: &str,
    ) -> Result<Mapping, MappingError> {
        let parsed = parse_table_columns(table_columns)?;
        if parsed.is_empty() {
            return Self::default_mapping(avatar_base_url);
        }
        Self::build(&parsed, avatar_base_url, false)
    }

    /// The default mapping: userid→Id, job_number→Name (userid when empty), name→DisplayName,
    /// email→Email, mobile→Phone, avatar→Avatar, title→Title, active→IsForbidden (inverted).
    /// It is read from the text `syncer add` writes, so the two cannot drift apart.
    pub fn default_mapping(avatar_base_url: &str) -> Result<Mapping, MappingError> {
        let columns = parse_table_columns(Some(DEFAULT_TABLE_COLUMNS))?;
        Self::build(&columns, avatar_base_url, true)
    }

    fn build(
        columns: &[TableColumn],
        avatar_base_url: &str,
        is_default: bool,
    ) -> Result<Mapping, MappingError> {
        let validated = validate_columns(columns)?;
        let name_field = validated
            .columns
            .iter()
            .rev()
            .find(|c| c.target.column == "name")
            .map(|c| c.source);
        Ok(Mapping {
            columns: validated.columns,
            key: validated.key,
            avatar_base_url: avatar_base_url.trim().to_owned(),
            is_default,
            ignored: validated.ignored,
            hash_slots: validated.hash_slots,
            name_field,
            lowercase_names: false,
        })
    }

    /// The same mapping, lower-casing the names of the users it creates (`sync.lowercase_names`,
    /// Casdoor's `isUsernameLowered`). Existing users keep their names.
    pub fn with_lowercase_names(mut self, lowercase: bool) -> Mapping {
        self.lowercase_names = lowercase;
        self
    }

    /// The fields Casdoor ignores that `table_columns` names ([`IGNORED_USER_FIELDS`]); they
    /// are left out of the mapping.
    ///
    /// [`IGNORED_USER_FIELDS`]: super::table_columns::IGNORED_USER_FIELDS
    pub fn ignored_fields(&self) -> &[&'static str] {
        &self.ignored
    }

    /// The columns in `table_columns` order.
    pub fn columns(&self) -> &[MappedColumn] {
        &self.columns
    }

    /// The user column matched against (snake_case), e.g. `id`.
    pub fn key_column(&self) -> &'static str {
        self.columns.get(self.key).map_or("id", |c| c.target.column)
    }

    /// Whether `table_columns` was empty and the default mapping is in force.
    pub fn is_default(&self) -> bool {
        self.is_default
    }

    pub fn avatar_base_url(&self) -> &str {
        &self.avatar_base_url
    }

    /// Every user column the mapping targets, sorted, `name` included when mapped. Apply reads
    /// these from existing rows (NULL as the zero value).
    pub fn target_columns(&self) -> Vec<&'static str> {
        let set: BTreeSet<&'static str> = self.columns.iter().map(|c| c.target.column).collect();
        set.into_iter().collect()
    }
}

/// Where a mapped user's Casdoor name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameSource {
    /// The column mapped to `Name` had a value.
    Mapped,
    /// `Name` was empty or absent: the mapped `Id`, as Casdoor does.
    IdFallback,
    /// The DingTalk userid: `Name` comes from an empty job number (the documented DingTalk
    /// mapping's fallback, whatever `Id` is mapped from), or neither `Name` nor `Id` had a value.
    UseridFallback,
}

/// One DingTalk user as Casdoor columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedUser {
    pub userid: String,
    /// Value of the key column to match on (for a `name` key: [`MappedUser::name`]).
    pub key: String,
    /// Casdoor user name for a new user: the mapped `Name` trimmed, else (`Name` from an empty
    /// job number) the userid, else the mapped `Id`, else the userid; lower-cased when the
    /// mapping says so. An existing user's name is never rewritten.
    pub name: String,
    pub name_source: NameSource,
    /// Every mapped column except `name`; absent = absent in DingTalk (never clears a value).
    pub fields: Columns,
    /// Casdoor's syncer hash of the hashed columns (absent values hash as `''`).
    pub hash: ContentHash,
    /// Departments of the user: the union of the listings it was seen in and its `dept_id_list`,
    /// sorted, no repeats. The plan keeps only departments that are groups this syncer owns.
    pub departments: Vec<i64>,
}

/// Why one DingTalk record cannot be synced. Names the userid only, never other personal data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum RecordError {
    #[error("a DingTalk user listed in departments {seen_in:?} has an empty userid; skipped")]
    EmptyUserid { seen_in: Vec<i64> },
    #[error("DingTalk user {userid:?} is listed twice; the second record is skipped")]
    DuplicateUserid { userid: String },
    #[error(
        "DingTalk user {userid:?} has no value for the key column `{column}` (absent or empty); it cannot be matched and is skipped"
    )]
    EmptyKey { userid: String, column: String },
    #[error(
        "DingTalk user {userid:?}: the value for `{column}` is {found} {unit} long, the column holds {max}; skipped"
    )]
    TooLong {
        userid: String,
        column: String,
        max: usize,
        found: usize,
        unit: &'static str,
    },
    #[error("DingTalk user {userid:?}: the Casdoor user name would be {problem}; skipped")]
    InvalidName {
        userid: String,
        problem: &'static str,
    },
    #[error("DingTalk user {userid:?}: the value for `{column}` contains a NUL byte; skipped")]
    NulByte { userid: String, column: String },
    #[error(
        "DingTalk user {userid:?}: `{source_field}` is not a yes/no value for the flag column `{column}`; skipped"
    )]
    NotABool {
        userid: String,
        column: String,
        source_field: &'static str,
    },
    #[error(
        "DingTalk user {userid:?}: `{source_field}` is not a whole number in range for the column `{column}`; skipped"
    )]
    NotAnInteger {
        userid: String,
        column: String,
        source_field: &'static str,
    },
}

impl RecordError {
    /// The userid the error is about, when the record had one.
    pub fn userid(&self) -> Option<&str> {
        match self {
            Self::EmptyUserid { .. } => None,
            Self::DuplicateUserid { userid }
            | Self::EmptyKey { userid, .. }
            | Self::TooLong { userid, .. }
            | Self::InvalidName { userid, .. }
            | Self::NulByte { userid, .. }
            | Self::NotABool { userid, .. }
            | Self::NotAnInteger { userid, .. } => Some(userid),
        }
    }
}

/// Longest `user.name` (VARCHAR(255)).
const NAME_MAX_CHARS: usize = 255;
/// Longest `user.dingtalk` (VARCHAR(100)).
const DINGTALK_MAX_CHARS: usize = 100;

/// The DingTalk value of a source field as Casdoor's provider delivers it (`active` inverted).
fn source_value(user: &User, field: SourceField) -> Option<String> {
    match field {
        SourceField::Userid => Some(user.userid.clone()),
        SourceField::Unionid => user.unionid.clone(),
        SourceField::Name => user.name.clone(),
        SourceField::Email => user.email.clone(),
        SourceField::Mobile => user.mobile.clone(),
        SourceField::Avatar => user.avatar.clone(),
        SourceField::Title => user.title.clone(),
        SourceField::JobNumber => user.job_number.clone(),
        SourceField::Active => user
            .active
            .map(|active| if active { "0" } else { "1" }.to_owned()),
    }
}

/// Casdoor's string → bool: `true`/0x01 true, `false`/empty false, else a non-zero integer.
fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "true" | "\u{1}" => Some(true),
        "false" | "" => Some(false),
        other => other.parse::<i64>().ok().map(|n| n != 0),
    }
}

/// Casdoor's string → int (empty is 0), limited to MySQL INT.
fn parse_int(raw: &str) -> Option<i64> {
    if raw.is_empty() {
        return Some(0);
    }
    raw.parse::<i32>().ok().map(i64::from)
}

fn check_text(userid: &str, column: &str, value: &str, limit: Limit) -> Result<(), RecordError> {
    if value.contains('\0') {
        return Err(RecordError::NulByte {
            userid: userid.to_owned(),
            column: column.to_owned(),
        });
    }
    let (found, max, unit) = match limit {
        Limit::Chars(max) => (value.chars().count(), max, "characters"),
        Limit::Bytes(max) => (value.len(), max, "bytes"),
        Limit::None => return Ok(()),
    };
    if found > max {
        return Err(RecordError::TooLong {
            userid: userid.to_owned(),
            column: column.to_owned(),
            max,
            found,
            unit,
        });
    }
    Ok(())
}

fn check_name(userid: &str, name: &str) -> Result<(), RecordError> {
    if name.contains('\0') {
        return Err(RecordError::NulByte {
            userid: userid.to_owned(),
            column: "name".to_owned(),
        });
    }
    let problem = if name.is_empty() {
        Some("empty")
    } else if name.contains('/') {
        Some("containing `/`")
    } else if name.chars().any(char::is_control) {
        Some("containing a control character")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(RecordError::InvalidName {
            userid: userid.to_owned(),
            problem,
        });
    }
    check_text(userid, "name", name, Limit::Chars(NAME_MAX_CHARS))
}

/// Maps one DingTalk user.
pub fn map_user(user: &DirectoryUser, mapping: &Mapping) -> Result<MappedUser, RecordError> {
    let profile = &user.profile;
    let userid = profile.userid.as_str();
    if userid.trim().is_empty() {
        return Err(RecordError::EmptyUserid {
            seen_in: user.seen_in.clone(),
        });
    }
    check_text(userid, "dingtalk", userid, Limit::Chars(DINGTALK_MAX_CHARS))?;

    let mut values: BTreeMap<&'static str, Option<FieldValue>> = BTreeMap::new();
    for col in mapping.columns() {
        let spec = col.target;
        let raw = source_value(profile, col.source).map(|v| {
            let needs_base = spec.column == "avatar"
                && !mapping.avatar_base_url.is_empty()
                && !v.is_empty()
                && !v.starts_with("http");
            if needs_base {
                format!("{}{v}", mapping.avatar_base_url)
            } else {
                v
            }
        });
        let value = match raw {
            None => None,
            Some(raw) => Some(match spec.kind {
                ColumnKind::Text => FieldValue::Text(raw),
                ColumnKind::Bool => {
                    FieldValue::Bool(parse_bool(&raw).ok_or_else(|| RecordError::NotABool {
                        userid: userid.to_owned(),
                        column: spec.column.to_owned(),
                        source_field: col.source.as_str(),
                    })?)
                }
                ColumnKind::Int => {
                    FieldValue::Int(parse_int(&raw).ok_or_else(|| RecordError::NotAnInteger {
                        userid: userid.to_owned(),
                        column: spec.column.to_owned(),
                        source_field: col.source.as_str(),
                    })?)
                }
            }),
        };
        // Casdoor assigns columns in order, so a later column targeting the same field wins.
        values.insert(spec.column, value);
    }

    // Casdoor's hash: per slot, the canonical form of the field's final value ('' when absent
    // or not rendered by Casdoor); an empty avatar renders as the avatar base URL.
    let hash = {
        let rendered: Vec<String> = mapping
            .hash_slots
            .iter()
            .map(|slot| {
                let Some(spec) = slot else {
                    return String::new();
                };
                let value = values
                    .get(spec.column)
                    .and_then(|v| v.as_ref())
                    .map(FieldValue::canonical)
                    .unwrap_or_default();
                if spec.column == "avatar" && value.is_empty() {
                    mapping.avatar_base_url.clone()
                } else {
                    value
                }
            })
            .collect();
        ContentHash::md5_of(&hash_input(rendered.iter().map(String::as_str)))
    };

    let mapped_name = values
        .remove("name")
        .flatten()
        .and_then(|v| v.as_text().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty());
    let mapped_id = values
        .get("id")
        .and_then(|v| v.as_ref())
        .and_then(|v| v.as_text())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let job_number_name = mapping.name_field == Some(SourceField::JobNumber);
    let (name, name_source) = match (mapped_name, mapped_id) {
        (Some(name), _) => (name, NameSource::Mapped),
        (None, _) if job_number_name => (userid.trim().to_owned(), NameSource::UseridFallback),
        (None, Some(id)) => (id.to_owned(), NameSource::IdFallback),
        (None, None) => (userid.trim().to_owned(), NameSource::UseridFallback),
    };
    let name = if mapping.lowercase_names {
        name.to_lowercase()
    } else {
        name
    };
    check_name(userid, &name)?;

    for (column, value) in &values {
        if let Some(FieldValue::Text(text)) = value {
            let limit = column_spec(column).map_or(Limit::None, |s| s.limit);
            check_text(userid, column, text, limit)?;
        }
    }

    let key_column = mapping.key_column();
    let key = if key_column == "name" {
        Some(name.clone())
    } else {
        values
            .get(key_column)
            .and_then(|v| v.as_ref())
            .and_then(|v| v.as_text())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let key = key.ok_or_else(|| RecordError::EmptyKey {
        userid: userid.to_owned(),
        column: key_column.to_owned(),
    })?;

    let departments: BTreeSet<i64> = user
        .seen_in
        .iter()
        .chain(profile.dept_id_list.iter().flatten())
        .copied()
        .collect();

    Ok(MappedUser {
        userid: userid.to_owned(),
        key,
        name,
        name_source,
        fields: Columns::from_entries(values),
        hash,
        departments: departments.into_iter().collect(),
    })
}

/// Maps a whole directory's users: mapped users sorted by userid, and the records that failed.
/// Takes the users by value and drops each DingTalk record once it is mapped, so the fetched
/// directory and its mapped form are never both whole in memory.
pub fn map_directory(
    directory_users: Vec<DirectoryUser>,
    mapping: &Mapping,
) -> (Vec<MappedUser>, Vec<RecordError>) {
    let mut users = Vec::with_capacity(directory_users.len());
    let mut errors = Vec::new();
    let mut seen: HashSet<String> = HashSet::with_capacity(directory_users.len());
    for user in directory_users {
        let userid = &user.profile.userid;
        if !userid.trim().is_empty() && !seen.insert(userid.clone()) {
            errors.push(RecordError::DuplicateUserid {
                userid: userid.clone(),
            });
            continue;
        }
        match map_user(&user, mapping) {
            Ok(mapped) => users.push(mapped),
            Err(e) => errors.push(e),
        }
    }
    users.sort_by(|a, b| a.userid.cmp(&b.userid));
    errors.sort();
    (users, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::columns::FieldRef;
    use crate::pipeline::hash::content_hash;

    /// A held column's value, `None` when absent.
    fn field(user: &MappedUser, column: &str) -> Option<FieldValue> {
        user.fields
            .get(column)
            .unwrap_or_else(|| panic!("{column} is not held"))
            .map(FieldRef::to_value)
    }
    use crate::dingtalk::types::Directory;

    const STOCK_UI: &str = r#"[
      {"name":"userid","type":"string","casdoorName":"Id","isKey":false,"isHashed":true,"values":[]},
      {"name":"unionid","type":"string","casdoorName":"Name","isKey":false,"isHashed":true,"values":[]},
      {"name":"name","type":"string","casdoorName":"DisplayName","isKey":false,"isHashed":true,"values":[]},
      {"name":"email","type":"string","casdoorName":"Email","isKey":false,"isHashed":true,"values":[]},
      {"name":"mobile","type":"string","casdoorName":"Phone","isKey":false,"isHashed":true,"values":[]},
      {"name":"avatar","type":"string","casdoorName":"Avatar","isKey":false,"isHashed":true,"values":[]},
      {"name":"title","type":"string","casdoorName":"Title","isKey":false,"isHashed":true,"values":[]},
      {"name":"active","type":"boolean","casdoorName":"IsForbidden","isKey":false,"isHashed":true,"values":[]}]"#;

    const PRE_2026_02_24_UI: &str = r#"[
      {"name":"userid","type":"string","casdoorName":"Id","isKey":false,"isHashed":true,"values":[]},
      {"name":"name","type":"string","casdoorName":"DisplayName","isKey":false,"isHashed":true,"values":[]},
      {"name":"email","type":"string","casdoorName":"Email","isKey":false,"isHashed":true,"values":[]},
      {"name":"mobile","type":"string","casdoorName":"Phone","isKey":false,"isHashed":true,"values":[]},
      {"name":"avatar","type":"string","casdoorName":"Avatar","isKey":false,"isHashed":true,"values":[]},
      {"name":"title","type":"string","casdoorName":"Title","isKey":false,"isHashed":true,"values":[]},
      {"name":"job_number","type":"string","casdoorName":"Name","isKey":false,"isHashed":true,"values":[]},
      {"name":"active","type":"boolean","casdoorName":"IsForbidden","isKey":false,"isHashed":true,"values":[]}]"#;

    fn full_profile() -> User {
        User {
            userid: "manager4220".into(),
            unionid: Some("z21HjQliSzpw0Yxxxx".into()),
            name: Some("张三".into()),
            email: Some("zhangsan@example.com".into()),
            mobile: Some("13800000000".into()),
            avatar: Some("https://static-legacy.dingtalk.com/media/x.jpg".into()),
            title: Some("Engineer".into()),
            job_number: Some("A001".into()),
            active: Some(true),
            dept_id_list: Some(vec![1, 512340001]),
            ..User::default()
        }
    }

    fn dir_user(profile: User) -> DirectoryUser {
        DirectoryUser {
            profile,
            seen_in: vec![512340001],
        }
    }

    fn text(v: &str) -> Option<FieldValue> {
        Some(FieldValue::Text(v.into()))
    }

    #[test]
    fn appendix_d_vector_1_stock_mapping_full_profile() {
        let mapping = Mapping::from_syncer(Some(STOCK_UI), "").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.hash, "105558b346cbef8dcc340303d5097138");
        assert_eq!(user.name, "z21HjQliSzpw0Yxxxx");
        assert_eq!(user.key, "manager4220");
        assert_eq!(field(&user, "is_forbidden"), Some(FieldValue::Bool(false)));
    }

    #[test]
    fn appendix_d_vector_2_basic_record_as_casdoor_saw_it() {
        // Casdoor's basic record had no way to say "absent": `active` was Go's zero value false.
        let profile = User {
            userid: "manager4220".into(),
            name: Some("张三".into()),
            active: Some(false),
            ..User::default()
        };
        let mapping = Mapping::from_syncer(Some(STOCK_UI), "").unwrap();
        let user = map_user(&dir_user(profile), &mapping).unwrap();
        assert_eq!(user.hash, "9fa1f820239736cc891beb50fa0951a7");
        // The hash is taken before the empty Name falls back to the Id.
        assert_eq!(user.name, "manager4220");
        assert_eq!(user.name_source, NameSource::IdFallback);
    }

    #[test]
    fn appendix_d_vector_3_pre_2026_02_24_ui_mapping() {
        let mapping = Mapping::from_syncer(Some(PRE_2026_02_24_UI), "").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.hash, "bd3198efa325230adb24fa0bf9805cb4");
        assert_eq!(user.name, "A001");
        assert_eq!(mapping.key_column(), "id");
    }

    #[test]
    fn appendix_d_vector_4_no_hashed_column() {
        let text = STOCK_UI.replace("\"isHashed\":true", "\"isHashed\":false");
        let mapping = Mapping::from_syncer(Some(&text), "").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.hash, "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn absent_fields_hash_as_empty_and_map_to_none() {
        let profile = User {
            userid: "u1".into(),
            name: Some("张三".into()),
            ..User::default()
        };
        let mapping = Mapping::from_syncer(Some(STOCK_UI), "").unwrap();
        let user = map_user(&dir_user(profile), &mapping).unwrap();
        assert_eq!(
            user.hash,
            content_hash(["u1", "", "张三", "", "", "", "", ""])
        );
        assert_eq!(field(&user, "email"), None);
        assert_eq!(field(&user, "is_forbidden"), None);
        assert_eq!(field(&user, "display_name"), text("张三"));
    }

    #[test]
    fn empty_values_are_present_and_distinct_from_absent_ones() {
        let profile = User {
            userid: "u1".into(),
            email: Some(String::new()),
            ..User::default()
        };
        let mapping = Mapping::default_mapping("").unwrap();
        let user = map_user(&dir_user(profile), &mapping).unwrap();
        assert_eq!(field(&user, "email"), text(""));
        assert_eq!(field(&user, "phone"), None);
    }

    #[test]
    fn default_mapping_is_the_seed_table_keyed_on_id() {
        for tc in [None, Some(""), Some("[]"), Some("null")] {
            let mapping = Mapping::from_syncer(tc, "").unwrap();
            assert!(mapping.is_default());
            assert_eq!(mapping.key_column(), "id");
            assert_eq!(
                mapping.target_columns(),
                [
                    "avatar",
                    "display_name",
                    "email",
                    "id",
                    "is_forbidden",
                    "name",
                    "phone",
                    "title"
                ]
            );
        }
        let mapping = Mapping::default_mapping("").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.name, "A001");
        assert_eq!(user.name_source, NameSource::Mapped);
        assert_eq!(
            user.hash,
            content_hash([
                "manager4220",
                "A001",
                "张三",
                "zhangsan@example.com",
                "13800000000",
                "https://static-legacy.dingtalk.com/media/x.jpg",
                "Engineer",
                "0"
            ])
        );
    }

    #[test]
    fn default_mapping_falls_back_to_userid_when_job_number_is_empty_or_absent() {
        let mapping = Mapping::default_mapping("").unwrap();
        for job_number in [None, Some(""), Some("   ")] {
            let profile = User {
                job_number: job_number.map(str::to_owned),
                ..full_profile()
            };
            let user = map_user(&dir_user(profile), &mapping).unwrap();
            assert_eq!(user.name, "manager4220", "{job_number:?}");
            assert_eq!(user.name_source, NameSource::UseridFallback);
        }
    }

    #[test]
    fn current_ui_mapping_names_users_by_unionid() {
        let mapping = Mapping::from_syncer(Some(STOCK_UI), "").unwrap();
        assert!(!mapping.is_default());
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.name, "z21HjQliSzpw0Yxxxx");
        assert_eq!(user.fields.get("name"), None);
        assert_eq!(field(&user, "id"), text("manager4220"));
        assert_eq!(user.userid, "manager4220");
    }

    #[test]
    fn active_is_delivered_inverted() {
        let mapping = Mapping::default_mapping("").unwrap();
        let inactive = User {
            active: Some(false),
            ..full_profile()
        };
        let user = map_user(&dir_user(inactive), &mapping).unwrap();
        assert_eq!(field(&user, "is_forbidden"), Some(FieldValue::Bool(true)));
        // Into a text column the inverted flag arrives as `1`/`0`, as in Casdoor.
        let tc = r#"[{"name":"userid","casdoorName":"Id"},{"name":"active","casdoorName":"Tag"}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(field(&user, "tag"), text("0"));
    }

    #[test]
    fn avatar_base_url_prefixes_only_relative_avatars() {
        let mapping = Mapping::default_mapping("https://cdn.example.com/").unwrap();
        let relative = User {
            avatar: Some("media/x.jpg".into()),
            ..full_profile()
        };
        let user = map_user(&dir_user(relative), &mapping).unwrap();
        assert_eq!(
            field(&user, "avatar"),
            text("https://cdn.example.com/media/x.jpg")
        );
        let absolute = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(
            field(&absolute, "avatar"),
            text("https://static-legacy.dingtalk.com/media/x.jpg")
        );
        let empty = User {
            avatar: Some(String::new()),
            ..full_profile()
        };
        let user = map_user(&dir_user(empty), &mapping).unwrap();
        assert_eq!(field(&user, "avatar"), text(""));
        // The prefixed value is what is hashed.
        let relative = User {
            avatar: Some("media/x.jpg".into()),
            ..full_profile()
        };
        let with_base = map_user(&dir_user(relative.clone()), &mapping).unwrap();
        let without =
            map_user(&dir_user(relative), &Mapping::default_mapping("").unwrap()).unwrap();
        assert_ne!(with_base.hash, without.hash);
    }

    #[test]
    fn text_into_flag_and_number_columns_follows_casdoor_conversions() {
        let tc = r#"[{"name":"userid","casdoorName":"Id"},{"name":"title","casdoorName":"IsVerified"},
                     {"name":"job_number","casdoorName":"Score"}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        let cases = [
            ("true", true),
            ("false", false),
            ("", false),
            ("2", true),
            ("0", false),
        ];
        for (raw, expected) in cases {
            let profile = User {
                title: Some(raw.into()),
                job_number: Some("42".into()),
                ..full_profile()
            };
            let user = map_user(&dir_user(profile), &mapping).unwrap();
            assert_eq!(
                field(&user, "is_verified"),
                Some(FieldValue::Bool(expected))
            );
            assert_eq!(field(&user, "score"), Some(FieldValue::Int(42)));
        }
        let bad_flag = User {
            title: Some("Engineer".into()),
            ..full_profile()
        };
        assert_eq!(
            map_user(&dir_user(bad_flag), &mapping),
            Err(RecordError::NotABool {
                userid: "manager4220".into(),
                column: "is_verified".into(),
                source_field: "title"
            })
        );
        let bad_number = User {
            title: Some("1".into()),
            job_number: Some("99999999999".into()),
            ..full_profile()
        };
        assert!(matches!(
            map_user(&dir_user(bad_number), &mapping),
            Err(RecordError::NotAnInteger { .. })
        ));
    }

    #[test]
    fn a_custom_key_column_is_matched_on_its_value() {
        let tc = STOCK_UI.replacen(
            r#""casdoorName":"Name","isKey":false"#,
            r#""casdoorName":"Name","isKey":true"#,
            1,
        );
        let mapping = Mapping::from_syncer(Some(&tc), "").unwrap();
        assert_eq!(mapping.key_column(), "name");
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.key, "z21HjQliSzpw0Yxxxx");

        let tc = r#"[{"name":"userid","casdoorName":"Id"},{"name":"email","casdoorName":"Email","isKey":true}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        let no_email = User {
            email: None,
            ..full_profile()
        };
        assert_eq!(
            map_user(&dir_user(no_email), &mapping),
            Err(RecordError::EmptyKey {
                userid: "manager4220".into(),
                column: "email".into()
            })
        );
    }

    #[test]
    fn a_record_without_userid_is_an_error_naming_its_departments() {
        let mapping = Mapping::default_mapping("").unwrap();
        let profile = User {
            userid: " ".into(),
            ..full_profile()
        };
        assert_eq!(
            map_user(&dir_user(profile), &mapping),
            Err(RecordError::EmptyUserid {
                seen_in: vec![512340001]
            })
        );
    }

    #[test]
    fn values_longer_than_their_column_are_errors_counted_in_characters() {
        let mapping = Mapping::default_mapping("").unwrap();
        // 100 CJK characters fit VARCHAR(100) although they are 300 bytes.
        let fits = User {
            name: Some("张".repeat(100)),
            ..full_profile()
        };
        assert!(map_user(&dir_user(fits), &mapping).is_ok());
        let too_long = User {
            name: Some("张".repeat(101)),
            ..full_profile()
        };
        assert_eq!(
            map_user(&dir_user(too_long), &mapping),
            Err(RecordError::TooLong {
                userid: "manager4220".into(),
                column: "display_name".into(),
                max: 100,
                found: 101,
                unit: "characters"
            })
        );
        let long_name = User {
            job_number: Some("n".repeat(256)),
            ..full_profile()
        };
        assert!(matches!(
            map_user(&dir_user(long_name), &mapping),
            Err(RecordError::TooLong { column, max: 255, .. }) if column == "name"
        ));
        let long_userid = User {
            userid: "u".repeat(101),
            ..full_profile()
        };
        assert!(matches!(
            map_user(&dir_user(long_userid), &mapping),
            Err(RecordError::TooLong { column, max: 100, .. }) if column == "dingtalk"
        ));
        // Avatar is TEXT: a byte limit.
        let long_avatar = User {
            avatar: Some(format!("https://x/{}", "a".repeat(65_535))),
            ..full_profile()
        };
        assert!(matches!(
            map_user(&dir_user(long_avatar), &mapping),
            Err(RecordError::TooLong { unit: "bytes", .. })
        ));
    }

    #[test]
    fn invalid_casdoor_names_are_errors() {
        let mapping = Mapping::default_mapping("").unwrap();
        for (job_number, problem) in [
            ("a/b", "containing `/`"),
            ("a\tb", "containing a control character"),
            ("a\u{85}b", "containing a control character"),
        ] {
            let profile = User {
                job_number: Some(job_number.into()),
                ..full_profile()
            };
            assert_eq!(
                map_user(&dir_user(profile), &mapping),
                Err(RecordError::InvalidName {
                    userid: "manager4220".into(),
                    problem
                })
            );
        }
        // Surrounding spaces are trimmed, as Casdoor does.
        let spaced = User {
            job_number: Some("  A001 ".into()),
            ..full_profile()
        };
        assert_eq!(map_user(&dir_user(spaced), &mapping).unwrap().name, "A001");
    }

    #[test]
    fn a_nul_byte_in_any_value_is_an_error() {
        let mapping = Mapping::default_mapping("").unwrap();
        let in_title = User {
            title: Some("Eng\0".into()),
            ..full_profile()
        };
        assert_eq!(
            map_user(&dir_user(in_title), &mapping),
            Err(RecordError::NulByte {
                userid: "manager4220".into(),
                column: "title".into()
            })
        );
        let in_name = User {
            job_number: Some("A\0".into()),
            ..full_profile()
        };
        assert!(matches!(
            map_user(&dir_user(in_name), &mapping),
            Err(RecordError::NulByte { column, .. }) if column == "name"
        ));
    }

    #[test]
    fn record_errors_name_the_userid_but_no_other_personal_data() {
        let mapping = Mapping::default_mapping("").unwrap();
        let profile = User {
            name: Some("秘密".repeat(60)),
            email: Some("secret@example.com".into()),
            ..full_profile()
        };
        let message = map_user(&dir_user(profile), &mapping)
            .unwrap_err()
            .to_string();
        assert!(message.contains("manager4220"), "{message}");
        assert!(
            !message.contains("秘密") && !message.contains("secret@"),
            "{message}"
        );
    }

    #[test]
    fn departments_are_the_union_of_listings_and_dept_id_list() {
        let mapping = Mapping::default_mapping("").unwrap();
        let user = DirectoryUser {
            profile: User {
                dept_id_list: Some(vec![7, 3]),
                ..full_profile()
            },
            seen_in: vec![3, 5],
        };
        assert_eq!(map_user(&user, &mapping).unwrap().departments, [3, 5, 7]);
        let without_list = DirectoryUser {
            profile: User {
                dept_id_list: None,
                ..full_profile()
            },
            seen_in: vec![5],
        };
        assert_eq!(map_user(&without_list, &mapping).unwrap().departments, [5]);
    }

    #[test]
    fn map_directory_sorts_and_keeps_going_after_bad_records() {
        let mapping = Mapping::default_mapping("").unwrap();
        let mk = |id: &str| {
            dir_user(User {
                userid: id.into(),
                job_number: None,
                ..full_profile()
            })
        };
        let bad = dir_user(User {
            userid: "bad".into(),
            title: Some("\0".into()),
            ..full_profile()
        });
        let directory = Directory {
            users: vec![mk("b"), bad, mk("a"), mk("b")],
            complete: true,
            ..Directory::default()
        };
        let (users, errors) = map_directory(directory.users, &mapping);
        let ids: Vec<_> = users.iter().map(|u| u.userid.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(errors.len(), 2);
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, RecordError::DuplicateUserid { userid } if userid == "b"))
        );
        assert!(errors.iter().any(|e| e.userid() == Some("bad")));
    }

    #[test]
    fn a_later_column_for_the_same_field_wins_and_is_hashed_in_both_slots() {
        let tc = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
                     {"name":"email","casdoorName":"Tag","isHashed":true},
                     {"name":"title","casdoorName":"Tag","isHashed":true}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(field(&user, "tag"), text("Engineer"));
        assert_eq!(
            user.hash,
            content_hash(["manager4220", "Engineer", "Engineer"])
        );
    }

    /// Casdoor's recipe, computed here independently of [`hash_input`]: lowercase hex MD5 of
    /// the values joined by `|`.
    fn casdoor_md5(values: &[&str]) -> String {
        use md5::{Digest, Md5};
        format!("{:x}", Md5::digest(values.join("|").as_bytes()))
    }

    #[test]
    fn fields_casdoors_hash_leaves_out_hash_as_empty_strings() {
        let tc = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
                     {"name":"name","casdoorName":"FirstName","isHashed":true},
                     {"name":"title","casdoorName":"LastName","isHashed":true},
                     {"name":"active","casdoorName":"EmailVerified","isHashed":true},
                     {"name":"email","casdoorName":"Email","isHashed":true}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        // The values are written ...
        assert_eq!(field(&user, "first_name"), text("张三"));
        assert_eq!(field(&user, "last_name"), text("Engineer"));
        assert_eq!(
            field(&user, "email_verified"),
            Some(FieldValue::Bool(false))
        );
        // ... but hashed as Casdoor hashes them: ''.
        let expected = casdoor_md5(&["manager4220", "", "", "", "zhangsan@example.com"]);
        assert_eq!(expected, "43c0b2ba4a527e04e895251e5af2df87");
        assert_eq!(user.hash, expected.as_str());
    }

    #[test]
    fn an_empty_avatar_hashes_as_the_avatar_base_url() {
        let mapping = Mapping::default_mapping("https://cdn.example.com/").unwrap();
        for avatar in [Some(""), None] {
            let profile = User {
                avatar: avatar.map(str::to_owned),
                ..full_profile()
            };
            let user = map_user(&dir_user(profile), &mapping).unwrap();
            let expected = casdoor_md5(&[
                "manager4220",
                "A001",
                "张三",
                "zhangsan@example.com",
                "13800000000",
                "https://cdn.example.com/",
                "Engineer",
                "0",
            ]);
            assert_eq!(expected, "a9c28e45cf73dc9f427d4f2baf8eba18");
            assert_eq!(user.hash, expected.as_str(), "{avatar:?}");
            // The stored value stays empty: a bare base URL is no picture.
            assert_eq!(
                field(&user, "avatar"),
                avatar.map(|a| FieldValue::Text(a.into()))
            );
        }
        // Without a base URL an empty avatar is ''.
        let profile = User {
            avatar: Some(String::new()),
            ..full_profile()
        };
        let user = map_user(&dir_user(profile), &Mapping::default_mapping("").unwrap()).unwrap();
        assert_eq!(
            user.hash,
            casdoor_md5(&[
                "manager4220",
                "A001",
                "张三",
                "zhangsan@example.com",
                "13800000000",
                "",
                "Engineer",
                "0"
            ])
            .as_str()
        );
    }

    #[test]
    fn an_empty_job_number_name_falls_back_to_the_userid_not_the_mapped_id() {
        let tc = r#"[{"name":"unionid","casdoorName":"Id","isHashed":true},
                     {"name":"job_number","casdoorName":"Name","isHashed":true},
                     {"name":"userid","casdoorName":"ExternalId","isHashed":true}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        let profile = User {
            job_number: Some(String::new()),
            ..full_profile()
        };
        let user = map_user(&dir_user(profile), &mapping).unwrap();
        assert_eq!(user.name, "manager4220");
        assert_eq!(user.name_source, NameSource::UseridFallback);
        assert_eq!(user.key, "z21HjQliSzpw0Yxxxx");
        // The hash is Casdoor's: taken before the fallback, with the empty job number.
        assert_eq!(
            user.hash,
            casdoor_md5(&["z21HjQliSzpw0Yxxxx", "", ""]).as_str()
        );
        // Another field mapped to Name keeps Casdoor's generic fallback to the mapped Id.
        let tc = tc.replace("job_number", "email");
        let mapping = Mapping::from_syncer(Some(&tc), "").unwrap();
        let profile = User {
            email: Some(String::new()),
            ..full_profile()
        };
        let user = map_user(&dir_user(profile), &mapping).unwrap();
        assert_eq!(user.name, "z21HjQliSzpw0Yxxxx");
        assert_eq!(user.name_source, NameSource::IdFallback);
    }

    #[test]
    fn lowercase_names_lower_every_new_name_and_a_name_key() {
        let mapping = Mapping::default_mapping("")
            .unwrap()
            .with_lowercase_names(true);
        let profile = User {
            job_number: Some(" Ab-ÄÖ01 ".into()),
            ..full_profile()
        };
        let user = map_user(&dir_user(profile.clone()), &mapping).unwrap();
        assert_eq!(user.name, "ab-äö01");
        // The hash is of DingTalk's value, as Casdoor's.
        let plain = map_user(&dir_user(profile), &Mapping::default_mapping("").unwrap()).unwrap();
        assert_eq!(plain.name, "Ab-ÄÖ01");
        assert_eq!(user.hash, plain.hash);
        let fallback = User {
            userid: "Manager4220".into(),
            job_number: None,
            ..full_profile()
        };
        assert_eq!(
            map_user(&dir_user(fallback), &mapping).unwrap().name,
            "manager4220"
        );
        let tc = r#"[{"name":"userid","casdoorName":"Id"},{"name":"unionid","casdoorName":"Name","isKey":true}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "")
            .unwrap()
            .with_lowercase_names(true);
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.key, "z21hjqliszpw0yxxxx");
    }

    #[test]
    fn ignored_fields_are_listed_and_hash_as_empty_strings() {
        let tc = r#"[{"name":"userid","casdoorName":"Id","isHashed":true},
                     {"name":"title","casdoorName":"Groups","isHashed":true},
                     {"name":"name","casdoorName":"Owner","isHashed":true},
                     {"name":"email","casdoorName":"Currency"},
                     {"name":"mobile","casdoorName":"BalanceCurrency","isHashed":true}]"#;
        let mapping = Mapping::from_syncer(Some(tc), "").unwrap();
        assert_eq!(
            mapping.ignored_fields(),
            ["Groups", "Owner", "Currency", "BalanceCurrency"]
        );
        assert_eq!(mapping.target_columns(), ["id"]);
        let user = map_user(&dir_user(full_profile()), &mapping).unwrap();
        assert_eq!(user.fields.len(), 1);
        assert_eq!(
            user.hash,
            casdoor_md5(&["manager4220", "", "", ""]).as_str()
        );
    }
}
