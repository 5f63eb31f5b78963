//! The WebAssembly sandbox: one wasmtime [`Engine`] per process, component
//! validation against the `todo:plugin` world, the compiled-component cache,
//! and warm plugin instances with per-call limits.
//!
//! Limits: a pooling allocator sized by [`SandboxConfig::max_instances`];
//! async calls with epoch interruption for a per-call wall-clock deadline
//! (a background thread ticks the epoch; guests yield at every tick); a
//! [`wasmtime::ResourceLimiter`] for per-instance memory; per-call and
//! per-partition [quotas](limits); a rate-limited, escaped [log](log); wasm
//! stack overflow is a trap. WASI is linked but holds nothing: no files, no
//! environment, no network, stdio captured to the log and clocks reading the
//! host's per-call `now` — unless a manifest [grants](grants) more.

mod cache;
mod compile;
mod error;
pub mod grants;
mod host;
mod instance;
pub mod limits;
pub mod log;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use self::cache::{ComponentCache, UntrustedCache};
pub use self::compile::{CHILD_COMMAND, Compiler, child_main};
pub use self::error::{CallError, TrapKind};
pub use self::grants::{GrantPolicy, WasiGrants};
pub use self::host::{
    Effects, Emit, HostState, MAX_KEY_BYTES, MAX_RESOURCES_WITH_FILES, PluginSpec,
    RECORD_OVERHEAD_BYTES,
};
pub use self::instance::Instance;
pub use self::limits::{LimitSettings, Limits, QuotaExceeded};
pub use self::log::{LogPolicy, PluginLog};
use crate::blocking::{Abandoned, FILE_SYSTEM_TIMEOUT, NoAnswer};
use crate::telemetry::{LogThrottle, PluginMetrics, Rate};
use crate::units::ByteSize;
use crate::world::{GuestPre, Plugin as PluginWorld, WitVersion, v0_1};

/// The most core instances one plugin instance may have.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// The most linear memories one plugin instance may have (the memory
/// limit holds them together).
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// The most tables one plugin instance may have.
const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// Sandbox-wide settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Limits for what a manifest leaves out.
    pub default_limits: Limits,
    /// The most a manifest may ask for (`max_limits.memory` is also the
    /// pool's slot size).
    pub max_limits: Limits,
    /// The largest `.wasm` file accepted.
    pub max_component_bytes: ByteSize,
    /// The largest record the producer sends (its `message.max.bytes`);
    /// emits and state values are held to it.
    pub max_record_bytes: usize,
    /// How much each plugin may log.
    pub log: LogPolicy,
    /// Instances the pooling allocator can hold at once (across plugins and
    /// workers).
    pub max_instances: u32,
    /// A warm instance is replaced after this many calls, bounding the
    /// effect of leaks inside a plugin.
    pub max_calls_per_instance: u64,
    /// How often the epoch advances; the granularity of call deadlines.
    pub epoch_tick: Duration,
    /// Write `/tmp/perf-PID.map` naming the compiled plugins' functions, so
    /// `perf report` shows where a plugin spends its time.
    pub perf_map: bool,
    /// Compile in a child process within bounds (the daemon), or, when
    /// `None`, in this process (tests, tools embedding the library).
    pub compiler: Option<Compiler>,
    /// Topics no plugin output may map to, each with the setting that
    /// names it: the changelog (a record there is restored as plugin
    /// state — anyone's) and the dead-letter topic.
    pub reserved_topics: Vec<(String, &'static str)>,
    /// What manifests may grant through WASI.
    pub grants: GrantPolicy,
    /// The topics the daemon consumes: an output mapped to one of them
    /// loops back, so what it emits there is held to
    /// `limits.input_emits_per_call`.
    pub input_topics: Vec<String>,
    /// Topics an output may map to, as names or prefixes ending in `*`;
    /// empty: any but the reserved and internal ones.
    pub allowed_topics: Vec<String>,
}

impl SandboxConfig {
    /// Whether `allowed_topics` lets an output map to `topic`.
    pub fn allows_topic(&self, topic: &str) -> bool {
        self.allowed_topics.is_empty()
            || self
                .allowed_topics
                .iter()
                .any(|allowed| match allowed.strip_suffix('*') {
                    Some(prefix) => topic.starts_with(prefix),
                    None => topic == allowed,
                })
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            default_limits: Limits::DEFAULT,
            max_limits: Limits::MAX,
            max_component_bytes: ByteSize::mib(64),
            max_record_bytes: 1_000_000,
            log: LogPolicy::default(),
            max_instances: 128,
            max_calls_per_instance: 100_000,
            epoch_tick: Duration::from_millis(1),
            perf_map: false,
            compiler: None,
            reserved_topics: Vec::new(),
            input_topics: Vec::new(),
            allowed_topics: Vec::new(),
            grants: GrantPolicy::default(),
        }
    }
}

/// Why a `.wasm` file cannot be used as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (bad magic number)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target"
    )]
    CoreModule,
    /// Compilation failed (truncated or malformed file, unsupported feature).
    #[error("does not compile: {0:#}")]
    Compile(wasmtime::Error),
    /// The component needs an interface the daemon does not provide.
    #[error(
        "imports `{0}`, which todo-eventd does not provide (plugins may import todo:plugin and wasi interfaces)"
    )]
    UnknownImport(String),
    /// The component does not fit the `todo:plugin` world.
    #[error("does not implement the todo:plugin world: {0:#}")]
    WrongWorld(wasmtime::Error),
    /// The component imports interfaces of two `todo:plugin` versions.
    #[error("imports both todo:plugin@{0} and todo:plugin@{1}; build it against one version")]
    MixedVersions(WitVersion, WitVersion),
    /// The component cannot start under its limits (e.g. a memory limit
    /// below what it needs).
    #[error("cannot start under its limits: {0}")]
    Start(String),
    /// The component could not be started because the instance pool is
    /// full: the daemon's capacity, not the file's fault.
    #[error("cannot start now: {0}; tried again at the next rescan")]
    NoRoom(String),
    /// The machine did not carry the compile to its end (no process to be
    /// had, the compiler OOM-killed or out of time on a busy host): not a
    /// verdict on the file, which the registry tries again with a back-off
    /// (a few times).
    #[error("cannot compile now: {0:#}")]
    CannotCompileNow(wasmtime::Error),
}

/// The engine, linker and cache shared by every plugin in the process.
pub struct Sandbox {
    engine: Engine,
    /// The settings `engine` was built from; components are compiled by an
    /// engine of their own with them (see [`compile`]).
    wasm_config: Config,
    linker: Linker<HostState>,
    cache: Option<ComponentCache>,
    config: SandboxConfig,
    metrics: Arc<PluginMetrics>,
    ticker: Option<EpochTicker>,
    /// Granted directories looked up and opened (at a load, at each new
    /// instance) on the daemon's blocking pool, keyed by the directories:
    /// a mount that stops answering holds some of its threads (at most
    /// [`crate::blocking::MAX_UNANSWERED`] run such work at once), never a
    /// runtime worker, and later tries under its key fail at once until it
    /// answers.
    lookups: Abandoned,
}

/// Why [`Sandbox::check_grants`] refused a manifest's grants.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The policy refuses them; the message names the manifest key.
    #[error("{0}")]
    Refused(String),
    /// The directories were not looked up in time (a hung mount): not a
    /// verdict on the manifest.
    #[error("wasi.dirs: looking the directories up: {0}")]
    NoAnswer(#[from] NoAnswer),
}

impl Sandbox {
    /// A sandbox whose plugin metrics nobody reads (tests, tools).
    pub fn new(config: SandboxConfig) -> wasmtime::Result<Self> {
        Self::with_metrics(config, Arc::default())
    }

    /// Builds the engine (pooling allocator, epoch interruption), the linker
    /// with the plugin imports and WASI, and starts the epoch ticker.
    /// Per-plugin counters the sandbox keeps (log lines dropped) go to
    /// `metrics`.
    pub fn with_metrics(
        config: SandboxConfig,
        metrics: Arc<PluginMetrics>,
    ) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let max_instances = config.max_instances.max(1);
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances.saturating_mul(4))
            .total_memories(max_instances.saturating_mul(2))
            .total_tables(max_instances.saturating_mul(4))
            .max_memory_size(config.max_limits.memory.as_usize())
            // What one instance may take of the pool's totals (wasmtime
            // allows any number): a component of many core module
            // instances would otherwise take the slots other plugins'
            // instances need. A Rust plugin has 3 core modules (each
            // instantiated once), 1 memory and 2 tables; a Python one
            // (componentize-py) 14 modules, 1 memory, 2 tables.
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT);
        let mut wasm = compile::base_config();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if config.perf_map {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm)?;

        let mut linker = Linker::new(&engine);
        PluginWorld::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)?;
        v0_1::Plugin::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;

        let cache = config.cache_dir.clone().and_then(|dir| {
            ComponentCache::open(dir, &engine)
                .inspect_err(|err| {
                    tracing::warn!(error = %err, "Not using the compiled-component cache: plugins are compiled at every start.");
                })
                .ok()
        });
        let ticker = Some(EpochTicker::start(engine.clone(), config.epoch_tick)?);
        Ok(Self {
            engine,
            wasm_config: wasm,
            linker,
            cache,
            config,
            metrics,
            ticker,
            lookups: Abandoned::default(),
        })
    }

    /// Checks a manifest's grants against the operator's policy
    /// ([`GrantPolicy::check`]), returning them with every directory
    /// resolved to its real path. Directories are looked up on the
    /// daemon's blocking pool; one that does not answer within 30 s (a
    /// hung network mount) fails the check as [`GrantError::NoAnswer`].
    pub async fn check_grants(&self, grants: &WasiGrants) -> Result<WasiGrants, GrantError> {
        if grants.dirs.is_empty() {
            return self
                .config
                .grants
                .check(grants)
                .map_err(GrantError::Refused);
        }
        let key = grants::lookup_key(&grants.dirs);
        let (policy, grants) = (self.config.grants.clone(), grants.clone());
        self.lookups
            .run(&key, FILE_SYSTEM_TIMEOUT, move || policy.check(&grants))
            .await?
            .map_err(GrantError::Refused)
    }

    /// The log of plugin `name`, rate-limited under the sandbox's policy.
    pub fn plugin_log(&self, name: &str) -> Arc<PluginLog> {
        Arc::new(PluginLog::new(
            name,
            self.config.log,
            self.metrics.log_dropped(name),
        ))
    }

    /// The daemon's warnings about plugin `name`'s failed calls, held to
    /// [`Rate::WARNINGS`]: a plugin that fails every call cannot flood the
    /// log through them.
    pub fn plugin_warnings(&self, name: &str) -> LogThrottle {
        LogThrottle::new(name, Rate::WARNINGS, self.metrics.warnings_suppressed(name))
    }

    /// The sandbox settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The SHA-256 of a plugin file, as shown to operators.
    pub fn content_hash(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Compiles (or loads from cache) and validates a component against the
    /// version of the `todo:plugin` world it imports, returning what is
    /// needed to instantiate it.
    pub fn prepare(&self, bytes: &[u8]) -> Result<GuestPre<HostState>, ValidateError> {
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(ValidateError::CoreModule),
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            _ => return Err(ValidateError::NotWasm),
        }
        let component = self.compile(bytes)?;
        let mut version = None;
        for (name, item) in component.component_type().imports(&self.engine) {
            let ours = WitVersion::of_import(name);
            let provided = ours.is_some() || name.starts_with("wasi:");
            if !provided || !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
                // The name is the file's: up to 100 000 bytes.
                return Err(ValidateError::UnknownImport(crate::text::quote_bounded(
                    name, 256,
                )));
            }
            match (version, ours) {
                (Some(seen), Some(this)) if seen != this => {
                    return Err(ValidateError::MixedVersions(seen, this));
                }
                (None, Some(this)) => version = Some(this),
                _ => {}
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(ValidateError::WrongWorld)?;
        match version {
            Some(version) => GuestPre::new(version, pre).map_err(ValidateError::WrongWorld),
            // A component that imports nothing of ours: whichever world its
            // exports fit, newest first.
            None => GuestPre::new(WitVersion::V0_2, pre.clone())
                .or_else(|_| GuestPre::new(WitVersion::V0_1, pre))
                .map_err(ValidateError::WrongWorld),
        }
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, ValidateError> {
        let hash = Self::content_hash(bytes);
        if let Some(component) = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &hash))
        {
            tracing::debug!(hash = %&hash[..12], "Loaded compiled component from cache.");
            return Ok(component);
        }
        let started = std::time::Instant::now();
        let compiled = match &self.config.compiler {
            Some(compiler) => compile::in_child(compiler, bytes).map_err(|err| match err {
                compile::ChildError::Refused(err) => ValidateError::Compile(err),
                compile::ChildError::Machine(err) => ValidateError::CannotCompileNow(err),
            }),
            None => compile::precompile(&self.wasm_config, bytes).map_err(ValidateError::Compile),
        };
        let component = compiled.and_then(|artifact| {
                tracing::debug!(hash = %&hash[..12], elapsed = ?started.elapsed(), "Compiled component.");
                self.load_compiled(&hash, &artifact)
            });
        // The compile's buffers and the artifact bytes are dropped by now,
        // whether it succeeded or not.
        crate::heap::release_freed_memory();
        component
    }

    /// The component a fresh compile made: stored in the cache and mapped
    /// from there, or loaded from the bytes when there is no cache or the
    /// entry cannot be stored or mapped.
    fn load_compiled(&self, hash: &str, artifact: &[u8]) -> Result<Component, ValidateError> {
        let from_bytes = || compile::load(&self.engine, artifact).map_err(ValidateError::Compile);
        match &self.cache {
            Some(cache) if cache.store(hash, artifact) => {
                cache.adopt(&self.engine, hash).or_else(|mapped| {
                    let loaded = from_bytes();
                    if loaded.is_ok() {
                        tracing::warn!(
                            dir = %cache.dir().display(),
                            error = %mapped,
                            "A compiled component loads from memory but not from the cache directory \
                             (a noexec mount, or an entry not trusted: see the error); it is compiled \
                             again at each start."
                        );
                    }
                    loaded
                })
            }
            _ => from_bytes(),
        }
    }

    /// The WASI interfaces a component imports (for `plugins check`).
    pub fn wasi_imports(&self, pre: &GuestPre<HostState>) -> BTreeSet<String> {
        pre.instance_pre()
            .component()
            .component_type()
            .imports(&self.engine)
            .filter(|(name, _)| name.starts_with("wasi:"))
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// Creates a warm instance of a prepared plugin.
    pub async fn instantiate(
        &self,
        pre: &GuestPre<HostState>,
        spec: Arc<PluginSpec>,
    ) -> Result<Instance, CallError> {
        Instance::new(&self.engine, pre, spec, &self.config, &self.lookups).await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

/// Advances the engine epoch on a fixed tick, so a call that runs past its
/// deadline traps.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::Store;
    use wasmtime::component::Linker;

    use super::host::MemoryLimiter;
    use super::*;

    /// Compiles a bare component as plugins are compiled and instantiates
    /// it in the sandbox's engine under a memory limit; returns the error,
    /// if any, and what the limiter saw.
    async fn instantiate(
        sandbox: &Sandbox,
        wat: &str,
        limit: ByteSize,
    ) -> (Result<(), String>, MemoryLimiter) {
        let mut store = Store::new(&sandbox.engine, MemoryLimiter::new(limit));
        let component = match sandbox.compile(wat.as_bytes()) {
            Ok(component) => component,
            Err(err) => return (Err(err.to_string()), store.into_data()),
        };
        store.limiter(|limiter| limiter);
        let result = Linker::new(&sandbox.engine)
            .instantiate_async(&mut store, &component)
            .await
            .map(drop)
            .map_err(|e| format!("{e:#}"));
        (result, store.into_data())
    }

    /// A component of `modules` core modules, each instantiated once and
    /// each with a memory of `pages` 64 KiB pages.
    fn modules_with_memories(modules: usize, pages: u32) -> String {
        let mut wat = String::from("(component");
        for i in 0..modules {
            wat += &format!(
                " (core module $m{i} (memory {pages})) (core instance (instantiate $m{i}))"
            );
        }
        wat + ")"
    }

    #[tokio::test]
    async fn the_memory_limit_holds_all_of_an_instances_memories_together() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let limit = ByteSize::mib(64);
        // One memory of 40 MiB fits…
        let (one, limiter) = instantiate(&sandbox, &modules_with_memories(1, 640), limit).await;
        assert_eq!(one, Ok(()));
        assert_eq!(limiter.peak, 40 << 20);
        // …two do not, though each alone would.
        let (two, limiter) = instantiate(&sandbox, &modules_with_memories(2, 640), limit).await;
        assert!(two.is_err());
        assert_eq!(limiter.refused, Some(80 << 20));
        assert_eq!(limiter.peak, 40 << 20);
    }

    #[tokio::test]
    async fn one_instance_cannot_take_the_pools_slots() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let limit = ByteSize::mib(64);
        let count = MAX_CORE_INSTANCES_PER_COMPONENT as usize;
        let mut many = String::from("(component (core module $empty)");
        for _ in 0..=count {
            many += " (core instance (instantiate $empty))";
        }
        many += ")";
        let (result, _) = instantiate(&sandbox, &many, limit).await;
        let err = result.unwrap_err();
        assert!(
            err.starts_with("does not compile") && err.contains("33 core module instances"),
            "{err}"
        );
        // Memories are held to their own count (one per core module).
        let memories = MAX_MEMORIES_PER_COMPONENT as usize + 1;
        let (result, _) = instantiate(&sandbox, &modules_with_memories(memories, 1), limit).await;
        let err = result.unwrap_err();
        assert!(err.contains("memories"), "{err}");
    }
}
