//! Rebuilding a partition's plugin state from the changelog before any of
//! its records are handled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::DEFAULT_MESSAGE_MAX_BYTES;
use crate::state::changelog::Restorer;

/// How long the changelog must stay quiet, once the position has passed
/// the high watermark seen at the start, before the restore counts as
/// complete without the broker saying the end is reached. The watermark
/// listed at the start is a lower bound only: tansu 0.6.0 lists 1 for a
/// partition holding one batch of records 0–2 (not 0: a partition with
/// records does not list as empty, measured). The end a restore trusts is
/// the one a fetch answer reports (librdkafka's partition EOF), which is
/// exact there too; the quiet is the fallback for a broker that never
/// says so.
const RESTORE_QUIET: Duration = Duration::from_millis(500);

/// How long the changelog must stay quiet after the broker said the end is
/// reached: librdkafka drops the records of the fetch answer that says so,
/// so a broker whose fetch watermark lagged its records would have them
/// fetched again within this (two fetch waits). A record after the end
/// falls back to [`RESTORE_QUIET`].
const EOF_QUIET: Duration = Duration::from_millis(20);

/// How long a restore reads on once the broker has said the end is
/// reached, past the end seen at the start. Everything written before the
/// attempt started has been read by then (the end a fetch answer reports
/// is exact, on tansu too); what follows is another writer's (the
/// changelog partition is shared by every input topic's partition of that
/// number, and anyone may produce to it), and a steady one would otherwise
/// never leave the quiet the end waits for.
const PAST_END_LIMIT: Duration = Duration::from_secs(2);

/// How long one poll waits for a record.
const POLL: Duration = Duration::from_millis(10);

/// The restore's `fetch.max.bytes` unless the operator sets it (or sets a
/// larger `message.max.bytes`).
const FETCH_MAX_BYTES: u64 = 64 << 20;
/// librdkafka's default `fetch.max.bytes`.
const DEFAULT_FETCH_MAX_BYTES: u64 = 52_428_800;
/// librdkafka's default `receive.message.max.bytes`.
const DEFAULT_RECEIVE_MESSAGE_MAX_BYTES: u64 = 100_000_000;

/// Why an attempt to restore a partition ended without its state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The broker or the client failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// No record came for `pipeline.restore_timeout`.
    #[error(
        "no record from the changelog for {} (pipeline.restore_timeout), at offset {} of at least {end}, after {received} records this attempt",
        crate::units::format_duration(*waited),
        position.map_or_else(|| "(none yet)".to_owned(), |p| p.to_string())
    )]
    Stalled {
        /// The timeout.
        waited: Duration,
        /// Where the read was, if it had started.
        position: Option<i64>,
        /// The partition's end as listed when the attempt started.
        end: i64,
        /// Records read in this attempt.
        received: u64,
    },
    /// The worker stopped waiting for the read.
    #[error("stopped")]
    Stopped,
}

/// Reads changelog partition `partition` from the beginning to its end as of
/// now, keeping the records that belong to `input_topic`. Gives up with
/// [`RestoreError::Stalled`] once `timeout` passes without a record (a read that makes
/// progress goes on, however long the changelog: each attempt starts from
/// the beginning, so a bound on the whole read could fail every attempt of
/// a long one), or as soon as `cancel` is set. Blocking: run it off the
/// async threads.
pub fn restore_partition(
    client: &ClientConfig,
    changelog: &str,
    partition: i32,
    input_topic: &str,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Restorer, RestoreError> {
    let consumer: BaseConsumer = restore_config(client).create()?;
    let mut restorer = Restorer::default();
    let (low, high) =
        consumer.fetch_watermarks(changelog, partition, timeout.min(Duration::from_secs(10)))?;
    if high <= low {
        return Ok(restorer);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(changelog, partition, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let mut deadline = Deadline::new(timeout);
    // Since when no record has arrived (reset by every record, without
    // reading the clock per record).
    let mut quiet_since: Option<Instant> = None;
    // How long the quiet must last: short once the broker said the end was
    // reached at or past the start's end.
    let mut quiet_needed = RESTORE_QUIET;
    // Since when the broker first said the end was reached, past the end
    // seen at the start.
    let mut past_end_since: Option<Instant> = None;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(RestoreError::Stopped);
        }
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                deadline.received += 1;
                restorer.apply(
                    input_topic,
                    message.key().unwrap_or_default(),
                    message.payload(),
                );
                quiet_since = None;
                quiet_needed = RESTORE_QUIET;
                if past_end_since.is_some_and(|since| since.elapsed() >= PAST_END_LIMIT) {
                    break;
                }
            }
            // Every record before the end is delivered before this is.
            Some(Err(KafkaError::PartitionEOF(_))) => {
                if passed(&consumer, changelog, high)? {
                    quiet_needed = EOF_QUIET;
                    let now = Instant::now();
                    quiet_since = Some(now);
                    past_end_since.get_or_insert(now);
                }
            }
            // librdkafka reconnects by itself: the read goes on, and the
            // deadline ends it if the broker stays away (a read still
            // making progress moves it on, as below).
            Some(Err(err)) if passing(&err) => {
                if deadline.passed() {
                    return Err(err.into());
                }
            }
            Some(Err(err)) => return Err(err.into()),
            None => {
                // Done once the position has passed the end seen at the
                // start and nothing more has arrived for a moment. (Not
                // "offset + 1 == high": compaction leaves gaps.)
                let at_end = passed(&consumer, changelog, high)?;
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                if at_end && quiet.elapsed() >= quiet_needed {
                    break;
                }
                if deadline.passed() {
                    return Err(RestoreError::Stalled {
                        waited: timeout,
                        position: position(&consumer, changelog).ok().flatten(),
                        end: high,
                        received: deadline.received,
                    });
                }
            }
        }
    }
    Ok(restorer)
}

/// A read's deadline, moved on whenever records arrived since it was last
/// looked at: a read still making progress is not cut off, one that made
/// none for `timeout` is.
struct Deadline {
    at: Instant,
    timeout: Duration,
    /// Records received.
    received: u64,
    /// Records received as of the last look.
    seen: u64,
}

impl Deadline {
    fn new(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
            received: 0,
            seen: 0,
        }
    }

    /// Whether `timeout` has passed without a record.
    fn passed(&mut self) -> bool {
        let now = Instant::now();
        if self.received > self.seen {
            self.seen = self.received;
            self.at = now + self.timeout;
            false
        } else {
            now > self.at
        }
    }
}

/// The restore's consumer settings: `client`'s, with what the read needs,
/// and larger fetches answered as soon as they can be — a restore reads a
/// partition from the beginning as fast as the broker serves it — unless
/// the operator set them.
fn restore_config(client: &ClientConfig) -> ClientConfig {
    let mut config = client.clone();
    config
        .set("group.id", "todo-eventd-restore")
        .set("enable.auto.commit", "false")
        // The end of the partition as the broker's fetch answer reports it.
        .set("enable.partition.eof", "true")
        // The changelog is written without transactions; and some brokers
        // (tansu 0.6.0) report a last stable offset that would hide all but
        // the first record of a batch from a read_committed reader.
        .set("isolation.level", "read_uncommitted")
        // Records deleted under the read (retention, `DeleteRecords`, a
        // log cap) fail the attempt, which starts again from the new
        // beginning: librdkafka's default would skip to the end and report
        // a restore of part of the state as complete.
        .set("auto.offset.reset", "error");
    let defaults = [
        ("max.partition.fetch.bytes", "16777216"),
        ("fetch.wait.max.ms", "10"),
        // When 100 000 records wait unread (librdkafka's queue threshold),
        // fetch again 10 ms later rather than after the default second.
        ("fetch.queue.backoff.ms", "10"),
    ];
    for (key, value) in defaults {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    // librdkafka refuses a consumer whose fetch.max.bytes (set) is below
    // message.max.bytes, or whose receive.message.max.bytes is below
    // fetch.max.bytes + 512: neither an operator's larger
    // message.max.bytes nor a smaller receive.message.max.bytes (a memory
    // cap) may make every restore fail.
    let number = |config: &ClientConfig, key: &str, default: u64| {
        config
            .get(key)
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(default)
    };
    if config.get("fetch.max.bytes").is_none() {
        let message = number(
            &config,
            "message.max.bytes",
            DEFAULT_MESSAGE_MAX_BYTES as u64,
        );
        let mut fetch = message.max(FETCH_MAX_BYTES);
        if config.get("receive.message.max.bytes").is_some() {
            let receive = number(
                &config,
                "receive.message.max.bytes",
                DEFAULT_RECEIVE_MESSAGE_MAX_BYTES,
            );
            fetch = fetch.min(receive.saturating_sub(512)).max(message);
        }
        config.set("fetch.max.bytes", fetch.to_string());
    }
    let fetch = number(&config, "fetch.max.bytes", DEFAULT_FETCH_MAX_BYTES);
    if config.get("receive.message.max.bytes").is_none()
        && fetch + 512 > DEFAULT_RECEIVE_MESSAGE_MAX_BYTES
    {
        config.set("receive.message.max.bytes", (fetch + 512).to_string());
    }
    config
}

/// Whether `err` is a connection trouble librdkafka reports on the way
/// to reconnecting (a broker restarting, all brokers briefly down), not a
/// reason to throw the read away.
fn passing(err: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        err,
        KafkaError::MessageConsumption(
            Code::BrokerTransportFailure | Code::AllBrokersDown | Code::Resolve
        )
    )
}

/// The consumer's position on `changelog`, once it has one.
fn position(consumer: &BaseConsumer, changelog: &str) -> Result<Option<i64>, KafkaError> {
    let position = consumer.position()?;
    Ok(position
        .elements_for_topic(changelog)
        .iter()
        .find_map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
}

/// Whether the consumer's position on `changelog` is at or past `offset`.
fn passed(consumer: &BaseConsumer, changelog: &str, offset: i64) -> Result<bool, KafkaError> {
    Ok(position(consumer, changelog)?.is_some_and(|o| o >= offset))
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;
    use crate::kafka::EmbeddedBroker;
    use crate::state::changelog::{self, EntryKind};

    /// An embedded broker with `count` state values of plugin `p` (500
    /// bytes each, one batch each) in partition 0 of `state`.
    fn changelog_of(count: u32) -> EmbeddedBroker {
        let broker = EmbeddedBroker::start().expect("embedded broker");
        broker.create_topic("state", 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        for n in 0..count {
            let key = changelog::key("task-events", "p", EntryKind::Key, &format!("k{n}"));
            let value = changelog::key_value(Some(&[b'v'; 500]), None).expect("a value");
            producer
                .send(
                    BaseRecord::to("state")
                        .partition(0)
                        .key(&key)
                        .payload(&value),
                )
                .expect("queued");
            producer.flush(Duration::from_secs(10)).expect("written");
        }
        broker
    }

    /// [`changelog_of`] `count` on a broker answering in 100 ms, and a
    /// client that reads one record a fetch: a read of a few seconds.
    fn slow_changelog(count: u32) -> (EmbeddedBroker, ClientConfig) {
        let broker = changelog_of(count);
        broker
            .cluster()
            .broker_round_trip_time(1, Duration::from_millis(100))
            .expect("slow broker");
        let client = client(
            &broker,
            &[
                ("message.max.bytes", "1000"),
                ("fetch.max.bytes", "1000"),
                ("max.partition.fetch.bytes", "1000"),
            ],
        );
        (broker, client)
    }

    /// A restore of partition 0 of `state`, on a thread of its own.
    fn restore_on_a_thread(
        client: ClientConfig,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Result<Restorer, RestoreError>> {
        std::thread::spawn(move || {
            let cancel = AtomicBool::new(false);
            restore_partition(&client, "state", 0, "task-events", timeout, &cancel)
        })
    }

    fn client(broker: &EmbeddedBroker, properties: &[(&str, &str)]) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", broker.bootstrap_servers());
        for (key, value) in properties {
            client.set(*key, *value);
        }
        client
    }

    /// The timeout bounds a stretch without a record, not the read: a
    /// restore that takes a fetch per record (the operator's fetch sizes,
    /// kept) from a broker answering in 100 ms goes on past a 1 s
    /// timeout. Bounding the whole read made every attempt of a read
    /// longer than the timeout fail, and each retry starts over.
    #[test]
    fn a_restore_that_keeps_reading_is_not_cut_off() {
        let (_broker, client) = slow_changelog(30);
        let started = Instant::now();
        let restorer = restore_partition(
            &client,
            "state",
            0,
            "task-events",
            Duration::from_secs(1),
            &AtomicBool::new(false),
        )
        .expect("restored");
        assert_eq!(restorer.applied, 30);
        assert!(
            started.elapsed() > Duration::from_secs(1),
            "the read did outlast the timeout: {:?}",
            started.elapsed()
        );
    }

    /// An operator's `message.max.bytes` above the restore's 64 MiB fetch,
    /// or `receive.message.max.bytes` below it (a memory cap), made
    /// librdkafka refuse the restore's consumer, every attempt.
    #[test]
    fn the_operators_message_sizes_do_not_stop_restores() {
        let broker = changelog_of(1);
        for setting in [
            ("message.max.bytes", "100000000"),
            ("receive.message.max.bytes", "33554432"),
        ] {
            let client = client(&broker, &[setting]);
            let restorer = restore_partition(
                &client,
                "state",
                0,
                "task-events",
                Duration::from_secs(30),
                &AtomicBool::new(false),
            )
            .unwrap_or_else(|err| panic!("{setting:?}: {err}"));
            assert_eq!(restorer.applied, 1, "{setting:?}");
        }
    }

    /// A broker that drops out under the read and comes back within the
    /// timeout: librdkafka reconnects and reports the outage on the way
    /// (all brokers down), which does not throw the read away.
    #[test]
    fn a_restore_rides_out_a_broker_dropping_out() {
        let (broker, client) = slow_changelog(30);
        let cluster = broker.cluster();
        let restore = restore_on_a_thread(client, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(800));
        cluster.broker_down(1).expect("down");
        std::thread::sleep(Duration::from_millis(1500));
        cluster.broker_up(1).expect("up");
        let restorer = restore.join().expect("restore").expect("restored");
        assert_eq!(restorer.applied, 30);
    }

    /// Another writer on the changelog partition, steady enough that the
    /// read never sees a moment's quiet, does not keep the restore open:
    /// it ends a little after the broker first says the end is reached.
    #[test]
    fn a_steady_writer_does_not_keep_a_restore_open() {
        let broker = changelog_of(5);
        let writing = std::sync::Arc::new(AtomicBool::new(true));
        let (started, writes) = std::sync::mpsc::channel();
        let writer = std::thread::spawn({
            let (servers, writing) = (broker.bootstrap_servers(), writing.clone());
            move || {
                let producer: BaseProducer = ClientConfig::new()
                    .set("bootstrap.servers", servers)
                    .set("linger.ms", "0")
                    .create()
                    .expect("producer");
                let key = changelog::key("other-topic", "p", EntryKind::Key, "k");
                let value = changelog::key_value(Some(b"v"), None).expect("a value");
                let mut sent = 0;
                while writing.load(Ordering::Relaxed) {
                    let record = BaseRecord::to("state")
                        .partition(0)
                        .key(&key)
                        .payload(&value);
                    producer.send(record).expect("queued");
                    producer.poll(Duration::from_millis(2));
                    sent += 1;
                    if sent == 50 {
                        // Writing steadily before the restore starts.
                        producer.flush(Duration::from_secs(10)).expect("written");
                        started.send(()).expect("the test waits");
                    }
                }
                producer.flush(Duration::from_secs(10)).expect("written");
            }
        });
        writes.recv().expect("the writer started");
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let watchdog = std::thread::spawn({
            let cancel = cancel.clone();
            move || {
                std::thread::sleep(Duration::from_secs(30));
                cancel.store(true, Ordering::Relaxed);
            }
        });
        let client = client(&broker, &[]);
        let restored = restore_partition(
            &client,
            "state",
            0,
            "task-events",
            Duration::from_secs(30),
            &cancel,
        );
        writing.store(false, Ordering::Relaxed);
        writer.join().expect("writer");
        let restorer = restored.expect("restored before the watchdog");
        assert_eq!(restorer.applied, 5);
        assert!(restorer.skipped > 0, "the other writer's records were read");
        drop(watchdog);
    }

    /// A read that stops making progress ends, saying where it stopped.
    #[test]
    fn a_stalled_restore_says_where_it_stopped() {
        let (broker, client) = slow_changelog(60);
        let cluster = broker.cluster();
        let restore = restore_on_a_thread(client, Duration::from_secs(1));
        // Past the start (a few round trips), into the records.
        std::thread::sleep(Duration::from_secs(2));
        cluster
            .broker_round_trip_time(1, Duration::from_secs(60))
            .expect("stalled broker");
        let err = restore.join().expect("restore").expect_err("stalled");
        let RestoreError::Stalled {
            position, received, ..
        } = &err
        else {
            panic!("{err}");
        };
        assert!(*received > 0 && *received < 60, "{err}");
        assert_eq!(*position, Some(i64::try_from(*received).unwrap()), "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "no record from the changelog for 1s (pipeline.restore_timeout), at offset {received} of at least 60, after {received} records"
            )),
            "{err}"
        );
        cluster
            .broker_round_trip_time(1, Duration::ZERO)
            .expect("broker back");
    }

    #[test]
    fn records_deleted_under_a_restore_fail_it_rather_than_cut_it_short() {
        let mut client = ClientConfig::new();
        client.set("auto.offset.reset", "latest");
        assert_eq!(
            restore_config(&client).get("auto.offset.reset"),
            Some("error")
        );
    }
}
