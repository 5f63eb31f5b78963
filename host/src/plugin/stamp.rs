//! What identifies a plugin's files on disk without reading them, so a
//! rescan does not read and hash every plugin again.
//!
//! Every rescan — each write in the plugins directory, and the watcher's
//! fallback every 30 s — used to read each `NAME.wasm` whole (up to
//! `sandbox.max_component_bytes`) and hash it, to learn that almost all of
//! them had not changed. A [`Stamp`] is the device, inode, size and
//! modification and change times of the `.wasm` and the manifest (through
//! symlinks, so a Kubernetes volume's swapped `..data` link shows as a
//! new inode). A file found with the stamp of the last read is not read
//! again — with two cautions taken from git's "racily clean" index entries:
//!
//! - a stamp vouches for files only once their times are
//!   [`SETTLED`] older than the stamp itself, since a file system with
//!   coarse timestamps (one or two seconds) gives a second write in the
//!   same tick the same times;
//! - it vouches for [`TRUSTED_FOR`] at most, after which the files are read
//!   whole again, bounding what a clock skewed between a network file
//!   system and this host could hide.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How much older than a stamp files must be for it to vouch for them.
pub const SETTLED: Duration = Duration::from_secs(2);
/// How long a stamp vouches for files at most.
pub const TRUSTED_FOR: Duration = Duration::from_secs(5 * 60);

/// A plugin's files as `stat` sees them (see the module comment).
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The `.wasm`'s and the manifest's (`None`: no such file).
    files: [Option<FileStamp>; 2],
    /// When it was taken.
    taken: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(Self {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            })),
            // A symlink to nothing is not "no file": the read says what
            // it is.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                match std::fs::symlink_metadata(path) {
                    Ok(_) => Err(err),
                    Err(_) => Ok(None),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Whether both its times are `SETTLED` before `at`.
    fn settled_by(&self, at: SystemTime) -> bool {
        let Some(limit) = at.checked_sub(SETTLED) else {
            return false;
        };
        [self.mtime, self.ctime].into_iter().all(|(secs, nanos)| {
            let time = u64::try_from(secs).ok().and_then(|secs| {
                let nanos = u32::try_from(nanos).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            });
            time.is_some_and(|time| time <= limit)
        })
    }
}

impl Stamp {
    /// The stamp of `wasm` and `manifest` now. An error (a dangling link, a
    /// file that cannot be examined) means the files must be read.
    pub fn take(wasm: &Path, manifest: &Path) -> io::Result<Self> {
        let taken = SystemTime::now();
        Ok(Self {
            files: [FileStamp::of(wasm)?, FileStamp::of(manifest)?],
            taken,
        })
    }

    /// Whether files found with stamp `now` are the ones read when this
    /// stamp was taken.
    pub fn vouches_for(&self, now: &Self) -> bool {
        self.files == now.files
            && now
                .taken
                .duration_since(self.taken)
                .is_ok_and(|age| age < TRUSTED_FOR)
            && self
                .files
                .iter()
                .flatten()
                .all(|f| f.settled_by(self.taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_vouches_only_for_settled_files_it_has_seen_and_not_for_long() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (wasm, manifest) = (dir.path().join("p.wasm"), dir.path().join("p.toml"));
        std::fs::write(&wasm, b"one").expect("write");
        let take = || Stamp::take(&wasm, &manifest).expect("stamp");
        let later = |stamp: Stamp, by: Duration| Stamp {
            taken: stamp.taken + by,
            ..stamp
        };
        // Just written: times within SETTLED of the stamp may be shared
        // by a second write on a coarse file system.
        let fresh = take();
        assert!(!fresh.vouches_for(&take()));
        // The same files, well after their last write: vouched for, until
        // the stamp is TRUSTED_FOR old.
        let settled = later(take(), SETTLED + Duration::from_secs(1));
        let seen = |by| later(take(), SETTLED + Duration::from_secs(1) + by);
        assert!(settled.vouches_for(&seen(Duration::ZERO)));
        assert!(settled.vouches_for(&seen(TRUSTED_FOR - Duration::from_secs(1))));
        assert!(!settled.vouches_for(&seen(TRUSTED_FOR)));

        // Any change shows: same size new bytes (new times), a manifest
        // added, a file swapped for another (a new inode).
        std::fs::write(&wasm, b"two").expect("write");
        assert!(!settled.vouches_for(&seen(Duration::ZERO)));
        let settled = later(take(), SETTLED + Duration::from_secs(1));
        std::fs::write(&manifest, b"").expect("write");
        assert!(!settled.vouches_for(&seen(Duration::ZERO)));
        let settled = later(take(), SETTLED + Duration::from_secs(1));
        let other = dir.path().join("other");
        std::fs::write(&other, b"").expect("write");
        std::fs::rename(&other, &manifest).expect("rename");
        assert!(!settled.vouches_for(&seen(Duration::ZERO)));

        // A manifest swapped for a link to nothing cannot be vouched for.
        std::fs::remove_file(&manifest).expect("remove");
        std::os::unix::fs::symlink(dir.path().join("gone"), &manifest).expect("symlink");
        assert!(Stamp::take(&wasm, &manifest).is_err());
    }
}
