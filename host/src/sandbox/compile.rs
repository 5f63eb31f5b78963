//! Compiling components in a throwaway engine, so the compiler's memory
//! leaves with it.
//!
//! Cranelift keeps its per-thread compilation contexts (buffers sized for
//! the largest function it has seen) for the life of the engine that
//! compiled, and glibc keeps what the compile threads freed in their arenas.
//! Compiled in the daemon's own engine, the bundled plugins left ≈ 40 MiB of
//! heap resident for as long as the daemon ran (69 MiB idle against 25 MiB
//! when loaded from the cache), and each plugin a hot reload compiled could
//! add more. So a component is compiled by an engine made for that one job —
//! the same settings, minus the pooling allocator, which compiled code does
//! not depend on (the pool's limits are checked when the daemon's engine
//! loads the artifact) — and the freed memory is handed back to the kernel
//! ([`crate::heap`]). The daemon's engine then maps the artifact from the
//! on-disk cache, so only the pages in use are resident, or, without a
//! cache, loads it from the bytes.

// Loading an artifact is `unsafe` in wasmtime: the bytes are executed as
// native code. The only bytes loaded here are the ones `precompile_component`
// returned a moment before, from an engine with the same settings.
#![allow(unsafe_code)]

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

/// Compiles `bytes` in an engine built from `config` (the settings the
/// daemon's engine was built from) and returns the artifact: what the
/// on-disk cache stores and [`load`] reads.
pub(super) fn precompile(config: &Config, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
    let mut config = config.clone();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&config)?.precompile_component(bytes)
}

/// The component `artifact` (from [`precompile`]) holds, for `engine`.
pub(super) fn load(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: see the module comment — `artifact` is what an engine with
    // `engine`'s settings compiled just now; wasmtime still checks that the
    // settings match and fails otherwise.
    unsafe { Component::deserialize(engine, artifact) }
}
