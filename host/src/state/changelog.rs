//! The changelog: every plugin state change as a record on a compacted
//! topic, in the partition numbered like the input partition it belongs to,
//! so a partition's state can be rebuilt wherever the partition goes.
//!
//! Key: `INPUT_TOPIC \x1f PLUGIN \x1f KIND \x1f KEY`. One record holds
//! everything stored under one key name (KIND `e`): its state value and its
//! timer, so a plugin that keeps a task's record and its timer under the
//! same name costs one record per change, not two. Value: a flags byte
//! (`1`: a value follows, `2`: a timer follows), then the timer — due time
//! (8 bytes, big-endian ms), payload length (4 bytes, big-endian), payload
//! and, with flag `4`, the hops it counts from (4 bytes, big-endian; left
//! out when 0, so only a timer set while handling fed-back input has it,
//! and only such a record is unreadable to versions before the flag) —
//! then the value's bytes. A key with neither is a tombstone (no value),
//! which compaction eventually removes.
//!
//! Changelogs written before hold one record per value (KIND `v`, the
//! state bytes) and per timer (KIND `t`, due time then payload); they are
//! still read, and the [`Restorer`] reports which of them are live so the
//! first write of such a key also tombstones them (else one could outlive
//! the newer record's tombstone under compaction and come back).

use std::collections::{HashMap, HashSet};

use super::{PluginState, Timer};

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
    /// Everything under the key: its value and its timer, each set
    /// (`Some`) or absent.
    Key {
        /// The state value.
        value: Option<Vec<u8>>,
        /// The timer.
        timer: Option<Timer>,
    },
    /// A state value set (`Some`) or deleted (an older changelog's record).
    Value(Option<Vec<u8>>),
    /// A timer set (`Some`) or cancelled/fired (an older changelog's
    /// record).
    Timer(Option<Timer>),
}

/// Why a changelog record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("changelog record {0}")]
pub struct CorruptRecord(&'static str);

/// What a changelog record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A key's value and timer.
    Key,
    /// A state value (older changelogs).
    Value,
    /// A timer (older changelogs).
    Timer,
}

impl EntryKind {
    fn tag(self) -> u8 {
        match self {
            Self::Key => b'e',
            Self::Value => b'v',
            Self::Timer => b't',
        }
    }
}

const HAS_VALUE: u8 = 1;
const HAS_TIMER: u8 = 2;
const HAS_HOPS: u8 = 4;

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

/// The value of an older changelog's timer record.
pub fn timer_value(timer: &Timer) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + timer.payload.len());
    out.extend_from_slice(&timer.due.to_be_bytes());
    out.extend_from_slice(&timer.payload);
    out
}

/// The value of a key's record: what is stored under it (`None`, a
/// tombstone, when nothing is).
pub fn key_value(value: Option<&[u8]>, timer: Option<&Timer>) -> Option<Vec<u8>> {
    if value.is_none() && timer.is_none() {
        return None;
    }
    let timer_len = timer.map_or(0, |t| 12 + t.payload.len());
    let mut out = Vec::with_capacity(1 + timer_len + value.map_or(0, <[u8]>::len));
    let mut flags = 0;
    if value.is_some() {
        flags |= HAS_VALUE;
    }
    if let Some(timer) = timer {
        flags |= HAS_TIMER;
        if timer.hops > 0 {
            flags |= HAS_HOPS;
        }
    }
    out.push(flags);
    if let Some(timer) = timer {
        out.extend_from_slice(&timer.due.to_be_bytes());
        // A payload is bounded far below 4 GiB (`message.max.bytes`).
        let len = u32::try_from(timer.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&timer.payload);
        if timer.hops > 0 {
            out.extend_from_slice(&timer.hops.to_be_bytes());
        }
    }
    if let Some(value) = value {
        out.extend_from_slice(value);
    }
    Some(out)
}

fn decode_key_value(bytes: &[u8]) -> Result<Change, CorruptRecord> {
    let (&flags, mut rest) = bytes.split_first().ok_or(CorruptRecord("value is empty"))?;
    if flags & !(HAS_VALUE | HAS_TIMER | HAS_HOPS) != 0 {
        return Err(CorruptRecord("value has unknown flags"));
    }
    if flags & HAS_HOPS != 0 && flags & HAS_TIMER == 0 {
        return Err(CorruptRecord("value has hops but no timer"));
    }
    let timer = if flags & HAS_TIMER != 0 {
        let (due, after) = rest
            .split_first_chunk::<8>()
            .ok_or(CorruptRecord("timer is shorter than 8 bytes"))?;
        let (len, after) = after
            .split_first_chunk::<4>()
            .ok_or(CorruptRecord("timer has no payload length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if after.len() < len {
            return Err(CorruptRecord("timer payload is cut short"));
        }
        let (payload, mut after) = after.split_at(len);
        let mut hops = 0;
        if flags & HAS_HOPS != 0 {
            let (bytes, tail) = after
                .split_first_chunk::<4>()
                .ok_or(CorruptRecord("timer hops are shorter than 4 bytes"))?;
            hops = u32::from_be_bytes(*bytes);
            after = tail;
        }
        rest = after;
        Some(Timer {
            due: i64::from_be_bytes(*due),
            payload: payload.to_vec(),
            hops,
        })
    } else {
        None
    };
    let value = (flags & HAS_VALUE != 0).then(|| rest.to_vec());
    if value.is_none() && !rest.is_empty() {
        return Err(CorruptRecord("value has trailing bytes"));
    }
    Ok(Change::Key { value, timer })
}

/// The changelog records (key, value-or-tombstone) for one call's changes:
/// one per key name the call changed (`names`, each once), holding what `state` — the plugin's
/// state with the changes applied — now stores under that name.
pub fn records(
    input_topic: &str,
    plugin: &str,
    names: &[String],
    state: &PluginState,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    names
        .iter()
        .map(|name| {
            (
                key(input_topic, plugin, EntryKind::Key, name),
                key_value(state.get(name), state.timer(name)),
            )
        })
        .collect()
}

/// Takes out of `legacy` (the older changelog's live records, as
/// [`Restorer::into_parts`] reports them) those that the records of one
/// call's changes supersede, and returns their keys, to be tombstoned once
/// those records are written.
pub fn superseded(
    input_topic: &str,
    plugin: &str,
    names: &[String],
    legacy: &mut HashSet<Vec<u8>>,
) -> Vec<Vec<u8>> {
    if legacy.is_empty() {
        return Vec::new();
    }
    names
        .iter()
        .flat_map(|name| legacy_keys(input_topic, plugin, name))
        .filter(|key| legacy.remove(key))
        .collect()
}

/// The tombstones that forget `plugin`'s state for good: one for each key
/// name `state` holds, and one for each of its older changelog's records
/// still live in `legacy` (taken out of it).
pub fn forget(
    input_topic: &str,
    plugin: &str,
    state: &PluginState,
    legacy: &mut HashSet<Vec<u8>>,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut tombstones: Vec<_> = state
        .key_names()
        .map(|name| (key(input_topic, plugin, EntryKind::Key, name), None))
        .collect();
    // `input_topic SEP plugin SEP`, what every record of the plugin's
    // starts with.
    let mut prefix = key(input_topic, plugin, EntryKind::Key, "");
    prefix.truncate(input_topic.len() + plugin.len() + 2);
    legacy.retain(|key| {
        let ours = key.starts_with(&prefix);
        if ours {
            tombstones.push((key.clone(), None));
        }
        !ours
    });
    tombstones
}

/// A changelog record's key: input topic, plugin, kind tag and key name.
fn decode_key(key: &[u8]) -> Result<(&str, &str, &str, &str), CorruptRecord> {
    let text = std::str::from_utf8(key).map_err(|_| CorruptRecord("key is not UTF-8"))?;
    let mut parts = text.splitn(4, char::from(SEP));
    let (Some(input_topic), Some(plugin), Some(kind), Some(key)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CorruptRecord("key has fewer than four parts"));
    };
    Ok((input_topic, plugin, kind, key))
}

/// Decodes a changelog record.
pub fn decode<'a>(key: &'a [u8], value: Option<&[u8]>) -> Result<Entry<'a>, CorruptRecord> {
    let (input_topic, plugin, kind, key) = decode_key(key)?;
    let change = match kind {
        "e" => match value {
            Some(value) => decode_key_value(value)?,
            None => Change::Key {
                value: None,
                timer: None,
            },
        },
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
                        hops: 0,
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
    /// Live records of an older changelog's kinds, by changelog key, and
    /// whether a newer record of their key has superseded them.
    legacy: HashMap<Vec<u8>, bool>,
    /// Records applied.
    pub applied: u64,
    /// Records skipped (another input topic, or unreadable).
    pub skipped: u64,
    /// Of those, the unreadable ones.
    pub unreadable: u64,
}

/// How many unreadable changelog records a restore names in the log; the
/// rest are counted in [`Restorer::unreadable`].
const UNREADABLE_SHOWN: u64 = 10;

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
                // The first few are shown; a changelog full of them would
                // otherwise write a line per record.
                if self.unreadable < UNREADABLE_SHOWN {
                    tracing::warn!(error = %err, "Skipping an unreadable changelog record.");
                }
                self.unreadable += 1;
                self.skipped += 1;
                self.forget_unreadable(input_topic, key);
                return;
            }
        };
        if let Change::Key { .. } = entry.change
            && !self.legacy.is_empty()
        {
            for old in legacy_keys(input_topic, entry.plugin, entry.key) {
                if let Some(superseded) = self.legacy.get_mut(&old) {
                    *superseded = true;
                }
            }
        }
        let state = match self.states.get_mut(entry.plugin) {
            Some(state) => state,
            None => self.states.entry(entry.plugin.to_owned()).or_default(),
        };
        let name = entry.key.to_owned();
        match entry.change {
            Change::Key { value, timer } => {
                if timer.is_some() || state.timer(&name).is_some() {
                    state.set_timer(name.clone(), timer);
                }
                state.set_value(name, value);
            }
            Change::Value(v) => {
                if retire(&mut self.legacy, key, v.is_some()) {
                    state.set_value(name, v);
                }
            }
            Change::Timer(t) => {
                if retire(&mut self.legacy, key, t.is_some()) {
                    state.set_timer(name, t);
                }
            }
        }
        self.applied += 1;
    }

    /// A record whose key reads but whose value does not (a newer
    /// version's flag, say) replaced whatever its key held before: that is
    /// dropped too, not left in force — an older value or timer would come
    /// back, or not, as compaction happened to have removed it.
    fn forget_unreadable(&mut self, input_topic: &str, key: &[u8]) {
        let Ok((topic, plugin, kind, name)) = decode_key(key) else {
            return;
        };
        if topic != input_topic {
            return;
        }
        let Some(state) = self.states.get_mut(plugin) else {
            return;
        };
        match kind {
            "e" => {
                state.set_timer(name.to_owned(), None);
                state.set_value(name.to_owned(), None);
            }
            "t" => state.set_timer(name.to_owned(), None),
            _ => {}
        }
    }

    /// Takes out the older changelog's live records that a newer record of
    /// their key has superseded, to be tombstoned now. Their retirement is
    /// otherwise left to the next write of the key, which a key deleted
    /// (its newer record a tombstone) may never have: once compaction
    /// removed that tombstone, the older record would be the key's last
    /// and come back at every restore. The newer record is durable, so a
    /// tombstone for the older one cannot take anything of it away.
    pub fn take_superseded(&mut self) -> Vec<Vec<u8>> {
        let mut superseded = Vec::new();
        self.legacy.retain(|key, newer| {
            if *newer {
                superseded.push(key.clone());
            }
            !*newer
        });
        superseded
    }

    /// The rebuilt states, by plugin name, and the changelog keys of the
    /// older changelog's records still live (see [`legacy_keys`]).
    pub fn into_parts(self) -> (HashMap<String, PluginState>, HashSet<Vec<u8>>) {
        (self.states, self.legacy.into_keys().collect())
    }
}

/// Tracks an older changelog's record (`live`: set, else a tombstone);
/// returns whether it applies to the state. A tombstone applies only to a
/// record it retires that no newer record superseded: one written to retire
/// a superseded record (after the newer record) must leave the newer
/// record's state alone — also when compaction has already removed the
/// record it retired.
fn retire(legacy: &mut HashMap<Vec<u8>, bool>, key: &[u8], live: bool) -> bool {
    if live {
        legacy.insert(key.to_vec(), false);
        return true;
    }
    legacy.remove(key) == Some(false)
}

/// The older changelog's keys a record for `name` supersedes: its value's
/// and its timer's.
pub fn legacy_keys(input_topic: &str, plugin: &str, name: &str) -> [Vec<u8>; 2] {
    [
        key(input_topic, plugin, EntryKind::Value, name),
        key(input_topic, plugin, EntryKind::Timer, name),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateChanges;

    fn timer(due: i64, payload: &[u8]) -> Timer {
        Timer {
            due,
            payload: payload.to_vec(),
            hops: 0,
        }
    }

    fn restore(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Restorer {
        let mut restorer = Restorer::default();
        for (key, value) in records {
            restorer.apply("task-events", key, value.as_deref());
        }
        restorer
    }

    /// A record whose value cannot be read (a newer version's flag) leaves
    /// its key empty: the older value and timer it replaced do not come
    /// back (they would, or not, as compaction happened to go).
    #[test]
    fn an_unreadable_value_drops_what_its_key_held_before() {
        let name = |n: &str| key("task-events", "reminders", EntryKind::Key, n);
        let older = key_value(Some(b"memo"), Some(&timer(60_000, b"p")));
        let restorer = restore(&[
            (name("task:1"), older.clone()),
            (name("task:2"), older),
            (name("task:1"), Some(vec![HAS_VALUE | 0x08, b'x'])),
        ]);
        assert_eq!((restorer.unreadable, restorer.applied), (1, 2));
        let (states, _) = restorer.into_parts();
        let state = &states["reminders"];
        assert!(state.get("task:1").is_none() && state.timer("task:1").is_none());
        assert!(state.get("task:2").is_some() && state.timer("task:2").is_some());
    }

    #[test]
    fn a_key_with_a_value_and_a_timer_is_one_record_and_round_trips() {
        let mut state = PluginState::default();
        let mut changes = StateChanges::default();
        changes
            .values
            .insert("task:1\u{1f}odd".into(), Some(b"memo".to_vec()));
        changes.timers.insert(
            "task:1\u{1f}odd".into(),
            Some(timer(1_769_414_400_000, b"p")),
        );
        let deep = Timer {
            hops: 3,
            ..timer(5, b"")
        };
        changes
            .timers
            .insert("only-timer".into(), Some(deep.clone()));
        changes.values.insert("gone".into(), None);
        state.apply(changes.clone());

        let records = records("task-events", "reminders", &changes.names(), &state);
        assert_eq!(records.len(), 3, "one record per key name: {records:?}");
        let gone = key("task-events", "reminders", EntryKind::Key, "gone");
        assert!(
            records.iter().any(|(k, v)| *k == gone && v.is_none()),
            "a key holding nothing is a tombstone"
        );

        let mut restorer = restore(&records);
        // A record of another input topic is not ours.
        restorer.apply("other", &records[0].0, records[0].1.as_deref());
        // Nor is what no version wrote: skipped, counted, named in the log
        // only for the first few.
        for _ in 0..1000 {
            restorer.apply("task-events", b"junk", Some(b"junk"));
        }
        assert_eq!(
            (restorer.applied, restorer.skipped, restorer.unreadable),
            (3, 1001, 1000)
        );
        let (states, legacy) = restorer.into_parts();
        let restored = &states["reminders"];
        assert_eq!(restored.get("task:1\u{1f}odd"), Some(&b"memo"[..]));
        assert_eq!(
            restored.timer("task:1\u{1f}odd"),
            Some(&timer(1_769_414_400_000, b"p"))
        );
        assert_eq!(restored.timer("only-timer"), Some(&deep), "hops kept");
        assert_eq!(restored.get("only-timer"), None);
        assert_eq!(restored.len(), 1);
        assert!(legacy.is_empty());
    }

    #[test]
    fn an_older_changelog_is_read_and_its_live_records_reported() {
        let value = key("task-events", "reminders", EntryKind::Value, "task:1");
        let old_timer = key("task-events", "reminders", EntryKind::Timer, "task:1");
        let other = key("task-events", "reminders", EntryKind::Value, "task:2");
        let newer = key("task-events", "reminders", EntryKind::Key, "task:1");
        let restorer = restore(&[
            (value.clone(), Some(b"old".to_vec())),
            (old_timer.clone(), Some(timer_value(&timer(9, b"t")))),
            (other.clone(), Some(b"x".to_vec())),
            (other, None),
            // The newer record wins over both older ones.
            (newer.clone(), key_value(Some(b"new"), None)),
        ]);
        let (states, legacy) = restorer.into_parts();
        let state = &states["reminders"];
        assert_eq!(state.get("task:1"), Some(&b"new"[..]));
        assert_eq!(state.timer_count(), 0);
        assert_eq!(state.get("task:2"), None);
        assert_eq!(
            legacy,
            HashSet::from([value.clone(), old_timer.clone()]),
            "the live older records, to be tombstoned"
        );
        assert_eq!(
            legacy_keys("task-events", "reminders", "task:1"),
            [value.clone(), old_timer.clone()]
        );

        // The newer record, then (once it is written) the tombstones that
        // retire the older ones: the state is the newer record's — also
        // after compaction removed the older records, leaving tombstones
        // whose records are gone.
        let old = [
            (value.clone(), Some(b"old".to_vec())),
            (old_timer.clone(), Some(timer_value(&timer(9, b"t")))),
        ];
        let newer_record = (newer, key_value(Some(b"new"), None));
        let tombstones = [(value, None), (old_timer, None)];
        let written: Vec<_> = old
            .iter()
            .cloned()
            .chain([newer_record.clone()])
            .chain(tombstones.iter().cloned())
            .collect();
        let compacted: Vec<_> = [newer_record]
            .into_iter()
            .chain(tombstones.iter().cloned())
            .collect();
        for records in [written, compacted] {
            let (states, legacy) = restore(&records).into_parts();
            assert_eq!(states["reminders"].get("task:1"), Some(&b"new"[..]));
            assert_eq!(states["reminders"].timer_count(), 0);
            assert!(legacy.is_empty());
        }

        // An older version's own delete still deletes.
        let (states, legacy) = restore(&[old[0].clone(), tombstones[0].clone()]).into_parts();
        assert_eq!(states["reminders"].get("task:1"), None);
        assert!(legacy.is_empty());
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
        for (value, reason) in [
            (&b""[..], "value is empty"),
            (b"\x08", "value has unknown flags"),
            (b"\x04", "value has hops but no timer"),
            (
                b"\x06\0\0\0\0\0\0\0\x01\0\0\0\0\0\0",
                "timer hops are shorter than 4 bytes",
            ),
            (b"\x02\0\0", "timer is shorter than 8 bytes"),
            (b"\x02\0\0\0\0\0\0\0\x01\0\0", "timer has no payload length"),
            (
                b"\x02\0\0\0\0\0\0\0\x01\0\0\0\x05ab",
                "timer payload is cut short",
            ),
            (b"\x00junk", "value has trailing bytes"),
        ] {
            assert_eq!(
                decode(b"a\x1fb\x1fe\x1fk", Some(value)).unwrap_err(),
                CorruptRecord(reason)
            );
        }
    }
}
