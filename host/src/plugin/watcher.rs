//! Watches the plugins directory and rescans it when it changes.
//!
//! File events are debounced: the directory is rescanned once it has been
//! quiet for the debounce period, so a file being copied in is read whole
//! in the common case (and rejected, then picked up on its final write, in
//! the rare one) — or after [`MAX_DEBOUNCE`] at the latest, so a file
//! written to without pause (a log, say) cannot hold up every reload.
//! Events are coalesced, never queued: a flood of them costs nothing. Any
//! event triggers a full rescan, which also covers Kubernetes volumes that
//! swap a `..data` symlink rather than the files.
//! A slow periodic rescan catches what a file system does not report
//! (network mounts).
//!
//! A watch follows the directory, not its path: after a deploy that swaps
//! the directory under the path (`ln -sfn releases/2 plugins`, or `mv`), it
//! would report the old one's changes only. So the path is looked up every
//! [`IDENTITY_CHECK`]; when it leads to another directory, that one is
//! watched instead and rescanned at once. Looking the path up and setting
//! the watch again run on the daemon's blocking pool, waited for only so
//! long: a mount that hangs holds one thread, not a runtime worker.
//!
//! A watch that cannot be set — inotify's limits reached (its
//! `max_user_instances` as well as its `max_user_watches`), a mount that
//! does not answer — never stops the daemon: the directory is rescanned at
//! every check instead, and the watch tried again there until it is set.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::registry::{READ_TIMEOUT, Registry};
use crate::blocking::Unanswered;

/// How often the directory is rescanned without any file event.
pub const FALLBACK_RESCAN: Duration = Duration::from_secs(30);

/// The longest a rescan waits for the directory to be quiet (unless the
/// debounce period itself is longer).
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(5);

/// How often the directory's path is looked up, to see whether it now
/// leads to another directory (one `stat`).
pub const IDENTITY_CHECK: Duration = Duration::from_secs(2);

/// A running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct Watcher {
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether an event may mean a plugin file changed (reads, including our
/// own, do not).
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Which directory a path leads to (through symlinks, as a watch is set):
/// its device and inode.
type Identity = (u64, u64);

/// Looks `dir` up on the daemon's blocking pool; `None` when it cannot
/// be read or does not answer in time (the rescans say why).
async fn identity(lookups: &Unanswered, dir: &Path) -> Option<Identity> {
    let dir = dir.to_owned();
    let meta = lookups.run("dir", READ_TIMEOUT, move || std::fs::metadata(dir));
    meta.await.ok()?.ok().map(|meta| (meta.dev(), meta.ino()))
}

/// What a file event says, for the watcher's task: a change (any event
/// that may touch a plugin file), and whether the watched directory itself
/// was removed or moved away.
#[derive(Clone)]
struct Events {
    changed: Arc<Notify>,
    lost: Arc<AtomicBool>,
    /// The watched path, absolute, as events name it.
    root: PathBuf,
}

impl notify::EventHandler for Events {
    fn handle_event(&mut self, event: notify::Result<Event>) {
        match event {
            Ok(event) if !relevant(&event) => {}
            Ok(event) => {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && event.paths.contains(&self.root)
                {
                    self.lost.store(true, Ordering::Relaxed);
                }
                self.changed.notify_one();
            }
            Err(err) => warn!(error = %err, "Watching the plugins directory."),
        }
    }
}

/// Makes notify's watcher for some [`Events`]: `notify::recommended_watcher`
/// but in the watcher's own tests.
type MakeWatcher = fn(Events) -> notify::Result<RecommendedWatcher>;

/// notify's watcher, made when a watch is first set: should inotify refuse
/// one (its `max_user_instances` reached), making it is tried again with
/// the next watch.
struct Notifier {
    make: MakeWatcher,
    events: Events,
    watcher: Mutex<Option<RecommendedWatcher>>,
}

impl Notifier {
    /// Watches `dir` anew, dropping the watch set before (if any), and
    /// making notify's watcher first if there is none yet. Blocks: notify
    /// sets a watch on its own thread and waits for it, and
    /// `inotify_add_watch` looks the path up again.
    fn rewatch(&self, dir: &Path) -> notify::Result<()> {
        let mut watcher = self.watcher.lock().unwrap_or_else(PoisonError::into_inner);
        let watcher = match &mut *watcher {
            Some(watcher) => watcher,
            empty => empty.insert((self.make)(self.events.clone())?),
        };
        // The old directory's watch may be gone already (removed with it).
        let _ = watcher.unwatch(dir);
        watcher.watch(dir, RecursiveMode::NonRecursive)
    }
}

/// [`Notifier::rewatch`] on the daemon's blocking pool, as the lookup.
async fn rewatch(lookups: &Unanswered, notifier: &Arc<Notifier>, dir: &Path) -> notify::Result<()> {
    let (notifier, dir) = (notifier.clone(), dir.to_owned());
    let set = lookups.run("watch", READ_TIMEOUT, move || notifier.rewatch(&dir));
    set.await
        .map_err(|err| notify::Error::io(err.into()))
        .and_then(|set| set)
}

/// Watches `registry`'s directory (if it has one) on the current Tokio
/// runtime, rescanning it once it has been quiet for `debounce` after a
/// change, and every `fallback` ([`FALLBACK_RESCAN`]) without one.
/// `None` when there is nothing to watch.
pub async fn watch(
    registry: Arc<Registry>,
    debounce: Duration,
    fallback: Duration,
) -> Option<Watcher> {
    watch_made_by(registry, debounce, fallback, notify::recommended_watcher).await
}

/// [`watch`], with notify's watcher made by `make`.
async fn watch_made_by(
    registry: Arc<Registry>,
    debounce: Duration,
    fallback: Duration,
    make: MakeWatcher,
) -> Option<Watcher> {
    let dir = registry.dir().map(ToOwned::to_owned)?;
    // One stored permit at most: events between two looks are one.
    let changed = Arc::new(Notify::new());
    // The watched directory itself was removed or moved away: its path is
    // watched anew at the next check even if it leads to the same device
    // and inode (a file system may reuse the inode of a directory removed
    // and made again).
    let lost = Arc::new(AtomicBool::new(false));
    let notifier = Arc::new(Notifier {
        make,
        events: Events {
            changed: changed.clone(),
            lost: lost.clone(),
            root: std::path::absolute(&dir).unwrap_or_else(|_| dir.clone()),
        },
        watcher: Mutex::new(None),
    });
    // A lookup on a hung mount holds one thread, not one per check.
    let lookups = Unanswered::default();
    // Taken before the watch is set: should the path change in between,
    // the first check sets the watch again.
    let mut watched = identity(&lookups, &dir).await;
    // Whether setting the watch failed (said once, tried at every check
    // until it works): a mount that hangs at start-up, or one of inotify's
    // limits reached, leaves the plugins loaded serving and the directory
    // rescanned, not the daemon stopped.
    let mut unwatched = false;
    if let Err(err) = rewatch(&lookups, &notifier, &dir).await {
        warn!(error = %err, dir = %dir.display(), "Cannot watch the plugins directory; it is rescanned at every check until it can be.");
        watched = None;
        unwatched = true;
    }
    let span = info_span!("plugin_watcher", dir = %dir.display());
    let task = tokio::spawn(
        async move {
            let mut check = tokio::time::interval(IDENTITY_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut fallback_at = Instant::now() + fallback;
            loop {
                tokio::select! {
                    () = changed.notified() => {
                        // Wait until the directory has been quiet for a
                        // while, but not forever.
                        let latest = Instant::now() + MAX_DEBOUNCE.max(debounce);
                        loop {
                            let quiet_by = (Instant::now() + debounce).min(latest);
                            let quiet = tokio::time::timeout_at(quiet_by, changed.notified())
                                .await
                                .is_err();
                            if quiet || Instant::now() >= latest {
                                break;
                            }
                        }
                    }
                    () = tokio::time::sleep_until(fallback_at) => {}
                    _ = check.tick() => {
                        let Some(now) = identity(&lookups, &dir).await else {
                            continue;
                        };
                        let lost = lost.swap(false, Ordering::Relaxed);
                        if watched == Some(now) && !lost {
                            continue;
                        }
                        if !unwatched {
                            info!(removed_or_moved = lost, "The plugins directory's path leads to another directory now (or the same one made again); watching it.");
                        }
                        match rewatch(&lookups, &notifier, &dir).await {
                            Ok(()) => {
                                if unwatched {
                                    info!("Watching the plugins directory again.");
                                }
                                watched = Some(now);
                                unwatched = false;
                            }
                            Err(err) => {
                                if !unwatched {
                                    warn!(error = %err, "Cannot watch the plugins directory; it is rescanned at every check until it can be.");
                                }
                                watched = None;
                                unwatched = true;
                            }
                        }
                    }
                }
                // Files are read (regular files only, size-capped) and
                // compiled on blocking threads; this task only waits.
                match registry.rescan().await {
                    Ok(report) if report.is_empty() => debug!("Rescan: no changes."),
                    Ok(report) => debug!(
                        loaded = ?report.loaded,
                        removed = ?report.removed,
                        rejected = report.rejected.len(),
                        "Rescanned the plugins directory."
                    ),
                    Err(err) => warn!(error = %err, "Cannot read the plugins directory; the plugins loaded keep serving."),
                }
                fallback_at = Instant::now() + fallback;
            }
        }
        .instrument(span),
    );
    Some(Watcher { task })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::plugin::registry::Status;
    use crate::telemetry::PluginMetrics;

    /// A registry of an empty temporary directory, reporting to
    /// `metrics`, watched with notify's watcher made by `make`, a 50 ms
    /// debounce and the fallback rescan an hour away (so only the watch,
    /// or the checks, can see a change).
    async fn watched(
        make: MakeWatcher,
        metrics: Arc<PluginMetrics>,
    ) -> (tempfile::TempDir, Arc<Registry>, Option<Watcher>) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::of_dir_for_tests(dir.path(), metrics).await;
        let watcher = watch_made_by(
            registry.clone(),
            Duration::from_millis(50),
            Duration::from_secs(3600),
            make,
        )
        .await;
        (dir, registry, watcher)
    }

    /// Polls `ok` every 50 ms for up to 20 s.
    async fn eventually(what: &str, ok: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < until, "not within 20 s: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the registry holds a rejected entry called `name`.
    fn rejected(registry: &Registry, name: &str) -> bool {
        registry
            .statuses()
            .iter()
            .any(|s| s.name == name && s.status == Status::Rejected)
    }

    fn refused(_: Events) -> notify::Result<RecommendedWatcher> {
        Err(notify::Error::generic(
            "inotify refused: max_user_instances reached",
        ))
    }

    /// inotify refusing an instance (its `max_user_instances` reached on a
    /// crowded host) does not stop the daemon: the directory is rescanned
    /// at every check instead. The fallback rescan is an hour away, so
    /// only the checks can see the new file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_inotify_leaves_the_directory_rescanned_at_every_check() {
        let (dir, registry, watcher) = watched(refused, Arc::default()).await;
        assert!(watcher.is_some(), "watches (by rescans) all the same");
        std::fs::write(dir.path().join("junk.wasm"), b"not a component").unwrap();
        eventually("junk rejected", || rejected(&registry, "junk")).await;
    }

    static MADE: AtomicUsize = AtomicUsize::new(0);

    /// Refuses the first watcher, then makes real ones.
    fn refused_once(events: Events) -> notify::Result<RecommendedWatcher> {
        if MADE.fetch_add(1, Ordering::SeqCst) == 0 {
            refused(events)
        } else {
            notify::recommended_watcher(events)
        }
    }

    /// Once inotify gives an instance, the watch is set at the next check
    /// and serves from then on: the checks rescan no more (the directory
    /// is not listed again over several of them), a change is seen by its
    /// event alone (the fallback is an hour away), and the watcher is made
    /// once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_refused_at_start_is_made_at_a_later_check() {
        let metrics = Arc::new(PluginMetrics::default());
        let (dir, registry, _watcher) = watched(refused_once, metrics.clone()).await;
        eventually("made again", || MADE.load(Ordering::SeqCst) == 2).await;
        // The check that set the watch rescans once; the checks after it
        // do not (the listing's time, in seconds, stays put). Waiting a
        // check and more first costs nothing: a watched check rescans not.
        tokio::time::sleep(IDENTITY_CHECK + Duration::from_secs(1)).await;
        let listed = metrics.scanned_at();
        tokio::time::sleep(IDENTITY_CHECK * 3).await;
        assert_eq!(metrics.scanned_at(), listed, "rescanned while watched");
        std::fs::write(dir.path().join("late.wasm"), b"not a component").unwrap();
        eventually("late rejected", || rejected(&registry, "late")).await;
        assert_eq!(MADE.load(Ordering::SeqCst), 2, "made once it could be");
    }
}
