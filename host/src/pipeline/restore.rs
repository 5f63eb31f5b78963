//! Rebuilding a partition's plugin state from the changelog before any of
//! its records are handled.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::state::changelog::Restorer;

/// Reads changelog partition `partition` from the beginning to its end as of
/// now, keeping the records that belong to `input_topic`. Blocking: run it
/// off the async threads.
pub fn restore_partition(
    client: &ClientConfig,
    changelog: &str,
    partition: i32,
    input_topic: &str,
    timeout: Duration,
) -> Result<Restorer, KafkaError> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "todo-eventd-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut restorer = Restorer::default();
    let (low, high) = consumer.fetch_watermarks(changelog, partition, timeout)?;
    if high <= low {
        return Ok(restorer);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(changelog, partition, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                restorer.apply(
                    input_topic,
                    message.key().unwrap_or_default(),
                    message.payload(),
                );
                if message.offset() + 1 >= high {
                    break;
                }
            }
            Some(Err(err)) => return Err(err),
            None => {
                // Compaction may have removed the last offsets; the position
                // says whether we have read up to the end.
                let position = consumer.position()?;
                let at_end = position
                    .elements_for_topic(changelog)
                    .iter()
                    .any(|e| matches!(e.offset(), Offset::Offset(o) if o >= high));
                if at_end {
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
