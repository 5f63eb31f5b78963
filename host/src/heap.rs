//! The C allocator's settings for a long-running daemon.
//!
//! glibc gives each thread that allocates an arena of its own, and by
//! default raises its thresholds as it sees large blocks freed: after a
//! compile (cranelift on several threads, buffers of megabytes) each of
//! those arenas may keep up to 64 MiB of freed memory at its top, resident,
//! and `malloc_trim` does not return a thread arena's top. Measured with the
//! bundled plugins compiled at start: 15–40 MiB per arena, 2 `in use` MiB
//! across all of them. Fixed thresholds bound what an arena keeps, and
//! [`release_freed_memory`] hands back the rest after a compile.

/// What an arena may keep free at its top, and the size from which a block
/// is mapped on its own (returned to the kernel when freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RETAINED_BYTES: libc::c_int = 4 << 20;

/// Fixes glibc's trim and mmap thresholds at [`RETAINED_BYTES`] (it would
/// otherwise raise them as it goes, up to 64 and 32 MiB). Call once, before
/// any thread starts. A block of 4 MiB or more is then mapped and unmapped
/// on its own each time (no such block is allocated per event).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_retained_heap() {
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

/// Other allocators keep their own counsel.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_retained_heap() {}

/// Hands the heap memory that is free back to the kernel: call it once a
/// compile's buffers are dropped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    // SAFETY: `malloc_trim` takes no pointers; it only returns free pages
    // of the allocator's arenas to the kernel, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return freed memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() {}
