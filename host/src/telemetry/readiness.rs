//! Readiness: a member is ready once the group has given it an assignment
//! and every assigned partition has restored its plugin state; it stops
//! being ready while partitions restore after a rebalance, and for good once
//! shutdown begins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The pipeline's readiness, updated by the consumer and the partition
/// workers.
#[derive(Debug, Default)]
pub struct Readiness {
    joined: AtomicBool,
    stopping: AtomicBool,
    restoring: Gauge,
    assigned: Gauge,
    ready: Gauge,
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

    /// Shutdown has begun: not ready any more.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.refresh();
    }

    /// `Ok` when ready, otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if !self.joined.load(Ordering::Acquire) {
            return Err("waiting for a partition assignment from the consumer group".into());
        }
        match self.restoring.get() {
            0 => Ok(()),
            n => Err(format!("restoring plugin state for {n} partition(s)")),
        }
    }

    /// Whether [`check`](Self::check) passes.
    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    fn refresh(&self) {
        self.ready.set(i64::from(self.is_ready()));
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "ready",
            "1 once partitions are assigned and their state restored",
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
