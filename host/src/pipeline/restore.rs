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
/// complete. Brokers disagree on watermarks of multi-record batches (tansu
/// 0.6.0 reports one offset per batch), so the watermark alone is not trusted.
pub const RESTORE_QUIET: Duration = Duration::from_millis(500);

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
        .set("enable.partition.eof", "false")
        // The changelog is written without transactions; and some brokers
        // (tansu 0.6.0) report a last stable offset that would hide all but
        // the first record of a batch from a read_committed reader.
        .set("isolation.level", "read_uncommitted")
        // Larger fetches, answered as soon as they can be: a restore reads
        // a partition from the beginning as fast as the broker serves it.
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("fetch.wait.max.ms", "10")
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
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(KafkaError::Canceled);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                restorer.apply(
                    input_topic,
                    message.key().unwrap_or_default(),
                    message.payload(),
                );
                quiet_since = None;
            }
            Some(Err(err)) => return Err(err),
            None => {
                // Done once the position has passed the end seen at the
                // start and nothing more has arrived for a moment. (Not
                // "offset + 1 == high": compaction leaves gaps.)
                let position = consumer.position()?;
                let at_end = position
                    .elements_for_topic(changelog)
                    .iter()
                    .any(|e| matches!(e.offset(), Offset::Offset(o) if o >= high));
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                if at_end && quiet.elapsed() >= RESTORE_QUIET {
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
