//! Units operators write in configuration files and manifests: sizes
//! (`"32MiB"`, `4096`), durations (`"50ms"`, `"2s"`) and counts (`1000`,
//! `"1000"`), each with a serde deserializer whose error says what was
//! expected. Strings are accepted for numbers too, because environment
//! variables and `--set` flags arrive as text.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A number of bytes, written as a plain count or with a unit (`KiB`, `MiB`,
/// `GiB`, or the decimal `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size as a `usize`, saturating.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    /// Parses `"32MiB"`, `"512 KiB"`, `"1GB"`, `"1.5GiB"` or a plain byte
    /// count. A fraction (at most 9 digits) that leaves part of a byte is
    /// rounded down.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let not_a_size = || format!("\"{}\" is not a size (expected e.g. \"32MiB\")", clip(text));
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if number.ends_with('.') || fraction.len() > 9 {
            return Err(not_a_size());
        }
        let whole: u64 = whole.parse().map_err(|_| not_a_size())?;
        let tenths: u64 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| not_a_size())?
        };
        let unit = unit.trim();
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => {
                return Err(format!(
                    "\"{}\" is not a size unit (expected KiB, MiB or GiB)",
                    clip(unit)
                ));
            }
        };
        let part = u128::from(tenths) * u128::from(scale) / 10_u128.pow(fraction.len() as u32);
        whole
            .checked_mul(scale)
            .and_then(|bytes| bytes.checked_add(u64::try_from(part).ok()?))
            .map(Self)
            .ok_or_else(|| format!("\"{}\" is too large", clip(text)))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly (`64MiB`,
    /// `1536KiB`, `1000000`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n} bytes")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(n)),
            NumberOrText::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// A whole number written as a TOML integer or as text (`1000` or
/// `"1000"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Count(pub u64);

impl Count {
    /// The count as a `usize`, saturating.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(n)),
            NumberOrText::Text(t) => t.trim().parse().map(Self).map_err(|_| {
                serde::de::Error::custom(format!(
                    "\"{}\" is not a whole number (expected e.g. 1000)",
                    clip(&t)
                ))
            }),
        }
    }
}

/// A duration written as humantime text (`"50ms"`, `"2s"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }

    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// The longest duration any setting takes: ten years (`"10years"`, of
/// 365.25 days each, as the parser counts them). Durations are added to
/// instants and to each other; one near `u64::MAX` seconds would overflow
/// there (a panic, in release builds too) long after it loaded.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// Parses a duration such as `"50ms"`, `"2s"` or `"1h 30m"`, at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "\"{}\" is not a duration (expected e.g. \"50ms\", \"30s\"): {e}",
            clip(text)
        )
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "\"{}\" is longer than the 10 years a duration may be",
            clip(text)
        ));
    }
    Ok(duration)
}

/// A duration as operators read it (`200ms`, `1m 30s`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Serde helpers for a required humantime duration: `#[serde(with =
/// "crate::units::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes a humantime duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for an optional humantime duration: `#[serde(default, with
/// = "crate::units::duration_opt")]`.
pub mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes an optional humantime duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// At most 64 characters of `text`, for quoting input in a message.
fn clip(text: &str) -> String {
    crate::text::quote_bounded(text, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("1024".parse(), Ok(ByteSize(1024)));
        assert_eq!("4 KiB".parse(), Ok(ByteSize(4096)));
        assert_eq!("1GB".parse(), Ok(ByteSize(1_000_000_000)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(3 << 29)));
        assert_eq!("0.25 MiB".parse(), Ok(ByteSize(256 << 10)));
        assert_eq!("2.5".parse(), Ok(ByteSize(2)), "part of a byte rounds down");
        assert_eq!("0.1KiB".parse(), Ok(ByteSize(102)));
        for bad in ["1.", ".", "1.2.3GiB", "1.0000000001GiB", "-1MiB", ""] {
            assert_eq!(
                bad.parse::<ByteSize>(),
                Err(format!("\"{bad}\" is not a size (expected e.g. \"32MiB\")")),
                "{bad}"
            );
        }
        assert_eq!(
            "1,5GiB".parse::<ByteSize>(),
            Err("\",5GiB\" is not a size unit (expected KiB, MiB or GiB)".to_owned())
        );
        assert!("18446744073.7GB".parse::<ByteSize>().is_ok());
        assert!(
            "18446744073.8GB".parse::<ByteSize>().is_err(),
            "u64 overflow"
        );
        assert!("99999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536KiB");
        assert_eq!(ByteSize(1_000_000).to_string(), "1000000 bytes");
    }

    #[test]
    fn numbers_may_be_text() {
        #[derive(Deserialize)]
        struct T {
            size: ByteSize,
            count: Count,
        }
        let t: T = toml::from_str("size = \"2MiB\"\ncount = \"12\"").unwrap();
        assert_eq!((t.size, t.count), (ByteSize::mib(2), Count(12)));
        let t: T = toml::from_str("size = 7\ncount = 3").unwrap();
        assert_eq!((t.size, t.count), (ByteSize(7), Count(3)));
        let err = toml::from_str::<T>("size = 7\ncount = \"many\"")
            .err()
            .unwrap();
        assert!(
            err.message().contains("\"many\" is not a whole number"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("\"soon\" is not a duration")
        );
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
        // Ten years is the most; more would overflow where it is added.
        assert_eq!(parse_duration("10years"), Ok(MAX_DURATION));
        for long in ["3653d", "11years", "18446744073709551615s"] {
            assert!(
                parse_duration(long)
                    .unwrap_err()
                    .contains("is longer than the 10 years a duration may be"),
                "{long}"
            );
        }
    }
}
