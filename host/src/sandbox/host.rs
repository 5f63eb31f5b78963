//! The data each plugin store carries, and the host side of the plugin's
//! imports: logging, the clock, config, buffered state/timer changes and
//! emits.
//!
//! Nothing a call does touches durable state directly: reads see the
//! partition's [`PluginState`] overlaid with the call's own writes, and all
//! writes go to [`Effects`], which the caller applies only when the call
//! returns `ok`. Every import that takes data from the guest is held to the
//! plugin's per-call quotas, so a call cannot pile up more than its limits
//! allow however long it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::error::{Denied, KeyTooLong};
use super::grants::WasiGrants;
use super::limits::{Limits, QuotaExceeded};
use super::log::PluginLog;
use crate::state::{PluginState, StateChanges, Timer};
use crate::units::{ByteSize, Count};
use crate::world::todo::plugin::{host, output, state, timers, types};
use crate::world::{LogLevel, Timestamp};

/// Keys longer than this are refused.
pub const MAX_KEY_BYTES: usize = 1024;
/// State values and timer payloads larger than this are refused (and
/// smaller ones too when the producer's `message.max.bytes` is smaller:
/// every state change becomes a changelog record). The bound holds for a
/// key's value and timer payload together, since one changelog record
/// holds both.
const MAX_VALUE_BYTES: usize = 1 << 20;
/// What headers and framing add to a produced record, at most.
pub const RECORD_OVERHEAD_BYTES: usize = 2048;
/// WASI resources (streams, pollables, descriptors) one instance may hold
/// at once; a plugin needs a handful.
const MAX_RESOURCES: usize = 10_000;
/// The same for an instance granted directories, where each open file is
/// one of the daemon's own descriptors, held as long as the plugin keeps
/// it — across a warm instance's calls. The pool's instances together
/// (128 by default) then hold at most 32 768, not 1.28 million: a plugin
/// cannot run the daemon out of descriptors for its broker connections.
pub const MAX_RESOURCES_WITH_FILES: usize = 256;
/// How much of a plugin's stdout/stderr is kept for error messages.
const OUTPUT_TAIL_BYTES: usize = 4096;
/// The most one write to stdout/stderr may carry (what `check-write`
/// permits). A host call cannot be interrupted, so this bounds how long
/// one write keeps the thread (a line at a time through the log's rate
/// limit) before the plugin's deadline is looked at again.
const OUTPUT_WRITE_BYTES: usize = 64 * 1024;

/// What the sandbox needs to know about a plugin to run it: the resolved
/// manifest.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The plugin's name (its file stem).
    pub name: String,
    /// Logical output name → topic.
    pub outputs: BTreeMap<String, String>,
    /// The output topics the daemon also consumes: what is emitted there
    /// comes back as input.
    pub input_outputs: BTreeSet<String>,
    /// Values for the `config` import.
    pub config: BTreeMap<String, String>,
    /// Memory, time and quotas.
    pub limits: Limits,
    /// Ambient capabilities.
    pub wasi: WasiGrants,
    /// The largest record the producer sends (`message.max.bytes`): an
    /// emit or state change that would not fit fails the call.
    pub max_record_bytes: usize,
    /// Where the plugin's log lines go.
    pub log: Arc<PluginLog>,
}

impl PluginSpec {
    /// Whether records emitted to `topic` come back as input.
    pub fn loops_back(&self, topic: &str) -> bool {
        self.input_outputs.contains(topic)
    }

    /// The largest state value or timer payload — or both under one key,
    /// together — in bytes.
    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES.min(
            self.max_record_bytes
                .saturating_sub(RECORD_OVERHEAD_BYTES + MAX_KEY_BYTES),
        )
    }

    /// The most bytes the host takes from the plugin's memory in one
    /// crossing — an import's arguments, or what an export returns
    /// (wasmtime's "hostcall fuel", counted as the host allocates them):
    /// twice the largest record the producer sends (a guest's UTF-16
    /// string counts two bytes a unit), and [`HOST_CALL_SLACK_BYTES`] for
    /// the rest. wasmtime's default, 128 MiB, would let one
    /// `wasi:io/poll.poll` of a single pollable repeated millions of times
    /// have the host allocate several times that, in work no deadline
    /// interrupts. Past it, the call traps.
    pub(super) fn max_host_call_bytes(&self) -> usize {
        self.max_record_bytes
            .max(MAX_VALUE_BYTES)
            .saturating_mul(2)
            .saturating_add(HOST_CALL_SLACK_BYTES)
    }
}

/// What one crossing from a plugin to the host may carry beyond its
/// largest record: keys, names, headers, an error's text.
const HOST_CALL_SLACK_BYTES: usize = 1 << 20;

/// One record a plugin emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    /// The logical output name the plugin used.
    pub output: String,
    /// The topic the manifest maps it to.
    pub topic: String,
    /// Record key.
    pub key: Option<String>,
    /// Record value (usually JSON text).
    pub value: String,
}

/// Everything one call did, applied only if it returned `ok`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Records to produce, in emit order.
    pub emits: Vec<Emit>,
    /// State and timer changes.
    pub changes: StateChanges,
}

/// What the current call has used of its per-call quotas.
#[derive(Debug, Default)]
pub(super) struct CallUsage {
    emit_bytes: u64,
    input_emits: u64,
    state_bytes: u64,
    timers: u64,
    /// Keys changed (values and timers together).
    changes: u64,
}

/// Store data of one plugin instance.
pub struct HostState {
    pub(super) spec: Arc<PluginSpec>,
    /// The host's time for the current call; also what WASI clocks report
    /// unless the plugin was granted ambient clocks.
    pub(super) now: Arc<AtomicI64>,
    /// When the current call must end (wall time).
    pub(super) deadline: Instant,
    /// The partition's state, moved in for the duration of a call.
    pub(super) state: PluginState,
    pub(super) effects: Effects,
    pub(super) usage: CallUsage,
    pub(super) limiter: MemoryLimiter,
    pub(super) output: CapturedOutput,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub(super) fn new(
        spec: Arc<PluginSpec>,
        now: Arc<AtomicI64>,
        output: CapturedOutput,
        wasi: WasiCtx,
    ) -> Self {
        let limiter = MemoryLimiter::new(spec.limits.memory);
        // WASI's streams and pollables live here, in host memory the
        // limiter does not see, and stay across a warm instance's calls.
        let mut table = ResourceTable::new();
        table.set_max_capacity(if spec.wasi.dirs.is_empty() {
            MAX_RESOURCES
        } else {
            MAX_RESOURCES_WITH_FILES
        });
        Self {
            deadline: Instant::now() + spec.limits.timeout(),
            spec,
            now,
            state: PluginState::default(),
            effects: Effects::default(),
            usage: CallUsage::default(),
            limiter,
            output,
            wasi,
            table,
        }
    }

    /// Starts a call that began at `started`: a clean effects buffer and
    /// usage, the clock at `now`, the deadline from the limits.
    pub(super) fn begin(&mut self, now: Timestamp, started: Instant) {
        self.now.store(now, Ordering::Relaxed);
        self.deadline = started + self.spec.limits.timeout();
        self.limiter.refused = None;
        self.effects = Effects::default();
        self.usage = CallUsage::default();
    }

    fn now(&self) -> Timestamp {
        self.now.load(Ordering::Relaxed)
    }

    /// Counts `bytes` of state written against the per-call quota.
    fn write_state(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.usage.state_bytes = self.usage.state_bytes.saturating_add(bytes as u64);
        let limit = self.spec.limits.state_bytes_per_call;
        if self.usage.state_bytes > limit.bytes() {
            return Err(QuotaExceeded::new(
                "limits.state_bytes_per_call",
                format_args!("{} bytes of state written", self.usage.state_bytes),
                limit,
            )
            .into());
        }
        Ok(())
    }

    /// Counts a change of `key` (its value or its timer) against
    /// `limits.state_changes_per_call`, unless the call changed it already:
    /// each key changed is one changelog record.
    fn change(&mut self, key: &str) -> wasmtime::Result<()> {
        let changes = &self.effects.changes;
        if changes.values.contains_key(key) || changes.timers.contains_key(key) {
            return Ok(());
        }
        self.usage.changes += 1;
        count_within(
            "limits.state_changes_per_call",
            self.usage.changes,
            "keys changed",
            self.spec.limits.state_changes_per_call,
        )
    }

    fn check_value(&self, what: &str, len: usize) -> wasmtime::Result<()> {
        let max = self.spec.max_value_bytes();
        if len > max {
            return Err(QuotaExceeded::new(
                "the largest state value",
                format_args!("{what} of {len} bytes"),
                ByteSize(max as u64),
            )
            .into());
        }
        Ok(())
    }

    /// The value under `key` as the call sees it: its own writes first,
    /// then the partition's state.
    fn value_now(&self, key: &str) -> Option<&[u8]> {
        match self.effects.changes.values.get(key) {
            Some(pending) => pending.as_deref(),
            None => self.state.get(key),
        }
    }

    /// The timer under `key` as the call sees it, like [`Self::value_now`].
    fn timer_now(&self, key: &str) -> Option<&Timer> {
        match self.effects.changes.timers.get(key) {
            Some(pending) => pending.as_ref(),
            None => self.state.timer(key),
        }
    }

    /// Checks that a value of `value_len` and a timer payload of
    /// `payload_len` bytes under `key` fit one changelog record together:
    /// each fitting alone is not enough, and a record the producer refuses
    /// would stall the partition.
    fn check_pair(&self, key: &str, value_len: usize, payload_len: usize) -> wasmtime::Result<()> {
        let max = self.spec.max_value_bytes();
        let together = value_len + payload_len;
        if together > max {
            return Err(QuotaExceeded::new(
                "the largest state value",
                format_args!(
                    "{together} bytes of state value and timer payload under key \"{}\"",
                    crate::text::quote_bounded(key, 64)
                ),
                ByteSize(max as u64),
            )
            .into());
        }
        Ok(())
    }
}

/// Fails the call with the quota `quota` once `used` (of `what`: "timers
/// set") passes the per-call count `limit`.
fn count_within(quota: &'static str, used: u64, what: &str, limit: Count) -> wasmtime::Result<()> {
    if used > limit.0 {
        return Err(QuotaExceeded::new(quota, format_args!("{used} {what}"), limit).into());
    }
    Ok(())
}

fn check_key(what: &str, key: &str) -> wasmtime::Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyTooLong(format!(
            "{what} key of {} bytes exceeds {MAX_KEY_BYTES}",
            key.len()
        ))
        .into());
    }
    Ok(())
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        self.spec.log.line(level, &message);
        Ok(())
    }

    fn now(&mut self) -> wasmtime::Result<Timestamp> {
        Ok(HostState::now(self))
    }

    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.spec.config.get(&key).cloned())
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.value_now(&key).map(<[u8]>::to_vec))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        check_key("state", &key)?;
        self.check_value("state value", value.len())?;
        let payload_len = self.timer_now(&key).map_or(0, |t| t.payload.len());
        self.check_pair(&key, value.len(), payload_len)?;
        self.write_state(key.len() + value.len())?;
        self.change(&key)?;
        self.effects.changes.values.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        check_key("state", &key)?;
        self.write_state(key.len())?;
        self.change(&key)?;
        self.effects.changes.values.insert(key, None);
        Ok(())
    }
}

impl timers::Host for HostState {
    fn set(&mut self, key: String, due: Timestamp, payload: Vec<u8>) -> wasmtime::Result<()> {
        check_key("timer", &key)?;
        self.check_value("timer payload", payload.len())?;
        let value_len = self.value_now(&key).map_or(0, <[u8]>::len);
        self.check_pair(&key, value_len, payload.len())?;
        self.usage.timers += 1;
        count_within(
            "limits.timers_per_call",
            self.usage.timers,
            "timers set",
            self.spec.limits.timers_per_call,
        )?;
        self.write_state(key.len() + payload.len() + 8)?;
        self.change(&key)?;
        // The dispatcher stamps the call's hops on the timer.
        let timer = Timer {
            due,
            payload,
            hops: 0,
        };
        self.effects.changes.timers.insert(key, Some(timer));
        Ok(())
    }

    fn cancel(&mut self, key: String) -> wasmtime::Result<()> {
        check_key("timer", &key)?;
        self.write_state(key.len())?;
        self.change(&key)?;
        self.effects.changes.timers.insert(key, None);
        Ok(())
    }

    fn get(&mut self, key: String) -> wasmtime::Result<Option<Timestamp>> {
        Ok(self.timer_now(&key).map(|t| t.due))
    }
}

impl output::Host for HostState {
    fn emit(&mut self, name: String, key: Option<String>, value: String) -> wasmtime::Result<()> {
        let Some(topic) = self.spec.outputs.get(&name) else {
            let granted: Vec<_> = self.spec.outputs.keys().map(String::as_str).collect();
            return Err(Denied(format!(
                "emit to output \"{}\", which the manifest does not map (mapped: {})",
                crate::text::quote_bounded(&name, 64),
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            ))
            .into());
        };
        let limits = &self.spec.limits;
        if self.effects.emits.len() as u64 >= limits.emits_per_call.0 {
            return Err(QuotaExceeded::new(
                "limits.emits_per_call",
                format_args!("{} emits", self.effects.emits.len() + 1),
                limits.emits_per_call,
            )
            .into());
        }
        if self.spec.loops_back(topic) {
            self.usage.input_emits += 1;
            if self.usage.input_emits > limits.input_emits_per_call.0 {
                return Err(QuotaExceeded::new(
                    "limits.input_emits_per_call",
                    format_args!(
                        "{} emits to the input topic {topic}",
                        self.usage.input_emits
                    ),
                    limits.input_emits_per_call,
                )
                .into());
            }
        }
        let size = key.as_ref().map_or(0, String::len) + value.len();
        if size + RECORD_OVERHEAD_BYTES > self.spec.max_record_bytes {
            return Err(QuotaExceeded::new(
                "the producer's message.max.bytes",
                format_args!("an emitted record of {size} bytes (+ headers)"),
                self.spec.max_record_bytes,
            )
            .into());
        }
        self.usage.emit_bytes = self.usage.emit_bytes.saturating_add(size as u64);
        if self.usage.emit_bytes > limits.emit_bytes_per_call.bytes() {
            return Err(QuotaExceeded::new(
                "limits.emit_bytes_per_call",
                format_args!("{} bytes emitted", self.usage.emit_bytes),
                limits.emit_bytes_per_call,
            )
            .into());
        }
        self.effects.emits.push(Emit {
            output: name,
            topic: topic.clone(),
            key,
            value,
        });
        Ok(())
    }
}

/// The `todo:plugin@0.1.0` imports: the same functions as 0.2.0, so each
/// one forwards to its 0.2.0 twin.
mod legacy {
    use super::HostState;
    use crate::world::todo::plugin::{host, output, state, timers};
    use crate::world::v0_1::todo::plugin as old;
    use crate::world::{LogLevel, Timestamp};

    impl old::types::Host for HostState {}

    impl old::host::Host for HostState {
        fn log(&mut self, level: old::host::LogLevel, message: String) -> wasmtime::Result<()> {
            let level = match level {
                old::host::LogLevel::Trace => LogLevel::Trace,
                old::host::LogLevel::Debug => LogLevel::Debug,
                old::host::LogLevel::Info => LogLevel::Info,
                old::host::LogLevel::Warn => LogLevel::Warn,
                old::host::LogLevel::Error => LogLevel::Error,
            };
            host::Host::log(self, level, message)
        }

        fn now(&mut self) -> wasmtime::Result<Timestamp> {
            host::Host::now(self)
        }

        fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
            host::Host::config(self, key)
        }
    }

    impl old::state::Host for HostState {
        fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
            state::Host::get(self, key)
        }

        fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
            state::Host::set(self, key, value)
        }

        fn delete(&mut self, key: String) -> wasmtime::Result<()> {
            state::Host::delete(self, key)
        }
    }

    impl old::timers::Host for HostState {
        fn set(&mut self, key: String, due: Timestamp, payload: Vec<u8>) -> wasmtime::Result<()> {
            timers::Host::set(self, key, due, payload)
        }

        fn cancel(&mut self, key: String) -> wasmtime::Result<()> {
            timers::Host::cancel(self, key)
        }

        fn get(&mut self, key: String) -> wasmtime::Result<Option<Timestamp>> {
            timers::Host::get(self, key)
        }
    }

    impl old::output::Host for HostState {
        fn emit(
            &mut self,
            name: String,
            key: Option<String>,
            value: String,
        ) -> wasmtime::Result<()> {
            output::Host::emit(self, name, key, value)
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Enforces the plugin's memory limit — on all of an instance's linear
/// memories together: a component may define several — and remembers
/// what it refused, so the resulting trap can be classified as a memory
/// trap and a limit below a component's minimum named.
pub(super) struct MemoryLimiter {
    limit: usize,
    /// The total asked for when a growth was refused during the current
    /// call or instantiation.
    pub(super) refused: Option<usize>,
    /// The instance's linear memories together, in bytes.
    total: usize,
    /// The largest `total` this instance has had.
    pub(super) peak: usize,
    /// `peak` once the instance had started (its start functions and
    /// `init` run).
    started_at: usize,
}

impl MemoryLimiter {
    /// Whether memory has grown past three quarters of the limit — or, for
    /// an instance that started in over half of it, past half the room it
    /// started with: linear memory never shrinks, so an instance that
    /// leaks (some guest runtimes do, per call) is replaced while it still
    /// has a quarter of its limit, or half its room, to spare. Not past
    /// three quarters alone: a component that starts in most of its limit
    /// would be replaced after every call, its start and `init` paid again
    /// each time.
    pub(super) fn nearly_full(&self) -> bool {
        let half_the_room = self.started_at.saturating_add(self.limit) / 2;
        self.peak > (self.limit / 4 * 3).max(half_the_room)
    }

    /// Marks the instance started: growth is measured from here.
    pub(super) fn started(&mut self) {
        self.started_at = self.peak;
    }

    pub(super) fn new(limit: ByteSize) -> Self {
        Self {
            limit: limit.as_usize(),
            refused: None,
            total: 0,
            peak: 0,
            started_at: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A new memory is created as a growth from 0 to its minimum. A
        // growth approved here can still fail (past the memory's declared
        // maximum); the total then counts it anyway — on the safe side, and
        // only against this instance, which is replaced once it looks
        // nearly full. (Taking it back in `memory_grow_failed` cannot be
        // done safely: wasmtime also calls that for a growth it refused
        // before asking here.)
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The plugin's stdout and stderr: forwarded to the log line by line
/// (through the plugin's [`PluginLog`], so cut, escaped and rate-limited),
/// with the last few KiB kept so a panic message can go into the error.
#[derive(Clone)]
pub(super) struct CapturedOutput {
    inner: Arc<Mutex<OutputBuffer>>,
    log: Arc<PluginLog>,
}

#[derive(Default)]
struct OutputBuffer {
    /// The line being written, up to the log's line limit.
    line: Vec<u8>,
    /// Bytes of the current call, trimmed to [`OUTPUT_TAIL_BYTES`].
    tail: Vec<u8>,
}

impl CapturedOutput {
    pub(super) fn new(log: Arc<PluginLog>) -> Self {
        Self {
            inner: Arc::default(),
            log,
        }
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, OutputBuffer> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, bytes: &[u8]) {
        let mut buf = self.buffer();
        // Only the last bytes can stay, and the tail never holds more
        // than twice what it keeps.
        let last = &bytes[bytes.len().saturating_sub(OUTPUT_TAIL_BYTES)..];
        buf.tail.extend_from_slice(last);
        if buf.tail.len() > OUTPUT_TAIL_BYTES {
            let excess = buf.tail.len() - OUTPUT_TAIL_BYTES;
            buf.tail.drain(..excess);
        }
        let max_line = self.log.max_line();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (chunk, newline) = match rest.iter().position(|b| *b == b'\n') {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            let room = max_line.saturating_sub(buf.line.len());
            buf.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if newline {
                self.log.output(&String::from_utf8_lossy(&buf.line));
                buf.line.clear();
                rest = &rest[chunk.len() + 1..];
            } else {
                rest = &[];
            }
        }
    }

    /// Ends a call: logs a last unterminated line and takes what the plugin
    /// wrote during the call (its tail).
    pub(super) fn take(&self) -> String {
        let mut buf = self.buffer();
        if !buf.line.is_empty() {
            self.log.output(&String::from_utf8_lossy(&buf.line));
            buf.line.clear();
        }
        let text = String::from_utf8_lossy(&buf.tail).into_owned();
        buf.tail.clear();
        text
    }
}

impl wasmtime_wasi::cli::IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl wasmtime_wasi::p2::OutputStream for CapturedOutput {
    /// More than `check-write` permits traps, as WASI says it must
    /// (wasmtime passes any length through).
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if bytes.len() > OUTPUT_WRITE_BYTES {
            return Err(wasmtime_wasi::p2::StreamError::trap(&format!(
                "a write of {} bytes to stdout/stderr exceeds the {OUTPUT_WRITE_BYTES} bytes check-write permits",
                bytes.len()
            )));
        }
        CapturedOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(OUTPUT_WRITE_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let taken = &buf[..buf.len().min(OUTPUT_WRITE_BYTES)];
        CapturedOutput::write(&self, taken);
        std::task::Poll::Ready(Ok(taken.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use wasmtime_wasi::p2::OutputStream;

    use super::*;
    use crate::sandbox::log::LogPolicy;

    /// An instance is replaced past three quarters of its limit, or past
    /// half the room it started with if it started in over half: one that
    /// starts in most of its limit is kept while it does not grow.
    #[test]
    fn growth_is_measured_from_the_start() {
        const MIB: usize = 1 << 20;
        let grow = |limiter: &mut MemoryLimiter, to: usize| {
            let current = limiter.total;
            assert!(limiter.memory_growing(current, to, None).unwrap());
        };
        let mut big = MemoryLimiter::new(ByteSize::mib(64));
        grow(&mut big, 52 * MIB);
        big.started();
        assert!(!big.nearly_full(), "started in 52 of 64 MiB");
        grow(&mut big, 58 * MIB);
        assert!(!big.nearly_full(), "half its 12 MiB of room");
        grow(&mut big, 59 * MIB);
        assert!(big.nearly_full(), "past half its room");

        let mut small = MemoryLimiter::new(ByteSize::mib(64));
        grow(&mut small, 2 * MIB);
        small.started();
        grow(&mut small, 48 * MIB);
        assert!(!small.nearly_full(), "three quarters of the limit");
        grow(&mut small, 49 * MIB);
        assert!(small.nearly_full(), "past three quarters of the limit");
    }

    fn captured() -> (CapturedOutput, Counter) {
        let dropped = Counter::default();
        let log = PluginLog::new("chatty", LogPolicy::default(), dropped.clone());
        (CapturedOutput::new(Arc::new(log)), dropped)
    }

    /// One write of 40 MiB of short lines went through a line at a time
    /// (each past the log's rate limit), in one host call that no deadline
    /// interrupts, and left a tail buffer as large. Now a write is held to
    /// what `check-write` permits; more traps.
    #[test]
    fn a_write_larger_than_check_write_permits_traps() {
        let (mut output, dropped) = captured();
        let permit = output.check_write().expect("permit");
        assert_eq!(permit, OUTPUT_WRITE_BYTES);
        let burst = b"a\n".repeat(20 << 20);
        let err = OutputStream::write(&mut output, burst.into()).expect_err("refused");
        assert!(
            matches!(err, wasmtime_wasi::p2::StreamError::Trap(_)),
            "{err:?}"
        );
        assert!(
            format!("{err:?}").contains("exceeds the 65536 bytes check-write permits"),
            "{err:?}"
        );
        assert_eq!(dropped.get(), 0, "no line was looked at");
        assert_eq!(output.buffer().tail.capacity(), 0, "nothing kept");

        let allowed = b"a\n".repeat(permit / 2);
        OutputStream::write(&mut output, allowed.into()).expect("within the permit");
        assert!(dropped.get() > 0, "the lines went through the rate limit");
        let tail = output.take();
        assert_eq!(tail.len(), OUTPUT_TAIL_BYTES);
        assert!(output.buffer().tail.capacity() <= 2 * OUTPUT_TAIL_BYTES);
    }
}
