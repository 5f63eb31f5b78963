//! Compact state: serde values in the plugin's state and timer payloads,
//! stored as MessagePack (field names kept, so fields can be added with
//! `#[serde(default)]` as with JSON). Reading and writing them costs a
//! fraction of JSON text inside the sandbox — no escaping, no number text.
//!
//! A stored value starts with a `0x00` byte, which no JSON text does, and
//! reading falls back to JSON: values written by [`json_state`] (or by an
//! earlier version of a plugin that used it) read as they are, so a plugin
//! moves over without migrating its state. Outputs stay JSON
//! ([`emit_json`]).
//!
//! [`json_state`]: crate::json_state
//! [`emit_json`]: crate::emit_json

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FiredTimer, Result, Timestamp};

/// The first byte of a compact value.
const MARK: u8 = 0x00;

/// `value` as stored: [`MARK`], then MessagePack with field names. Types
/// that serialize differently for people and machines (addresses, some
/// durations) take their human-readable form, as in JSON, so a value reads
/// back the same way through serde's buffering (`untagged`, `flatten`).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    // Room for a typical record up front: growing from one byte would
    // reallocate several times per value.
    let mut bytes = Vec::with_capacity(128);
    bytes.push(MARK);
    let mut serializer = rmp_serde::Serializer::new(&mut bytes)
        .with_struct_map()
        .with_human_readable();
    value
        .serialize(&mut serializer)
        .map_err(|e| Error::internal("encode", e.to_string()))?;
    Ok(bytes)
}

/// A stored value: compact, or JSON text (written by `json_state`).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    match bytes.split_first() {
        Some((&MARK, packed)) => {
            let mut deserializer =
                rmp_serde::Deserializer::from_read_ref(packed).with_human_readable();
            T::deserialize(&mut deserializer).map_err(|e| e.to_string())
        }
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// Compact values in the plugin's state.
pub mod typed_state {
    use super::*;
    use crate::state;

    /// Reads and decodes the value under `key` (compact or JSON); a value
    /// that does not decode is an `internal` error naming the key.
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>> {
        state::get(key)
            .map(|bytes| {
                decode(&bytes)
                    .map_err(|e| Error::internal("corrupt-state", format!("state key {key}: {e}")))
            })
            .transpose()
    }

    /// Encodes and stores `value` under `key`.
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result {
        state::set(key, &encode(value)?);
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(key: &str) {
        state::delete(key);
    }
}

/// Timers whose payload is a compact value.
pub mod typed_timers {
    use super::*;
    use crate::timers;

    /// Sets (or moves) the timer under `key` to `due`, carrying `payload`.
    pub fn set<T: Serialize + ?Sized>(key: &str, due: Timestamp, payload: &T) -> Result {
        timers::set(key, due, &encode(payload)?);
        Ok(())
    }
}

impl FiredTimer {
    /// Decodes the timer's payload (compact or JSON); one that does not
    /// decode is an `internal` error naming the timer.
    pub fn payload_typed<T: DeserializeOwned>(&self) -> Result<T> {
        decode(&self.payload)
            .map_err(|e| Error::internal("corrupt-timer", format!("timer {}: {e}", self.key)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Payload {
        Remind(Pending),
        Expire { expire: String },
        Peer { peer: std::net::IpAddr },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pending {
        id: String,
        title: Option<String>,
        due: Option<i64>,
        at: i64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Status {
        Open,
        Done,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        status: Status,
        counts: BTreeMap<String, u64>,
        tags: Vec<String>,
        #[serde(default, rename = "tk")]
        flag: bool,
    }

    #[test]
    fn values_round_trip_in_every_shape_the_plugins_use() {
        let payloads = [
            Payload::Remind(Pending {
                id: "t-1@2026-01-01T00:00:00Z".into(),
                title: Some("Pay \"rent\"\n".into()),
                due: None,
                at: -5,
            }),
            Payload::Expire {
                expire: "t-1".into(),
            },
            // Read back through serde's buffering, which asks for the
            // human-readable form.
            Payload::Peer {
                peer: std::net::IpAddr::from([10, 0, 0, 1]),
            },
        ];
        for payload in payloads {
            let bytes = encode(&payload).unwrap();
            assert_eq!(bytes[0], MARK);
            assert_eq!(decode::<Payload>(&bytes).unwrap(), payload);
        }
        let record = Record {
            status: Status::Done,
            counts: [("home".to_owned(), 3)].into_iter().collect(),
            tags: vec!["a".into(), "b".into()],
            flag: true,
        };
        assert_eq!(decode::<Record>(&encode(&record).unwrap()).unwrap(), record);
    }

    #[test]
    fn json_written_before_still_reads() {
        let record: Record = decode(br#"{"status":"open","counts":{"x":1},"tags":[]}"#).unwrap();
        assert_eq!(record.status, Status::Open);
        assert!(!record.flag, "a field added later takes its default");
        let payload: Payload = decode(br#"{"expire":"t-9"}"#).unwrap();
        assert_eq!(
            payload,
            Payload::Expire {
                expire: "t-9".into()
            }
        );
    }

    #[test]
    fn compact_values_are_smaller_and_bad_bytes_are_errors() {
        let pending = Pending {
            id: "task-42@2026-02-02T08:00:00Z".into(),
            title: Some("Pay rent".into()),
            due: Some(1_769_990_400_000),
            at: 1_769_986_800_000,
        };
        let json = serde_json::to_vec(&pending).unwrap();
        assert!(encode(&pending).unwrap().len() < json.len());
        assert!(decode::<Pending>(&[MARK, 0xc1]).is_err());
        assert!(decode::<Pending>(b"not json").is_err());
        assert!(decode::<Pending>(b"").is_err());
    }
}
