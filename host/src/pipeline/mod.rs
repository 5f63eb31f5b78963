//! The daemon's run loop: a Kafka consumer group member that feeds each
//! assigned partition to its own worker, in order, and produces what the
//! plugins emit.
//!
//! Delivery is at-least-once: an input offset is stored (and later
//! committed) only after every plugin handled the record — or it was
//! dead-lettered — and every record it caused was acknowledged by the
//! broker ([`worker`]). Partitions run in parallel. On revocation
//! (cooperative rebalancing) a partition's worker settles its pending
//! deliveries and its offsets are committed before the partition is handed
//! back. Shutdown stops intake, drains every worker, commits and leaves the
//! group, bounded by `pipeline.shutdown_timeout`.

mod records;
mod restore;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::producer::Producer;
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use self::records::{Failure, Source, dead_letter, output};
pub use self::restore::restore_partition;
use self::worker::{Revoke, Targets, Worker};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::kafka;
use crate::plugin::Plugin;

/// Counters of what the pipeline did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input records received.
    pub events_in: AtomicU64,
    /// Plugin outputs acknowledged by the broker.
    pub outputs: AtomicU64,
    /// Dead letters acknowledged by the broker.
    pub dead_letters: AtomicU64,
    /// Timers fired.
    pub timers_fired: AtomicU64,
    /// Input offsets stored for commit.
    pub offsets_stored: AtomicU64,
    /// Deliveries that failed and were re-sent.
    pub resends: AtomicU64,
    /// Rebalances that revoked partitions from this member.
    pub revocations: AtomicU64,
    /// State changes written to the changelog (acknowledged).
    pub changelog_records: AtomicU64,
    /// Changelog records applied while restoring assigned partitions.
    pub restored_records: AtomicU64,
}

impl Stats {
    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} events in, {} outputs, {} dead letters, {} timers fired, {} offsets stored, {} re-sends, {} state changes written, {} restored",
            get(&self.events_in),
            get(&self.outputs),
            get(&self.dead_letters),
            get(&self.timers_fired),
            get(&self.offsets_stored),
            get(&self.resends),
            get(&self.changelog_records),
            get(&self.restored_records),
        )
    }
}

/// Errors that stop the pipeline from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or subscribed.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// The consumer failed in a way it cannot recover from.
    #[error("consuming from {topics}: {source}")]
    Consume {
        /// The input topics.
        topics: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
}

/// The consumer type the pipeline uses.
pub(crate) type PipelineConsumer = StreamConsumer<PipelineContext>;

struct WorkerHandle {
    records: mpsc::Sender<rdkafka::message::OwnedMessage>,
    revoke: Arc<Revoke>,
    done: std::sync::mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

type Workers = Arc<Mutex<HashMap<(String, i32), WorkerHandle>>>;

/// Consumer callbacks: on revocation, drain the revoked partitions' workers
/// and commit their offsets before the partitions are handed back.
pub(crate) struct PipelineContext {
    workers: Workers,
    drain_timeout: Duration,
    stats: Arc<Stats>,
    /// Newly assigned partitions, for the run loop to start their workers
    /// (so timers fire even on partitions that receive no new records).
    assigned: mpsc::UnboundedSender<Vec<(String, i32)>>,
}

impl ClientContext for PipelineContext {}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        self.stats.revocations.fetch_add(1, Ordering::Relaxed);
        let revoked: Vec<WorkerHandle> = {
            let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
            partitions
                .elements()
                .iter()
                .filter_map(|e| workers.remove(&(e.topic().to_owned(), e.partition())))
                .collect()
        };
        info!(
            partitions = partitions.count(),
            workers = revoked.len(),
            "Partitions revoked; draining."
        );
        let deadline = Instant::now() + self.drain_timeout;
        for handle in &revoked {
            handle.revoke.requested.notify_one();
        }
        // This runs on the consumer's polling thread; the workers settle on
        // the runtime's other threads.
        for handle in revoked {
            let left = deadline.saturating_duration_since(Instant::now());
            if handle.done.recv_timeout(left).is_err() {
                warn!(
                    "A worker did not drain in time; its unacknowledged records will be redelivered."
                );
                handle.task.abort();
            }
        }
        if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is not an error worth
            // more than a debug line.
            tracing::debug!(error = %err, "Commit on revocation.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                info!(partitions = partitions.count(), "Partitions assigned.");
                let list = partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let _ = self.assigned.send(list);
            }
            Rebalance::Error(err) => warn!(error = %err, "Rebalance error."),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The pipeline's dependencies.
pub struct Pipeline {
    /// Validated configuration.
    pub config: Config,
    /// The plugins, in dispatch order.
    pub plugins: Vec<Arc<Plugin>>,
    /// Counters, shared with whoever wants to watch.
    pub stats: Arc<Stats>,
}

impl Pipeline {
    /// Consumes from `brokers` until `shutdown` resolves, then drains,
    /// commits and leaves the group.
    pub async fn run(
        &self,
        brokers: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let kafka = &self.config.kafka;
        let topics = kafka.input_topics.join(",");
        let workers: Workers = Arc::default();
        let (assigned_tx, mut assigned) = mpsc::unbounded_channel();
        let context = PipelineContext {
            workers: workers.clone(),
            drain_timeout: self.config.pipeline.shutdown_timeout,
            stats: self.stats.clone(),
            assigned: assigned_tx,
        };
        let defaults = [
            ("group.id", kafka.group_id.as_str()),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", "10000"),
        ];
        let consumer: Arc<PipelineConsumer> = Arc::new(
            kafka::client_config(brokers, kafka, &defaults)
                .create_with_context(context)
                .map_err(|source| Error::Consume {
                    topics: topics.clone(),
                    source,
                })?,
        );
        let input: Vec<&str> = kafka.input_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&input)
            .map_err(|source| Error::Consume {
                topics: topics.clone(),
                source,
            })?;
        let producer = kafka::producer(brokers, kafka)?;
        info!(brokers, topics, group = %kafka.group_id, plugins = self.plugins.len(), "Pipeline started.");

        let restore_client = kafka::client_config(brokers, kafka, &[]);
        tokio::pin!(shutdown);
        loop {
            let message = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(partitions) = assigned.recv() => {
                    let mut map = workers.lock().unwrap_or_else(PoisonError::into_inner);
                    for (topic, partition) in partitions {
                        map.entry((topic.clone(), partition)).or_insert_with(|| {
                            self.spawn_worker(&topic, partition, &consumer, &producer, &restore_client)
                        });
                    }
                    continue;
                }
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(err) => {
                    warn!(error = %err, "Consumer error.");
                    continue;
                }
            };
            let key = (message.topic().to_owned(), message.partition());
            let sender = {
                let mut map = workers.lock().unwrap_or_else(PoisonError::into_inner);
                let handle = map.entry(key.clone()).or_insert_with(|| {
                    self.spawn_worker(&key.0, key.1, &consumer, &producer, &restore_client)
                });
                handle.records.clone()
            };
            // Bounded: a slow partition pauses intake (backpressure).
            if sender.send(message).await.is_err() {
                warn!(topic = %key.0, partition = key.1, "Worker stopped; record will be redelivered.");
            }
        }

        info!("Shutting down: draining partitions.");
        let handles: Vec<WorkerHandle> = workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, h)| h)
            .collect();
        let deadline = tokio::time::Instant::now() + self.config.pipeline.shutdown_timeout;
        for handle in handles {
            // Closing the channel lets the worker finish what it has queued.
            drop(handle.records);
            if tokio::time::timeout_at(deadline, handle.task)
                .await
                .is_err()
            {
                warn!("Shutdown timed out waiting for a partition to drain.");
            }
        }
        if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %err, "Final commit.");
        }
        if let Err(err) = producer.flush(Duration::from_secs(5)) {
            warn!(error = %err, "Flushing the producer.");
        }
        consumer.unsubscribe();
        info!(summary = %self.stats.summary(), "Pipeline stopped.");
        Ok(())
    }

    fn spawn_worker(
        &self,
        topic: &str,
        partition: i32,
        consumer: &Arc<PipelineConsumer>,
        producer: &rdkafka::producer::FutureProducer,
        restore_client: &rdkafka::ClientConfig,
    ) -> WorkerHandle {
        let (records, rx) = mpsc::channel(self.config.pipeline.queue_capacity);
        let revoke = Arc::new(Revoke::default());
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = Worker {
            topic: topic.to_owned(),
            partition,
            dispatcher: Dispatcher::new(&self.plugins),
            producer: producer.clone(),
            consumer: consumer.clone(),
            targets: Targets {
                dead_letters: self.config.kafka.dead_letter_topic.clone(),
                changelog: self.config.kafka.changelog_topic(),
                input_topic: topic.to_owned(),
                partition,
            },
            restore_client: restore_client.clone(),
            restore_timeout: self.config.pipeline.restore_timeout,
            max_in_flight: self.config.pipeline.max_in_flight,
            stats: self.stats.clone(),
            pending: Default::default(),
        };
        let task = tokio::spawn(worker.run(rx, revoke.clone(), done_tx));
        WorkerHandle {
            records,
            revoke,
            done,
            task,
        }
    }
}
