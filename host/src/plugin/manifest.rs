//! `NAME.toml`, the operator's settings for one plugin.
//!
//! ```toml
//! enabled = true                      # false keeps the file but loads nothing
//! version = "1.0.0"                   # shown by `plugins check`
//! events = ["created", "completed"]   # default: every kind
//!
//! [outputs]                           # logical output -> Kafka topic
//! reminders = "reminders"
//!
//! [limits]
//! memory = "32MiB"                    # linear memory per instance
//! call_timeout = "50ms"               # wall time per call
//!
//! [config]                            # read by the plugin with `config(key)`
//! snapshot_interval = "60s"
//!
//! [wasi]                              # ambient capabilities, all off by default
//! env = ["TZ"]                        # environment variables passed through
//! ambient_clock = false               # real clocks instead of the host's `now`
//! dirs = [{ host = "/srv/data", guest = "/data", writable = false }]
//! ```
//!
//! Unknown keys are errors, so a typo is caught before the plugin runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::world::EventKind;

/// Settings for one plugin; every field is optional.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Whether the daemon loads the plugin.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A version label for humans; the content hash identifies the build.
    #[serde(default)]
    pub version: Option<String>,
    /// Event kinds delivered to `on-event`; absent means all of them.
    #[serde(default)]
    pub events: Option<Vec<EventKindName>>,
    /// Logical output name → Kafka topic. Emitting to a name not listed here
    /// fails the call.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Resource limits; unset ones take the daemon's defaults.
    #[serde(default)]
    pub limits: Limits,
    /// Values the plugin reads through `config(key)`.
    #[serde(default)]
    pub config: toml::Table,
    /// Ambient WASI capabilities granted to the plugin.
    #[serde(default)]
    pub wasi: WasiGrants,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            enabled: true,
            version: None,
            events: None,
            outputs: BTreeMap::new(),
            limits: Limits::default(),
            config: toml::Table::new(),
            wasi: WasiGrants::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Per-plugin resource limits.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Maximum linear memory of one instance, e.g. `"32MiB"` or a byte count.
    #[serde(default, deserialize_with = "de_bytes")]
    pub memory: Option<u64>,
    /// Maximum wall time of one call, e.g. `"50ms"`.
    #[serde(default, with = "humantime_serde_opt")]
    pub call_timeout: Option<Duration>,
}

/// Ambient capabilities. Everything is denied unless listed.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasiGrants {
    /// Names of host environment variables the plugin may read.
    #[serde(default)]
    pub env: Vec<String>,
    /// Give the plugin the real wall and monotonic clocks. Without this,
    /// WASI clocks report the host's per-call `now`, so plugins stay
    /// deterministic under `plugins test`.
    #[serde(default)]
    pub ambient_clock: bool,
    /// Host directories the plugin may open.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// A host directory made visible to the plugin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Whether the plugin may write to it.
    #[serde(default)]
    pub writable: bool,
}

/// An event kind as written in `events = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKindName(pub EventKind);

impl<'de> Deserialize<'de> for EventKindName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "created" => Ok(Self(EventKind::Created)),
            "updated" => Ok(Self(EventKind::Updated)),
            "completed" => Ok(Self(EventKind::Completed)),
            "deleted" => Ok(Self(EventKind::Deleted)),
            other => Err(serde::de::Error::custom(format!(
                "unknown event kind \"{other}\" (expected created, updated, completed or deleted)"
            ))),
        }
    }
}

impl Manifest {
    /// Parses a manifest from TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Whether events of `kind` go to the plugin.
    pub fn subscribes(&self, kind: EventKind) -> bool {
        self.events
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k.0 == kind))
    }

    /// The config values as strings: strings as they are, other values as
    /// their TOML text.
    pub fn config_strings(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

/// Parses `"32MiB"`, `"512KiB"`, `"1GB"` or a plain byte count.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size (expected e.g. \"32MiB\")"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "\"{other}\" is not a size unit (expected KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse_bytes(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `Option<Duration>` as a humantime string (`"50ms"`, `"2s"`).
pub(crate) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes an optional humantime duration.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                humantime::parse_duration(&s).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "\"{s}\" is not a duration (e.g. \"50ms\"): {e}"
                    ))
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_manifest() {
        let m = Manifest::parse(
            r#"
            version = "1.2.0"
            events = ["created", "completed"]
            [outputs]
            reminders = "team-reminders"
            [limits]
            memory = "32MiB"
            call_timeout = "50ms"
            [config]
            interval = "60s"
            max = 3
            "#,
        )
        .unwrap();
        assert!(m.enabled);
        assert!(m.subscribes(EventKind::Created));
        assert!(!m.subscribes(EventKind::Updated));
        assert_eq!(m.outputs["reminders"], "team-reminders");
        assert_eq!(m.limits.memory, Some(32 << 20));
        assert_eq!(m.limits.call_timeout, Some(Duration::from_millis(50)));
        assert_eq!(m.config_strings()["interval"], "60s");
        assert_eq!(m.config_strings()["max"], "3");
    }

    #[test]
    fn empty_manifest_subscribes_to_everything() {
        let m = Manifest::parse("").unwrap();
        assert_eq!(m, Manifest::default());
        assert!(m.subscribes(EventKind::Deleted));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("colour = 1", "unknown field `colour`"),
            ("[limits]\nmemroy = 1", "unknown field `memroy`"),
            ("events = [\"exploded\"]", "unknown event kind \"exploded\""),
            ("[limits]\nmemory = \"lots\"", "\"lots\" is not a size"),
            (
                "[limits]\ncall_timeout = \"soon\"",
                "\"soon\" is not a duration",
            ),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("4 KiB"), Ok(4096));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert!(parse_bytes("12 parsecs").is_err());
    }
}
