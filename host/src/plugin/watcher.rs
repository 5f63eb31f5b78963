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

use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::registry::Registry;

/// How often the directory is rescanned without any file event.
pub const FALLBACK_RESCAN: Duration = Duration::from_secs(30);

/// The longest a rescan waits for the directory to be quiet (unless the
/// debounce period itself is longer).
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(5);

/// A running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct Watcher {
    _watcher: RecommendedWatcher,
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

/// Watches `registry`'s directory (if it has one) on the current Tokio
/// runtime. `Ok(None)` when there is nothing to watch.
pub fn watch(registry: Arc<Registry>, debounce: Duration) -> notify::Result<Option<Watcher>> {
    let Some(dir) = registry.dir().map(ToOwned::to_owned) else {
        return Ok(None);
    };
    // One stored permit at most: events between two looks are one.
    let changed = Arc::new(Notify::new());
    let signal = changed.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            Ok(event) if !relevant(&event) => {}
            Ok(_) => signal.notify_one(),
            Err(err) => warn!(error = %err, "Watching the plugins directory."),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let span = info_span!("plugin_watcher", dir = %dir.display());
    let task = tokio::spawn(
        async move {
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
                    () = tokio::time::sleep(FALLBACK_RESCAN) => {}
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
            }
        }
        .instrument(span),
    );
    Ok(Some(Watcher {
        _watcher: watcher,
        task,
    }))
}
