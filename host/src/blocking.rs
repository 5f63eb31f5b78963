//! The daemon's own blocking work, on threads no plugin can take.
//!
//! wasmtime-wasi runs each file operation of a plugin (an open, a read) on
//! tokio's blocking pool, and an open of a FIFO nobody writes to — or a
//! read from one, or a file on a hung network mount — holds its thread
//! until the other end comes: the call's deadline drops the wait, not the
//! thread. A plugin granted a directory in which such a file turns up can
//! tie up one thread per call until the pool's 512 are gone. Commits,
//! changelog restores, leaving the group and reading the plugins directory
//! run here instead, on a pool of their own, so they still run when that
//! happens; the plugins' file calls then time out and count against them.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// Threads the daemon's own blocking work may use at once (tokio's
/// default for a pool). A restore or a commit waiting on a dead broker
/// holds one; restores take turns (`pipeline.restore_concurrency`).
const MAX_THREADS: usize = 512;

/// Runs `work` on the daemon's own blocking pool.
///
/// `work` runs in the context of a runtime that is never driven: it must
/// not spawn tasks, use `tokio::time`, or create clients that spawn their
/// own tasks there (rdkafka's `StreamConsumer`). Blocking calls only.
pub fn spawn<T, F>(work: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match pool() {
        Some(pool) => pool.spawn_blocking(work),
        // The pool could not be made (it is made before any thread is
        // started, so nearly never): share the caller's.
        None => tokio::task::spawn_blocking(work),
    }
}

/// The pool: a runtime that is never driven, only lent its blocking
/// threads. It lives as long as the process, so work still waiting at
/// exit does not hold the exit up.
fn pool() -> Option<&'static Handle> {
    static POOL: OnceLock<Option<Runtime>> = OnceLock::new();
    POOL.get_or_init(|| {
        Builder::new_current_thread()
            .max_blocking_threads(MAX_THREADS)
            .thread_name("todo-eventd-blocking")
            .build()
            .ok()
    })
    .as_ref()
    .map(Runtime::handle)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn runs_while_the_callers_blocking_pool_is_taken() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (release, wait) = mpsc::channel::<()>();
        runtime.block_on(async {
            // What a plugin's open of a FIFO does to the runtime's pool.
            let stuck = tokio::task::spawn_blocking(move || wait.recv());
            let done = tokio::time::timeout(Duration::from_secs(10), super::spawn(|| 42)).await;
            assert_eq!(
                done.expect("the daemon's work waited for the runtime's pool")
                    .unwrap(),
                42
            );
            release.send(()).unwrap();
            stuck.await.unwrap().unwrap();
        });
    }
}
