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
//!
//! Workers take new plugin sets from the [`Registry`] between records, so a
//! hot reload never splits an event between two versions of a plugin.

mod records;
mod restore;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use self::records::{Failure, Source, dead_letter, output};
pub use self::restore::restore_partition;
use self::worker::{Revoke, Targets, Worker};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::kafka;
use crate::plugin::health::QuarantinePolicy;
use crate::plugin::{Plugin, Registry};
use crate::telemetry::Telemetry;

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
        source: KafkaError,
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
    telemetry: Telemetry,
    /// Newly assigned partitions, for the run loop to start their workers
    /// (so timers fire even on partitions that receive no new records).
    assigned: mpsc::UnboundedSender<Vec<(String, i32)>>,
}

impl ClientContext for PipelineContext {
    /// Consumer lag per assigned partition, from librdkafka's statistics
    /// (every `statistics.interval.ms`).
    fn stats(&self, statistics: Statistics) {
        let lags = statistics
            .topics
            .values()
            .flat_map(|topic| {
                topic.partitions.values().filter_map(|p| {
                    let assigned = p.partition >= 0 && p.fetch_state != "none";
                    (assigned && p.consumer_lag >= 0)
                        .then(|| ((topic.topic.clone(), p.partition), p.consumer_lag))
                })
            })
            .collect();
        self.telemetry.pipeline.set_consumer_lag(&lags);
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        self.telemetry.pipeline.rebalance("revoke");
        self.telemetry.readiness.revoked(partitions.count());
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
                self.telemetry.pipeline.rebalance("assign");
                self.telemetry.readiness.assigned(partitions.count());
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
    /// The plugins serving (and any later versions of them).
    pub plugins: Arc<Registry>,
    /// Metrics and readiness, shared with the admin endpoint.
    pub telemetry: Telemetry,
}

impl Pipeline {
    /// A pipeline over a fixed set of plugins, with fresh telemetry.
    pub fn new(config: Config, plugins: Vec<Arc<Plugin>>) -> Self {
        let telemetry = Telemetry::default();
        let plugins = Arc::new(Registry::fixed(plugins, telemetry.plugins.clone()));
        Self {
            config,
            plugins,
            telemetry,
        }
    }

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
            telemetry: self.telemetry.clone(),
            assigned: assigned_tx,
        };
        let defaults = [
            ("group.id", kafka.group_id.as_str()),
            // Offsets are stored behind acknowledged deliveries and committed
            // by `commit_periodically` (timed for the metrics).
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("statistics.interval.ms", "5000"),
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
        info!(brokers, topics, group = %kafka.group_id, plugins = self.plugins.current().plugins.len(), "Pipeline started.");

        let restore_client = kafka::client_config(brokers, kafka, &[]);
        let committer = tokio::spawn(commit_periodically(
            consumer.clone(),
            self.config.pipeline.commit_interval,
            self.telemetry.clone(),
        ));
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
        self.telemetry.readiness.stopping();
        committer.abort();
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
        commit(&consumer, &self.telemetry);
        if let Err(err) = producer.flush(Duration::from_secs(5)) {
            warn!(error = %err, "Flushing the producer.");
        }
        consumer.unsubscribe();
        info!(summary = %self.telemetry.pipeline.summary(), "Pipeline stopped.");
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
        let plugins = self.plugins.subscribe();
        let dispatcher = Dispatcher::with(
            &plugins.borrow().plugins,
            self.quarantine_policy(),
            self.telemetry.plugins.clone(),
        );
        let worker = Worker {
            topic: topic.to_owned(),
            partition,
            dispatcher,
            plugins,
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
            stats: self.telemetry.pipeline.clone(),
            pending: Default::default(),
        };
        let restoring = self.telemetry.readiness.restoring();
        let task = tokio::spawn(worker.run(rx, revoke.clone(), done_tx, restoring));
        WorkerHandle {
            records,
            revoke,
            done,
            task,
        }
    }

    fn quarantine_policy(&self) -> QuarantinePolicy {
        let p = &self.config.plugins;
        QuarantinePolicy {
            after: p.quarantine_after,
            backoff: p.quarantine_backoff,
            max_backoff: p.quarantine_max_backoff,
        }
    }
}

/// Commits the stored offsets every `interval`, timing each commit.
async fn commit_periodically(
    consumer: Arc<PipelineConsumer>,
    interval: Duration,
    telemetry: Telemetry,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (consumer, telemetry) = (consumer.clone(), telemetry.clone());
        // A synchronous commit waits for the coordinator; keep it off the
        // runtime's threads.
        if tokio::task::spawn_blocking(move || commit(&consumer, &telemetry))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Commits the stored offsets now. Nothing new to commit is not an error.
fn commit(consumer: &PipelineConsumer, telemetry: &Telemetry) {
    let started = Instant::now();
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => telemetry.pipeline.committed(started.elapsed()),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => {
            telemetry.pipeline.commit_failed();
            warn!(error = %err, "Committing offsets failed; they are committed with the next one.");
        }
    }
}
