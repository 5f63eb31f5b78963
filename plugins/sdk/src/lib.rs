//! Everything a Rust plugin for todo-eventd needs: the `todo:plugin` world's
//! bindings (generated once, here), the [`export!`] macro, and small helpers
//! for JSON state and RFC 3339 times.
//!
//! ```text
//! use todo_plugin_sdk::{Guest, TaskEvent, FiredTimer, PluginError};
//!
//! struct MyPlugin;
//!
//! impl Guest for MyPlugin {
//!     fn on_event(event: TaskEvent) -> Result<(), PluginError> { Ok(()) }
//!     fn on_timer(timer: FiredTimer) -> Result<(), PluginError> { Ok(()) }
//! }
//!
//! todo_plugin_sdk::export!(MyPlugin);
//! ```

// The generated glue is wit-bindgen's; its `unsafe` is the ABI boundary.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, unused_qualifications, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "::todo_plugin_sdk::bindings",
        runtime_path: "::todo_plugin_sdk::wit_bindgen::rt",
    });
}

// The generated code names this crate by its path, from inside it too.
extern crate self as todo_plugin_sdk;

pub use bindings::Guest;
pub use bindings::todo::plugin::types::{
    EventKind, FiredTimer, Frequency, PluginError, Priority, Recurrence, SimpleRecurrence, Task,
    TaskEvent, Timestamp,
};
pub use bindings::todo::plugin::{host, output, state, timers};
#[doc(hidden)]
pub use wit_bindgen;

/// Exports a type implementing [`Guest`] as the plugin's entry points:
/// `todo_plugin_sdk::export!(MyPlugin);`.
pub use bindings::export;

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

/// Builds a [`PluginError`].
pub fn error(code: &str, message: impl Into<String>) -> PluginError {
    PluginError {
        code: code.to_owned(),
        message: message.into(),
    }
}

/// JSON values in the plugin's state.
pub mod json_state {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::{PluginError, error, state};

    /// Reads and decodes the value under `key`.
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, PluginError> {
        state::get(key)
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| error("corrupt-state", format!("state key {key}: {e}")))
            })
            .transpose()
    }

    /// Encodes and stores `value` under `key`.
    pub fn set<T: Serialize>(key: &str, value: &T) -> Result<(), PluginError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| error("encode", format!("state key {key}: {e}")))?;
        state::set(key, &bytes);
        Ok(())
    }
}

/// Formats a timestamp (ms since the epoch) as RFC 3339 UTC, e.g.
/// `2026-01-22T10:00:00Z` (milliseconds are shown only when non-zero).
pub fn rfc3339(ms: Timestamp) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if millis == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day);
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_769_076_000_000), "2026-01-22T10:00:00Z");
        assert_eq!(rfc3339(1_709_164_800_123), "2024-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(-1000), "1969-12-31T23:59:59Z");
    }
}
