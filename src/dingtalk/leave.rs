//! DingTalk's leave records (`GET /v1.0/contact/empLeaveRecords`, the new API family): who left
//! the organization since a time. The daemon reads them when its event stream comes back, to
//! catch up on the `user_leave_org` events nobody received meanwhile.
//!
//! The call needs the app's `Contact.Common.Read` scope. It pages by `nextToken` (`0` first),
//! 50 records a page at most, over a window of at most 365 days. A listing is bounded: at most
//! [`ClientConfig::max_leave_record_pages`](super::ClientConfig) pages, `dingtalk.fetch_timeout`
//! in all, each answer at most `dingtalk.max_response_bytes`.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{Instrument as _, info_span};

use super::client::{CallCounter, Client, StatsRecorder};
use super::endpoint::{Call, Endpoint};
use super::error::DingTalkError;
use super::types::Credentials;

/// Records per page (DingTalk's maximum).
pub const LEAVE_RECORDS_PAGE_SIZE: u32 = 50;
/// Longest userid taken from a record: DingTalk's userids have at most 64 characters.
const MAX_USERID_CHARS: usize = 64;

/// The longest window DingTalk lists leave records for: `startTime` at most 365 days back.
pub fn leave_records_max_window() -> TimeDelta {
    TimeDelta::days(365)
}

/// One departure as DingTalk recorded it. The answer's names, mobile numbers and state codes
/// are personal data syncerd does not need, so they are not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveRecord {
    pub user_id: String,
    /// When the user left (`leaveTime`), when DingTalk said so in a form we read.
    pub leave_time: Option<DateTime<Utc>>,
    /// `leaveReason`: `oapi`, `cancel`, `leave`, `unknown` or `delete`.
    pub leave_reason: Option<String>,
}

/// What one listing of leave records found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaveRecords {
    pub records: Vec<LeaveRecord>,
    /// Records without a usable `userId` (missing, empty, too long, control characters).
    pub skipped: u64,
    pub pages: u64,
}

#[derive(Deserialize)]
struct LeavePage {
    #[serde(rename = "nextToken", default)]
    next_token: Option<Value>,
    #[serde(default)]
    records: Option<Vec<RawRecord>>,
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
    #[serde(rename = "leaveTime", default)]
    leave_time: Option<Value>,
    #[serde(rename = "leaveReason", default)]
    leave_reason: Option<String>,
}

/// The time format DingTalk's new API expects (`YYYY-MM-DDTHH:mm:ssZ`).
pub fn open_api_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A `leaveTime` as RFC 3339 text or epoch milliseconds.
fn leave_time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    match value? {
        Value::String(text) => DateTime::parse_from_rfc3339(text.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

fn usable_userid(id: &str) -> bool {
    !id.trim().is_empty()
        && id.chars().count() <= MAX_USERID_CHARS
        && !id.chars().any(char::is_control)
}

/// The next page's token, `None` at the end: absent, empty or `0` (the first page's token).
fn next_token(value: Option<&Value>) -> Option<String> {
    let text = match value? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty() && text != "0").then_some(text)
}

impl Client {
    /// Every leave record from `since` to `until` (to DingTalk's now when `None`), page by page.
    /// Each call goes through the App Key's token, rate limiter and retries, and is counted into
    /// `counter`. Fails on the first failed page, on a `nextToken` that comes back, beyond the
    /// page limit, and after `dingtalk.fetch_timeout`: a listing is whole or an error.
    pub async fn leave_records(
        &self,
        creds: &Credentials,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        counter: &CallCounter,
    ) -> Result<LeaveRecords, DingTalkError> {
        let stats = StatsRecorder::counting(counter.clone());
        let limit = self.config().fetch_timeout;
        let span = info_span!("dingtalk_leave_records", app_key = %creds.app_key);
        let listing = self.list_leave_records(creds, &stats, since, until);
        match tokio::time::timeout(limit, listing.instrument(span)).await {
            Ok(listed) => listed,
            Err(_) => Err(DingTalkError::FetchTimeout {
                limit,
                calls: stats.total_calls(),
            }),
        }
    }

    async fn list_leave_records(
        &self,
        creds: &Credentials,
        stats: &StatsRecorder,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<LeaveRecords, DingTalkError> {
        let ctx = self.ctx(creds, stats);
        let call = Call::new(Endpoint::LeaveRecords);
        let max_pages = self.config().max_leave_record_pages;
        let mut listed = LeaveRecords::default();
        let mut token = "0".to_owned();
        let mut tokens_seen = BTreeSet::new();
        loop {
            if listed.pages >= max_pages {
                return Err(DingTalkError::TooManyPages {
                    call,
                    pages: max_pages,
                });
            }
            let mut params = json!({
                "startTime": open_api_time(since),
                "nextToken": token,
                "maxResults": LEAVE_RECORDS_PAGE_SIZE.to_string(),
            });
            if let (Some(until), Some(params)) = (until, params.as_object_mut()) {
                params.insert("endTime".to_owned(), Value::from(open_api_time(until)));
            }
            let page: LeavePage = self.execute(&ctx, call, Some(&params)).await?;
            listed.pages += 1;
            let records = page.records.unwrap_or_default();
            let last = records.is_empty();
            for raw in records {
                match raw.user_id.filter(|id| usable_userid(id)) {
                    Some(user_id) => listed.records.push(LeaveRecord {
                        user_id,
                        leave_time: leave_time(raw.leave_time.as_ref()),
                        leave_reason: raw.leave_reason,
                    }),
                    None => listed.skipped += 1,
                }
            }
            match next_token(page.next_token.as_ref()) {
                Some(next) if !last => {
                    if !tokens_seen.insert(next.clone()) {
                        return Err(DingTalkError::Malformed {
                            call,
                            detail: "a nextToken came back a second time".to_owned(),
                            attempts: 1,
                        });
                    }
                    token = next;
                }
                _ => return Ok(listed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_and_read_as_dingtalk_does() {
        let t = DateTime::parse_from_rfc3339("2026-03-04T05:06:07.890Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(open_api_time(t), "2026-03-04T05:06:07Z");
        let read = leave_time(Some(&json!("2026-03-04T13:06:07+08:00")));
        assert_eq!(
            read.map(open_api_time).as_deref(),
            Some("2026-03-04T05:06:07Z")
        );
        assert_eq!(
            leave_time(Some(&json!(1_772_600_767_000_i64))).map(open_api_time),
            Some("2026-03-04T05:06:07Z".to_owned())
        );
        assert_eq!(leave_time(Some(&json!("yesterday"))), None);
        assert_eq!(leave_time(Some(&json!([1]))), None);
        assert_eq!(leave_time(None), None);
    }

    #[test]
    fn the_listing_ends_without_a_next_token() {
        assert_eq!(next_token(Some(&json!("50"))), Some("50".to_owned()));
        assert_eq!(next_token(Some(&json!(100))), Some("100".to_owned()));
        for end in [json!(""), json!("0"), json!(0), json!(null), json!({})] {
            assert_eq!(next_token(Some(&end)), None, "{end}");
        }
        assert_eq!(next_token(None), None);
    }

    #[test]
    fn only_plausible_userids_are_taken() {
        assert!(usable_userid("0312450056281734"));
        assert!(usable_userid("manager4220"));
        assert!(!usable_userid(""));
        assert!(!usable_userid("  "));
        assert!(!usable_userid("a\nb"));
        assert!(!usable_userid(&"x".repeat(65)));
        assert!(usable_userid(&"x".repeat(64)));
    }
}
