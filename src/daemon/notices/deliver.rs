//! Sending a notice: one POST per attempt, bounded in time and in the answer read, repeated
//! where repeating may help. The webhook URL is a secret: messages show its scheme and host
//! only, and transport errors lose the URL before they are shown.

use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;

use super::message::{Notice, dingtalk_signed_url, one_line};
use crate::config::{NotifyFormat, NotifySettings};
use crate::dingtalk::client::describe_reqwest_error;
use crate::secret::Secret;

/// Largest answer read from the webhook; a robot answers a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest DingTalk `errmsg` shown.
const MAX_ERRMSG_CHARS: usize = 200;
/// DingTalk's "sent too fast" (over 20 messages a minute): worth another try.
const DINGTALK_TOO_FAST: i64 = 130_101;

/// Why one attempt failed. No variant holds the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("no answer within {0:?} (notify.timeout)")]
    Timeout(Duration),
    #[error("it could not be reached: {0}")]
    Transport(String),
    #[error("it answered HTTP {0}")]
    Status(u16),
    #[error("the robot refused it: errcode {code}, {message}")]
    Refused { code: i64, message: String },
    #[error("its answer is not a DingTalk robot's ({0}); is notify.format right?")]
    NotARobot(&'static str),
}

impl DeliveryError {
    /// Whether another attempt may succeed: no answer, overload, or DingTalk's rate limit.
    /// A refusal (bad token, signature or keyword, 4xx) stays a refusal.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            DeliveryError::Timeout(_) | DeliveryError::Transport(_) => true,
            DeliveryError::Status(status) => *status == 429 || *status >= 500,
            DeliveryError::Refused { code, .. } => *code == DINGTALK_TOO_FAST,
            DeliveryError::NotARobot(_) => false,
        }
    }
}

/// Where notices go, as configured in `[notify]`.
pub(crate) struct Target {
    url: reqwest::Url,
    /// `scheme://host[:port]`: all of the URL a message may show.
    pub shown: String,
    format: NotifyFormat,
    secret: Option<Secret>,
    timeout: Duration,
    retries: u32,
    client: reqwest::Client,
}

impl Target {
    /// The target of `settings`; `Ok(None)` while `notify.webhook_url` is unset.
    pub(crate) fn new(settings: &NotifySettings) -> Result<Option<Target>, String> {
        let Some(url) = &settings.webhook_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url.expose().trim())
            .map_err(|_| "notify.webhook_url is not a URL".to_owned())?;
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            // A redirect would carry the token in the URL to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("syncerd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                format!(
                    "cannot build the HTTP client: {}",
                    describe_reqwest_error(e)
                )
            })?;
        Ok(Some(Target {
            shown: shown_url(&url),
            url,
            format: settings.format,
            secret: settings.secret.clone(),
            timeout: settings.timeout,
            retries: settings.retries,
            client,
        }))
    }

    /// Sends `notice`: the attempts it took, or the last failure and the attempts made.
    pub(crate) async fn send(&self, notice: &Notice) -> Result<u32, (DeliveryError, u32)> {
        let body = match self.format {
            NotifyFormat::Json => notice.json(),
            NotifyFormat::DingTalk => notice.dingtalk(),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = tokio::time::timeout(self.timeout, self.post(&body)).await;
            let failure = match attempt {
                Ok(Ok(())) => return Ok(attempts),
                Ok(Err(e)) => e,
                Err(_) => DeliveryError::Timeout(self.timeout),
            };
            if !failure.retryable() || attempts > self.retries {
                return Err((failure, attempts));
            }
            tracing::debug!(
                "notice to {}: attempt {attempts} failed ({failure}); trying again",
                self.shown
            );
            tokio::time::sleep(pause_after(attempts)).await;
        }
    }

    /// One POST; fresh `timestamp` and `sign` for a signed robot.
    async fn post(&self, body: &Value) -> Result<(), DeliveryError> {
        let url = match (self.format, &self.secret) {
            (NotifyFormat::DingTalk, Some(secret)) => {
                dingtalk_signed_url(&self.url, secret.expose(), Utc::now().timestamp_millis())
            }
            _ => self.url.clone(),
        };
        let response = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DeliveryError::Status(status.as_u16()));
        }
        let answer = read_bounded(response)
            .await
            .map_err(|e| self.transport(e))?;
        match self.format {
            NotifyFormat::Json => Ok(()),
            NotifyFormat::DingTalk => robot_answer(&answer),
        }
    }

    fn transport(&self, error: reqwest::Error) -> DeliveryError {
        if error.is_timeout() {
            DeliveryError::Timeout(self.timeout)
        } else {
            DeliveryError::Transport(describe_reqwest_error(error))
        }
    }
}

/// The pause before attempt `attempts + 1`: 1 s, 2 s, 4 s, … at most 10 s.
fn pause_after(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(4)).min(Duration::from_secs(10))
}

/// The answer's first [`MAX_ANSWER_BYTES`]; the rest is not read.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

/// A robot answers HTTP 200 with `{"errcode":0,"errmsg":"ok"}`, or another errcode on refusal.
fn robot_answer(answer: &[u8]) -> Result<(), DeliveryError> {
    #[derive(Deserialize)]
    struct RobotAnswer {
        errcode: Option<i64>,
        #[serde(default)]
        errmsg: String,
    }
    let answer: RobotAnswer =
        serde_json::from_slice(answer).map_err(|_| DeliveryError::NotARobot("not JSON"))?;
    match answer.errcode {
        Some(0) => Ok(()),
        Some(code) => Err(DeliveryError::Refused {
            code,
            message: one_line(&answer.errmsg, MAX_ERRMSG_CHARS),
        }),
        None => Err(DeliveryError::NotARobot("no errcode")),
    }
}

/// `scheme://host[:port]` of a webhook URL: its path and query may hold a token.
fn shown_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_scheme_and_host_of_a_webhook_are_shown() {
        let shown = |url: &str| {
            reqwest::Url::parse(url)
                .map(|u| shown_url(&u))
                .unwrap_or_default()
        };
        assert_eq!(
            shown("https://oapi.dingtalk.com/robot/send?access_token=0123abc"),
            "https://oapi.dingtalk.com"
        );
        assert_eq!(
            shown("https://hooks.example.com/services/T0/B0/SeCrEtPaTh"),
            "https://hooks.example.com"
        );
        assert_eq!(
            shown("http://user:pw@[::1]:8080/x?token=t"),
            "http://[::1]:8080"
        );
    }

    #[test]
    fn robot_answers_are_judged_by_errcode() {
        assert_eq!(robot_answer(br#"{"errcode":0,"errmsg":"ok"}"#), Ok(()));
        let refused = robot_answer(
            "{\"errcode\":310000,\"errmsg\":\"sign not match, more: [https://x/y?access_token=tok9]\\n\"}"
                .as_bytes(),
        );
        let Err(refused) = refused else {
            panic!("a refusal: {refused:?}")
        };
        assert!(!refused.retryable());
        let text = refused.to_string();
        assert!(text.contains("errcode 310000, sign not match"), "{text}");
        assert!(!text.contains("tok9") && !text.contains('\n'), "{text}");
        let too_fast = robot_answer(br#"{"errcode":130101,"errmsg":"send too fast"}"#);
        assert!(too_fast.is_err_and(|e| e.retryable()));
        assert_eq!(
            robot_answer(b"<html>"),
            Err(DeliveryError::NotARobot("not JSON"))
        );
        assert_eq!(
            robot_answer(b"{}"),
            Err(DeliveryError::NotARobot("no errcode"))
        );
    }

    #[test]
    fn overload_and_silence_are_retried_refusals_are_not() {
        assert!(DeliveryError::Status(500).retryable());
        assert!(DeliveryError::Status(503).retryable());
        assert!(DeliveryError::Status(429).retryable());
        assert!(!DeliveryError::Status(404).retryable());
        assert!(!DeliveryError::Status(400).retryable());
        assert!(DeliveryError::Timeout(Duration::from_secs(1)).retryable());
        assert!(DeliveryError::Transport("refused".into()).retryable());
        assert_eq!(pause_after(1), Duration::from_secs(1));
        assert_eq!(pause_after(2), Duration::from_secs(2));
        assert_eq!(pause_after(9), Duration::from_secs(10));
    }
}
