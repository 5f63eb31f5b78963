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
//!
//! A plugin's bytes are untrusted, and compiling is where they cost the
//! most: a 59 MB component of a dozen huge functions (under the 64 MiB
//! file limit) took Cranelift 0.9 GB and 18 s on two threads — and more
//! with every thread compiling at once, so gigabytes on a large machine:
//! enough to get the daemon OOM-killed at every start, since it compiles
//! its plugins as it starts. So the daemon compiles in a child process —
//! itself, run as `todo-eventd compile-component` ([`child_main`]) — that
//! is killed once its resident memory passes [`Compiler::memory`] or it
//! runs past [`Compiler::timeout`] ([`in_child`]); the plugin is then
//! rejected, naming the bound, and the daemon never held the memory.

// Loading an artifact is `unsafe` in wasmtime: the bytes are executed as
// native code. The only bytes loaded here are the ones `precompile_component`
// returned a moment before, from an engine with the same settings.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use crate::units::ByteSize;

/// The argument that makes the `todo-eventd` binary a compiler child.
const CHILD_COMMAND: &str = "compile-component";

/// How often the child's memory and time are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// How much of the child's stderr is kept for the error message.
const STDERR_KEPT: usize = 2048;

/// Compiling in a child process: which program, and its bounds.
#[derive(Debug, Clone)]
pub struct Compiler {
    /// The `todo-eventd` binary, run as `PROGRAM compile-component`.
    pub program: PathBuf,
    /// The most resident memory the child may use.
    pub memory: ByteSize,
    /// The longest it may take.
    pub timeout: Duration,
}

/// The settings every engine of the daemon shares, compiled code depends
/// on, and a child must compile with (wasmtime checks that they match when
/// the artifact is loaded).
pub(super) fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}

/// Compiles `bytes` in an engine built from `config` (the settings the
/// daemon's engine was built from) and returns the artifact: what the
/// on-disk cache stores and [`load`] reads.
pub(super) fn precompile(config: &Config, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
    let mut config = config.clone();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&config)?.precompile_component(bytes)
}

/// Threads the compiler child compiles functions on: the memory a compile
/// takes grows with the functions compiled at once, so this keeps
/// [`Compiler::memory`] meaning the same on a 2-core and a 64-core machine.
const CHILD_THREADS: usize = 2;

/// The compiler child's work: a component's bytes on `input`, its artifact
/// (compiled with [`base_config`], on [`CHILD_THREADS`] threads) on
/// `output`.
pub fn child_main(mut input: impl Read, mut output: impl Write) -> anyhow::Result<()> {
    // Die with the daemon: an orphaned compile would run on unwatched.
    // SAFETY: `prctl(PR_SET_PDEATHSIG)` takes a signal number and touches
    // no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // wasmtime compiles functions in parallel on rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(CHILD_THREADS)
        .build_global()?;
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let artifact = precompile(&base_config(), &bytes)?;
    output.write_all(&artifact)?;
    output.flush()?;
    Ok(())
}

/// Why the child was stopped.
#[derive(Debug, Clone, Copy)]
enum Breach {
    Memory(u64),
    Time,
}

/// Compiles `bytes` in a child process within `compiler`'s bounds.
pub(super) fn in_child(compiler: &Compiler, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
    let mut child = Command::new(&compiler.program)
        .arg(CHILD_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            wasmtime::format_err!(
                "cannot start the compiler ({}): {err}",
                compiler.program.display()
            )
        })?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        let (limit, timeout) = (compiler.memory.bytes(), compiler.timeout);
        std::thread::spawn(move || watch(pid, limit, timeout, &done))
    };
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (artifact, errors) = std::thread::scope(|scope| {
        let feed = scope.spawn(|| {
            if let Some(mut stdin) = stdin.take() {
                // A child that died early closes the pipe: its exit says why.
                let _ = stdin.write_all(bytes);
            }
        });
        let errors = scope.spawn(|| {
            let mut kept = Vec::new();
            if let Some(mut stderr) = stderr.take() {
                let _ = (&mut stderr)
                    .take(STDERR_KEPT as u64)
                    .read_to_end(&mut kept);
                // The rest is drained, so a chatty child never blocks.
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            }
            kept
        });
        let mut artifact = Vec::new();
        let read = match stdout.take() {
            Some(mut out) => out.read_to_end(&mut artifact).map(drop),
            None => Ok(()),
        };
        let _ = feed.join();
        (read.map(|()| artifact), errors.join().unwrap_or_default())
    });
    // Until here the child is not reaped, so its pid cannot be reused
    // under the watchdog.
    done.store(true, Ordering::Relaxed);
    let breach = watchdog.join().unwrap_or(None);
    let status = child.wait()?;
    match breach {
        Some(Breach::Memory(used)) => {
            return Err(wasmtime::format_err!(
                "compiling it took more than {} of memory (at least {}; \
                 sandbox.compile_memory)",
                compiler.memory,
                ByteSize(used)
            ));
        }
        Some(Breach::Time) => {
            return Err(wasmtime::format_err!(
                "compiling it took longer than {} (sandbox.compile_timeout)",
                humantime::format_duration(compiler.timeout)
            ));
        }
        None => {}
    }
    if !status.success() {
        let errors = String::from_utf8_lossy(&errors);
        let errors = errors
            .trim()
            .strip_prefix("error: ")
            .unwrap_or(errors.trim());
        return Err(wasmtime::format_err!(
            "the compiler {status}: {}",
            crate::text::message(errors)
        ));
    }
    artifact.map_err(|err| wasmtime::format_err!("reading the compiler's output: {err}"))
}

/// Watches child `pid` until `done`, killing it once its resident memory
/// passes `limit` bytes or it runs past `timeout`; says which.
fn watch(pid: u32, limit: u64, timeout: Duration, done: &AtomicBool) -> Option<Breach> {
    let started = Instant::now();
    while !done.load(Ordering::Relaxed) {
        let breach = match resident_bytes(pid) {
            Some(used) if used > limit => Some(Breach::Memory(used)),
            _ if started.elapsed() > timeout => Some(Breach::Time),
            _ => None,
        };
        if let Some(breach) = breach {
            // SAFETY: `kill` has no memory-safety preconditions; `pid` is
            // our unreaped child (see `in_child`), so it names no other
            // process.
            unsafe { libc::kill(i32::try_from(pid).unwrap_or(i32::MAX), libc::SIGKILL) };
            return Some(breach);
        }
        std::thread::sleep(WATCH_EVERY);
    }
    None
}

/// The resident memory of process `pid` (`VmRSS`), if it can be read.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The component `artifact` (from [`precompile`]) holds, for `engine`.
pub(super) fn load(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: see the module comment — `artifact` is what an engine with
    // `engine`'s settings compiled just now; wasmtime still checks that the
    // settings match and fails otherwise.
    unsafe { Component::deserialize(engine, artifact) }
}
