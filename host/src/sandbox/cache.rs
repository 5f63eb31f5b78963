//! On-disk cache of compiled components, so a restart does not recompile.
//!
//! Entries are keyed by the SHA-256 of the `.wasm` bytes and the engine's
//! compatibility hash (wasmtime version + compilation settings), and written
//! atomically (temp file + rename), so a crash never leaves a torn entry.
//!
//! Every plugin version an operator deploys and every wasmtime upgrade adds
//! entries (up to tens of MB each) that nothing reads again, so the cache is
//! held to about [`MAX_CACHE_BYTES`]: once a new entry has loaded
//! ([`ComponentCache::adopt`]), the entries written or loaded longest ago are
//! removed until the rest fit (a load sets an entry's modification time;
//! another daemon writing to the same directory, or a crash mid-write
//! leaving a temporary file, can take it past the bound for a while). One
//! removed while still in use costs a recompile at the next start, nothing
//! more; a daemon keeps what it has loaded (the kernel keeps a mapped file
//! until it is unmapped).
//!
//! An entry is native code the daemon runs, so whoever can write the
//! directory can run code as the daemon. As ssh does with its key files,
//! the cache is used only if the directory belongs to the daemon's user (or
//! root) and no one else may write to it ([`ComponentCache::open`] creates
//! it `0700`, and takes group and other write permission away from one of
//! its own, as a umask of `002` left it); an entry is loaded only if it is
//! a regular file held to the same rule, opened without following a
//! symlink and checked by its open descriptor, and mapped through that
//! descriptor (`/proc/self/fd`), so the file checked is the file run
//! whatever is renamed in its place meanwhile.

// Deserializing a compiled artifact is `unsafe` in wasmtime: the bytes are
// executed as native code. We only ever load files this module wrote, named
// by the hash of the source and of the engine configuration, from a
// directory no other user can write (checked in `open` and per entry).
#![allow(unsafe_code)]

use std::fs::{File, Metadata};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::private_dir::{self, NotPrivate, Tightened, unsafe_because};

/// The most the cache directory's entries may hold together.
pub const MAX_CACHE_BYTES: u64 = 1 << 30;

/// The file name ending of an entry.
const ENTRY_SUFFIX: &str = ".cwasm";

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    max_bytes: u64,
}

/// Why a cache directory is not used.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedCache {
    /// It could not be created or examined.
    #[error("cache directory {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// It is not a directory, not the daemon's user's (or root's), or
    /// others may write to it.
    #[error(
        "cache directory {}: {why}; compiled components run as native code, so it must \
         belong to this user (or root) and be writable by its owner only (`chmod go-w`, \
         or set another sandbox.cache_dir)",
        dir.display()
    )]
    Unsafe {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl ComponentCache {
    /// The cache in `dir` for components compiled by `engine`: `dir` is
    /// created (`0700`) if missing, and refused unless it belongs to this
    /// process's user (or root) and only its owner may write to it.
    pub fn open(dir: PathBuf, engine: &Engine) -> Result<Self, UntrustedCache> {
        match private_dir::open(&dir) {
            Ok(None) => {}
            Ok(Some(Tightened { from, to })) => tracing::warn!(
                dir = %dir.display(),
                from = %format_args!("{from:04o}"),
                to = %format_args!("{to:04o}"),
                "Took group and other write permission away from the compiled-component cache: its entries run as native code."
            ),
            Err(NotPrivate::Io(source)) => return Err(UntrustedCache::Io { dir, source }),
            Err(NotPrivate::Unsafe(why)) => return Err(UntrustedCache::Unsafe { dir, why }),
        }
        Ok(Self::with_limit(dir, engine, MAX_CACHE_BYTES))
    }

    /// The same, its entries held to `max_bytes` together.
    fn with_limit(dir: PathBuf, engine: &Engine, max_bytes: u64) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            max_bytes,
        }
    }

    fn path(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}{ENTRY_SUFFIX}", self.engine_key))
    }

    /// The cached component for `content_hash`, if one is stored and loads.
    pub fn load(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.path(content_hash);
        let file = match self.open_entry(&path) {
            Ok(file) => file?,
            Err(why) => {
                // Left in place: a store renames a fresh entry over it.
                tracing::warn!(path = %path.display(), why, "Not loading a cached component that may not be this daemon's.");
                return None;
            }
        };
        match Self::map(engine, &file, &path) {
            Ok(component) => {
                // Used now: the last entries [`Self::prune`] would remove.
                // Best effort (a read-only cache still loads).
                let _ = File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|file| file.set_modified(std::time::SystemTime::now()));
                Some(component)
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "Discarding unreadable cached component.");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component's artifact; whether it was stored.
    /// Failure only costs a recompile later, so it is logged, not returned.
    /// The entry counts toward the limit once [`Self::adopt`] has loaded it.
    pub fn store(&self, content_hash: &str, artifact: &[u8]) -> bool {
        match self.try_store(content_hash, artifact) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(dir = %self.dir.display(), error = %err, "Could not cache compiled component.");
                false
            }
        }
    }

    /// The component [`Self::store`] just wrote for `content_hash`, mapped
    /// from its file; then the cache is pruned to its limit, keeping it.
    /// If it does not load — the engine's instance limits refuse the
    /// component, or the directory does not allow mapping code — the file is
    /// removed and the error returned for the caller to judge: a component
    /// that cannot run never pushes out one that can.
    pub fn adopt(&self, engine: &Engine, content_hash: &str) -> wasmtime::Result<Component> {
        let path = self.path(content_hash);
        let checked = match self.open_entry(&path) {
            Ok(Some(file)) => Self::map(engine, &file, &path),
            Ok(None) => Err(wasmtime::format_err!("{}: gone", path.display())),
            Err(why) => Err(wasmtime::format_err!(
                "{}: not trusted: {why}",
                path.display()
            )),
        };
        match checked {
            Ok(component) => {
                self.prune(&path);
                Ok(component)
            }
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                Err(err)
            }
        }
    }

    /// The entry at `path`, opened without following a symlink (nor
    /// blocking on a FIFO) and checked by its open descriptor: `Ok(None)`
    /// when there is none, `Err(why)` when it may not be this daemon's. The
    /// directory is checked again too, as a daemon runs for months and a hot
    /// reload loads long after [`Self::open`] looked.
    fn open_entry(&self, path: &Path) -> Result<Option<File>, String> {
        let opened = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match opened {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err("it is a symlink".to_owned());
            }
            Err(err) => return Err(err.to_string()),
        };
        let meta = file.metadata().map_err(|err| err.to_string())?;
        if !meta.is_file() {
            return Err("it is not a regular file".to_owned());
        }
        let why = match std::fs::metadata(&self.dir) {
            Ok(dir) => unsafe_because("its directory", &dir),
            Err(err) => Some(format!("its directory: {err}")),
        }
        .or_else(|| unsafe_because("it", &meta));
        match why {
            Some(why) => Err(why),
            None => Ok(Some(file)),
        }
    }

    /// The component in the entry `file` (opened from `path` by
    /// [`Self::open_entry`]), mapped through its descriptor: `/proc/self/fd`
    /// names the open file itself, so what was checked is what is mapped.
    /// Without `/proc` it is read into memory instead.
    fn map(engine: &Engine, file: &File, path: &Path) -> wasmtime::Result<Component> {
        let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // SAFETY: see the module comment — the file is an entry `store`
        // wrote for this content hash and engine configuration, in a
        // directory only this user (or root) may write, and `open_entry`
        // checked the very file mapped or read here.
        let loaded = if by_descriptor.exists() {
            unsafe { Component::deserialize_file(engine, &by_descriptor) }
        } else {
            let mut bytes = Vec::new();
            let mut reader = file;
            reader.read_to_end(&mut bytes)?;
            unsafe { Component::deserialize(engine, bytes) }
        };
        loaded.map_err(|err| err.context(format!("loading {}", path.display())))
    }

    fn try_store(&self, content_hash: &str, artifact: &[u8]) -> anyhow::Result<()> {
        private_dir::create(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(content_hash))?;
        Ok(())
    }

    /// Removes the entries written or loaded longest ago (never `kept`, the
    /// one just loaded) until the rest fit in the limit. Best effort: what
    /// cannot be listed or removed is logged and left.
    fn prune(&self, kept: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(ENTRY_SUFFIX))
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(Metadata::is_file)?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == kept {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    tracing::info!(path = %path.display(), bytes = len, "Removed an old compiled component from the cache.");
                }
                // Another daemon sharing the directory removed it first.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => total -= len,
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "Could not remove an old compiled component from the cache.");
                }
            }
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::private_dir::euid;
    use std::fs::Permissions;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn age(path: &Path, seconds_ago: u64) {
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds_ago);
        File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(then))
            .expect("set the entry's time");
    }

    /// Names sort the other way round from their ages throughout, so a
    /// prune by name instead of by time would fail these.
    #[test]
    fn the_entries_compiled_longest_ago_go_first_once_over_the_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let cache = ComponentCache::with_limit(dir.path().to_owned(), &engine, 2_500);
        // An entry of another engine (an older wasmtime's), one of this
        // engine, a file that is not an entry and a directory named as one.
        let stale = dir
            .path()
            .join(format!("{}-0123456789abcdef.cwasm", "z".repeat(64)));
        std::fs::write(&stale, [0; 1_000]).expect("write");
        age(&stale, 300);
        assert!(cache.store("y", &[0; 1_000]));
        age(&cache.path("y"), 200);
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, [0; 5_000]).expect("write");
        let subdir = dir.path().join("w.cwasm");
        std::fs::create_dir(&subdir).expect("mkdir");

        assert!(cache.store("x", &[0; 1_000]));
        cache.prune(&cache.path("x"));
        assert!(!stale.exists(), "the oldest went");
        assert!(cache.path("y").exists() && cache.path("x").exists());
        assert!(
            other.exists() && subdir.exists(),
            "only entries are removed"
        );

        // One entry larger than the limit is still kept: it was just loaded.
        assert!(cache.store("a", &[0; 3_000]));
        cache.prune(&cache.path("a"));
        assert!(cache.path("a").exists());
        assert!(!cache.path("x").exists() && !cache.path("y").exists());
    }

    #[test]
    fn an_entry_loaded_lately_outlasts_one_written_later() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let artifact = Component::new(&engine, "(component)")
            .and_then(|c| c.serialize())
            .expect("compile an empty component");
        let n = artifact.len() as u64;
        let cache = ComponentCache::with_limit(dir.path().to_owned(), &engine, 2 * n + n / 2);
        assert!(cache.store("a-used", &artifact));
        age(&cache.path("a-used"), 400);
        assert!(cache.store("z-unused", &artifact));
        age(&cache.path("z-unused"), 300);
        assert!(cache.load(&engine, "a-used").is_some());

        assert!(cache.store("new", &artifact));
        assert!(cache.adopt(&engine, "new").is_ok(), "adopting prunes");
        assert!(cache.path("a-used").exists(), "loaded a moment ago");
        assert!(
            !cache.path("z-unused").exists(),
            "written 300 s ago, never loaded"
        );
        assert!(cache.path("new").exists());
    }

    #[test]
    fn an_entry_that_does_not_load_is_not_kept_and_pushes_nothing_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let cache = ComponentCache::with_limit(dir.path().to_owned(), &engine, 1_000);
        assert!(cache.store("old", &[0; 900]));
        assert!(cache.store("bad", &[0; 900]));
        assert!(cache.adopt(&engine, "bad").is_err());
        assert!(!cache.path("bad").exists());
        assert!(cache.path("old").exists());
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").mode() & 0o7777
    }

    fn refusal(dir: &Path) -> String {
        match ComponentCache::open(dir.to_owned(), &Engine::default()) {
            Ok(_) => panic!("{} was accepted", dir.display()),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_cache_directory_is_its_owners_alone() {
        let root = tempfile::tempdir().expect("temp dir");
        // Created where missing, parents too, for its owner only.
        let fresh = root.path().join("a/b/components");
        ComponentCache::open(fresh.clone(), &Engine::default()).expect("a fresh directory");
        assert_eq!(mode(&fresh), 0o700);

        // Ours but opened up (a umask of 002, a volume's setgid group):
        // closed again, the rest of its mode kept.
        for (opened, closed) in [
            (0o777, 0o755),
            (0o775, 0o755),
            (0o2775, 0o2755),
            (0o1777, 0o1755),
        ] {
            chmod(&fresh, opened);
            ComponentCache::open(fresh.clone(), &Engine::default()).expect("ours");
            assert_eq!(mode(&fresh), closed, "from {opened:04o}");
        }

        let file = root.path().join("file");
        std::fs::write(&file, b"").expect("write");
        assert!(
            refusal(&file).contains("not a directory"),
            "{}",
            refusal(&file)
        );

        // Another user's directory (only root can make one to test with):
        // refused, and left as it is.
        if euid() == 0 {
            std::os::unix::fs::chown(&fresh, Some(12_345), None).expect("chown");
            chmod(&fresh, 0o777);
            let refused = refusal(&fresh);
            assert!(
                refused.contains(&format!("cache directory {}", fresh.display()))
                    && refused.contains("belongs to uid 12345")
                    && refused.contains("chmod go-w"),
                "{refused}"
            );
            assert_eq!(mode(&fresh), 0o777);
        }
    }

    #[test]
    fn an_entry_that_may_not_be_ours_is_not_loaded() {
        let engine = Engine::default();
        let artifact = engine
            .precompile_component(b"(component)")
            .expect("compile");
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("components");
        let cache = ComponentCache::open(dir.clone(), &engine).expect("cache");
        assert!(cache.store("ok", &artifact));
        assert!(cache.load(&engine, "ok").is_some(), "our own entry loads");
        assert_eq!(mode(&cache.path("ok")), 0o600);
        let refused = |name: &str| cache.open_entry(&cache.path(name)).err();

        // A symlink to a good entry elsewhere.
        let elsewhere = root.path().join("elsewhere.cwasm");
        std::fs::copy(cache.path("ok"), &elsewhere).expect("copy");
        std::os::unix::fs::symlink(&elsewhere, cache.path("link")).expect("symlink");
        assert!(
            cache.load(&engine, "link").is_none(),
            "a symlink is not followed"
        );
        assert_eq!(refused("link").as_deref(), Some("it is a symlink"));

        // A FIFO: refused at once, not waited on.
        let fifo = std::ffi::CString::new(cache.path("fifo").into_os_string().into_encoded_bytes())
            .expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(cache.load(&engine, "fifo").is_none());
        assert_eq!(refused("fifo").as_deref(), Some("it is not a regular file"));

        // An entry others may write.
        std::fs::copy(cache.path("ok"), cache.path("open")).expect("copy");
        chmod(&cache.path("open"), 0o666);
        assert!(cache.load(&engine, "open").is_none());
        assert!(refused("open").is_some_and(|why| why.contains("mode 0666")));

        // Another user's entry (root only can make one).
        if euid() == 0 {
            std::fs::copy(cache.path("ok"), cache.path("theirs")).expect("copy");
            std::os::unix::fs::chown(cache.path("theirs"), Some(12_345), None).expect("chown");
            assert!(cache.load(&engine, "theirs").is_none());
        }

        // The directory opened up after `open` looked: nothing loads, and
        // nothing just stored is adopted.
        chmod(&dir, 0o777);
        assert!(cache.load(&engine, "ok").is_none());
        assert!(cache.store("new", &artifact));
        let Err(refused) = cache.adopt(&engine, "new") else {
            panic!("adopted from a directory others may write")
        };
        assert!(
            refused
                .to_string()
                .contains("its directory is writable by its group or others"),
            "{refused}"
        );
        chmod(&dir, 0o700);
        assert!(cache.load(&engine, "ok").is_some());
    }
}
