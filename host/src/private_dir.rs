//! Directories the daemon runs code from — the compiled-component cache,
//! the plugin kit's tools — are its user's alone.
//!
//! Whoever can write such a directory can run code as its user. As ssh does
//! with its key files, one is used only if it belongs to this process's
//! user (or root) and no one else may write to it. [`open`] creates a
//! missing one `0700` (parents too) and takes group and other write
//! permission away from one of the user's own, as a umask of `002` or a
//! volume's group left it.

use std::fs::{DirBuilder, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Why a directory may not be run from.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    /// It could not be created or examined.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// It is not a directory, belongs to another user, or others may write
    /// to it.
    #[error("{0}")]
    Unsafe(String),
}

/// Write permission [`open`] took away from a directory of this user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tightened {
    /// The mode it had.
    pub from: u32,
    /// The mode it has now.
    pub to: u32,
}

/// Makes sure `dir` is this user's alone (see the module comment). Returns
/// the change of mode made, if one was.
pub fn open(dir: &Path) -> Result<Option<Tightened>, NotPrivate> {
    let meta = made(dir)?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() == euid() && mode & 0o022 != 0 {
        let to = mode & !0o022;
        std::fs::set_permissions(dir, Permissions::from_mode(to))?;
        return Ok(Some(Tightened { from: mode, to }));
    }
    match unsafe_because("it", &meta) {
        Some(why) => Err(NotPrivate::Unsafe(why)),
        None => Ok(None),
    }
}

/// Like [`open`], but a directory opened up to others is refused rather
/// than closed: what it holds may have been put there meanwhile, so
/// closing it would not make it safe to run from.
pub fn open_strict(dir: &Path) -> Result<(), NotPrivate> {
    match unsafe_because("it", &made(dir)?) {
        Some(why) => Err(NotPrivate::Unsafe(why)),
        None => Ok(()),
    }
}

/// `dir`'s metadata, the directory created first if missing.
fn made(dir: &Path) -> Result<Metadata, NotPrivate> {
    match create(dir) {
        // Something other than a directory is there: said below.
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err.into()),
        _ => {}
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(NotPrivate::Unsafe("it is not a directory".to_owned()));
    }
    Ok(meta)
}

/// Creates `dir` (and any missing parents) for its owner only.
pub fn create(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// What makes `what` (a directory or a file, with metadata `meta`) unsafe
/// to run code from, if anything: another user owns it, or its group or
/// others may write to it.
pub fn unsafe_because(what: &str, meta: &Metadata) -> Option<String> {
    let uid = euid();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid && meta.uid() != 0 {
        Some(format!(
            "{what} belongs to uid {}, not to this process's user ({uid}) or root",
            meta.uid()
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "{what} is writable by its group or others (mode {mode:04o})"
        ))
    } else {
        None
    }
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}
