//! What a plugin may use: memory and wall time per call, and quotas on
//! what one call may do and on what a plugin may keep per partition.
//!
//! Every limit is set in three places, with one meaning: a manifest's
//! `[limits]` asks for a value; the daemon config's
//! `[sandbox.default_limits]` fills in what a manifest leaves out; and
//! `[sandbox.max_limits]` is the most a manifest may ask for. A value
//! outside its bounds rejects the plugin at load, naming the key.
//!
//! Breaching a per-call quota fails the call with the error kind `quota`
//! (its effects discarded, the event dead-lettered with the quota named);
//! so does a call whose changes would take the plugin's state in the
//! partition past a per-partition quota.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{ByteSize, Count, HumanDuration};

macro_rules! limits {
    ($(
        $(#[$doc:meta])*
        $field:ident: $ty:ty = $default:expr, max $max:expr, min $min:expr;
    )*) => {
        /// The limits one plugin runs under, every one resolved.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Limits {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// Limits as written in a manifest's `[limits]` or the daemon
        /// config; what is left out comes from elsewhere.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitSettings {
            $( $(#[$doc])* #[serde(default)] pub $field: Option<$ty>, )*
        }

        impl Limits {
            /// The built-in defaults (what `[sandbox.default_limits]`
            /// starts from).
            pub const DEFAULT: Self = Self { $( $field: $default, )* };

            /// The built-in maxima (what `[sandbox.max_limits]` starts
            /// from).
            pub const MAX: Self = Self { $( $field: $max, )* };

            /// The least any limit may be: below it nothing useful runs.
            pub const MIN: Self = Self { $( $field: $min, )* };

            /// These limits with what `settings` sets replaced.
            pub fn merge(&self, settings: &LimitSettings) -> Self {
                Self { $( $field: settings.$field.unwrap_or(self.$field), )* }
            }

            /// Checks every limit is within `MIN..=max`; the error names
            /// the key as `SECTION.FIELD`.
            pub fn check(&self, max: &Self, section: &str) -> Result<(), String> {
                $(
                    if self.$field < Self::MIN.$field {
                        return Err(format!(
                            "{section}.{}: {} is below the least allowed, {}",
                            stringify!($field), self.$field, Self::MIN.$field
                        ));
                    }
                    if self.$field > max.$field {
                        return Err(format!(
                            "{section}.{}: {} exceeds the daemon's maximum of {} (sandbox.max_limits.{})",
                            stringify!($field), self.$field, max.$field, stringify!($field)
                        ));
                    }
                )*
                Ok(())
            }

            /// Every limit as `(key, value)`, for `plugins check` and docs.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                vec![ $( (stringify!($field), self.$field.to_string()), )* ]
            }
        }
    };
}

limits! {
    /// Linear memory of one instance.
    memory: ByteSize = ByteSize::mib(64), max ByteSize::mib(512), min ByteSize::kib(64);
    /// Wall time of one call, including time spent in host calls and WASI
    /// waits.
    call_timeout: HumanDuration = HumanDuration::millis(200), max HumanDuration::secs(60), min HumanDuration::millis(1);
    /// Records one call may emit.
    emits_per_call: Count = Count(1_000), max Count(100_000), min Count(1);
    /// Records one call may emit to a topic the daemon consumes (an
    /// output mapped to an input topic, as recurrence does). More than one
    /// lets a loop through the input grow with every round.
    /// The built-in maximum is low: with `plugins.max_hops` it sets how
    /// many records one producer record can lead to.
    input_emits_per_call: Count = Count(1), max Count(16), min Count(0);
    /// Bytes (keys and values) one call may emit.
    emit_bytes_per_call: ByteSize = ByteSize::mib(4), max ByteSize::mib(64), min ByteSize::kib(1);
    /// Bytes (keys and values) of state one call may write.
    state_bytes_per_call: ByteSize = ByteSize::mib(4), max ByteSize::mib(64), min ByteSize::kib(1);
    /// Timers one call may set.
    timers_per_call: Count = Count(1_000), max Count(100_000), min Count(1);
    /// Keys whose state value or timer one call may change (set, delete,
    /// set a timer, cancel one): each is one changelog record, however
    /// few bytes it holds.
    state_changes_per_call: Count = Count(1_000), max Count(100_000), min Count(1);
    /// Bytes of state (keys and values) the plugin may hold per partition.
    state_bytes: ByteSize = ByteSize::mib(64), max ByteSize::mib(1024), min ByteSize::kib(1);
    /// State keys the plugin may hold per partition.
    state_keys: Count = Count(1_000_000), max Count(10_000_000), min Count(1);
    /// Pending timers the plugin may hold per partition.
    timers: Count = Count(100_000), max Count(10_000_000), min Count(1);
    /// How many times a call that returns a `retryable` error is tried
    /// again (in place, so order is kept) before the event is dead-lettered.
    retries: Count = Count(5), max Count(20), min Count(0);
    /// The wait before the first retry; it doubles with every attempt, to
    /// at most 30 s.
    retry_backoff: HumanDuration = HumanDuration::millis(100), max HumanDuration::secs(10), min HumanDuration::millis(1);
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// Wall time of one call.
    pub fn timeout(&self) -> Duration {
        self.call_timeout.0
    }
}

/// Why a call was stopped by a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} exceeds {quota} ({limit})")]
pub struct QuotaExceeded {
    /// The quota's key, e.g. `limits.emits_per_call` or
    /// `message.max.bytes`.
    pub quota: &'static str,
    /// What the call tried, e.g. `1001 emits`.
    pub what: String,
    /// The limit, as written.
    pub limit: String,
}

impl QuotaExceeded {
    /// A breach of `quota`, whose limit is `limit`.
    pub fn new(quota: &'static str, what: impl fmt::Display, limit: impl fmt::Display) -> Self {
        Self {
            quota,
            what: what.to_string(),
            limit: limit.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_bounds() {
        Limits::DEFAULT.check(&Limits::MAX, "limits").unwrap();
        Limits::MAX.check(&Limits::MAX, "limits").unwrap();
    }

    #[test]
    fn settings_merge_and_bounds_name_the_key() {
        let settings: LimitSettings =
            toml::from_str("memory = \"32MiB\"\ncall_timeout = \"50ms\"\ntimers = 10").unwrap();
        let limits = Limits::DEFAULT.merge(&settings);
        assert_eq!(limits.memory, ByteSize::mib(32));
        assert_eq!(limits.timeout(), Duration::from_millis(50));
        assert_eq!(limits.timers, Count(10));
        assert_eq!(limits.emits_per_call, Limits::DEFAULT.emits_per_call);

        let zero = Limits::DEFAULT.merge(&toml::from_str("memory = 0").unwrap());
        assert_eq!(
            zero.check(&Limits::MAX, "limits").unwrap_err(),
            "limits.memory: 0 bytes is below the least allowed, 64KiB"
        );
        let forever = Limits::DEFAULT.merge(&toml::from_str("call_timeout = \"10years\"").unwrap());
        let err = forever.check(&Limits::MAX, "limits").unwrap_err();
        assert!(
            err.starts_with("limits.call_timeout: 10years ")
                && err.ends_with(
                    "exceeds the daemon's maximum of 1m (sandbox.max_limits.call_timeout)"
                ),
            "{err}"
        );
        let err = toml::from_str::<LimitSettings>("memroy = 1").unwrap_err();
        assert!(err.message().contains("unknown field `memroy`"), "{err}");
    }
}
