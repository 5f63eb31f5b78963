//! The process's open-file limit, raised at start to what the operator
//! allows.
//!
//! Every broker and admin connection, every component artifact the engine
//! maps and every file a plugin granted a directory keeps open is one of
//! the daemon's descriptors; plugins alone may hold up to 32 768 with the
//! default pool. A shell's soft limit is usually 1024, far below that,
//! while the hard limit (`ulimit -Hn`, systemd's `LimitNOFILE=`) is what
//! the operator means to allow. As Go's runtime and many servers do, the
//! daemon raises its soft limit to the hard one, so that the hard limit is
//! the one setting that counts.

use std::io;

/// The open-file limit before and after [`raise_open_file_limit`] raised
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit the process started with.
    pub from: u64,
    /// The soft limit now: the hard limit.
    pub to: u64,
}

/// Raises the soft open-file limit to the hard limit. `None` when it is
/// there already.
#[allow(unsafe_code)]
pub fn raise_open_file_limit() -> io::Result<Option<Raised>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live
    // local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(None);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `setrlimit` reads one `rlimit` through a pointer to a live
    // local. Raising the soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(Raised {
        from: limit.rlim_cur,
        to: limit.rlim_max,
    }))
}
