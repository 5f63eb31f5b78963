//! The error handlers return: a kind that tells the host what to do with
//! the event, a short code and a message. `?` turns any other error into an
//! `internal` one.

use std::fmt;

use crate::{ErrorKind, PluginError};

/// The result of a handler (`Result` is `Result<(), Error>`).
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// A handler failure. None of the call's effects are applied; the event is
/// dead-lettered (`bad-input`, `internal`) or retried (`retryable`).
///
/// Like `anyhow::Error`, it converts from every `std::error::Error`, so `?`
/// works on serde, parsing and I/O errors; such errors are `internal`.
pub struct Error {
    kind: ErrorKind,
    code: String,
    message: String,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The input is wrong for this plugin: dead-letter the event now.
    pub fn bad_input(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, code, message)
    }

    /// A transient failure: the host calls the handler again with
    /// back-off, then dead-letters the event.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, code, message)
    }

    /// A bug or broken invariant: dead-lettered, and counted toward the
    /// plugin's quarantine.
    pub fn internal(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, code, message)
    }

    /// What the host does with the event.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The short machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for the operator.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::internal("internal", message)
    }
}

impl From<Error> for PluginError {
    fn from(err: Error) -> Self {
        PluginError {
            kind: err.kind,
            code: err.code,
            message: err.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: {}", self.kind.name(), self.code, self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ErrorKind {
    /// The WIT name: `bad-input`, `retryable`, `internal`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::BadInput => "bad-input",
            ErrorKind::Retryable => "retryable",
            ErrorKind::Internal => "internal",
        }
    }
}
