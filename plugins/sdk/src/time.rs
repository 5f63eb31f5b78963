//! Timestamps as text.

use crate::Timestamp;

/// One day in milliseconds (the unit of [`Timestamp`]).
pub const DAY_MS: i64 = 86_400_000;

/// Formats a timestamp (ms since the epoch) as RFC 3339 UTC, e.g.
/// `2026-01-22T10:00:00Z` (milliseconds are shown only when non-zero).
pub fn rfc3339(ms: Timestamp) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let Ok(year @ 0..=9999) = u32::try_from(y) else {
        // Years of more or fewer than four digits: the general path.
        return if millis == 0 {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
        } else {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
        };
    };
    // Digits written by hand: `format!` costs several times as much in a
    // Wasm guest, and plugins format a timestamp on most events.
    let mut out = String::with_capacity(24);
    push_digits(&mut out, i64::from(year), 4);
    out.push('-');
    push_digits(&mut out, i64::from(m), 2);
    out.push('-');
    push_digits(&mut out, i64::from(d), 2);
    out.push('T');
    push_digits(&mut out, hh, 2);
    out.push(':');
    push_digits(&mut out, mm, 2);
    out.push(':');
    push_digits(&mut out, ss, 2);
    if millis != 0 {
        out.push('.');
        push_digits(&mut out, millis, 3);
    }
    out.push('Z');
    out
}

/// Appends the last `width` decimal digits of `value` (≥ 0).
fn push_digits(out: &mut String, value: i64, width: u32) {
    for place in (0..width).rev() {
        let digit = (value / 10_i64.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day);
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_769_076_000_000), "2026-01-22T10:00:00Z");
        assert_eq!(rfc3339(1_709_164_800_123), "2024-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(-1000), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(-62_198_755_200_000), "-001-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_800_001), "10000-01-01T00:00:00.001Z");
    }

    /// The digits written by hand say what `format!` said, over the whole
    /// four-digit range and every millisecond value.
    #[test]
    fn hand_written_digits_match_format() {
        let general = |ms: Timestamp| {
            let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
            let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let (y, m, d) = civil_from_days(days);
            let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
            let head = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
            if millis == 0 {
                format!("{head}Z")
            } else {
                format!("{head}.{millis:03}Z")
            }
        };
        // 0000-01-01 to 9999-12-31 in uneven steps (≈ 10 days, an odd
        // number of ms) that hit every field.
        let (first, last) = (-62_167_219_200_000_i64, 253_402_300_799_999_i64);
        let mut ms = first;
        while ms <= last {
            assert_eq!(rfc3339(ms), general(ms), "{ms}");
            ms += 863_999_937_123;
        }
        for ms in [first, last, 0, 999, 1_000, 59_999, 3_599_999, 86_399_999] {
            assert_eq!(rfc3339(ms), general(ms), "{ms}");
        }
    }
}
