//! DingTalk payloads and the fetched directory.
//!
//! Every optional field is an `Option`: a field the app has no permission for is *absent*, which
//! is not the same as empty, and the pipeline must never clear a value because it is absent.
//! Unknown fields are ignored. Department ids are `i64`, userids strings (they may look numeric
//! with leading zeros).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// App Key / App Secret of one DingTalk app (from `syncer.user` / `syncer.password`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub app_key: String,
    pub app_secret: Secret,
}

/// The common envelope of every old-family (`oapi`) answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
    /// Set on `errcode` 88: the real code, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

/// `GET /gettoken` answer (the token is at the top level, not under `result`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("errcode", &self.errcode)
            .field("errmsg", &self.errmsg)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| crate::secret::REDACTED),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// One entry of `POST /topapi/v2/department/listsub` (`result` is a bare array of these) and the
/// `result` of `/topapi/v2/department/get`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentPayload {
    pub dept_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_dept_group: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_add_user: Option<bool>,
}

/// `result` of `POST /topapi/v2/user/list` (and of `/topapi/user/listsimple`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserPage<U> {
    #[serde(default)]
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
    #[serde(default = "Vec::new")]
    pub list: Vec<U>,
}

/// A full DingTalk user profile as `v2/user/list` and `v2/user/get` return it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Org-scoped, immutable id. Empty when the payload had none (a per-record error later).
    #[serde(default)]
    pub userid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hide_mobile: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_place: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept_id_list: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept_order: Option<i64>,
    /// A JSON object serialized into a string by DingTalk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// Epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hired_date: Option<i64>,
    /// Whether the user has activated DingTalk (not an enabled/disabled flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boss: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_account: Option<bool>,
}

/// A department of the fetched tree. The root (id 1) has no parent; its name comes from
/// `department/get` (`listsub` only names children) and is `None` when that call failed (the
/// pipeline then names the root group after the organization). `parent_id` is the department
/// whose listing showed this one, never the payload's claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    pub dept_id: i64,
    pub name: Option<String>,
    pub parent_id: Option<i64>,
}

/// A deduplicated user of the directory with every department it was listed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryUser {
    pub profile: User,
    /// Union of the departments whose member listing contained this user, sorted, no repeats.
    pub seen_in: Vec<i64>,
}

/// Call statistics of one endpoint during one fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub calls: u64,
    pub retries: u64,
    pub throttled: u64,
    pub bytes: u64,
    /// Non-zero effective error codes seen, with their counts.
    pub errors_by_code: BTreeMap<i64, u64>,
    /// Failures without an errcode (`http 502`, `timeout`, `transport`, `malformed answer`,
    /// `ip ban`), with their counts.
    #[serde(default)]
    pub other_errors: BTreeMap<String, u64>,
}

/// Per-endpoint statistics, keyed by endpoint path such as `/topapi/v2/user/list`.
pub type FetchStats = BTreeMap<String, EndpointStats>;

/// Everything one fetch learned about the organization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Every department reached, root first, in breadth-first order.
    pub departments: Vec<Department>,
    /// Every user, once, in a stable order (by userid).
    pub users: Vec<DirectoryUser>,
    /// False when any department could not be walked or listed; then no leaver may be acted on.
    pub complete: bool,
    /// Why the directory is incomplete, one operator-readable line per cause.
    pub incomplete_reasons: Vec<String>,
    pub stats: FetchStats,
}

impl Directory {
    /// Total API calls made, over all endpoints.
    pub fn total_calls(&self) -> u64 {
        self.stats.values().map(|s| s.calls).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_stay_absent_and_unknown_fields_are_ignored() {
        let json = r#"{"userid":"0123","name":"张三","active":true,"dept_id_list":[1,512340001],"brand_new_field":{"x":1}}"#;
        let user: User = serde_json::from_str(json).unwrap_or_default();
        assert_eq!(user.userid, "0123");
        assert_eq!(user.email, None);
        assert_eq!(user.mobile, None);
        assert_eq!(user.active, Some(true));
        assert_eq!(user.dept_id_list, Some(vec![1, 512340001]));
        let back = serde_json::to_string(&user).unwrap_or_default();
        assert!(!back.contains("email"), "{back}");
    }

    #[test]
    fn token_response_debug_hides_the_token() {
        let t = TokenResponse {
            access_token: Some("tok-abcdef".into()),
            ..Default::default()
        };
        assert!(!format!("{t:?}").contains("tok-abcdef"));
    }
}
