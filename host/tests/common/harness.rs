//! A pipeline under test on the embedded (mock) broker: topics, a
//! producer, a run that stops once the outputs seen are enough, and the
//! group's committed offsets.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use todo_eventd::clock::Clock;
use todo_eventd::config::Config;
use todo_eventd::kafka::{self, EmbeddedBroker};
use todo_eventd::pipeline::Pipeline;
use todo_eventd::plugin::Plugin;
use todo_eventd::telemetry::PipelineMetrics;

use super::{TEST_PLUGIN, load, mode, plugin_dir, reader, sandbox, value};

pub const PARTITIONS: i32 = 3;
pub const CHANGELOG: &str = "todo-eventd.plugin-state";
/// The topics a pipeline with the bundled plugins uses.
pub const BUNDLED_TOPICS: [&str; 5] = [
    "task-events",
    "task-events.dlq",
    "reminders",
    "analytics",
    CHANGELOG,
];

pub struct Harness {
    pub broker: EmbeddedBroker,
    pub brokers: String,
    pub config: Config,
    /// Event time for the pipelines this harness runs.
    pub clock: Clock,
}

impl Harness {
    pub fn new(topics: &[&str]) -> Self {
        super::init_tracing();
        let broker = EmbeddedBroker::start().unwrap();
        let brokers = broker.bootstrap_servers();
        for topic in topics {
            broker.create_topic(topic, PARTITIONS).unwrap();
        }
        let mut config = Config::default();
        config.kafka.brokers = Some(brokers.clone());
        config.pipeline.shutdown_timeout = Duration::from_secs(20);
        Self {
            broker,
            brokers,
            config,
            clock: Clock::System,
        }
    }

    pub async fn produce(&self, lines: &[String]) {
        let producer = kafka::producer(&self.brokers, &self.config.kafka).unwrap();
        let sent = kafka::produce_lines(
            &producer,
            "task-events",
            lines.join("\n").as_bytes(),
            self.config.kafka.max_record_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(sent, lines.len() as u64);
    }

    /// Writes changelog records (key, value or tombstone) to every input
    /// partition's changelog partition, as an earlier run would have.
    pub async fn write_changelog(&self, records: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let producer = kafka::producer(&self.brokers, &self.config.kafka).unwrap();
        for partition in 0..PARTITIONS {
            for (key, value) in records {
                let record = kafka::OutRecord {
                    topic: CHANGELOG.into(),
                    partition: Some(partition),
                    key: Some(key.clone()),
                    value: value.clone(),
                    headers: Vec::new(),
                };
                record
                    .enqueue(&producer)
                    .await
                    .unwrap()
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    }

    /// Runs the pipeline until `until` says the outputs seen so far are
    /// enough (or 60 s pass), then shuts it down and returns the outputs.
    /// `during` runs first, beside the pipeline, which it may watch.
    pub async fn run_until(
        &self,
        plugins: Vec<Arc<Plugin>>,
        topics: &[&str],
        until: impl Fn(&[OwnedMessage]) -> bool,
        during: impl AsyncFnOnce(&Pipeline),
    ) -> (Vec<OwnedMessage>, Arc<PipelineMetrics>) {
        let pipeline = Pipeline::with_clock(self.config.clone(), plugins, self.clock.clone());
        let reader = reader(&self.brokers, topics);
        let seen = self
            .run_while(&pipeline, async {
                during(&pipeline).await;
                let mut seen = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while !until(&seen) {
                    match tokio::time::timeout_at(deadline, reader.recv()).await {
                        Ok(Ok(message)) => seen.push(message.detach()),
                        // A broker outage under test, say.
                        Ok(Err(_)) => {}
                        Err(_) => break,
                    }
                }
                seen
            })
            .await;
        (seen, pipeline.telemetry.pipeline)
    }

    /// Runs `pipeline` while `during` runs, then shuts it down and returns
    /// what `during` returned.
    pub async fn run_while<T>(&self, pipeline: &Pipeline, during: impl Future<Output = T>) -> T {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = pipeline.run(&self.brokers, async {
            let _ = stopped.await;
        });
        let during = async {
            let result = during.await;
            let _ = stop.send(());
            result
        };
        let (ran, result) = tokio::join!(run, during);
        ran.unwrap();
        result
    }

    /// Runs the pipeline until `count` distinct events have an output on
    /// `out-topic` (or a minute has passed).
    pub async fn run_until_echoed(
        &self,
        plugins: Vec<Arc<Plugin>>,
        count: usize,
    ) -> (Vec<OwnedMessage>, Arc<PipelineMetrics>) {
        self.run_until(
            plugins,
            &["out-topic"],
            |seen| distinct_events(seen) >= count,
            async |_| {},
        )
        .await
    }

    /// The group's committed offset per input partition.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = kafka::client_config(
            &self.brokers,
            &self.config.kafka,
            &[("group.id", self.config.kafka.group_id.as_str())],
        )
        .create()
        .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition("task-events", p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                (e.partition(), offset)
            })
            .collect()
    }

    /// How many records each input partition holds.
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = kafka::client_config(&self.brokers, &self.config.kafka, &[])
            .create()
            .unwrap();
        (0..PARTITIONS)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks("task-events", p, Duration::from_secs(10))
                    .unwrap();
                (p, high)
            })
            .collect()
    }
}

pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    kafka::header(message, name)
}

/// How many different input events the echo outputs cover.
pub fn distinct_events(seen: &[OwnedMessage]) -> usize {
    let ids: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    ids.len()
}

/// The echo test plugin, emitting each event's id to `out-topic`.
pub async fn echo_plugins() -> Vec<Arc<Plugin>> {
    let echo = mode("echo");
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&echo))]);
    load(&sandbox(), dir.path()).await
}
