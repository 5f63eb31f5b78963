//! The pipeline's metrics: records in and out, dead letters, timers, state
//! changes, consumer lag per partition, rebalances and commit latency.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a per-partition series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The input topic.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
}

/// Labels of a rebalance.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RebalanceLabels {
    kind: &'static str,
}

/// Labels of a commit outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    result: &'static str,
}

/// Labels of a dead letter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    /// `decode`, `plugin`, `timer` or `deliver`.
    stage: &'static str,
}

/// Labels of a failed delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// `retriable` or `permanent`.
    class: &'static str,
}

/// Counters of what the pipeline did. Every field is a shared handle;
/// cloning one shares the count.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Input records received.
    pub events_in: Counter,
    /// Plugin outputs acknowledged by the broker.
    pub outputs: Counter,
    /// Dead letters acknowledged by the broker.
    pub dead_letters: Counter,
    /// Timers fired.
    pub timers_fired: Counter,
    /// Input offsets stored for commit.
    pub offsets_stored: Counter,
    /// Deliveries that failed and were re-sent.
    pub resends: Counter,
    /// State changes written to the changelog (acknowledged).
    pub changelog_records: Counter,
    /// State changes never written because a later change of the same key
    /// replaced them while held ([`PipelineConfig::changelog_flush_interval`]).
    ///
    /// [`PipelineConfig::changelog_flush_interval`]: crate::config::PipelineConfig::changelog_flush_interval
    pub changes_coalesced: Counter,
    /// Changelog records applied while restoring assigned partitions.
    pub restored_records: Counter,
    /// Restore attempts that failed (each is retried).
    pub restore_failures: Counter,
    /// Changelog records a restore could not read (a newer version's, or
    /// not the daemon's at all): skipped, their keys restored empty.
    pub changelog_unreadable: Counter,
    /// Partitions reading the changelog now (at most
    /// [`PipelineConfig::max_concurrent_restores`]; other restoring
    /// partitions wait for a turn).
    ///
    /// [`PipelineConfig::max_concurrent_restores`]: crate::config::PipelineConfig::max_concurrent_restores
    pub restores_running: Gauge,
    /// Input records dead-lettered because an output of theirs could not
    /// be produced (a permanent produce error).
    pub undeliverable: Counter,
    /// Consumer errors reported by librdkafka.
    pub consumer_errors: Counter,
    /// Per-record warnings left out of the log over their rate limit.
    pub warnings_suppressed: Counter,
    /// Records the producer's queue had no room for (each tried again
    /// after a short back-off).
    pub producer_queue_full: Counter,
    delivery_failures: Family<DeliveryLabels, Counter>,
    dead_letter_stages: Family<StageLabels, Counter>,
    rebalances: Family<RebalanceLabels, Counter>,
    commits: Family<CommitLabels, Counter>,
    commit_duration: Histogram,
    consumer_lag: Family<PartitionLabels, Gauge>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        // Both results are exported from the start, so an alert comparing
        // them sees a daemon none of whose commits has gone through yet.
        let commits = Family::<CommitLabels, Counter>::default();
        for result in ["ok", "error"] {
            drop(commits.get_or_create(&CommitLabels { result }));
        }
        Self {
            events_in: Counter::default(),
            outputs: Counter::default(),
            dead_letters: Counter::default(),
            timers_fired: Counter::default(),
            offsets_stored: Counter::default(),
            resends: Counter::default(),
            changelog_records: Counter::default(),
            changes_coalesced: Counter::default(),
            restored_records: Counter::default(),
            restore_failures: Counter::default(),
            changelog_unreadable: Counter::default(),
            restores_running: Gauge::default(),
            undeliverable: Counter::default(),
            consumer_errors: Counter::default(),
            warnings_suppressed: Counter::default(),
            producer_queue_full: Counter::default(),
            delivery_failures: Family::default(),
            dead_letter_stages: Family::default(),
            rebalances: Family::default(),
            commits,
            // 1 ms .. ~16 s
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            consumer_lag: Family::default(),
        }
    }
}

impl PipelineMetrics {
    /// Counts a rebalance that assigned (`"assign"`) or revoked (`"revoke"`)
    /// partitions.
    pub fn rebalance(&self, kind: &'static str) {
        self.rebalances
            .get_or_create(&RebalanceLabels { kind })
            .inc();
    }

    /// Rebalances of `kind` so far.
    pub fn rebalances(&self, kind: &'static str) -> u64 {
        self.rebalances
            .get(&RebalanceLabels { kind })
            .map_or(0, |c| c.get())
    }

    /// Records a commit of stored offsets that took `took`.
    pub fn committed(&self, took: std::time::Duration) {
        self.commit_duration.observe(took.as_secs_f64());
        self.commits
            .get_or_create(&CommitLabels { result: "ok" })
            .inc();
    }

    /// Counts an acknowledged dead letter, by the stage it reports.
    pub fn dead_lettered(&self, stage: &'static str) {
        self.dead_letters.inc();
        self.dead_letter_stages
            .get_or_create(&StageLabels { stage })
            .inc();
    }

    /// Counts a failed delivery by class: `"retriable"` (re-sent after a
    /// back-off) or `"permanent"` (dead-lettered or reported).
    pub fn delivery_failed(&self, class: &'static str) {
        self.delivery_failures
            .get_or_create(&DeliveryLabels { class })
            .inc();
    }

    /// Records a commit that failed.
    pub fn commit_failed(&self) {
        self.commits
            .get_or_create(&CommitLabels { result: "error" })
            .inc();
    }

    /// Replaces the consumer-lag series with `lags` (the assigned partitions
    /// librdkafka knows a lag for).
    pub fn set_consumer_lag(&self, lags: &HashMap<(String, i32), i64>) {
        self.consumer_lag.clear();
        for ((topic, partition), lag) in lags {
            self.consumer_lag
                .get_or_create(&PartitionLabels {
                    topic: topic.clone(),
                    partition: *partition,
                })
                .set(*lag);
        }
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} events in, {} outputs, {} dead letters, {} timers fired, {} offsets stored, {} re-sends, {} state changes written, {} restored",
            self.events_in.get(),
            self.outputs.get(),
            self.dead_letters.get(),
            self.timers_fired.get(),
            self.offsets_stored.get(),
            self.resends.get(),
            self.changelog_records.get(),
            self.restored_records.get(),
        )
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        let counters = [
            ("events_in", "Input records received", &self.events_in),
            (
                "outputs",
                "Plugin outputs acknowledged by the broker",
                &self.outputs,
            ),
            (
                "dead_letters",
                "Dead letters acknowledged by the broker",
                &self.dead_letters,
            ),
            ("timers_fired", "Plugin timers fired", &self.timers_fired),
            (
                "offsets_stored",
                "Input offsets stored for commit (every record before them handled and acknowledged)",
                &self.offsets_stored,
            ),
            (
                "resends",
                "Deliveries that failed and were re-sent",
                &self.resends,
            ),
            (
                "changelog_records",
                "Plugin state changes written to the changelog",
                &self.changelog_records,
            ),
            (
                "state_changes_coalesced",
                "State changes replaced by a later change of the same key before being written",
                &self.changes_coalesced,
            ),
            (
                "restored_records",
                "Changelog records applied while restoring state",
                &self.restored_records,
            ),
            (
                "restore_failures",
                "Failed attempts to restore a partition's state (each retried; the partition waits)",
                &self.restore_failures,
            ),
            (
                "changelog_unreadable_records",
                "Changelog records a successful restore could not read (skipped; their keys restored empty)",
                &self.changelog_unreadable,
            ),
            (
                "undeliverable",
                "Input records dead-lettered because an output could not be produced (permanent error)",
                &self.undeliverable,
            ),
            (
                "consumer_errors",
                "Errors the consumer reported (broker connections, fetches)",
                &self.consumer_errors,
            ),
            (
                "warnings_suppressed",
                "Per-record warnings (undecodable records, outputs that cannot be produced) left out of the log over the rate limit",
                &self.warnings_suppressed,
            ),
            (
                "producer_queue_full",
                "Offers of a record the producer's queue had no room for (tried again after a short back-off)",
                &self.producer_queue_full,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "restores_running",
            "Partitions reading the changelog to restore their state now (at most pipeline.max_concurrent_restores; the rest of restoring_partitions wait their turn)",
            self.restores_running.clone(),
        );
        registry.register(
            "dead_letters_by_stage",
            "Dead letters acknowledged, by stage (decode, plugin, timer, deliver)",
            self.dead_letter_stages.clone(),
        );
        registry.register(
            "delivery_failures",
            "Failed deliveries by class (retriable: re-sent after a back-off; permanent: dead-lettered or the partition stalls)",
            self.delivery_failures.clone(),
        );
        registry.register(
            "rebalances",
            "Consumer-group rebalances that assigned or revoked partitions",
            self.rebalances.clone(),
        );
        registry.register("commits", "Offset commits by result", self.commits.clone());
        registry.register(
            "commit_duration_seconds",
            "Time to commit stored offsets to the group coordinator",
            self.commit_duration.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records in the partition after this member's position (from librdkafka statistics)",
            self.consumer_lag.clone(),
        );
    }
}
