//! Readiness: a member is ready once the group has given it an assignment,
//! every assigned partition has restored its plugin state, it can reach a
//! broker and no partition is stalled. It stops being ready while
//! partitions restore after a rebalance, while no broker answers, while a
//! partition cannot deliver, and for good once shutdown begins.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a member is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Shutdown has begun.
    ShuttingDown,
    /// The consumer group has not assigned anything yet.
    WaitingForAssignment,
    /// No broker connection is up (from librdkafka's statistics).
    BrokerUnreachable,
    /// Partitions still restoring their plugin state.
    Restoring(i64),
    /// A partition cannot make progress.
    Stalled {
        /// `topic/partition`.
        partition: String,
        /// What is failing.
        reason: String,
    },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShuttingDown => f.write_str("shutting down"),
            Self::WaitingForAssignment => {
                f.write_str("waiting for a partition assignment from the consumer group")
            }
            Self::BrokerUnreachable => f.write_str("no connection to any broker"),
            Self::Restoring(n) => write!(f, "restoring plugin state for {n} partition(s)"),
            Self::Stalled { partition, reason } => {
                write!(f, "partition {partition} stalled: {reason}")
            }
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

/// The pipeline's readiness, updated by the consumer and the partition
/// workers.
#[derive(Debug, Default)]
pub struct Readiness {
    joined: AtomicBool,
    stopping: AtomicBool,
    broker_down: AtomicBool,
    restoring: Gauge,
    assigned: Gauge,
    ready: Gauge,
    /// Each stalled partition's reason, and which [`PartitionStatus`]
    /// reported it (only that one clears it).
    stalled: Mutex<BTreeMap<(String, i32), (String, u64)>>,
    stalled_gauge: Family<PartitionLabels, Gauge>,
    /// The last [`PartitionStatus`] id handed out.
    statuses: AtomicU64,
}

impl Readiness {
    /// Records an assignment (possibly empty) of `count` more partitions.
    pub fn assigned(&self, count: usize) {
        self.joined.store(true, Ordering::Release);
        self.assigned.inc_by(count as i64);
        self.refresh();
    }

    /// Records that `count` partitions were revoked.
    pub fn revoked(&self, count: usize) {
        self.assigned.dec_by(count as i64);
        self.refresh();
    }

    /// Marks one partition as restoring until the guard is dropped.
    pub fn restoring(self: &Arc<Self>) -> RestoreGuard {
        self.restoring.inc();
        self.refresh();
        RestoreGuard(self.clone())
    }

    /// Records whether any broker connection is up.
    pub fn broker_reachable(&self, up: bool) {
        self.broker_down.store(!up, Ordering::Release);
        self.refresh();
    }

    /// The handle a partition worker reports stalls through; dropping it
    /// clears the partition's stall if it reported it — not one a newer
    /// handle for the same partition (a worker after a reassignment)
    /// reported since.
    pub fn partition(self: &Arc<Self>, topic: &str, partition: i32) -> PartitionStatus {
        PartitionStatus {
            readiness: self.clone(),
            key: (topic.to_owned(), partition),
            id: self.statuses.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Shutdown has begun: not ready any more.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.refresh();
    }

    /// `Ok` when ready, otherwise why not.
    pub fn check(&self) -> Result<(), NotReady> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(NotReady::ShuttingDown);
        }
        if !self.joined.load(Ordering::Acquire) {
            return Err(NotReady::WaitingForAssignment);
        }
        if self.broker_down.load(Ordering::Acquire) {
            return Err(NotReady::BrokerUnreachable);
        }
        if let Some(((topic, partition), (reason, _))) = self.stalls().iter().next() {
            return Err(NotReady::Stalled {
                partition: format!("{topic}/{partition}"),
                reason: reason.clone(),
            });
        }
        match self.restoring.get() {
            0 => Ok(()),
            n => Err(NotReady::Restoring(n)),
        }
    }

    /// Whether [`check`](Self::check) passes.
    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    fn stalls(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), (String, u64)>> {
        self.stalled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refresh(&self) {
        self.ready.set(i64::from(self.is_ready()));
    }

    fn set_stalled(&self, key: &(String, i32), id: u64, reason: Option<String>) {
        let labels = PartitionLabels {
            topic: key.0.clone(),
            partition: key.1,
        };
        {
            let mut stalls = self.stalls();
            match reason {
                Some(reason) => {
                    stalls.insert(key.clone(), (reason, id));
                    self.stalled_gauge.get_or_create(&labels).set(1);
                }
                None => {
                    if stalls.get(key).is_some_and(|(_, owner)| *owner == id) {
                        stalls.remove(key);
                        self.stalled_gauge.get_or_create(&labels).set(0);
                    }
                }
            }
        }
        self.refresh();
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "ready",
            "1 once partitions are assigned and restored, a broker is reachable and no partition is stalled",
            self.ready.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Input partitions assigned to this member",
            self.assigned.clone(),
        );
        registry.register(
            "restoring_partitions",
            "Assigned partitions still restoring plugin state",
            self.restoring.clone(),
        );
        registry.register(
            "partition_stalled",
            "1 while the partition cannot make progress (deliveries failing; see the log and /readyz)",
            self.stalled_gauge.clone(),
        );
    }
}

/// Held by a partition worker while it restores; dropping it (also when the
/// worker is aborted) ends the restore.
#[derive(Debug)]
pub struct RestoreGuard(Arc<Readiness>);

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        self.0.restoring.dec();
        self.0.refresh();
    }
}

/// One partition's stall reports.
#[derive(Debug)]
pub struct PartitionStatus {
    readiness: Arc<Readiness>,
    key: (String, i32),
    id: u64,
}

impl PartitionStatus {
    /// The partition cannot make progress, because of `reason`.
    pub fn stalled(&self, reason: impl Into<String>) {
        self.readiness
            .set_stalled(&self.key, self.id, Some(reason.into()));
    }

    /// The partition makes progress again (as far as this handle's report
    /// goes).
    pub fn recovered(&self) {
        self.readiness.set_stalled(&self.key, self.id, None);
    }
}

impl Drop for PartitionStatus {
    fn drop(&mut self) {
        self.recovered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_order_of_precedence() {
        let readiness = Arc::new(Readiness::default());
        assert_eq!(readiness.check(), Err(NotReady::WaitingForAssignment));
        readiness.assigned(2);
        assert_eq!(readiness.check(), Ok(()));
        let status = readiness.partition("task-events", 1);
        status.stalled("cannot produce to dlq: authorization failed");
        assert_eq!(
            readiness.check().unwrap_err().to_string(),
            "partition task-events/1 stalled: cannot produce to dlq: authorization failed"
        );
        readiness.broker_reachable(false);
        assert_eq!(readiness.check(), Err(NotReady::BrokerUnreachable));
        readiness.broker_reachable(true);
        drop(status);
        let restoring = readiness.restoring();
        assert_eq!(readiness.check(), Err(NotReady::Restoring(1)));
        drop(restoring);
        assert!(readiness.is_ready());
        readiness.stopping();
        assert_eq!(readiness.check(), Err(NotReady::ShuttingDown));
    }

    /// A partition revoked and assigned again has a new worker before the
    /// old one's handle is gone: the old handle going must not clear what
    /// the new one reported.
    #[test]
    fn a_handle_clears_only_its_own_report() {
        let readiness = Arc::new(Readiness::default());
        readiness.assigned(1);
        let old = readiness.partition("task-events", 0);
        let new = readiness.partition("task-events", 0);
        new.stalled("its worker panicked: boom");
        drop(old);
        assert!(!readiness.is_ready(), "still reported");
        new.recovered();
        assert!(readiness.is_ready());
        // And the newest report stands until its own handle clears it.
        let third = readiness.partition("task-events", 0);
        third.stalled("cannot produce");
        new.recovered();
        assert!(!readiness.is_ready());
        drop(third);
        assert!(readiness.is_ready());
    }
}
