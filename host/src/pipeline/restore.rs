//! Rebuilding a partition's plugin state from the changelog before any of
//! its records are handled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::state::changelog::Restorer;

/// How long the changelog must stay quiet, once the position has passed
/// the high watermark seen at the start, before the restore counts as
/// complete without the broker saying the end is reached. The watermark
/// listed at the start is a lower bound only: tansu 0.6.0 lists the first
/// offset of the newest batch. The end a restore trusts is the one a fetch
/// answer reports (librdkafka's partition EOF), which is exact there too;
/// the quiet is the fallback for a broker that never says so.
const RESTORE_QUIET: Duration = Duration::from_millis(500);

/// How long the changelog must stay quiet after the broker said the end is
/// reached: librdkafka drops the records of the fetch answer that says so,
/// so a broker whose fetch watermark lagged its records would have them
/// fetched again within this (two fetch waits). A record after the end
/// falls back to [`RESTORE_QUIET`].
const EOF_QUIET: Duration = Duration::from_millis(20);

/// How long one poll waits for a record.
const POLL: Duration = Duration::from_millis(10);

/// Reads changelog partition `partition` from the beginning to its end as of
/// now, keeping the records that belong to `input_topic`. Gives up with
/// `Canceled` after `timeout` or as soon as `cancel` is set. Blocking: run
/// it off the async threads.
pub fn restore_partition(
    client: &ClientConfig,
    changelog: &str,
    partition: i32,
    input_topic: &str,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Restorer, KafkaError> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "todo-eventd-restore")
        .set("enable.auto.commit", "false")
        // The end of the partition as the broker's fetch answer reports it.
        .set("enable.partition.eof", "true")
        // The changelog is written without transactions; and some brokers
        // (tansu 0.6.0) report a last stable offset that would hide all but
        // the first record of a batch from a read_committed reader.
        .set("isolation.level", "read_uncommitted")
        // Larger fetches, answered as soon as they can be: a restore reads
        // a partition from the beginning as fast as the broker serves it.
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("fetch.wait.max.ms", "10")
        // When 100 000 records wait unread (librdkafka's queue threshold),
        // fetch again 10 ms later rather than after the default second.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let mut restorer = Restorer::default();
    let (low, high) =
        consumer.fetch_watermarks(changelog, partition, timeout.min(Duration::from_secs(10)))?;
    if high <= low {
        return Ok(restorer);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(changelog, partition, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    // Since when no record has arrived (reset by every record, without
    // reading the clock per record).
    let mut quiet_since: Option<Instant> = None;
    // How long the quiet must last: short once the broker said the end was
    // reached at or past the start's end.
    let mut quiet_needed = RESTORE_QUIET;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(KafkaError::Canceled);
        }
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                restorer.apply(
                    input_topic,
                    message.key().unwrap_or_default(),
                    message.payload(),
                );
                quiet_since = None;
                quiet_needed = RESTORE_QUIET;
            }
            // Every record before the end is delivered before this is.
            Some(Err(KafkaError::PartitionEOF(_))) => {
                if passed(&consumer, changelog, high)? {
                    quiet_needed = EOF_QUIET;
                    quiet_since = Some(Instant::now());
                }
            }
            Some(Err(err)) => return Err(err),
            None => {
                // Done once the position has passed the end seen at the
                // start and nothing more has arrived for a moment. (Not
                // "offset + 1 == high": compaction leaves gaps.)
                let at_end = passed(&consumer, changelog, high)?;
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                if at_end && quiet.elapsed() >= quiet_needed {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(KafkaError::Canceled);
                }
            }
        }
    }
    Ok(restorer)
}

/// Whether the consumer's position on `changelog` is at or past `offset`.
fn passed(consumer: &BaseConsumer, changelog: &str, offset: i64) -> Result<bool, KafkaError> {
    let position = consumer.position()?;
    Ok(position
        .elements_for_topic(changelog)
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(o) if o >= offset)))
}
