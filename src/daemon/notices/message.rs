//! What a notice says, and when a run deserves one. Pure: values in, values out.
//!
//! Two bodies: syncerd's own JSON (every field of the run that is safe to show, plus a one-line
//! `text` that chat services' incoming webhooks display as it is), and a DingTalk group robot's
//! markdown message. Neither carries a secret: the run's message was redacted when the run
//! recorded it, and is redacted again here.

use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::Finished;
use crate::db::{RunCounts, RunStatus, RunTrigger};
use crate::secret::redact_text;

/// Longest run message a notice carries, in characters.
const MAX_MESSAGE_CHARS: usize = 1_000;

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NoticeKind {
    Failed,
    Held,
    Partial,
    /// A run succeeded after a run of the same kind that failed, was held or was partial.
    Recovered,
}

impl NoticeKind {
    fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Failed => "failed",
            NoticeKind::Held => "held",
            NoticeKind::Partial => "partial",
            NoticeKind::Recovered => "recovered",
        }
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn needs_attention(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Failed | RunStatus::Held | RunStatus::Partial
    )
}

/// The notice a finished run deserves, if any. `previous` is how the run before it of the same
/// kind ended (full runs and event runs are compared among themselves: a small event run that
/// succeeds says nothing about a held full run).
///
/// Failed, held and partial runs are always news, except event runs, which come in bursts: an
/// event run is news only when it ends differently from the event run before it. A run that
/// succeeds after one that needed attention is a recovery. Interrupted runs are not news.
pub(crate) fn notice_kind(
    trigger: RunTrigger,
    status: RunStatus,
    previous: Option<RunStatus>,
) -> Option<NoticeKind> {
    let kind = match status {
        RunStatus::Failed => NoticeKind::Failed,
        RunStatus::Held => NoticeKind::Held,
        RunStatus::Partial => NoticeKind::Partial,
        RunStatus::Succeeded => {
            return previous
                .filter(|p| needs_attention(*p))
                .map(|_| NoticeKind::Recovered);
        }
        RunStatus::Running | RunStatus::Interrupted => return None,
    };
    if trigger == RunTrigger::Event && previous == Some(status) {
        return None;
    }
    Some(kind)
}

/// One notice, as the JSON format sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Notice {
    pub kind: NoticeKind,
    pub syncer: String,
    pub organization: String,
    pub run_id: Option<i64>,
    pub status: RunStatus,
    /// How the run before it of the same kind ended.
    pub previous_status: Option<RunStatus>,
    pub trigger: RunTrigger,
    pub counts: RunCounts,
    pub api_calls: u64,
    pub duration_ms: u64,
    /// The run's operator-facing message (redacted, one line, at most 1,000 characters).
    pub message: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    /// `hostname:pid` of the daemon that ran it.
    pub instance: String,
    /// The notice in one line, for chat webhooks that show a `text` field.
    pub text: String,
}

impl Notice {
    pub(crate) fn new(
        kind: NoticeKind,
        run: &Finished,
        previous_status: Option<RunStatus>,
        instance: &str,
    ) -> Notice {
        let summary = &run.summary;
        let duration = chrono::Duration::from_std(summary.duration).unwrap_or_default();
        let started = run.finished_at - duration;
        let message = summary
            .message
            .as_deref()
            .map(|m| one_line(m, MAX_MESSAGE_CHARS));
        let mut notice = Notice {
            kind,
            syncer: one_line(&run.syncer, MAX_MESSAGE_CHARS),
            organization: one_line(&run.organization, MAX_MESSAGE_CHARS),
            run_id: summary.run_id,
            status: summary.status,
            previous_status,
            trigger: run.trigger,
            counts: summary.counts,
            api_calls: summary.api_calls,
            duration_ms: u64::try_from(summary.duration.as_millis()).unwrap_or(u64::MAX),
            message,
            started_at: rfc3339(started),
            finished_at: rfc3339(run.finished_at),
            instance: instance.to_owned(),
            text: String::new(),
        };
        notice.text = notice.line();
        notice
    }

    /// `schedule run 12 failed` and the like: what happened, without the syncer.
    fn headline(&self) -> String {
        let run = match self.run_id {
            Some(id) => format!("{} run {id}", self.trigger),
            None => format!("{} run", self.trigger),
        };
        match self.kind {
            NoticeKind::Failed => format!("{run} failed"),
            NoticeKind::Held => format!("{run} was held"),
            NoticeKind::Partial => format!("{run} was partial"),
            NoticeKind::Recovered => match self.previous_status {
                Some(previous) => format!("{run} succeeded (the previous one was {previous})"),
                None => format!("{run} succeeded"),
            },
        }
    }

    /// The run's message without the `syncer NAME: ` it starts with (the notice names it).
    fn detail(&self) -> Option<&str> {
        let message = self.message.as_deref()?;
        let prefix = format!("syncer {}: ", self.syncer);
        Some(message.strip_prefix(prefix.as_str()).unwrap_or(message))
    }

    fn line(&self) -> String {
        let message = self.detail().map(|m| format!(": {m}")).unwrap_or_default();
        format!(
            "syncerd: syncer {} ({}) {}{message}",
            self.syncer,
            self.organization,
            self.headline()
        )
    }

    /// The body of the JSON format.
    pub(crate) fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({ "text": self.text }))
    }

    /// The body of a DingTalk group robot: a markdown message. The title is what the
    /// notification shows; it holds "syncerd" for robots secured by a keyword.
    pub(crate) fn dingtalk(&self) -> Value {
        let title = format!("syncerd: {} {}", self.syncer, self.kind);
        let c = &self.counts;
        let mut text = format!(
            "#### syncerd: syncer {} {}\n\n- organization: {}\n- {}\n- {:.1} s, {} DingTalk calls\n\
             - users: {} created, {} updated, {} forbidden, {} deleted\n",
            self.syncer,
            self.kind,
            self.organization,
            self.headline(),
            self.duration_ms as f64 / 1000.0,
            self.api_calls,
            c.created,
            c.updated,
            c.forbidden,
            c.deleted,
        );
        if let Some(detail) = self.detail() {
            text.push_str(&format!("\n> {detail}\n"));
        }
        text.push_str(&format!("\n{} · {}", self.finished_at, self.instance));
        json!({
            "msgtype": "markdown",
            "markdown": { "title": title, "text": text },
        })
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `text` redacted, on one line (so it cannot start a markdown block or forge a line), and at
/// most `max` characters long (and an ellipsis).
pub(super) fn one_line(text: &str, max: usize) -> String {
    let flat: String = redact_text(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        flat.chars().take(max).collect::<String>() + "…"
    } else {
        flat
    }
}

/// The `sign` of a DingTalk group robot with "sign" security: base64 of
/// HMAC-SHA256 keyed with the secret over `"{timestamp_ms}\n{secret}"`.
pub(crate) fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    // HMAC takes a key of any length, so this never fails; an empty MAC would only be refused.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `url` with DingTalk's `timestamp` and `sign` query parameters added (form-encoded, as the
/// robot expects: `+` `/` `=` escaped).
pub(crate) fn dingtalk_signed_url(
    url: &reqwest::Url,
    secret: &str,
    timestamp_ms: i64,
) -> reqwest::Url {
    let mut url = url.clone();
    url.query_pairs_mut()
        .append_pair("timestamp", &timestamp_ms.to_string())
        .append_pair("sign", &dingtalk_sign(secret, timestamp_ms));
    url
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::daemon::RunSummary;

    use RunStatus::{Failed, Held, Interrupted, Partial, Running, Succeeded};

    #[test]
    fn full_runs_that_need_attention_are_always_news_and_a_success_after_them_is_a_recovery() {
        for trigger in [
            RunTrigger::Schedule,
            RunTrigger::Manual,
            RunTrigger::Startup,
            RunTrigger::Catchup,
        ] {
            for previous in [
                None,
                Some(Succeeded),
                Some(Failed),
                Some(Held),
                Some(Partial),
            ] {
                assert_eq!(
                    notice_kind(trigger, Failed, previous),
                    Some(NoticeKind::Failed)
                );
                assert_eq!(notice_kind(trigger, Held, previous), Some(NoticeKind::Held));
                assert_eq!(
                    notice_kind(trigger, Partial, previous),
                    Some(NoticeKind::Partial)
                );
                assert_eq!(notice_kind(trigger, Interrupted, previous), None);
                assert_eq!(notice_kind(trigger, Running, previous), None);
            }
            for (previous, expected) in [
                (None, None),
                (Some(Succeeded), None),
                (Some(Failed), Some(NoticeKind::Recovered)),
                (Some(Held), Some(NoticeKind::Recovered)),
                (Some(Partial), Some(NoticeKind::Recovered)),
            ] {
                assert_eq!(notice_kind(trigger, Succeeded, previous), expected);
            }
        }
    }

    #[test]
    fn event_runs_are_news_only_when_their_outcome_changes() {
        let event = RunTrigger::Event;
        assert_eq!(notice_kind(event, Failed, None), Some(NoticeKind::Failed));
        assert_eq!(
            notice_kind(event, Failed, Some(Succeeded)),
            Some(NoticeKind::Failed)
        );
        assert_eq!(notice_kind(event, Failed, Some(Failed)), None);
        assert_eq!(
            notice_kind(event, Held, Some(Failed)),
            Some(NoticeKind::Held)
        );
        assert_eq!(notice_kind(event, Held, Some(Held)), None);
        assert_eq!(notice_kind(event, Partial, Some(Partial)), None);
        assert_eq!(
            notice_kind(event, Succeeded, Some(Failed)),
            Some(NoticeKind::Recovered)
        );
        assert_eq!(notice_kind(event, Succeeded, Some(Succeeded)), None);
    }

    fn finished(status: RunStatus, message: &str) -> Finished {
        Finished {
            syncer: "dt".into(),
            organization: "acme".into(),
            trigger: RunTrigger::Schedule,
            summary: RunSummary {
                run_id: Some(12),
                counts: RunCounts {
                    created: 3,
                    forbidden: 1,
                    ..RunCounts::default()
                },
                api_calls: 7,
                ..RunSummary::bare(status, Duration::from_millis(1500), Some(message.into()))
            },
            finished_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_json_body_names_the_run_and_carries_no_secret() {
        let run = finished(
            Failed,
            "syncer dt: gettoken failed for http://h/gettoken?appkey=k&appsecret=TopSecret1\nline 2",
        );
        let body = Notice::new(NoticeKind::Failed, &run, Some(Succeeded), "host:42").json();
        assert_eq!(body["kind"], "failed");
        assert_eq!(body["syncer"], "dt");
        assert_eq!(body["organization"], "acme");
        assert_eq!(body["run_id"], 12);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["previous_status"], "succeeded");
        assert_eq!(body["trigger"], "schedule");
        assert_eq!(body["counts"]["created"], 3);
        assert_eq!(body["api_calls"], 7);
        assert_eq!(body["duration_ms"], 1500);
        assert_eq!(body["started_at"], "2026-01-02T03:04:04.178Z");
        assert_eq!(body["finished_at"], "2026-01-02T03:04:05.678Z");
        assert_eq!(body["instance"], "host:42");
        let text = body.to_string();
        assert!(!text.contains("TopSecret1"), "{text}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("syncer dt: gettoken"), "{message}");
        assert!(
            message.ends_with("appsecret=[redacted] line 2"),
            "{message}"
        );
        assert!(
            body["text"]
                .as_str()
                .unwrap_or_default()
                .starts_with("syncerd: syncer dt (acme) schedule run 12 failed: gettoken failed"),
            "{body}"
        );
    }

    #[test]
    fn the_dingtalk_body_is_a_markdown_message_with_a_keyword_title() {
        let run = finished(Succeeded, "done");
        let body = Notice::new(NoticeKind::Recovered, &run, Some(Held), "host:42").dingtalk();
        assert_eq!(body["msgtype"], "markdown");
        assert_eq!(body["markdown"]["title"], "syncerd: dt recovered");
        let text = body["markdown"]["text"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("#### syncerd: syncer dt recovered\n\n- organization: acme\n"),
            "{text}"
        );
        assert!(
            text.contains("- schedule run 12 succeeded (the previous one was held)\n"),
            "{text}"
        );
        assert!(text.contains("- users: 3 created, 0 updated, 1 forbidden, 0 deleted\n"));
        assert!(text.contains("\n> done\n"), "{text}");
    }

    #[test]
    fn long_messages_are_cut() {
        let run = finished(Failed, &"x".repeat(5_000));
        let notice = Notice::new(NoticeKind::Failed, &run, None, "h:1");
        let message = notice.message.unwrap_or_default();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn the_dingtalk_signature_matches_an_independent_computation() {
        // Computed with Python 3's standard library, independently of this code:
        //   import hmac, hashlib, base64, urllib.parse
        //   secret = 'SEC0123456789abcdef-test'; ts = '1700000000125'
        //   d = hmac.new(secret.encode(), (ts + '\n' + secret).encode(), hashlib.sha256).digest()
        //   base64.b64encode(d).decode()   -> 'hKnmvDsKutDH/Lk5v20z+qKWW7fnh46c7BWpBTr0WxE='
        //   urllib.parse.quote_plus(...)   -> 'hKnmvDsKutDH%2FLk5v20z%2BqKWW7fnh46c7BWpBTr0WxE%3D'
        let secret = "SEC0123456789abcdef-test";
        assert_eq!(
            dingtalk_sign(secret, 1_700_000_000_125),
            "hKnmvDsKutDH/Lk5v20z+qKWW7fnh46c7BWpBTr0WxE="
        );
        let url = reqwest::Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            dingtalk_signed_url(&url, secret, 1_700_000_000_125).as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1700000000125\
             &sign=hKnmvDsKutDH%2FLk5v20z%2BqKWW7fnh46c7BWpBTr0WxE%3D"
        );
    }
}
