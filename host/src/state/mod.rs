//! Plugin state and timers for one (plugin, input partition) scope.
//!
//! This is the in-memory view the sandbox reads during a call and the
//! dispatcher updates when a call succeeds. Changes arrive as a
//! [`StateChanges`] set — the effects buffered during one call — so they are
//! applied all together or not at all. Every change is also written to a
//! compacted changelog topic ([`changelog`]) from which the state of a
//! partition is rebuilt when the partition is assigned.

pub mod changelog;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::world::Timestamp;

/// A durable timer: fire at or after `due` with `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// When the timer is due (ms since the epoch).
    pub due: Timestamp,
    /// Opaque bytes handed back to `on-timer`.
    pub payload: Vec<u8>,
    /// How many plugin emits the event whose call set the timer was from
    /// its producer's record: what its `on-timer` call counts from, so a
    /// loop through a timer and the input topic ends like any other (see
    /// `plugins.max_hops`).
    pub hops: u32,
}

/// The state and timer changes one successful call made; `None` deletes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateChanges {
    /// Key/value writes (`Some`) and deletes (`None`).
    pub values: BTreeMap<String, Option<Vec<u8>>>,
    /// Timers set (`Some`) and cancelled (`None`).
    pub timers: BTreeMap<String, Option<Timer>>,
}

impl StateChanges {
    /// Whether the call changed nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.timers.is_empty()
    }

    /// The key names the changes touch, value or timer, each once, in
    /// order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .values
            .keys()
            .chain(self.timers.keys())
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Drops the entries that would leave `state` as it is — a delete of an
    /// absent key, a cancel of an absent timer, a write of the same bytes —
    /// so they cost no changelog record.
    pub fn prune_unchanged(&mut self, state: &PluginState) {
        self.values
            .retain(|key, value| state.get(key) != value.as_deref());
        self.timers
            .retain(|key, timer| state.timer(key) != timer.as_ref());
    }
}

/// How much a plugin holds in one partition, for its quotas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of keys, values and timers (key, payload and due time).
    pub bytes: usize,
    /// Stored values.
    pub keys: usize,
    /// Pending timers.
    pub timers: usize,
}

fn value_size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

fn timer_size(key: &str, timer: &Timer) -> usize {
    key.len() + timer.payload.len() + 8
}

/// Key/value state and timers of one plugin in one partition.
#[derive(Debug, Default, Clone)]
pub struct PluginState {
    values: HashMap<String, Vec<u8>>,
    timers: HashMap<String, Timer>,
    /// Timers ordered by due time, then key, for firing.
    due: BTreeSet<(Timestamp, String)>,
    /// Bytes held, kept up to date by [`apply`](Self::apply).
    bytes: usize,
}

impl PluginState {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    /// The timer under `key`.
    pub fn timer(&self, key: &str) -> Option<&Timer> {
        self.timers.get(key)
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no values are stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every key name holding a value or a timer, each once.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        let timer_only = self
            .timers
            .keys()
            .filter(|key| !self.values.contains_key(*key));
        self.values.keys().chain(timer_only).map(String::as_str)
    }

    /// Number of pending timers.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// What the state holds now.
    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self.bytes,
            keys: self.values.len(),
            timers: self.timers.len(),
        }
    }

    /// What the state would hold after `changes`, without applying them.
    pub fn usage_after(&self, changes: &StateChanges) -> Usage {
        let mut usage = self.usage();
        for (key, value) in &changes.values {
            if let Some(old) = self.values.get(key) {
                usage.bytes -= value_size(key, old);
                usage.keys -= 1;
            }
            if let Some(new) = value {
                usage.bytes += value_size(key, new);
                usage.keys += 1;
            }
        }
        for (key, timer) in &changes.timers {
            if let Some(old) = self.timers.get(key) {
                usage.bytes -= timer_size(key, old);
                usage.timers -= 1;
            }
            if let Some(new) = timer {
                usage.bytes += timer_size(key, new);
                usage.timers += 1;
            }
        }
        usage
    }

    /// Applies the changes of one successful call.
    pub fn apply(&mut self, changes: StateChanges) {
        for (key, value) in changes.values {
            self.set_value(key, value);
        }
        for (key, timer) in changes.timers {
            self.set_timer(key, timer);
        }
    }

    /// Sets (`Some`) or deletes the value under `key`.
    pub fn set_value(&mut self, key: String, value: Option<Vec<u8>>) {
        match value {
            Some(value) => match self.values.get_mut(&key) {
                Some(slot) => {
                    self.bytes = self.bytes - slot.len() + value.len();
                    *slot = value;
                }
                None => {
                    self.bytes += value_size(&key, &value);
                    self.values.insert(key, value);
                }
            },
            None => {
                if let Some(old) = self.values.remove(&key) {
                    self.bytes -= value_size(&key, &old);
                }
            }
        }
    }

    /// Sets (`Some`) or cancels the timer under `key`.
    pub fn set_timer(&mut self, key: String, timer: Option<Timer>) {
        self.remove_timer(&key);
        if let Some(timer) = timer {
            self.bytes += timer_size(&key, &timer);
            self.due.insert((timer.due, key.clone()));
            self.timers.insert(key, timer);
        }
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.due.first().map(|(due, _)| *due)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(String, Timer)> {
        let (due, _) = self.due.first()?;
        if *due > now {
            return None;
        }
        let (_, key) = self.due.pop_first()?;
        let timer = self.timers.remove(&key)?;
        self.bytes -= timer_size(&key, &timer);
        Some((key, timer))
    }

    fn remove_timer(&mut self, key: &str) {
        if let Some(old) = self.timers.remove(key) {
            self.bytes -= timer_size(key, &old);
            self.due.remove(&(old.due, key.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(due: Timestamp) -> Option<Timer> {
        Some(Timer {
            due,
            payload: vec![],
            hops: 0,
        })
    }

    #[test]
    fn timers_fire_in_due_order_and_moves_replace() {
        let mut state = PluginState::default();
        let mut changes = StateChanges::default();
        changes.timers.insert("b".into(), timer(20));
        changes.timers.insert("a".into(), timer(30));
        changes.timers.insert("c".into(), timer(10));
        state.apply(changes);
        // Move `c` later, cancel `b`.
        let mut changes = StateChanges::default();
        changes.timers.insert("c".into(), timer(40));
        changes.timers.insert("b".into(), None);
        state.apply(changes);

        assert_eq!(state.next_due(), Some(30));
        assert!(state.pop_due(29).is_none());
        assert_eq!(state.pop_due(100).map(|(k, _)| k), Some("a".into()));
        assert_eq!(
            state.pop_due(100).map(|(k, t)| (k, t.due)),
            Some(("c".into(), 40))
        );
        assert!(state.pop_due(100).is_none());
        assert_eq!(state.timer_count(), 0);
    }

    #[test]
    fn unchanged_entries_are_pruned() {
        let mut state = PluginState::default();
        let mut changes = StateChanges::default();
        changes.values.insert("same".into(), Some(b"v".to_vec()));
        changes.timers.insert("t".into(), timer(5));
        state.apply(changes);

        let mut changes = StateChanges::default();
        changes.values.insert("same".into(), Some(b"v".to_vec()));
        changes.values.insert("absent".into(), None);
        changes.values.insert("new".into(), Some(b"x".to_vec()));
        changes.timers.insert("t".into(), timer(5));
        changes.timers.insert("never-set".into(), None);
        changes.timers.insert("moved".into(), timer(9));
        changes.prune_unchanged(&state);
        assert_eq!(changes.values.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(changes.timers.keys().collect::<Vec<_>>(), ["moved"]);
    }

    #[test]
    fn usage_is_tracked_and_projected() {
        let mut state = PluginState::default();
        let mut changes = StateChanges::default();
        changes.values.insert("ab".into(), Some(b"xyz".to_vec()));
        changes.timers.insert("t".into(), timer(5));
        let projected = state.usage_after(&changes);
        state.apply(changes);
        assert_eq!(projected, state.usage());
        assert_eq!(
            state.usage(),
            Usage {
                bytes: 5 + 9,
                keys: 1,
                timers: 1
            }
        );
        let mut changes = StateChanges::default();
        changes.values.insert("ab".into(), Some(b"x".to_vec()));
        changes.values.insert("cd".into(), None);
        changes.timers.insert("t".into(), None);
        let projected = state.usage_after(&changes);
        state.apply(changes);
        assert_eq!(projected, state.usage());
        assert_eq!(state.usage().bytes, 3);
        state.pop_due(i64::MAX);
        assert_eq!(state.usage().bytes, 3);
    }

    #[test]
    fn values_set_and_delete() {
        let mut state = PluginState::default();
        let mut changes = StateChanges::default();
        changes.values.insert("k".into(), Some(b"v".to_vec()));
        state.apply(changes);
        assert_eq!(state.get("k"), Some(&b"v"[..]));
        let mut changes = StateChanges::default();
        changes.values.insert("k".into(), None);
        state.apply(changes);
        assert!(state.is_empty());
    }
}
