//! Everything a Rust plugin for todo-eventd needs: the `todo:plugin@0.2.0`
//! world's bindings (generated once, here), a [`Plugin`] trait whose
//! handlers all have defaults, an [`Error`] that `?` converts any error
//! into, log macros, serde helpers for state and timer payloads (compact,
//! [`typed_state`], or JSON, [`json_state`]) and JSON emits, and serde-ready
//! [snapshots](snapshot) of tasks and events.
//!
//! ```text
//! use todo_plugin_sdk::{Plugin, Result, TaskEvent, emit_json, info};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn on_event(event: TaskEvent) -> Result {
//!         info!("task {} {}", event.task.id, event.kind.name());
//!         emit_json("out", Some(&event.task.id), &serde_json::json!({ "seen": event.id }))
//!     }
//! }
//!
//! todo_plugin_sdk::export!(Hello);
//! ```

// The generated glue is wit-bindgen's; its `unsafe` is the ABI boundary.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, unused_qualifications, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "::todo_plugin_sdk::bindings",
        runtime_path: "::todo_plugin_sdk::wit_bindgen::rt",
    });
}

// The generated code names this crate by its path, from inside it too.
extern crate self as todo_plugin_sdk;

mod error;
pub mod json;
mod log;
pub mod snapshot;
mod time;
pub mod typed;

pub use bindings::todo::plugin::types::{
    ErrorKind, EventKind, FiredTimer, Frequency, PluginError, Priority, Recurrence,
    SimpleRecurrence, Task, TaskEvent, Timestamp,
};
pub use bindings::todo::plugin::{host, output, state, timers};
#[doc(hidden)]
pub use wit_bindgen;

pub use self::error::{Error, Result};
pub use self::json::{emit_json, json_state, json_timers};
pub use self::snapshot::{EventSnapshot, TaskSnapshot};
pub use self::time::{DAY_MS, rfc3339};
pub use self::typed::{typed_state, typed_timers};

/// A plugin's handlers. Every one has a default that does nothing, so a
/// plugin implements only what it needs; all are associated functions
/// because instances are recycled at any time (keep data in `state`).
pub trait Plugin {
    /// Called once per instance before any handler, with the manifest's
    /// `[config]`. An error rejects the plugin at load.
    fn init(config: &Config) -> Result {
        let _ = config;
        Ok(())
    }

    /// Handles one event of a kind the plugin subscribes to.
    fn on_event(event: TaskEvent) -> Result {
        let _ = event;
        Ok(())
    }

    /// Handles a timer the plugin set that has come due.
    fn on_timer(timer: FiredTimer) -> Result {
        let _ = timer;
        Ok(())
    }
}

/// The `[config]` table of the plugin's manifest, as `init` receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config(Vec<(String, String)>);

impl Config {
    /// Wraps the `(key, value)` pairs the host passes.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self(entries)
    }

    /// The value under `key` (numbers and booleans as their TOML text).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value under `key` parsed as `T`, or `None` when it is not set;
    /// a value that does not parse is a `bad-input` error naming the key.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|value| {
                value.parse().map_err(|e| {
                    Error::bad_input("bad-config", format!("config.{key} = {value:?}: {e}"))
                })
            })
            .transpose()
    }

    /// The value under `key` as a whole number of at least 1, or `None`
    /// when it is not set; anything else is a `bad-input` error naming the
    /// key.
    pub fn positive(&self, key: &str) -> Result<Option<u32>> {
        match self.parse::<u32>(key)? {
            Some(0) => Err(Error::bad_input(
                "bad-config",
                format!("config.{key} must be at least 1"),
            )),
            value => Ok(value),
        }
    }

    /// The value under `key` as a number of days (a whole number of at
    /// least 1), or `default` when it is not set, in milliseconds: how a
    /// plugin reads a time-to-live for what it keeps. Anything else is a
    /// `bad-input` error naming the key.
    pub fn days_ms(&self, key: &str, default: u32) -> Result<i64> {
        let days = self.positive(key)?.unwrap_or(default);
        Ok(i64::from(days) * DAY_MS)
    }

    /// Every `(key, value)` pair.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Exports a type implementing [`Plugin`] as the component's entry points:
/// `todo_plugin_sdk::export!(MyPlugin);`.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            struct Exports;

            impl $crate::bindings::Guest for Exports {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), $crate::PluginError> {
                    <$plugin as $crate::Plugin>::init(&$crate::Config::new(config))
                        .map_err(::core::convert::Into::into)
                }

                fn on_event(
                    event: $crate::TaskEvent,
                ) -> ::core::result::Result<(), $crate::PluginError> {
                    <$plugin as $crate::Plugin>::on_event(event)
                        .map_err(::core::convert::Into::into)
                }

                fn on_timer(
                    timer: $crate::FiredTimer,
                ) -> ::core::result::Result<(), $crate::PluginError> {
                    <$plugin as $crate::Plugin>::on_timer(timer)
                        .map_err(::core::convert::Into::into)
                }
            }

    $crate::bindings::export!(Exports with_types_in $crate::bindings);
        };
    };
}

impl Priority {
    /// The lower-case name producers use: `low`, `medium`, `high`, `urgent`.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

impl EventKind {
    /// The lower-case name: `created`, `updated`, `completed`, `deleted`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Completed => "completed",
            EventKind::Deleted => "deleted",
        }
    }
}

impl Frequency {
    /// The simple pattern name: `daily`, `weekly`, `monthly`, `yearly`.
    pub fn name(self) -> &'static str {
        match self {
            Frequency::Daily => "daily",
            Frequency::Weekly => "weekly",
            Frequency::Monthly => "monthly",
            Frequency::Yearly => "yearly",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn a_ttl_in_days_reads_as_milliseconds_and_a_bad_one_names_its_key() {
        let days = |pairs: &[(&str, &str)]| config(pairs).days_ms("ttl_days", 30).ok();
        assert_eq!(days(&[]), Some(30 * DAY_MS));
        assert_eq!(days(&[("ttl_days", "2")]), Some(2 * DAY_MS));
        // The largest u32 of days still fits the millisecond clock.
        assert_eq!(
            days(&[("ttl_days", "4294967295")]),
            Some(4_294_967_295 * DAY_MS)
        );
        for bad in ["0", "-1", "x", "4294967296"] {
            let err = config(&[("ttl_days", bad)])
                .days_ms("ttl_days", 30)
                .unwrap_err();
            assert!(err.to_string().contains("ttl_days"), "{bad}: {err}");
        }
    }
}
