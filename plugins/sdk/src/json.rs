//! JSON on the wire and in storage: state values, emitted records and timer
//! payloads as serde types.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FiredTimer, Result, Timestamp, output};

/// Emits `value` as compact JSON to the logical output `name`.
pub fn emit_json<T: Serialize + ?Sized>(name: &str, key: Option<&str>, value: &T) -> Result {
    let text = serde_json::to_string(value)?;
    output::emit(name, key, &text);
    Ok(())
}

/// JSON values in the plugin's state.
pub mod json_state {
    use super::*;
    use crate::state;

    /// Reads and decodes the value under `key`; a value that does not
    /// decode is an `internal` error naming the key.
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>> {
        state::get(key)
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::internal("corrupt-state", format!("state key {key}: {e}")))
            })
            .transpose()
    }

    /// Encodes and stores `value` under `key`.
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result {
        state::set(key, &serde_json::to_vec(value)?);
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(key: &str) {
        state::delete(key);
    }
}

/// Timers whose payload is JSON.
pub mod json_timers {
    use super::*;
    use crate::timers;

    /// Sets (or moves) the timer under `key` to `due`, carrying `payload`
    /// as JSON.
    pub fn set<T: Serialize + ?Sized>(key: &str, due: Timestamp, payload: &T) -> Result {
        timers::set(key, due, &serde_json::to_vec(payload)?);
        Ok(())
    }
}

impl FiredTimer {
    /// Decodes the timer's JSON payload; one that does not decode is an
    /// `internal` error naming the timer.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::internal("corrupt-timer", format!("timer {}: {e}", self.key)))
    }
}
