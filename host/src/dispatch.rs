//! Dispatching events and due timers to the plugins of one partition.
//!
//! A [`Dispatcher`] owns, for each plugin, a warm instance and the plugin's
//! state for the partition. It calls every subscribed plugin for an event,
//! applies a call's state and timer changes only when it returned `ok`, and
//! hands the effects back so the caller can produce the emits. A failed
//! call changes nothing; its instance is replaced if it trapped.
//!
//! The plugin set can change between calls ([`Dispatcher::update`]): a
//! replaced plugin keeps its state and gets a fresh instance of the new
//! version; a removed plugin's state is parked (its timers wait) until a
//! plugin of that name returns. Quarantined plugins are not called: their
//! events fail with [`CallError::Quarantined`] and their timers wait for
//! the next trial.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug_span, info, warn};

use crate::offline::rfc3339;
use crate::plugin::Plugin;
use crate::plugin::health::{QuarantinePolicy, Transition};
use crate::sandbox::{CallError, Effects, Instance};
use crate::state::PluginState;
use crate::telemetry::{PluginMetrics, SlotMetrics};
use crate::world::{FiredTimer, TaskEvent, Timestamp};

/// The result of one plugin call.
#[derive(Debug)]
pub struct Outcome {
    /// The plugin that was called.
    pub plugin: Arc<Plugin>,
    /// Its effects (already applied to the plugin's state), or why it failed
    /// (nothing applied).
    pub result: Result<Effects, CallError>,
}

/// A timer that fired.
#[derive(Debug)]
pub struct Firing {
    /// The timer as handed to the plugin.
    pub timer: FiredTimer,
    /// The call's outcome.
    pub outcome: Outcome,
}

struct Slot {
    plugin: Arc<Plugin>,
    instance: Option<Instance>,
    state: PluginState,
    metrics: SlotMetrics,
}

/// Runs events and timers through a set of plugins, for one partition.
pub struct Dispatcher {
    slots: Vec<Slot>,
    /// State of plugins not loaded now, by name.
    parked: HashMap<String, PluginState>,
    policy: QuarantinePolicy,
    metrics: Arc<PluginMetrics>,
}

impl Dispatcher {
    /// A dispatcher over `plugins`, each starting with empty state, that
    /// never quarantines and records metrics nobody reads.
    pub fn new(plugins: &[Arc<Plugin>]) -> Self {
        Self::with(plugins, QuarantinePolicy::NEVER, Arc::default())
    }

    /// A dispatcher that quarantines under `policy` and records into
    /// `metrics`.
    pub fn with(
        plugins: &[Arc<Plugin>],
        policy: QuarantinePolicy,
        metrics: Arc<PluginMetrics>,
    ) -> Self {
        let mut dispatcher = Self {
            slots: Vec::new(),
            parked: HashMap::new(),
            policy,
            metrics,
        };
        dispatcher.update(plugins);
        dispatcher
    }

    /// The plugins, in dispatch order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.slots.iter().map(|s| &s.plugin)
    }

    /// The state of the plugin named `name` (loaded or parked).
    pub fn state(&self, name: &str) -> Option<&PluginState> {
        self.slots
            .iter()
            .find(|s| s.plugin.name == name)
            .map(|s| &s.state)
            .or_else(|| self.parked.get(name))
    }

    /// Switches to a new plugin set. Plugins that stay keep their instance;
    /// replaced ones keep their state and start a fresh instance of the new
    /// version; removed ones have their state parked. Returns whether
    /// anything changed.
    pub fn update(&mut self, plugins: &[Arc<Plugin>]) -> bool {
        let same = self.slots.len() == plugins.len()
            && self
                .slots
                .iter()
                .zip(plugins)
                .all(|(slot, plugin)| Arc::ptr_eq(&slot.plugin, plugin));
        if same {
            return false;
        }
        let mut old: HashMap<String, Slot> = self
            .slots
            .drain(..)
            .map(|slot| (slot.plugin.name.clone(), slot))
            .collect();
        for plugin in plugins {
            let slot = match old.remove(&plugin.name) {
                Some(slot) if Arc::ptr_eq(&slot.plugin, plugin) => slot,
                Some(slot) => Slot {
                    plugin: plugin.clone(),
                    instance: None,
                    state: slot.state,
                    metrics: slot.metrics,
                },
                None => Slot {
                    plugin: plugin.clone(),
                    instance: None,
                    state: self.parked.remove(&plugin.name).unwrap_or_default(),
                    metrics: self.metrics.slot(&plugin.name),
                },
            };
            self.slots.push(slot);
        }
        for (name, slot) in old {
            self.parked.insert(name, slot.state);
        }
        true
    }

    /// Calls `on-event` on every plugin subscribed to the event's kind, in
    /// plugin order, with the clock at `now`.
    pub fn dispatch(&mut self, event: &TaskEvent, now: Timestamp) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            if !slot.plugin.subscribes(event.kind) {
                continue;
            }
            let result = slot.call(
                now,
                false,
                &self.policy,
                &self.metrics,
                |instance, state| instance.on_event(event, now, state),
            );
            outcomes.push(Outcome {
                plugin: slot.plugin.clone(),
                result,
            });
        }
        outcomes
    }

    /// Replaces the plugins' states with restored ones (plugins without a
    /// restored state start empty; states of plugins not loaded are
    /// parked).
    pub fn restore(&mut self, mut states: HashMap<String, PluginState>) {
        for slot in &mut self.slots {
            slot.state = states.remove(&slot.plugin.name).unwrap_or_default();
        }
        self.parked = states;
    }

    /// Pending timers across the loaded plugins.
    pub fn timer_count(&self) -> usize {
        self.slots.iter().map(|s| s.state.timer_count()).sum()
    }

    /// When the earliest timer of a loaded plugin may fire: its due time,
    /// or a quarantined plugin's next trial if that is later.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.slots.iter().filter_map(Slot::next_due).min()
    }

    /// Fires the earliest timer due at or before `now`, if any (ties go to
    /// the plugin listed first). The timer is removed before the call, so a
    /// failing handler is not retried forever; it can re-arm itself.
    pub fn fire_next(&mut self, now: Timestamp) -> Option<Firing> {
        let slot = self
            .slots
            .iter_mut()
            .filter(|s| s.next_due().is_some_and(|due| due <= now))
            .min_by_key(|s| s.next_due())?;
        let (key, timer) = slot.state.pop_due(now)?;
        let timer = FiredTimer {
            key,
            due: timer.due,
            payload: timer.payload,
        };
        let result = slot.call(now, true, &self.policy, &self.metrics, |instance, state| {
            instance.on_timer(&timer, now, state)
        });
        Some(Firing {
            timer,
            outcome: Outcome {
                plugin: slot.plugin.clone(),
                result,
            },
        })
    }
}

impl Slot {
    fn next_due(&self) -> Option<Timestamp> {
        let due = self.state.next_due()?;
        Some(match self.plugin.health.retry_at() {
            Some(retry_at) => due.max(retry_at),
            None => due,
        })
    }

    fn call(
        &mut self,
        now: Timestamp,
        timer: bool,
        policy: &QuarantinePolicy,
        metrics: &PluginMetrics,
        f: impl FnOnce(&mut Instance, &mut PluginState) -> Result<Effects, CallError>,
    ) -> Result<Effects, CallError> {
        let plugin = &self.plugin;
        if let Err(suspended) = plugin.health.admit(now) {
            metrics.skipped(&plugin.name);
            return Err(CallError::Quarantined {
                failures: suspended.failures,
                retry_at: rfc3339(suspended.retry_at),
            });
        }
        let _span =
            debug_span!("plugin_call", plugin = %plugin.name, hash = %plugin.short_hash(), timer)
                .entered();
        let started = Instant::now();
        let instance = match &mut self.instance {
            Some(instance) if instance.is_reusable() => instance,
            slot => match plugin.instantiate() {
                Ok(instance) => slot.insert(instance),
                Err(err) => {
                    self.record_failure(now, policy, metrics, &err);
                    return Err(err);
                }
            },
        };
        let mut result = f(instance, &mut self.state);
        self.metrics
            .call(timer, started.elapsed(), instance.memory_peak());
        if !instance.is_reusable() {
            self.instance = None;
        }
        match &mut result {
            Ok(effects) => {
                effects.changes.prune_unchanged(&self.state);
                self.state.apply(effects.changes.clone());
                if self.plugin.health.succeeded() == Transition::Released {
                    info!(plugin = %self.plugin.name, "Plugin call succeeded; quarantine lifted.");
                    metrics.set_quarantined(&self.plugin.name, false);
                }
            }
            Err(err) => self.record_failure(now, policy, metrics, err),
        }
        result
    }

    fn record_failure(
        &self,
        now: Timestamp,
        policy: &QuarantinePolicy,
        metrics: &PluginMetrics,
        err: &CallError,
    ) {
        let name = &self.plugin.name;
        metrics.error(name, err.kind());
        warn!(plugin = %name, kind = err.kind(), error = %err, "Plugin call failed.");
        if let Transition::Quarantined(suspended) =
            self.plugin.health.failed(policy, now, &err.to_string())
        {
            warn!(
                plugin = %name,
                failures = suspended.failures,
                retry_at = %rfc3339(suspended.retry_at),
                "Plugin quarantined; its events are dead-lettered until a trial call succeeds."
            );
            metrics.set_quarantined(name, true);
        }
    }
}
