//! The consumer side of the pipeline: group membership and intake.
//!
//! Rebalances never block the poll loop. On an assignment the callback
//! takes the partitions at once and tells the run loop, which starts their
//! workers. On a revocation the callback only hands the partitions to the
//! run loop: their workers drain in the background while the consumer
//! keeps polling its other partitions, and only then are the offsets
//! committed and the partitions given back (librdkafka waits for that
//! `incremental_unassign`; the cooperative protocol lets the rest of the
//! group carry on meanwhile).
//!
//! Intake never waits on a worker either: a record for a partition whose
//! queue is full is held back and the partition paused; it resumes when
//! its worker has taken what was held. One slow partition therefore
//! delays only itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::telemetry::Telemetry;

/// The consumer type the pipeline uses.
pub(crate) type PipelineConsumer = StreamConsumer<PipelineContext>;

/// An input partition: topic and number.
pub(super) type Partition = (String, i32);

/// What the group did, for the run loop.
#[derive(Debug)]
pub(super) enum GroupEvent {
    /// These partitions are ours now.
    Assigned(Vec<Partition>),
    /// These partitions must be drained and given back.
    Revoked(TopicPartitionList),
}

/// Consumer callbacks: rebalances go to the run loop; statistics become
/// the lag metric and broker reachability.
pub(crate) struct PipelineContext {
    pub(super) events: mpsc::UnboundedSender<GroupEvent>,
    pub(super) telemetry: Telemetry,
}

impl ClientContext for PipelineContext {
    /// Consumer lag per assigned partition and whether any broker is up,
    /// from librdkafka's statistics (every `statistics.interval.ms`).
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
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.telemetry.readiness.broker_reachable(up);
    }
}

impl ConsumerContext for PipelineContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let taken = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(partitions),
                    _ => consumer.assign(partitions),
                };
                if let Err(err) = taken {
                    warn!(error = %err, "Taking an assignment failed.");
                    return;
                }
                // A partition paused when it was last revoked (or by
                // intake) stays paused in librdkafka until resumed.
                if let Err(err) = consumer.resume(partitions) {
                    debug!(error = %err, "Resuming assigned partitions.");
                }
                info!(partitions = partitions.count(), "Partitions assigned.");
                self.telemetry.pipeline.rebalance("assign");
                self.telemetry.readiness.assigned(partitions.count());
                let list = partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let _ = self.events.send(GroupEvent::Assigned(list));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(
                    partitions = partitions.count(),
                    "Partitions revoked; draining."
                );
                self.telemetry.pipeline.rebalance("revoke");
                // Stop fetching them now; the run loop hands them back
                // once their workers have settled.
                if let Err(err) = consumer.pause(partitions) {
                    debug!(error = %err, "Pausing revoked partitions.");
                }
                if let Err(send) = self.events.send(GroupEvent::Revoked(partitions.clone())) {
                    // Nobody to drain (the pipeline has stopped): give
                    // them back at once.
                    let GroupEvent::Revoked(partitions) = send.0 else {
                        return;
                    };
                    self.telemetry.readiness.revoked(partitions.count());
                    if let Err(err) = give_back(consumer, &partitions) {
                        warn!(error = %err, "Giving back revoked partitions.");
                    }
                }
            }
            other => warn!(error = ?other, "Rebalance error."),
        }
    }
}

/// Hands revoked partitions back to the group.
pub(super) fn give_back<C: Consumer<PipelineContext> + ?Sized>(
    consumer: &C,
    partitions: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
        _ => consumer.unassign(),
    }
}

/// A running partition worker, as the run loop sees it.
pub(super) struct WorkerHandle {
    pub(super) records: mpsc::Sender<OwnedMessage>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
}

type Permit = (Partition, Option<mpsc::OwnedPermit<OwnedMessage>>);

/// Routes records to partition workers, pausing partitions whose worker
/// is behind.
#[derive(Default)]
pub(super) struct Intake {
    workers: HashMap<Partition, WorkerHandle>,
    /// Records held back for paused partitions, oldest first.
    held: HashMap<Partition, VecDeque<OwnedMessage>>,
    /// For each paused partition: room in its worker's queue.
    room: FuturesUnordered<BoxFuture<'static, Permit>>,
}

impl Intake {
    /// Whether a worker runs for `partition`.
    pub(super) fn has(&self, partition: &Partition) -> bool {
        self.workers.contains_key(partition)
    }

    /// Adds the worker of a newly assigned partition.
    pub(super) fn insert(&mut self, partition: Partition, worker: WorkerHandle) {
        self.workers.insert(partition, worker);
    }

    /// Takes the worker of `partition` out (revocation), dropping what was
    /// held back for it (it will be fetched again by whoever gets the
    /// partition, from the committed offset).
    pub(super) fn remove(&mut self, partition: &Partition) -> Option<WorkerHandle> {
        self.held.remove(partition);
        self.workers.remove(partition)
    }

    /// Takes every worker out (shutdown).
    pub(super) fn drain(&mut self) -> Vec<WorkerHandle> {
        self.held.clear();
        self.workers.drain().map(|(_, worker)| worker).collect()
    }

    /// Hands a record to its partition's worker, or holds it back and
    /// pauses the partition if the worker's queue is full.
    pub(super) fn route(&mut self, consumer: &Arc<PipelineConsumer>, message: OwnedMessage) {
        let partition = (message.topic().to_owned(), message.partition());
        if let Some(held) = self.held.get_mut(&partition) {
            held.push_back(message);
            return;
        }
        let Some(worker) = self.workers.get(&partition) else {
            // Revoked and draining: whoever gets it next reads it again.
            debug!(topic = %partition.0, partition = partition.1, "Record for a partition being handed back; skipped.");
            return;
        };
        match worker.records.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                set_paused(consumer, &partition, true);
                self.room
                    .push(wait_for_room(partition.clone(), worker.records.clone()));
                self.held.insert(partition, VecDeque::from([message]));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!(topic = %partition.0, partition = partition.1, "Worker stopped; the record will be redelivered.");
            }
        }
    }

    /// The next partition whose worker has room for a held-back record.
    pub(super) async fn next_room(&mut self) -> Option<Permit> {
        if self.room.is_empty() {
            return std::future::pending().await;
        }
        self.room.next().await
    }

    /// Moves one held-back record into the room a worker made; resumes the
    /// partition once nothing is held back.
    pub(super) fn fill(&mut self, consumer: &Arc<PipelineConsumer>, (partition, permit): Permit) {
        let Some(held) = self.held.get_mut(&partition) else {
            return;
        };
        let Some(permit) = permit else {
            self.held.remove(&partition);
            return;
        };
        if let Some(message) = held.pop_front() {
            let sender = permit.send(message);
            if !held.is_empty() {
                self.room.push(wait_for_room(partition, sender));
                return;
            }
        }
        self.held.remove(&partition);
        set_paused(consumer, &partition, false);
    }
}

fn wait_for_room(
    partition: Partition,
    sender: mpsc::Sender<OwnedMessage>,
) -> BoxFuture<'static, Permit> {
    Box::pin(async move { (partition, sender.reserve_owned().await.ok()) })
}

fn set_paused(consumer: &PipelineConsumer, (topic, partition): &Partition, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, *partition);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(err) = result {
        warn!(%topic, partition, paused, error = %err, "Pausing or resuming a partition failed.");
    }
}
