//! `syncer.table_columns`: parsing, validation, key selection, and the Casdoor user columns
//! syncerd may write.
//!
//! Casdoor stores the mapping as a JSON array of `{name,type,casdoorName,isKey,isHashed,values}`.
//! `name` is the DingTalk field, `casdoorName` the Go field of Casdoor's `User` (its column is the
//! snake_case form). `type` and `values` are ignored, as Casdoor's DingTalk path ignores them.

use serde_json::Value;

/// Why a `table_columns` value cannot be used. `entry` is the 1-based position in the array, as
/// the Casdoor UI lists the rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error(
        "syncer.table_columns is not valid JSON ({reason}); fix it in the Casdoor syncer page or clear it to use the default DingTalk mapping"
    )]
    NotJson { reason: String },
    #[error(
        "syncer.table_columns must be a JSON array of columns, found {found}; fix it in the Casdoor syncer page or clear it to use the default DingTalk mapping"
    )]
    NotAnArray { found: &'static str },
    #[error("syncer.table_columns entry #{entry} is not a JSON object")]
    EntryNotAnObject { entry: usize },
    #[error(
        "syncer.table_columns entry #{entry} has no `{field}`; every column needs a non-empty `{field}`"
    )]
    MissingField { entry: usize, field: &'static str },
    #[error("syncer.table_columns entry #{entry}: `{field}` must be {expected}")]
    WrongType {
        entry: usize,
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "syncer.table_columns entry #{entry}: DingTalk has no field `{name}` (understood: userid, unionid, name, email, mobile, avatar, title, job_number, active)"
    )]
    UnknownSource { entry: usize, name: String },
    #[error(
        "syncer.table_columns entry #{entry}: `{casdoor_name}` is not a Casdoor user field syncerd knows; use the Go field name, e.g. DisplayName"
    )]
    UnknownCasdoorField { entry: usize, casdoor_name: String },
    #[error(
        "syncer.table_columns entry #{entry}: syncerd does not write `{casdoor_name}`: {reason}"
    )]
    UnwritableCasdoorField {
        entry: usize,
        casdoor_name: String,
        reason: &'static str,
    },
    #[error(
        "syncer.table_columns entry #{entry} is the key column but cannot identify users: {reason}; mark an identifying text column (such as userid → Id) with isKey"
    )]
    UnusableKey { entry: usize, reason: &'static str },
}

/// One entry of `table_columns`, as stored (before validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// DingTalk-side field name.
    pub name: String,
    /// Casdoor `User` field in Go CamelCase.
    pub casdoor_name: String,
    pub is_key: bool,
    pub is_hashed: bool,
}

/// The DingTalk user fields Casdoor's DingTalk provider understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceField {
    Userid,
    Unionid,
    Name,
    Email,
    Mobile,
    Avatar,
    Title,
    JobNumber,
    /// Delivered inverted, as Casdoor does: `1` when the user has not activated DingTalk.
    Active,
}

impl SourceField {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "userid" => Self::Userid,
            "unionid" => Self::Unionid,
            "name" => Self::Name,
            "email" => Self::Email,
            "mobile" => Self::Mobile,
            "avatar" => Self::Avatar,
            "title" => Self::Title,
            "job_number" => Self::JobNumber,
            "active" => Self::Active,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Userid => "userid",
            Self::Unionid => "unionid",
            Self::Name => "name",
            Self::Email => "email",
            Self::Mobile => "mobile",
            Self::Avatar => "avatar",
            Self::Title => "title",
            Self::JobNumber => "job_number",
            Self::Active => "active",
        }
    }
}

/// How a Casdoor user column stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ColumnKind {
    Text,
    /// TINYINT(1) / BOOL / INTEGER 0-1.
    Bool,
    /// INT (32-bit on MySQL).
    Int,
}

/// The size limit of a column on MySQL, the strictest engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// VARCHAR(n): n characters (code points), as MySQL counts them.
    Chars(usize),
    /// TEXT: a byte limit.
    Bytes(usize),
    /// Not a text column.
    None,
}

/// A Casdoor user column syncerd may write from DingTalk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Go field name, as in `casdoorName`.
    pub casdoor_name: &'static str,
    /// Column name (snake_case of the field).
    pub column: &'static str,
    pub kind: ColumnKind,
    pub limit: Limit,
}

const fn text(casdoor_name: &'static str, column: &'static str, chars: usize) -> ColumnSpec {
    ColumnSpec {
        casdoor_name,
        column,
        kind: ColumnKind::Text,
        limit: Limit::Chars(chars),
    }
}

const fn flag(casdoor_name: &'static str, column: &'static str) -> ColumnSpec {
    ColumnSpec {
        casdoor_name,
        column,
        kind: ColumnKind::Bool,
        limit: Limit::None,
    }
}

const fn int(casdoor_name: &'static str, column: &'static str) -> ColumnSpec {
    ColumnSpec {
        casdoor_name,
        column,
        kind: ColumnKind::Int,
        limit: Limit::None,
    }
}

/// MySQL TEXT holds at most 65,535 bytes.
pub const TEXT_BYTES: usize = 65_535;

/// The writable user columns, with the MySQL sizes of the spec's Appendix A.
pub const WRITABLE_USER_COLUMNS: &[ColumnSpec] = &[
    text("Id", "id", 100),
    text("Name", "name", 255),
    text("ExternalId", "external_id", 100),
    text("DisplayName", "display_name", 100),
    text("FirstName", "first_name", 100),
    text("LastName", "last_name", 100),
    ColumnSpec {
        casdoor_name: "Avatar",
        column: "avatar",
        kind: ColumnKind::Text,
        limit: Limit::Bytes(TEXT_BYTES),
    },
    text("Email", "email", 100),
    text("Phone", "phone", 100),
    text("CountryCode", "country_code", 6),
    text("Region", "region", 100),
    text("Location", "location", 100),
    text("Affiliation", "affiliation", 100),
    text("Title", "title", 100),
    text("IdCardType", "id_card_type", 100),
    text("IdCard", "id_card", 100),
    text("RealName", "real_name", 100),
    text("Homepage", "homepage", 100),
    text("Bio", "bio", 100),
    text("Tag", "tag", 100),
    text("Language", "language", 100),
    text("Gender", "gender", 100),
    text("Birthday", "birthday", 100),
    text("Education", "education", 100),
    int("Score", "score"),
    int("Karma", "karma"),
    int("Ranking", "ranking"),
    flag("IsForbidden", "is_forbidden"),
    flag("IsAdmin", "is_admin"),
    flag("EmailVerified", "email_verified"),
    flag("IsVerified", "is_verified"),
];

/// Casdoor user fields that exist but that a DingTalk mapping must not target, and why.
const REFUSED_USER_FIELDS: &[(&str, &str)] = &[
    ("Owner", "the organization is fixed by the syncer"),
    ("Password", "syncerd never writes credentials"),
    ("PasswordSalt", "syncerd never writes credentials"),
    ("PasswordType", "syncerd never writes credentials"),
    ("Hash", "syncerd computes the content hash itself"),
    ("PreHash", "syncerd computes the content hash itself"),
    (
        "Groups",
        "department memberships are kept by the group sync",
    ),
    (
        "IsDeleted",
        "soft deletion belongs to the leaver policy (sync.leaver_policy)",
    ),
    (
        "DeletedTime",
        "soft deletion belongs to the leaver policy (sync.leaver_policy)",
    ),
    (
        "DingTalk",
        "syncerd always writes the DingTalk userid there",
    ),
    (
        "Dingtalk",
        "syncerd always writes the DingTalk userid there",
    ),
    ("CreatedTime", "timestamps are maintained by syncerd"),
    ("UpdatedTime", "timestamps are maintained by syncerd"),
    ("Type", "syncerd creates users of type normal-user"),
    ("RegisterType", "set by syncerd when it creates a user"),
    ("RegisterSource", "set by syncerd when it creates a user"),
    ("PermanentAvatar", "computed by Casdoor"),
    ("Properties", "a JSON column, not a single value"),
    ("Roles", "a JSON column, not a single value"),
    ("Permissions", "a JSON column, not a single value"),
    ("Address", "a JSON list column, not a single value"),
    ("Balance", "a money column DingTalk has no value for"),
    ("BalanceCredit", "a money column DingTalk has no value for"),
    ("IsOnline", "session state, not directory data"),
    (
        "SigninWrongTimes",
        "sign-in security state, not directory data",
    ),
    (
        "LastSigninTime",
        "sign-in security state, not directory data",
    ),
    ("AccessToken", "a credential"),
    ("TotpSecret", "a credential"),
    ("RecoveryCodes", "a credential"),
];

/// The writable column a `casdoorName` targets.
pub fn column_by_casdoor_name(casdoor_name: &str) -> Option<&'static ColumnSpec> {
    WRITABLE_USER_COLUMNS
        .iter()
        .find(|c| c.casdoor_name == casdoor_name)
}

/// The writable column with this (snake_case) name.
pub fn column_spec(column: &str) -> Option<&'static ColumnSpec> {
    WRITABLE_USER_COLUMNS.iter().find(|c| c.column == column)
}

/// Casdoor's column name for a Go field name: `DisplayName` → `display_name`.
pub fn snake_case(casdoor_name: &str) -> String {
    let mut out = String::with_capacity(casdoor_name.len() + 4);
    let mut prev_lower_or_digit = false;
    for ch in casdoor_name.chars() {
        if ch.is_uppercase() {
            if prev_lower_or_digit {
                out.push('_');
            }
            out.extend(ch.to_lowercase());
            prev_lower_or_digit = false;
        } else {
            out.push(ch);
            prev_lower_or_digit = ch.is_lowercase() || ch.is_ascii_digit();
        }
    }
    out
}

/// Parses stored `table_columns` text without judging the names. `None`, blank, `null` and `[]`
/// give an empty list (the caller substitutes the default mapping).
pub fn parse_table_columns(text: Option<&str>) -> Result<Vec<TableColumn>, MappingError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    let value: Value = serde_json::from_str(text).map_err(|e| MappingError::NotJson {
        reason: e.to_string(),
    })?;
    let entries = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(entries) => entries,
        Value::Bool(_) => return Err(MappingError::NotAnArray { found: "a boolean" }),
        Value::Number(_) => return Err(MappingError::NotAnArray { found: "a number" }),
        Value::String(_) => return Err(MappingError::NotAnArray { found: "a string" }),
        Value::Object(_) => return Err(MappingError::NotAnArray { found: "an object" }),
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_entry(i + 1, entry))
        .collect()
}

fn parse_entry(entry: usize, value: &Value) -> Result<TableColumn, MappingError> {
    let Value::Object(obj) = value else {
        return Err(MappingError::EntryNotAnObject { entry });
    };
    let required_text = |field: &'static str| -> Result<String, MappingError> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(MappingError::MissingField { entry, field }),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(MappingError::MissingField { entry, field })
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(MappingError::WrongType {
                entry,
                field,
                expected: "a string",
            }),
        }
    };
    let optional_flag = |field: &'static str| -> Result<bool, MappingError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(MappingError::WrongType {
                entry,
                field,
                expected: "true or false",
            }),
        }
    };
    Ok(TableColumn {
        name: required_text("name")?,
        casdoor_name: required_text("casdoorName")?,
        is_key: optional_flag("isKey")?,
        is_hashed: optional_flag("isHashed")?,
    })
}

/// Casdoor's key rule (spec §1.4): the last entry with `isKey`; else the last whose source name is
/// `id`; else the first. `None` only for an empty list.
pub fn select_key_index(columns: &[TableColumn]) -> Option<usize> {
    columns
        .iter()
        .rposition(|c| c.is_key)
        .or_else(|| columns.iter().rposition(|c| c.name == "id"))
        .or(if columns.is_empty() { None } else { Some(0) })
}

/// A validated column of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedColumn {
    pub source: SourceField,
    pub target: &'static ColumnSpec,
    pub is_hashed: bool,
}

/// Validates parsed columns; returns them with the index of the key column.
pub fn validate_columns(
    columns: &[TableColumn],
) -> Result<(Vec<MappedColumn>, usize), MappingError> {
    let mut mapped = Vec::with_capacity(columns.len());
    for (i, col) in columns.iter().enumerate() {
        let entry = i + 1;
        let source = SourceField::parse(&col.name).ok_or_else(|| MappingError::UnknownSource {
            entry,
            name: col.name.clone(),
        })?;
        let target = match column_by_casdoor_name(&col.casdoor_name) {
            Some(spec) => spec,
            None => {
                return Err(
                    match REFUSED_USER_FIELDS
                        .iter()
                        .find(|(n, _)| *n == col.casdoor_name)
                    {
                        Some((_, reason)) => MappingError::UnwritableCasdoorField {
                            entry,
                            casdoor_name: col.casdoor_name.clone(),
                            reason,
                        },
                        None => MappingError::UnknownCasdoorField {
                            entry,
                            casdoor_name: col.casdoor_name.clone(),
                        },
                    },
                );
            }
        };
        mapped.push(MappedColumn {
            source,
            target,
            is_hashed: col.is_hashed,
        });
    }
    let key = select_key_index(columns).ok_or(MappingError::UnusableKey {
        entry: 0,
        reason: "the mapping has no columns",
    })?;
    let key_col = mapped.get(key).ok_or(MappingError::UnusableKey {
        entry: key + 1,
        reason: "the mapping has no columns",
    })?;
    if key_col.target.kind != ColumnKind::Text {
        return Err(MappingError::UnusableKey {
            entry: key + 1,
            reason: "its Casdoor column is a flag or a number, shared by many users",
        });
    }
    if matches!(key_col.source, SourceField::Active | SourceField::Avatar) {
        return Err(MappingError::UnusableKey {
            entry: key + 1,
            reason: "its DingTalk field does not identify a person",
        });
    }
    Ok((mapped, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, casdoor: &str, is_key: bool) -> TableColumn {
        TableColumn {
            name: name.into(),
            casdoor_name: casdoor.into(),
            is_key,
            is_hashed: true,
        }
    }

    #[test]
    fn every_writable_column_is_the_snake_case_of_its_field() {
        for spec in WRITABLE_USER_COLUMNS {
            assert_eq!(snake_case(spec.casdoor_name), spec.column);
        }
        assert_eq!(snake_case("IdCardType"), "id_card_type");
        assert_eq!(snake_case("Custom2"), "custom2");
    }

    #[test]
    fn blank_null_and_empty_table_columns_parse_to_nothing() {
        for text in [None, Some(""), Some("  "), Some("null"), Some("[]")] {
            assert_eq!(parse_table_columns(text), Ok(vec![]), "{text:?}");
        }
    }

    #[test]
    fn a_casdoor_saved_entry_parses_and_missing_keys_are_tolerated() {
        let text = r#"[{"name":"userid","type":"string","casdoorName":"Id","isKey":false,"isHashed":true,"values":[]},
                       {"name":"name","casdoorName":"DisplayName","values":null,"isKey":null}]"#;
        let cols = parse_table_columns(Some(text)).unwrap();
        assert_eq!(cols[0], col("userid", "Id", false));
        assert_eq!(
            cols[1],
            TableColumn {
                name: "name".into(),
                casdoor_name: "DisplayName".into(),
                is_key: false,
                is_hashed: false
            }
        );
    }

    #[test]
    fn malformed_table_columns_name_the_entry_and_the_problem() {
        assert!(matches!(
            parse_table_columns(Some("[{")),
            Err(MappingError::NotJson { .. })
        ));
        assert_eq!(
            parse_table_columns(Some(r#"{"name":"userid"}"#)),
            Err(MappingError::NotAnArray { found: "an object" })
        );
        assert_eq!(
            parse_table_columns(Some(r#"[{"name":"userid","casdoorName":"Id"}, 3]"#)),
            Err(MappingError::EntryNotAnObject { entry: 2 })
        );
        assert_eq!(
            parse_table_columns(Some(r#"[{"casdoorName":"Id"}]"#)),
            Err(MappingError::MissingField {
                entry: 1,
                field: "name"
            })
        );
        assert_eq!(
            parse_table_columns(Some(r#"[{"name":"userid","casdoorName":" "}]"#)),
            Err(MappingError::MissingField {
                entry: 1,
                field: "casdoorName"
            })
        );
        assert_eq!(
            parse_table_columns(Some(
                r#"[{"name":"userid","casdoorName":"Id","isKey":"yes"}]"#
            )),
            Err(MappingError::WrongType {
                entry: 1,
                field: "isKey",
                expected: "true or false"
            })
        );
    }

    #[test]
    fn key_is_the_last_is_key_entry() {
        let cols = [
            col("userid", "Id", true),
            col("unionid", "Name", false),
            col("email", "Email", true),
        ];
        assert_eq!(select_key_index(&cols), Some(2));
    }

    #[test]
    fn key_falls_back_to_the_last_source_named_id_then_the_first_entry() {
        let with_id = [
            col("id", "Id", false),
            col("unionid", "Name", false),
            col("id", "ExternalId", false),
        ];
        assert_eq!(select_key_index(&with_id), Some(2));
        let stock = [col("userid", "Id", false), col("unionid", "Name", false)];
        assert_eq!(select_key_index(&stock), Some(0));
        assert_eq!(select_key_index(&[]), None);
    }

    #[test]
    fn unknown_or_unwritable_names_are_refused_with_the_entry() {
        let err = validate_columns(&[col("userid", "Id", false), col("nickname", "Tag", false)]);
        assert_eq!(
            err,
            Err(MappingError::UnknownSource {
                entry: 2,
                name: "nickname".into()
            })
        );
        let err = validate_columns(&[col("userid", "Id", false), col("title", "Groups", false)]);
        assert!(matches!(
            err,
            Err(MappingError::UnwritableCasdoorField { entry: 2, .. })
        ));
        let err = validate_columns(&[col("userid", "Id", false), col("title", "Nope", false)]);
        assert!(matches!(
            err,
            Err(MappingError::UnknownCasdoorField { entry: 2, .. })
        ));
        let err = validate_columns(&[col("userid", "Password", false)]);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("never writes credentials")
        );
    }

    #[test]
    fn a_key_that_cannot_identify_users_is_refused() {
        let err = validate_columns(&[
            col("active", "IsForbidden", true),
            col("userid", "Id", false),
        ]);
        assert!(matches!(
            err,
            Err(MappingError::UnusableKey { entry: 1, .. })
        ));
        let err = validate_columns(&[col("active", "Tag", true)]);
        assert!(matches!(
            err,
            Err(MappingError::UnusableKey { entry: 1, .. })
        ));
        let (cols, key) =
            validate_columns(&[col("userid", "Id", false), col("unionid", "Name", true)]).unwrap();
        assert_eq!(key, 1);
        assert_eq!(cols[key].target.column, "name");
    }
}
