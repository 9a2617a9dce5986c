//! `check`: a preflight ("Test Connection", done properly) that proves the credentials, both
//! permission points a sync needs, and whether the two field permissions are granted.

use std::fmt::Write as _;

use serde::Serialize;

use super::client::{Client, StatsRecorder};
use super::endpoint::{EMAIL_FIELD_PERMISSION, MOBILE_FIELD_PERMISSION};
use super::error::DingTalkError;
use super::fetch::ROOT_DEPT_ID;
use super::types::{Credentials, User};

/// Departments tried, at most, when looking for one with members to sample.
const MAX_SAMPLE_DEPARTMENTS: usize = 10;

/// How one step of the check went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepOutcome {
    Ok {
        detail: String,
    },
    Failed {
        /// The operator message (what failed and what to do).
        message: String,
        /// DingTalk's effective answer code, when there was one.
        code: Option<i64>,
        /// The permission point the failure means is missing, e.g. `qyapi_get_department_list`.
        permission: Option<String>,
    },
    Skipped {
        reason: String,
    },
}

/// One step of the check: what was tried and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckStep {
    pub name: String,
    pub outcome: StepOutcome,
}

impl CheckStep {
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, StepOutcome::Ok { .. })
    }

    fn failed(name: &str, error: &DingTalkError) -> Self {
        Self {
            name: name.to_owned(),
            outcome: StepOutcome::Failed {
                message: error.to_string(),
                code: error.code(),
                permission: error.permission().map(|p| p.code.to_owned()),
            },
        }
    }
}

/// Which optional fields came back in the sampled users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldSample {
    pub department: i64,
    pub users: usize,
    /// Sampled users with a `mobile` (needs 企业员工手机号信息).
    pub with_mobile: usize,
    /// Sampled users with an `email` or `org_email` (needs 邮箱等个人信息).
    pub with_email: usize,
}

impl FieldSample {
    pub fn mobile_returned(&self) -> bool {
        self.with_mobile > 0
    }

    pub fn email_returned(&self) -> bool {
        self.with_email > 0
    }
}

/// The result of [`Client::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub app_key: String,
    pub api_base: String,
    pub steps: Vec<CheckStep>,
    /// Present when some users could be read.
    pub fields: Option<FieldSample>,
}

pub const STEP_TOKEN: &str = "access token (GET /gettoken)";
pub const STEP_DEPARTMENTS: &str =
    "list departments (POST /topapi/v2/department/listsub, needs qyapi_get_department_list)";
pub const STEP_USERS: &str =
    "list users (POST /topapi/v2/user/list, needs qyapi_get_department_member)";

impl CheckReport {
    /// True when a sync can run: a token, the department list and the user list all work.
    /// Missing field permissions do not block a sync (the fields are then absent).
    pub fn can_sync(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(CheckStep::is_ok)
    }

    /// The step with this name.
    pub fn step(&self, name: &str) -> Option<&CheckStep> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// A multi-line plain-text report for the CLI.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "DingTalk check of app key {} at {}",
            self.app_key, self.api_base
        );
        for step in &self.steps {
            match &step.outcome {
                StepOutcome::Ok { detail } => {
                    let _ = writeln!(out, "  [ok]      {}: {detail}", step.name);
                }
                StepOutcome::Failed {
                    message,
                    permission,
                    ..
                } => {
                    let _ = writeln!(out, "  [FAILED]  {}", step.name);
                    let _ = writeln!(out, "            {message}");
                    if let Some(p) = permission {
                        let _ = writeln!(out, "            missing permission point: {p}");
                    }
                }
                StepOutcome::Skipped { reason } => {
                    let _ = writeln!(out, "  [skipped] {}: {reason}", step.name);
                }
            }
        }
        if let Some(f) = &self.fields {
            let field_line = |out: &mut String, what: &str, count: usize, permission: &str| {
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "  [ok]      {what}: returned for {count} of {} sampled users (field \
                         permission {permission} granted)",
                        f.users
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "  [warn]    {what}: absent from all {} sampled users of department {}; \
                         grant the field permission {permission} unless nobody has one",
                        f.users, f.department
                    );
                }
            };
            field_line(&mut out, "mobile", f.with_mobile, MOBILE_FIELD_PERMISSION);
            field_line(&mut out, "email", f.with_email, EMAIL_FIELD_PERMISSION);
        }
        if self.can_sync() {
            let _ = writeln!(out, "result: OK, this app can sync the directory");
        } else {
            let _ = writeln!(
                out,
                "result: cannot sync; fix the failed steps above and run the check again"
            );
        }
        out
    }
}

impl Client {
    /// Checks the credentials and permissions a sync needs, step by step, without stopping at
    /// the first failure where later steps still tell something.
    pub async fn check(&self, creds: &Credentials) -> CheckReport {
        let stats = StatsRecorder::default();
        let ctx = self.ctx(creds, &stats);
        let mut report = CheckReport {
            app_key: creds.app_key.clone(),
            api_base: crate::secret::redact_url(&self.config().api_base),
            steps: Vec::new(),
            fields: None,
        };

        if let Err(e) = self.access_token(&ctx).await {
            report.steps.push(CheckStep::failed(STEP_TOKEN, &e));
            for name in [STEP_DEPARTMENTS, STEP_USERS] {
                report.steps.push(CheckStep {
                    name: name.to_owned(),
                    outcome: StepOutcome::Skipped {
                        reason: "needs an access token".to_owned(),
                    },
                });
            }
            return report;
        }
        report.steps.push(CheckStep {
            name: STEP_TOKEN.to_owned(),
            outcome: StepOutcome::Ok {
                detail: "obtained".to_owned(),
            },
        });

        let children = match self.list_sub(&ctx, ROOT_DEPT_ID).await {
            Ok(children) => {
                report.steps.push(CheckStep {
                    name: STEP_DEPARTMENTS.to_owned(),
                    outcome: StepOutcome::Ok {
                        detail: format!("{} departments directly under the root", children.len()),
                    },
                });
                children
            }
            Err(e) => {
                report.steps.push(CheckStep::failed(STEP_DEPARTMENTS, &e));
                Vec::new()
            }
        };

        // Sample the root's members, or those of the first department that has any.
        let candidates = std::iter::once(ROOT_DEPT_ID).chain(
            children
                .iter()
                .map(|c| c.dept_id)
                .filter(|id| *id > 0)
                .take(MAX_SAMPLE_DEPARTMENTS - 1),
        );
        let mut users_step = None;
        for dept_id in candidates {
            match self.user_page(&ctx, dept_id, 0).await {
                Ok(page) if page.list.is_empty() => {
                    users_step.get_or_insert(CheckStep {
                        name: STEP_USERS.to_owned(),
                        outcome: StepOutcome::Ok {
                            detail: "readable, but the sampled departments have no members"
                                .to_owned(),
                        },
                    });
                }
                Ok(page) => {
                    report.fields = Some(sample_fields(dept_id, &page.list));
                    users_step = Some(CheckStep {
                        name: STEP_USERS.to_owned(),
                        outcome: StepOutcome::Ok {
                            detail: format!(
                                "read {} users of department {dept_id}",
                                page.list.len()
                            ),
                        },
                    });
                    break;
                }
                Err(e) => {
                    users_step = Some(CheckStep::failed(STEP_USERS, &e));
                    break;
                }
            }
        }
        report.steps.push(users_step.unwrap_or_else(|| CheckStep {
            name: STEP_USERS.to_owned(),
            outcome: StepOutcome::Skipped {
                reason: "no department to sample".to_owned(),
            },
        }));
        tracing::info!(
            app_key = %creds.app_key,
            can_sync = report.can_sync(),
            calls = stats.total_calls(),
            "DingTalk check finished"
        );
        report
    }
}

fn sample_fields(department: i64, users: &[User]) -> FieldSample {
    FieldSample {
        department,
        users: users.len(),
        with_mobile: users.iter().filter(|u| u.mobile.is_some()).count(),
        with_email: users
            .iter()
            .filter(|u| u.email.is_some() || u.org_email.is_some())
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> CheckStep {
        CheckStep {
            name: name.to_owned(),
            outcome: StepOutcome::Ok {
                detail: "fine".to_owned(),
            },
        }
    }

    #[test]
    fn can_sync_needs_every_step_ok_and_render_names_the_permission() {
        let mut report = CheckReport {
            app_key: "k".into(),
            api_base: "http://x".into(),
            steps: vec![ok(STEP_TOKEN), ok(STEP_DEPARTMENTS), ok(STEP_USERS)],
            fields: Some(FieldSample {
                department: 1,
                users: 10,
                with_mobile: 0,
                with_email: 3,
            }),
        };
        assert!(report.can_sync());
        let text = report.render();
        assert!(text.contains(MOBILE_FIELD_PERMISSION), "{text}");
        assert!(text.contains("[warn]"), "{text}");
        assert!(text.contains("result: OK"), "{text}");

        report.steps[2] = CheckStep {
            name: STEP_USERS.into(),
            outcome: StepOutcome::Failed {
                message: "no permission".into(),
                code: Some(60011),
                permission: Some("qyapi_get_department_member".into()),
            },
        };
        assert!(!report.can_sync());
        let text = report.render();
        assert!(text.contains("[FAILED]"), "{text}");
        assert!(text.contains("qyapi_get_department_member"), "{text}");
        assert!(text.contains("cannot sync"), "{text}");
    }
}
