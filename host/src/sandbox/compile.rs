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
//!
//! Not every failed compile is a verdict on the bytes, though: a child that
//! cannot be started, is killed by the kernel's OOM killer, runs out of
//! time on a host busy with something else, cannot start its threads or is
//! refused an allocation (it exits with [`EXIT_MACHINE`], or aborts saying
//! so) may compile the same bytes next time. Those are
//! [`ChildError::Machine`], which the registry tries again with a back-off
//! instead of refusing the file until it is edited.

// Loading an artifact is `unsafe` in wasmtime: the bytes are executed as
// native code. The only bytes loaded here are the ones `precompile_component`
// returned a moment before, from an engine with the same settings.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use crate::units::ByteSize;

/// The argument that makes the `todo-eventd` binary a compiler child.
pub const CHILD_COMMAND: &str = "compile-component";

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

/// Why a compile in the child failed.
#[derive(Debug)]
pub(super) enum ChildError {
    /// A verdict on the bytes: the compiler refused them, or compiling them
    /// took more memory than allowed (the same bytes take the same memory).
    Refused(wasmtime::Error),
    /// Not a verdict on the bytes: the machine did not carry the compile to
    /// its end. No process, thread or engine could be started, an
    /// allocation was refused, the compiler was killed by something other
    /// than its bounds (the kernel's OOM killer), its output could not be
    /// read, or it ran past its time — wall time, which a busy host
    /// stretches. (The CPU time it had is told, but does not decide: a
    /// component refused for good on a contended host would stay down until
    /// edited, while one retried costs at most the registry's few tries.)
    Machine(wasmtime::Error),
}

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(err) | Self::Machine(err) => write!(f, "{err:#}"),
        }
    }
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
    compiling_engine(config)?.precompile_component(bytes)
}

/// An engine made from `config` for compiling alone: no pooling
/// allocator, which compiled code does not depend on.
fn compiling_engine(config: &Config) -> wasmtime::Result<Engine> {
    let mut config = config.clone();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&config)
}

/// Threads the compiler child compiles functions on: the memory a compile
/// takes grows with the functions compiled at once, so this keeps
/// [`Compiler::memory`] meaning the same on a 2-core and a 64-core machine.
const CHILD_THREADS: usize = 2;

/// The exit status of a compiler child that failed for the machine's sake,
/// not the bytes' (`EX_TEMPFAIL` of sysexits.h): the parent tries such a
/// compile again later ([`ChildError::Machine`]). Any other failure is a
/// verdict on the bytes.
const EXIT_MACHINE: u8 = 75;

/// Whether `stderr` ends with what Rust's default allocation error handler
/// prints before it aborts (`memory allocation of N bytes failed`). An
/// allocation the host refused is taken as the machine's doing (memory the
/// host lacks, a cgroup, overcommit settings): the watchdog holds the
/// bytes' own appetite to [`Compiler::memory`], and should they have asked
/// for one huge block, the registry's cap on tries bounds what retrying
/// costs.
fn allocation_failed(stderr: &str) -> bool {
    stderr
        .lines()
        .next_back()
        .and_then(|line| line.strip_prefix("memory allocation of "))
        .and_then(|rest| rest.strip_suffix(" bytes failed"))
        .is_some_and(|bytes| !bytes.is_empty() && bytes.bytes().all(|b| b.is_ascii_digit()))
}

/// Why the compiler child's work failed: a verdict on the bytes, or the
/// machine's doing (the exit status tells the parent which).
#[derive(Debug, thiserror::Error)]
enum ChildFailure {
    /// wasmtime refused the bytes.
    #[error("{0:#}")]
    Refused(wasmtime::Error),
    /// Not the bytes' fault: the child could not start its threads, read
    /// its input, make an engine or write its output.
    #[error("{doing}: {error}")]
    Machine {
        doing: &'static str,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ChildFailure {
    fn machine(doing: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |err| Self::Machine {
            doing,
            error: err.into(),
        }
    }
}

/// The compiler child's work: a component's bytes on `input`, its artifact
/// (compiled with [`base_config`], on [`CHILD_THREADS`] threads) on
/// `output`. The binary runs it before setting up logging or a runtime
/// (see `main.rs`), so nothing but the artifact reaches `output`; an error
/// goes last on stderr, and the exit status tells the parent whether it is
/// a verdict on the bytes ([`EXIT_MACHINE`] when it is not).
pub fn child_main(input: impl Read, output: impl Write) -> std::process::ExitCode {
    // Should the container run short of memory, the kernel is to kill this
    // compile rather than the daemon. Best effort.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    // wasmtime compiles functions in parallel on rayon's global pool; its
    // threads may not start under a `pids.max` or a thread limit (EAGAIN).
    let compiled = rayon::ThreadPoolBuilder::new()
        .num_threads(CHILD_THREADS)
        .build_global()
        .map_err(|err| ChildFailure::Machine {
            doing: "cannot start a compile thread",
            error: err.into(),
        })
        .and_then(|()| compile_stream(input, output));
    match compiled {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            match failure {
                ChildFailure::Machine { .. } => std::process::ExitCode::from(EXIT_MACHINE),
                ChildFailure::Refused(_) => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// Compiles the component on `input` to an artifact on `output`, each
/// failure marked as the machine's or the bytes'.
fn compile_stream(mut input: impl Read, mut output: impl Write) -> Result<(), ChildFailure> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(ChildFailure::machine("reading the component"))?;
    // An engine that cannot be made (its memory mapped, say) is the
    // machine's failure; only the compile itself judges the bytes.
    let engine = compiling_engine(&base_config()).map_err(|err| ChildFailure::Machine {
        doing: "cannot make an engine",
        error: format!("{err:#}").into(),
    })?;
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(ChildFailure::Refused)?;
    output
        .write_all(&artifact)
        .and_then(|()| output.flush())
        .map_err(ChildFailure::machine("writing the artifact"))
}

/// Why the child was stopped.
#[derive(Debug, Clone, Copy)]
enum Breach {
    Memory(u64),
    /// With the CPU time it had used, if that could be read.
    Time(Option<Duration>),
}

/// A child killed and reaped however the parent leaves (an error, a
/// panic), so none is left running unwatched or as a zombie.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Compiles `bytes` in a child process within `compiler`'s bounds.
pub(super) fn in_child(compiler: &Compiler, bytes: &[u8]) -> Result<Vec<u8>, ChildError> {
    let machine = |err: std::io::Error, doing: &str| {
        ChildError::Machine(wasmtime::format_err!("{doing}: {err}"))
    };
    let mut command = Command::new(&compiler.program);
    command
        .arg(CHILD_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only `prctl`, which is
    // async-signal-safe and touches no memory of ours, runs. It makes the
    // child die with this thread, which waits for it below: an orphaned
    // compile would run on unwatched.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|err| {
        let doing = format!("cannot start the compiler ({})", compiler.program.display());
        machine(err, &doing)
    })?;
    let pid = child.id();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let mut child = Reaped(Some(child));
    let done = AtomicBool::new(false);
    // A thread that cannot be started ends the child, so the threads
    // already started (which wait on its pipes) end too.
    let abort = |err: std::io::Error| {
        kill(pid);
        err
    };
    let (output, errors, breach) = std::thread::scope(|scope| {
        let feed = std::thread::Builder::new()
            .spawn_scoped(scope, move || {
                if let Some(mut stdin) = stdin {
                    // A child that died early closes the pipe: its exit
                    // says why.
                    let _ = stdin.write_all(bytes);
                }
            })
            .map_err(abort)?;
        let errors = std::thread::Builder::new()
            .spawn_scoped(scope, move || {
                stderr
                    .map(|stderr| tail(stderr, STDERR_KEPT))
                    .unwrap_or_default()
            })
            .map_err(abort)?;
        let (limit, timeout, done) = (compiler.memory.bytes(), compiler.timeout, &done);
        let watchdog = std::thread::Builder::new()
            .name("compile-watch".into())
            .spawn_scoped(scope, move || watch(pid, limit, timeout, done))
            .map_err(abort)?;
        let mut artifact = Vec::new();
        let read = match stdout {
            Some(mut out) => out.read_to_end(&mut artifact).map(drop),
            None => Ok(()),
        };
        let _ = feed.join();
        let errors = errors.join().unwrap_or_default();
        // Until here the child is not reaped, so its pid cannot be reused
        // under the watchdog.
        done.store(true, Ordering::Relaxed);
        let breach = watchdog.join().unwrap_or(None);
        std::io::Result::Ok((read.map(|()| artifact), errors, breach))
    })
    .map_err(|err| machine(err, "cannot start a thread to watch the compiler"))?;
    let status = match child.0.take() {
        Some(mut child) => child
            .wait()
            .map_err(|err| machine(err, "waiting for the compiler"))?,
        None => {
            return Err(ChildError::Machine(wasmtime::format_err!(
                "the compiler is gone"
            )));
        }
    };
    match breach {
        // The child finished on its own and the watchdog's kill came after
        // (while its output was being read): the artifact is whole.
        Some(Breach::Time(_)) if status.success() => {}
        Some(Breach::Memory(used)) => {
            return Err(ChildError::Refused(wasmtime::format_err!(
                "compiling it took more than {} of memory (at least {}; \
                 sandbox.compile_memory)",
                compiler.memory,
                ByteSize(used)
            )));
        }
        Some(Breach::Time(cpu)) => {
            // The CPU time it had tells an operator whether to raise the
            // bound (it computed all along) or look at the host (it waited).
            let cpu = cpu.map_or_else(String::new, |cpu| {
                format!(
                    ", {} of CPU time",
                    humantime::format_duration(whole_millis(cpu))
                )
            });
            return Err(ChildError::Machine(wasmtime::format_err!(
                "compiling it took longer than {} (sandbox.compile_timeout{cpu})",
                humantime::format_duration(compiler.timeout)
            )));
        }
        None => {}
    }
    if status.signal() == Some(libc::SIGKILL) {
        return Err(ChildError::Machine(wasmtime::format_err!(
            "the compiler was killed, not by its bounds (out of memory? sandbox.compile_memory \
             must fit in the memory the daemon has)"
        )));
    }
    if !status.success() {
        // Its error comes last (`child_main` prints it), after any log lines.
        let errors = String::from_utf8_lossy(&errors);
        let errors = errors.trim();
        let error = match errors.rfind("error: ") {
            Some(at) => &errors[at + "error: ".len()..],
            None => errors.lines().last().unwrap_or_default(),
        };
        let error = wasmtime::format_err!(
            "the compiler failed ({status}): {}",
            crate::text::message(error)
        );
        let machine = status.code() == Some(i32::from(EXIT_MACHINE))
            || (status.signal() == Some(libc::SIGABRT) && allocation_failed(errors));
        return Err(if machine {
            ChildError::Machine(error)
        } else {
            ChildError::Refused(error)
        });
    }
    output.map_err(|err| machine(err, "reading the compiler's output"))
}

/// The last `keep` bytes `reader` gives before it ends (an error message
/// comes last, after any log lines).
fn tail(mut reader: impl Read, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep * 2);
    let mut chunk = [0; 4096];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > keep * 2 {
                    kept.drain(..kept.len() - keep);
                }
            }
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    kept
}

/// Watches child `pid` until `done`, killing it once its resident memory
/// passes `limit` bytes or it runs past `timeout`; says which.
fn watch(pid: u32, limit: u64, timeout: Duration, done: &AtomicBool) -> Option<Breach> {
    let started = Instant::now();
    while !done.load(Ordering::Relaxed) {
        let breach = match resident_bytes(pid) {
            Some(used) if used > limit => Some(Breach::Memory(used)),
            _ if started.elapsed() > timeout => Some(Breach::Time(cpu_time(pid))),
            _ => None,
        };
        if let Some(breach) = breach {
            kill(pid);
            return Some(breach);
        }
        std::thread::sleep(WATCH_EVERY);
    }
    None
}

/// Kills child `pid`, which must not be reaped yet (so the pid names no
/// other process): `in_child` reaps it only after its threads are done.
fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: `kill` touches no memory of ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The resident memory of process `pid` (`VmRSS`), if it can be read.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU time process `pid` and its threads have used (user and
/// system), if it can be read.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: `sysconf` touches no memory of ours.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let ticks = cpu_ticks(&stat)?;
    (per_second > 0).then(|| Duration::from_millis(ticks.saturating_mul(1000) / per_second))
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // After the command name in parentheses (which may hold anything,
    // parentheses and spaces too): the state (field 3), then ten fields,
    // then utime and stime (fields 14 and 15).
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    fields
        .next()?
        .parse::<u64>()
        .ok()?
        .checked_add(fields.next()?.parse().ok()?)
}

/// `duration` to the millisecond, for a message.
fn whole_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// The component `artifact` (from [`precompile`]) holds, for `engine`.
pub(super) fn load(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: see the module comment — `artifact` is what an engine with
    // `engine`'s settings compiled just now; wasmtime still checks that the
    // settings match and fails otherwise.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// Runs `script` (a shell script) as the compiler, with `timeout`.
    fn compile_with(script: &str, timeout: Duration) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let program = dir.path().join("compiler");
        std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).expect("write");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let compiler = Compiler {
            program,
            memory: ByteSize::mib(512),
            timeout,
        };
        // Another test's fork may briefly hold the new file open for
        // writing ("Text file busy"): try again.
        for _ in 0..50 {
            match in_child(&compiler, b"\0asm") {
                Ok(artifact) => return format!("ok: {}", String::from_utf8_lossy(&artifact)),
                Err(err) if err.to_string().contains("Text file busy") => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(ChildError::Refused(err)) => return format!("refused: {err:#}"),
                Err(ChildError::Machine(err)) => return format!("machine: {err:#}"),
            }
        }
        panic!("the script never ran")
    }

    #[test]
    fn a_compiler_is_held_to_its_time_and_says_why_it_failed() {
        let started = Instant::now();
        // Tried again later, with the CPU time it had.
        let slow = compile_with("exec sleep 600", Duration::from_millis(300));
        assert!(
            slow.starts_with(
                "machine: compiling it took longer than 300ms (sandbox.compile_timeout, "
            ) && slow.ends_with(" of CPU time)"),
            "{slow}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "killed, not waited for"
        );

        // The bytes go in on stdin, the artifact comes out on stdout.
        assert_eq!(compile_with("cat", Duration::from_secs(60)), "ok: \0asm");

        // Killed by someone else (the kernel's OOM killer, say).
        let killed = compile_with("kill -9 $$", Duration::from_secs(60));
        assert!(
            killed.starts_with("machine: the compiler was killed, not by its bounds"),
            "{killed}"
        );

        // A failure shows the end of stderr, where the error is.
        let failed = compile_with(
            "i=0; while [ $i -lt 500 ]; do echo 'a log line' >&2; i=$((i+1)); done; \
             echo 'error: no such thing' >&2; exit 3",
            Duration::from_secs(60),
        );
        assert!(
            failed.starts_with("refused: the compiler failed (exit status: 3): ")
                && failed.ends_with("no such thing"),
            "{failed}"
        );
    }

    #[test]
    fn a_compiler_that_fails_for_the_machines_sake_is_told_from_a_verdict() {
        // The child's own exit status for a machine failure (a thread that
        // could not start, a pipe that broke).
        let tempfail = compile_with(
            "echo 'error: cannot start a compile thread: Resource temporarily unavailable' >&2; \
             exit 75",
            Duration::from_secs(60),
        );
        assert_eq!(
            tempfail,
            "machine: the compiler failed (exit status: 75): cannot start a compile thread: \
             Resource temporarily unavailable"
        );
        // An allocation the host refused: Rust's handler prints, then aborts.
        let no_memory = compile_with(
            "echo 'memory allocation of 1073741824 bytes failed' >&2; kill -ABRT $$",
            Duration::from_secs(60),
        );
        assert!(
            no_memory.starts_with("machine: the compiler failed ("),
            "{no_memory}"
        );
        // Any other abort is the bytes' (a compiler assertion, say).
        let aborted = compile_with(
            "echo 'assertion failed' >&2; kill -ABRT $$",
            Duration::from_secs(60),
        );
        assert!(
            aborted.starts_with("refused: the compiler failed ("),
            "{aborted}"
        );

        // The child marks its own failures: input or output lost is the
        // machine's, bytes that are not a component are theirs.
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::EPIPE))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let unread = compile_stream(Broken, Vec::new()).expect_err("no input");
        assert!(matches!(unread, ChildFailure::Machine { .. }), "{unread}");
        assert!(unread.to_string().starts_with("reading the component: "));
        let garbage = compile_stream(&b"not wasm"[..], Vec::new()).expect_err("not a component");
        assert!(matches!(garbage, ChildFailure::Refused(_)), "{garbage}");
        let unwritten = compile_stream(&b"(component)"[..], Broken).expect_err("no output");
        assert!(
            matches!(unwritten, ChildFailure::Machine { .. }),
            "{unwritten}"
        );
        assert!(unwritten.to_string().starts_with("writing the artifact: "));
    }

    /// The CPU time comes from fields 14 and 15 of `/proc/PID/stat`,
    /// whatever the command's name holds.
    #[test]
    fn cpu_time_is_read_past_any_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime ...
        let stat = "4242 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 1234 56 77 88 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        assert!(cpu_time(std::process::id()).is_some());
    }

    #[test]
    fn an_allocation_failure_is_told_by_the_last_line_alone() {
        assert!(allocation_failed(
            "a log line\nmemory allocation of 1048576 bytes failed"
        ));
        assert!(allocation_failed("memory allocation of 1 bytes failed\n"));
        // Quoted by something else, or not the last word.
        assert!(!allocation_failed(
            "memory allocation of 1048576 bytes failed\nthread panicked"
        ));
        assert!(!allocation_failed(
            "error: memory allocation of lots bytes failed"
        ));
    }

    #[test]
    fn the_tail_of_a_stream_is_kept() {
        let text: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(tail(&text[..], 100), &text[text.len() - 100..]);
        assert_eq!(tail(&b"short"[..], 100), b"short");
    }
}
