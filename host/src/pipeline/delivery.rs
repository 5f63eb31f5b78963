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
//! Everything here is cancel-safe: progress lives in the send states, so
//! the worker can race [`Deliveries::settle_head`] against new records.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::time::Instant;
use tracing::{error, warn};

use super::records::{self, Failure, OutRecord, Source, Stage};
use crate::telemetry::{PartitionStatus, PipelineMetrics};
use crate::{clock, kafka};

/// The first back-off after a failed delivery.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
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
}

impl Input {
    pub(super) fn source(&self) -> Source<'_> {
        Source {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: &self.value,
            event_id: self.event_id.as_deref(),
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

/// What one input record (or timer firing) produced.
pub(super) struct Entry {
    offset: Option<i64>,
    input: Input,
    sends: Vec<Send>,
    bytes: usize,
}

impl Entry {
    /// An entry for `input` (whose offset is stored once everything is
    /// acknowledged; `None` for a timer) producing `records`.
    pub(super) fn new(
        offset: Option<i64>,
        input: Input,
        records: impl IntoIterator<Item = (OutRecord, Role)>,
    ) -> Self {
        let now = Instant::now();
        let sends: Vec<Send> = records
            .into_iter()
            .map(|(record, role)| Send {
                record,
                role,
                state: SendState::Unsent { retry_at: now },
                attempts: 0,
            })
            .collect();
        let bytes = input.value.len() + sends.iter().map(|s| s.record.size()).sum::<usize>();
        Self {
            offset,
            input,
            sends,
            bytes,
        }
    }
}

/// Where dead letters go and how large they may be.
pub(super) struct Targets {
    pub(super) dead_letters: String,
    pub(super) max_record_bytes: usize,
}

/// The pending entries of one partition, oldest first.
pub(super) struct Deliveries {
    queue: VecDeque<Entry>,
    bytes: usize,
    ctx: Context,
}

struct Context {
    producer: FutureProducer,
    targets: Targets,
    stats: Arc<PipelineMetrics>,
    status: PartitionStatus,
    /// When the head's deliveries started failing, if they are.
    failing_since: Option<Instant>,
    stalled: bool,
    logged_at: Option<Instant>,
}

impl Deliveries {
    pub(super) fn new(
        producer: FutureProducer,
        targets: Targets,
        stats: Arc<PipelineMetrics>,
        status: PartitionStatus,
    ) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            ctx: Context {
                producer,
                targets,
                stats,
                status,
                failing_since: None,
                stalled: false,
                logged_at: None,
            },
        }
    }

    /// Whether nothing is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether another entry may be added: fewer than `max_entries`
    /// pending, holding fewer than `max_bytes`.
    pub(super) fn has_room(&self, max_entries: usize, max_bytes: usize) -> bool {
        self.queue.len() < max_entries && self.bytes < max_bytes
    }

    /// Queues an entry; its records are offered to the producer right
    /// away when they are at the head, else when they get there (order
    /// within a partition is kept by the producer, entry after entry).
    pub(super) fn push(&mut self, mut entry: Entry) {
        for send in &mut entry.sends {
            self.ctx.offer(send, &entry.input);
        }
        self.bytes += entry.bytes;
        self.queue.push_back(entry);
    }

    /// Drives the head entry until all of it is acknowledged, then pops it
    /// and returns its offset (`Some(None)` for a timer's entry). `None`
    /// when nothing is pending. Cancel-safe.
    pub(super) async fn settle_head(&mut self) -> Option<Option<i64>> {
        loop {
            let head = self.queue.front_mut()?;
            let now = Instant::now();
            let mut retry_at: Option<Instant> = None;
            let mut waiting = None;
            for (index, send) in head.sends.iter_mut().enumerate() {
                if matches!(send.state, SendState::Unsent { retry_at: at } if at <= now) {
                    self.ctx.offer(send, &head.input);
                }
                // Judged after the offer, which may have failed on the
                // spot (a full queue, a record the producer refuses): such
                // a send is still owed, never taken as settled.
                match &send.state {
                    SendState::Unsent { retry_at: at } => {
                        retry_at = Some(retry_at.map_or(*at, |r| r.min(*at)));
                    }
                    SendState::InFlight(_) => {
                        waiting.get_or_insert(index);
                    }
                    SendState::Acked => {}
                }
            }
            if let Some(index) = waiting {
                let send = &mut head.sends[index];
                let SendState::InFlight(delivery) = &mut send.state else {
                    continue;
                };
                let result = match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((err, _))) => Err(err),
                    Err(_canceled) => Err(KafkaError::Canceled),
                };
                match result {
                    Ok(()) => send.state = SendState::Acked,
                    Err(err) => self.ctx.failed(send, &head.input, &err),
                }
                continue;
            }
            if let Some(at) = retry_at {
                tokio::time::sleep_until(at).await;
                continue;
            }
            // Everything acknowledged.
            let head = self.queue.pop_front()?;
            self.bytes -= head.bytes;
            self.ctx.settled(&head);
            return Some(head.offset);
        }
    }
}

impl Context {
    /// Offers a record to the producer (a full queue is tried again
    /// shortly, without counting as a failure; a local error such as a
    /// record over `message.max.bytes` is a failure like any other).
    fn offer(&mut self, send: &mut Send, input: &Input) {
        if !matches!(send.state, SendState::Unsent { .. }) {
            return;
        }
        match send.record.try_enqueue(&self.producer) {
            Ok(delivery) => send.state = SendState::InFlight(delivery),
            Err(err) if kafka::is_queue_full(&err) => {
                send.state = SendState::Unsent {
                    retry_at: Instant::now() + kafka::QUEUE_FULL_BACKOFF,
                };
            }
            Err(err) => self.failed(send, input, &err),
        }
    }

    /// Handles a failed delivery of `send`, a record caused by `input`.
    fn failed(&mut self, send: &mut Send, input: &Input, err: &KafkaError) {
        if !kafka::is_permanent(err) {
            return self.retry_later(send, err);
        }
        self.stats.delivery_failed("permanent");
        match &send.role {
            Role::Output { plugin } => {
                let message = format!(
                    "an output of plugin {plugin} to {} could not be produced: {err}",
                    send.record.topic
                );
                warn!(topic = %send.record.topic, %plugin, error = %err, "Output cannot be produced; dead-lettering its input.");
                self.stats.undeliverable.inc();
                let failure = Failure {
                    stage: Stage::Deliver,
                    plugin: Some(plugin),
                    kind: Some("undeliverable"),
                    message: &message,
                };
                send.record = records::dead_letter(
                    &self.targets.dead_letters,
                    &input.source(),
                    &failure,
                    self.targets.max_record_bytes,
                );
                send.role = Role::DeadLetter {
                    stage: Stage::Deliver,
                    original_size: input.value.len(),
                    minimal: false,
                };
                send.state = SendState::Unsent {
                    retry_at: Instant::now(),
                };
            }
            Role::DeadLetter {
                stage,
                original_size,
                minimal: false,
            } => {
                warn!(topic = %send.record.topic, error = %err, "Dead letter cannot be produced; sending a minimal one.");
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
            Role::DeadLetter { minimal: true, .. } | Role::Changelog => {
                back_off(send);
                let reason = format!(
                    "cannot produce to {} (a permanent error; retrying after {} attempts): {err}",
                    send.record.topic, send.attempts
                );
                self.stall(&reason);
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
        let first = self.failing_since.is_none();
        let since = *self.failing_since.get_or_insert(now);
        let reason = format!(
            "delivery to {} failing for {}s ({} attempts): {err}",
            send.record.topic,
            now.duration_since(since).as_secs(),
            send.attempts
        );
        if now.duration_since(since) >= STALL_AFTER {
            self.stall(&reason);
        } else if first {
            warn!(topic = %send.record.topic, error = %err, "Delivery failed; retrying. The input offset does not advance until it succeeds.");
        }
    }

    /// Reports the partition stalled (readiness, metric) and logs it at a
    /// bounded rate.
    fn stall(&mut self, reason: &str) {
        self.status.stalled(reason);
        self.stalled = true;
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

    /// The head is acknowledged: count it, clear any stall.
    fn settled(&mut self, entry: &Entry) {
        for send in &entry.sends {
            match send.role {
                Role::Output { .. } => {
                    self.stats.outputs.inc();
                }
                Role::Changelog => {
                    self.stats.changelog_records.inc();
                }
                Role::DeadLetter { stage, .. } => self.stats.dead_lettered(stage.as_str()),
            }
        }
        self.failing_since = None;
        if self.stalled {
            self.stalled = false;
            self.logged_at = None;
            self.status.recovered();
            tracing::info!("Partition delivers again.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::ClientConfig;

    use super::*;
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

    fn input(value: Vec<u8>) -> Input {
        Input {
            topic: "task-events".into(),
            partition: 0,
            offset: Some(7),
            key: Some(b"u1".to_vec()),
            value,
            event_id: Some("ev-big".into()),
        }
    }

    /// An output, its dead letter and even the minimal dead letter are
    /// all refused before reaching any broker: the entry must stay owed
    /// (and the partition stalled), never be taken as delivered — which
    /// would store its offset and lose the record without a trace.
    #[tokio::test(start_paused = true)]
    async fn a_record_refused_on_the_spot_is_never_taken_as_delivered() {
        let readiness = Arc::new(Readiness::default());
        readiness.assigned(1);
        let stats = Arc::new(PipelineMetrics::default());
        let mut deliveries = Deliveries::new(
            strict_producer(),
            Targets {
                dead_letters: "task-events.dlq".into(),
                max_record_bytes: 1 << 20,
            },
            stats.clone(),
            readiness.partition("task-events", 0),
        );
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
        deliveries.push(Entry::new(Some(7), input(big), [(output, role)]));

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
}
