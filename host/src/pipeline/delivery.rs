//! A partition's deliveries: what each input record (or timer firing)
//! produced, in order, until the broker has acknowledged all of it and its
//! offset may be stored.
//!
//! Failed deliveries are classified ([`kafka::is_permanent`]):
//! - a **retriable** error (a timeout, a leader change, a broker down) is
//!   retried with exponential back-off (100 ms doubling to 30 s) for as
//!   long as it takes; after a few seconds of failing the partition is
//!   reported stalled (not ready, `todo_eventd_partition_stalled`, an error
//!   log at a bounded rate) until it delivers again;
//! - a **permanent** error on a plugin output (too large, invalid, no such
//!   topic, not authorised) dead-letters the input record with the reason
//!   instead (`error.stage = deliver`), so one poison record cannot hold up
//!   the records behind it;
//! - a permanent error on a dead letter is answered with a minimal dead
//!   letter (headers and the first KiB of the original); if even that — or
//!   a changelog record — cannot be produced, the partition stalls loudly
//!   and keeps retrying at the longest back-off: nothing is skipped, and
//!   nothing loops silently while ready.
//!
//! State changes are written in batches: once an entry's own records are
//! acknowledged, its changes join the partition's [`ChangelogCache`], and
//! its offset is handed out once the batch holding them is acknowledged
//! too. The changelog never runs ahead of the outputs: a plugin that keeps
//! in its state what it has already sent (a reminder's memo, a completion
//! answered) would otherwise skip, when the input is read again (or the
//! timer restored) after a crash or a give-up, an output that never got
//! through.
//!
//! Everything here is cancel-safe: progress lives in the send states, so
//! the worker can race [`Deliveries::settle_head`] against new records.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::time::Instant;
use tracing::{error, warn};

use super::coalesce::{Change, ChangelogCache};
use super::records::{self, Failure, OutRecord, Source, Stage};
use crate::telemetry::{LogThrottle, PartitionStatus, PipelineMetrics};
use crate::{clock, kafka};

/// The first back-off after a failed delivery.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Acknowledged inputs waiting for their state changes to be written
/// beyond which the held changes are written at once.
const MAX_AWAITING: usize = 1 << 16;
/// How long deliveries may keep failing before the partition is reported
/// stalled.
const STALL_AFTER: Duration = Duration::from_secs(5);
/// The least time between two repeated log lines about one partition's
/// failing deliveries.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Counts a failed attempt and schedules the next one, 100 ms after the
/// first failure, doubling up to 30 s.
fn back_off(send: &mut Send) {
    send.attempts += 1;
    let backoff = clock::backoff(FIRST_BACKOFF, send.attempts, MAX_BACKOFF);
    send.state = SendState::Unsent {
        retry_at: Instant::now() + backoff,
    };
}

/// The input an entry came from, kept so it can be dead-lettered if one of
/// its outputs turns out to be undeliverable.
#[derive(Debug, Clone)]
pub(super) struct Input {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: Option<i64>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Vec<u8>,
    pub(super) event_id: Option<String>,
    pub(super) hops: u32,
}

impl Input {
    /// The bytes it holds while its entry is pending: its key counts as its
    /// value does (a key may be as large as the broker lets a record be).
    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self.event_id.as_ref().map_or(0, String::len)
    }

    pub(super) fn source(&self) -> Source<'_> {
        Source {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: &self.value,
            event_id: self.event_id.as_deref(),
            hops: self.hops,
        }
    }
}

/// What a record is, which decides what a permanent failure leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    /// A plugin's emit.
    Output {
        /// The plugin that emitted it.
        plugin: String,
    },
    /// A state change.
    Changelog,
    /// An output that could not be produced for good after another output
    /// of its input already had the input dead-lettered: not sent again
    /// (one dead letter per input), counted in `undeliverable_total`.
    Dropped,
    /// A dead letter; `minimal` once cut down after a permanent failure.
    DeadLetter {
        /// Where the failure it reports happened.
        stage: Stage,
        /// Bytes of the input it carries.
        original_size: usize,
        /// Whether this is already the last-resort form.
        minimal: bool,
    },
}

enum SendState {
    /// Not with the producer: never offered, its queue was full, or the
    /// last attempt failed. Offered again at `retry_at`.
    Unsent { retry_at: Instant },
    /// With the producer, awaiting the broker's acknowledgement.
    InFlight(DeliveryFuture),
    /// Acknowledged by the broker.
    Acked,
}

struct Send {
    record: OutRecord,
    role: Role,
    state: SendState,
    /// Failed attempts so far.
    attempts: u32,
}

impl Send {
    fn new(record: OutRecord, role: Role, now: Instant) -> Self {
        Self {
            record,
            role,
            state: SendState::Unsent { retry_at: now },
            attempts: 0,
        }
    }
}

/// `at`, or `send`'s time to be offered again if it is unsent and sooner.
fn earliest(at: Option<Instant>, send: &Send) -> Option<Instant> {
    match send.state {
        SendState::Unsent { retry_at } => Some(at.map_or(retry_at, |at| at.min(retry_at))),
        _ => at,
    }
}

/// Records on their way, acknowledged front to back.
struct Sends {
    list: Vec<Send>,
    /// Every send before this index is acknowledged.
    cursor: usize,
    /// When the earliest unsent one is due to be offered (`None`: none).
    next_offer: Option<Instant>,
    /// Whether an output that could not be produced has had the input
    /// dead-lettered already.
    dead_lettered: bool,
}

impl Sends {
    fn new(records: impl IntoIterator<Item = (OutRecord, Role)>, now: Instant) -> Self {
        let list: Vec<Send> = records
            .into_iter()
            .map(|(record, role)| Send::new(record, role, now))
            .collect();
        let next_offer = (!list.is_empty()).then_some(now);
        Self {
            list,
            cursor: 0,
            next_offer,
            dead_lettered: false,
        }
    }
}

/// What one input record (or timer firing) produced.
pub(super) struct Entry {
    offset: Option<i64>,
    input: Input,
    sends: Sends,
    /// Its records, input and state changes, in bytes.
    bytes: usize,
    /// Its state changes, held here until its records are acknowledged.
    changes: Vec<Change>,
    /// Keys of an older changelog's records that `changes` supersede.
    retire: Vec<Vec<u8>>,
}

impl Entry {
    /// An entry for `input` (whose offset is stored once everything is
    /// acknowledged; `None` for a timer) producing `records`.
    pub(super) fn new(
        offset: Option<i64>,
        input: Input,
        records: impl IntoIterator<Item = (OutRecord, Role)>,
    ) -> Self {
        let sends = Sends::new(records, Instant::now());
        let bytes = input.size() + sends.list.iter().map(|s| s.record.size()).sum::<usize>();
        Self {
            offset,
            input,
            sends,
            bytes,
            changes: Vec::new(),
            retire: Vec::new(),
        }
    }
}

/// Where a partition's records go and how much may be pending.
pub(super) struct Settings {
    pub(super) dead_letters: String,
    pub(super) max_record_bytes: usize,
    /// The changelog topic; its partition is the input partition's number.
    pub(super) changelog: String,
    pub(super) partition: i32,
    /// How long state changes are held before they are written.
    pub(super) flush_interval: Duration,
    /// How long without a new change before they are written sooner.
    pub(super) flush_idle: Duration,
    /// Entries not yet acknowledged beyond which there is no room.
    pub(super) max_entries: usize,
    /// Bytes not yet acknowledged beyond which there is no room.
    pub(super) max_bytes: usize,
    /// The rate of warnings about single records.
    pub(super) warnings: Arc<LogThrottle>,
}

/// What giving a partition up left behind ([`Deliveries::abandon`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Abandoned {
    /// Records the producer had that the broker then acknowledged.
    pub(super) acknowledged: usize,
    /// Records the producer had that then failed.
    pub(super) failed: usize,
    /// Records not yet (or no longer) with the producer, never sent.
    pub(super) unsent: usize,
    /// State changes never written: held in the cache, or of entries not
    /// yet acknowledged.
    pub(super) held_changes: usize,
}

/// A changelog batch on its way.
struct Write {
    generation: u64,
    sends: Sends,
}

/// The pending entries of one partition, oldest first, and its held state
/// changes.
pub(super) struct Deliveries {
    queue: VecDeque<Entry>,
    bytes: usize,
    /// Acknowledged entries waiting for their state changes to be written:
    /// offset (`None` for a timer) and the generation needed.
    awaiting: VecDeque<(Option<i64>, u64)>,
    cache: ChangelogCache,
    write: Option<Write>,
    /// Tombstones for an older changelog's records, each held until the
    /// generation holding its key's newer record is written (so the newer
    /// record is durable, and earlier in the log, before the older one
    /// goes). No offset waits for them.
    retiring: VecDeque<(u64, Vec<u8>)>,
    /// Write what is held at once (the partition is being handed back).
    draining: bool,
    max_entries: usize,
    max_bytes: usize,
    ctx: Context,
}

/// What a delivery belongs to, for failure tracking: a success of one
/// does not clear the other's stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Entries: outputs and dead letters.
    Entries,
    /// Changelog batches.
    Changelog,
}

impl Lane {
    fn of(role: &Role) -> Self {
        match role {
            Role::Changelog => Self::Changelog,
            Role::Output { .. } | Role::DeadLetter { .. } | Role::Dropped => Self::Entries,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Entries => 0,
            Self::Changelog => 1,
        }
    }
}

struct Context {
    producer: FutureProducer,
    dead_letters: String,
    max_record_bytes: usize,
    stats: Arc<PipelineMetrics>,
    status: PartitionStatus,
    /// Per lane: when its deliveries started failing, if they are.
    failing_since: [Option<Instant>; 2],
    /// Per lane: whether it has the partition reported stalled.
    stalled: [bool; 2],
    logged_at: Option<Instant>,
    /// The rate of warnings about single records.
    warnings: Arc<LogThrottle>,
}

impl Deliveries {
    pub(super) fn new(
        producer: FutureProducer,
        settings: Settings,
        stats: Arc<PipelineMetrics>,
        status: PartitionStatus,
    ) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            awaiting: VecDeque::new(),
            cache: ChangelogCache::new(
                settings.changelog,
                settings.partition,
                settings.flush_interval,
                settings.flush_idle,
            ),
            write: None,
            retiring: VecDeque::new(),
            draining: false,
            max_entries: settings.max_entries,
            max_bytes: settings.max_bytes,
            ctx: Context {
                producer,
                dead_letters: settings.dead_letters,
                max_record_bytes: settings.max_record_bytes,
                stats,
                status,
                failing_since: [None; 2],
                stalled: [false; 2],
                logged_at: None,
                warnings: settings.warnings,
            },
        }
    }

    /// Whether nothing is pending: no entry, no held or unwritten change.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && self.awaiting.is_empty()
            && self.write.is_none()
            && self.cache.is_empty()
            && self.retiring.is_empty()
    }

    /// Whether another entry may be added: fewer than `max_entries`
    /// unacknowledged, holding fewer than `max_bytes` (records and state
    /// changes), and fewer than `max_bytes` of acknowledged entries' state
    /// changes held (besides the batch being written) — else a changelog
    /// that cannot be written would let the changes of every entry still
    /// to come pile up.
    pub(super) fn has_room(&self) -> bool {
        self.queue.len() < self.max_entries
            && self.bytes < self.max_bytes
            && self.cache.bytes() < self.max_bytes
            && self.awaiting.len() < MAX_AWAITING
    }

    /// From now on, write held changes at once (the partition is being
    /// handed back or the daemon is stopping).
    pub(super) fn drain(&mut self) {
        self.draining = true;
    }

    /// Gives the partition up (its drain took too long, or the assignment
    /// was lost): sends nothing more, and waits for every record the
    /// producer already has to be acknowledged or to fail — librdkafka
    /// settles each within `KafkaConfig::max_delivery_wait` — so none of
    /// it, a changelog batch above all, can land after the partition's next
    /// owner has restored its state from the changelog. What was not
    /// acknowledged is read again by that owner, from the committed offset.
    pub(super) async fn abandon(&mut self) -> Abandoned {
        let pending: usize = self.queue.iter().map(|entry| entry.changes.len()).sum();
        let mut abandoned = Abandoned {
            held_changes: self.cache.len() + pending,
            ..Abandoned::default()
        };
        let entries = std::mem::take(&mut self.queue)
            .into_iter()
            .flat_map(|entry| entry.sends.list);
        let batch = self.write.take().into_iter().flat_map(|w| w.sends.list);
        for send in entries.chain(batch) {
            match send.state {
                SendState::InFlight(delivery) => {
                    if matches!(delivery.await, Ok(Ok(_))) {
                        abandoned.acknowledged += 1;
                    } else {
                        abandoned.failed += 1;
                    }
                }
                SendState::Unsent { .. } => abandoned.unsent += 1,
                SendState::Acked => {}
            }
        }
        abandoned
    }

    /// Queues an entry with its state changes; its records are offered to
    /// the producer right away (order within a partition is kept by the
    /// producer, entry after entry), its changes are held until they are
    /// acknowledged ([`Self::hold`]).
    ///
    /// `retire` are keys of an older changelog's records that `changes`
    /// supersede: they are tombstoned once `changes` are written.
    pub(super) fn push(&mut self, mut entry: Entry, changes: Vec<Change>, retire: Vec<Vec<u8>>) {
        let now = Instant::now();
        entry.bytes += changes
            .iter()
            .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            + retire.iter().map(Vec::len).sum::<usize>();
        entry.changes = changes;
        entry.retire = retire;
        self.ctx
            .offer_due(&mut entry.sends, Some(&entry.input), now);
        self.bytes += entry.bytes;
        self.queue.push_back(entry);
    }

    /// Puts an acknowledged entry's state changes in the cache, to be
    /// written with the next batch; returns the generation that batch
    /// will have (0: no change).
    fn hold(&mut self, changes: Vec<Change>, retire: Vec<Vec<u8>>) -> u64 {
        let now = Instant::now();
        let mut needs = 0;
        for change in changes {
            let (generation, replaced) = self.cache.put(change, now);
            needs = generation;
            if replaced {
                self.ctx.stats.changes_coalesced.inc();
            }
        }
        for key in retire {
            self.retiring.push_back((needs, key));
        }
        needs
    }

    /// Holds the tombstones whose newer records are now written.
    fn retire_written(&mut self) {
        while let Some((generation, _)) = self.retiring.front() {
            if !self.cache.is_written(*generation) {
                break;
            }
            // A tombstone counts as a change: the batch it joins waits for
            // the partition to be idle as any other.
            if let Some((_, key)) = self.retiring.pop_front() {
                self.cache.put((key, None), Instant::now());
            }
        }
    }

    /// Whether the held changes should be written now: their interval has
    /// passed or the partition's state has been idle (the cache's
    /// `due_at`), or holding more would hold up the partition.
    fn write_due(&self, now: Instant) -> bool {
        self.draining
            || self.cache.due_at().is_some_and(|at| at <= now)
            || !self.has_room()
            || self.awaiting.len() >= MAX_AWAITING
            || self.cache.bytes() >= self.max_bytes / 2
    }

    /// Drives deliveries until the oldest pending input is acknowledged
    /// with its state changes written, and returns its offset (`Some(None)`
    /// for a timer's entry). `None` when nothing is pending. Cancel-safe.
    pub(super) async fn settle_head(&mut self) -> Option<Option<i64>> {
        loop {
            if let Some(&(offset, needs)) = self.awaiting.front()
                && self.cache.is_written(needs)
            {
                self.awaiting.pop_front();
                return Some(offset);
            }
            let now = Instant::now();
            if self.write.is_none() && !self.cache.is_empty() && self.write_due(now) {
                let (generation, records) = self.cache.take();
                tracing::debug!(
                    records = records.len(),
                    draining = self.draining,
                    "Writing held state changes."
                );
                let records = records.into_iter().map(|record| (record, Role::Changelog));
                self.write = Some(Write {
                    generation,
                    sends: Sends::new(records, now),
                });
            }
            if let Some(write) = &mut self.write {
                if self.ctx.step(&mut write.sends, None).await {
                    let written = write.sends.list.len() as u64;
                    self.ctx.stats.changelog_records.inc_by(written);
                    self.cache.written(write.generation);
                    self.write = None;
                    self.ctx.delivered(Lane::Changelog);
                    self.retire_written();
                }
                continue;
            }
            if let Some(head) = self.queue.front_mut() {
                // Held changes fall due while the head waits (an
                // acknowledgement, a back-off): look again then.
                let due = self.cache.due_at();
                let step = self.ctx.step(&mut head.sends, Some(&head.input));
                let settled = match due {
                    Some(at) => tokio::select! {
                        settled = step => settled,
                        () = tokio::time::sleep_until(at) => false,
                    },
                    None => step.await,
                };
                if settled {
                    let head = self.queue.pop_front()?;
                    self.bytes -= head.bytes;
                    self.ctx.settled(&head);
                    let needs = self.hold(head.changes, head.retire);
                    self.awaiting.push_back((head.offset, needs));
                }
                continue;
            }
            // Only held changes are left to write: wait until they are due.
            let at = self.cache.due_at()?;
            tokio::time::sleep_until(at).await;
        }
    }
}

impl Context {
    /// One step towards acknowledging all of `sends` (the records of
    /// `input`, or a changelog batch): offers those due, then waits for
    /// the oldest one in flight, or for the next back-off to end. `true`
    /// once all are acknowledged. Cancel-safe; O(1) per acknowledgement
    /// while nothing fails.
    async fn step(&mut self, sends: &mut Sends, input: Option<&Input>) -> bool {
        let now = Instant::now();
        self.offer_due(sends, input, now);
        while sends
            .list
            .get(sends.cursor)
            .is_some_and(|send| matches!(send.state, SendState::Acked))
        {
            sends.cursor += 1;
        }
        if sends.cursor == sends.list.len() {
            return true;
        }
        let waiting = sends.list[sends.cursor..]
            .iter()
            .position(|send| matches!(send.state, SendState::InFlight(_)));
        let Some(index) = waiting.map(|i| i + sends.cursor) else {
            // Everything left is backing off.
            let at = sends.next_offer.unwrap_or(now + FIRST_BACKOFF);
            tokio::time::sleep_until(at).await;
            return false;
        };
        let send = &mut sends.list[index];
        let SendState::InFlight(delivery) = &mut send.state else {
            return false;
        };
        let result = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((err, _))) => Err(err),
            Err(_canceled) => Err(KafkaError::Canceled),
        };
        match result {
            Ok(()) => send.state = SendState::Acked,
            Err(err) => {
                self.failed(send, input, &err, &mut sends.dead_lettered);
                sends.next_offer = earliest(sends.next_offer, send);
            }
        }
        false
    }

    /// Offers the unacknowledged sends whose time has come, if any has,
    /// and notes when the next unsent one is due.
    fn offer_due(&mut self, sends: &mut Sends, input: Option<&Input>, now: Instant) {
        if sends.next_offer.is_none_or(|at| at > now) {
            return;
        }
        sends.next_offer = None;
        // Once the producer's queue is full, the rest wait out the same
        // back-off untried: offering each would fail as well, costing a
        // producer call per record per round (a call that changed many
        // keys writes that many records), and the first to get through
        // would overtake those before it.
        let mut full = false;
        for send in &mut sends.list[sends.cursor..] {
            if let SendState::Unsent { retry_at } = &mut send.state
                && *retry_at <= now
            {
                if full {
                    *retry_at = now + kafka::QUEUE_FULL_BACKOFF;
                } else {
                    full = self.offer(send, input, &mut sends.dead_lettered, now);
                }
            }
            // Judged after the offer, which may have failed on the spot (a
            // full queue, a record the producer refuses): such a send is
            // still owed, never taken as settled.
            sends.next_offer = earliest(sends.next_offer, send);
        }
    }

    /// Offers a record to the producer (a full queue is tried again
    /// shortly, without counting as a failure; a local error such as a
    /// record over `message.max.bytes` is a failure like any other).
    /// Whether the producer's queue was full: then the send is due again
    /// a back-off after `now`, the time of the scan, as are the sends after
    /// it that the scan did not try (so they stay behind it).
    fn offer(
        &mut self,
        send: &mut Send,
        input: Option<&Input>,
        dead_lettered: &mut bool,
        now: Instant,
    ) -> bool {
        if !matches!(send.state, SendState::Unsent { .. }) {
            return false;
        }
        match send.record.try_enqueue(&self.producer) {
            Ok(delivery) => send.state = SendState::InFlight(delivery),
            Err(err) if kafka::is_queue_full(&err) => {
                self.stats.producer_queue_full.inc();
                send.state = SendState::Unsent {
                    retry_at: now + kafka::QUEUE_FULL_BACKOFF,
                };
                return true;
            }
            Err(err) => self.failed(send, input, &err, dead_lettered),
        }
        false
    }

    /// Handles a failed delivery of `send`, a record caused by `input`
    /// (`None` for a changelog batch). `dead_lettered`: whether an output
    /// of `input` has already had it dead-lettered — it is, once, however
    /// many of its outputs cannot be produced (else a thousand emits to a
    /// refused topic would make a thousand copies of the input).
    fn failed(
        &mut self,
        send: &mut Send,
        input: Option<&Input>,
        err: &KafkaError,
        dead_lettered: &mut bool,
    ) {
        if !kafka::is_permanent(err) {
            return self.retry_later(send, err);
        }
        self.stats.delivery_failed("permanent");
        match (&send.role, input) {
            (Role::Output { plugin }, Some(_)) if *dead_lettered => {
                if self.warnings.admit() {
                    warn!(topic = %send.record.topic, %plugin, error = %err, "Output cannot be produced; its input is dead-lettered already.");
                }
                self.stats.undeliverable.inc();
                send.role = Role::Dropped;
                send.record.value = None;
                send.record.key = None;
                send.state = SendState::Acked;
            }
            (Role::Output { plugin }, Some(input)) => {
                let message = format!(
                    "an output of plugin {plugin} to {} could not be produced: {err}",
                    send.record.topic
                );
                if self.warnings.admit() {
                    warn!(topic = %send.record.topic, %plugin, error = %err, "Output cannot be produced; dead-lettering its input.");
                }
                self.stats.undeliverable.inc();
                let failure = Failure {
                    stage: Stage::Deliver,
                    plugin: Some(plugin),
                    kind: Some("undeliverable"),
                    message: &message,
                };
                send.record = records::dead_letter(
                    &self.dead_letters,
                    &input.source(),
                    &failure,
                    self.max_record_bytes,
                );
                send.role = Role::DeadLetter {
                    stage: Stage::Deliver,
                    original_size: input.value.len(),
                    minimal: false,
                };
                *dead_lettered = true;
                send.state = SendState::Unsent {
                    retry_at: Instant::now(),
                };
            }
            (
                Role::DeadLetter {
                    stage,
                    original_size,
                    minimal: false,
                },
                _,
            ) => {
                if self.warnings.admit() {
                    warn!(topic = %send.record.topic, error = %err, "Dead letter cannot be produced; sending a minimal one.");
                }
                let (stage, original_size) = (*stage, *original_size);
                send.record = records::minimal_dead_letter(&send.record, original_size);
                send.role = Role::DeadLetter {
                    stage,
                    original_size,
                    minimal: true,
                };
                send.state = SendState::Unsent {
                    retry_at: Instant::now(),
                };
            }
            // A changelog record, a minimal dead letter (or an output
            // without its input, which no caller makes).
            _ => {
                back_off(send);
                let reason = format!(
                    "cannot produce to {} (a permanent error; retrying after {} attempts): {err}",
                    send.record.topic, send.attempts
                );
                self.stall(Lane::of(&send.role), &reason);
            }
        }
    }

    /// A retriable failure: back off, count, and report a stall if it goes
    /// on.
    fn retry_later(&mut self, send: &mut Send, err: &KafkaError) {
        self.stats.delivery_failed("retriable");
        self.stats.resends.inc();
        back_off(send);
        let now = Instant::now();
        let lane = Lane::of(&send.role);
        let failing = &mut self.failing_since[lane.index()];
        let first = failing.is_none();
        let since = *failing.get_or_insert(now);
        let reason = format!(
            "delivery to {} failing for {}s ({} attempts): {err}",
            send.record.topic,
            now.duration_since(since).as_secs(),
            send.attempts
        );
        if now.duration_since(since) >= STALL_AFTER {
            self.stall(lane, &reason);
        } else if first {
            warn!(topic = %send.record.topic, error = %err, "Delivery failed; retrying. The input offset does not advance until it succeeds.");
        }
    }

    /// Reports the partition stalled (readiness, metric) and logs it at a
    /// bounded rate.
    fn stall(&mut self, lane: Lane, reason: &str) {
        self.status.stalled(reason);
        self.stalled[lane.index()] = true;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            self.logged_at = Some(now);
            error!(
                reason,
                "Partition stalled: deliveries keep failing; not ready until they succeed."
            );
        }
    }

    /// The head is acknowledged: count it, clear its lane's stall.
    fn settled(&mut self, entry: &Entry) {
        self.count(entry);
        self.delivered(Lane::Entries);
    }

    fn count(&self, entry: &Entry) {
        for send in &entry.sends.list {
            match send.role {
                Role::Output { .. } => {
                    self.stats.outputs.inc();
                }
                Role::Changelog => {
                    self.stats.changelog_records.inc();
                }
                Role::DeadLetter { stage, .. } => self.stats.dead_lettered(stage.as_str()),
                Role::Dropped => {}
            }
        }
    }

    /// Everything of `lane` pending was acknowledged: clear its failure,
    /// and the partition's stall once no lane is stalled.
    fn delivered(&mut self, lane: Lane) {
        self.failing_since[lane.index()] = None;
        let stalled = &mut self.stalled[lane.index()];
        if *stalled {
            *stalled = false;
            if !self.stalled.contains(&true) {
                self.logged_at = None;
                self.status.recovered();
                tracing::info!("Partition delivers again.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::ClientConfig;

    use super::*;
    use crate::kafka::EmbeddedBroker;
    use crate::telemetry::{NotReady, Readiness};

    /// A producer that refuses every record over 1000 bytes on the spot
    /// (no broker needed: the check is local).
    fn strict_producer() -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.max.bytes", "1000")
            .create()
            .expect("producer")
    }

    /// The default `pipeline.changelog_flush_idle`.
    const IDLE: Duration = Duration::from_millis(50);

    fn settings(flush_interval: Duration, flush_idle: Duration) -> Settings {
        Settings {
            dead_letters: "task-events.dlq".into(),
            max_record_bytes: 1 << 20,
            changelog: "state".into(),
            partition: 0,
            flush_interval,
            flush_idle,
            max_entries: 512,
            max_bytes: 32 << 20,
            warnings: Arc::new(LogThrottle::new(
                "records",
                crate::telemetry::Rate::WARNINGS,
                Default::default(),
            )),
        }
    }

    /// Deliveries of partition 0 (assigned) through `producer`, with the
    /// partition's readiness and the counters.
    fn through(
        producer: FutureProducer,
        flush_interval: Duration,
        flush_idle: Duration,
    ) -> (Deliveries, Arc<Readiness>, Arc<PipelineMetrics>) {
        let readiness = Arc::new(Readiness::default());
        readiness.assigned(1);
        let stats = Arc::new(PipelineMetrics::default());
        let deliveries = Deliveries::new(
            producer,
            settings(flush_interval, flush_idle),
            stats.clone(),
            readiness.partition("task-events", 0),
        );
        (deliveries, readiness, stats)
    }

    /// Offset 7: a 4 KiB input whose one output is as large (over the
    /// 1000 bytes the tests' producers allow).
    fn oversized_entry() -> Entry {
        let big = vec![b'x'; 4096];
        let output = OutRecord {
            topic: "out-topic".into(),
            partition: None,
            key: None,
            value: Some(big.clone()),
            headers: Vec::new(),
        };
        let role = Role::Output {
            plugin: "echo".into(),
        };
        Entry::new(Some(7), input(big), [(output, role)])
    }

    fn input(value: Vec<u8>) -> Input {
        Input {
            topic: "task-events".into(),
            partition: 0,
            offset: Some(7),
            key: Some(b"u1".to_vec()),
            value,
            event_id: Some("ev-big".into()),
            hops: 0,
        }
    }

    /// An output, its dead letter and even the minimal dead letter are
    /// all refused before reaching any broker: the entry must stay owed
    /// (and the partition stalled), never be taken as delivered — which
    /// would store its offset and lose the record without a trace.
    #[tokio::test(start_paused = true)]
    async fn a_record_refused_on_the_spot_is_never_taken_as_delivered() {
        let (mut deliveries, readiness, stats) = through(strict_producer(), Duration::ZERO, IDLE);
        deliveries.push(oversized_entry(), Vec::new(), Vec::new());

        // Ten minutes of (paused, auto-advancing) time: the retries back
        // off to the longest interval and go on.
        let settled =
            tokio::time::timeout(Duration::from_secs(600), deliveries.settle_head()).await;
        assert!(
            settled.is_err(),
            "settled without an acknowledgement: {settled:?}"
        );
        assert!(!deliveries.is_empty());
        assert!(
            matches!(readiness.check(), Err(NotReady::Stalled { .. })),
            "the partition is reported stalled: {:?}",
            readiness.check()
        );
        assert_eq!(stats.undeliverable.get(), 1);
    }

    /// Fifty outputs of one input are refused for good: the input is
    /// dead-lettered once, not fifty times (each dead letter a copy of the
    /// input, none of them counted against the in-flight bytes), and the
    /// entry settles.
    #[tokio::test]
    async fn many_undeliverable_outputs_dead_letter_their_input_once() {
        let (_broker, mut deliveries, _, stats) =
            on_embedded_broker(Duration::ZERO, IDLE, &[("message.max.bytes", "1000")]);
        let output = |n: u8| OutRecord {
            topic: "out-topic".into(),
            partition: None,
            key: None,
            value: Some(vec![n; 4096]),
            headers: Vec::new(),
        };
        let role = || Role::Output {
            plugin: "echo".into(),
        };
        let entry = Entry::new(
            Some(7),
            input(b"{}".to_vec()),
            (0..50).map(|n| (output(n), role())),
        );
        deliveries.push(entry, Vec::new(), Vec::new());
        let settled = tokio::time::timeout(Duration::from_secs(30), deliveries.settle_head())
            .await
            .expect("settles");
        assert_eq!(settled, Some(Some(7)));
        assert_eq!(stats.undeliverable.get(), 50);
        assert_eq!(stats.dead_letters.get(), 1, "one copy of the input");
        assert_eq!(stats.outputs.get(), 0);
    }

    /// An entry of many records against a producer queue with room for
    /// few: once the queue is full the rest wait untried, so the refused
    /// offers number about one per round, not one per record per round
    /// (before: every record left was offered every 10 ms — 200 records
    /// through a queue of 10 took thousands of refused offers), and all
    /// are delivered.
    #[tokio::test]
    async fn a_full_producer_queue_is_not_offered_every_record() {
        let (_broker, mut deliveries, _, stats) = on_embedded_broker(
            Duration::ZERO,
            IDLE,
            &[("queue.buffering.max.messages", "10"), ("linger.ms", "20")],
        );
        let output = |n: usize| OutRecord {
            topic: "out-topic".into(),
            partition: None,
            key: None,
            value: Some(n.to_string().into_bytes()),
            headers: Vec::new(),
        };
        let role = || Role::Output {
            plugin: "echo".into(),
        };
        const RECORDS: usize = 200;
        let entry = Entry::new(
            Some(7),
            input(b"{}".to_vec()),
            (0..RECORDS).map(|n| (output(n), role())),
        );
        deliveries.push(entry, Vec::new(), Vec::new());
        let settled = tokio::time::timeout(Duration::from_secs(60), deliveries.settle_head())
            .await
            .expect("settles");
        assert_eq!(settled, Some(Some(7)));
        assert_eq!(stats.outputs.get(), RECORDS as u64);
        let refused = stats.producer_queue_full.get();
        assert!(
            (1..RECORDS as u64).contains(&refused),
            "{refused} offers refused for {RECORDS} records"
        );
    }

    /// Entries whose state changes are large: intake stops once their
    /// changes reach `max_bytes`, not only once the entries' own records
    /// would.
    #[tokio::test]
    async fn held_state_changes_count_against_the_room() {
        let (mut deliveries, _, _) = through(strict_producer(), Duration::from_secs(60), IDLE);
        let value = "v".repeat(200_000);
        let mut pushed = 0_i64;
        while deliveries.has_room() && pushed < 512 {
            let entry = Entry::new(Some(pushed), input(b"{}".to_vec()), []);
            let changes = vec![change(&format!("k{pushed}"), &value)];
            deliveries.push(entry, changes, Vec::new());
            pushed += 1;
        }
        assert!(!deliveries.has_room());
        assert_eq!(pushed, (32 << 20) / 200_000 + 1, "32 MiB of changes");
    }

    /// Entries whose inputs have large keys and small values (a producer
    /// may send keys near the broker's record limit): intake stops once
    /// the keys held reach `max_bytes` (before, a key counted nothing, and
    /// 512 entries of 1 MB keys held 512 MB).
    #[tokio::test]
    async fn input_keys_count_against_the_room() {
        let (mut deliveries, _, _) = through(strict_producer(), Duration::from_secs(60), IDLE);
        let mut pushed = 0_i64;
        while deliveries.has_room() && pushed < 512 {
            let mut input = input(b"{}".to_vec());
            input.key = Some(vec![b'k'; 500_000]);
            deliveries.push(Entry::new(Some(pushed), input, []), Vec::new(), Vec::new());
            pushed += 1;
        }
        assert!(!deliveries.has_room());
        assert_eq!(pushed, (32 << 20) / 500_000 + 1, "32 MiB of keys");
    }

    fn change(key: &str, value: &str) -> Change {
        (key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
    }

    /// The end offset of the embedded broker's `state` partition 0: how
    /// many changelog records landed.
    fn changelog_end(broker: &EmbeddedBroker) -> i64 {
        let reader: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("reader");
        let (_, end) = rdkafka::consumer::Consumer::fetch_watermarks(
            &reader,
            "state",
            0,
            Duration::from_secs(30),
        )
        .expect("watermarks");
        end
    }

    /// Deliveries to partition 0 of an embedded broker with topic `state`,
    /// through a producer with `properties`.
    fn on_embedded_broker(
        flush_interval: Duration,
        flush_idle: Duration,
        properties: &[(&str, &str)],
    ) -> (
        EmbeddedBroker,
        Deliveries,
        Arc<Readiness>,
        Arc<PipelineMetrics>,
    ) {
        let broker = EmbeddedBroker::start().expect("embedded broker");
        broker.create_topic("state", 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", broker.bootstrap_servers());
        for (key, value) in properties {
            config.set(*key, *value);
        }
        let producer = config.create().expect("producer");
        let (deliveries, readiness, stats) = through(producer, flush_interval, flush_idle);
        (broker, deliveries, readiness, stats)
    }

    /// Three inputs change key `a` (and one `b`) within the flush
    /// interval: one record each is written, and no offset is handed out
    /// before that write is acknowledged — which comes once the partition
    /// has been idle for `flush_idle`, not after the whole interval.
    #[tokio::test]
    async fn changes_of_one_key_within_the_interval_are_written_once() {
        let (_broker, mut deliveries, _, stats) =
            on_embedded_broker(Duration::from_secs(3600), IDLE, &[]);
        let started = Instant::now();
        for (offset, changes) in [
            (7, vec![change("a", "1")]),
            (8, vec![change("a", "2"), change("b", "x")]),
            (9, vec![change("a", "3")]),
        ] {
            deliveries.push(
                Entry::new(Some(offset), input(Vec::new()), []),
                changes,
                Vec::new(),
            );
        }
        let mut offsets = Vec::new();
        while let Some(offset) =
            tokio::time::timeout(Duration::from_secs(30), deliveries.settle_head())
                .await
                .expect("settles")
        {
            if offsets.is_empty() {
                assert_eq!(
                    stats.changelog_records.get(),
                    2,
                    "the first offset comes after the write"
                );
                assert!(started.elapsed() >= IDLE);
            }
            offsets.push(offset);
        }
        assert_eq!(offsets, [Some(7), Some(8), Some(9)]);
        assert_eq!(stats.changelog_records.get(), 2);
        assert_eq!(stats.changes_coalesced.get(), 2);
        assert!(deliveries.is_empty());
    }

    /// While inputs keep changing a key less than `flush_idle` apart, the
    /// changes coalesce (the worker races `settle_head` against each new
    /// record, as here): one record (two if the machine stalls), not one
    /// per change. The exact due times are the cache's unit test (on
    /// paused time); the idle time here leaves room for a loaded machine.
    #[tokio::test]
    async fn changes_that_keep_coming_are_coalesced() {
        let idle = Duration::from_millis(300);
        let (_broker, mut deliveries, _, stats) =
            on_embedded_broker(Duration::from_secs(5), idle, &[]);
        let mut offsets = Vec::new();
        for offset in 0..20 {
            deliveries.push(
                Entry::new(Some(offset), input(Vec::new()), []),
                vec![change("a", &offset.to_string())],
                Vec::new(),
            );
            let pause = tokio::time::sleep(Duration::from_millis(10));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    Some(settled) = deliveries.settle_head() => offsets.push(settled),
                    () = &mut pause => break,
                }
            }
        }
        while let Some(offset) =
            tokio::time::timeout(Duration::from_secs(30), deliveries.settle_head())
                .await
                .expect("settles")
        {
            offsets.push(offset);
        }
        let expected: Vec<_> = (0..20).map(Some).collect();
        assert_eq!(offsets, expected);
        let written = stats.changelog_records.get();
        assert_eq!(written + stats.changes_coalesced.get(), 20);
        assert!(
            written <= 2,
            "{written} records for one key changed 20 times, 10 ms apart"
        );
    }

    /// A partition being handed back writes what it holds at once, however
    /// long the interval.
    #[tokio::test]
    async fn draining_writes_held_changes_at_once() {
        let (_broker, mut deliveries, _, stats) =
            on_embedded_broker(Duration::from_secs(3600), Duration::from_secs(3600), &[]);
        deliveries.push(
            Entry::new(Some(1), input(Vec::new()), []),
            vec![change("k", "v")],
            Vec::new(),
        );
        deliveries.drain();
        let settled = tokio::time::timeout(Duration::from_secs(30), deliveries.settle_head())
            .await
            .expect("written without waiting out the interval");
        assert_eq!(settled, Some(Some(1)));
        assert_eq!(stats.changelog_records.get(), 1);
    }

    /// A partition given up while a changelog batch is on the wire (the
    /// broker takes 1 s to answer) waits until the broker has answered for
    /// it: returned any earlier, the batch could land after the partition's
    /// next owner restored its state, and roll it back. What was never sent
    /// is dropped, not sent.
    #[tokio::test]
    async fn giving_up_waits_for_what_the_producer_has() {
        let (broker, mut deliveries, _, stats) =
            on_embedded_broker(Duration::from_secs(3600), Duration::from_secs(3600), &[]);
        broker
            .cluster()
            .broker_round_trip_time(1, Duration::from_secs(1))
            .expect("slow broker");
        deliveries.push(
            Entry::new(Some(1), input(Vec::new()), []),
            vec![change("k", "v")],
            Vec::new(),
        );
        deliveries.drain();
        let settled =
            tokio::time::timeout(Duration::from_millis(300), deliveries.settle_head()).await;
        assert!(settled.is_err(), "the broker answered already: {settled:?}");
        // Held after the batch was taken: never written.
        deliveries.push(
            Entry::new(Some(2), input(Vec::new()), []),
            vec![change("k", "w")],
            Vec::new(),
        );

        let left = tokio::time::timeout(Duration::from_secs(60), deliveries.abandon())
            .await
            .expect("settled within the producer's bound");
        assert_eq!(
            left,
            Abandoned {
                acknowledged: 1,
                failed: 0,
                unsent: 0,
                held_changes: 1,
            }
        );
        // In the log: the batch on the wire, not the change held after it.
        let end = changelog_end(&broker);
        assert_eq!(end, 1);
        assert_eq!(
            stats.changelog_records.get(),
            0,
            "nothing counted as written"
        );
    }

    /// A partition stalled by an entry that cannot be delivered stays
    /// stalled when a changelog batch is written meanwhile: one lane's
    /// success does not clear the other's stall.
    #[tokio::test]
    async fn a_changelog_write_does_not_clear_a_stall_of_the_entries() {
        // Refuses the big output (and its dead letters) on the spot; the
        // small changelog record, held for 2 s, goes through.
        let (_broker, mut deliveries, readiness, stats) = on_embedded_broker(
            Duration::from_secs(2),
            Duration::from_secs(2),
            &[("message.max.bytes", "1000")],
        );
        deliveries.push(
            Entry::new(Some(6), input(Vec::new()), []),
            vec![change("k", "v")],
            Vec::new(),
        );
        deliveries.push(oversized_entry(), Vec::new(), Vec::new());
        let settled = tokio::time::timeout(Duration::from_secs(1), deliveries.settle_head()).await;
        assert!(settled.is_err(), "{settled:?}");
        assert!(matches!(readiness.check(), Err(NotReady::Stalled { .. })));
        assert_eq!(stats.changelog_records.get(), 0, "still held");

        let settled = tokio::time::timeout(Duration::from_secs(5), deliveries.settle_head())
            .await
            .expect("the batch is written");
        assert_eq!(settled, Some(Some(6)));
        assert_eq!(stats.changelog_records.get(), 1);
        assert!(
            matches!(readiness.check(), Err(NotReady::Stalled { .. })),
            "still stalled: {:?}",
            readiness.check()
        );
    }

    /// An entry's state changes are written only once its outputs are
    /// acknowledged. Given up while an output is on the wire, the
    /// partition leaves its change unwritten: the input is read again by
    /// the next owner against the state from before it, so a plugin that
    /// keeps what it has sent (a reminder's memo) sends it again, rather
    /// than skipping an output that may never have got through.
    #[tokio::test]
    async fn state_changes_are_written_only_after_their_outputs() {
        let (broker, mut deliveries, _, stats) = on_embedded_broker(Duration::ZERO, IDLE, &[]);
        broker.create_topic("out-topic", 1).expect("topic");
        broker
            .cluster()
            .broker_round_trip_time(1, Duration::from_secs(1))
            .expect("slow broker");
        let output = OutRecord {
            topic: "out-topic".into(),
            partition: None,
            key: None,
            value: Some(b"reminder".to_vec()),
            headers: Vec::new(),
        };
        let role = Role::Output {
            plugin: "reminders".into(),
        };
        deliveries.push(
            Entry::new(Some(1), input(Vec::new()), [(output, role)]),
            vec![change("memo", "sent")],
            Vec::new(),
        );
        let settled =
            tokio::time::timeout(Duration::from_millis(300), deliveries.settle_head()).await;
        assert!(settled.is_err(), "the broker answered already: {settled:?}");

        let left = tokio::time::timeout(Duration::from_secs(60), deliveries.abandon())
            .await
            .expect("settled within the producer's bound");
        assert_eq!(
            left,
            Abandoned {
                acknowledged: 1,
                failed: 0,
                unsent: 0,
                held_changes: 1,
            },
            "the output was on the wire, the change was not"
        );
        let end = changelog_end(&broker);
        assert_eq!(end, 0, "no state change in the changelog");
        assert_eq!(stats.changelog_records.get(), 0);
    }
}
