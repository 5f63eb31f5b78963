//! A warm plugin instance: one wasmtime store reused across calls.
//!
//! Each call runs with the partition's state moved into the store, a fixed
//! `now`, a wall-clock deadline and a clean effects buffer. Calls are
//! async: the guest yields to the runtime at every epoch tick, so a busy
//! plugin never holds a runtime thread for long, and the epoch callback
//! traps it once its deadline has passed. A guest waiting in a WASI
//! pollable (a sleep, `subscribe-duration`, `poll`) is not running, so the
//! call's future is also raced against the deadline and dropped when it
//! passes — either way the call ends as `deadline` on time.
//!
//! A call that traps leaves the instance unusable ([`Instance::is_reusable`]
//! turns false) and the caller replaces it; nothing in a trapped store is
//! ever run again. So does a call budget spent, or memory grown past three
//! quarters of the limit — or half the room left at the start, for an
//! instance that started in over half (guest runtimes that leak per call — e.g.
//! componentize-py 0.25's `bytes` arguments — are recycled before they run
//! out).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::SandboxConfig;
use super::error::{CallError, Denied, KeyTooLong, TrapKind};
use super::host::{CapturedOutput, Effects, HostState, PluginSpec};
use super::limits::QuotaExceeded;
use crate::blocking::Abandoned;
use crate::state::PluginState;
use crate::text;
use crate::units::{ByteSize, format_duration};
use crate::world::{FiredTimer, Guest, GuestPre, TaskEvent, Timestamp};

/// The longest error code kept from a plugin.
const MAX_CODE_BYTES: usize = 64;

/// A live instance of one plugin.
pub struct Instance {
    store: Store<HostState>,
    bindings: Guest,
    calls: u64,
    max_calls: u64,
    trapped: bool,
}

/// Which export a call runs.
enum Export<'a> {
    Event(&'a TaskEvent),
    Timer(&'a FiredTimer),
}

impl Instance {
    pub(super) async fn new(
        engine: &Engine,
        pre: &GuestPre<HostState>,
        spec: Arc<PluginSpec>,
        config: &SandboxConfig,
        lookups: &Abandoned,
    ) -> Result<Self, CallError> {
        let now = Arc::new(AtomicI64::new(0));
        let output = CapturedOutput::new(spec.log.clone());
        let wasi = if spec.wasi.dirs.is_empty() {
            wasi_ctx(&spec, &now, &output)
        } else {
            // Granted directories are looked up and opened on the blocking
            // pool. One that does not answer (a hung mount) is the host's
            // trouble, not the plugin's: the instance cannot start now.
            let key = super::grants::lookup_key(&spec.wasi.dirs);
            let wait = spec.limits.timeout().max(MIN_OPEN_WAIT);
            let (spec, now, output) = (spec.clone(), now.clone(), output.clone());
            lookups
                .run(&key, wait, move || wasi_ctx(&spec, &now, &output))
                .await
                .map_err(|err| {
                    CallError::Capacity(format!(
                        "opening the granted directories: {err} (a plugin's instances start again once they answer)"
                    ))
                })?
        }
        .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let mut store = Store::new(engine, HostState::new(spec, now, output, wasi));
        store.limiter(|state| &mut state.limiter);
        let fuel = store.data().spec.max_host_call_bytes();
        store.set_hostcall_fuel(fuel);
        // Yield to the runtime at every tick; trap once the deadline passed.
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        // Instantiation runs start functions; it gets a call's deadline too.
        let deadline = store.data().deadline;
        let started = within(deadline, pre.instantiate_async(&mut store)).await;
        let bindings = match started {
            Some(Ok(bindings)) => bindings,
            Some(Err(err)) if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                return Err(CallError::Capacity(format!(
                    "the instance pool is full: {err:#} (sandbox.max_instances is {}; the pool holds 4 core instances, 2 memories and 4 tables per instance on average, across plugins and partitions)",
                    config.max_instances
                )));
            }
            Some(Err(err)) => return Err(instantiate_error(&err, &mut store, STARTING)),
            None => return Err(start_deadline(&store, STARTING)),
        };
        // `init` runs once per instance, under the same deadline.
        let settings: Vec<(String, String)> = store
            .data()
            .spec
            .config
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let initialised = within(deadline, bindings.call_init(&mut store, &settings)).await;
        match initialised {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(err))) => {
                return Err(CallError::Instantiate(format!(
                    "init rejected the configuration: {} [{}]: {}",
                    err.kind.as_str(),
                    text::quote_bounded(&err.code, MAX_CODE_BYTES),
                    text::message(&err.message)
                )));
            }
            Some(Err(err)) => return Err(instantiate_error(&err, &mut store, INIT)),
            None => return Err(start_deadline(&store, INIT)),
        }
        store.data_mut().limiter.started();
        // `init` has no event, key or partition to write for: what it
        // emitted or changed would go nowhere, so it is refused (at the
        // load's first start) rather than dropped without a word.
        let effects = std::mem::take(&mut store.data_mut().effects);
        if !effects.emits.is_empty() || !effects.changes.is_empty() {
            return Err(CallError::Instantiate(format!(
                "init emitted {} record(s) and changed {} state or timer key(s); init runs once per instance, for no event or partition, so it may only read its configuration (emit, write state and set timers in on-event or on-timer)",
                effects.emits.len(),
                effects.changes.names().len()
            )));
        }
        Ok(Self {
            store,
            bindings,
            calls: 0,
            max_calls: config.max_calls_per_instance,
            trapped: false,
        })
    }

    /// Whether the instance may serve another call: it has not trapped,
    /// has not reached its call budget, and has not grown nearly full
    /// (three quarters of its memory limit, or half the room it started
    /// with): a leaking guest is recycled before it fails a call.
    pub fn is_reusable(&self) -> bool {
        !self.trapped && self.calls < self.max_calls && !self.store.data().limiter.nearly_full()
    }

    /// The largest linear memory this instance has used, in bytes.
    pub fn memory_peak(&self) -> usize {
        self.store.data().limiter.peak
    }

    /// Calls `on-event`, with the host's clock at `now`. The call's time
    /// limit counts from `started` (the caller's reading of the clock, so a
    /// call costs no extra one).
    pub async fn on_event(
        &mut self,
        event: &TaskEvent,
        now: Timestamp,
        started: Instant,
        state: &mut PluginState,
    ) -> Result<Effects, CallError> {
        self.call(now, started, state, Export::Event(event)).await
    }

    /// Calls `on-timer`, as [`Instance::on_event`].
    pub async fn on_timer(
        &mut self,
        timer: &FiredTimer,
        now: Timestamp,
        started: Instant,
        state: &mut PluginState,
    ) -> Result<Effects, CallError> {
        self.call(now, started, state, Export::Timer(timer)).await
    }

    async fn call(
        &mut self,
        now: Timestamp,
        started: Instant,
        state: &mut PluginState,
        export: Export<'_>,
    ) -> Result<Effects, CallError> {
        if self.trapped {
            return Err(CallError::Trap {
                kind: TrapKind::Other,
                message: "instance already trapped".into(),
            });
        }
        self.calls += 1;
        let data = self.store.data_mut();
        data.begin(now, started);
        std::mem::swap(&mut data.state, state);
        let deadline = data.deadline;
        self.store.set_epoch_deadline(1);

        let (bindings, store) = (&self.bindings, &mut self.store);
        let call = async {
            match export {
                Export::Event(event) => bindings.call_on_event(&mut *store, event).await,
                Export::Timer(timer) => bindings.call_on_timer(&mut *store, timer).await,
            }
        };
        // The epoch callback stops a running guest; this stops one that
        // waits in a host call (dropping the call unwinds the guest).
        let result = within(deadline, call).await;

        std::mem::swap(&mut self.store.data_mut().state, state);
        let output = self.store.data().output.take();
        let effects = std::mem::take(&mut self.store.data_mut().effects);
        match result {
            Some(Ok(Ok(()))) => Ok(effects),
            Some(Ok(Err(err))) => Err(CallError::Plugin {
                kind: err.kind,
                code: text::quote_bounded(&err.code, MAX_CODE_BYTES),
                message: text::message(&err.message),
            }),
            Some(Err(err)) => {
                self.trapped = true;
                let mut failure = classify(&err, &mut self.store);
                if let CallError::Trap {
                    kind: TrapKind::Panic,
                    message,
                } = &mut failure
                    && let Some(panic) = panic_message(&output)
                {
                    *message = text::message(&format!("{panic} ({message})"));
                }
                Err(failure)
            }
            None => {
                self.trapped = true;
                Err(deadline_error(self.store.data().spec.limits.timeout()))
            }
        }
    }
}

/// Runs `call` until `deadline`: its output, or `None` once the deadline
/// has passed (the call is dropped). The timer is armed only once the call
/// has to wait — most calls finish in one poll and cost no timer.
async fn within<F: Future>(deadline: Instant, call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let timer =
            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The component's start functions, as [`CallError::StartDeadline`] names
/// them.
const STARTING: &str = "starting the component";
/// The plugin's `init`, as [`CallError::StartDeadline`] names it.
const INIT: &str = "init";

/// A new instance that did not get ready within a call's time limit.
fn start_deadline(store: &Store<HostState>, what: &'static str) -> CallError {
    CallError::StartDeadline {
        what,
        limit: store.data().spec.limits.timeout(),
    }
}

fn deadline_error(timeout: Duration) -> CallError {
    CallError::Trap {
        kind: TrapKind::Deadline,
        message: format!(
            "call exceeded its time limit of {}",
            format_duration(timeout)
        ),
    }
}

/// Why an instance could not be created while `what` ran, naming a memory
/// limit below what the component needs to start.
fn instantiate_error(
    err: &wasmtime::Error,
    store: &mut Store<HostState>,
    what: &'static str,
) -> CallError {
    let data = store.data();
    if let Some(asked) = data.limiter.refused {
        return CallError::Instantiate(format!(
            "memory limit {} is below the component's minimum: it needs at least {} to start",
            data.spec.limits.memory,
            ByteSize(asked as u64)
        ));
    }
    let failure = classify(err, store);
    match failure {
        CallError::Trap {
            kind: TrapKind::Deadline,
            ..
        } => start_deadline(store, what),
        CallError::Trap { kind, message } => CallError::Instantiate(format!("{kind}: {message}")),
        other => CallError::Instantiate(other.to_string()),
    }
}

/// Sorts a failed call into its [`CallError`] with a one-line message.
fn classify(err: &wasmtime::Error, store: &mut Store<HostState>) -> CallError {
    if let Some(quota) = err.downcast_ref::<QuotaExceeded>() {
        return CallError::Quota(quota.clone());
    }
    let trap = |kind, message| CallError::Trap { kind, message };
    if let Some(denied) = err.downcast_ref::<Denied>() {
        return trap(TrapKind::Denied, denied.0.clone());
    }
    if let Some(too_long) = err.downcast_ref::<KeyTooLong>() {
        return trap(TrapKind::KeyTooLong, too_long.0.clone());
    }
    let data = store.data();
    let memory_refused = data.limiter.refused.is_some();
    let kind = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return deadline_error(data.spec.limits.timeout()),
        Some(Trap::StackOverflow) => TrapKind::StackOverflow,
        Some(_) if memory_refused => {
            return trap(
                TrapKind::Memory,
                format!(
                    "memory limit of {} reached ({err})",
                    data.spec.limits.memory
                ),
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
        None => text::message(&format!("{err:#}")),
    };
    trap(kind, message)
}

/// The Rust panic message from a guest's stderr, if there is one.
fn panic_message(output: &str) -> Option<String> {
    let start = output.rfind("panicked at")?;
    let text: Vec<&str> = output[start..].lines().take(2).collect();
    Some(text.join(" "))
}

/// The most random bytes one `get-random-bytes` call may ask for (more
/// traps). wasmtime's default, 64 MiB, would have the host allocate and
/// fill that much in one call its deadline cannot interrupt.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The least time a new instance waits for its granted directories to be
/// opened, however short the plugin's call limit: a moment of host load
/// does not fail an honest plugin's start.
const MIN_OPEN_WAIT: Duration = Duration::from_secs(1);

/// A WASI context with nothing in it but what the manifest grants.
fn wasi_ctx(
    spec: &PluginSpec,
    now: &Arc<AtomicI64>,
    output: &CapturedOutput,
) -> anyhow::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(output.clone())
        .stderr(output.clone())
        .max_random_size(MAX_RANDOM_BYTES)
        // No network, said rather than left to wasmtime-wasi's defaults
        // (off in 48, but its builder's docs say otherwise): no socket,
        // no name lookup, and every address refused should one be made.
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    for name in &spec.wasi.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    for dir in &spec.wasi.dirs {
        // The grant was checked on its real path at load; a directory of
        // it swapped for a symlink since (by a plugin writing to a
        // neighbouring grant, say) would lead elsewhere.
        let now = std::fs::canonicalize(&dir.host).ok();
        if now.as_deref() != Some(dir.host.as_path()) {
            anyhow::bail!(
                "granted directory {} no longer resolves to itself (now {}); refused",
                text::quote_bounded(&dir.host.to_string_lossy(), 256),
                now.map_or_else(
                    || "gone".to_owned(),
                    |p| text::quote_bounded(&p.to_string_lossy(), 256)
                )
            );
        }
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
    fn panic_messages_are_extracted() {
        let out = "some log\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nboom\nnote: run with RUST_BACKTRACE=1\n";
        assert_eq!(
            panic_message(out).as_deref(),
            Some("panicked at src/lib.rs:10:5: boom")
        );
    }
}
