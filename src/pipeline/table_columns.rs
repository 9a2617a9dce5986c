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
        "syncer.table_columns entry #{entry}: `{casdoor_name}` is not a Casdoor user field syncerd can write; use the Go field name of one of: {}",
        accepted_casdoor_names()
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

/// The `casdoorName`s a mapping may target, comma-separated, for error messages.
pub fn accepted_casdoor_names() -> String {
    WRITABLE_USER_COLUMNS
        .iter()
        .map(|c| c.casdoor_name)
        .collect::<Vec<_>>()
        .join(", ")
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

/// The writable user columns, with their MySQL sizes in Casdoor's `user` DDL (the one
/// `syncerd migrate` creates, in `migrations/src/casdoor.rs`). No privilege flag is here: a
/// DingTalk field must never make anyone an administrator.
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
    text("AvatarType", "avatar_type", 100),
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
    int("Ranking", "ranking"),
    flag("IsDefaultAvatar", "is_default_avatar"),
    flag("IsForbidden", "is_forbidden"),
    flag("EmailVerified", "email_verified"),
    flag("IsVerified", "is_verified"),
    text("SignupApplication", "signup_application", 100),
    text("CreatedIp", "created_ip", 100),
    text("PreferredMfaType", "preferred_mfa_type", 100),
    text("Invitation", "invitation", 100),
    text("InvitationCode", "invitation_code", 100),
    text("Ldap", "ldap", 100),
    int("UidNumber", "uid_number"),
];

/// Fields Casdoor's UI offers that Casdoor's DingTalk syncer ignores when it maps a user: a
/// mapping naming them still runs, they are left out, and each run warns once.
pub const IGNORED_USER_FIELDS: &[&str] = &["Owner", "Currency", "BalanceCurrency", "Groups"];

/// The Casdoor fields whose value Casdoor's syncer hash renders (its `getMapFromOriginalUser`);
/// every other field of a hashed column contributes `''` to the hash, whatever its value. Only
/// with the same holes does a row syncerd wrote look in sync to Casdoor's own syncer.
pub const CASDOOR_HASHED_FIELDS: &[&str] = &[
    "Id",
    "Name",
    "DisplayName",
    "Avatar",
    "Email",
    "Phone",
    "Location",
    "Affiliation",
    "Title",
    "IdCardType",
    "IdCard",
    "Homepage",
    "Bio",
    "Tag",
    "Region",
    "Language",
    "Gender",
    "Birthday",
    "Education",
    "Score",
    "Ranking",
    "IsDefaultAvatar",
    "IsForbidden",
    "CreatedIp",
    "PreferredMfaType",
    "SignupApplication",
];

/// Casdoor user fields that exist but that a DingTalk mapping must not target, and why.
const REFUSED_USER_FIELDS: &[(&str, &str)] = &[
    ("Password", "syncerd never writes credentials"),
    ("PasswordSalt", "syncerd never writes credentials"),
    ("PasswordType", "syncerd never writes credentials"),
    ("Hash", "syncerd computes the content hash itself"),
    ("PreHash", "syncerd computes the content hash itself"),
    (
        "IsAdmin",
        "a privilege flag; a DingTalk field must never grant administrator rights",
    ),
    (
        "IsGlobalAdmin",
        "a privilege flag; a DingTalk field must never grant administrator rights",
    ),
    (
        "Karma",
        "Casdoor's syncer never writes it on insert and zeroes it on update",
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
    (
        "NeedUpdatePassword",
        "sign-in security state, not directory data",
    ),
    ("MfaPhoneEnabled", "a sign-in security setting"),
    ("MfaEmailEnabled", "a sign-in security setting"),
    ("MfaRadiusEnabled", "a sign-in security setting"),
    ("MfaPushEnabled", "a sign-in security setting"),
    ("IpWhitelist", "a sign-in security setting"),
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

/// Casdoor's key rule: the last entry with `isKey`; else the last whose source name is `id`;
/// else the first. `None` only for an empty list.
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

/// A validated `table_columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedColumns {
    /// The columns written, in `table_columns` order; ignored fields are left out.
    pub columns: Vec<MappedColumn>,
    /// Position of the key column in `columns`.
    pub key: usize,
    /// The ignored fields ([`IGNORED_USER_FIELDS`]) the mapping names, in order, once each.
    pub ignored: Vec<&'static str>,
    /// Casdoor's hash recipe: one slot per hashed entry, in `table_columns` order, holding the
    /// column whose value is hashed there, or `None` where Casdoor hashes `''`.
    pub hash_slots: Vec<Option<&'static ColumnSpec>>,
}

/// Validates parsed columns.
pub fn validate_columns(columns: &[TableColumn]) -> Result<ValidatedColumns, MappingError> {
    let mut mapped = Vec::with_capacity(columns.len());
    // Per table entry: its written column, `None` for an ignored field.
    let mut targets: Vec<Option<&'static ColumnSpec>> = Vec::with_capacity(columns.len());
    let mut ignored: Vec<&'static str> = Vec::new();
    for (i, col) in columns.iter().enumerate() {
        let entry = i + 1;
        let source = SourceField::parse(&col.name).ok_or_else(|| MappingError::UnknownSource {
            entry,
            name: col.name.clone(),
        })?;
        if let Some(field) = IGNORED_USER_FIELDS.iter().find(|f| **f == col.casdoor_name) {
            if !ignored.contains(field) {
                ignored.push(field);
            }
            targets.push(None);
            continue;
        }
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
        targets.push(Some(target));
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
    if targets.get(key).copied().flatten().is_none() {
        return Err(MappingError::UnusableKey {
            entry: key + 1,
            reason: "Casdoor ignores its field",
        });
    }
    // The key's position among the written columns: the written entries before it.
    let mapped_key = targets.iter().take(key).filter(|t| t.is_some()).count();
    let key_col = mapped.get(mapped_key).ok_or(MappingError::UnusableKey {
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
    // Casdoor renders a user into a map keyed by DingTalk field name, so a hashed entry reads
    // the field of the last entry with its DingTalk name; fields its renderer leaves out are ''.
    let hash_slots = columns
        .iter()
        .filter(|c| c.is_hashed)
        .map(|c| {
            let last = columns.iter().rposition(|o| o.name == c.name)?;
            let target = targets.get(last).copied().flatten()?;
            CASDOOR_HASHED_FIELDS
                .contains(&target.casdoor_name)
                .then_some(target)
        })
        .collect();
    Ok(ValidatedColumns {
        columns: mapped,
        key: mapped_key,
        ignored,
        hash_slots,
    })
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
        let err = validate_columns(&[col("userid", "Id", false), col("title", "Hash", false)]);
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
        let v =
            validate_columns(&[col("userid", "Id", false), col("unionid", "Name", true)]).unwrap();
        assert_eq!(v.key, 1);
        assert_eq!(v.columns[v.key].target.column, "name");
        let err = validate_columns(&[col("userid", "Id", false), col("title", "Owner", true)]);
        assert!(matches!(
            err,
            Err(MappingError::UnusableKey { entry: 2, .. })
        ));
    }

    #[test]
    fn privilege_flags_and_karma_are_refused_with_their_reason() {
        for (field, reason) in [
            ("IsAdmin", "privilege flag"),
            ("IsGlobalAdmin", "privilege flag"),
            ("Karma", "zeroes it on update"),
        ] {
            let err = validate_columns(&[col("userid", "Id", false), col("active", field, false)])
                .unwrap_err();
            assert!(
                matches!(&err, MappingError::UnwritableCasdoorField { entry: 2, casdoor_name, .. } if casdoor_name == field),
                "{err}"
            );
            assert!(err.to_string().contains(reason), "{err}");
            assert!(column_by_casdoor_name(field).is_none());
        }
        assert!(
            WRITABLE_USER_COLUMNS
                .iter()
                .all(|c| !c.column.starts_with("is_") || !c.column.contains("admin"))
        );
    }

    #[test]
    fn fields_casdoor_ignores_are_left_out_and_listed_once() {
        let v = validate_columns(&[
            col("userid", "Id", false),
            col("title", "Groups", false),
            col("name", "Owner", true),
            col("email", "Currency", false),
            col("mobile", "BalanceCurrency", false),
            col("avatar", "Groups", false),
        ]);
        // The key may not be an ignored field; move it back to Id.
        assert!(matches!(v, Err(MappingError::UnusableKey { entry: 3, .. })));
        let v = validate_columns(&[
            col("userid", "Id", false),
            col("title", "Groups", false),
            col("name", "Owner", false),
            col("email", "Currency", false),
            col("mobile", "BalanceCurrency", false),
            col("avatar", "Groups", false),
        ])
        .unwrap();
        assert_eq!(v.columns.len(), 1);
        assert_eq!(v.key, 0);
        assert_eq!(
            v.ignored,
            ["Groups", "Owner", "Currency", "BalanceCurrency"]
        );
        // Ignored hashed entries still take their place in the hash, as ''.
        assert_eq!(v.hash_slots.len(), 6);
        assert!(v.hash_slots[1..].iter().all(Option::is_none));
    }

    #[test]
    fn fields_casdoors_ui_offers_are_writable_with_casdoors_column_types() {
        let expected = [
            (
                "AvatarType",
                "avatar_type",
                ColumnKind::Text,
                Limit::Chars(100),
            ),
            (
                "SignupApplication",
                "signup_application",
                ColumnKind::Text,
                Limit::Chars(100),
            ),
            (
                "CreatedIp",
                "created_ip",
                ColumnKind::Text,
                Limit::Chars(100),
            ),
            ("UidNumber", "uid_number", ColumnKind::Int, Limit::None),
            (
                "IsDefaultAvatar",
                "is_default_avatar",
                ColumnKind::Bool,
                Limit::None,
            ),
            ("Ldap", "ldap", ColumnKind::Text, Limit::Chars(100)),
            (
                "Invitation",
                "invitation",
                ColumnKind::Text,
                Limit::Chars(100),
            ),
            (
                "InvitationCode",
                "invitation_code",
                ColumnKind::Text,
                Limit::Chars(100),
            ),
            (
                "PreferredMfaType",
                "preferred_mfa_type",
                ColumnKind::Text,
                Limit::Chars(100),
            ),
        ];
        for (field, column, kind, limit) in expected {
            let spec = column_by_casdoor_name(field).unwrap_or_else(|| panic!("{field}"));
            assert_eq!((spec.column, spec.kind, spec.limit), (column, kind, limit));
        }
    }

    #[test]
    fn an_unknown_field_is_named_with_the_accepted_ones() {
        let err = validate_columns(&[col("userid", "Id", false), col("title", "Nickname", false)])
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`Nickname`"), "{text}");
        for spec in WRITABLE_USER_COLUMNS {
            assert!(text.contains(spec.casdoor_name), "{text}");
        }
    }

    #[test]
    fn a_hashed_entry_reads_the_field_of_the_last_entry_with_its_dingtalk_name() {
        // Casdoor keys its rendered user by DingTalk field name: `userid` hashes Tag's value in
        // both slots, and FirstName (not rendered by Casdoor) hashes as ''.
        let v = validate_columns(&[
            col("userid", "Id", false),
            col("name", "FirstName", false),
            col("userid", "Tag", false),
        ])
        .unwrap();
        let slots: Vec<Option<&str>> = v.hash_slots.iter().map(|s| s.map(|c| c.column)).collect();
        assert_eq!(slots, [Some("tag"), None, Some("tag")]);
    }
}
