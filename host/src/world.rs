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
