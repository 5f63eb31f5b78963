//! What operators observe: Prometheus metrics for the pipeline and for each
//! plugin, the readiness the admin endpoint reports, and the rate the
//! daemon's per-record warnings are held to.
//!
//! Every metric is a handle onto shared atomics, so the hot path only
//! increments; a scrape registers the handles into a fresh
//! [`prometheus_client`] registry and encodes it (OpenMetrics text, which
//! Prometheus reads).

mod pipeline;
mod plugins;
mod readiness;
mod throttle;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

pub use self::pipeline::PipelineMetrics;
pub use self::plugins::{PluginMetrics, REMOVED_SERIES_KEPT, REMOVED_SERIES_MAX, SlotMetrics};
pub use self::readiness::{NotReady, PartitionStatus, Readiness, RestoreGuard};
pub(crate) use self::throttle::TokenBucket;
pub use self::throttle::{LogThrottle, Rate};

/// The prefix of every metric name.
pub const PREFIX: &str = "todo_eventd";

/// The daemon's metrics and readiness, shared by the pipeline, the plugin
/// registry and the admin endpoint.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// Consumer, producer and worker counters.
    pub pipeline: Arc<PipelineMetrics>,
    /// Per-plugin calls, errors, latency, memory, quarantine and reloads.
    pub plugins: Arc<PluginMetrics>,
    /// Whether the member is assigned and restored.
    pub readiness: Arc<Readiness>,
    /// Admin connections closed to make room for a newer one.
    pub admin_connections_cut: Counter,
}

impl Telemetry {
    /// Every metric in the OpenMetrics text format, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        self.pipeline.register(&mut registry);
        self.plugins.register(&mut registry);
        self.readiness.register(&mut registry);
        registry.register(
            "admin_connections_cut",
            "Admin endpoint connections closed to make room for a newer one (a client holding connections open)",
            self.admin_connections_cut.clone(),
        );
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the shipped dashboard and alert rules query exists.
    #[test]
    fn deploy_files_query_series_that_exist() {
        let telemetry = Telemetry::default();
        // Labelled series show up once they have a value.
        let partition = telemetry.readiness.partition("t", 0);
        partition.stalled("test");
        let pipeline = &telemetry.pipeline;
        pipeline.rebalance("assign");
        pipeline.committed(std::time::Duration::from_millis(1));
        pipeline.dead_lettered("decode");
        pipeline.delivery_failed("retriable");
        pipeline.set_consumer_lag(&[(("t".to_owned(), 0), 1)].into_iter().collect());
        let plugins = &telemetry.plugins;
        let slot = plugins.slot("p");
        slot.call(crate::world::Handler::OnEvent, std::time::Duration::ZERO, 0);
        slot.timers_throttled(1);
        slot.retried();
        plugins.log_dropped("p").inc();
        plugins.error("p", "deadline");
        plugins.set_quarantined("p", true);
        plugins.skipped("p");
        plugins.reload("p", "loaded");
        let text = telemetry.encode();
        let known: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in [
            "deploy/grafana/todo-eventd-dashboard.json",
            "deploy/prometheus/todo-eventd.rules.yml",
        ] {
            let body = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            let mut rest = body.as_str();
            let mut found = 0;
            while let Some(at) = rest.find("todo_eventd_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let base = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    known.contains(&base) || known.contains(&name.as_str()),
                    "{file}: {name} is not a series the daemon exports"
                );
                found += 1;
            }
            assert!(found > 5, "{file}: {found} series");
        }
    }
}
