//! Coalescing a partition's state changes before they go to the changelog,
//! as Kafka Streams' record cache does: changes are held for
//! `pipeline.changelog_flush_interval`, a key changed again while held
//! keeps only its latest value, and what is held is then written as one
//! batch. A partition whose state has not changed for
//! `pipeline.changelog_flush_idle` (50 ms) writes what it holds without
//! waiting out the interval: nothing is left to coalesce with, and the
//! inputs behind the changes get their offsets stored (after a burst, or on
//! a partition with little traffic) within tens of milliseconds instead of
//! up to the whole interval. The price: a key changed every 50 ms to 1 s is
//! written once per change, not once per interval.
//!
//! Batches are numbered (*generations*). An input record whose call changed
//! state needs the generation its changes were held in; its offset may be
//! stored only once that generation is written ([`ChangelogCache::is_written`]).
//! One batch is written at a time, so a key's records reach the changelog
//! in the order they were made.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tokio::time::Instant;

use super::records::OutRecord;

/// A changelog record's key and value (`None`: a tombstone).
pub(super) type Change = (Vec<u8>, Option<Vec<u8>>);

/// The changes of one partition not yet written.
pub(super) struct ChangelogCache {
    topic: String,
    partition: i32,
    interval: Duration,
    /// How long without a new change before the held ones are written.
    idle: Duration,
    held: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of the held keys and values.
    bytes: usize,
    /// When the oldest held change was made.
    since: Option<Instant>,
    /// When the newest held change was made.
    last: Option<Instant>,
    /// The generation the held changes will be written as.
    next: u64,
    /// The newest generation written (acknowledged).
    written: u64,
}

impl ChangelogCache {
    /// An empty cache for changelog partition `partition` of `topic`,
    /// holding changes for `interval`, or until none came for `idle`.
    pub(super) fn new(topic: String, partition: i32, interval: Duration, idle: Duration) -> Self {
        Self {
            topic,
            partition,
            interval,
            idle,
            held: HashMap::new(),
            bytes: 0,
            since: None,
            last: None,
            next: 1,
            written: 0,
        }
    }

    /// Holds a change made at `now`; returns the generation it will be
    /// written in and whether it replaced a held change of the same key.
    pub(super) fn put(&mut self, (key, value): Change, now: Instant) -> (u64, bool) {
        let size = value.as_ref().map_or(0, Vec::len);
        let replaced = match self.held.entry(key) {
            Entry::Occupied(mut held) => {
                let old = held.get().as_ref().map_or(0, Vec::len);
                self.bytes = self.bytes - old + size;
                held.insert(value);
                true
            }
            Entry::Vacant(slot) => {
                self.bytes += slot.key().len() + size;
                slot.insert(value);
                false
            }
        };
        self.since.get_or_insert(now);
        self.last = Some(now);
        (self.next, replaced)
    }

    /// How many keys have a change held.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no change is held.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the held changes are due to be written (`None`: none held):
    /// the interval after the oldest, or the idle time after the newest if
    /// that comes first.
    pub(super) fn due_at(&self) -> Option<Instant> {
        let (since, last) = (self.since?, self.last?);
        Some((since + self.interval).min(last + self.idle))
    }

    /// Takes what is held as changelog records, with the generation they
    /// are written as.
    pub(super) fn take(&mut self) -> (u64, Vec<OutRecord>) {
        let generation = self.next;
        self.next += 1;
        self.bytes = 0;
        self.since = None;
        self.last = None;
        let records = self
            .held
            .drain()
            .map(|(key, value)| OutRecord {
                topic: self.topic.clone(),
                partition: Some(self.partition),
                key: Some(key),
                value,
                headers: Vec::new(),
            })
            .collect();
        (generation, records)
    }

    /// Generation `generation` has been acknowledged.
    pub(super) fn written(&mut self, generation: u64) {
        self.written = self.written.max(generation);
    }

    /// Whether the changes of `generation` are written (0: none needed).
    pub(super) fn is_written(&self, generation: u64) -> bool {
        generation <= self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, value: Option<&str>) -> Change {
        (
            key.as_bytes().to_vec(),
            value.map(|v| v.as_bytes().to_vec()),
        )
    }

    const IDLE: Duration = Duration::from_millis(50);

    #[tokio::test(start_paused = true)]
    async fn a_key_held_twice_is_written_once_with_its_latest_value() {
        let mut cache = ChangelogCache::new("log".into(), 3, Duration::from_secs(1), IDLE);
        assert!(cache.is_empty() && cache.due_at().is_none());
        let started = Instant::now();
        assert_eq!(
            cache.put(change("a", Some("1")), Instant::now()),
            (1, false)
        );
        assert_eq!(
            cache.due_at(),
            Some(started + IDLE),
            "due once idle after the newest change"
        );
        // Changes keep coming, never IDLE apart: due IDLE after the newest
        // until the interval after the oldest comes first.
        for _ in 0..30 {
            tokio::time::advance(IDLE - Duration::from_millis(10)).await;
            let now = Instant::now();
            cache.put(change("b", Some("x")), now);
            let due = cache.due_at();
            assert_eq!(
                due,
                Some((now + IDLE).min(started + Duration::from_secs(1)))
            );
        }
        assert_eq!(
            cache.put(change("a", Some("22")), Instant::now()),
            (1, true)
        );
        assert_eq!(cache.put(change("b", None), Instant::now()), (1, true));
        assert_eq!(cache.bytes(), 1 + 2 + 1, "keys and latest values");
        assert_eq!(
            cache.due_at(),
            Some(started + Duration::from_secs(1)),
            "due an interval after the oldest held change"
        );

        let (generation, mut records) = cache.take();
        assert_eq!(generation, 1);
        records.sort_by(|x, y| x.key.cmp(&y.key));
        let written: Vec<_> = records
            .iter()
            .map(|r| (r.key.clone(), r.value.clone(), r.partition))
            .collect();
        assert_eq!(
            written,
            [
                (Some(b"a".to_vec()), Some(b"22".to_vec()), Some(3)),
                (Some(b"b".to_vec()), None, Some(3)),
            ]
        );
        assert!(cache.is_empty() && cache.due_at().is_none() && cache.bytes() == 0);

        // Changes made while generation 1 is being written go into 2.
        assert_eq!(
            cache.put(change("a", Some("3")), Instant::now()),
            (2, false)
        );
        assert!(cache.is_written(0));
        assert!(!cache.is_written(1));
        cache.written(1);
        assert!(cache.is_written(1) && !cache.is_written(2));
    }
}
