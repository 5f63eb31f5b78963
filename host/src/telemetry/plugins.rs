//! Per-plugin metrics: calls by handler, errors by kind, call latency,
//! memory high-water mark, quarantine state and reloads. Series are keyed by
//! plugin name, so they carry on across versions of a plugin.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::world::Handler;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    handler: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    plugin: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    plugin: String,
    result: &'static str,
}

/// Every `result` a reload is counted under.
const RELOAD_RESULTS: [&str; 4] = ["loaded", "rejected", "removed", "disabled"];

fn latency_histogram() -> Histogram {
    // 10 µs .. ~0.3 s: the default call deadline is 200 ms.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// The metric families of every plugin.
#[derive(Debug)]
pub struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    duration: Family<PluginLabels, Histogram, fn() -> Histogram>,
    memory_high_water: Family<PluginLabels, Gauge>,
    quarantined: Family<PluginLabels, Gauge>,
    quarantines: Family<PluginLabels, Counter>,
    skipped: Family<PluginLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    log_dropped: Family<PluginLabels, Counter>,
    warnings_suppressed: Family<PluginLabels, Counter>,
    timers_throttled: Family<PluginLabels, Counter>,
    retries: Family<PluginLabels, Counter>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            memory_high_water: Family::default(),
            quarantined: Family::default(),
            quarantines: Family::default(),
            skipped: Family::default(),
            reloads: Family::default(),
            log_dropped: Family::default(),
            warnings_suppressed: Family::default(),
            timers_throttled: Family::default(),
            retries: Family::default(),
        }
    }
}

/// One plugin's hot-path handles, looked up once per dispatcher slot.
#[derive(Debug, Clone)]
pub struct SlotMetrics {
    event_calls: Counter,
    timer_calls: Counter,
    duration: Histogram,
    memory_high_water: Gauge,
    timers_throttled: Counter,
    retries: Counter,
}

impl SlotMetrics {
    /// Records one call of `handler`, how long it took and the instance's
    /// memory peak so far.
    pub fn call(&self, handler: Handler, took: Duration, memory_peak: usize) {
        match handler {
            Handler::OnEvent => self.event_calls.inc(),
            Handler::OnTimer => self.timer_calls.inc(),
        };
        self.duration.observe(took.as_secs_f64());
        let peak = i64::try_from(memory_peak).unwrap_or(i64::MAX);
        self.memory_high_water
            .inner()
            .fetch_max(peak, Ordering::Relaxed);
    }

    /// Counts a call tried again after a `retryable` error.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts timers an `on-timer` call re-armed for (nearly) now, whose
    /// firing was pushed back to the minimum re-arm delay.
    pub fn timers_throttled(&self, count: u64) {
        self.timers_throttled.inc_by(count);
    }
}

impl PluginMetrics {
    /// The hot-path handles of `plugin`.
    pub fn slot(&self, plugin: &str) -> SlotMetrics {
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
        };
        let call = |handler: Handler| CallLabels {
            plugin: plugin.to_owned(),
            handler: handler.as_str(),
        };
        SlotMetrics {
            event_calls: self.calls.get_or_create_owned(&call(Handler::OnEvent)),
            timer_calls: self.calls.get_or_create_owned(&call(Handler::OnTimer)),
            duration: self.duration.get_or_create_owned(&labels),
            memory_high_water: self.memory_high_water.get_or_create_owned(&labels),
            timers_throttled: self.timers_throttled.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
        }
    }

    /// The counter of `plugin`'s log lines dropped over the rate limit.
    pub fn log_dropped(&self, plugin: &str) -> Counter {
        self.log_dropped.get_or_create_owned(&PluginLabels {
            plugin: plugin.to_owned(),
        })
    }

    /// The counter of the daemon's warnings about `plugin`'s failed calls
    /// left out of the log over the rate limit.
    pub fn warnings_suppressed(&self, plugin: &str) -> Counter {
        self.warnings_suppressed.get_or_create_owned(&PluginLabels {
            plugin: plugin.to_owned(),
        })
    }

    /// Counts a failed call by its kind (`deadline`, `memory`, `panic`, …).
    pub fn error(&self, plugin: &str, kind: &'static str) {
        self.errors
            .get_or_create(&KindLabels {
                plugin: plugin.to_owned(),
                kind,
            })
            .inc();
    }

    /// Sets whether `plugin` is quarantined; entering counts a quarantine.
    pub fn set_quarantined(&self, plugin: &str, quarantined: bool) {
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
        };
        if quarantined {
            self.quarantines.get_or_create(&labels).inc();
        }
        self.quarantined
            .get_or_create(&labels)
            .set(i64::from(quarantined));
    }

    /// Counts an event or timer not handed to `plugin` because it is
    /// quarantined.
    pub fn skipped(&self, plugin: &str) {
        self.skipped
            .get_or_create(&PluginLabels {
                plugin: plugin.to_owned(),
            })
            .inc();
    }

    /// Counts a change to the plugin's files taking effect: `"loaded"` (a
    /// new or replaced version), `"rejected"` (the old version, if any,
    /// keeps serving), `"removed"` or `"disabled"`.
    pub fn reload(&self, plugin: &str, result: &'static str) {
        debug_assert!(RELOAD_RESULTS.contains(&result), "{result}");
        self.reloads
            .get_or_create(&ReloadLabels {
                plugin: plugin.to_owned(),
                result,
            })
            .inc();
    }

    /// Drops the series of a plugin name that never loaded and whose files
    /// are gone: its reloads, and the log and warning counters made while
    /// trying to start it. (A name that never loaded has made no call.)
    pub fn forget(&self, plugin: &str) {
        for result in RELOAD_RESULTS {
            self.reloads.remove(&ReloadLabels {
                plugin: plugin.to_owned(),
                result,
            });
        }
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
        };
        self.log_dropped.remove(&labels);
        self.warnings_suppressed.remove(&labels);
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugin_calls",
            "Plugin calls by handler",
            self.calls.clone(),
        );
        registry.register(
            "plugin_errors",
            "Failed plugin calls by kind (plugin-error, deadline, memory, quota, stack-overflow, panic, denied, trap, instantiate)",
            self.errors.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Wall time of plugin calls",
            self.duration.clone(),
        );
        registry.register(
            "plugin_memory_high_water_bytes",
            "Largest linear memory any instance of the plugin has used",
            self.memory_high_water.clone(),
        );
        registry.register(
            "plugin_quarantined",
            "1 while the plugin is quarantined (its events are dead-lettered)",
            self.quarantined.clone(),
        );
        registry.register(
            "plugin_quarantines",
            "Times the plugin was quarantined",
            self.quarantines.clone(),
        );
        registry.register(
            "plugin_skipped",
            "Events and timers not handed to the plugin because it was quarantined",
            self.skipped.clone(),
        );
        registry.register(
            "plugin_log_dropped",
            "Plugin log lines dropped over the per-plugin rate limit",
            self.log_dropped.clone(),
        );
        registry.register(
            "plugin_warnings_suppressed",
            "The daemon's warnings about the plugin's failed calls left out of the log over the rate limit",
            self.warnings_suppressed.clone(),
        );
        registry.register(
            "plugin_timers_throttled",
            "Timers re-armed by on-timer for (nearly) now, delayed to the minimum re-arm delay",
            self.timers_throttled.clone(),
        );
        registry.register(
            "plugin_retries",
            "Calls tried again because the plugin returned a retryable error",
            self.retries.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Changes to the plugin's files by result (loaded, rejected, removed, disabled)",
            self.reloads.clone(),
        );
    }
}
