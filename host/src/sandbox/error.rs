//! What can go wrong in a plugin call, classified so operators can tell a
//! slow plugin from a greedy, a buggy or a misbehaving one.

use std::fmt;
use std::time::Duration;

use super::limits::QuotaExceeded;
use crate::units::format_duration;
use crate::world::ErrorKind;

/// Why a call trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// The call ran past its time limit (epoch deadline).
    Deadline,
    /// The plugin tried to grow memory past its limit.
    Memory,
    /// The plugin overflowed its wasm stack.
    StackOverflow,
    /// The guest panicked or hit `unreachable`.
    Panic,
    /// The plugin used a capability it was not granted (emitted to an
    /// output its manifest does not map).
    Denied,
    /// The plugin used a state or timer key longer than the host takes.
    /// Unlike a denial, input can provoke it (a key built from an event's
    /// fields), so it is not held against the plugin.
    KeyTooLong,
    /// Any other trap (out-of-bounds access, bad conversion, …).
    Other,
}

impl TrapKind {
    /// A stable lower-case name, used in metrics and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::StackOverflow => "stack-overflow",
            Self::Panic => "panic",
            Self::Denied => "denied",
            Self::KeyTooLong => "key-too-long",
            Self::Other => "trap",
        }
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed plugin call. The call's effects were discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The handler returned `err(plugin-error)`. A `bad-input` or
    /// `retryable` error is not held against the plugin; `internal` is.
    #[error("plugin returned {} error [{code}]: {message}", kind.as_str())]
    Plugin {
        /// What the plugin says went wrong (0.1.0 plugins: `bad-input`).
        kind: ErrorKind,
        /// The plugin's error code (bounded).
        code: String,
        /// The plugin's message (bounded, control characters escaped).
        message: String,
    },
    /// The call trapped; the instance that ran it is discarded.
    #[error("{kind}: {message}")]
    Trap {
        /// The class of trap.
        kind: TrapKind,
        /// Details, including a guest panic message when there is one.
        message: String,
    },
    /// The call went past one of the plugin's quotas; the instance that
    /// ran it is discarded.
    #[error("quota: {0}")]
    Quota(#[from] QuotaExceeded),
    /// The call emitted to an input topic while handling input already
    /// `plugins.max_hops` plugin emits from its producer's record (or to
    /// any topic, [`crate::dispatch::MAX_HOPS`] deep): it would carry a loop on. Not the
    /// plugin's fault — a record another plugin fed back can provoke it —
    /// and the loop ends here either way.
    #[error(
        "loop: an emit to {topic} while handling input {hops} plugin emits from its producer's record; {bound}"
    )]
    MaxHops {
        /// The topic of the emit refused.
        topic: String,
        /// The hops of the input handled.
        hops: u32,
        /// The bound it reached, as written: `plugins.max_hops = 4` (for
        /// an input topic) or the ceiling for any topic.
        bound: String,
    },
    /// No instance could be created for the call.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// No instance could be created for want of the host's resources —
    /// the sandbox holds as many as it may (`sandbox.max_instances`, across
    /// plugins and partitions), or a granted directory does not answer:
    /// not the plugin's fault. The message says which.
    #[error("instantiation failed: {0}")]
    Capacity(String),
    /// A new instance did not get ready (its start functions or `init`)
    /// within a call's time limit. Unlike the other start failures this one
    /// depends on how busy the host was, so a load retries it (when the
    /// limit is at most 1 s) before rejecting the plugin.
    #[error("instantiation failed: deadline: {what} took longer than the call time limit of {}", format_duration(*.limit))]
    StartDeadline {
        /// What was running: `starting the component` or `init`.
        what: &'static str,
        /// The plugin's call time limit.
        limit: Duration,
    },
    /// The plugin was not called: it is quarantined after failing too
    /// often in a row.
    #[error("quarantined after {failures} consecutive failures; next try at {retry_at}")]
    Quarantined {
        /// Consecutive failures so far.
        failures: u32,
        /// When the next trial call is allowed (RFC 3339).
        retry_at: String,
    },
}

impl CallError {
    /// A stable short name of the failure class, for metrics and headers.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Plugin {
                kind: ErrorKind::Internal,
                ..
            } => "plugin-internal",
            Self::Plugin { .. } => "plugin-error",
            Self::Trap { kind, .. } => kind.as_str(),
            Self::Quota(_) => "quota",
            Self::MaxHops { .. } => "max-hops",
            Self::Instantiate(_) | Self::StartDeadline { .. } => "instantiate",
            Self::Capacity(_) => "capacity",
            Self::Quarantined { .. } => "quarantined",
        }
    }

    /// Whether the failure is the plugin's own — a trap, a deadline, memory,
    /// a quota, a denial (an emit to an output its manifest does not map:
    /// the plugin's choice, and failing every call with one would
    /// otherwise never quarantine it), a failed instantiation, an
    /// `internal` error. A plugin rejecting its input (`bad-input`), a
    /// transient failure (`retryable`), an over-long key (which input can
    /// provoke), a loop cut off at `plugins.max_hops` and the sandbox's
    /// lack of room are not. What counts towards quarantine is
    /// [`CallError::counts_toward_quarantine`].
    pub fn is_plugin_fault(&self) -> bool {
        match self {
            Self::Trap { kind, .. } => *kind != TrapKind::KeyTooLong,
            Self::Quota(_) | Self::Instantiate(_) | Self::StartDeadline { .. } => true,
            Self::Plugin { kind, .. } => *kind == ErrorKind::Internal,
            Self::MaxHops { .. } | Self::Capacity(_) | Self::Quarantined { .. } => false,
        }
    }

    /// Whether the failure, as the dispatcher finally records it, counts
    /// towards quarantine: the plugin's own failures, and a `retryable`
    /// error still standing after its retries (each failed, or refused by
    /// the plugin's retry budget).
    pub fn counts_toward_quarantine(&self) -> bool {
        self.is_plugin_fault() || self.is_retryable()
    }

    /// Whether the plugin asked for the call to be tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Plugin {
                kind: ErrorKind::Retryable,
                ..
            }
        )
    }
}

/// Raised by host functions to fail the call with [`TrapKind::Denied`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Denied(pub(crate) String);

/// Raised by host functions to fail the call with
/// [`TrapKind::KeyTooLong`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyTooLong(pub(crate) String);
