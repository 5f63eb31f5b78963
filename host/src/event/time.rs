//! Instants, offsets and time zones as producers write them.
//!
//! Instants may be RFC 3339 (`2026-01-22T10:00:00Z`), RFC 9557 with a
//! bracketed time zone (`2026-01-22T10:00:00[Europe/Paris]`), naive local
//! date-times as Python's `isoformat()` writes them
//! (`2026-01-22T11:00:00.123456`, read in the task's time zone, UTC if it
//! has none), bare dates (midnight) or Unix
//! epoch numbers (seconds, or milliseconds when the number is that large).
//! Offsets ("remind me 1h before") may be a number of minutes, a friendly
//! duration (`30m`, `1h`, `1d`, `1h30m`) or ISO 8601 (`PT1H`).

use jiff::civil::{Date, DateTime};
use jiff::fmt::temporal::Pieces;
use jiff::tz::{Offset, TimeZone};
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
            let millis = if n.unsigned_abs() < EPOCH_MILLIS_THRESHOLD.unsigned_abs() {
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
    common_instant(s, tz).or_else(|| any_instant(s, tz))
}

/// The shape nearly every producer writes — `YYYY-MM-DDTHH:MM:SS`, an
/// optional `.` fraction of up to nine digits, then `Z`, `±HH:MM` or
/// nothing (a civil time in `tz`); `z` as `Z` — read without jiff's general parser.
/// `None` for anything else (including a leap second), which
/// [`any_instant`] then reads; where this answers, it answers as that does:
/// the fields go through jiff's checked constructors.
fn common_instant(s: &str, tz: &TimeZone) -> Option<Timestamp> {
    let b = s.as_bytes();
    let number = |at: usize, len: usize| -> Option<i32> {
        b.get(at..at + len)?.iter().try_fold(0_i32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i32::from(d - b'0'))
        })
    };
    let punctuated = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
        .iter()
        .all(|&(at, want)| b.get(at) == Some(&want));
    if !punctuated {
        return None;
    }
    let second = number(17, 2)?;
    if second >= 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0_i32;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        nanos = number(at + 1, digits)? * 10_i32.pow(9 - digits as u32);
        at += 1 + digits;
    }
    let civil = DateTime::new(
        i16::try_from(number(0, 4)?).ok()?,
        i8::try_from(number(5, 2)?).ok()?,
        i8::try_from(number(8, 2)?).ok()?,
        i8::try_from(number(11, 2)?).ok()?,
        i8::try_from(number(14, 2)?).ok()?,
        i8::try_from(second).ok()?,
        nanos,
    )
    .ok()?;
    let instant = match &b[at..] {
        [] => tz.to_timestamp(civil),
        [b'Z' | b'z'] => Offset::UTC.to_timestamp(civil),
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(at + 1, 2)?, number(at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = (hours * 3600 + minutes * 60) * if *sign == b'-' { -1 } else { 1 };
            Offset::from_seconds(seconds).ok()?.to_timestamp(civil)
        }
        _ => return None,
    };
    instant.ok().map(jiff::Timestamp::as_millisecond)
}

/// Any instant jiff reads: RFC 3339 and its variants (with a bracketed
/// time zone, RFC 9557), naive date-times (`T` or a space), bare dates.
fn any_instant(s: &str, tz: &TimeZone) -> Option<Timestamp> {
    let offset_named = may_have_offset(s);
    if offset_named && let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Some(ts.as_millisecond());
    }
    if offset_named || s.contains('[') {
        // Read as a civil time, an offset would be dropped and the instant
        // moved without a word: only what jiff's pieces read as offset-free
        // goes on (not an offset that moves it out of range, nor one out of
        // range itself, which the pieces do not read either).
        let pieces = Pieces::parse(s).ok().filter(|p| p.offset().is_none())?;
        // A time zone named in brackets (`…T10:00:00[Europe/Paris]`) is the
        // one the civil time is in, not the task's; one not known fails.
        if pieces.time_zone_annotation().is_some() {
            return s
                .parse::<jiff::ZonedDateTime>()
                .ok()
                .map(|zoned| zoned.timestamp().as_millisecond());
        }
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

/// Parses an IANA time zone name (or `UTC`, or a fixed offset like
/// `+05:30`). The name comes out as the database spells it: the lookup
/// ignores case (`europe/berlin`), plugins' own time zone crates may not.
pub(crate) fn time_zone(found: &Found<'_>) -> Result<(String, TimeZone), DecodeError> {
    let name = found.string()?;
    let name = name.trim();
    TimeZone::get(name)
        .ok()
        // `Etc/Unknown` is the database's name for no time zone at all.
        .filter(|tz| !tz.is_unknown())
        .map(|tz| (tz.iana_name().unwrap_or(name).to_owned(), tz))
        .ok_or_else(|| found.error(format!("\"{name}\" is not a known IANA time zone")))
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
            (
                tree(&json!("2026-01-22T10:00:00[Europe/Paris]")),
                &utc,
                "2026-01-22T09:00:00Z",
            ),
            (
                tree(&json!("2026-07-01T10:00:00[-04:00]")),
                &berlin,
                "2026-07-01T14:00:00Z",
            ),
            (
                tree(&json!("2026-01-22T10:00:00[u-ca=iso8601]")),
                &berlin,
                "2026-01-22T09:00:00Z",
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
    fn the_common_shapes_take_the_short_path() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        for text in [
            "2026-01-22T10:00:00Z",
            "2026-01-22T11:00:00.123456",
            "2026-01-22T11:00:00.5+01:00",
            "2026-03-29T02:30:00",
            "0000-01-01T00:00:00Z",
        ] {
            let short = common_instant(text, &berlin);
            assert!(short.is_some(), "{text}");
            assert_eq!(short, any_instant(text, &berlin), "{text}");
        }
    }

    proptest::proptest! {
        // Several hundred of the cases are ones the short path reads.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Wherever the short path answers, jiff's parser gives the same
        /// instant: strings built from in- and out-of-range fields, the
        /// separators and suffixes producers write and some jiff rejects.
        #[test]
        fn the_short_path_answers_as_jiff_does(
            year in proptest::sample::select(vec![0, 1, 1969, 1970, 2024, 2026, 9999]),
            month in 0_u32..14,
            day in 0_u32..33,
            hour in 0_u32..26,
            minute in 0_u32..62,
            second in 0_u32..62,
            fraction in proptest::sample::select(vec![
                "", ".", ".1", ".123", ".123456", ".123456789", ".1234567890", ",5",
            ]),
            separator in proptest::sample::select(vec!["T", "t", " "]),
            suffix in proptest::sample::select(vec![
                "", "Z", "z", "+01:00", "-05:30", "-00:00", "+23:59", "+24:00", "+01:60",
                "+0100", "+01", "Z[Europe/Paris]", " ", "x", "+01:00:30", "-0530",
                "+25:00", "-23:59",
            ]),
            zone in proptest::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York"]),
        ) {
            let text = format!(
                "{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{fraction}{suffix}"
            );
            let tz = TimeZone::get(zone).unwrap();
            if let Some(short) = common_instant(&text, &tz) {
                proptest::prop_assert_eq!(Some(short), any_instant(&text, &tz), "{}", text);
            }
        }
    }

    #[test]
    fn an_offset_that_cannot_be_applied_is_an_error_not_ignored() {
        // Each names an offset, so reading it as a civil time (in `tz`)
        // would move the instant by that offset without a word.
        for text in [
            "9999-12-30T21:00:00-05:00",
            "-009999-01-01T03:00:00+05:00",
            "9999-12-31T23:00:00-01:00",
            "2026-01-22T10:00:00+25:59:59.6",
        ] {
            let value = tree(&json!(text));
            let err = instant(&found(&value), &TimeZone::UTC).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(r#"task_data.due_date: "{text}" is not an RFC 3339 time"#)
            );
        }
        // A bracketed time zone that is not one is not dropped either.
        let value = tree(&json!("2026-01-22T10:00:00[Mars/Olympus]"));
        assert!(instant(&found(&value), &TimeZone::UTC).is_err());
        // The same civil times without an offset are in range.
        let value = tree(&json!("9999-12-30T21:00:00"));
        assert_eq!(
            instant(&found(&value), &TimeZone::UTC).unwrap(),
            ms("9999-12-30T21:00:00Z")
        );
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
        // Spelled as the database spells it, whatever the case.
        let v = tree(&json!("europe/berlin"));
        assert_eq!(time_zone(&found(&v)).unwrap().0, "Europe/Berlin");
        for name in ["Mars/Olympus", "Etc/Unknown"] {
            let v = tree(&json!(name));
            assert_eq!(
                time_zone(&found(&v)).unwrap_err().to_string(),
                format!(r#"task_data.due_date: "{name}" is not a known IANA time zone"#)
            );
        }
    }

    #[test]
    fn the_smallest_epoch_number_is_out_of_range_not_an_overflow() {
        let v = tree(&json!(i64::MIN));
        assert_eq!(
            instant(&found(&v), &TimeZone::UTC).unwrap_err().to_string(),
            "task_data.due_date: -9223372036854775808 is out of range for a Unix time"
        );
    }
}
