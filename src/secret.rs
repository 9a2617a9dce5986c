//! Secrets and the redaction of anything that may carry one.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `[redacted]`, and serializing
//! it (for `config show`, JSON output, run history) writes `[redacted]` too. Code that needs the
//! value calls [`Secret::expose`], which makes every use greppable.
//!
//! DingTalk carries the App Secret and the access token in query strings, and reqwest errors embed
//! the request URL, so every URL passes through [`redact_url`] before it reaches a log line or an
//! error message.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The text printed in place of a secret value.
pub const REDACTED: &str = "[redacted]";

/// A secret string (App Secret, access token, password, admin token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Only call this where the value is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Query parameters whose values are secret wherever they appear, compared without case.
/// `ticket` is the single-use Stream-mode ticket in the WebSocket URL.
const SECRET_QUERY_KEYS: &[&str] = &[
    "appsecret",
    "app_secret",
    "secret",
    "pwd",
    "passwd",
    "ticket",
];

/// Whether a query key names a secret: one of [`SECRET_QUERY_KEYS`], or any key holding
/// `password` or `token` (`Password`, `sslpassword`, `access_token`), in any case.
fn is_secret_query_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_QUERY_KEYS.contains(&key.as_str()) || key.contains("password") || key.contains("token")
}

/// Returns `url` with the values of secret query parameters and any password in the userinfo
/// part replaced by `[redacted]`. Works on anything URL-shaped, including text that is not a valid
/// URL, so it is safe to apply to error messages that merely contain a URL.
pub fn redact_url(url: &str) -> String {
    redact_userinfo_password(&redact_query_values(url))
}

/// Applies [`redact_url`] to every URL-like word in a free-form message (for example the
/// `Display` of a reqwest or sqlx error).
pub fn redact_text(text: &str) -> String {
    redact_url(text)
}

fn redact_query_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        out.push(c);
        rest = &rest[c.len_utf8()..];
        // A query key starts after '?' or '&' (or ';' in some DSNs) and is followed by '='.
        if !matches!(c, '?' | '&' | ';') {
            continue;
        }
        let key_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .unwrap_or(rest.len());
        let (key, after_key) = rest.split_at(key_len);
        let Some(value) = after_key.strip_prefix('=') else {
            continue;
        };
        if key.is_empty() || !is_secret_query_key(key) {
            continue;
        }
        out.push_str(key);
        out.push('=');
        out.push_str(REDACTED);
        let end = value
            .find(|c: char| matches!(c, '&' | '#' | ';' | '"' | '\'' | ')') || c.is_whitespace())
            .unwrap_or(value.len());
        rest = &value[end..];
    }
    out
}

fn redact_userinfo_password(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme_end + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push(':');
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_display_and_serialize_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert_eq!(json, "\"[redacted]\"");
        assert_eq!(s.expose(), "hunter2-very-secret");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            secret: Secret,
        }
        let dbg = format!("{:?}", Holder { secret: s });
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn secret_deserializes_from_a_plain_string() {
        let s: Secret = serde_json::from_str("\"abc\"").unwrap_or_default();
        assert_eq!(s.expose(), "abc");
    }

    #[test]
    fn redact_url_hides_token_and_app_secret_in_query() {
        let u = "https://oapi.dingtalk.com/gettoken?appkey=dingkey&appsecret=S3cr3t%2Bx";
        assert_eq!(
            redact_url(u),
            "https://oapi.dingtalk.com/gettoken?appkey=dingkey&appsecret=[redacted]"
        );
        let u = "http://127.0.0.1:1/topapi/v2/user/list?access_token=tok123&x=1";
        assert_eq!(
            redact_url(u),
            "http://127.0.0.1:1/topapi/v2/user/list?access_token=[redacted]&x=1"
        );
    }

    #[test]
    fn redact_url_hides_the_stream_ticket() {
        assert_eq!(
            redact_url("wss://wss-open-connection.dingtalk.com:443/connect?ticket=a%2Bb-1"),
            "wss://wss-open-connection.dingtalk.com:443/connect?ticket=[redacted]"
        );
    }

    #[test]
    fn redact_url_hides_database_passwords() {
        assert_eq!(
            redact_url("mysql://root:pa55w0rd@db:3306/casdoor"),
            "mysql://root:[redacted]@db:3306/casdoor"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@h/db?sslmode=require&password=x"),
            "postgres://u:[redacted]@h/db?sslmode=require&password=[redacted]"
        );
        assert_eq!(
            redact_url("sqlite://syncerd.db?mode=rwc"),
            "sqlite://syncerd.db?mode=rwc"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432"),
            "postgres://postgres@127.0.0.1:5432"
        );
    }

    #[test]
    fn secret_query_keys_are_redacted_in_any_case() {
        assert_eq!(
            redact_url("postgres://h/db?sslmode=require&Password=Pw1&sslpassword=Pw2&PWD=Pw3"),
            "postgres://h/db?sslmode=require&Password=[redacted]&sslpassword=[redacted]&PWD=[redacted]"
        );
        assert_eq!(
            redact_url("x?ACCESS_TOKEN=t1;AppSecret=s1"),
            "x?ACCESS_TOKEN=[redacted];AppSecret=[redacted]"
        );
    }

    #[test]
    fn redact_text_works_inside_error_messages() {
        let msg = "error sending request for url (http://h/gettoken?appkey=k&appsecret=topsecret): connection refused";
        let r = redact_text(msg);
        assert!(!r.contains("topsecret"), "{r}");
        assert!(r.contains("connection refused"));
    }

    #[test]
    fn redaction_does_not_touch_lookalike_words() {
        assert_eq!(redact_url("mytoken=abc"), "mytoken=abc");
        assert_eq!(redact_url("no url here"), "no url here");
        assert_eq!(
            redact_url("中文 ?token=秘密 后"),
            "中文 ?token=[redacted] 后"
        );
    }
}
