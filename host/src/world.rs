//! Rust bindings for the `todo:plugin` WIT world — the one place that calls
//! `bindgen!`. Everything else uses the types re-exported here: the event
//! decoder builds [`TaskEvent`] directly, so an event is parsed once and
//! handed to every plugin as a typed record.

// The generated bindings call `TypedFunc::new_unchecked` after type-checking
// the component's exports; the unsafety is wasmtime's, not ours.
#![allow(unsafe_code, missing_docs)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Host functions may fail the call (e.g. emitting to an output the
    // manifest does not map); the error becomes a trap the sandbox classifies.
    imports: { default: trappable },
    // Calls are async so a guest yields to the runtime at every epoch tick
    // and a call waiting in a WASI pollable can be cut off at its deadline.
    exports: { default: async },
    additional_derives: [PartialEq, serde::Serialize],
});

pub use todo::plugin::host::LogLevel;
pub use todo::plugin::types::{
    EventKind, Frequency, Priority, Recurrence, SimpleRecurrence, Task, Timestamp,
};

impl EventKind {
    /// The lower-case name used in manifests and output: `created`,
    /// `updated`, `completed`, `deleted`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Completed => "completed",
            Self::Deleted => "deleted",
        }
    }
}

/// The export a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    /// `on-event`.
    OnEvent,
    /// `on-timer`.
    OnTimer,
}

impl Handler {
    /// The export's WIT name, used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnEvent => "on-event",
            Self::OnTimer => "on-timer",
        }
    }
}
