//! The allocators, set for a long-running daemon.
//!
//! Rust's allocations go to mimalloc: it is the global allocator of every
//! binary that links this library — the daemon, its tests and its benches,
//! so what is tested and measured runs on the daemon's allocator (the
//! settings below are the daemon's `main`'s, and the benches' that measure
//! a pipeline). Against glibc's malloc it
//! takes ≈ 9 % less CPU per event with the bundled plugins (malloc and free
//! were ≈ 13 % of it; BENCHMARKS.md, sixth pass). As it comes, though,
//! mimalloc v3 keeps freed memory for a second before it hands it back,
//! asks for transparent huge pages for its arenas (a huge page goes back
//! only once all of its 2 MiB are free), and keeps a heap per thread: a
//! daemon that had just compiled its plugins sat at 170–190 MiB idle where
//! glibc left 37–41. It is built without the huge-page request (the sys
//! crate's `no_thp` feature), [`limit_retained_heap`] has it hand freed
//! memory back after [`PURGE_DELAY_MS`], and [`release_freed_memory`]
//! collects every compiling thread's heap at once: within a few MiB of
//! glibc's figures again.
//!
//! C code (librdkafka) still allocates from glibc, which gives each thread
//! that allocates an arena of its own and by default raises its thresholds
//! as it sees large blocks freed, up to 64 MiB kept at each arena's top
//! (which `malloc_trim` does not return). Fixed thresholds bound that.

use libmimalloc_sys as mi;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v3; the sys crate
/// does not name it): how long freed memory is kept before it is handed
/// back, in ms (1000 by default).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// How long mimalloc keeps memory freed under load before it hands it back.
///
/// Under load the same pages are freed and allocated again within
/// milliseconds. Handed back at once (0), each was decommitted (`madvise`,
/// with a TLB shootdown to the other core) and faulted in again, zeroed by
/// the kernel, on its next use: together ≈ 9 % of the pipeline bench's CPU
/// samples. 100 ms keeps them through a burst (a third fewer page faults,
/// less than half the `madvise` calls, a quarter less system time) and
/// still hands them back once the load stops — at the allocator's next
/// activity after the delay (a page freed, a collect): the memory bench's
/// peak and after-load RSS are the same as with 0, where 1000 ms
/// (mimalloc's own default) kept 10–20 MiB more (BENCHMARKS.md, ninth
/// pass).
pub const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// What a glibc arena may keep free at its top, and the size from which a
/// block is mapped on its own (returned to the kernel when freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RETAINED_BYTES: libc::c_int = 4 << 20;

/// Sets both allocators to keep little freed memory. Call once, first thing
/// in `main`, before any thread starts.
///
/// mimalloc hands the memory it frees back after [`PURGE_DELAY_MS`] (a
/// thread's own heap still keeps some pages for reuse until it collects).
/// glibc's trim and mmap thresholds are fixed at [`RETAINED_BYTES`] (it
/// would otherwise raise them as it goes, up to 64 and 32 MiB); a block of
/// 4 MiB or more is then mapped and unmapped on its own each time (no such
/// block is allocated per event).
#[allow(unsafe_code)]
pub fn limit_retained_heap() {
    // SAFETY: `mi_option_set` takes plain integers; it is a plain store
    // into mimalloc's option table, which allocations read, so it is made
    // before any other thread starts (first thing in `main`).
    unsafe {
        mi::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` takes plain integers. The settings it writes are
        // globals read by every thread's allocations, so it is called before
        // any thread starts (first thing in `main`).
        let set = unsafe {
            [
                libc::mallopt(libc::M_MMAP_THRESHOLD, RETAINED_BYTES),
                libc::mallopt(libc::M_TRIM_THRESHOLD, RETAINED_BYTES),
            ]
        };
        debug_assert_eq!(set, [1, 1], "glibc refused a threshold");
    }
}

/// Hands the heap memory that is free back to the kernel at once, whatever
/// [`PURGE_DELAY_MS`] says: call it once a compile's buffers are dropped.
///
/// The compile ran on rayon's global pool (wasmtime's parallel
/// compilation), and mimalloc keeps a heap per thread: each of the pool's
/// threads collects its own, then this thread does.
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers; it works on the calling
    // thread's own heap, handing back the pages it holds unused.
    let collect = || unsafe { mi::mi_collect(true) };
    rayon::broadcast(|_| collect());
    collect();
    // SAFETY: `malloc_trim` takes no pointers; it only returns free pages
    // of glibc's arenas to the kernel, under glibc's locks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a child process (below) with an option set in its
    /// environment: prints what mimalloc reads under our option number.
    #[test]
    #[allow(clippy::print_stdout)] // the parent test reads it
    fn report_options() {
        if std::env::var_os("TODO_EVENTD_REPORT_MI_OPTIONS").is_none() {
            return;
        }
        // SAFETY: `mi_option_get` reads one option slot.
        #[allow(unsafe_code)]
        let purge = unsafe { mi::mi_option_get(MI_OPTION_PURGE_DELAY) };
        println!("option: purge_delay={purge}");
    }

    /// The option number is mimalloc's: a child process given the option by
    /// name in its environment reads it back under this number.
    #[test]
    fn the_option_number_names_mimallocs_purge_delay() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "heap::tests::report_options", "--nocapture"])
            .env("TODO_EVENTD_REPORT_MI_OPTIONS", "1")
            .env("MIMALLOC_PURGE_DELAY", "1234")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("option: purge_delay=1234"), "{stdout}");
    }
}
