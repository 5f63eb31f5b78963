//! Dispatching events and due timers to the plugins of one partition.
//!
//! A [`Dispatcher`] owns, for each plugin, a warm instance and the plugin's
//! state for the partition. It calls every subscribed plugin for an event,
//! applies a call's state and timer changes only when it returned `ok` and
//! they fit the plugin's per-partition quotas, and hands back what to
//! produce: the emits, and the state changes to persist. A failed call
//! changes nothing; its instance is replaced if it trapped.
//!
//! Timers: a timer that fires is removed before its call (so a failing
//! handler is not retried forever), and its key is among the outcome's
//! changed key names. An `on-timer` call that re-arms a timer for sooner
//! than the minimum re-arm delay has it pushed back to that delay
//! (counted, and a storm of them quarantines the plugin), so a plugin
//! cannot make a partition spin.
//!
//! Loops: a record carries its hops — how many plugin emits it is from
//! its producer's record — and a timer the hops of the call that set it
//! (a timer set in `on-timer` those of the firing). A call whose hops
//! reach [`DispatchPolicy::max_hops`] may not emit to an input topic, so
//! plugins feeding the input topic what they read — alone or together,
//! straight or through timers — cannot keep a loop going; at [`MAX_HOPS`]
//! a call may not emit at all, which ends a loop through another
//! deployment or a mirror too. What hops do not bound: a plugin emitting
//! on a schedule of its own (a timer re-armed in `on-timer`), or what it
//! kept in state, starts from the hops of what set the schedule up; its
//! timer quotas and `min_timer_rearm` bound that.
//!
//! The plugin set can change between calls ([`Dispatcher::update`]): a
//! replaced plugin keeps its state and gets a fresh instance of the new
//! version; a removed plugin's state is parked (its timers wait) until a
//! plugin of that name returns. Quarantined plugins are not called: their
//! events fail with [`CallError::Quarantined`] and their timers wait for
//! the next trial.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, debug, debug_span, info, warn};

use crate::clock::{self, rfc3339};
use crate::plugin::Plugin;
use crate::plugin::health::{QuarantinePolicy, Transition};
use crate::sandbox::{CallError, Effects, Emit, Instance, Limits, QuotaExceeded};
use crate::state::{PluginState, StateChanges, Timer, Usage};
use crate::telemetry::{PluginMetrics, SlotMetrics};
use crate::units::format_duration;
use crate::world::{FiredTimer, Handler, TaskEvent, Timestamp};

/// The longest wait between two tries of a `retryable` call (doubling
/// alone would reach months); the plugin's retry budget bounds the sum.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// `plugins.retry_budget` unless set.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// How the dispatcher treats failing and busy plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchPolicy {
    /// When failures quarantine a plugin.
    pub quarantine: QuarantinePolicy,
    /// The soonest a timer set during `on-timer` may fire, from the call's
    /// `now`.
    pub min_timer_rearm: Duration,
    /// Whether retries of a `retryable` error wait out their back-off.
    pub retry_wait: RetryWait,
    /// The hops at which a call may no longer emit to an input topic
    /// (`plugins.max_hops`).
    pub max_hops: u32,
}

/// `plugins.max_hops` unless set: deeper than the bundled plugins go (the
/// recurrence plugin's emits are one hop from a completion).
pub const DEFAULT_MAX_HOPS: u32 = 4;

/// The most `plugins.max_hops` may be, and the hops from which a call may
/// not emit to any topic: no chain of plugins goes this deep but a loop
/// (through another deployment that feeds this one, say).
pub const MAX_HOPS: u32 = 64;

/// How long a plugin's timers wait after a call of one found no room for
/// an instance, in milliseconds.
pub const NO_ROOM_TIMER_DELAY_MS: i64 = 1_000;

/// How a retry of a `retryable` call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryWait {
    /// Sleep the plugin's `limits.retry_backoff`, doubling per attempt,
    /// each retry paid for from the plugin version's retry budget
    /// ([`Health::spend_on_retry`]): `budget` of back-off and retried
    /// calls at once, refilled at a tenth of the time passing. A retry the
    /// budget cannot pay for is not made.
    ///
    /// [`Health::spend_on_retry`]: crate::plugin::health::Health::spend_on_retry
    Backoff {
        /// The most a plugin's retries may keep partitions waiting at once.
        budget: Duration,
    },
    /// Retry at once (offline runs, where the clock is virtual).
    Immediate,
}

impl DispatchPolicy {
    /// Never quarantine, re-arm as the plugin asks, retry without waiting
    /// (the offline bench and `plugins test`, where the clock only moves
    /// with the events).
    pub const OFFLINE: Self = Self {
        quarantine: QuarantinePolicy::NEVER,
        min_timer_rearm: Duration::from_millis(1),
        retry_wait: RetryWait::Immediate,
        max_hops: DEFAULT_MAX_HOPS,
    };
}

impl Default for DispatchPolicy {
    fn default() -> Self {
        Self {
            quarantine: QuarantinePolicy::default(),
            min_timer_rearm: Duration::from_secs(1),
            retry_wait: RetryWait::Backoff {
                budget: DEFAULT_RETRY_BUDGET,
            },
            max_hops: DEFAULT_MAX_HOPS,
        }
    }
}

/// The result of one plugin call.
#[derive(Debug)]
pub struct Outcome {
    /// The plugin that was called.
    pub plugin: Arc<Plugin>,
    /// What it emitted, or why it failed (nothing of the call applied).
    pub result: Result<Vec<Emit>, CallError>,
    /// The key names (value or timer) whose stored entries this call
    /// changed, each once, in order — to persist whatever the result (a
    /// fired timer's removal is here even when its handler failed).
    pub changed: Vec<String>,
    /// Wall time of the call, retries included.
    pub took: Duration,
    /// The largest linear memory the plugin's instance has used so far.
    pub memory_peak: usize,
}

/// A timer that fired.
#[derive(Debug)]
pub struct Firing {
    /// The timer as handed to the plugin.
    pub timer: FiredTimer,
    /// The hops of the call that set it, which its emits count from.
    pub hops: u32,
    /// The call's outcome.
    pub outcome: Outcome,
    /// Until when the plugin's timers wait, if the call found no room for
    /// an instance (`sandbox.max_instances`): neither the timer's fault nor
    /// the plugin's, so the timer is put back as it was, not dead-lettered
    /// and lost, and `outcome` is an empty success with no change (the
    /// error counted and logged as any other). Nothing is to be written.
    pub postponed: Option<Timestamp>,
}

struct Slot {
    plugin: Arc<Plugin>,
    instance: Option<Instance>,
    /// The largest memory an instance of this slot has used.
    memory_peak: usize,
    state: PluginState,
    metrics: SlotMetrics,
    /// Until when its timers wait because a call found no room for an
    /// instance (`sandbox.max_instances`).
    no_room_until: Option<Timestamp>,
}

/// Runs events and timers through a set of plugins, for one partition.
pub struct Dispatcher {
    slots: Vec<Slot>,
    /// State of plugins not loaded now, by name.
    parked: HashMap<String, PluginState>,
    policy: DispatchPolicy,
    metrics: Arc<PluginMetrics>,
    /// The slot whose turn it is to fire a timer (see [`Self::fire_next`]).
    next_to_fire: usize,
}

impl Dispatcher {
    /// A dispatcher over `plugins`, each starting with empty state, for the
    /// offline bench: it never quarantines and records metrics nobody
    /// reads.
    pub fn new(plugins: &[Arc<Plugin>]) -> Self {
        Self::with(plugins, DispatchPolicy::OFFLINE, Arc::default())
    }

    /// A dispatcher under `policy` that records into `metrics`.
    pub fn with(
        plugins: &[Arc<Plugin>],
        policy: DispatchPolicy,
        metrics: Arc<PluginMetrics>,
    ) -> Self {
        let mut dispatcher = Self {
            slots: Vec::new(),
            parked: HashMap::new(),
            policy,
            metrics,
            next_to_fire: 0,
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
                // Its metric handles are looked up again: the name's series
                // may have been dropped meanwhile (removed, then back).
                Some(slot) => Slot {
                    plugin: plugin.clone(),
                    instance: None,
                    memory_peak: 0,
                    state: slot.state,
                    metrics: self.metrics.slot(&plugin.name),
                    no_room_until: None,
                },
                None => Slot {
                    plugin: plugin.clone(),
                    instance: None,
                    memory_peak: 0,
                    state: self.parked.remove(&plugin.name).unwrap_or_default(),
                    metrics: self.metrics.slot(&plugin.name),
                    no_room_until: None,
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
    /// plugin order, with the clock at `now`. `hops`: how many plugin emits
    /// the event's record is from its producer's (0 for a producer's own).
    pub async fn dispatch(&mut self, event: &TaskEvent, hops: u32, now: Timestamp) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            if !slot.plugin.subscribes(event.kind) {
                continue;
            }
            let outcome = slot
                .call(now, hops, Call::Event(event), &self.policy, &self.metrics)
                .await;
            outcomes.push(outcome);
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
    /// or a quarantined plugin's next trial, or the end of a wait for room
    /// for an instance, if that is later.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.slots.iter().filter_map(Slot::next_due).min()
    }

    /// Fires a timer due at or before `now`, if any: the earliest of the
    /// next plugin in turn that has one due. Plugins take turns rather than
    /// the earliest timer of all going first: a plugin that keeps a backlog
    /// of timers due long ago (a due time of 0, set on every event) would
    /// otherwise hold back every other plugin's timers for as long as
    /// events keep coming.
    pub async fn fire_next(&mut self, now: Timestamp) -> Option<Firing> {
        let count = self.slots.len();
        let turn = (0..count)
            .map(|n| (self.next_to_fire + n) % count)
            .find(|&n| self.slots[n].next_due().is_some_and(|due| due <= now))?;
        self.next_to_fire = turn + 1;
        let slot = &mut self.slots[turn];
        let before = slot.state.usage();
        let (key, timer) = slot.state.pop_due(now)?;
        let hops = timer.hops;
        let timer = FiredTimer {
            key,
            due: timer.due,
            payload: timer.payload,
        };
        let mut outcome = slot
            .call(
                now,
                hops,
                Call::Timer(&timer, before),
                &self.policy,
                &self.metrics,
            )
            .await;
        // No room for an instance: the handler never ran. The timer goes
        // back as it was, and the plugin's timers wait a while, so a full
        // pool costs one attempt per plugin and partition a second, not
        // one per timer.
        let postponed = matches!(outcome.result, Err(CallError::Capacity(_))).then(|| {
            let again = Timer {
                due: timer.due,
                payload: timer.payload.clone(),
                hops,
            };
            slot.state.set_timer(timer.key.clone(), Some(again));
            outcome.result = Ok(Vec::new());
            let until = now.saturating_add(NO_ROOM_TIMER_DELAY_MS);
            slot.no_room_until = Some(until);
            until
        });
        if postponed.is_none() {
            slot.no_room_until = None;
            // The fired timer is gone unless the handler set it again:
            // either way its key changed.
            if let Err(at) = outcome.changed.binary_search(&timer.key) {
                outcome.changed.insert(at, timer.key.clone());
            }
        }
        Some(Firing {
            timer,
            hops,
            outcome,
            postponed,
        })
    }
}

/// What a call hands the plugin.
#[derive(Clone, Copy)]
enum Call<'a> {
    Event(&'a TaskEvent),
    /// A firing, and the plugin's usage before its timer was taken out.
    Timer(&'a FiredTimer, Usage),
}

impl Call<'_> {
    fn handler(self) -> Handler {
        match self {
            Self::Event(_) => Handler::OnEvent,
            Self::Timer(..) => Handler::OnTimer,
        }
    }
}

impl Slot {
    fn next_due(&self) -> Option<Timestamp> {
        let due = self.state.next_due()?;
        let waits = [self.plugin.health.retry_at(), self.no_room_until];
        Some(waits.into_iter().flatten().fold(due, Timestamp::max))
    }

    async fn call(
        &mut self,
        now: Timestamp,
        hops: u32,
        call: Call<'_>,
        policy: &DispatchPolicy,
        metrics: &PluginMetrics,
    ) -> Outcome {
        let plugin = self.plugin.clone();
        let started = Instant::now();
        let (result, ended) = match plugin.health.admit(now) {
            Err(suspended) => {
                metrics.skipped(&plugin.name);
                let skipped = Err(CallError::Quarantined {
                    failures: suspended.failures,
                    retry_at: rfc3339(suspended.retry_at),
                });
                (skipped, started)
            }
            Ok(()) => {
                let span = debug_span!(
                    "plugin_call",
                    plugin = %plugin.name,
                    hash = %plugin.short_hash(),
                    handler = call.handler().as_str()
                );
                self.run_with_retries(now, call, policy, started)
                    .instrument(span)
                    .await
            }
        };
        let result = match result {
            Ok(effects) if hops >= policy.max_hops.min(MAX_HOPS) => {
                self.refuse_loop(effects, hops, policy)
            }
            other => other,
        };
        let mut stormed = false;
        let (result, changed) = match result {
            Ok(effects) => match self.apply(now, hops, call, effects.changes, policy, metrics) {
                Ok((changed, throttled)) => {
                    stormed = throttled;
                    (Ok(effects.emits), changed)
                }
                Err(quota) => (Err(CallError::Quota(quota)), Vec::new()),
            },
            Err(err) => (Err(err), Vec::new()),
        };
        // A call that kept a timer storm going is no sign of health.
        if !stormed {
            self.record(now, &result, &policy.quarantine, metrics);
        }
        Outcome {
            plugin,
            result,
            changed,
            took: ended.duration_since(started),
            memory_peak: self.memory_peak,
        }
    }

    /// Runs the call, and again while it fails with a `retryable` error,
    /// up to `limits.retries` more times with exponential back-off (each
    /// wait at most [`MAX_RETRY_BACKOFF`]), as long as the plugin's retry
    /// budget pays for the wait and the failed try ([`RetryWait`]). The
    /// partition waits meanwhile, so per-key order is kept; a call still
    /// failing after its last retry is dead-lettered like `bad-input`, and
    /// counts toward quarantine. Without the budget a plugin could answer
    /// `retryable` to every event until its last retry, then `ok`: each
    /// event would keep its partition waiting for minutes, and no call
    /// would ever count as failed. Returns the result and when the last
    /// try ended.
    async fn run_with_retries(
        &mut self,
        now: Timestamp,
        call: Call<'_>,
        policy: &DispatchPolicy,
        mut started: Instant,
    ) -> (Result<Effects, CallError>, Instant) {
        let limits = self.plugin.spec.limits;
        let mut attempt = 0_u32;
        loop {
            let (mut result, took, ended) = self.run(now, call, started).await;
            match &mut result {
                Err(err) if err.is_retryable() && u64::from(attempt) < limits.retries.0 => {
                    let backoff =
                        clock::backoff(limits.retry_backoff.0, attempt + 1, MAX_RETRY_BACKOFF);
                    if let RetryWait::Backoff { budget } = policy.retry_wait
                        && !self
                            .plugin
                            .health
                            .spend_on_retry(backoff + took, budget, ended)
                    {
                        // Said first, so no cut of the message to its
                        // bound (a dead letter's) loses it.
                        if let CallError::Plugin { message, .. } = err {
                            *message = format!(
                                "not retried after {attempt} retries, the plugin's retry budget of {} is spent: {message}",
                                format_duration(budget)
                            );
                        }
                        return (result, ended);
                    }
                    attempt += 1;
                    self.metrics.retried();
                    debug!(
                        plugin = %self.plugin.name,
                        attempt,
                        of = limits.retries.0,
                        backoff = %format_duration(backoff),
                        error = %err,
                        "Plugin asked for a retry."
                    );
                    if matches!(policy.retry_wait, RetryWait::Backoff { .. }) {
                        tokio::time::sleep(backoff).await;
                    }
                    started = Instant::now();
                }
                _ => return (result, ended),
            }
        }
    }

    /// Runs the call on a warm instance (created if needed), counting its
    /// time limit from `started` (or from when a new instance was ready).
    /// Returns the result, how long the call took (from `started`, or
    /// from when a new instance was ready) and when it ended: the clock is
    /// read once here and once by the caller per call.
    async fn run(
        &mut self,
        now: Timestamp,
        call: Call<'_>,
        mut started: Instant,
    ) -> (Result<Effects, CallError>, Duration, Instant) {
        let instance = match &mut self.instance {
            Some(instance) if instance.is_reusable() => instance,
            slot => match self.plugin.instantiate().await {
                Ok(instance) => {
                    started = Instant::now();
                    slot.insert(instance)
                }
                Err(err) => return (Err(err), Duration::ZERO, Instant::now()),
            },
        };
        let result = match call {
            Call::Event(event) => {
                instance
                    .on_event(event, now, started, &mut self.state)
                    .await
            }
            Call::Timer(timer, _) => {
                instance
                    .on_timer(timer, now, started, &mut self.state)
                    .await
            }
        };
        let ended = Instant::now();
        let took = ended.duration_since(started);
        self.memory_peak = self.memory_peak.max(instance.memory_peak());
        self.metrics
            .call(call.handler(), took, instance.memory_peak());
        if !instance.is_reusable() {
            self.instance = None;
        }
        (result, took, ended)
    }

    /// The effects of a call at `hops` at or past `max_hops`, refused if
    /// they emit to an input topic — or at all at [`MAX_HOPS`]: their
    /// records would carry a loop further.
    #[cold]
    fn refuse_loop(
        &self,
        effects: Effects,
        hops: u32,
        policy: &DispatchPolicy,
    ) -> Result<Effects, CallError> {
        let emits = &effects.emits;
        let refused = |topic: &str, bound: String| CallError::MaxHops {
            topic: topic.to_owned(),
            hops,
            bound,
        };
        if hops >= MAX_HOPS
            && let Some(emit) = emits.first()
        {
            return Err(refused(
                &emit.topic,
                format!("no emit is allowed from {MAX_HOPS} (a loop through another deployment?)"),
            ));
        }
        match emits.iter().find(|e| self.plugin.spec.loops_back(&e.topic)) {
            Some(emit) => Err(refused(
                &emit.topic,
                format!("plugins.max_hops = {} for an input topic", policy.max_hops),
            )),
            None => Ok(effects),
        }
    }

    /// Applies a successful call's changes: the timers it set stamped with
    /// its `hops`, unchanged entries dropped, re-armed timers held to the
    /// minimum delay, then checked against the per-partition quotas.
    /// Returns the key names it changed, and whether a timer had to be held
    /// back.
    fn apply(
        &mut self,
        now: Timestamp,
        hops: u32,
        call: Call<'_>,
        mut changes: StateChanges,
        policy: &DispatchPolicy,
        metrics: &PluginMetrics,
    ) -> Result<(Vec<String>, bool), QuotaExceeded> {
        for timer in changes.timers.values_mut().flatten() {
            timer.hops = hops;
        }
        changes.prune_unchanged(&self.state);
        let throttled = matches!(call, Call::Timer(..))
            && self.throttle_rearms(now, &mut changes, policy, metrics);
        // A firing's growth counts from before its timer was taken out, so
        // setting it again is none: a plugin over a lowered limit keeps a
        // timer it re-arms.
        let before = match call {
            Call::Timer(_, before) => before,
            Call::Event(_) => self.state.usage(),
        };
        check_usage(
            &self.plugin.spec.limits,
            before,
            self.state.usage_after(&changes),
        )?;
        let changed = changes.names();
        self.state.apply(changes);
        Ok((changed, throttled))
    }

    /// Pushes timers set for sooner than `min_timer_rearm` back to it, and
    /// counts them towards a storm. Returns whether any was.
    fn throttle_rearms(
        &self,
        now: Timestamp,
        changes: &mut StateChanges,
        policy: &DispatchPolicy,
        metrics: &PluginMetrics,
    ) -> bool {
        let delay = i64::try_from(policy.min_timer_rearm.as_millis()).unwrap_or(i64::MAX);
        let earliest = now.saturating_add(delay);
        let mut throttled = 0_u32;
        for timer in changes.timers.values_mut().flatten() {
            if timer.due < earliest {
                timer.due = earliest;
                throttled += 1;
            }
        }
        if throttled == 0 {
            return false;
        }
        self.metrics.timers_throttled(u64::from(throttled));
        if let Transition::Quarantined(suspended) =
            self.plugin
                .health
                .throttled(&policy.quarantine, now, throttled)
        {
            warn!(
                plugin = %self.plugin.name,
                min_rearm = %format_duration(policy.min_timer_rearm),
                retry_at = %rfc3339(suspended.retry_at),
                "Plugin quarantined: a timer storm (on-timer keeps re-arming timers for immediate firing)."
            );
            metrics.set_quarantined(&self.plugin.name, true);
        }
        true
    }

    /// Feeds the outcome to the plugin's health and metrics.
    ///
    /// Only `ok` ends a run of failures. An error that is not the plugin's
    /// fault (`bad-input`, an over-long key, no room for an instance) neither
    /// counts nor ends one — else rejecting every fifth event would keep a
    /// plugin that traps on the rest out of quarantine — though a clean
    /// answer (`bad-input`) lifts a quarantine on its trial call. A
    /// `retryable` error still here has had its retries and failed them
    /// all, or its retry budget refused one: it counts.
    fn record(
        &self,
        now: Timestamp,
        result: &Result<Vec<Emit>, CallError>,
        policy: &QuarantinePolicy,
        metrics: &PluginMetrics,
    ) {
        let name = &self.plugin.name;
        let health = &self.plugin.health;
        let err = match result {
            Err(CallError::Quarantined { .. }) => return,
            Ok(_) => {
                if health.succeeded() == Transition::Released {
                    info!(plugin = %name, "Plugin call succeeded; quarantine lifted.");
                    metrics.set_quarantined(name, false);
                }
                return;
            }
            Err(err) => err,
        };
        metrics.error(name, err.kind());
        let fault = err.counts_toward_quarantine();
        // The plugin answered, cleanly: it rejected its input, or its
        // answer was refused only for carrying a loop on.
        let rejected =
            !fault && matches!(err, CallError::Plugin { .. } | CallError::MaxHops { .. });
        if self.plugin.warnings.admit() {
            if rejected {
                warn!(plugin = %name, kind = err.kind(), error = %err, "Plugin rejected its input.");
            } else {
                warn!(plugin = %name, kind = err.kind(), error = %err, "Plugin call failed.");
            }
        }
        if !fault {
            if rejected && health.answered() == Transition::Released {
                info!(plugin = %name, "Plugin answered its trial call; quarantine lifted.");
                metrics.set_quarantined(name, false);
            }
            return;
        }
        if let Transition::Quarantined(suspended) = health.failed(policy, now, &err.to_string()) {
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

/// Holds a call's projected usage to the per-partition quotas. A change
/// that does not grow a measure past its limit passes, so a plugin over a
/// lowered limit can still delete.
fn check_usage(limits: &Limits, before: Usage, after: Usage) -> Result<(), QuotaExceeded> {
    let grows = |after: usize, before: usize, limit: u64| after > before && after as u64 > limit;
    if grows(after.bytes, before.bytes, limits.state_bytes.bytes()) {
        return Err(QuotaExceeded::new(
            "limits.state_bytes",
            format_args!("{} bytes of state in this partition", after.bytes),
            limits.state_bytes,
        ));
    }
    if grows(after.keys, before.keys, limits.state_keys.0) {
        return Err(QuotaExceeded::new(
            "limits.state_keys",
            format_args!("{} state keys in this partition", after.keys),
            limits.state_keys,
        ));
    }
    if grows(after.timers, before.timers, limits.timers.0) {
        return Err(QuotaExceeded::new(
            "limits.timers",
            format_args!("{} timers in this partition", after.timers),
            limits.timers,
        ));
    }
    Ok(())
}
