//! Plugins as operators see them: `NAME.wasm` files, each with an optional
//! `NAME.toml` manifest, in a plugins directory.
//!
//! Loading validates every file against the `todo:plugin` world before it
//! can serve traffic. A bad file is reported with its name and the reason,
//! and the others still load. While the daemon runs, a [`Registry`] keeps
//! the live set, re-reading the directory when a [`watcher`] sees it change.

pub mod bundled;
pub mod health;
pub mod manifest;
pub mod registry;
pub mod stamp;
pub mod watcher;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::health::Health;
use self::manifest::Manifest;
pub use self::registry::{PluginSet, PluginStatus, Registry};
use self::stamp::Stamp;
use crate::files;
use crate::sandbox::{
    CallError, GrantError, HostState, Instance, PluginSpec, Sandbox, ValidateError, WasiGrants,
};
use crate::telemetry::LogThrottle;
use crate::units::ByteSize;
use crate::world::{EventKind, GuestPre, WitVersion};

/// The largest manifest accepted.
const MAX_MANIFEST_BYTES: ByteSize = ByteSize::mib(1);

/// A validated plugin, ready to instantiate.
pub struct Plugin {
    /// The file stem, e.g. `reminders`.
    pub name: String,
    /// The `.wasm` file it came from.
    pub file: PathBuf,
    /// SHA-256 of the `.wasm` bytes.
    pub hash: String,
    /// The operator's settings.
    pub manifest: Manifest,
    /// The settings the sandbox enforces.
    pub spec: Arc<PluginSpec>,
    /// The pre-linked component.
    pub pre: GuestPre<HostState>,
    /// WASI interfaces the component imports (all empty unless granted).
    pub wasi_imports: BTreeSet<String>,
    /// Linear memory a fresh instance uses once started (and `init` ran).
    pub start_memory: usize,
    /// This version's failure record (quarantine).
    pub health: Health,
    /// The rate of the daemon's warnings about this version's failed calls.
    pub warnings: LogThrottle,
    /// The sandbox it was compiled for (instances must come from the same
    /// engine).
    sandbox: Arc<Sandbox>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Whether events of `kind` go to this plugin.
    pub fn subscribes(&self, kind: EventKind) -> bool {
        self.manifest.subscribes(kind)
    }

    /// Creates a warm instance in the plugin's sandbox.
    pub async fn instantiate(&self) -> Result<Instance, CallError> {
        self.sandbox.instantiate(&self.pre, self.spec.clone()).await
    }

    /// The `todo:plugin` version the component was built against.
    pub fn wit_version(&self) -> WitVersion {
        self.pre.version()
    }

    /// A short form of the content hash for logs and listings.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12.min(self.hash.len())]
    }
}

/// Why a plugin file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read (or is not a regular file of a
    /// bounded size).
    #[error("{}: cannot read: {source}", shown(file))]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is malformed or asks for something not allowed.
    #[error("{}: {message}", shown(file))]
    Manifest {
        /// The manifest file.
        file: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The `.wasm` is not a usable plugin.
    #[error("{}: {source}", shown(file))]
    Invalid {
        /// The `.wasm` file.
        file: PathBuf,
        /// Why it was rejected.
        source: ValidateError,
    },
    /// A plugin name is not usable as an identifier.
    #[error(
        "{}: plugin names may only contain letters, digits, '-', '_' and '.'",
        shown(file)
    )]
    BadName {
        /// The file.
        file: PathBuf,
    },
}

/// A path as errors show it: whoever writes the plugins directory picks
/// its file names, so control characters (a newline forging a log line)
/// are escaped.
fn shown(file: &Path) -> String {
    crate::text::escape_control(&file.display().to_string()).into_owned()
}

/// When files refused for a reason that is not theirs are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At the next rescan: the instance pool was full, and trying again
    /// costs next to nothing (the compiled component is cached).
    NextRescan,
    /// After a back-off: the machine did not carry the compile to its end,
    /// and each try may cost a compile's time and memory again.
    BackOff,
}

impl LoadError {
    /// Whether, and when, the files may load as they are: `None` for a
    /// verdict on the files, which stands until they change.
    pub fn retry(&self) -> Option<Retry> {
        match self {
            Self::Invalid {
                source: ValidateError::NoRoom(_),
                ..
            } => Some(Retry::NextRescan),
            Self::Invalid {
                source: ValidateError::CannotCompileNow(_),
                ..
            } => Some(Retry::BackOff),
            _ => None,
        }
    }

    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            Self::Io { file, .. }
            | Self::Manifest { file, .. }
            | Self::Invalid { file, .. }
            | Self::BadName { file } => file,
        }
    }
}

/// The outcome of loading a directory.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Plugins that loaded, sorted by name.
    pub plugins: Vec<Arc<Plugin>>,
    /// Plugins whose manifest says `enabled = false`.
    pub disabled: Vec<String>,
    /// Files that were rejected.
    pub errors: Vec<LoadError>,
}

/// Loads every `*.wasm` in `dir` (not recursive, hidden files ignored, as
/// the daemon does). Only an unreadable directory is an error; bad plugin
/// files are collected in the report.
pub async fn load_dir(sandbox: &Arc<Sandbox>, dir: &Path) -> std::io::Result<LoadReport> {
    let mut report = LoadReport::default();
    let names = blocking({
        let dir = dir.to_owned();
        move || plugin_names(&dir)
    })
    .await?;
    for name in names {
        let file = dir.join(format!("{name}.wasm"));
        match load_file(sandbox, &file).await {
            Ok(Some(plugin)) => report.plugins.push(Arc::new(plugin)),
            Ok(None) => report.disabled.push(name),
            Err(err) => report.errors.push(err),
        }
    }
    Ok(report)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    crate::blocking::spawn(work)
        .await
        .map_err(std::io::Error::other)?
}

/// The plugin names in `dir`, sorted: stems of `*.wasm` and `*.toml`,
/// ignoring hidden files (editors' and copy tools' temporaries). A stem
/// that is not UTF-8 is listed with its bad bytes replaced, so that
/// loading it is refused by name ([`LoadError::BadName`]) rather than
/// skipped without a word.
fn plugin_names(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    Ok(plugin_stems(dir)?.into_keys().collect())
}

/// The same names, each with whether there is a `NAME.wasm`.
fn plugin_stems(dir: &Path) -> std::io::Result<BTreeMap<String, bool>> {
    let mut names = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_none_or(|n| n.as_encoded_bytes().starts_with(b"."));
        let wasm = match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => true,
            Some("toml") => false,
            _ => continue,
        };
        if !hidden {
            *names.entry(plugin_name(&path)).or_insert(false) |= wasm;
        }
    }
    Ok(names)
}

/// The error for a `NAME.toml` whose `wasm_file` is missing.
fn orphan_manifest(wasm_file: &Path) -> LoadError {
    LoadError::Manifest {
        file: wasm_file.with_extension("toml"),
        message: format!(
            "no {} beside it",
            wasm_file.file_name().unwrap_or_default().to_string_lossy()
        ),
    }
}

fn plugin_name(file: &Path) -> String {
    file.file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Loads one `NAME.wasm` and its optional `NAME.toml`. `Ok(None)` means the
/// manifest disables it; a missing `.wasm` beside a manifest is an orphan.
pub async fn load_file(sandbox: &Arc<Sandbox>, file: &Path) -> Result<Option<Plugin>, LoadError> {
    let max = sandbox.config().max_component_bytes;
    let path = file.to_owned();
    let files = crate::blocking::spawn(move || PluginFiles::read(&path, max))
        .await
        .map_err(|e| LoadError::Io {
            file: file.to_owned(),
            source: std::io::Error::other(e),
        })??;
    match files {
        Some(files) => files.load(sandbox).await,
        None => Err(orphan_manifest(file)),
    }
}

/// A plugin's files as read from disk, before validation.
#[derive(Debug, Clone)]
pub struct PluginFiles {
    /// The file stem.
    pub name: String,
    /// `NAME.wasm`.
    pub wasm_file: PathBuf,
    /// Its bytes.
    pub wasm: Vec<u8>,
    /// `NAME.toml` (which may not exist).
    pub manifest_file: PathBuf,
    /// Its text, if it exists.
    pub manifest: Option<String>,
}

/// What [`PluginFiles::reread`] found.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per plugin per rescan, moved once"
)]
pub enum Reread {
    /// The files the stamp given was taken of: not read again.
    Unchanged,
    /// The files as read (`None`: there is no `NAME.wasm`), and their
    /// stamp taken just before, if they could be examined.
    Read(Option<PluginFiles>, Option<Stamp>),
}

impl PluginFiles {
    /// Reads the files like [`Self::read`], unless `last` — the stamp
    /// taken when they were last read — vouches that they have not
    /// changed since ([`stamp`]).
    pub fn reread(
        file: &Path,
        max_wasm: ByteSize,
        last: Option<&Stamp>,
    ) -> Result<Reread, LoadError> {
        // Taken before reading: a change made meanwhile shows next time.
        let stamp = Stamp::take(file, &file.with_extension("toml")).ok();
        if let (Some(last), Some(now)) = (last, &stamp)
            && last.vouches_for(now)
        {
            return Ok(Reread::Unchanged);
        }
        Ok(Reread::Read(Self::read(file, max_wasm)?, stamp))
    }

    /// Reads `NAME.wasm` (at most `max_wasm` bytes) and, if present,
    /// `NAME.toml` — regular files only (see [`crate::files`]). `Ok(None)` when
    /// there is no `NAME.wasm`.
    pub fn read(file: &Path, max_wasm: ByteSize) -> Result<Option<Self>, LoadError> {
        let name = plugin_name(file);
        if !is_plugin_name(&name) {
            return Err(LoadError::BadName {
                file: file.to_owned(),
            });
        }
        let wasm = match files::read_bounded(file, max_wasm) {
            Ok(wasm) => wasm,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LoadError::Io {
                    file: file.to_owned(),
                    source,
                });
            }
        };
        let manifest_file = file.with_extension("toml");
        let manifest = match files::read_text_bounded(&manifest_file, MAX_MANIFEST_BYTES) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(LoadError::Io {
                    file: manifest_file,
                    source,
                });
            }
        };
        Ok(Some(Self {
            name,
            wasm_file: file.to_owned(),
            wasm,
            manifest_file,
            manifest,
        }))
    }

    /// Identifies this exact pair of files: the SHA-256 of the component
    /// and of the manifest.
    pub fn fingerprint(&self) -> (String, Option<String>) {
        (
            Sandbox::content_hash(&self.wasm),
            self.manifest
                .as_deref()
                .map(|m| Sandbox::content_hash(m.as_bytes())),
        )
    }

    /// Validates, compiles and test-starts the plugin. `Ok(None)` means the
    /// manifest disables it.
    pub async fn load(self, sandbox: &Arc<Sandbox>) -> Result<Option<Plugin>, LoadError> {
        let manifest = match &self.manifest {
            Some(text) => Manifest::parse(text).map_err(|message| LoadError::Manifest {
                file: self.manifest_file.clone(),
                message,
            })?,
            None => Manifest::default(),
        };
        if !manifest.enabled {
            return Ok(None);
        }
        from_parts(
            sandbox,
            self.name,
            self.wasm_file,
            self.wasm,
            manifest,
            &self.manifest_file,
        )
        .await
        .map(Some)
    }
}

/// Builds a plugin from its bytes and manifest (used for files and for the
/// bundled plugins): resolves its limits, compiles and validates the
/// component (off the async threads), and starts one instance under its
/// limits, so a plugin that cannot start is rejected now rather than
/// failing every call later.
pub async fn from_parts(
    sandbox: &Arc<Sandbox>,
    name: String,
    file: PathBuf,
    bytes: impl AsRef<[u8]> + Send + 'static,
    manifest: Manifest,
    manifest_file: &Path,
) -> Result<Plugin, LoadError> {
    let wasi = sandbox
        .check_grants(&manifest.wasi)
        .await
        .map_err(|err| match err {
            GrantError::Refused(message) => LoadError::Manifest {
                file: manifest_file.to_owned(),
                message,
            },
            // Not a verdict on the files: tried again at the next rescan.
            unanswered @ GrantError::NoAnswer(_) => LoadError::Invalid {
                file: file.clone(),
                source: ValidateError::NoRoom(unanswered.to_string()),
            },
        })?;
    let spec =
        resolve_spec(sandbox, &name, &manifest, wasi).map_err(|message| LoadError::Manifest {
            file: manifest_file.to_owned(),
            message,
        })?;
    let invalid = |source| LoadError::Invalid {
        file: file.clone(),
        source,
    };
    let compiler = sandbox.clone();
    let (pre, hash) = crate::blocking::spawn(move || {
        let bytes = bytes.as_ref();
        let hash = Sandbox::content_hash(bytes);
        compiler.prepare(bytes).map(|pre| (pre, hash))
    })
    .await
    .map_err(|e| invalid(ValidateError::Start(e.to_string())))?
    .map_err(invalid)?;
    let wasi_imports = sandbox.wasi_imports(&pre);
    let warnings = sandbox.plugin_warnings(&name);
    let mut plugin = Plugin {
        hash,
        name,
        file: file.clone(),
        manifest,
        spec: Arc::new(spec),
        pre,
        wasi_imports,
        start_memory: 0,
        health: Health::default(),
        warnings,
        sandbox: sandbox.clone(),
    };
    let instance = first_start(&plugin.name, || plugin.instantiate())
        .await
        .map_err(invalid)?;
    plugin.start_memory = instance.memory_peak();
    Ok(plugin)
}

/// How many times a load tries to start a plugin that keeps running out of
/// time while it starts.
const START_ATTEMPTS: u32 = 3;

/// The longest call time limit under which a start that ran out of time is
/// tried again. A host stall long enough to matter against a longer limit
/// is not a moment's load, and retrying would hold up the other plugins'
/// loads (they load one after another) for more than two seconds.
const LONGEST_RETRIED_LIMIT: Duration = Duration::from_secs(1);

/// Starts a plugin's first instance with `start`. A start cut off by a call
/// time limit of at most [`LONGEST_RETRIED_LIMIT`]
/// ([`CallError::StartDeadline`]) is tried again, up to [`START_ATTEMPTS`]
/// times in all: the limit is wall time, so a host busy for a moment (a
/// build beside it, a cold cache) can push an honest plugin past it once,
/// while a plugin that is slow to start is slow every time and is still
/// rejected. Any other failure is final at once; a full instance pool is
/// [`ValidateError::NoRoom`] (the registry tries the files again).
async fn first_start<T, F>(plugin: &str, mut start: impl FnMut() -> F) -> Result<T, ValidateError>
where
    F: Future<Output = Result<T, CallError>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Ok(started) => return Ok(started),
            Err(err @ CallError::StartDeadline { limit, .. })
                if attempt < START_ATTEMPTS && limit <= LONGEST_RETRIED_LIMIT =>
            {
                tracing::warn!(
                    plugin,
                    attempt,
                    error = %err,
                    "Plugin start ran out of time; trying again."
                );
                attempt += 1;
            }
            Err(err @ CallError::StartDeadline { .. }) if attempt > 1 => {
                return Err(ValidateError::Start(format!("{err} ({attempt} attempts)")));
            }
            Err(err @ CallError::Capacity(_)) => {
                return Err(ValidateError::NoRoom(err.to_string()));
            }
            Err(err) => return Err(ValidateError::Start(err.to_string())),
        }
    }
}

/// Outputs one manifest may map, at most.
const MAX_OUTPUTS: usize = 64;

/// Whether `name` may name a plugin: ASCII letters, digits, `.`, `_` or
/// `-` (the daemon refuses a `NAME.wasm` otherwise).
pub fn is_plugin_name(name: &str) -> bool {
    is_name(name, usize::MAX)
}

/// Whether `name` is 1 to `max` ASCII letters, digits, `.`, `_` or `-`:
/// the rule for plugin names (unbounded), output names and Kafka topics.
fn is_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Applies the daemon's defaults and maxima to a manifest.
///
/// `wasi` is the manifest's grants as [`Sandbox::check_grants`] resolved
/// them.
fn resolve_spec(
    sandbox: &Sandbox,
    name: &str,
    manifest: &Manifest,
    wasi: WasiGrants,
) -> Result<PluginSpec, String> {
    let config = sandbox.config();
    let limits = config.default_limits.merge(&manifest.limits);
    limits.check(&config.max_limits, "limits")?;
    if manifest.outputs.len() > MAX_OUTPUTS {
        return Err(format!(
            "outputs: {} mapped, more than {MAX_OUTPUTS}",
            manifest.outputs.len()
        ));
    }
    for (output, topic) in &manifest.outputs {
        if !is_name(output, 64) {
            return Err(format!(
                "outputs: the name \"{}\" is not 1 to 64 letters, digits, '.', '_' or '-'",
                crate::text::quote_bounded(output, 64)
            ));
        }
        if topic.trim().is_empty() {
            return Err(format!("outputs.{output}: the topic name is empty"));
        }
        if let Some(reason) = crate::kafka::topic_name_error(topic) {
            return Err(format!("outputs.{output}: {reason}"));
        }
        // The broker's own (`__consumer_offsets` holds every group's
        // committed offsets, `__transaction_state` the transactions).
        if topic.starts_with("__") {
            return Err(format!(
                "outputs.{output}: {topic} is an internal topic (names starting with __ are the broker's); a plugin may not write to it"
            ));
        }
        if let Some((_, setting)) = config.reserved_topics.iter().find(|(t, _)| t == topic) {
            return Err(format!(
                "outputs.{output}: {topic} is the daemon's own ({setting}); a plugin may not write to it"
            ));
        }
        if !config.allows_topic(topic) {
            return Err(format!(
                "outputs.{output}: {topic} is not in sandbox.allowed_topics"
            ));
        }
    }
    let input_outputs = manifest
        .outputs
        .values()
        .filter(|topic| config.input_topics.contains(topic))
        .cloned()
        .collect();
    Ok(PluginSpec {
        name: name.to_owned(),
        outputs: manifest.outputs.clone(),
        input_outputs,
        config: manifest.config_strings(),
        limits,
        wasi,
        max_record_bytes: config.max_record_bytes,
        log: sandbox.plugin_log(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`resolve_spec`] of a manifest granting no directory (whose check
    /// needs no runtime) for plugin "p".
    fn resolve(sandbox: &Sandbox, manifest: &Manifest) -> Result<PluginSpec, String> {
        let wasi = futures::executor::block_on(sandbox.check_grants(&manifest.wasi))
            .map_err(|err| err.to_string())?;
        resolve_spec(sandbox, "p", manifest, wasi)
    }

    #[test]
    fn lists_plugin_files_but_not_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "a.wasm",
            "a.toml",
            "b.toml",
            ".c.wasm",
            "d.txt",
            "e.wasm.part",
        ] {
            std::fs::write(dir.path().join(file), b"").unwrap();
        }
        let names = plugin_names(dir.path()).unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_file_name_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"bad\xffname.wasm"));
        std::fs::write(&file, b"\0asm").unwrap();
        let hidden = dir.path().join(std::ffi::OsStr::from_bytes(b".\xfe.wasm"));
        std::fs::write(hidden, b"").unwrap();
        let names = plugin_names(dir.path()).unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["bad\u{fffd}name"]);

        let config = crate::config::Config::default();
        let sandbox = Arc::new(Sandbox::new(config.sandbox_config(None)).unwrap());
        let report = load_dir(&sandbox, dir.path()).await.unwrap();
        assert!(report.plugins.is_empty() && report.disabled.is_empty());
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].ends_with(
                "bad\u{fffd}name.wasm: plugin names may only contain letters, digits, '-', '_' and '.'"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn no_output_may_map_to_the_daemons_own_topics() {
        let config = crate::config::Config::default();
        let sandbox = Sandbox::new(config.sandbox_config(None)).unwrap();
        let spec = |topic: &str| {
            let manifest = Manifest::parse(&format!("[outputs]\nout = \"{topic}\"\n")).unwrap();
            resolve(&sandbox, &manifest).map(|spec| spec.outputs)
        };
        let changelog = config.kafka.changelog_topic();
        assert_eq!(
            spec(&changelog).unwrap_err(),
            format!(
                "outputs.out: {changelog} is the daemon's own (kafka.changelog_topic); a plugin may not write to it"
            )
        );
        assert!(
            spec(&config.kafka.dead_letter_topic)
                .unwrap_err()
                .contains("(kafka.dead_letter_topic)")
        );
        // The input topic is allowed: the recurrence plugin writes the next
        // occurrence there.
        assert!(spec(&config.kafka.input_topics[0]).is_ok());
        // What Kafka would refuse to create is refused by name at load, not
        // at the daemon's start-up.
        assert_eq!(
            spec("bad topic").unwrap_err(),
            "outputs.out: \"bad topic\" is not a Kafka topic name (1 to 249 letters, digits, '.', '_' or '-')"
        );
        assert_eq!(
            spec("__consumer_offsets").unwrap_err(),
            "outputs.out: __consumer_offsets is an internal topic (names starting with __ are the broker's); a plugin may not write to it"
        );
        assert!(spec("_private").is_ok());
        assert!(spec(&"t".repeat(250)).is_err());
        assert!(spec("..").is_err());
        assert!(spec(&"t".repeat(249)).is_ok());
        let named = |name: &str| {
            let manifest = Manifest::parse(&format!("[outputs]\n\"{name}\" = \"t\"\n")).unwrap();
            resolve(&sandbox, &manifest).map(|_| ())
        };
        assert_eq!(
            named("a\\nb").unwrap_err(),
            "outputs: the name \"a\\nb\" is not 1 to 64 letters, digits, '.', '_' or '-'"
        );
        let many: String = (0..65).map(|i| format!("o{i} = \"t\"\n")).collect();
        let manifest = Manifest::parse(&format!("[outputs]\n{many}")).unwrap();
        assert_eq!(
            resolve(&sandbox, &manifest).unwrap_err(),
            "outputs: 65 mapped, more than 64"
        );
    }

    /// With `sandbox.allowed_topics` set, an output may map only to a
    /// topic it lists by name or prefix.
    #[test]
    fn outputs_map_only_to_allowed_topics() {
        let mut config = crate::config::Config::default();
        config.sandbox.allowed_topics = vec!["reminders".into(), "team-a.*".into()];
        let sandbox = Sandbox::new(config.sandbox_config(None)).unwrap();
        let spec = |topic: &str| {
            let manifest = Manifest::parse(&format!("[outputs]\nout = \"{topic}\"\n")).unwrap();
            resolve(&sandbox, &manifest).map(|_| ())
        };
        assert!(spec("reminders").is_ok());
        assert!(spec("team-a.audit").is_ok());
        assert_eq!(
            spec("reminders-2").unwrap_err(),
            "outputs.out: reminders-2 is not in sandbox.allowed_topics"
        );
        assert!(spec("team-b.audit").is_err());
    }

    fn start_deadline() -> CallError {
        start_deadline_of(Duration::from_millis(100))
    }

    fn start_deadline_of(limit: Duration) -> CallError {
        CallError::StartDeadline {
            what: "init",
            limit,
        }
    }

    /// Runs `first_start` over `results`, one per attempt; returns its
    /// outcome and how many attempts it made.
    async fn start_with(results: Vec<Result<u8, CallError>>) -> (Result<u8, String>, usize) {
        let mut results = results.into_iter();
        let mut attempts = 0;
        let outcome = first_start("p", || {
            attempts += 1;
            std::future::ready(results.next().expect("no more attempts expected"))
        })
        .await
        .map_err(|err| match err {
            ValidateError::Start(message) => message,
            other => other.to_string(),
        });
        (outcome, attempts)
    }

    #[tokio::test]
    async fn a_full_instance_pool_is_no_verdict_on_the_plugin() {
        let full = CallError::Capacity("the instance pool is full: no slot".into());
        let (outcome, attempts) = start_with(vec![Err(full)]).await;
        assert_eq!(attempts, 1);
        assert_eq!(
            outcome.unwrap_err(),
            "cannot start now: instantiation failed: the instance pool is full: no slot; \
             tried again at the next rescan"
        );
    }

    #[tokio::test]
    async fn a_start_that_ran_out_of_time_once_is_tried_again() {
        let (outcome, attempts) = start_with(vec![Err(start_deadline()), Ok(7)]).await;
        assert_eq!((outcome, attempts), (Ok(7), 2));
    }

    #[tokio::test]
    async fn a_start_that_always_runs_out_of_time_is_rejected_after_three_attempts() {
        let (outcome, attempts) = start_with(vec![Err(start_deadline()); 3]).await;
        assert_eq!(attempts, 3);
        assert_eq!(
            outcome.unwrap_err(),
            "instantiation failed: deadline: init took longer than the call time limit of 100ms \
             (3 attempts)"
        );
    }

    #[tokio::test]
    async fn a_start_that_ran_out_of_a_long_time_limit_is_not_tried_again() {
        let (outcome, attempts) =
            start_with(vec![Err(start_deadline_of(Duration::from_secs(2)))]).await;
        assert_eq!(attempts, 1);
        assert_eq!(
            outcome.unwrap_err(),
            "instantiation failed: deadline: init took longer than the call time limit of 2s"
        );
    }

    #[tokio::test]
    async fn any_other_start_failure_is_final_at_once() {
        let failed = CallError::Instantiate("memory limit 1 MiB is below …".into());
        let (outcome, attempts) = start_with(vec![Err(failed)]).await;
        assert_eq!(attempts, 1);
        assert!(outcome.unwrap_err().contains("memory limit"));
    }
}
