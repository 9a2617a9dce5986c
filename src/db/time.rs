//! The two timestamp texts the storage layer writes.

use std::fmt::Display;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Casdoor's timestamp text: RFC 3339 in the server's local offset, whole seconds
/// (`2026-08-22T16:53:36+08:00`, or `...Z` in UTC), like Go's `time.RFC3339`.
/// Callers pass `Local::now()`; tests pass fixed zones.
pub fn casdoor_timestamp<Tz: TimeZone>(at: DateTime<Tz>) -> String
where
    Tz::Offset: Display,
{
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// syncerd's own timestamp text: RFC 3339 UTC with milliseconds (`2026-11-25T03:04:05.678Z`).
/// Fixed width, so text order is time order.
pub fn utc_millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads a timestamp written by [`utc_millis`] (any RFC 3339 text is accepted).
pub fn parse_utc_millis(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, TimeZone};

    #[test]
    fn utc_millis_is_fixed_width_and_round_trips() {
        let whole = Utc.with_ymd_and_hms(2026, 11, 18, 7, 46, 40).single();
        let whole = whole.unwrap_or_default();
        let at = whole + chrono::Duration::milliseconds(7);
        let text = utc_millis(at);
        assert_eq!(text, "2026-11-18T07:46:40.007Z");
        assert_eq!(parse_utc_millis(&text), Ok(at));
        assert_eq!(utc_millis(whole), "2026-11-18T07:46:40.000Z");
    }

    #[test]
    fn casdoor_timestamp_matches_go_rfc3339() {
        let utc8 =
            FixedOffset::east_opt(8 * 3600).map(|z| z.with_ymd_and_hms(2026, 8, 22, 16, 53, 36));
        let t = utc8.and_then(|t| t.single());
        assert_eq!(
            t.map(casdoor_timestamp).as_deref(),
            Some("2026-08-22T16:53:36+08:00")
        );
        // Go writes `Z` for UTC, and never a fraction.
        let t = Utc.with_ymd_and_hms(2026, 11, 18, 7, 46, 40).single();
        let t = t.map(|t| t + chrono::Duration::milliseconds(789));
        assert_eq!(
            t.map(casdoor_timestamp).as_deref(),
            Some("2026-11-18T07:46:40Z")
        );
        let local = casdoor_timestamp(chrono::Local::now());
        assert!(
            DateTime::parse_from_rfc3339(&local).is_ok() && !local.contains('.'),
            "{local}"
        );
    }
}
