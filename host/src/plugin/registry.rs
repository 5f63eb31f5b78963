//! The live set of plugins while the daemon runs.
//!
//! The registry re-reads the plugins directory on request ([`Registry::rescan`],
//! called by the [watcher](super::watcher)): files whose contents changed are
//! validated and compiled there, off the hot path, and only a version that
//! loads replaces the one serving. A half-written or invalid file is
//! rejected with the reason recorded, and the old version keeps serving.
//! Each change publishes a new immutable [`PluginSet`]; partition workers
//! pick it up between records, so an event is handled entirely by one
//! version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{LoadError, Plugin, PluginFiles};
use crate::clock::{Clock, rfc3339};
use crate::sandbox::Sandbox;
use crate::telemetry::PluginMetrics;
use crate::text;
use crate::world::Timestamp;

/// One published version of the plugin set.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Increases with every change.
    pub generation: u64,
    /// The plugins, sorted by name (the dispatch order).
    pub plugins: Vec<Arc<Plugin>>,
}

/// Where a plugin stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A version is serving.
    Active,
    /// A version is loaded but quarantined after failing.
    Quarantined,
    /// Nothing is serving: its files were rejected.
    Rejected,
    /// Its manifest says `enabled = false`.
    Disabled,
}

impl Status {
    /// The lower-case name `/plugins` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Quarantined => "quarantined",
            Self::Rejected => "rejected",
            Self::Disabled => "disabled",
        }
    }
}

/// What `/plugins` shows for one plugin.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginStatus {
    /// The file stem.
    pub name: String,
    /// Where it stands.
    pub status: Status,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// The manifest's version label of the version serving.
    pub version: Option<String>,
    /// SHA-256 of the component serving.
    pub hash: Option<String>,
    /// When the version serving was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// Versions loaded after the first.
    pub reloads: u64,
    /// Why the latest change to the files was rejected, or the latest
    /// failed call while quarantined.
    pub last_error: Option<String>,
    /// Failed calls since the last success.
    pub consecutive_failures: u32,
    /// While quarantined: when the next trial call is allowed (RFC 3339).
    pub retry_at: Option<String>,
}

/// What a scan changed.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Plugins loaded (new or replaced).
    pub loaded: Vec<String>,
    /// Files rejected; the previous version, if any, keeps serving.
    pub rejected: Vec<LoadError>,
    /// Plugins removed (their `.wasm` is gone).
    pub removed: Vec<String>,
    /// Plugins their manifest disables.
    pub disabled: Vec<String>,
}

impl ScanReport {
    /// Whether the scan changed nothing.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
            && self.rejected.is_empty()
            && self.removed.is_empty()
            && self.disabled.is_empty()
    }
}

type Fingerprint = (String, Option<String>);

#[derive(Debug)]
struct Entry {
    file: PathBuf,
    /// The files last tried, so unchanged files are not compiled again.
    fingerprint: Option<Fingerprint>,
    /// The version serving.
    plugin: Option<Arc<Plugin>>,
    /// The files of the version serving.
    serving: Option<Fingerprint>,
    disabled: bool,
    last_error: Option<String>,
    loaded_at: Option<Timestamp>,
    reloads: u64,
}

impl Entry {
    fn new(file: PathBuf) -> Self {
        Self {
            file,
            fingerprint: None,
            plugin: None,
            serving: None,
            disabled: false,
            last_error: None,
            loaded_at: None,
            reloads: 0,
        }
    }
}

/// The plugins serving now, and what became of each file.
pub struct Registry {
    sandbox: Option<Arc<Sandbox>>,
    dir: Option<PathBuf>,
    metrics: Arc<PluginMetrics>,
    feed: watch::Sender<Arc<PluginSet>>,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Serialises scans (compiling happens outside `entries`' lock).
    scanning: tokio::sync::Mutex<()>,
    clock: Clock,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .field("generation", &self.feed.borrow().generation)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// A registry that never changes (the bundled plugins, tests).
    pub fn fixed(plugins: Vec<Arc<Plugin>>, metrics: Arc<PluginMetrics>, clock: Clock) -> Self {
        let entries = plugins
            .iter()
            .map(|plugin| {
                let mut entry = Entry::new(plugin.file.clone());
                entry.plugin = Some(plugin.clone());
                entry.loaded_at = Some(clock.now());
                (plugin.name.clone(), entry)
            })
            .collect();
        Self {
            sandbox: None,
            dir: None,
            metrics,
            feed: watch::Sender::new(Arc::new(PluginSet {
                generation: 0,
                plugins,
            })),
            entries: Mutex::new(entries),
            scanning: tokio::sync::Mutex::new(()),
            clock,
        }
    }

    /// Loads the plugins in `dir`; [`rescan`](Self::rescan) picks up later
    /// changes. Only an unreadable directory is an error.
    pub async fn open(
        sandbox: Arc<Sandbox>,
        dir: PathBuf,
        metrics: Arc<PluginMetrics>,
        clock: Clock,
    ) -> std::io::Result<(Self, ScanReport)> {
        let registry = Self {
            sandbox: Some(sandbox),
            dir: Some(dir),
            metrics,
            feed: watch::Sender::new(Arc::default()),
            entries: Mutex::default(),
            scanning: tokio::sync::Mutex::new(()),
            clock,
        };
        let report = registry.scan(true).await?;
        Ok((registry, report))
    }

    /// The watched directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The set serving now.
    pub fn current(&self) -> Arc<PluginSet> {
        self.feed.borrow().clone()
    }

    /// A receiver that sees every new set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PluginSet>> {
        self.feed.subscribe()
    }

    /// Every plugin the directory holds (or held), by name.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        lock(&self.entries)
            .iter()
            .map(|(name, entry)| {
                let plugin = entry.plugin.as_deref();
                let health = plugin.map(|p| p.health.snapshot()).unwrap_or_default();
                let status = match plugin {
                    Some(_) if health.retry_at.is_some() => Status::Quarantined,
                    Some(_) => Status::Active,
                    None if entry.disabled => Status::Disabled,
                    None => Status::Rejected,
                };
                let last_error = entry.last_error.clone().or_else(|| {
                    health
                        .retry_at
                        .is_some()
                        .then(|| health.last_error.clone())
                        .flatten()
                });
                PluginStatus {
                    name: name.clone(),
                    status,
                    file: entry.file.clone(),
                    version: plugin.and_then(|p| p.manifest.version.clone()),
                    hash: plugin.map(|p| p.hash.clone()),
                    loaded_at: entry.loaded_at.map(rfc3339),
                    reloads: entry.reloads,
                    last_error,
                    consecutive_failures: health.consecutive_failures,
                    retry_at: health.retry_at.map(rfc3339),
                }
            })
            .collect()
    }

    /// Re-reads the directory and applies what changed: new and replaced
    /// plugins are read and compiled off the async threads, removed ones
    /// dropped. Publishes a new set if the plugins serving changed.
    pub async fn rescan(&self) -> std::io::Result<ScanReport> {
        self.scan(false).await
    }

    async fn scan(&self, initial: bool) -> std::io::Result<ScanReport> {
        let (Some(dir), Some(sandbox)) = (&self.dir, &self.sandbox) else {
            return Ok(ScanReport::default());
        };
        let _scanning = self.scanning.lock().await;
        let names = super::blocking({
            let dir = dir.clone();
            move || super::plugin_names(&dir)
        })
        .await?;
        let mut report = ScanReport::default();
        let mut changed = false;
        for name in &names {
            changed |= self
                .scan_one(sandbox, dir, name, initial, &mut report)
                .await;
        }
        let gone: Vec<String> = lock(&self.entries)
            .keys()
            .filter(|name| !names.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            let entry = lock(&self.entries).remove(&name);
            // Files appearing and vanishing under ever new names must not
            // grow `/metrics` for good: a name that never loaded leaves no
            // series behind, a plugin that served keeps them a while.
            match &entry {
                Some(e) if e.loaded_at.is_none() => self.metrics.forget(&name),
                Some(_) => self.metrics.retire(&name, std::time::Instant::now()),
                None => {}
            }
            if let Some(entry) = entry
                && entry.plugin.is_some()
            {
                info!(plugin = %name, "Plugin removed.");
                self.metrics.reload(&name, "removed");
                self.metrics.set_quarantined(&name, false);
                report.removed.push(name);
                changed = true;
            }
        }
        if changed || initial {
            self.publish();
        }
        let rejected = lock(&self.entries)
            .values()
            .filter(|entry| entry.plugin.is_none() && !entry.disabled)
            .count();
        self.metrics.set_rejected(rejected);
        Ok(report)
    }

    /// Brings one name up to date; returns whether the plugin serving
    /// changed.
    async fn scan_one(
        &self,
        sandbox: &Arc<Sandbox>,
        dir: &Path,
        name: &str,
        initial: bool,
        report: &mut ScanReport,
    ) -> bool {
        let wasm_file = dir.join(format!("{name}.wasm"));
        // The name as logs show it (a rejected file's name may hold
        // anything but a slash).
        let shown = text::escape_control(name);
        let count = |result| {
            if !initial {
                self.metrics.reload(name, result);
            }
        };
        let max = sandbox.config().max_component_bytes;
        let read = {
            let file = wasm_file.clone();
            crate::blocking::spawn(move || PluginFiles::read(&file, max)).await
        };
        let files = match read {
            Ok(Ok(Some(files))) => Ok(files),
            Ok(Err(err)) => Err(err),
            Err(join) => Err(LoadError::Io {
                file: wasm_file.clone(),
                source: std::io::Error::other(join),
            }),
            Ok(Ok(None)) => {
                let mut entries = lock(&self.entries);
                let entry = entries
                    .entry(name.to_owned())
                    .or_insert_with(|| Entry::new(wasm_file.clone()));
                let error = super::orphan_manifest(&wasm_file);
                let message = text::message(&error.to_string());
                let first_seen = entry.last_error.is_none() || entry.plugin.is_some();
                entry.last_error = Some(message.clone());
                entry.fingerprint = None;
                entry.disabled = false;
                if let Some(old) = entry.plugin.take() {
                    info!(plugin = %name, hash = %old.short_hash(), "Plugin removed (its .wasm is gone).");
                    count("removed");
                    self.metrics.set_quarantined(name, false);
                    report.removed.push(name.to_owned());
                    return true;
                }
                if first_seen {
                    warn!(plugin = %shown, error = %message, "Plugin rejected; the others keep running.");
                    count("rejected");
                    report.rejected.push(error);
                }
                return false;
            }
        };
        let fingerprint = files.as_ref().ok().map(PluginFiles::fingerprint);
        {
            let mut entries = lock(&self.entries);
            let entry = entries
                .entry(name.to_owned())
                .or_insert_with(|| Entry::new(wasm_file.clone()));
            if fingerprint.is_some() && entry.fingerprint == fingerprint {
                return false;
            }
            // The serving version's own files are back (a rejected change
            // undone, a copy caught half-written then finished): nothing
            // changes — above all not its health, as a new version's would.
            if fingerprint.is_some() && entry.plugin.is_some() && entry.serving == fingerprint {
                info!(plugin = %name, "Plugin files are the serving version's again; it keeps serving.");
                entry.fingerprint = fingerprint;
                entry.last_error = None;
                return false;
            }
            // Files that still cannot be read for the same reason (a FIFO,
            // a file over the size limit) were reported when that began:
            // not at every rescan.
            if let Err(error) = &files
                && entry.fingerprint.is_none()
                && entry.last_error.as_deref() == Some(text::message(&error.to_string()).as_str())
            {
                return false;
            }
        }
        // Compile without holding the lock, so `/plugins` stays responsive.
        let loaded = match files {
            Ok(files) => files.load(sandbox).await,
            Err(err) => Err(err),
        };
        let mut entries = lock(&self.entries);
        let Some(entry) = entries.get_mut(name) else {
            return false;
        };
        // Files refused only for want of room are tried again next time.
        entry.fingerprint = match &loaded {
            Err(error) if error.is_transient() => None,
            _ => fingerprint,
        };
        match loaded {
            Ok(Some(plugin)) => {
                let plugin = Arc::new(plugin);
                match &entry.plugin {
                    Some(old) => {
                        info!(plugin = %name, old = %old.short_hash(), new = %plugin.short_hash(), "Plugin replaced.");
                        entry.reloads += 1;
                    }
                    None => info!(plugin = %name, hash = %plugin.short_hash(), "Plugin loaded."),
                }
                count("loaded");
                self.metrics.set_quarantined(name, false);
                entry.plugin = Some(plugin);
                entry.serving.clone_from(&entry.fingerprint);
                entry.disabled = false;
                entry.last_error = None;
                entry.loaded_at = Some(self.clock.now());
                report.loaded.push(name.to_owned());
                true
            }
            Ok(None) => {
                info!(plugin = %name, "Plugin disabled by its manifest.");
                count("disabled");
                entry.disabled = true;
                entry.last_error = None;
                report.disabled.push(name.to_owned());
                // Nothing serves under the name: no quarantine either.
                self.metrics.set_quarantined(name, false);
                entry.plugin.take().is_some()
            }
            Err(error) => {
                // The file's text (an import's name, a compiler's message)
                // is bounded before it is kept, logged or served.
                let message = text::message(&error.to_string());
                match &entry.plugin {
                    Some(old) => {
                        warn!(plugin = %name, serving = %old.short_hash(), error = %message, "Plugin change rejected; the previous version keeps serving.")
                    }
                    None => {
                        warn!(plugin = %shown, error = %message, "Plugin rejected; the others keep running.")
                    }
                }
                count("rejected");
                entry.last_error = Some(message);
                report.rejected.push(error);
                false
            }
        }
    }

    fn publish(&self) {
        let plugins: Vec<Arc<Plugin>> = lock(&self.entries)
            .values()
            .filter_map(|e| e.plugin.clone())
            .collect();
        self.feed.send_modify(|set| {
            *set = Arc::new(PluginSet {
                generation: set.generation + 1,
                plugins,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_registry_publishes_once() {
        let registry = Registry::fixed(Vec::new(), Arc::default(), Clock::System);
        assert_eq!(registry.current().generation, 0);
        assert!(registry.rescan().await.unwrap().is_empty());
        assert!(registry.statuses().is_empty());
    }
}
