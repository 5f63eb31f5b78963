//! Rust bindings for the `todo:plugin` WIT worlds — the one place that calls
//! `bindgen!`. The current interface, `todo:plugin@0.2.0`, is generated at
//! the top of this module and everything else uses its types: the event
//! decoder builds [`TaskEvent`] directly, so an event is parsed once and
//! handed to every plugin as a typed record.
//!
//! Components built against `todo:plugin@0.1.0` keep working: [`v0_1`] holds
//! that world's bindings, and [`Guest`] / [`GuestPre`] hide which version a
//! component targets — events are converted to the 0.1.0 types on the way in
//! and 0.1.0 errors (which have no kind) arrive as `bad-input`.

// The generated bindings call `TypedFunc::new_unchecked` after type-checking
// the component's exports; the unsafety is wasmtime's, not ours.
#![allow(unsafe_code, missing_docs)]

use wasmtime::component::InstancePre;
use wasmtime::{AsContextMut, Store};

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/0.2.0",
    // Host functions may fail the call (e.g. emitting to an output the
    // manifest does not map); the error becomes a trap the sandbox classifies.
    imports: { default: trappable },
    // Calls are async so a guest yields to the runtime at every epoch tick
    // and a call waiting in a WASI pollable can be cut off at its deadline.
    exports: { default: async },
    additional_derives: [PartialEq, serde::Serialize],
});

/// The frozen `todo:plugin@0.1.0` world, for components built before 0.2.0.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/0.1.0",
        imports: { default: trappable },
        exports: { default: async },
    });
}

pub use todo::plugin::host::LogLevel;
// `TaskEvent`, `FiredTimer` and `PluginError` are in scope from the world.
pub use todo::plugin::types::{
    ErrorKind, EventKind, Frequency, Priority, Recurrence, SimpleRecurrence, Task, Timestamp,
};

/// The interface versions the host implements, newest first.
pub const VERSIONS: [WitVersion; 2] = [WitVersion::V0_2, WitVersion::V0_1];

/// A version of the `todo:plugin` package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WitVersion {
    /// `todo:plugin@0.1.0`: no error kinds, no `init`.
    V0_1,
    /// `todo:plugin@0.2.0`.
    V0_2,
}

impl WitVersion {
    /// The version as written in WIT, e.g. `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }

    /// The version a component import (`todo:plugin/host@0.1.0`) names.
    pub fn of_import(name: &str) -> Option<Self> {
        let version = name.strip_prefix("todo:plugin/")?.split_once('@')?.1;
        VERSIONS.into_iter().find(|v| v.as_str() == version)
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A component linked against the host, ready to instantiate, in the world
/// version it targets.
#[derive(Clone)]
pub enum GuestPre<T: 'static> {
    V0_1(v0_1::PluginPre<T>),
    V0_2(PluginPre<T>),
}

impl<T: Send + 'static> GuestPre<T> {
    /// Type-checks the component's exports against the world of `version`.
    pub fn new(version: WitVersion, pre: InstancePre<T>) -> wasmtime::Result<Self> {
        Ok(match version {
            WitVersion::V0_1 => Self::V0_1(v0_1::PluginPre::new(pre)?),
            WitVersion::V0_2 => Self::V0_2(PluginPre::new(pre)?),
        })
    }

    /// The world version the component targets.
    pub fn version(&self) -> WitVersion {
        match self {
            Self::V0_1(_) => WitVersion::V0_1,
            Self::V0_2(_) => WitVersion::V0_2,
        }
    }

    /// The underlying pre-instance.
    pub fn instance_pre(&self) -> &InstancePre<T> {
        match self {
            Self::V0_1(pre) => pre.instance_pre(),
            Self::V0_2(pre) => pre.instance_pre(),
        }
    }

    /// Instantiates the component in `store`.
    pub async fn instantiate_async(&self, store: &mut Store<T>) -> wasmtime::Result<Guest> {
        Ok(match self {
            Self::V0_1(pre) => Guest::V0_1(pre.instantiate_async(store).await?),
            Self::V0_2(pre) => Guest::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

/// A live instance's exports, in the world version it targets.
pub enum Guest {
    V0_1(v0_1::Plugin),
    V0_2(Plugin),
}

impl Guest {
    /// Calls `init` with the plugin's configuration (0.1.0 components have
    /// no `init`: nothing to call).
    pub async fn call_init<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), PluginError>> {
        match self {
            Self::V0_1(_) => Ok(Ok(())),
            Self::V0_2(guest) => guest.call_init(store, config).await,
        }
    }

    /// Calls `on-event`.
    pub async fn call_on_event<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        event: &TaskEvent,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        match self {
            Self::V0_1(guest) => Ok(guest
                .call_on_event(store, &event.into())
                .await?
                .map_err(PluginError::from)),
            Self::V0_2(guest) => guest.call_on_event(store, event).await,
        }
    }

    /// Calls `on-timer`.
    pub async fn call_on_timer<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        timer: &FiredTimer,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        match self {
            Self::V0_1(guest) => Ok(guest
                .call_on_timer(store, &timer.into())
                .await?
                .map_err(PluginError::from)),
            Self::V0_2(guest) => guest.call_on_timer(store, timer).await,
        }
    }
}

/// Conversions from the current types to the 0.1.0 ones (the records are
/// the same field for field; only the package differs).
mod legacy {
    use super::v0_1::todo::plugin::types as old;
    use super::{
        EventKind, FiredTimer, Frequency, PluginError, Priority, Recurrence, SimpleRecurrence,
        Task, TaskEvent,
    };

    impl From<&TaskEvent> for old::TaskEvent {
        fn from(event: &TaskEvent) -> Self {
            Self {
                id: event.id.clone(),
                kind: match event.kind {
                    EventKind::Created => old::EventKind::Created,
                    EventKind::Updated => old::EventKind::Updated,
                    EventKind::Completed => old::EventKind::Completed,
                    EventKind::Deleted => old::EventKind::Deleted,
                },
                occurred_at: event.occurred_at,
                source: event.source.clone(),
                task: (&event.task).into(),
                previous: event.previous.as_ref().map(Into::into),
            }
        }
    }

    impl From<&Task> for old::Task {
        fn from(task: &Task) -> Self {
            Self {
                id: task.id.clone(),
                user_id: task.user_id.clone(),
                title: task.title.clone(),
                description: task.description.clone(),
                completed: task.completed,
                priority: task.priority.map(|p| match p {
                    Priority::Low => old::Priority::Low,
                    Priority::Medium => old::Priority::Medium,
                    Priority::High => old::Priority::High,
                    Priority::Urgent => old::Priority::Urgent,
                }),
                tags: task.tags.clone(),
                due: task.due,
                remind_at: task.remind_at,
                recurrence: task.recurrence.as_ref().map(|r| match r {
                    Recurrence::Simple(simple) => old::Recurrence::Simple(simple.into()),
                    Recurrence::Rrule(rule) => old::Recurrence::Rrule(rule.clone()),
                }),
                series_id: task.series_id.clone(),
                occurrence: task.occurrence,
                series_start: task.series_start,
                time_zone: task.time_zone.clone(),
                created_at: task.created_at,
                updated_at: task.updated_at,
                completed_at: task.completed_at,
            }
        }
    }

    impl From<&SimpleRecurrence> for old::SimpleRecurrence {
        fn from(simple: &SimpleRecurrence) -> Self {
            Self {
                frequency: match simple.frequency {
                    Frequency::Daily => old::Frequency::Daily,
                    Frequency::Weekly => old::Frequency::Weekly,
                    Frequency::Monthly => old::Frequency::Monthly,
                    Frequency::Yearly => old::Frequency::Yearly,
                },
                interval: simple.interval,
                until: simple.until,
                max_occurrences: simple.max_occurrences,
            }
        }
    }

    impl From<&FiredTimer> for old::FiredTimer {
        fn from(timer: &FiredTimer) -> Self {
            Self {
                key: timer.key.clone(),
                due: timer.due,
                payload: timer.payload.clone(),
            }
        }
    }

    /// A 0.1.0 error has no kind: it was always "the plugin rejected its
    /// input", so it arrives as `bad-input`.
    impl From<old::PluginError> for PluginError {
        fn from(err: old::PluginError) -> Self {
            Self {
                kind: super::ErrorKind::BadInput,
                code: err.code,
                message: err.message,
            }
        }
    }
}

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

impl ErrorKind {
    /// The WIT name: `bad-input`, `retryable`, `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadInput => "bad-input",
            Self::Retryable => "retryable",
            Self::Internal => "internal",
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
