//! Per-plugin metrics: calls by handler, errors by kind, call latency,
//! memory high-water mark, quarantine state and reloads. Series are keyed by
//! plugin name, so they carry on across versions of a plugin.
//!
//! A removed plugin's series stay for [`REMOVED_SERIES_KEPT`], so scrapes
//! see its last counts and its `removed` reload, and then go, so renaming
//! plugins does not grow `/metrics` for good; at most
//! [`REMOVED_SERIES_MAX`] removed plugins' series are kept at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

/// How long a removed plugin's series are kept.
pub const REMOVED_SERIES_KEPT: Duration = Duration::from_secs(10 * 60);
/// The most removed plugins whose series are kept at once; past it, those
/// removed longest ago go first.
pub const REMOVED_SERIES_MAX: usize = 64;

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
    /// Plugin names whose files were rejected with no version serving.
    rejected: Gauge,
    /// Unix time (s) of the last scan that listed the plugins directory.
    scanned_at: Gauge,
    quarantines: Family<PluginLabels, Counter>,
    skipped: Family<PluginLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    log_dropped: Family<PluginLabels, Counter>,
    warnings_suppressed: Family<PluginLabels, Counter>,
    timers_throttled: Family<PluginLabels, Counter>,
    retries: Family<PluginLabels, Counter>,
    /// The error kinds counted per plugin, to drop their series.
    error_kinds: Mutex<HashMap<String, Vec<&'static str>>>,
    /// Removed plugins whose series are still kept, and when each was
    /// removed, oldest first.
    removed: Mutex<VecDeque<(String, Instant)>>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            memory_high_water: Family::default(),
            quarantined: Family::default(),
            rejected: Gauge::default(),
            scanned_at: Gauge::default(),
            quarantines: Family::default(),
            skipped: Family::default(),
            reloads: Family::default(),
            log_dropped: Family::default(),
            warnings_suppressed: Family::default(),
            timers_throttled: Family::default(),
            retries: Family::default(),
            error_kinds: Mutex::default(),
            removed: Mutex::default(),
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
        // Held while the series is made, so dropping the plugin's series
        // cannot miss it.
        let mut kinds = lock(&self.error_kinds);
        let known = kinds.entry(plugin.to_owned()).or_default();
        if !known.contains(&kind) {
            known.push(kind);
        }
        self.errors
            .get_or_create(&KindLabels {
                plugin: plugin.to_owned(),
                kind,
            })
            .inc();
    }

    /// Sets how many plugin names in the directory have no version
    /// serving because their files were rejected.
    pub fn set_rejected(&self, names: usize) {
        self.rejected.set(i64::try_from(names).unwrap_or(i64::MAX));
    }

    /// Records a scan that listed the plugins directory, at `now` (ms).
    pub fn scanned(&self, now: i64) {
        self.scanned_at.set(now / 1000);
    }

    /// When the directory was last listed (Unix seconds).
    #[cfg(test)]
    pub(crate) fn scanned_at(&self) -> i64 {
        self.scanned_at.get()
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
    /// keeps serving), `"removed"` or `"disabled"`. Any but `"removed"`
    /// means the name is back: its series are no longer due to go.
    pub fn reload(&self, plugin: &str, result: &'static str) {
        debug_assert!(RELOAD_RESULTS.contains(&result), "{result}");
        if result != "removed" {
            lock(&self.removed).retain(|(name, _)| name != plugin);
        }
        self.reloads
            .get_or_create(&ReloadLabels {
                plugin: plugin.to_owned(),
                result,
            })
            .inc();
    }

    /// Drops every series of a plugin name that never loaded and whose
    /// files are gone: its reloads, and the log and warning counters made
    /// while trying to start it (and what is left of an earlier life of
    /// the name).
    pub fn forget(&self, plugin: &str) {
        lock(&self.removed).retain(|(name, _)| name != plugin);
        self.drop_series(plugin);
    }

    /// Marks `plugin` removed at `now`: its series go
    /// [`REMOVED_SERIES_KEPT`] later, or sooner when more than
    /// [`REMOVED_SERIES_MAX`] removed plugins are kept, unless the name
    /// comes back first.
    pub fn retire(&self, plugin: &str, now: Instant) {
        let over = {
            let mut removed = lock(&self.removed);
            removed.retain(|(name, _)| name != plugin);
            removed.push_back((plugin.to_owned(), now));
            let over = removed.len().saturating_sub(REMOVED_SERIES_MAX);
            removed.drain(..over).collect::<Vec<_>>()
        };
        for (name, _) in over {
            self.drop_series(&name);
        }
        self.expire(now);
    }

    /// Drops the series of plugins removed [`REMOVED_SERIES_KEPT`] or more
    /// before `now`. Every scrape calls it.
    pub fn expire(&self, now: Instant) {
        let due = {
            let mut removed = lock(&self.removed);
            let due = removed
                .iter()
                .take_while(|(_, at)| now.saturating_duration_since(*at) >= REMOVED_SERIES_KEPT)
                .count();
            removed.drain(..due).collect::<Vec<_>>()
        };
        for (name, _) in due {
            self.drop_series(&name);
        }
    }

    /// Removes every series labelled with `plugin`.
    fn drop_series(&self, plugin: &str) {
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
        };
        for handler in [Handler::OnEvent, Handler::OnTimer] {
            self.calls.remove(&CallLabels {
                plugin: plugin.to_owned(),
                handler: handler.as_str(),
            });
        }
        let mut kinds = lock(&self.error_kinds);
        for kind in kinds.remove(plugin).unwrap_or_default() {
            self.errors.remove(&KindLabels {
                plugin: plugin.to_owned(),
                kind,
            });
        }
        drop(kinds);
        for result in RELOAD_RESULTS {
            self.reloads.remove(&ReloadLabels {
                plugin: plugin.to_owned(),
                result,
            });
        }
        self.duration.remove(&labels);
        for family in [&self.memory_high_water, &self.quarantined] {
            family.remove(&labels);
        }
        for family in [
            &self.quarantines,
            &self.skipped,
            &self.log_dropped,
            &self.warnings_suppressed,
            &self.timers_throttled,
            &self.retries,
        ] {
            family.remove(&labels);
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        self.expire(Instant::now());
        registry.register(
            "plugin_calls",
            "Plugin calls by handler",
            self.calls.clone(),
        );
        registry.register(
            "plugin_errors",
            "Failed plugin calls by kind (plugin-error, plugin-internal, deadline, memory, quota, stack-overflow, panic, denied, key-too-long, trap, instantiate, capacity, max-hops)",
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
            "plugins_rejected",
            "Plugin names in the directory with no version serving because their files were rejected (at start-up too)",
            self.rejected.clone(),
        );
        registry.register(
            "plugin_scan_success_timestamp_seconds",
            "Unix time of the last scan that listed the plugins directory (the watcher rescans at least every 30 s; 0 without a directory)",
            self.scanned_at.clone(),
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

/// Locks `mutex`; a panic while it was held leaves bookkeeping that is
/// still whole, so it is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin names `/metrics` shows a series for.
    fn names_shown(metrics: &PluginMetrics) -> std::collections::BTreeSet<String> {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .filter_map(|line| line.split_once("plugin=\"")?.1.split_once('"'))
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// Every kind of series a plugin that served may have.
    fn served(metrics: &PluginMetrics, name: &str) {
        let slot = metrics.slot(name);
        slot.call(Handler::OnEvent, Duration::from_micros(5), 1 << 16);
        slot.call(Handler::OnTimer, Duration::from_micros(5), 1 << 16);
        slot.retried();
        slot.timers_throttled(1);
        metrics.error(name, "deadline");
        metrics.error(name, "memory");
        metrics.set_quarantined(name, true);
        metrics.set_quarantined(name, false);
        metrics.skipped(name);
        metrics.log_dropped(name).inc();
        metrics.warnings_suppressed(name).inc();
        metrics.reload(name, "loaded");
        metrics.reload(name, "removed");
    }

    /// A removed plugin's series stay a while, then every one goes; a
    /// plugin still there keeps its own. (Before, they stayed for good,
    /// so renaming plugins grew `/metrics` with each name.)
    #[test]
    fn a_removed_plugins_series_go_after_a_while() {
        let metrics = PluginMetrics::default();
        served(&metrics, "gone");
        served(&metrics, "kept");
        metrics.reload("kept", "loaded");
        let removed_at = Instant::now();
        metrics.retire("gone", removed_at);
        assert_eq!(
            names_shown(&metrics),
            ["gone", "kept"].map(String::from).into()
        );

        metrics.expire(removed_at + REMOVED_SERIES_KEPT - Duration::from_secs(1));
        assert!(names_shown(&metrics).contains("gone"));
        metrics.expire(removed_at + REMOVED_SERIES_KEPT);
        assert_eq!(names_shown(&metrics), ["kept"].map(String::from).into());
        // The counters start again if the name returns.
        metrics.error("gone", "deadline");
        assert!(names_shown(&metrics).contains("gone"));
    }

    /// A name that comes back within the while keeps its series.
    #[test]
    fn a_plugin_back_in_time_keeps_its_series() {
        let metrics = PluginMetrics::default();
        served(&metrics, "back");
        let removed_at = Instant::now();
        metrics.retire("back", removed_at);
        metrics.reload("back", "loaded");
        metrics.expire(removed_at + REMOVED_SERIES_KEPT * 2);
        assert!(names_shown(&metrics).contains("back"));
    }

    /// Plugins renamed in a loop keep at most the bound of removed names.
    #[test]
    fn removed_plugins_series_are_bounded_in_number() {
        let metrics = PluginMetrics::default();
        let now = Instant::now();
        for version in 0..REMOVED_SERIES_MAX * 3 {
            let name = format!("reminders-1.{version}");
            served(&metrics, &name);
            metrics.retire(&name, now);
        }
        let shown = names_shown(&metrics);
        assert_eq!(shown.len(), REMOVED_SERIES_MAX);
        // The latest are the ones kept.
        let latest = format!("reminders-1.{}", REMOVED_SERIES_MAX * 3 - 1);
        assert!(shown.contains(&latest), "{shown:?}");
        assert!(!shown.contains("reminders-1.0"), "{shown:?}");
    }
}
