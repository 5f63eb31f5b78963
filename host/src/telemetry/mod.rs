//! What operators observe: Prometheus metrics for the pipeline and for each
//! plugin, and the readiness the admin endpoint reports.
//!
//! Every metric is a handle onto shared atomics, so the hot path only
//! increments; a scrape registers the handles into a fresh
//! [`prometheus_client`] registry and encodes it (OpenMetrics text, which
//! Prometheus reads).

mod pipeline;
mod plugins;
mod readiness;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use self::pipeline::PipelineMetrics;
pub use self::plugins::{PluginMetrics, SlotMetrics};
pub use self::readiness::{NotReady, PartitionStatus, Readiness, RestoreGuard};

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
}

impl Telemetry {
    /// Every metric in the OpenMetrics text format, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        self.pipeline.register(&mut registry);
        self.plugins.register(&mut registry);
        self.readiness.register(&mut registry);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}
