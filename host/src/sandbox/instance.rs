//! A warm plugin instance: one wasmtime store reused across calls.
//!
//! Each call runs with the partition's state moved into the store, a fixed
//! `now`, an epoch deadline and a clean effects buffer. A call that traps
//! leaves the instance unusable ([`Instance::is_reusable`] turns false) and
//! the caller replaces it; nothing in a trapped store is ever run again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::SandboxConfig;
use super::error::{CallError, Denied, TrapKind};
use super::host::{CapturedOutput, Effects, HostState, PluginSpec};
use crate::state::PluginState;
use crate::world::{
    FiredTimer, Plugin as PluginWorld, PluginError, PluginPre, TaskEvent, Timestamp,
};

/// A live instance of one plugin.
pub struct Instance {
    store: Store<HostState>,
    bindings: PluginWorld,
    calls: u64,
    max_calls: u64,
    epoch_tick: Duration,
    trapped: bool,
}

impl Instance {
    pub(super) fn new(
        engine: &Engine,
        pre: &PluginPre<HostState>,
        spec: Arc<PluginSpec>,
        config: &SandboxConfig,
    ) -> Result<Self, CallError> {
        let now = Arc::new(AtomicI64::new(0));
        let output = CapturedOutput::default();
        let wasi =
            wasi_ctx(&spec, &now, &output).map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let mut store = Store::new(engine, HostState::new(spec, now, output, wasi));
        store.limiter(|state| &mut state.limiter);
        // Instantiation runs start functions; give it a deadline too.
        store.set_epoch_deadline(ticks(store.data().spec.call_timeout, config.epoch_tick));
        let bindings = match pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(err) => {
                let (kind, message) = classify(&err, &mut store);
                return Err(CallError::Instantiate(format!("{kind}: {message}")));
            }
        };
        Ok(Self {
            store,
            bindings,
            calls: 0,
            max_calls: config.max_calls_per_instance,
            epoch_tick: config.epoch_tick,
            trapped: false,
        })
    }

    /// Whether the instance may serve another call: it has not trapped and
    /// has not reached its call budget.
    pub fn is_reusable(&self) -> bool {
        !self.trapped && self.calls < self.max_calls
    }

    /// The largest linear memory this instance has used, in bytes.
    pub fn memory_peak(&self) -> usize {
        self.store.data().limiter.peak
    }

    /// Calls `on-event`.
    pub fn on_event(
        &mut self,
        event: &TaskEvent,
        now: Timestamp,
        state: &mut PluginState,
    ) -> Result<Effects, CallError> {
        self.call(now, state, |bindings, store| {
            bindings.call_on_event(store, event)
        })
    }

    /// Calls `on-timer`.
    pub fn on_timer(
        &mut self,
        timer: &FiredTimer,
        now: Timestamp,
        state: &mut PluginState,
    ) -> Result<Effects, CallError> {
        self.call(now, state, |bindings, store| {
            bindings.call_on_timer(store, timer)
        })
    }

    fn call(
        &mut self,
        now: Timestamp,
        state: &mut PluginState,
        f: impl FnOnce(&PluginWorld, &mut Store<HostState>) -> wasmtime::Result<Result<(), PluginError>>,
    ) -> Result<Effects, CallError> {
        if self.trapped {
            return Err(CallError::Trap {
                kind: TrapKind::Other,
                message: "instance already trapped".into(),
            });
        }
        self.calls += 1;
        let data = self.store.data_mut();
        data.now.store(now, Ordering::Relaxed);
        data.limiter.refused = false;
        data.effects = Effects::default();
        std::mem::swap(&mut data.state, state);
        let deadline = ticks(data.spec.call_timeout, self.epoch_tick);
        self.store.set_epoch_deadline(deadline);

        let result = f(&self.bindings, &mut self.store);

        std::mem::swap(&mut self.store.data_mut().state, state);
        let output = self.store.data().output.take();
        if !output.is_empty() {
            let plugin = self.store.data().spec.name.as_str();
            for line in output.lines().filter(|l| !l.trim().is_empty()) {
                tracing::info!(plugin, output = line, "Plugin wrote to stdout/stderr.");
            }
        }
        let effects = std::mem::take(&mut self.store.data_mut().effects);
        match result {
            Ok(Ok(())) => Ok(effects),
            Ok(Err(err)) => Err(CallError::Plugin {
                code: err.code,
                message: err.message,
            }),
            Err(err) => {
                self.trapped = true;
                let (kind, mut message) = classify(&err, &mut self.store);
                if kind == TrapKind::Panic
                    && let Some(panic) = panic_message(&output)
                {
                    message = format!("{panic} ({message})");
                }
                Err(CallError::Trap { kind, message })
            }
        }
    }
}

/// Epoch ticks for a timeout, rounded up, at least one.
fn ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    u64::try_from(timeout.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Sorts a trap into a [`TrapKind`] with a one-line message.
fn classify(err: &wasmtime::Error, store: &mut Store<HostState>) -> (TrapKind, String) {
    if let Some(denied) = err.downcast_ref::<Denied>() {
        return (TrapKind::Denied, denied.0.clone());
    }
    let memory_refused = store.data().limiter.refused;
    let kind = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            let timeout = store.data().spec.call_timeout;
            return (
                TrapKind::Deadline,
                format!(
                    "call exceeded its time limit of {}",
                    humantime::format_duration(timeout)
                ),
            );
        }
        Some(Trap::StackOverflow) => TrapKind::StackOverflow,
        Some(_) if memory_refused => {
            let limit = store.data().spec.memory_limit;
            return (
                TrapKind::Memory,
                format!("memory limit of {} bytes reached ({err})", limit),
            );
        }
        Some(Trap::UnreachableCodeReached) => TrapKind::Panic,
        Some(_) => TrapKind::Other,
        None if memory_refused => TrapKind::Memory,
        None => TrapKind::Other,
    };
    let message = match err.downcast_ref::<Trap>() {
        // Rust and C guests keep their stack in linear memory; running off
        // its end shows up as an out-of-bounds access.
        Some(Trap::MemoryOutOfBounds) => {
            format!(
                "{} (in Rust or C guests, often a stack overflow)",
                Trap::MemoryOutOfBounds
            )
        }
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    (kind, message)
}

/// The Rust panic message from a guest's stderr, if there is one.
fn panic_message(output: &str) -> Option<String> {
    let start = output.rfind("panicked at")?;
    let text: Vec<&str> = output[start..].lines().take(2).collect();
    Some(text.join(" "))
}

/// A WASI context with nothing in it but what the manifest grants.
fn wasi_ctx(
    spec: &PluginSpec,
    now: &Arc<AtomicI64>,
    output: &CapturedOutput,
) -> anyhow::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    builder.stdout(output.clone()).stderr(output.clone());
    for name in &spec.wasi.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    for dir in &spec.wasi.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| anyhow::anyhow!("granted directory {}: {e:#}", dir.host.display()))?;
    }
    if !spec.wasi.ambient_clock {
        builder
            .wall_clock(HostClock(now.clone()))
            .monotonic_clock(HostClock(now.clone()));
    }
    Ok(builder.build())
}

/// WASI clocks that read the host's per-call `now` instead of the real time.
struct HostClock(Arc<AtomicI64>);

impl HostClock {
    fn millis(&self) -> u64 {
        u64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl HostWallClock for HostClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.millis())
    }
}

impl HostMonotonicClock for HostClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        self.millis().saturating_mul(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        let ms = Duration::from_millis;
        assert_eq!(ticks(ms(100), ms(1)), 100);
        assert_eq!(ticks(ms(5), ms(2)), 3);
        assert_eq!(ticks(Duration::ZERO, ms(1)), 1);
    }

    #[test]
    fn panic_messages_are_extracted() {
        let out = "some log\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nboom\nnote: run with RUST_BACKTRACE=1\n";
        assert_eq!(
            panic_message(out).as_deref(),
            Some("panicked at src/lib.rs:10:5: boom")
        );
    }
}
