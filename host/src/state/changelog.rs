//! The changelog: every plugin state change as a record on a compacted
//! topic, in the partition numbered like the input partition it belongs to,
//! so a partition's state can be rebuilt wherever the partition goes.
//!
//! Key: `INPUT_TOPIC \x1f PLUGIN \x1f KIND \x1f KEY`, where KIND is `v` for a
//! state value and `t` for a timer. Value: the state bytes, or for a timer
//! the due time (8 bytes, big-endian ms) followed by the payload. A delete, a
//! cancelled timer and a fired timer are tombstones (no value), which
//! compaction eventually removes.

use std::collections::HashMap;

use super::{PluginState, StateChanges, Timer};

const SEP: u8 = 0x1f;

/// One decoded changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The input topic the state belongs to.
    pub input_topic: &'a str,
    /// The plugin.
    pub plugin: &'a str,
    /// The state key or timer key.
    pub key: &'a str,
    /// What changed.
    pub change: Change,
}

/// A state or timer change; `None` inside means deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A state value set (`Some`) or deleted.
    Value(Option<Vec<u8>>),
    /// A timer set (`Some`) or cancelled/fired.
    Timer(Option<Timer>),
}

/// Why a changelog record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("changelog record {0}")]
pub struct CorruptRecord(&'static str);

/// What a changelog record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A state value.
    Value,
    /// A timer.
    Timer,
}

impl EntryKind {
    fn tag(self) -> u8 {
        match self {
            Self::Value => b'v',
            Self::Timer => b't',
        }
    }
}

/// The key of a state value or timer.
pub fn key(input_topic: &str, plugin: &str, kind: EntryKind, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input_topic.len() + plugin.len() + key.len() + 5);
    out.extend_from_slice(input_topic.as_bytes());
    out.push(SEP);
    out.extend_from_slice(plugin.as_bytes());
    out.push(SEP);
    out.push(kind.tag());
    out.push(SEP);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The value of a timer record.
pub fn timer_value(timer: &Timer) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + timer.payload.len());
    out.extend_from_slice(&timer.due.to_be_bytes());
    out.extend_from_slice(&timer.payload);
    out
}

/// Every changelog record (key, value-or-tombstone) for one call's changes.
pub fn records(
    input_topic: &str,
    plugin: &str,
    changes: &StateChanges,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let values = changes
        .values
        .iter()
        .map(|(k, v)| (key(input_topic, plugin, EntryKind::Value, k), v.clone()));
    let timers = changes.timers.iter().map(|(k, t)| {
        (
            key(input_topic, plugin, EntryKind::Timer, k),
            t.as_ref().map(timer_value),
        )
    });
    values.chain(timers).collect()
}

/// Decodes a changelog record.
pub fn decode<'a>(key: &'a [u8], value: Option<&[u8]>) -> Result<Entry<'a>, CorruptRecord> {
    let text = std::str::from_utf8(key).map_err(|_| CorruptRecord("key is not UTF-8"))?;
    let mut parts = text.splitn(4, char::from(SEP));
    let (Some(input_topic), Some(plugin), Some(kind), Some(key)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CorruptRecord("key has fewer than four parts"));
    };
    let change = match kind {
        "v" => Change::Value(value.map(<[u8]>::to_vec)),
        "t" => Change::Timer(
            value
                .map(|v| {
                    let (due, payload) = v
                        .split_first_chunk::<8>()
                        .ok_or(CorruptRecord("timer value is shorter than 8 bytes"))?;
                    Ok(Timer {
                        due: i64::from_be_bytes(*due),
                        payload: payload.to_vec(),
                    })
                })
                .transpose()?,
        ),
        _ => return Err(CorruptRecord("key has an unknown kind")),
    };
    Ok(Entry {
        input_topic,
        plugin,
        key,
        change,
    })
}

/// Rebuilds plugin states from changelog records, applied in order (later
/// records win, as compaction would keep them).
#[derive(Debug, Default)]
pub struct Restorer {
    states: HashMap<String, PluginState>,
    /// Records applied.
    pub applied: u64,
    /// Records skipped (another input topic, or unreadable).
    pub skipped: u64,
}

impl Restorer {
    /// Applies one record if it belongs to `input_topic`.
    pub fn apply(&mut self, input_topic: &str, key: &[u8], value: Option<&[u8]>) {
        let entry = match decode(key, value) {
            Ok(entry) if entry.input_topic == input_topic => entry,
            Ok(_) => {
                self.skipped += 1;
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "Skipping an unreadable changelog record.");
                self.skipped += 1;
                return;
            }
        };
        let state = self.states.entry(entry.plugin.to_owned()).or_default();
        let mut changes = StateChanges::default();
        match entry.change {
            Change::Value(v) => {
                changes.values.insert(entry.key.to_owned(), v);
            }
            Change::Timer(t) => {
                changes.timers.insert(entry.key.to_owned(), t);
            }
        }
        state.apply(changes);
        self.applied += 1;
    }

    /// The rebuilt states, by plugin name.
    pub fn into_states(self) -> HashMap<String, PluginState> {
        self.states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_later_ones_win() {
        let mut changes = StateChanges::default();
        changes
            .values
            .insert("k\u{1f}odd".into(), Some(b"v1".to_vec()));
        changes.values.insert("gone".into(), None);
        changes.timers.insert(
            "t1".into(),
            Some(Timer {
                due: 1_769_414_400_000,
                payload: b"p".to_vec(),
            }),
        );
        let records = records("task-events", "reminders", &changes);
        assert_eq!(records.len(), 3);

        let mut restorer = Restorer::default();
        for (key, value) in &records {
            restorer.apply("task-events", key, value.as_deref());
        }
        // A record of another input topic is not ours.
        restorer.apply("other", &records[0].0, records[0].1.as_deref());
        // The timer fires later: a tombstone.
        restorer.apply(
            "task-events",
            &key("task-events", "reminders", EntryKind::Timer, "t1"),
            None,
        );
        assert_eq!(restorer.applied, 4);
        assert_eq!(restorer.skipped, 1);
        let states = restorer.into_states();
        let state = &states["reminders"];
        assert_eq!(
            state.get("k\u{1f}odd"),
            Some(&b"v1"[..]),
            "separator inside the key survives"
        );
        assert_eq!(state.timer_count(), 0);
    }

    #[test]
    fn corrupt_records_are_reported() {
        assert_eq!(
            decode(b"a\x1fb", Some(b"x")).unwrap_err(),
            CorruptRecord("key has fewer than four parts")
        );
        assert_eq!(
            decode(b"a\x1fb\x1ft\x1fk", Some(b"short")).unwrap_err(),
            CorruptRecord("timer value is shorter than 8 bytes")
        );
        assert_eq!(
            decode(b"a\x1fb\x1fx\x1fk", None).unwrap_err(),
            CorruptRecord("key has an unknown kind")
        );
    }
}
