//! Dispatching events and due timers to the plugins of one partition.
//!
//! A [`Dispatcher`] owns, for each plugin, a warm instance and the plugin's
//! state for the partition. It calls every subscribed plugin for an event,
//! applies a call's state and timer changes only when it returned `ok`, and
//! hands the effects back so the caller can produce the emits. A failed
//! call changes nothing; its instance is replaced if it trapped.

use std::sync::Arc;

use tracing::{debug_span, warn};

use crate::plugin::Plugin;
use crate::sandbox::{CallError, Effects, Instance};
use crate::state::PluginState;
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
}

/// Runs events and timers through a set of plugins, for one partition.
pub struct Dispatcher {
    slots: Vec<Slot>,
}

impl Dispatcher {
    /// A dispatcher over `plugins`, each starting with empty state.
    pub fn new(plugins: &[Arc<Plugin>]) -> Self {
        let slots = plugins
            .iter()
            .map(|plugin| Slot {
                plugin: plugin.clone(),
                instance: None,
                state: PluginState::default(),
            })
            .collect();
        Self { slots }
    }

    /// The plugins, in dispatch order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.slots.iter().map(|s| &s.plugin)
    }

    /// The state of the plugin named `name`.
    pub fn state(&self, name: &str) -> Option<&PluginState> {
        self.slots
            .iter()
            .find(|s| s.plugin.name == name)
            .map(|s| &s.state)
    }

    /// Calls `on-event` on every plugin subscribed to the event's kind, in
    /// plugin order, with the clock at `now`.
    pub fn dispatch(&mut self, event: &TaskEvent, now: Timestamp) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            if !slot.plugin.subscribes(event.kind) {
                continue;
            }
            let result = slot.call(|instance, state| instance.on_event(event, now, state));
            outcomes.push(Outcome {
                plugin: slot.plugin.clone(),
                result,
            });
        }
        outcomes
    }

    /// Replaces the plugins' states with restored ones (plugins without a
    /// restored state start empty).
    pub fn restore(&mut self, mut states: std::collections::HashMap<String, PluginState>) {
        for slot in &mut self.slots {
            slot.state = states.remove(&slot.plugin.name).unwrap_or_default();
        }
    }

    /// Pending timers across all plugins.
    pub fn timer_count(&self) -> usize {
        self.slots.iter().map(|s| s.state.timer_count()).sum()
    }

    /// When the earliest pending timer of any plugin is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.slots.iter().filter_map(|s| s.state.next_due()).min()
    }

    /// Fires the earliest timer due at or before `now`, if any (ties go to
    /// the plugin listed first). The timer is removed before the call, so a
    /// failing handler is not retried forever; it can re-arm itself.
    pub fn fire_next(&mut self, now: Timestamp) -> Option<Firing> {
        let slot = self
            .slots
            .iter_mut()
            .filter(|s| s.state.next_due().is_some_and(|due| due <= now))
            .min_by_key(|s| s.state.next_due())?;
        let (key, timer) = slot.state.pop_due(now)?;
        let timer = FiredTimer {
            key,
            due: timer.due,
            payload: timer.payload,
        };
        let result = slot.call(|instance, state| instance.on_timer(&timer, now, state));
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
    fn call(
        &mut self,
        f: impl FnOnce(&mut Instance, &mut PluginState) -> Result<Effects, CallError>,
    ) -> Result<Effects, CallError> {
        let _span = debug_span!("plugin_call", plugin = %self.plugin.name, hash = %self.plugin.short_hash()).entered();
        let instance = match &mut self.instance {
            Some(instance) if instance.is_reusable() => instance,
            slot => slot.insert(self.plugin.instantiate()?),
        };
        let mut result = f(instance, &mut self.state);
        match &mut result {
            Ok(effects) => {
                effects.changes.prune_unchanged(&self.state);
                self.state.apply(effects.changes.clone());
            }
            Err(err) => {
                warn!(plugin = %self.plugin.name, kind = err.kind(), error = %err, "Plugin call failed.");
            }
        }
        if !instance.is_reusable() {
            self.instance = None;
        }
        result
    }
}
