//! DingTalk errors: one classification table for every answer code, and the typed error a failed
//! call ends in.
//!
//! The table decides what the client does with an answer: retry it with back-off, refresh the
//! token and replay once, skip one department (the run becomes incomplete), or stop the run with a
//! message an operator can act on. No error message ever holds the App Secret or an access token:
//! server text is scrubbed before it is stored here.

use std::time::Duration;

use super::endpoint::{Call, Endpoint, Permission};

/// errcode of the `/topapi` family meaning "platform error, see `sub_code`".
pub const ERRCODE_SUB_CODE: i64 = 88;

/// The code that decides what an answer means: `sub_code` (parsed as an integer) when `errcode`
/// is 88, else `errcode`. A non-numeric or missing `sub_code` leaves 88 itself.
pub fn effective_code(errcode: i64, sub_code: Option<&str>) -> i64 {
    if errcode == ERRCODE_SUB_CODE
        && let Some(sub) = sub_code.and_then(|s| s.trim().parse::<i64>().ok())
    {
        return sub;
    }
    errcode
}

/// The class of a new-API error answer (`api.dingtalk.com/v1.0`: an HTTP status with
/// `{"code": "...", "message": "..."}`), by its text code first and its status second.
pub fn classify_open(status: u16, code: &str) -> CodeClass {
    let has = |part: &str| {
        code.to_ascii_lowercase()
            .contains(&part.to_ascii_lowercase())
    };
    if has("InvalidAuthentication") {
        CodeClass::InvalidToken
    } else if has("IpNotInWhiteList") {
        CodeClass::IpNotWhitelisted
    } else if status == 429 || has("Throttling") || has("QpsLimit") || has("RateLimit") {
        CodeClass::Throttled
    } else if has("SystemBusy") || has("ServiceUnavailable") {
        CodeClass::Busy
    } else if matches!(status, 401 | 403) {
        // `Forbidden.AccessDenied.AccessTokenPermissionDenied` and its kin: the app lacks
        // the endpoint's scope.
        CodeClass::MissingPermission
    } else {
        CodeClass::Unexpected
    }
}

/// What an answer code means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    Success,
    /// -1 "系统繁忙": retry with back-off.
    Busy,
    /// The 9000x flow-control family (except 90020): slow down and retry.
    Throttled,
    /// The access token is invalid or expired: refresh and replay once.
    InvalidToken,
    /// 40089 (and 40001 on `/gettoken`): wrong App Key or App Secret.
    BadCredentials,
    /// 60020: this server's IP is not in the app's whitelist.
    IpNotWhitelisted,
    /// 60011: the app lacks the endpoint's permission point.
    MissingPermission,
    /// 90020: the organization's monthly API quota is used up.
    MonthlyQuota,
    /// 60003: the department does not exist (any more).
    DepartmentGone,
    /// 50004: the department is outside the app's contact scope.
    OutOfScope,
    /// Anything else: not retried, stops the run.
    Unexpected,
}

/// What the client does with a [`CodeClass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Done,
    Retry,
    RefreshToken,
    SkipDepartment,
    FailRun,
}

/// The one classification table of answer codes (after [`effective_code`]).
pub fn classify(endpoint: Endpoint, code: i64) -> CodeClass {
    match code {
        0 => CodeClass::Success,
        -1 => CodeClass::Busy,
        90020 => CodeClass::MonthlyQuota,
        90001..=90019 => CodeClass::Throttled,
        // On /gettoken 40001 means "wrong secret"; elsewhere it is a bad or expired token.
        40001 if endpoint == Endpoint::GetToken => CodeClass::BadCredentials,
        40001 | 40014 | 42001 if endpoint != Endpoint::GetToken => CodeClass::InvalidToken,
        40089 => CodeClass::BadCredentials,
        60020 => CodeClass::IpNotWhitelisted,
        60011 => CodeClass::MissingPermission,
        60003 => CodeClass::DepartmentGone,
        50004 => CodeClass::OutOfScope,
        _ => CodeClass::Unexpected,
    }
}

impl CodeClass {
    pub fn disposition(self) -> Disposition {
        match self {
            CodeClass::Success => Disposition::Done,
            CodeClass::Busy | CodeClass::Throttled => Disposition::Retry,
            CodeClass::InvalidToken => Disposition::RefreshToken,
            CodeClass::DepartmentGone | CodeClass::OutOfScope => Disposition::SkipDepartment,
            CodeClass::BadCredentials
            | CodeClass::IpNotWhitelisted
            | CodeClass::MissingPermission
            | CodeClass::MonthlyQuota
            | CodeClass::Unexpected => Disposition::FailRun,
        }
    }
}

/// A failed DingTalk call. `Display` is the operator message: which call, what DingTalk said,
/// what to do. It never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DingTalkError {
    #[error(
        "{call}: DingTalk rejected App Key `{app_key}` or its App Secret (errcode {code}: {errmsg}). \
         Check the syncer's App Key (user field) and App Secret (password field) against the app's \
         credentials page (凭证与基础信息) in the DingTalk developer console."
    )]
    BadCredentials {
        call: Call,
        app_key: String,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: this server's IP address is not in the app's server egress-IP whitelist (errcode \
         {code}: {errmsg}). Add this host's public egress IP under 开发配置 → 安全设置 → 服务器出口IP \
         in the DingTalk developer console."
    )]
    IpNotWhitelisted {
        call: Call,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: the app lacks the permission point {permission} (errcode {code}: {errmsg}). Grant \
         it under 权限管理 in the DingTalk developer console, then publish the app again."
    )]
    MissingPermission {
        call: Call,
        permission: Permission,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: the organization's monthly DingTalk API quota is used up (errcode {code}: \
         {errmsg}). Raise the quota (edition or API package) or wait for next month."
    )]
    MonthlyQuota {
        call: Call,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: DingTalk rejected a freshly fetched access token as well (errcode {code}: \
         {errmsg}). The app may be disabled or its secret rotated; check the app in the DingTalk \
         developer console."
    )]
    TokenRejected {
        call: Call,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: department {dept_id} does not exist (errcode {code}: {errmsg}); it was probably \
         deleted during the run."
    )]
    DepartmentGone {
        call: Call,
        dept_id: i64,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: department {dept_id} is outside the app's contact scope (errcode {code}: \
         {errmsg}). Set the app's 通讯录权限范围 to the whole organization (全部员工) in the DingTalk \
         developer console."
    )]
    OutOfScope {
        call: Call,
        dept_id: i64,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: DingTalk kept throttling the app for {attempts} attempts (errcode {code}: \
         {errmsg}). Lower `dingtalk.qps_per_api`, or find the other program using this App Key."
    )]
    Throttled {
        call: Call,
        code: i64,
        errmsg: String,
        attempts: u32,
    },

    #[error(
        "{call}: DingTalk stayed busy for {attempts} attempts (errcode {code}: {errmsg}); the next \
         run will try again."
    )]
    Busy {
        call: Call,
        code: i64,
        errmsg: String,
        attempts: u32,
    },

    #[error(
        "{call}: HTTP {status} from DingTalk or a proxy in between, {attempts} attempts; the next \
         run will try again."
    )]
    Server {
        call: Call,
        status: u16,
        attempts: u32,
    },

    #[error(
        "{call}: DingTalk answered with its IP-ban signature (more than 10,000 calls per 20 s from \
         this IP) for {attempts} attempts, pausing {pause_secs} s each time. Look for other \
         programs calling DingTalk from this host or NAT."
    )]
    IpBanned {
        call: Call,
        attempts: u32,
        pause_secs: u64,
    },

    #[error(
        "{call}: no answer within {timeout_secs} s, {attempts} attempts. Check the network path to \
         `{}` or raise `dingtalk.request_timeout`.",
        base_setting(.call)
    )]
    Timeout {
        call: Call,
        timeout_secs: u64,
        attempts: u32,
    },

    #[error(
        "{call}: could not reach DingTalk, {attempts} attempts: {detail}. Check DNS, proxy and \
         firewall for `{}`.",
        base_setting(.call)
    )]
    Transport {
        call: Call,
        detail: String,
        attempts: u32,
    },

    #[error("{call}: DingTalk's answer could not be understood, {attempts} attempts: {detail}")]
    Malformed {
        call: Call,
        detail: String,
        attempts: u32,
    },

    #[error(
        "{call}: HTTP {status} from DingTalk. Check that `{}` points at DingTalk's {}.",
        base_setting(.call),
        api_family(.call)
    )]
    HttpStatus { call: Call, status: u16 },

    #[error(
        "{call}: DingTalk answered HTTP {status} `{code}`: {message}. {}",
        open_api_advice(.class, .call, .attempts)
    )]
    OpenApi {
        call: Call,
        status: u16,
        /// DingTalk's text code, e.g. `Forbidden.AccessDenied.AccessTokenPermissionDenied`.
        code: String,
        message: String,
        class: CodeClass,
        attempts: u32,
    },

    #[error(
        "{call}: DingTalk listed more than {pages} pages of leave records; the listing stopped \
         there (the stream catches up with a full run instead)."
    )]
    TooManyPages { call: Call, pages: u64 },

    #[error(
        "{call}: DingTalk refused the call (errcode {code}: {errmsg}). This answer is not expected \
         while reading the directory, so the run stops rather than guess."
    )]
    Api {
        call: Call,
        code: i64,
        errmsg: String,
    },

    #[error(
        "{call}: DingTalk's answer is larger than {limit_bytes} bytes (`dingtalk.max_response_bytes`); \
         it was not read to the end and the run stops. Check that `{}` points at DingTalk \
         without a proxy that rewrites answers; raise the setting only if a real answer is that \
         large.",
        base_setting(.call)
    )]
    ResponseTooLarge { call: Call, limit_bytes: u64 },

    #[error(
        "the DingTalk fetch did not finish within {} (`dingtalk.fetch_timeout`) and was stopped \
         after {calls} API calls. Look for throttling or IP-ban messages in the log; raise \
         `dingtalk.fetch_timeout` only for an organization that really takes that long.",
        crate::config::format_duration(*limit)
    )]
    FetchTimeout { limit: Duration, calls: u64 },

    #[error(
        "the department tree has more than {limit} departments (`dingtalk.max_departments`): the \
         walk stopped. DingTalk (or whatever answers at `dingtalk.api_base`) keeps listing new \
         departments; raise the setting only for an organization that really is that large."
    )]
    TooManyDepartments { limit: usize },

    #[error("invalid DingTalk client configuration: {0}")]
    Config(String),
}

/// The setting naming the base URL a call went to.
fn base_setting(call: &Call) -> &'static str {
    if call.endpoint.is_open_api() {
        "dingtalk.open_api_base"
    } else {
        "dingtalk.api_base"
    }
}

/// The API family a call belongs to, with its public base URL.
fn api_family(call: &Call) -> &'static str {
    if call.endpoint.is_open_api() {
        "new API family (https://api.dingtalk.com)"
    } else {
        "old API family (https://oapi.dingtalk.com)"
    }
}

/// What an operator does about a new-API error answer of `class`.
fn open_api_advice(class: &CodeClass, call: &Call, attempts: &u32) -> String {
    match class {
        CodeClass::MissingPermission => match call.endpoint.permission() {
            Some(permission) => format!(
                "The app lacks the permission point {permission}: grant it under 权限管理 in the \
                 DingTalk developer console, then publish the app again."
            ),
            None => "The app may lack this API's permission point (权限管理 in the DingTalk \
                     developer console)."
                .to_owned(),
        },
        CodeClass::IpNotWhitelisted => {
            "Add this host's public egress IP under 开发配置 → 安全设置 \
                                        → 服务器出口IP in the DingTalk developer console."
                .to_owned()
        }
        CodeClass::InvalidToken => "DingTalk rejected a freshly fetched access token as well; the \
                                    app may be disabled or its secret rotated."
            .to_owned(),
        CodeClass::Throttled => format!(
            "DingTalk kept throttling the app for {attempts} attempts; lower \
             `dingtalk.qps_per_api`, or find the other program using this App Key."
        ),
        CodeClass::Busy => format!("DingTalk stayed busy for {attempts} attempts."),
        _ => format!(
            "This answer is not expected; check that `{}` points at DingTalk \
             (https://api.dingtalk.com).",
            base_setting(call)
        ),
    }
}

impl DingTalkError {
    /// True when the same call could succeed later without anyone changing anything
    /// (throttling, busy, 5xx, timeouts, transport errors, garbled answers, IP ban). The client
    /// has already spent its retry budget on these when it returns them.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DingTalkError::Throttled { .. }
                | DingTalkError::Busy { .. }
                | DingTalkError::Server { .. }
                | DingTalkError::IpBanned { .. }
                | DingTalkError::Timeout { .. }
                | DingTalkError::Transport { .. }
                | DingTalkError::Malformed { .. }
        ) || matches!(
            self,
            DingTalkError::OpenApi {
                class: CodeClass::Busy | CodeClass::Throttled,
                ..
            }
        )
    }

    /// True for the errors that concern one department only (the walk goes on without it).
    pub fn is_department_level(&self) -> bool {
        matches!(
            self,
            DingTalkError::DepartmentGone { .. } | DingTalkError::OutOfScope { .. }
        )
    }

    /// The call that failed, when there was one.
    pub fn call(&self) -> Option<Call> {
        match self {
            DingTalkError::BadCredentials { call, .. }
            | DingTalkError::IpNotWhitelisted { call, .. }
            | DingTalkError::MissingPermission { call, .. }
            | DingTalkError::MonthlyQuota { call, .. }
            | DingTalkError::TokenRejected { call, .. }
            | DingTalkError::DepartmentGone { call, .. }
            | DingTalkError::OutOfScope { call, .. }
            | DingTalkError::Throttled { call, .. }
            | DingTalkError::Busy { call, .. }
            | DingTalkError::Server { call, .. }
            | DingTalkError::IpBanned { call, .. }
            | DingTalkError::Timeout { call, .. }
            | DingTalkError::Transport { call, .. }
            | DingTalkError::Malformed { call, .. }
            | DingTalkError::HttpStatus { call, .. }
            | DingTalkError::Api { call, .. }
            | DingTalkError::OpenApi { call, .. }
            | DingTalkError::TooManyPages { call, .. }
            | DingTalkError::ResponseTooLarge { call, .. } => Some(*call),
            DingTalkError::FetchTimeout { .. }
            | DingTalkError::TooManyDepartments { .. }
            | DingTalkError::Config(_) => None,
        }
    }

    /// DingTalk's effective answer code, when the failure was an answer with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            DingTalkError::BadCredentials { code, .. }
            | DingTalkError::IpNotWhitelisted { code, .. }
            | DingTalkError::MissingPermission { code, .. }
            | DingTalkError::MonthlyQuota { code, .. }
            | DingTalkError::TokenRejected { code, .. }
            | DingTalkError::DepartmentGone { code, .. }
            | DingTalkError::OutOfScope { code, .. }
            | DingTalkError::Throttled { code, .. }
            | DingTalkError::Busy { code, .. }
            | DingTalkError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The missing permission point, for 60011 (and the new API's permission refusals).
    pub fn permission(&self) -> Option<Permission> {
        match self {
            DingTalkError::MissingPermission { permission, .. } => Some(*permission),
            DingTalkError::OpenApi {
                class: CodeClass::MissingPermission,
                call,
                ..
            } => call.endpoint.permission(),
            _ => None,
        }
    }
}

/// One failed attempt, before the retry loop decides what becomes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A JSON answer with a non-zero effective code.
    Code {
        class: CodeClass,
        code: i64,
        errmsg: String,
    },
    /// A new-API JSON error answer: a non-2xx status below 500 with a text `code`.
    Open {
        class: CodeClass,
        status: u16,
        code: String,
        message: String,
    },
    /// HTTP 5xx (any body).
    ServerStatus(u16),
    /// Any other non-2xx status without a DingTalk envelope.
    OtherStatus(u16),
    /// The IP-ban signature: an HTML page, or JSON `{"status": 1111, ...}`.
    IpBan,
    Timeout,
    Transport(String),
    /// A 2xx body that is not the expected JSON.
    Malformed(String),
    /// The body is longer than the configured cap (it was not read to the end).
    TooLarge {
        limit_bytes: u64,
    },
}

impl Failure {
    pub(crate) fn disposition(&self) -> Disposition {
        match self {
            Failure::Code { class, .. } | Failure::Open { class, .. } => class.disposition(),
            Failure::ServerStatus(_)
            | Failure::IpBan
            | Failure::Timeout
            | Failure::Transport(_)
            | Failure::Malformed(_) => Disposition::Retry,
            Failure::OtherStatus(429) => Disposition::Retry,
            // The same request would bring the same oversized answer again.
            Failure::OtherStatus(_) | Failure::TooLarge { .. } => Disposition::FailRun,
        }
    }

    pub(crate) fn is_throttle(&self) -> bool {
        matches!(
            self,
            Failure::Code {
                class: CodeClass::Throttled,
                ..
            } | Failure::Open {
                class: CodeClass::Throttled,
                ..
            } | Failure::OtherStatus(429)
        )
    }

    /// A short label for statistics and debug logs (no server text).
    pub(crate) fn label(&self) -> String {
        match self {
            Failure::Code { code, .. } => format!("errcode {code}"),
            Failure::Open { status, .. } => format!("http {status}"),
            Failure::ServerStatus(s) | Failure::OtherStatus(s) => format!("http {s}"),
            Failure::IpBan => "ip ban".to_owned(),
            Failure::Timeout => "timeout".to_owned(),
            Failure::Transport(_) => "transport".to_owned(),
            Failure::Malformed(_) => "malformed answer".to_owned(),
            Failure::TooLarge { .. } => "answer too large".to_owned(),
        }
    }

    /// The typed error this failure ends the call with.
    pub(crate) fn into_error(
        self,
        call: Call,
        app_key: &str,
        attempts: u32,
        timeout: Duration,
        ip_ban_pause: Duration,
    ) -> DingTalkError {
        let dept_id = call.dept_id.unwrap_or_default();
        match self {
            Failure::Code {
                class,
                code,
                errmsg,
            } => match class {
                CodeClass::BadCredentials => DingTalkError::BadCredentials {
                    call,
                    app_key: app_key.to_owned(),
                    code,
                    errmsg,
                },
                CodeClass::IpNotWhitelisted => {
                    DingTalkError::IpNotWhitelisted { call, code, errmsg }
                }
                CodeClass::MissingPermission => match call.endpoint.permission() {
                    Some(permission) => DingTalkError::MissingPermission {
                        call,
                        permission,
                        code,
                        errmsg,
                    },
                    None => DingTalkError::Api { call, code, errmsg },
                },
                CodeClass::MonthlyQuota => DingTalkError::MonthlyQuota { call, code, errmsg },
                CodeClass::InvalidToken => DingTalkError::TokenRejected { call, code, errmsg },
                CodeClass::DepartmentGone => DingTalkError::DepartmentGone {
                    call,
                    dept_id,
                    code,
                    errmsg,
                },
                CodeClass::OutOfScope => DingTalkError::OutOfScope {
                    call,
                    dept_id,
                    code,
                    errmsg,
                },
                CodeClass::Throttled => DingTalkError::Throttled {
                    call,
                    code,
                    errmsg,
                    attempts,
                },
                CodeClass::Busy => DingTalkError::Busy {
                    call,
                    code,
                    errmsg,
                    attempts,
                },
                CodeClass::Success | CodeClass::Unexpected => {
                    DingTalkError::Api { call, code, errmsg }
                }
            },
            Failure::Open {
                class,
                status,
                code,
                message,
            } => DingTalkError::OpenApi {
                call,
                status,
                code,
                message,
                class,
                attempts,
            },
            Failure::ServerStatus(status) => DingTalkError::Server {
                call,
                status,
                attempts,
            },
            Failure::OtherStatus(429) => DingTalkError::Throttled {
                call,
                code: 429,
                errmsg: "HTTP 429 Too Many Requests".to_owned(),
                attempts,
            },
            Failure::OtherStatus(status) => DingTalkError::HttpStatus { call, status },
            Failure::IpBan => DingTalkError::IpBanned {
                call,
                attempts,
                pause_secs: ip_ban_pause.as_secs(),
            },
            Failure::Timeout => DingTalkError::Timeout {
                call,
                timeout_secs: timeout.as_secs().max(1),
                attempts,
            },
            Failure::Transport(detail) => DingTalkError::Transport {
                call,
                detail,
                attempts,
            },
            Failure::Malformed(detail) => DingTalkError::Malformed {
                call,
                detail,
                attempts,
            },
            Failure::TooLarge { limit_bytes } => {
                DingTalkError::ResponseTooLarge { call, limit_bytes }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_code_looks_inside_88_only() {
        assert_eq!(effective_code(88, Some("90018")), 90018);
        assert_eq!(effective_code(88, Some(" 40014 ")), 40014);
        assert_eq!(effective_code(88, Some("not-a-number")), 88);
        assert_eq!(effective_code(88, None), 88);
        assert_eq!(effective_code(60011, Some("90018")), 60011);
        assert_eq!(effective_code(0, None), 0);
    }

    #[test]
    fn classification_table_matches_the_spec() {
        use CodeClass::*;
        let list = Endpoint::DepartmentListSub;
        let cases: &[(Endpoint, i64, CodeClass, Disposition)] = &[
            (list, 0, Success, Disposition::Done),
            (list, -1, Busy, Disposition::Retry),
            (list, 90001, Throttled, Disposition::Retry),
            (list, 90002, Throttled, Disposition::Retry),
            (list, 90003, Throttled, Disposition::Retry),
            (list, 90004, Throttled, Disposition::Retry),
            (list, 90005, Throttled, Disposition::Retry),
            (list, 90006, Throttled, Disposition::Retry),
            (list, 90007, Throttled, Disposition::Retry),
            (list, 90014, Throttled, Disposition::Retry),
            (list, 90017, Throttled, Disposition::Retry),
            (list, 90018, Throttled, Disposition::Retry),
            (list, 90019, Throttled, Disposition::Retry),
            (list, 90020, MonthlyQuota, Disposition::FailRun),
            (list, 90021, Unexpected, Disposition::FailRun),
            (list, 40001, InvalidToken, Disposition::RefreshToken),
            (list, 40014, InvalidToken, Disposition::RefreshToken),
            (list, 42001, InvalidToken, Disposition::RefreshToken),
            (
                Endpoint::GetToken,
                40001,
                BadCredentials,
                Disposition::FailRun,
            ),
            (Endpoint::GetToken, 40014, Unexpected, Disposition::FailRun),
            (
                Endpoint::GetToken,
                40089,
                BadCredentials,
                Disposition::FailRun,
            ),
            (list, 60020, IpNotWhitelisted, Disposition::FailRun),
            (list, 60011, MissingPermission, Disposition::FailRun),
            (list, 60003, DepartmentGone, Disposition::SkipDepartment),
            (
                Endpoint::UserList,
                50004,
                OutOfScope,
                Disposition::SkipDepartment,
            ),
            (list, 400002, Unexpected, Disposition::FailRun),
            (list, 88, Unexpected, Disposition::FailRun),
        ];
        for &(endpoint, code, class, disposition) in cases {
            assert_eq!(classify(endpoint, code), class, "{endpoint} {code}");
            assert_eq!(class.disposition(), disposition, "{endpoint} {code}");
        }
    }

    #[test]
    fn http_level_failures_are_retryable_except_plain_4xx() {
        for f in [
            Failure::ServerStatus(502),
            Failure::IpBan,
            Failure::Timeout,
            Failure::Transport("refused".into()),
            Failure::Malformed("eof".into()),
            Failure::OtherStatus(429),
        ] {
            assert_eq!(f.disposition(), Disposition::Retry, "{f:?}");
        }
        assert_eq!(
            Failure::OtherStatus(404).disposition(),
            Disposition::FailRun
        );
        assert!(Failure::OtherStatus(429).is_throttle());
    }

    #[test]
    fn new_api_errors_are_classified_by_their_code_then_their_status() {
        use CodeClass::*;
        for (status, code, class) in [
            (400, "InvalidAuthentication", InvalidToken),
            (401, "InvalidAuthentication", InvalidToken),
            (
                403,
                "Forbidden.AccessDenied.AccessTokenPermissionDenied",
                MissingPermission,
            ),
            (401, "Unauthorized", MissingPermission),
            (
                403,
                "Forbidden.AccessDenied.IpNotInWhiteList",
                IpNotWhitelisted,
            ),
            (
                403,
                "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
                Throttled,
            ),
            (429, "anything", Throttled),
            (400, "Throttling.Api", Throttled),
            (400, "SystemBusy", Busy),
            (400, "InvalidParameter", Unexpected),
            (404, "NotFound", Unexpected),
        ] {
            assert_eq!(classify_open(status, code), class, "{status} {code}");
        }
    }

    #[test]
    fn a_missing_leave_records_scope_says_which_and_where_to_grant_it() {
        let call = Call::new(Endpoint::LeaveRecords);
        let denied = Failure::Open {
            class: CodeClass::MissingPermission,
            status: 403,
            code: "Forbidden.AccessDenied.AccessTokenPermissionDenied".into(),
            message: "没有调用该接口的权限".into(),
        };
        let e = denied.into_error(
            call,
            "k",
            1,
            Duration::from_secs(30),
            Duration::from_secs(300),
        );
        let text = e.to_string();
        for part in [
            "GET /v1.0/contact/empLeaveRecords",
            "HTTP 403",
            "AccessTokenPermissionDenied",
            "Contact.Common.Read",
            "权限管理",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert_eq!(e.permission(), Some(Permission::LEAVE_RECORDS));
        assert!(!e.is_retryable());
        let throttled = Failure::Open {
            class: CodeClass::Throttled,
            status: 403,
            code: "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi".into(),
            message: String::new(),
        }
        .into_error(call, "k", 4, Duration::from_secs(30), Duration::ZERO);
        assert!(throttled.is_retryable());
        assert!(throttled.to_string().contains("4 attempts"), "{throttled}");
        let unreachable = Failure::Transport("refused".into()).into_error(
            call,
            "k",
            2,
            Duration::from_secs(30),
            Duration::ZERO,
        );
        assert!(
            unreachable.to_string().contains("dingtalk.open_api_base"),
            "{unreachable}"
        );
        let topapi = Failure::OtherStatus(404).into_error(
            Call::new(Endpoint::UserGet),
            "k",
            1,
            Duration::from_secs(30),
            Duration::ZERO,
        );
        assert!(
            topapi.to_string().contains("`dingtalk.api_base`"),
            "{topapi}"
        );
    }

    fn err(f: Failure, endpoint: Endpoint) -> DingTalkError {
        f.into_error(
            Call::for_department(endpoint, 42),
            "ding-key",
            3,
            Duration::from_secs(30),
            Duration::from_secs(300),
        )
    }

    #[test]
    fn operator_messages_say_what_to_do() {
        let e = err(
            Failure::Code {
                class: CodeClass::MissingPermission,
                code: 60011,
                errmsg: "no permission".into(),
            },
            Endpoint::DepartmentListSub,
        );
        let text = e.to_string();
        assert!(text.contains("qyapi_get_department_list"), "{text}");
        assert!(text.contains("/topapi/v2/department/listsub"), "{text}");
        assert!(text.contains("60011"), "{text}");
        assert!(!e.is_retryable());

        let e = err(
            Failure::Code {
                class: CodeClass::MissingPermission,
                code: 60011,
                errmsg: "no permission".into(),
            },
            Endpoint::UserList,
        );
        assert!(e.to_string().contains("qyapi_get_department_member"));

        let e = err(
            Failure::Code {
                class: CodeClass::BadCredentials,
                code: 40089,
                errmsg: "不合法的corpId或corpSecret".into(),
            },
            Endpoint::GetToken,
        );
        assert!(e.to_string().contains("ding-key"));
        assert!(e.to_string().contains("App Secret"));

        let e = err(
            Failure::Code {
                class: CodeClass::IpNotWhitelisted,
                code: 60020,
                errmsg: "ip".into(),
            },
            Endpoint::UserList,
        );
        assert!(e.to_string().contains("whitelist"));

        let e = err(
            Failure::Code {
                class: CodeClass::OutOfScope,
                code: 50004,
                errmsg: "scope".into(),
            },
            Endpoint::UserList,
        );
        assert!(e.is_department_level());
        assert!(e.to_string().contains("department 42"));

        let e = err(Failure::IpBan, Endpoint::UserList);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("300 s"));

        let e = err(Failure::ServerStatus(502), Endpoint::UserList);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("HTTP 502"));
    }
}
