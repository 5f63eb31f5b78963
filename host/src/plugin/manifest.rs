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
//! [limits]                            # unset: [sandbox.default_limits]
//! memory = "32MiB"                    # linear memory per instance
//! call_timeout = "50ms"               # wall time per call, waits included
//! emits_per_call = 1000               # per-call quotas
//! input_emits_per_call = 1            # (emits to an input topic)
//! emit_bytes_per_call = "4MiB"
//! state_bytes_per_call = "4MiB"
//! timers_per_call = 1000
//! state_changes_per_call = 1000       # keys changed (values, timers)
//! state_bytes = "64MiB"               # per-partition quotas
//! state_keys = 1000000
//! timers = 100000
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

use serde::Deserialize;

use crate::sandbox::{LimitSettings, WasiGrants};
use crate::world::EventKind;

/// Settings for one plugin; every field is optional.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Whether the daemon loads the plugin.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A version label for humans; the content hash identifies the build.
    /// At most [`MAX_VERSION_LEN`] bytes, no control characters: it is
    /// shown in logs, `/plugins` and `plugins check`.
    #[serde(default, deserialize_with = "version_label")]
    pub version: Option<String>,
    /// Event kinds delivered to `on-event`; absent means all of them.
    #[serde(default)]
    pub events: Option<EventKinds>,
    /// Logical output name → Kafka topic. Emitting to a name not listed here
    /// fails the call.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Memory, time and quotas; unset ones take the daemon's defaults.
    #[serde(default)]
    pub limits: LimitSettings,
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
            limits: LimitSettings::default(),
            config: toml::Table::new(),
            wasi: WasiGrants::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The longest `version` label, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// A `version` label: short and printable, or refused.
fn version_label<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let label = String::deserialize(d)?;
    if label.len() > MAX_VERSION_LEN {
        return Err(serde::de::Error::custom(format!(
            "version is {} bytes long; at most {MAX_VERSION_LEN}",
            label.len()
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(
            "version has a control character in it",
        ));
    }
    Ok(Some(label))
}

/// The event kinds of `events = [...]`, as a set: a kind listed twice
/// counts once, so neither a look-up per event nor `plugins check`'s line
/// grows with a long list. An empty list is refused: it would deliver
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKinds(u8);

impl EventKinds {
    const ALL: [EventKind; 4] = [
        EventKind::Created,
        EventKind::Updated,
        EventKind::Completed,
        EventKind::Deleted,
    ];

    fn bit(kind: EventKind) -> u8 {
        match kind {
            EventKind::Created => 1,
            EventKind::Updated => 2,
            EventKind::Completed => 4,
            EventKind::Deleted => 8,
        }
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    /// The kinds in the set, in the order of the event lifecycle.
    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        Self::ALL
            .into_iter()
            .filter(move |kind| self.contains(*kind))
    }
}

impl FromIterator<EventKind> for EventKinds {
    fn from_iter<I: IntoIterator<Item = EventKind>>(kinds: I) -> Self {
        Self(
            kinds
                .into_iter()
                .fold(0, |bits, kind| bits | Self::bit(kind)),
        )
    }
}

impl<'de> Deserialize<'de> for EventKinds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Kinds;
        impl<'de> serde::de::Visitor<'de> for Kinds {
            type Value = EventKinds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of event kinds")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EventKinds, A::Error> {
                let mut bits = 0;
                while let Some(EventKindName(kind)) = seq.next_element()? {
                    bits |= EventKinds::bit(kind);
                }
                if bits == 0 {
                    return Err(serde::de::Error::custom(
                        "events = [] delivers no events: list at least one of created, \
                         updated, completed or deleted, or leave `events` out for all of them",
                    ));
                }
                Ok(EventKinds(bits))
            }
        }
        d.deserialize_seq(Kinds)
    }
}

/// An event kind as written in `events = [...]`.
struct EventKindName(EventKind);

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
    /// Parses a manifest from TOML text. The error names the line and the
    /// key but never quotes the text (a manifest may be a symlink to any
    /// file on the host).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| describe_error(&e, text))
    }

    /// Whether events of `kind` go to the plugin.
    pub fn subscribes(&self, kind: EventKind) -> bool {
        self.events.is_none_or(|kinds| kinds.contains(kind))
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

/// A TOML error as `line L, column C: message`, without the snippet of
/// the file `toml` would show.
pub(crate) fn describe_error(err: &toml::de::Error, text: &str) -> String {
    let message = crate::text::quote_bounded(err.message().trim(), 300);
    match err.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{ByteSize, HumanDuration};

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
        assert_eq!(m.limits.memory, Some(ByteSize::mib(32)));
        assert_eq!(m.limits.call_timeout, Some(HumanDuration::millis(50)));
        assert_eq!(m.config_strings()["interval"], "60s");
        assert_eq!(m.config_strings()["max"], "3");
    }

    #[test]
    fn events_are_a_set() {
        let listed = format!(
            "events = [{}]",
            vec!["\"deleted\", \"created\""; 10_000].join(", ")
        );
        let m = Manifest::parse(&listed).unwrap();
        let kinds: Vec<&str> = m.events.unwrap().iter().map(EventKind::name).collect();
        assert_eq!(kinds, ["created", "deleted"]);
        assert!(m.subscribes(EventKind::Deleted));
        assert!(!m.subscribes(EventKind::Updated));
        let all: EventKinds = EventKinds::ALL.into_iter().collect();
        assert_eq!(all.iter().count(), 4);
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
            ("events = []", "events = [] delivers no events"),
            ("events = \"created\"", "expected a list of event kinds"),
            ("[limits]\nmemory = \"lots\"", "\"lots\" is not a size"),
            (
                "[limits]\ncall_timeout = \"soon\"",
                "\"soon\" is not a duration",
            ),
            ("version = 2", "invalid type: integer"),
            (
                "version = \"1.0\\u001b[2J\"",
                "version has a control character",
            ),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        // Shown in every `/plugins` answer and log line: held to a label's
        // length (a megabyte of it would be copied into each).
        let long = format!("version = \"{}\"", "9".repeat(MAX_VERSION_LEN + 1));
        let err = Manifest::parse(&long).unwrap_err();
        assert!(
            err.contains("line 1, column 11: version is 65 bytes long; at most 64"),
            "{err}"
        );
        let fits = format!("version = \"{}\"", "9".repeat(MAX_VERSION_LEN));
        assert_eq!(Manifest::parse(&fits).unwrap().version.unwrap().len(), 64);
    }

    #[test]
    fn errors_never_quote_the_file() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n";
        let err = Manifest::parse(passwd).unwrap_err();
        assert!(err.starts_with("line 1, column "), "{err}");
        assert!(!err.contains("root") && !err.contains("bash"), "{err}");
    }
}
