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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::stamp::Stamp;
use super::{LoadError, Plugin, PluginFiles, Reread, Retry};
use crate::blocking::{NoAnswer, Unanswered};
use crate::clock::{Clock, backoff, rfc3339};
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

/// The first wait before files the machine could not compile are compiled
/// again (the fallback rescan's period); it doubles with each failure in a
/// row, up to [`COMPILE_RETRY_MAX`]. A compile the kernel's OOM killer ends
/// must not be run again at every rescan.
pub const COMPILE_RETRY_FIRST: std::time::Duration = super::watcher::FALLBACK_RESCAN;
/// The longest wait between compiles of unchanged files.
pub const COMPILE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// Compiles of unchanged files the machine did not finish, in a row, after
/// which the last failure stands as a verdict until the files change: a
/// component that always runs past `sandbox.compile_timeout` or always
/// gets the compiler OOM-killed is not compiled again every half hour.
pub const COMPILE_TRIES: u32 = 3;

/// The longest the directory's listing or one plugin's files may take to
/// read. A read past it (a network mount that stopped answering) is given
/// up on: the listing fails the rescan, a plugin's files are rejected, and
/// the read is not started again while it has not returned
/// ([`crate::blocking::Unanswered`]), so hot reload goes on for the rest.
/// Once [`crate::blocking::MAX_UNANSWERED`] files' reads hang, other files
/// are left unread until some return — not judged: their serving versions
/// keep serving, and one with nothing serving shows as rejected ("not
/// read") — and the listing never waits behind them.
pub const READ_TIMEOUT: std::time::Duration = crate::blocking::FILE_SYSTEM_TIMEOUT;

/// The most plugin names the registry tracks. Each costs a look at its
/// files per rescan, an entry in `/plugins` and metric series; a directory
/// holding more (a flood of stray files) has its new names ignored, loudly,
/// while every name tracked already — above all each plugin serving —
/// stays tracked.
pub const MAX_NAMES: usize = 1024;

/// The key the directory's listing is read under (no plugin name holds
/// a `/`).
const LISTING: &str = "/";

/// Files the machine could not compile, waiting to be compiled again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// Failures in a row of these files.
    failures: u32,
    /// When they are compiled again (at the first rescan from then on).
    at: Timestamp,
}

#[derive(Debug)]
struct Entry {
    file: PathBuf,
    /// The files last tried, so unchanged files are not compiled again.
    fingerprint: Option<Fingerprint>,
    /// Set when the machine could not compile them: when they are tried
    /// again.
    backoff: Option<Backoff>,
    /// The files' stamp when `fingerprint`'s were read, so unchanged
    /// files are not read again.
    stamp: Option<Stamp>,
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
            backoff: None,
            stamp: None,
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
    /// Reads of plugin files given up on that have not returned.
    reads: Unanswered,
    /// The directory's listing, apart from the files' reads: however many
    /// of those hang, the directory is still listed, so plugins removed
    /// and added elsewhere in it are still seen.
    listing: Unanswered,
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
            reads: Unanswered::default(),
            listing: Unanswered::default(),
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
            reads: Unanswered::default(),
            listing: Unanswered::default(),
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
                    retry_at: health.retry_at.or(entry.backoff.map(|b| b.at)).map(rfc3339),
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
        let names = self
            .listing
            .run(LISTING, READ_TIMEOUT, {
                let dir = dir.clone();
                move || super::plugin_stems(&dir)
            })
            .await
            .map_err(std::io::Error::from)??;
        let (names, ignored) = self.admit(names);
        if ignored > 0 {
            warn!(
                dir = %dir.display(),
                ignored,
                max = MAX_NAMES,
                "The plugins directory holds more plugin names than the daemon tracks; new names are ignored until others are removed."
            );
        }
        let mut report = ScanReport::default();
        let mut changed = false;
        let mut waited = false;
        for name in &names {
            changed |= self
                .scan_one(sandbox, dir, name, initial, &mut report, &mut waited)
                .await;
            // A read that went unanswered likely means a hung mount: the
            // rest waits for the next rescan, which passes over that file
            // at once (still unanswered) rather than waiting out each of
            // the others too. Not at start-up, where no rescan may follow
            // (`plugins.watch = false`): each plugin gets its read.
            if waited && !initial {
                warn!(dir = %dir.display(), "A plugin file did not answer; the rest of the directory is read at the next rescan.");
                break;
            }
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
        self.metrics.set_rejected(rejected + ignored);
        self.metrics.scanned(self.clock.now());
        Ok(report)
    }

    /// The names of `listed` (each with whether it has a `.wasm`) to scan,
    /// at most [`MAX_NAMES`]: every name tracked already, then new names
    /// with a `.wasm` (a plugin, at a start among a flood of stray
    /// manifests), then the rest, each in order; and how many were left
    /// out.
    fn admit(&self, listed: BTreeMap<String, bool>) -> (BTreeSet<String>, usize) {
        if listed.len() <= MAX_NAMES {
            return (listed.into_keys().collect(), 0);
        }
        let entries = lock(&self.entries);
        let (mut admitted, mut with_wasm, mut rest) = (BTreeSet::new(), Vec::new(), Vec::new());
        for (name, wasm) in listed {
            if entries.contains_key(&name) {
                admitted.insert(name);
            } else if wasm {
                with_wasm.push(name);
            } else {
                rest.push(name);
            }
        }
        let new = with_wasm.len() + rest.len();
        let room = MAX_NAMES.saturating_sub(admitted.len());
        admitted.extend(with_wasm.into_iter().chain(rest).take(room));
        (admitted, new.saturating_sub(room))
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
        waited: &mut bool,
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
        // Files last read whole and settled (no compile waiting to be
        // tried again) are only looked at.
        let last = lock(&self.entries)
            .get(name)
            .filter(|entry| entry.fingerprint.is_some() && entry.backoff.is_none())
            .and_then(|entry| entry.stamp.clone());
        let read = {
            let file = wasm_file.clone();
            // Hashed where read: SHA-256 of up to `max` bytes is no
            // work for a runtime worker.
            self.reads
                .run(name, READ_TIMEOUT, move || {
                    PluginFiles::reread(&file, max, last.as_ref()).map(|reread| {
                        let fingerprint = match &reread {
                            Reread::Read(Some(files), _) => Some(files.fingerprint()),
                            _ => None,
                        };
                        (reread, fingerprint)
                    })
                })
                .await
        };
        let (files, stamp, fingerprint) = match read {
            Ok(Ok((Reread::Unchanged, _))) => return false,
            Ok(Ok((Reread::Read(Some(files), stamp), fingerprint))) => {
                (Ok(files), stamp, fingerprint)
            }
            Ok(Err(err)) => (Err(err), None, None),
            // As many reads as may hang are hanging: this file is not
            // read at all (nor its serving version, if any, retired); it is
            // read at a later rescan. Until then one with nothing serving
            // shows, and counts, as rejected.
            Err(NoAnswer::TooMany(hanging)) => {
                *waited = true;
                let mut entries = lock(&self.entries);
                let entry = entries
                    .entry(name.to_owned())
                    .or_insert_with(|| Entry::new(wasm_file.clone()));
                // A name never read (or never readable): what is known of
                // one read before (its rejection, its compile back-off)
                // stands as it is.
                if entry.plugin.is_none() && !entry.disabled && entry.fingerprint.is_none() {
                    entry.last_error = Some(format!(
                        "{}: not read: {hanging} reads of other plugin files have not returned (a hung mount?); read at a later rescan",
                        text::escape_control(&wasm_file.display().to_string())
                    ));
                }
                warn!(plugin = %shown, hanging, "Plugin files not read: reads of other plugin files have not returned (a hung mount?); tried again at the next rescan.");
                return false;
            }
            Err(no_answer) => {
                *waited |= matches!(no_answer, NoAnswer::TimedOut(_));
                let error = LoadError::Io {
                    file: wasm_file.clone(),
                    source: no_answer.into(),
                };
                (Err(error), None, None)
            }
            Ok(Ok((Reread::Read(None, _), _))) => {
                let mut entries = lock(&self.entries);
                let entry = entries
                    .entry(name.to_owned())
                    .or_insert_with(|| Entry::new(wasm_file.clone()));
                let error = super::orphan_manifest(&wasm_file);
                let message = text::message(&error.to_string());
                let first_seen = entry.last_error.is_none() || entry.plugin.is_some();
                entry.last_error = Some(message.clone());
                entry.fingerprint = None;
                entry.stamp = None;
                entry.backoff = None;
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
        {
            let mut entries = lock(&self.entries);
            let entry = entries
                .entry(name.to_owned())
                .or_insert_with(|| Entry::new(wasm_file.clone()));
            entry.stamp = stamp;
            if fingerprint.is_some()
                && entry.fingerprint == fingerprint
                && entry.backoff.is_none_or(|b| self.clock.now() < b.at)
            {
                return false;
            }
            // The serving version's own files are back (a rejected change
            // undone, a copy caught half-written then finished): nothing
            // changes — above all not its health, as a new version's would.
            if fingerprint.is_some() && entry.plugin.is_some() && entry.serving == fingerprint {
                info!(plugin = %name, "Plugin files are the serving version's again; it keeps serving.");
                entry.fingerprint = fingerprint;
                entry.backoff = None;
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
        // Files refused only for want of room are tried again next time;
        // files the machine could not compile, after a back-off.
        let retry = loaded.as_ref().err().and_then(LoadError::retry);
        let failures = match entry.backoff {
            Some(b) if entry.fingerprint == fingerprint => b.failures + 1,
            _ => 1,
        };
        entry.backoff = (retry == Some(Retry::BackOff) && failures < COMPILE_TRIES).then(|| {
            let wait = backoff(COMPILE_RETRY_FIRST, failures, COMPILE_RETRY_MAX);
            let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            Backoff {
                failures,
                at: self.clock.now().saturating_add(wait),
            }
        });
        entry.fingerprint = match retry {
            Some(Retry::NextRescan) => None,
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
                let mut message = text::message(&error.to_string());
                match (retry, entry.backoff) {
                    (Some(Retry::BackOff), Some(b)) => {
                        message.push_str(&format!("; tried again at {}", rfc3339(b.at)));
                    }
                    (Some(Retry::BackOff), None) => message.push_str(&format!(
                        "; {COMPILE_TRIES} tries in a row, not tried again until the files change"
                    )),
                    _ => {}
                }
                let retry_at = entry.backoff.map(|b| rfc3339(b.at));
                let retry_at = retry_at.as_deref();
                match &entry.plugin {
                    Some(old) => {
                        warn!(plugin = %name, serving = %old.short_hash(), error = %message, retry_at, "Plugin change rejected; the previous version keeps serving.")
                    }
                    None => {
                        warn!(plugin = %shown, error = %message, retry_at, "Plugin rejected; the others keep running.")
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
impl Registry {
    /// A registry of `dir` in a sandbox of one instance, reporting to
    /// `metrics`: for this module's tests and the watcher's.
    pub(super) async fn of_dir_for_tests(dir: &Path, metrics: Arc<PluginMetrics>) -> Arc<Self> {
        let sandbox = Sandbox::new(crate::sandbox::SandboxConfig {
            max_instances: 1,
            ..crate::sandbox::SandboxConfig::default()
        })
        .unwrap();
        let (registry, _) = Self::open(Arc::new(sandbox), dir.to_owned(), metrics, Clock::System)
            .await
            .unwrap();
        Arc::new(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of other plugin files that hang (a mount that stopped
    /// answering) take up every slot for reads left running: the directory
    /// is still listed and a new file waits for a later rescan, unread
    /// (shown as such) rather than judged; once the reads return, it is
    /// read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_that_hang_leave_the_listing_and_new_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::of_dir_for_tests(dir.path(), Arc::default()).await;
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        for i in 0..crate::blocking::MAX_UNANSWERED {
            let wait = wait.clone();
            let hung = registry
                .reads
                .run(
                    &format!("hung-{i}"),
                    std::time::Duration::from_millis(10),
                    move || {
                        let _ = lock(&wait).recv();
                    },
                )
                .await;
            assert!(matches!(hung, Err(NoAnswer::TimedOut(_))));
        }
        std::fs::write(dir.path().join("junk.wasm"), b"not a component").unwrap();
        let report = registry.rescan().await.expect("listed all the same");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        let status = &registry.statuses()[0];
        assert_eq!(
            (status.name.as_str(), status.status),
            ("junk", Status::Rejected)
        );
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("junk.wasm: not read: 16 reads of other plugin files have not returned"),
            "shown as left unread: {status:?}"
        );

        drop(release);
        while registry.reads.running() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let report = registry.rescan().await.unwrap();
        assert_eq!(report.rejected.len(), 1, "read and judged on its content");
        let status = &registry.statuses()[0];
        assert_eq!(
            (status.name.as_str(), status.status),
            ("junk", Status::Rejected)
        );
        assert!(
            !status
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("have not returned"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn fixed_registry_publishes_once() {
        let registry = Registry::fixed(Vec::new(), Arc::default(), Clock::System);
        assert_eq!(registry.current().generation, 0);
        assert!(registry.rescan().await.unwrap().is_empty());
        assert!(registry.statuses().is_empty());
    }
}
