//! Kafka plumbing: client settings, topic creation, the embedded broker and
//! the `produce` command.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    DefaultProducerContext, DeliveryFuture, FutureProducer, FutureRecord, Producer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::{DEFAULT_MESSAGE_TIMEOUT_MS, KafkaConfig};

/// Kafka errors with the operation and topic involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A librdkafka call failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What we were doing.
        context: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The changelog topic cannot hold the input's partitions.
    #[error("{0}")]
    Changelog(String),
    /// A topic whose records must get through refuses batches as large as
    /// the producer makes.
    #[error(
        "topic {topic} ({role}) takes record batches of at most {topic_max} bytes (its max.message.bytes), \
         but the producer makes them up to {producer_max} (kafka.properties.message.max.bytes): a larger batch \
         would be refused as a whole and the partition would stall; raise the topic's max.message.bytes or \
         set message.max.bytes to at most {topic_max}"
    )]
    RecordLimit {
        /// The topic.
        topic: String,
        /// What the daemon writes there.
        role: &'static str,
        /// The topic's `max.message.bytes`.
        topic_max: usize,
        /// The producer's `message.max.bytes`.
        producer_max: usize,
    },
    /// The changelog is not compacted: retention would delete plugin
    /// state and timers, and a restore would bring back only part of it.
    #[error(
        "changelog topic {topic} has cleanup.policy={policy}: retention would delete plugin state and \
         timers that a restore needs, losing them; set its cleanup.policy to compact (the daemon \
         creates it so when it is missing) or name another topic in kafka.changelog_topic"
    )]
    ChangelogNotCompacted {
        /// The topic.
        topic: String,
        /// Its `cleanup.policy`.
        policy: String,
    },
    /// The dead-letter topic is compacted: it refuses the dead letters of
    /// records without a key, and keeps only the last of each key's.
    #[error(
        "dead-letter topic {topic} has cleanup.policy={policy}: a compacted topic refuses records \
         without a key (the dead letter of a keyless record could not be written, stalling its \
         partition) and keeps only each key's last dead letter; set its cleanup.policy to delete \
         (the daemon creates it so when it is missing)"
    )]
    DeadLettersCompacted {
        /// The topic.
        topic: String,
        /// Its `cleanup.policy`.
        policy: String,
    },
    /// A line of `produce`'s input is longer than a record may be.
    #[error(
        "reading events, line {line}: {bytes} bytes, more than a record may hold (message.max.bytes, {max})"
    )]
    LineTooLong {
        /// Its number, from 1.
        line: usize,
        /// Its length.
        bytes: usize,
        /// The producer's `message.max.bytes`.
        max: usize,
    },
    /// Reading the input of `produce` failed (a read error, a line that
    /// is not UTF-8).
    #[error("reading events, line {line}: {source}")]
    Io {
        /// The line (1-based) being read.
        line: usize,
        /// What failed.
        source: std::io::Error,
    },
}

/// Result of Kafka operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn failed(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka { context, source }
}

/// Why `topic` is not a name Kafka accepts — 1 to 249 letters, digits,
/// `.`, `_` or `-`, and not `.` or `..` — quoting it (bounded); `None` if
/// it is one. Checked where a name is configured, since a topic the broker
/// refuses to create would otherwise stop the daemon at start-up.
pub fn topic_name_error(topic: &str) -> Option<String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    let ok = (1..=249).contains(&topic.len())
        && topic.bytes().all(allowed)
        && topic != "."
        && topic != "..";
    (!ok).then(|| {
        format!(
            "\"{}\" is not a Kafka topic name (1 to 249 letters, digits, '.', '_' or '-')",
            crate::text::quote_bounded(topic, 64)
        )
    })
}

/// `err` with the values of secret-looking properties hidden: librdkafka
/// quotes the value of a property it rejects.
pub fn redact(err: KafkaError, kafka: &KafkaConfig) -> KafkaError {
    match err {
        KafkaError::ClientConfig(res, description, key, value) => {
            let value = if crate::config::is_secret_name(&key) {
                "***".to_owned()
            } else {
                kafka.redact(&value)
            };
            KafkaError::ClientConfig(res, kafka.redact(&description), key, value)
        }
        KafkaError::ClientCreation(message) => KafkaError::ClientCreation(kafka.redact(&message)),
        other => other,
    }
}

/// Settings for a client: brokers, our `defaults` for this kind of client,
/// then the operator's extra properties (SASL, TLS, tuning), which win.
pub fn client_config(
    brokers: &str,
    kafka: &KafkaConfig,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// A producer for outputs and dead letters: acknowledged by all in-sync
/// replicas, retried by librdkafka for up to 30 s before a delivery fails,
/// with its queue bounded to 64 MiB (librdkafka's default is 1 GiB) so a
/// slow broker pushes back instead of growing the heap, and batches
/// compressed with lz4 (`compression.type`, which operators may change).
pub fn producer(brokers: &str, kafka: &KafkaConfig) -> Result<FutureProducer> {
    let message_timeout = DEFAULT_MESSAGE_TIMEOUT_MS.to_string();
    let defaults = [
        ("acks", "all"),
        ("linger.ms", "5"),
        ("message.timeout.ms", message_timeout.as_str()),
        ("queue.buffering.max.kbytes", "65536"),
        ("compression.type", "lz4"),
    ];
    client_config(brokers, kafka, &defaults)
        .create()
        .map_err(|e| redact(e, kafka))
        .map_err(failed(format!("creating a producer for {brokers}")))
}

/// An in-process Kafka-protocol broker (librdkafka's mock cluster) for
/// trying the daemon without a Kafka installation. It listens on a
/// localhost port that other clients can use too. It keeps everything in
/// memory, at most [`EMBEDDED_RETENTION`] per partition, and has no
/// CreateTopics: topics are made with [`EmbeddedBroker::create_topic`].
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

/// What the embedded broker keeps per partition before it drops the oldest
/// records: a count and a size (librdkafka's mock cluster's fixed limits).
pub const EMBEDDED_RETENTION: (u64, u64) = (100_000, 5 << 20);

impl EmbeddedBroker {
    /// Starts a one-broker cluster.
    pub fn start() -> Result<Self> {
        let cluster = MockCluster::new(1).map_err(failed("starting the embedded broker"))?;
        Ok(Self { cluster })
    }

    /// The bootstrap address, e.g. `127.0.0.1:39123`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock broker has no CreateTopics API).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .map_err(failed(format!("creating topic {topic}")))
    }

    /// The underlying mock cluster, for fault injection in tests.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

/// Creates the topics that do not exist yet on a real broker (`compacted`
/// ones with `cleanup.policy=compact`, the dead-letter topic with
/// `delete`); topics that already exist are left
/// as they are. Returns the topics the broker refused to create, with its
/// reason (not authorised, a policy): the caller decides which it can do
/// without.
pub async fn ensure_topics(
    brokers: &str,
    kafka: &KafkaConfig,
    topics: &BTreeSet<String>,
    compacted: &BTreeSet<String>,
) -> Result<Vec<(String, RDKafkaErrorCode)>> {
    // Only ask for what is missing: a broker without CreateTopics (the
    // embedded one, `todo-eventd broker`) then works once its topics exist.
    let existing = {
        let (brokers, kafka) = (brokers.to_owned(), kafka.clone());
        crate::blocking::spawn(move || existing_topics(&brokers, &kafka))
            .await
            .map_err(|_| Error::Kafka {
                context: "listing topics".to_owned(),
                source: KafkaError::Canceled,
            })??
    };
    let missing: Vec<&String> = topics.iter().filter(|t| !existing.contains(*t)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let admin = admin_client(brokers, kafka)?;
    let new: Vec<NewTopic<'_>> = missing
        .into_iter()
        .map(|t| {
            let topic = NewTopic::new(
                t,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            );
            if compacted.contains(t) {
                topic.set("cleanup.policy", "compact")
            } else if *t == kafka.dead_letter_topic {
                // Whatever the broker's default: see `DeadLettersCompacted`.
                topic.set("cleanup.policy", "delete")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(failed("creating topics"))?;
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "Created topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => refused.push((topic, code)),
        }
    }
    Ok(refused)
}

/// How long start-up waits for the brokers to describe topic
/// configurations: a broker that has the request answers in milliseconds,
/// and librdkafka waits out the whole timeout for one that has not.
pub const DESCRIBE_CONFIGS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the brokers said of one topic's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TopicSettings {
    topic: String,
    /// `max.message.bytes`.
    max_message_bytes: Option<usize>,
    /// `cleanup.policy`.
    cleanup_policy: Option<String>,
}

/// Checks the topics' configurations where they could lose or stall data.
/// The topics whose records must get through — the changelog and the
/// dead-letter topic — must take record batches as large as the producer
/// makes (`message.max.bytes`): a broker refuses a batch over a topic's
/// `max.message.bytes` as a whole and librdkafka does not split it, so
/// every state change or dead letter in it would fail for good and the
/// partition would stall. An output topic that takes less is only warned
/// about (the inputs whose outputs it refuses are dead-lettered). The
/// changelog must be compacted (an existing one may not be), and the
/// dead-letter topic must not be. A broker that
/// does not describe topic configurations within
/// [`DESCRIBE_CONFIGS_TIMEOUT`] (the embedded one has no such request), or
/// a topic it will not describe, is warned about and passes.
pub async fn check_topic_settings(
    brokers: &str,
    kafka: &KafkaConfig,
    topics: &BTreeSet<String>,
) -> Result<()> {
    let admin = admin_client(brokers, kafka)?;
    let specifiers: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(DESCRIBE_CONFIGS_TIMEOUT));
    let described = match admin.describe_configs(&specifiers, &options).await {
        Ok(described) => described,
        Err(err) => {
            tracing::warn!(error = %err, "The brokers did not describe the topics' configurations; their record limits and the changelog's cleanup policy are not checked.");
            return Ok(());
        }
    };
    let mut settings = Vec::new();
    // Answers come in the order asked (an error names no topic).
    for (asked, result) in topics.iter().zip(described) {
        match result {
            Ok(resource) => {
                let topic = match &resource.specifier {
                    OwnedResourceSpecifier::Topic(topic) => topic.clone(),
                    _ => asked.clone(),
                };
                let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
                let described = TopicSettings {
                    topic,
                    max_message_bytes: value("max.message.bytes")
                        .and_then(|v| v.trim().parse::<usize>().ok()),
                    cleanup_policy: value("cleanup.policy"),
                };
                tracing::debug!(?described, "Topic configuration described.");
                settings.push(described);
            }
            Err(code) => {
                tracing::warn!(topic = asked, error = %code, "The brokers did not describe a topic's configuration; its record limit is not checked.");
            }
        }
    }
    judge_topic_settings(kafka, &settings)
}

/// [`check_topic_settings`] on what the brokers described.
fn judge_topic_settings(kafka: &KafkaConfig, settings: &[TopicSettings]) -> Result<()> {
    let producer_max = kafka.max_record_bytes();
    let changelog = kafka.changelog_topic();
    for described in settings {
        let topic = &described.topic;
        if *topic == changelog
            && let Some(policy) = &described.cleanup_policy
            && !policy.split(',').any(|p| p.trim() == "compact")
        {
            return Err(Error::ChangelogNotCompacted {
                topic: topic.clone(),
                policy: policy.clone(),
            });
        }
        if *topic == kafka.dead_letter_topic
            && let Some(policy) = &described.cleanup_policy
            && policy.split(',').any(|p| p.trim() == "compact")
        {
            return Err(Error::DeadLettersCompacted {
                topic: topic.clone(),
                policy: policy.clone(),
            });
        }
        let Some(topic_max) = described.max_message_bytes else {
            continue;
        };
        if topic_max >= producer_max {
            continue;
        }
        let role = if *topic == changelog {
            "the changelog"
        } else if *topic == kafka.dead_letter_topic {
            "the dead-letter topic"
        } else {
            if !kafka.input_topics.contains(topic) {
                tracing::warn!(
                    topic,
                    topic_max,
                    producer_max,
                    "An output topic takes smaller record batches than the producer makes (its max.message.bytes is below kafka.properties.message.max.bytes): outputs in a batch it refuses dead-letter their inputs."
                );
            }
            continue;
        };
        return Err(Error::RecordLimit {
            topic: topic.clone(),
            role,
            topic_max,
            producer_max,
        });
    }
    Ok(())
}

/// A client for creating topics and reading their configuration.
fn admin_client(brokers: &str, kafka: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    client_config(brokers, kafka, &[])
        .create()
        .map_err(|e| redact(e, kafka))
        .map_err(failed(format!("creating an admin client for {brokers}")))
}

/// A client for reading the cluster's metadata.
fn metadata_client(brokers: &str, kafka: &KafkaConfig) -> Result<BaseConsumer> {
    client_config(brokers, kafka, &[])
        .create()
        .map_err(|e| redact(e, kafka))
        .map_err(failed(format!("connecting to {brokers}")))
}

/// The topics the cluster has (with at least one partition). Blocking:
/// call it off the async threads.
pub fn existing_topics(brokers: &str, kafka: &KafkaConfig) -> Result<BTreeSet<String>> {
    let consumer = metadata_client(brokers, kafka)?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(failed(format!("listing the topics of {brokers}")))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name().to_owned())
        .collect())
}

/// Connects to the brokers and reads the cluster's metadata, so a broker
/// that cannot be reached, a TLS or SASL mistake shows up at start-up, with
/// librdkafka's own account of it in the log as it happens (a producer's
/// events are served by its polling thread). Blocking: call it off the
/// async threads.
pub fn probe(brokers: &str, kafka: &KafkaConfig, timeout: Duration) -> Result<()> {
    let producer = producer(brokers, kafka)?;
    producer
        .client()
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|source| Error::Kafka {
            context: format!(
                "reaching the brokers at {brokers} (see the librdkafka lines above for TLS or SASL failures)"
            ),
            source: redact(source, kafka),
        })
}

/// Checks that the changelog has a partition for every input partition
/// (state of input partition N lives in changelog partition N). Blocking:
/// call it off the async threads.
pub fn check_changelog_partitions(brokers: &str, kafka: &KafkaConfig) -> Result<()> {
    let consumer = metadata_client(brokers, kafka)?;
    let changelog = kafka.changelog_topic();
    let count = |topic: &str| -> Result<usize> {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(failed(format!("reading metadata of {topic}")))?;
        Ok(metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len()))
    };
    let have = count(&changelog)?;
    for input in &kafka.input_topics {
        let need = count(input)?;
        if have < need {
            return Err(Error::Changelog(format!(
                "changelog topic {changelog} has {have} partitions but input topic {input} has {need}; \
                 it needs at least as many (create it with more partitions or set kafka.changelog_topic)"
            )));
        }
    }
    Ok(())
}

/// A record we own, so it can be re-sent if its delivery fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` lets the partitioner pick by key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// How long to wait before offering a record again to a full producer
/// queue.
pub const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

impl OutRecord {
    /// Hands the record to the producer without waiting and returns the
    /// future of its delivery. A full queue is
    /// `MessageProduction(QueueFull)`: offer it again a little later.
    pub fn try_enqueue(&self, producer: &FutureProducer) -> Result<DeliveryFuture, KafkaError> {
        producer
            .send_result(self.as_future_record())
            .map_err(|(err, _)| err)
    }

    /// Hands the record to the producer, waiting (asynchronously) while
    /// its queue is full.
    pub async fn enqueue(&self, producer: &FutureProducer) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match self.try_enqueue(producer) {
                Err(err) if is_queue_full(&err) => tokio::time::sleep(QUEUE_FULL_BACKOFF).await,
                other => return other,
            }
        }
    }

    /// Bytes the record takes on the wire, roughly: key, value and headers
    /// (without framing).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    fn as_future_record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut record = FutureRecord::to(&self.topic).headers(headers);
        if let Some(value) = &self.value {
            record = record.payload(value.as_slice());
        }
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(partition) = self.partition {
            record = record.partition(partition);
        }
        record
    }
}

/// Sends NDJSON events to `topic`, one record per non-empty line, keyed by
/// the event's user id when it decodes (so a user's events stay in order),
/// and waits until the broker has acknowledged them all. An error names
/// the line (1-based) whose record failed. A line longer than `max_line`
/// bytes (the producer's `message.max.bytes`) is refused without being
/// held in memory, so endless input (`/dev/zero`) cannot exhaust it.
pub async fn produce_lines(
    producer: &FutureProducer,
    topic: &str,
    input: impl BufRead,
    max_line: usize,
) -> Result<u64> {
    let mut pending = Vec::new();
    let mut count = 0;
    let mut lines = crate::lines::BoundedLines::new(input, max_line.saturating_add(1));
    loop {
        let (number, line) = match lines.next_line() {
            Ok(Some((number, line))) => (number, line),
            Ok(None) => break,
            Err(source) => {
                return Err(Error::Io {
                    line: lines.read() + 1,
                    source,
                });
            }
        };
        // One byte over the bound is read so that a CRLF line at the bound
        // passes; without its CR, it is held to the bound itself.
        let too_long = |bytes| Error::LineTooLong {
            line: number,
            bytes,
            max: max_line,
        };
        let bytes = match line {
            crate::lines::Line::Text(bytes) => bytes.strip_suffix(b"\r").unwrap_or(bytes),
            crate::lines::Line::TooLong { bytes } => return Err(too_long(bytes)),
        };
        if bytes.len() > max_line {
            return Err(too_long(bytes.len()));
        }
        let line = std::str::from_utf8(bytes).map_err(|_| Error::Io {
            line: number,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let line = line.to_owned();
        let key = crate::event::decode(line.as_bytes())
            .ok()
            .map(|e| e.task.user_id.into_bytes());
        let record = OutRecord {
            topic: topic.to_owned(),
            partition: None,
            key,
            value: Some(line.into_bytes()),
            headers: Vec::new(),
        };
        let delivery = record
            .enqueue(producer)
            .await
            .map_err(|source| Error::Kafka {
                context: format!("producing line {number} to {topic}"),
                source,
            })?;
        pending.push((number, delivery));
        count += 1;
        if pending.len() >= 1000 {
            settle(&mut pending, topic).await?;
        }
    }
    settle(&mut pending, topic).await?;
    Ok(count)
}

/// Waits for the deliveries of the numbered lines.
async fn settle(pending: &mut Vec<(usize, DeliveryFuture)>, topic: &str) -> Result<()> {
    let (numbers, deliveries): (Vec<usize>, Vec<DeliveryFuture>) = pending.drain(..).unzip();
    let results = futures::future::join_all(deliveries).await;
    for (number, result) in numbers.into_iter().zip(results) {
        let source = match result {
            Ok(Ok(_)) => continue,
            Ok(Err((source, _))) => source,
            Err(_) => KafkaError::Canceled,
        };
        return Err(Error::Kafka {
            context: format!("producing line {number} to {topic}"),
            source,
        });
    }
    Ok(())
}

/// Whether a produce error is the producer's queue being full.
pub fn is_queue_full(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

/// Whether a produce error will not go away by trying again: the record is
/// too large or invalid, the topic does not exist (after it was meant to
/// be created: librdkafka's own `UnknownTopic`) or we may not write to it.
/// Anything else (timeouts, leader changes, a broker down) is retriable,
/// including a broker's unknown topic or partition (its metadata lagging
/// behind a move; Kafka calls it retriable). A corrupt message stays
/// permanent: some brokers answer every try of a record they refuse with
/// it (a keyless record on a compacted topic), which would stall the
/// partition for good.
pub fn is_permanent(err: &KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        err.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::InvalidTopic
                | Code::MessageBatchTooLarge
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::TransactionalIdAuthorizationFailed
                | Code::SaslAuthenticationFailed
                | Code::PolicyViolation
                | Code::UnknownTopic
                | Code::UnknownPartition
                | Code::UnsupportedForMessageFormat
        )
    )
}

/// The value of header `name` on a record, as text. rdkafka's header
/// reader panics on a header name that is not UTF-8: a consumed record is
/// read through [`crate::pipeline::detach`] first, which leaves such
/// headers out.
pub fn header(message: &impl Message, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Partitions `0..count` of each topic, from their first record: what a
/// reader of whole topics is assigned. Such a reader is assigned rather
/// than subscribed: closing a subscribed consumer can hang for good in
/// librdkafka when a rebalance event is still queued
/// (confluentinc/librdkafka#4884), and joining a group takes seconds.
pub fn from_the_start<'a>(
    topics: impl IntoIterator<Item = (&'a str, i32)>,
) -> Result<TopicPartitionList, KafkaError> {
    let mut assignment = TopicPartitionList::new();
    for (topic, count) in topics {
        for partition in 0..count {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    Ok(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_stay_are_permanent() {
        use RDKafkaErrorCode as Code;
        let produce = KafkaError::MessageProduction;
        for code in [
            Code::MessageSizeTooLarge,
            Code::InvalidMessage,
            Code::UnknownTopic,
            Code::TopicAuthorizationFailed,
        ] {
            assert!(is_permanent(&produce(code)), "{code:?}");
        }
        for code in [
            Code::UnknownTopicOrPartition,
            Code::NotLeaderForPartition,
            Code::MessageTimedOut,
        ] {
            assert!(!is_permanent(&produce(code)), "{code:?}");
        }
    }

    #[test]
    fn client_errors_never_show_a_secret() {
        // A misspelt (unknown) property, and a rejected value equal to the
        // password: librdkafka quotes both values in its errors.
        for (name, value) in [
            ("sasl.passwrod", "TOPSECRET-1"),
            ("security.protocol", "TOPSECRET-2"),
        ] {
            let mut kafka = KafkaConfig::default();
            kafka.properties.insert(name.into(), value.into());
            kafka
                .properties
                .insert("sasl.password".into(), "TOPSECRET-2".into());
            let err = producer("127.0.0.1:1", &kafka)
                .err()
                .unwrap_or_else(|| panic!("{name} is rejected"))
                .to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("TOPSECRET"), "{name}: {err}");
        }
    }

    /// A line the producer refuses, or one that is not UTF-8, is named by
    /// its number, counting blank lines (an operator finds it in the file).
    #[tokio::test]
    async fn a_refused_line_is_named_by_its_number() {
        let broker = EmbeddedBroker::start().expect("embedded broker");
        broker.create_topic("in", 1).expect("topic");
        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("message.max.bytes".into(), "2000".into());
        let producer = producer(&broker.bootstrap_servers(), &kafka).expect("producer");
        let max = kafka.max_record_bytes();
        assert_eq!(max, 2000);
        let input = format!("{{}}\n\n{{}}\n\"{}\"\n{{}}\n", "x".repeat(1990));
        let err = produce_lines(&producer, "in", input.as_bytes(), max)
            .await
            .expect_err("the long line is refused")
            .to_string();
        assert!(err.starts_with("producing line 4 to in: "), "{err}");

        // A line longer than any record is refused as it is read, and
        // endless input costs no more memory than the bound.
        use std::io::Read as _;
        let endless = std::io::BufReader::new(std::io::repeat(b'x').take(1 << 30));
        let err = produce_lines(&producer, "in", endless, max)
            .await
            .expect_err("refused")
            .to_string();
        assert_eq!(
            err,
            "reading events, line 1: 1073741824 bytes, more than a record may hold (message.max.bytes, 2000)"
        );
        // The bound is the line's own, with or without a CR before the
        // newline.
        let input = format!("{{}}\n{}\n", "x".repeat(2001));
        let err = produce_lines(&producer, "in", input.as_bytes(), max)
            .await
            .expect_err("refused")
            .to_string();
        assert_eq!(
            err,
            "reading events, line 2: 2001 bytes, more than a record may hold (message.max.bytes, 2000)"
        );

        // A line that is not UTF-8 is named too.
        let input = b"{}\n{\"title\":\"caf\xe9\"}\n{}\n";
        let err = produce_lines(&producer, "in", &input[..], max)
            .await
            .expect_err("not UTF-8")
            .to_string();
        assert!(err.starts_with("reading events, line 2: "), "{err}");
    }

    /// A broker without DescribeConfigs (the embedded one) passes the
    /// record-limit check instead of failing start-up; tansu, which has it,
    /// is the end-to-end test's.
    #[tokio::test]
    async fn a_broker_that_cannot_describe_configs_passes_the_limit_check() {
        let broker = EmbeddedBroker::start().expect("embedded broker");
        let kafka = KafkaConfig::default();
        broker
            .create_topic(&kafka.changelog_topic(), 1)
            .expect("topic");
        let topics = BTreeSet::from([kafka.changelog_topic(), kafka.dead_letter_topic.clone()]);
        let checked = tokio::time::timeout(
            Duration::from_secs(60),
            check_topic_settings(&broker.bootstrap_servers(), &kafka, &topics),
        )
        .await
        .expect("answers");
        assert!(checked.is_ok(), "{checked:?}");
    }

    /// The changelog and the dead-letter topic must take the producer's
    /// largest batch; an output or input topic that takes less, or a topic
    /// whose limit is unknown, passes.
    #[test]
    fn only_the_topics_that_must_get_through_need_the_producers_batch_size() {
        let kafka = KafkaConfig::default();
        let producer_max = kafka.max_record_bytes();
        let limit = |topic: &str, max: Option<usize>| TopicSettings {
            topic: topic.to_owned(),
            max_message_bytes: max,
            cleanup_policy: None,
        };
        let fits = [
            limit(&kafka.changelog_topic(), Some(producer_max)),
            limit(&kafka.dead_letter_topic, Some(1_048_588)),
            limit("reminders", Some(1000)),
            limit(&kafka.input_topics[0], Some(1000)),
            limit("analytics", None),
        ];
        judge_topic_settings(&kafka, &fits).expect("passes");
        for needed in [kafka.changelog_topic(), kafka.dead_letter_topic.clone()] {
            let mut limits = fits.to_vec();
            limits.push(limit(&needed, Some(producer_max - 1)));
            let err = judge_topic_settings(&kafka, &limits)
                .expect_err(&needed)
                .to_string();
            assert!(
                err.starts_with(&format!("topic {needed} (the "))
                    && err.contains(&format!("at most {}", producer_max - 1)),
                "{err}"
            );
        }
    }

    /// A changelog that retention may delete from would lose plugin state
    /// at the next restore: start-up refuses it. Compaction with deletion
    /// (`compact,delete`) is the operator's choice, and any policy on
    /// another topic is theirs too.
    #[test]
    fn the_changelog_must_be_compacted() {
        let kafka = KafkaConfig::default();
        let changelog = kafka.changelog_topic();
        let policy = |topic: &str, policy: &str| TopicSettings {
            topic: topic.to_owned(),
            max_message_bytes: None,
            cleanup_policy: Some(policy.to_owned()),
        };
        for fine in ["compact", "compact,delete", "delete, compact"] {
            let settings = [policy(&changelog, fine), policy("reminders", "delete")];
            judge_topic_settings(&kafka, &settings).expect(fine);
        }
        let err = judge_topic_settings(&kafka, &[policy(&changelog, "delete")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "changelog topic {changelog} has cleanup.policy=delete: retention would delete"
            )),
            "{err}"
        );
    }

    /// A compacted dead-letter topic refuses the dead letters of keyless
    /// records (and keeps one per key): refused at start.
    #[test]
    fn the_dead_letter_topic_must_not_be_compacted() {
        let kafka = KafkaConfig::default();
        let dead_letters = kafka.dead_letter_topic.clone();
        let policy = |policy: &str| TopicSettings {
            topic: dead_letters.clone(),
            max_message_bytes: None,
            cleanup_policy: Some(policy.to_owned()),
        };
        judge_topic_settings(&kafka, &[policy("delete")]).expect("delete");
        for compacted in ["compact", "delete,compact"] {
            let err = judge_topic_settings(&kafka, &[policy(compacted)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "dead-letter topic {dead_letters} has cleanup.policy={compacted}: a compacted topic refuses"
                )),
                "{err}"
            );
        }
    }
}
