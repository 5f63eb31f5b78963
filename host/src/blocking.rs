//! The daemon's own blocking work, on threads no plugin can take.
//!
//! wasmtime-wasi runs each file operation of a plugin (an open, a read) on
//! tokio's blocking pool, and an open of a FIFO nobody writes to — or a
//! read from one, or a file on a hung network mount — holds its thread
//! until the other end comes: the call's deadline drops the wait, not the
//! thread. A plugin granted a directory in which such a file turns up can
//! tie up one thread per call until the pool's 512 are gone. Commits,
//! changelog restores, leaving the group, reading the plugins directory and
//! looking up and opening plugins' granted directories run here instead,
//! on a pool of their own, so they still run when that happens; the
//! plugins' file calls then time out and count against them.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

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

/// Why [`Unanswered::run`] gave no result.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    /// The work has not returned within its time (a read on a hung network
    /// mount); it goes on on its thread, and is not started again under
    /// the same key until it returns.
    #[error(
        "no answer within {} (a hung mount?); not tried again until that call returns",
        humantime::format_duration(*.0)
    )]
    TimedOut(Duration),
    /// Work under the same key given up on before has still not returned:
    /// it is not started twice. Said as [`Self::TimedOut`] was, so a
    /// report of it can be told from a new failure.
    #[error(
        "no answer within {} (a hung mount?); not tried again until that call returns",
        humantime::format_duration(*.0)
    )]
    StillRunning(Duration),
    /// [`MAX_UNANSWERED`] pieces of work have not returned: no more are
    /// started until some do.
    #[error("{0} calls have not returned (a hung mount?); no more are started until they do")]
    TooMany(usize),
    /// The work panicked.
    #[error("the call failed: {0}")]
    Failed(#[from] tokio::task::JoinError),
}

impl From<NoAnswer> for std::io::Error {
    fn from(err: NoAnswer) -> Self {
        match err {
            NoAnswer::Failed(failed) => Self::other(failed),
            hung => Self::new(std::io::ErrorKind::TimedOut, hung),
        }
    }
}

/// How long the daemon waits for its own file-system work — reading the
/// plugins directory, looking up granted directories — before taking it
/// for hung (a network mount that stopped answering).
pub const FILE_SYSTEM_TIMEOUT: Duration = Duration::from_secs(30);

/// The most pieces of work one [`Unanswered`] leaves running past their
/// time: the daemon's pool (512 threads) must keep threads for commits,
/// restores and leaving the group whatever a mount does.
pub const MAX_UNANSWERED: usize = 16;

/// Blocking work that may never return — a read of a file on a network
/// mount that stopped answering — run on the daemon's pool but waited for
/// only so long, and never started twice under one key while the first
/// has not returned, so a hung file costs one thread, not one per try, and
/// all of them together at most [`MAX_UNANSWERED`].
#[derive(Debug, Default, Clone)]
pub struct Unanswered {
    running: Arc<Mutex<HashSet<String>>>,
}

impl Unanswered {
    /// Runs `work` under `key`, waiting at most `timeout` for it.
    pub async fn run<T, F>(&self, key: &str, timeout: Duration, work: F) -> Result<T, NoAnswer>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        {
            let mut running = self.lock();
            if running.contains(key) {
                return Err(NoAnswer::StillRunning(timeout));
            }
            if running.len() >= MAX_UNANSWERED {
                return Err(NoAnswer::TooMany(running.len()));
            }
            running.insert(key.to_owned());
        }
        // Removes the key when the work returns, or unwinds.
        struct Done(Arc<Mutex<HashSet<String>>>, String);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&self.1);
            }
        }
        let done = Done(self.running.clone(), key.to_owned());
        let handle = spawn(move || {
            let _done = done;
            work()
        });
        match tokio::time::timeout(timeout, handle).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failed)) => Err(NoAnswer::Failed(failed)),
            Err(_) => Err(NoAnswer::TimedOut(timeout)),
        }
    }

    /// Keys whose work has not returned.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        lock(&self.running)
    }
}

/// Blocking work that many callers may run at once under one key (each
/// partition starting an instance opens its plugin's granted directories),
/// waited for only so long. Unlike [`Unanswered`], a key is not refused
/// while its work runs, only once work under it has gone unanswered: then
/// calls under that key fail at once until it returns. At most
/// [`MAX_UNANSWERED`] pieces of work run at once, answered or not; a call
/// beyond them waits for one to return, within its time, so calls side by
/// side are never refused, and a mount that hangs holds that many threads
/// at most.
#[derive(Debug, Clone)]
pub struct Abandoned {
    /// Keys with work given up on that has not returned, and how many.
    hung: Arc<Mutex<HashMap<String, usize>>>,
    /// Work running, each holding a permit until it returns.
    running: Arc<tokio::sync::Semaphore>,
}

impl Default for Abandoned {
    fn default() -> Self {
        Self {
            hung: Arc::default(),
            running: Arc::new(tokio::sync::Semaphore::new(MAX_UNANSWERED)),
        }
    }
}

/// What became of one call of [`Abandoned::run`]; changed only under
/// `Abandoned::hung`'s lock, so the work returning and its wait giving up
/// cannot cross.
#[derive(Default)]
struct Fate {
    returned: bool,
    given_up: bool,
}

impl Abandoned {
    /// Runs `work` under `key`, waiting at most `timeout` for it.
    pub async fn run<T, F>(&self, key: &str, timeout: Duration, work: F) -> Result<T, NoAnswer>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if lock(&self.hung).contains_key(key) {
            return Err(NoAnswer::StillRunning(timeout));
        }
        let until = tokio::time::Instant::now() + timeout;
        let permit =
            match tokio::time::timeout_at(until, self.running.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // Every permit is held (by work that hangs, if the wait was
                // long), or the semaphore was closed (never).
                _ => return Err(NoAnswer::TooMany(MAX_UNANSWERED)),
            };
        let fate = Arc::new(Mutex::new(Fate::default()));
        // Marks the work returned (or unwound), and takes it off the hung
        // ones if it had been given up on.
        struct Done {
            hung: Arc<Mutex<HashMap<String, usize>>>,
            key: String,
            fate: Arc<Mutex<Fate>>,
        }
        impl Drop for Done {
            fn drop(&mut self) {
                let mut hung = lock(&self.hung);
                let mut fate = lock(&self.fate);
                fate.returned = true;
                if fate.given_up
                    && let Some(count) = hung.get_mut(&self.key)
                {
                    *count -= 1;
                    if *count == 0 {
                        hung.remove(&self.key);
                    }
                }
            }
        }
        let done = Done {
            hung: self.hung.clone(),
            key: key.to_owned(),
            fate: fate.clone(),
        };
        let handle = spawn(move || {
            let _done = done;
            let _permit = permit;
            work()
        });
        match tokio::time::timeout_at(until, handle).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failed)) => Err(NoAnswer::Failed(failed)),
            Err(_) => {
                let mut hung = lock(&self.hung);
                let mut fate = lock(&fate);
                if !fate.returned {
                    fate.given_up = true;
                    *hung.entry(key.to_owned()).or_default() += 1;
                }
                Err(NoAnswer::TimedOut(timeout))
            }
        }
    }

    /// Calls given up on that have not returned.
    pub fn hung(&self) -> usize {
        lock(&self.hung).values().sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Where stuck work waits: until its sender is dropped.
    type Gate = std::sync::Arc<std::sync::Mutex<mpsc::Receiver<()>>>;

    /// Work that does not return until `gate`'s sender is dropped (a read
    /// on a hung mount).
    fn stuck(gate: &Gate) -> impl FnOnce() + Send + 'static {
        let gate = gate.clone();
        move || {
            let _ = gate.lock().unwrap().recv();
        }
    }

    /// Work that does not return (a read on a hung mount) is given up on
    /// after its time, and not started again under its key — one stuck
    /// thread, not one per rescan — until it returns; other keys run.
    #[tokio::test]
    async fn work_that_does_not_return_is_given_up_on_and_not_started_twice() {
        let unanswered = super::Unanswered::default();
        let (release, wait) = mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let limit = Duration::from_millis(50);
        let hung = unanswered
            .run("hung", limit, move || wait.lock().unwrap().recv().is_ok())
            .await;
        assert_eq!(
            hung.unwrap_err().to_string(),
            "no answer within 50ms (a hung mount?); not tried again until that call returns"
        );
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let again = unanswered
            .run("hung", limit, {
                let started = started.clone();
                move || started.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await;
        assert!(matches!(again, Err(super::NoAnswer::StillRunning(_))));
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(unanswered.run("other", limit, || 7).await.unwrap(), 7);
        assert_eq!(unanswered.running(), 1);

        // Stuck work holds at most MAX_UNANSWERED threads in all.
        let (release_all, wait_all) = mpsc::channel::<()>();
        let wait_all = std::sync::Arc::new(std::sync::Mutex::new(wait_all));
        for i in 1..super::MAX_UNANSWERED {
            let stuck = unanswered
                .run(&format!("stuck-{i}"), limit, stuck(&wait_all))
                .await;
            assert!(matches!(stuck, Err(super::NoAnswer::TimedOut(_))));
        }
        let refused = unanswered.run("one-more", limit, || 9).await;
        assert!(
            matches!(refused, Err(super::NoAnswer::TooMany(16))),
            "{refused:?}"
        );
        drop(release_all);

        // Once it returns, the key is free again.
        release.send(()).unwrap();
        while unanswered.running() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(unanswered.run("hung", limit, || 8).await.unwrap(), 8);
    }

    /// Calls under one key run side by side (two at once both answer);
    /// once one is given up on, that key's calls fail at once until it
    /// returns, and work running is bounded in all: a call beyond the
    /// bound waits for a slot, then fails if none comes in its time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_work_given_up_on_counts_against_the_bound() {
        let abandoned = super::Abandoned::default();
        let limit = Duration::from_secs(5);
        let both = std::sync::Arc::new(std::sync::Barrier::new(2));
        let meet = |both: std::sync::Arc<std::sync::Barrier>| move || both.wait().is_leader();
        let (a, b) = tokio::join!(
            abandoned.run("dirs", limit, meet(both.clone())),
            abandoned.run("dirs", limit, meet(both.clone())),
        );
        assert!(a.unwrap() ^ b.unwrap(), "both ran, at once");
        assert_eq!(abandoned.hung(), 0);

        let generous = limit;
        let limit = Duration::from_millis(20);
        let (release, wait) = mpsc::channel::<()>();
        let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
        let hung = abandoned.run("dirs", limit, stuck(&wait)).await;
        assert!(matches!(hung, Err(super::NoAnswer::TimedOut(_))));
        let again = abandoned.run("dirs", limit, || 1).await;
        assert!(
            matches!(again, Err(super::NoAnswer::StillRunning(_))),
            "{again:?}"
        );
        assert_eq!(abandoned.run("other", generous, || 2).await.unwrap(), 2);
        for i in 1..super::MAX_UNANSWERED {
            let hung = abandoned
                .run(&format!("dirs-{i}"), limit, stuck(&wait))
                .await;
            assert!(matches!(hung, Err(super::NoAnswer::TimedOut(_))));
        }
        let refused = abandoned.run("one-more", limit, || 9).await;
        assert!(
            matches!(refused, Err(super::NoAnswer::TooMany(16))),
            "{refused:?}"
        );
        drop(release);
        while abandoned.hung() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(abandoned.run("dirs", generous, || 8).await.unwrap(), 8);
    }
}
