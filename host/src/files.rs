//! Reading files that are untrusted input: the plugins directory's wasm
//! and manifests, and the secret files `kafka.property_files` names (and,
//! capped in size alone, the configuration file).
//!
//! [`read_bounded`] reads regular files only. A symlink is followed and
//! its target held to the same rule, so a link to `/dev/zero`, a FIFO, a
//! socket, a device or a directory is refused by name of its type, never
//! opened for reading. The size is checked against a cap before reading, and the file
//! is opened non-blocking and checked again through the open descriptor,
//! so a file swapped for a FIFO in between cannot block the reader either.
//! Reads stop at the cap whatever the file claims. A symlink to nothing
//! is an error of its own, not "not found".

use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::units::ByteSize;

/// Reads `path` whole if it is a regular file of at most `max` bytes.
/// Errors say what the file is instead (`a FIFO`, `a directory`) or how
/// large; they never quote its contents. `NotFound` passes through.
pub fn read_bounded(path: &Path, max: ByteSize) -> io::Result<Vec<u8>> {
    let metadata = std::fs::metadata(path).map_err(|err| dangling(path, err))?;
    check(&metadata, max)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let metadata = file.metadata()?;
    check(&metadata, max)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max.bytes().saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max.bytes() {
        return Err(too_large(bytes.len() as u64, max));
    }
    Ok(bytes)
}

/// Reads `path` as UTF-8 text, under the same rules as [`read_bounded`].
pub fn read_text_bounded(path: &Path, max: ByteSize) -> io::Result<String> {
    utf8(read_bounded(path, max)?)
}

/// Reads `path` as UTF-8 text of at most `max` bytes, whatever kind of
/// file it is: for a file the operator names (`--config /dev/stdin` or a
/// shell's `<(…)` are pipes), which is trusted to end, but not to be small
/// (`/dev/zero`, a log named by mistake).
pub fn read_text_capped(path: &Path, max: ByteSize) -> io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.bytes().saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max.bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refused: larger than the limit of {max}"),
        ));
    }
    utf8(bytes)
}

/// `bytes` as text; the error does not quote them.
fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn check(metadata: &Metadata, max: ByteSize) -> io::Result<()> {
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refused: {what}, not a regular file"),
        ));
    }
    if metadata.len() > max.bytes() {
        return Err(too_large(metadata.len(), max));
    }
    Ok(())
}

/// `err` for `path`, unless `path` is a symlink to nothing: then an error
/// saying so, not `NotFound` — a link whose target went away is a broken
/// file (its plugin's last good version keeps serving), not a file
/// removed (a manifest read as absent would load with defaults, turning
/// `enabled = false` back on).
fn dangling(path: &Path, err: io::Error) -> io::Error {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if err.kind() == io::ErrorKind::NotFound && link {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "refused: a symlink to a file that does not exist",
        )
    } else {
        err
    }
}

fn too_large(size: u64, max: ByteSize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refused: {size} bytes is larger than the limit of {max}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ok.wasm");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, ByteSize(10)).unwrap(), b"0123456789");
        let err = read_bounded(&file, ByteSize(9)).unwrap_err().to_string();
        assert_eq!(err, "refused: 10 bytes is larger than the limit of 9 bytes");

        let link = dir.path().join("zero.wasm");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = read_bounded(&link, ByteSize::mib(1))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "refused: a character device, not a regular file");

        let err = read_bounded(dir.path(), ByteSize::mib(1))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "refused: a directory, not a regular file");

        let sparse = dir.path().join("sparse.wasm");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let err = read_bounded(&sparse, ByteSize::mib(64))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1073741824 bytes is larger than the limit of 64MiB"),
            "{err}"
        );

        let missing = read_bounded(&dir.path().join("none"), ByteSize(1)).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let dangling = dir.path().join("dangling.toml");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        let err = read_bounded(&dangling, ByteSize(1)).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "refused: a symlink to a file that does not exist"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.wasm");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = read_bounded(&fifo, ByteSize::mib(1))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "refused: a FIFO (named pipe), not a regular file");
    }
}
