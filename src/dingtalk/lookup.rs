//! Looking single users and departments up, for a run that applies an event's hint: DingTalk
//! Stream says "these users / departments changed", and these calls read what they are now.
//!
//! An answer "not found" (60121 for a user, 60003 for a department) is an answer: `Ok(None)`, the
//! object is gone. Anything else that fails (network, throttling after the retries, a missing
//! permission) is an error, and never reads as "gone".

use std::collections::BTreeSet;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use tracing::{Instrument as _, info_span};

use super::client::{CallCounter, CallCtx, Client, StatsRecorder};
use super::endpoint::{Call, Endpoint};
use super::error::DingTalkError;
use super::types::{
    Credentials, Department, DepartmentPayload, Directory, DirectoryUser, FetchStats, User,
};

/// errcode of `topapi/v2/user/get` for a userid the organization does not have (a leaver).
pub const ERRCODE_USER_NOT_FOUND: i64 = 60121;

/// What an event names as changed: DingTalk userids and department ids. A hint to look up,
/// never the truth itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub user_ids: BTreeSet<String>,
    pub dept_ids: BTreeSet<i64>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty() && self.dept_ids.is_empty()
    }

    /// Whether a userid is one of the targets.
    pub fn has_user(&self, userid: &str) -> bool {
        self.user_ids.contains(userid)
    }

    /// Whether a department id (in decimal, as links store it) is one of the targets.
    pub fn has_department(&self, dept_id: &str) -> bool {
        dept_id
            .parse::<i64>()
            .is_ok_and(|id| self.dept_ids.contains(&id))
    }
}

/// A lookup that stopped on an error, naming the object, with every call made by then (they
/// count against the app's API budget).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("looking up {what} failed: {error}")]
pub struct LookupError {
    /// `user "<userid>"` or `department <id>`.
    pub what: String,
    pub error: DingTalkError,
    /// Calls made, the failed ones included.
    pub calls: u64,
}

impl Client {
    /// One user's full record (`POST /topapi/v2/user/get`), `None` when DingTalk answers 60121
    /// (the user left). Counts its calls (the token's included) into `counter`.
    pub async fn get_user(
        &self,
        creds: &Credentials,
        userid: &str,
        counter: &CallCounter,
    ) -> Result<Option<User>, DingTalkError> {
        let stats = StatsRecorder::counting(counter.clone());
        self.user_get(&self.ctx(creds, &stats), userid).await
    }

    /// One department (`POST /topapi/v2/department/get`), `None` when DingTalk answers 60003
    /// (the department was deleted).
    pub async fn get_department(
        &self,
        creds: &Credentials,
        dept_id: i64,
        counter: &CallCounter,
    ) -> Result<Option<DepartmentPayload>, DingTalkError> {
        let stats = StatsRecorder::counting(counter.clone());
        self.department_lookup(&self.ctx(creds, &stats), dept_id)
            .await
    }

    async fn user_get(
        &self,
        ctx: &CallCtx<'_>,
        userid: &str,
    ) -> Result<Option<User>, DingTalkError> {
        let body = serde_json::json!({ "userid": userid });
        let call = Call::new(Endpoint::UserGet);
        match self.execute::<User>(ctx, call, Some(&body)).await {
            // The record is the asked-for user's: a record the planner could not tell apart
            // from "not found" (no userid, or another one) must not make that user a leaver.
            Ok(mut user) if user.userid.is_empty() => {
                user.userid = userid.to_owned();
                Ok(Some(user))
            }
            Ok(user) if user.userid != userid => Err(DingTalkError::Malformed {
                call,
                detail: format!(
                    "asked for userid {userid:?}, the answer is for {:?}",
                    user.userid
                ),
                attempts: 1,
            }),
            Ok(user) => Ok(Some(user)),
            Err(e) if e.code() == Some(ERRCODE_USER_NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn department_lookup(
        &self,
        ctx: &CallCtx<'_>,
        dept_id: i64,
    ) -> Result<Option<DepartmentPayload>, DingTalkError> {
        match self.department_get(ctx, dept_id).await {
            Ok(department) => Ok(Some(department)),
            Err(DingTalkError::DepartmentGone { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Looks every target up (at most `max_concurrency` calls at once) and returns what exists
    /// as a [`Directory`]: the users and departments found. It is `complete`: every target was
    /// answered, so a target missing from it is gone. The first failed lookup stops the others
    /// and fails the whole lookup: nothing is then taken as gone. Every call is counted into
    /// `counter` as it is sent; the whole lookup is bounded by `fetch_timeout`.
    pub async fn lookup_targets(
        &self,
        creds: &Credentials,
        targets: &Targets,
        counter: CallCounter,
    ) -> Result<Directory, LookupError> {
        let stats = StatsRecorder::counting(counter);
        let ctx = self.ctx(creds, &stats);
        let concurrency = self.config().max_concurrency.max(1);
        let fail = |what: String, error: DingTalkError| LookupError {
            what,
            error,
            calls: stats.total_calls(),
        };
        let (ctx, fail) = (&ctx, &fail);
        let lookups = async {
            // Owned ids: a closure over borrowed ones makes the future `Send` only for one
            // lifetime, which a spawned run cannot use.
            let users: Vec<Option<User>> = stream::iter(targets.user_ids.iter().cloned())
                .map(|userid| async move {
                    self.user_get(ctx, &userid)
                        .await
                        .map_err(|e| fail(format!("user {userid:?}"), e))
                })
                .buffered(concurrency)
                .try_collect()
                .await?;
            let departments: Vec<Option<DepartmentPayload>> =
                stream::iter(targets.dept_ids.iter().copied())
                    .map(|dept_id| async move {
                        self.department_lookup(ctx, dept_id)
                            .await
                            .map_err(|e| fail(format!("department {dept_id}"), e))
                    })
                    .buffered(concurrency)
                    .try_collect()
                    .await?;
            Ok::<_, LookupError>((users, departments))
        };
        let span = info_span!("dingtalk_lookup", app_key = %creds.app_key);
        let limit = self.config().fetch_timeout;
        let (users, departments) = match tokio::time::timeout(limit, lookups.instrument(span)).await
        {
            Ok(done) => done?,
            Err(_) => {
                let calls = stats.total_calls();
                let error = DingTalkError::FetchTimeout { limit, calls };
                return Err(fail("the event's targets".to_owned(), error));
            }
        };
        Ok(found_directory(users, departments, stats.snapshot()))
    }
}

/// The users and departments that were found, as a complete directory of the targets.
fn found_directory(
    users: Vec<Option<User>>,
    departments: Vec<Option<DepartmentPayload>>,
    stats: FetchStats,
) -> Directory {
    let users = users
        .into_iter()
        .flatten()
        .map(|profile| DirectoryUser {
            profile,
            seen_in: Vec::new(),
        })
        .collect();
    let departments = departments
        .into_iter()
        .flatten()
        .map(|d| Department {
            dept_id: d.dept_id,
            name: d.name,
            // The root has no parent; DingTalk names it, so no listing is needed.
            parent_id: d
                .parent_id
                .filter(|_| d.dept_id != super::fetch::ROOT_DEPT_ID),
        })
        .collect();
    Directory {
        departments,
        users,
        complete: true,
        incomplete_reasons: Vec::new(),
        stats,
    }
}
