//! The consumer side of the pipeline: group membership and intake.
//!
//! Rebalances never block the poll loop: the callback only hands the
//! partitions to the run loop (librdkafka waits for the application's
//! `incremental_assign`/`incremental_unassign`, and the cooperative protocol
//! lets the rest of the group carry on meanwhile). On an assignment the run
//! loop gives each partition its own queue (`split_partition_queue`) and its
//! worker, then takes the partitions. On a revocation their workers drain
//! in the background while the consumer keeps serving its other partitions,
//! and only then are the offsets committed and the partitions given back.
//!
//! Each worker reads its own partition's queue when it has room, so a slow
//! partition holds up only itself: librdkafka stops prefetching a partition
//! whose queue is full. The main queue then carries only group events,
//! statistics and errors; a record that still arrives there (fetched before
//! its partition was split) is handed to the worker, held back if the
//! worker is busy — never awaited in the loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
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

use super::worker::Stop;
use crate::telemetry::{PartitionStatus, Telemetry};

/// The consumer type the pipeline uses.
pub(crate) type PipelineConsumer = StreamConsumer<PipelineContext>;

/// An input partition: topic and number.
pub(super) type Partition = (String, i32);

/// The partition queue a worker reads.
pub(super) type PartitionQueue = StreamPartitionQueue<PipelineContext>;

/// What the group did, for the run loop.
#[derive(Debug)]
pub(super) enum GroupEvent {
    /// These partitions are ours once the run loop takes them.
    Assigned(TopicPartitionList),
    /// These partitions must be drained and given back — or, if the
    /// assignment was `lost` (this member was thrown out of the group and
    /// others may own them already), given up without writing more.
    Revoked {
        partitions: TopicPartitionList,
        lost: bool,
    },
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
                if let Err(send) = self.events.send(GroupEvent::Assigned(partitions.clone())) {
                    // The pipeline has stopped (the consumer is closing).
                    let GroupEvent::Assigned(partitions) = send.0 else {
                        return;
                    };
                    if let Err(err) = take(consumer, &partitions) {
                        warn!(error = %err, "Taking an assignment while closing.");
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if lost {
                    warn!(
                        partitions = partitions.count(),
                        "Assignment lost (this member left the group's view): giving the partitions up without writing more."
                    );
                } else {
                    info!(
                        partitions = partitions.count(),
                        "Partitions revoked; draining."
                    );
                }
                self.telemetry
                    .pipeline
                    .rebalance(if lost { "lost" } else { "revoke" });
                // Stop fetching them now; the run loop hands them back
                // once their workers have settled.
                if let Err(err) = consumer.pause(partitions) {
                    debug!(error = %err, "Pausing revoked partitions.");
                }
                let revoked = GroupEvent::Revoked {
                    partitions: partitions.clone(),
                    lost,
                };
                if let Err(send) = self.events.send(revoked) {
                    // Nobody to drain (the pipeline has stopped): give
                    // them back at once.
                    let GroupEvent::Revoked { partitions, .. } = send.0 else {
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

/// Takes assigned partitions (after their queues were split off), resumed
/// in case they were paused when last revoked.
pub(super) fn take<C: Consumer<PipelineContext> + ?Sized>(
    consumer: &C,
    partitions: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_assign(partitions)?,
        _ => consumer.assign(partitions)?,
    }
    consumer.resume(partitions)
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
    pub(super) stop: watch::Sender<Stop>,
    pub(super) task: JoinHandle<()>,
    /// Reports the partition stalled should its worker panic, until the
    /// handle goes (the partition is revoked).
    pub(super) _supervision: Arc<PartitionStatus>,
}

/// Routes records that arrive on the main queue — fetched before their
/// partition was split off — to the partition's worker, holding them back
/// while the worker's queue is full.
#[derive(Default)]
pub(super) struct Intake {
    /// Each partition's worker, numbered so room made by an earlier worker
    /// of the partition is told apart.
    workers: HashMap<Partition, (u64, WorkerHandle)>,
    next_worker: u64,
    /// Revoked partitions whose workers are settling; their records are
    /// left for whoever gets the partition next.
    draining: HashSet<Partition>,
    /// Records held back for busy workers, oldest first.
    held: HashMap<Partition, Held>,
    /// For each partition with records held back: room in its worker's
    /// queue. One may outlive its worker (the partition was revoked, and
    /// perhaps assigned again): its room is then not used.
    room: FuturesUnordered<BoxFuture<'static, Permit>>,
    /// Workers (by number) found stopped while still assigned records (a
    /// worker that panicked): reported once each, not once per record.
    stopped: HashSet<u64>,
}

/// Records held back for the worker numbered `worker`.
struct Held {
    worker: u64,
    records: VecDeque<OwnedMessage>,
}

/// Room in the queue of a partition's worker (by number); `None` once the
/// worker has stopped.
type Permit = (Partition, u64, Option<mpsc::OwnedPermit<OwnedMessage>>);

impl Intake {
    /// Whether a worker runs for `partition`.
    pub(super) fn has(&self, partition: &Partition) -> bool {
        self.workers.contains_key(partition)
    }

    /// Adds the worker of a newly assigned partition.
    pub(super) fn insert(&mut self, partition: Partition, worker: WorkerHandle) {
        self.draining.remove(&partition);
        self.next_worker += 1;
        self.workers.insert(partition, (self.next_worker, worker));
    }

    /// Takes the worker of `partition` out (revocation), dropping what was
    /// held back for it (whoever gets the partition next reads it again,
    /// from the committed offset).
    pub(super) fn remove(&mut self, partition: &Partition) -> Option<WorkerHandle> {
        self.held.remove(partition);
        self.draining.insert(partition.clone());
        let (id, worker) = self.workers.remove(partition)?;
        self.stopped.remove(&id);
        Some(worker)
    }

    /// A revoked partition has been handed back.
    pub(super) fn handed_back(&mut self, partition: &Partition) {
        self.draining.remove(partition);
    }

    /// Takes every worker out (shutdown).
    pub(super) fn drain(&mut self) -> Vec<WorkerHandle> {
        self.held.clear();
        self.stopped.clear();
        self.workers
            .drain()
            .map(|(_, (_, worker))| worker)
            .collect()
    }

    /// Hands a record from the main queue to its partition's worker, or
    /// holds it back while the worker's queue is full.
    pub(super) fn route(&mut self, message: OwnedMessage) {
        let partition = (message.topic().to_owned(), message.partition());
        if let Some(held) = self.held.get_mut(&partition) {
            held.records.push_back(message);
            return;
        }
        let Some((id, worker)) = self.workers.get(&partition) else {
            // Not ours (any more): whoever gets the partition reads it.
            debug!(topic = %partition.0, partition = partition.1, "Record for a partition not assigned here; left for its owner.");
            return;
        };
        match worker.records.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.room.push(wait_for_room(
                    partition.clone(),
                    *id,
                    worker.records.clone(),
                ));
                let held = Held {
                    worker: *id,
                    records: VecDeque::from([message]),
                };
                self.held.insert(partition, held);
            }
            // The worker panicked (its partition is reported stalled):
            // its records are dropped here, unstored, and read again by the
            // partition's next owner. Said once, not per record fetched.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if self.stopped.insert(*id) {
                    warn!(topic = %partition.0, partition = partition.1, "The partition's worker has stopped; its records are left for its next owner (said once per worker).");
                } else {
                    debug!(topic = %partition.0, partition = partition.1, "Record for a stopped worker; left for the partition's next owner.");
                }
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

    /// Moves one held-back record into the room a worker made — if it is
    /// the worker the records are held for, not an earlier worker of the
    /// partition (which would take, and never handle, a record its
    /// successor then skips).
    pub(super) fn fill(&mut self, (partition, worker, permit): Permit) {
        let Some(held) = self.held.get_mut(&partition) else {
            return;
        };
        if held.worker != worker {
            return;
        }
        let Some(permit) = permit else {
            self.held.remove(&partition);
            return;
        };
        if let Some(message) = held.records.pop_front() {
            let sender = permit.send(message);
            if !held.records.is_empty() {
                self.room.push(wait_for_room(partition, worker, sender));
                return;
            }
        }
        self.held.remove(&partition);
    }
}

fn wait_for_room(
    partition: Partition,
    worker: u64,
    sender: mpsc::Sender<OwnedMessage>,
) -> BoxFuture<'static, Permit> {
    Box::pin(async move { (partition, worker, sender.reserve_owned().await.ok()) })
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;
    use crate::telemetry::Readiness;

    fn record(offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "task-events".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    /// A worker of partition 0 with a queue of one record, and its end.
    fn worker(readiness: &Arc<Readiness>) -> (WorkerHandle, mpsc::Receiver<OwnedMessage>) {
        let (records, rx) = mpsc::channel(1);
        let (stop, _) = watch::channel(Stop::Run);
        let handle = WorkerHandle {
            records,
            stop,
            task: tokio::spawn(async {}),
            _supervision: Arc::new(readiness.partition("task-events", 0)),
        };
        (handle, rx)
    }

    /// Room made by a revoked worker — still settling when its partition
    /// is assigned again — does not take a record held back for the new
    /// worker: that record would be handed to a worker that no longer
    /// handles records, and its successor would skip it (and commit past
    /// it). The new worker gets every record, in order.
    #[tokio::test]
    async fn room_made_by_an_earlier_worker_is_not_used() {
        let readiness = Arc::new(Readiness::default());
        let partition: Partition = ("task-events".into(), 0);
        let mut intake = Intake::default();
        let (first, mut first_rx) = worker(&readiness);
        intake.insert(partition.clone(), first);
        intake.route(record(0));
        intake.route(record(1)); // held: the first worker's queue is full
        let _revoked = intake.remove(&partition);

        let (second, mut second_rx) = worker(&readiness);
        intake.insert(partition.clone(), second);
        intake.route(record(2));
        intake.route(record(3)); // held for the second worker

        // The settling first worker takes a record: room in its queue.
        assert_eq!(first_rx.recv().await.map(|m| m.offset()), Some(0));
        let room = intake.next_room().await.expect("room");
        intake.fill(room);
        assert!(
            first_rx.try_recv().is_err(),
            "a held record went to the revoked worker"
        );

        assert_eq!(second_rx.recv().await.map(|m| m.offset()), Some(2));
        let room = intake.next_room().await.expect("room");
        intake.fill(room);
        assert_eq!(second_rx.recv().await.map(|m| m.offset()), Some(3));
    }

    /// A log of everything at `warn` and above written while `f` runs.
    fn warnings_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().expect("log buffer").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    /// A worker that panicked leaves its partition assigned: every record
    /// librdkafka goes on fetching for it is dropped. That is said once
    /// per worker, not once per record (a warning flood at the fetch rate).
    #[tokio::test]
    async fn records_for_a_stopped_worker_are_reported_once() {
        let readiness = Arc::new(Readiness::default());
        let partition: Partition = ("task-events".into(), 0);
        let mut intake = Intake::default();
        let (first, first_rx) = worker(&readiness);
        intake.insert(partition.clone(), first);
        drop(first_rx); // the worker is gone
        let log = warnings_of(|| (0..100).for_each(|offset| intake.route(record(offset))));
        assert_eq!(log.matches("worker has stopped").count(), 1, "{log}");

        // A later worker of the partition that stops is reported again.
        let _revoked = intake.remove(&partition);
        let (second, second_rx) = worker(&readiness);
        intake.insert(partition.clone(), second);
        drop(second_rx);
        let log = warnings_of(|| (100..110).for_each(|offset| intake.route(record(offset))));
        assert_eq!(log.matches("worker has stopped").count(), 1, "{log}");
    }
}
