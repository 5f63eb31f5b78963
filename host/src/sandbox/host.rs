//! The data each plugin store carries, and the host side of the plugin's
//! imports: logging, the clock, config, buffered state/timer changes and
//! emits.
//!
//! Nothing a call does touches durable state directly: reads see the
//! partition's [`PluginState`] overlaid with the call's own writes, and all
//! writes go to [`Effects`], which the caller applies only when the call
//! returns `ok`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::error::Denied;
use crate::state::{PluginState, StateChanges, Timer};
use crate::world::todo::plugin::{host, output, state, timers, types};
use crate::world::{LogLevel, Timestamp};

/// Keys longer than this are refused.
const MAX_KEY_BYTES: usize = 1024;
/// State values and timer payloads larger than this are refused.
const MAX_VALUE_BYTES: usize = 1 << 20;
/// Emits per call beyond this are refused.
const MAX_EMITS_PER_CALL: usize = 10_000;
/// How much of a plugin's stdout/stderr is kept for error messages.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// What the sandbox needs to know about a plugin to run it: the resolved
/// manifest.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The plugin's name (its file stem).
    pub name: String,
    /// Logical output name → topic.
    pub outputs: BTreeMap<String, String>,
    /// Values for the `config` import.
    pub config: BTreeMap<String, String>,
    /// Maximum linear memory per instance, in bytes.
    pub memory_limit: u64,
    /// Maximum wall time per call.
    pub call_timeout: Duration,
    /// Ambient capabilities.
    pub wasi: crate::plugin::manifest::WasiGrants,
}

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

/// Store data of one plugin instance.
pub struct HostState {
    pub(super) spec: Arc<PluginSpec>,
    /// The host's time for the current call; also what WASI clocks report
    /// unless the plugin was granted ambient clocks.
    pub(super) now: Arc<AtomicI64>,
    /// The partition's state, moved in for the duration of a call.
    pub(super) state: PluginState,
    pub(super) effects: Effects,
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
        let limiter = MemoryLimiter::new(spec.memory_limit);
        Self {
            spec,
            now,
            state: PluginState::default(),
            effects: Effects::default(),
            limiter,
            output,
            wasi,
            table: ResourceTable::new(),
        }
    }

    fn now(&self) -> Timestamp {
        self.now.load(Ordering::Relaxed)
    }
}

fn check_key(what: &str, key: &str) -> wasmtime::Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Denied(format!(
            "{what} key of {} bytes exceeds {MAX_KEY_BYTES}",
            key.len()
        ))
        .into());
    }
    Ok(())
}

fn check_value(what: &str, len: usize) -> wasmtime::Result<()> {
    if len > MAX_VALUE_BYTES {
        return Err(Denied(format!("{what} of {len} bytes exceeds {MAX_VALUE_BYTES}")).into());
    }
    Ok(())
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let plugin = self.spec.name.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
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
        Ok(match self.effects.changes.values.get(&key) {
            Some(pending) => pending.clone(),
            None => self.state.get(&key).map(<[u8]>::to_vec),
        })
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        check_key("state", &key)?;
        check_value("state value", value.len())?;
        self.effects.changes.values.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        check_key("state", &key)?;
        self.effects.changes.values.insert(key, None);
        Ok(())
    }
}

impl timers::Host for HostState {
    fn set(&mut self, key: String, due: Timestamp, payload: Vec<u8>) -> wasmtime::Result<()> {
        check_key("timer", &key)?;
        check_value("timer payload", payload.len())?;
        self.effects
            .changes
            .timers
            .insert(key, Some(Timer { due, payload }));
        Ok(())
    }

    fn cancel(&mut self, key: String) -> wasmtime::Result<()> {
        check_key("timer", &key)?;
        self.effects.changes.timers.insert(key, None);
        Ok(())
    }

    fn get(&mut self, key: String) -> wasmtime::Result<Option<Timestamp>> {
        Ok(match self.effects.changes.timers.get(&key) {
            Some(pending) => pending.as_ref().map(|t| t.due),
            None => self.state.timer(&key).map(|t| t.due),
        })
    }
}

impl output::Host for HostState {
    fn emit(&mut self, name: String, key: Option<String>, value: String) -> wasmtime::Result<()> {
        let Some(topic) = self.spec.outputs.get(&name) else {
            let granted: Vec<_> = self.spec.outputs.keys().map(String::as_str).collect();
            return Err(Denied(format!(
                "emit to output \"{name}\", which the manifest does not map (mapped: {})",
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            ))
            .into());
        };
        if self.effects.emits.len() >= MAX_EMITS_PER_CALL {
            return Err(Denied(format!("more than {MAX_EMITS_PER_CALL} emits in one call")).into());
        }
        check_value("emitted value", value.len())?;
        self.effects.emits.push(Emit {
            output: name,
            topic: topic.clone(),
            key,
            value,
        });
        Ok(())
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

/// Enforces the plugin's memory limit and remembers whether it had to
/// refuse, so the resulting trap can be classified as a memory trap.
pub(super) struct MemoryLimiter {
    limit: usize,
    /// Set when a growth was refused during the current call.
    pub(super) refused: bool,
    /// The largest linear memory this instance has had.
    pub(super) peak: usize,
}

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            refused: false,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
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

/// The plugin's stdout and stderr: forwarded to the log line by line, with
/// the last few KiB kept so a panic message can go into the error.
#[derive(Clone, Default)]
pub(super) struct CapturedOutput {
    inner: Arc<Mutex<OutputBuffer>>,
}

#[derive(Default)]
struct OutputBuffer {
    /// Bytes of the current call, trimmed to [`OUTPUT_TAIL_BYTES`].
    tail: Vec<u8>,
}

impl CapturedOutput {
    fn write(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        buf.tail.extend_from_slice(bytes);
        if buf.tail.len() > OUTPUT_TAIL_BYTES {
            let excess = buf.tail.len() - OUTPUT_TAIL_BYTES;
            buf.tail.drain(..excess);
        }
    }

    /// Takes what the plugin wrote since the last call.
    pub(super) fn take(&self) -> String {
        let mut buf = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
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
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        CapturedOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
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
        CapturedOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
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
