//! Instants, offsets and time zones as producers write them.
//!
//! Instants may be RFC 3339 (`2026-01-22T10:00:00Z`), naive local date-times
//! as Python's `isoformat()` writes them (`2026-01-22T11:00:00.123456`, read in
//! the task's time zone, UTC if it has none), bare dates (midnight) or Unix
//! epoch numbers (seconds, or milliseconds when the number is that large).
//! Offsets ("remind me 1h before") may be a number of minutes, a friendly
//! duration (`30m`, `1h`, `1d`, `1h30m`) or ISO 8601 (`PT1H`).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, SpanRelativeTo};

use super::DecodeError;
use super::fields::{Found, describe};
use super::json::Json;
use crate::world::Timestamp;

/// Below this, an epoch number is taken as seconds; at or above it, as
/// milliseconds (1e11 seconds is the year 5138).
const EPOCH_MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// Parses an instant from a string or epoch number.
pub(crate) fn instant(found: &Found<'_>, tz: &TimeZone) -> Result<Timestamp, DecodeError> {
    match found.value {
        Json::String(s) => parse_instant_str(s.trim(), tz).ok_or_else(|| {
            found.error(format!("{} is not an RFC 3339 time", describe(found.value)))
        }),
        Json::Number(n) => {
            let n = n
                .as_i64()
                .ok_or_else(|| found.error(format!("{n} is not a whole Unix time")))?;
            let millis = if n.abs() < EPOCH_MILLIS_THRESHOLD {
                n.checked_mul(1000)
            } else {
                Some(n)
            };
            millis
                .filter(|ms| jiff::Timestamp::from_millisecond(*ms).is_ok())
                .ok_or_else(|| found.error(format!("{n} is out of range for a Unix time")))
        }
        other => Err(found.error(format!(
            "expected an RFC 3339 time, found {}",
            super::fields::kind(other)
        ))),
    }
}

fn parse_instant_str(s: &str, tz: &TimeZone) -> Option<Timestamp> {
    if may_have_offset(s)
        && let Ok(ts) = s.parse::<jiff::Timestamp>()
    {
        return Some(ts.as_millisecond());
    }
    // A space instead of `T` is common in database dumps.
    let civil = s
        .parse::<DateTime>()
        .or_else(|_| s.replacen(' ', "T", 1).parse::<DateTime>())
        .or_else(|_| {
            s.parse::<Date>()
                .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
        })
        .ok()?;
    tz.to_timestamp(civil)
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

/// Whether `s` may name its UTC offset (`Z`, `+01:00`, `-05`), so may be a
/// timestamp rather than a civil date-time. A failed timestamp parse costs
/// an error value; naive date-times (Python's `isoformat()`) are common.
fn may_have_offset(s: &str) -> bool {
    // After the date: an offset sign or `Z`. An expanded year (`+002026-`)
    // or anything odd keeps the full parse.
    s.get(10..)
        .is_none_or(|time| time.contains(['Z', 'z', '+', '-']))
}

/// Parses a "this long before" offset. A bare number means minutes.
pub(crate) fn offset(found: &Found<'_>) -> Result<SignedDuration, DecodeError> {
    let bad = || {
        found.error(format!(
            "{} is not a duration (expected minutes, e.g. 30, or a duration such as \"1h\", \"30m\", \"1d\" or \"PT1H\")",
            describe(found.value)
        ))
    };
    let duration = match found.value {
        Json::Number(n) => {
            let minutes = n.as_f64().ok_or_else(bad)?;
            SignedDuration::try_from_secs_f64(minutes * 60.0).map_err(|_| bad())?
        }
        Json::String(s) => {
            let s = s.trim();
            if let Ok(minutes) = s.parse::<f64>() {
                SignedDuration::try_from_secs_f64(minutes * 60.0).map_err(|_| bad())?
            } else {
                let span: Span = s.parse().map_err(|_| bad())?;
                span.to_duration(SpanRelativeTo::days_are_24_hours())
                    .map_err(|_| bad())?
            }
        }
        _ => return Err(bad()),
    };
    if duration.is_negative() {
        return Err(found.error(format!("{} is negative", describe(found.value))));
    }
    Ok(duration)
}

/// Parses an IANA time zone name (or `UTC`, or a fixed offset like `+05:30`).
pub(crate) fn time_zone(found: &Found<'_>) -> Result<(String, TimeZone), DecodeError> {
    let name = found.string()?;
    let name = name.trim();
    TimeZone::get(name)
        .map(|tz| (name.to_owned(), tz))
        .map_err(|_| found.error(format!("\"{name}\" is not a known IANA time zone")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::json::tree;
    use serde_json::json;

    fn found<'a>(value: &'a Json<'a>) -> Found<'a> {
        Found {
            path: "task_data",
            key: "due_date",
            value,
        }
    }

    fn ms(s: &str) -> Timestamp {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn instants_in_every_producer_format() {
        let utc = TimeZone::UTC;
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let cases = [
            (
                tree(&json!("2026-01-22T10:00:00Z")),
                &utc,
                "2026-01-22T10:00:00Z",
            ),
            (
                tree(&json!("2026-01-22T11:00:00+01:00")),
                &utc,
                "2026-01-22T10:00:00Z",
            ),
            (
                tree(&json!("2026-01-22T11:00:00.123456")),
                &utc,
                "2026-01-22T11:00:00.123Z",
            ),
            (
                tree(&json!("2026-01-22 11:00:00")),
                &utc,
                "2026-01-22T11:00:00Z",
            ),
            (
                tree(&json!("2026-01-22T11:00:00")),
                &berlin,
                "2026-01-22T10:00:00Z",
            ),
            (tree(&json!("2026-07-01")), &berlin, "2026-06-30T22:00:00Z"),
            (
                tree(&json!("2026-01-22T05:00:00-05:00")),
                &berlin,
                "2026-01-22T10:00:00Z",
            ),
            (
                tree(&json!("2026-01-22T10:00:00z")),
                &berlin,
                "2026-01-22T10:00:00Z",
            ),
            (
                tree(&json!("+002026-01-22T10:00:00Z")),
                &berlin,
                "2026-01-22T10:00:00Z",
            ),
            (tree(&json!(1_769_076_000)), &utc, "2026-01-22T10:00:00Z"),
            (
                tree(&json!(1_769_076_000_000_i64)),
                &utc,
                "2026-01-22T10:00:00Z",
            ),
        ];
        for (value, tz, want) in cases {
            assert_eq!(instant(&found(&value), tz).unwrap(), ms(want), "{value:?}");
        }
    }

    #[test]
    fn bad_instants_name_the_field() {
        let err = instant(&found(&tree(&json!("not a date"))), &TimeZone::UTC).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"task_data.due_date: "not a date" is not an RFC 3339 time"#
        );
        let err = instant(&found(&tree(&json!([1]))), &TimeZone::UTC).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task_data.due_date: expected an RFC 3339 time, found an array"
        );
    }

    #[test]
    fn offsets_in_every_format() {
        let cases = [
            (tree(&json!(60)), 3600),
            (tree(&json!(30)), 1800),
            (tree(&json!("90")), 5400),
            (tree(&json!("1h")), 3600),
            (tree(&json!("30m")), 1800),
            (tree(&json!("1d")), 86_400),
            (tree(&json!("1h30m")), 5400),
            (tree(&json!("PT1H")), 3600),
            (tree(&json!("P1DT2H")), 93_600),
        ];
        for (value, secs) in cases {
            assert_eq!(offset(&found(&value)).unwrap().as_secs(), secs, "{value:?}");
        }
        let err = offset(&found(&tree(&json!("soon"))))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(r#"task_data.due_date: "soon" is not a duration"#),
            "{err}"
        );
        assert!(offset(&found(&tree(&json!(-5)))).is_err());
    }

    #[test]
    fn time_zones() {
        let v = tree(&json!("America/New_York"));
        assert_eq!(time_zone(&found(&v)).unwrap().0, "America/New_York");
        let v = tree(&json!("Mars/Olympus"));
        assert_eq!(
            time_zone(&found(&v)).unwrap_err().to_string(),
            r#"task_data.due_date: "Mars/Olympus" is not a known IANA time zone"#
        );
    }
}
