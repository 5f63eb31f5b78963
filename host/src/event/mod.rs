//! Decoding input records into the canonical [`TaskEvent`].
//!
//! Producers in the wild send several shapes; all of them normalise to the
//! WIT `task-event` record so plugins never parse JSON:
//! - snake_case: `{event_id, event_type, user_id, task_id, timestamp, task_data}`;
//! - camelCase envelopes: `{eventId, eventType, source, userId, timestamp,
//!   payload}` where `payload` may carry `previousState`/`newState` rows;
//! - CloudEvents 1.0 structured mode (`specversion`, event in `data` or
//!   `data_base64`; the CloudEvent `id` is the event id) and binary mode
//!   (`ce_*` headers, the body is the event).
//!
//! Unknown fields are ignored. Anything that cannot be decoded yields a
//! [`DecodeError`] naming the field and the reason, ready for the
//! dead-letter topic.

mod fields;
mod json;
mod recurrence;
mod task;
mod time;

use std::borrow::Cow;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use self::fields::{Layers, Name, Obj, describe, kind, lookup, names};
use self::json::{Json, Members};
use crate::units::ByteSize;
use crate::world::{EventKind, TaskEvent, Timestamp};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not JSON at all.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// A field is missing or has a value we cannot use.
    #[error("{field}: {reason}")]
    Field {
        /// Dotted path of the field as the producer spelled it.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The record is larger than the pipeline decodes.
    #[error("record of {size} bytes exceeds pipeline.max_event_bytes ({limit})")]
    TooLarge {
        /// The record's size (value and headers).
        size: usize,
        /// The bound.
        limit: ByteSize,
    },
}

/// The longest field path an error names, in bytes (producers' keys are
/// input too).
const MAX_FIELD_BYTES: usize = 128;

impl DecodeError {
    /// An error about `field`; both texts are bounded and escaped, so a
    /// record cannot flood a dead-letter header or a log line.
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field {
            field: crate::text::quote_bounded(&field.into(), MAX_FIELD_BYTES),
            reason: crate::text::message(&reason.into()),
        }
    }
}

/// Result of decoding.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Where a record came from, beyond its value bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordMeta<'a> {
    /// Kafka headers; `ce_*` headers mean CloudEvents binary mode.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The Kafka record timestamp, used when the event carries no time.
    pub timestamp: Option<Timestamp>,
}

/// Refuses a record of `size` bytes larger than `limit`.
fn check_size(size: usize, limit: ByteSize) -> Result<()> {
    if size as u64 > limit.bytes() {
        return Err(DecodeError::TooLarge { size, limit });
    }
    Ok(())
}

/// Decodes one record value with its Kafka headers and timestamp, as
/// [`decode_record`], after refusing a record larger than `limit`: its
/// value and headers (a binary CloudEvent's headers become event fields)
/// are counted before anything is parsed.
pub fn decode_bounded(value: &[u8], meta: RecordMeta<'_>, limit: ByteSize) -> Result<TaskEvent> {
    let size = meta
        .headers
        .iter()
        .fold(value.len(), |size, (k, v)| size + k.len() + v.len());
    check_size(size, limit)?;
    decode_record(value, meta)
}

/// Decodes one record value.
pub fn decode(value: &[u8]) -> Result<TaskEvent> {
    decode_record(value, RecordMeta::default())
}

/// Decodes one record value with its Kafka headers and timestamp.
pub fn decode_record(value: &[u8], meta: RecordMeta<'_>) -> Result<TaskEvent> {
    let root = Json::parse(value).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Json::Object(root) = root else {
        return Err(DecodeError::field(
            "<record>",
            format!("expected a JSON object, found {}", kind(&root)),
        ));
    };
    // A Kafka timestamp is whatever the producer set: one outside the
    // range event times have (±9999 years) is as good as none.
    let record_time = meta
        .timestamp
        .filter(|ms| jiff::Timestamp::from_millisecond(*ms).is_ok());
    let binary_ce = cloud_event_headers(meta.headers)?;
    let binary = binary_ce.is_some();
    if binary || root.iter().any(|(key, _)| key == "specversion") {
        let ce = match binary_ce {
            Some(headers) => headers,
            None => CloudEvent::structured(&root)?,
        };
        let body: &Members<'_> = match &ce.data {
            Some(data) => data,
            None if binary => &root,
            None => {
                return Err(DecodeError::field(
                    "data",
                    "missing (a CloudEvent needs data or data_base64)",
                ));
            }
        };
        let envelope = Envelope {
            path: ce.data_path,
            map: body,
            id: Some(ce.id),
            source: ce.source,
            time: ce.time.or(record_time),
            ce_type: ce.kind,
        };
        return envelope.decode(value);
    }
    Envelope {
        path: "",
        map: &root,
        id: None,
        source: None,
        time: record_time,
        ce_type: None,
    }
    .decode(value)
}

/// The CloudEvents attributes we use.
struct CloudEvent<'a> {
    id: String,
    source: Option<String>,
    kind: Option<String>,
    time: Option<Timestamp>,
    /// The event: an object in the record, or one parsed from a string or
    /// `data_base64`.
    data: Option<Cow<'a, Members<'a>>>,
    data_path: &'static str,
}

impl<'a> CloudEvent<'a> {
    fn structured(root: &'a Members<'a>) -> Result<Self> {
        let top = Obj::new("", root);
        let id = task::id_at(
            &lookup(&top, names!["id"])
                .ok_or_else(|| DecodeError::field("id", "missing (CloudEvents require an id)"))?,
        )?;
        let source = lookup(&top, names!["source"])
            .map(|f| f.string())
            .transpose()?;
        let ce_type = lookup(&top, names!["type"])
            .map(|f| f.string())
            .transpose()?;
        let time = lookup(&top, names!["time"])
            .map(|f| time::instant(&f, &jiff::tz::TimeZone::UTC))
            .transpose()?;
        let (data, data_path) = if let Some(found) = lookup(&top, names!["data"]) {
            let data = match found.value {
                Json::Object(map) => Cow::Borrowed(map),
                // Some publishers put the JSON event in a string.
                Json::String(s) => Cow::Owned(parse_object(s.as_bytes(), "data")?),
                other => {
                    return Err(
                        found.error(format!("expected a JSON object, found {}", kind(other)))
                    );
                }
            };
            (Some(data), "data")
        } else if let Some(found) = lookup(&top, names!["database64"]) {
            let text = found.string()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| found.error(format!("not valid base64: {e}")))?;
            (
                Some(Cow::Owned(parse_object(&bytes, "data_base64")?)),
                "data_base64",
            )
        } else {
            (None, "data")
        };
        Ok(Self {
            id,
            source,
            kind: ce_type,
            time,
            data,
            data_path,
        })
    }
}

/// CloudEvents binary mode: attributes in `ce_*` headers, the body is the
/// event itself. `None` without a `ce_id` header; an attribute that cannot
/// be read is an error naming its header, as a structured one's would be.
fn cloud_event_headers<'a>(headers: &[(&str, &[u8])]) -> Result<Option<CloudEvent<'a>>> {
    let header = |name: &str| -> Result<Option<String>> {
        let Some((key, value)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) else {
            return Ok(None);
        };
        std::str::from_utf8(value)
            .map(|text| Some(text.to_owned()))
            .map_err(|_| DecodeError::field(format!("header {key}"), "not UTF-8"))
    };
    let Some(id) = header("ce_id")? else {
        return Ok(None);
    };
    task::check_id(&id).map_err(|reason| DecodeError::field("header ce_id", reason))?;
    let time = match header("ce_time")? {
        None => None,
        Some(text) => Some(
            text.trim()
                .parse::<jiff::Timestamp>()
                .map_err(|_| {
                    DecodeError::field(
                        "header ce_time",
                        format!("{text:?} is not an RFC 3339 time"),
                    )
                })?
                .as_millisecond(),
        ),
    };
    Ok(Some(CloudEvent {
        id,
        source: header("ce_source")?,
        kind: header("ce_type")?,
        time,
        data: None,
        data_path: "",
    }))
}

/// The object a string or `data_base64` holds, owning its text.
fn parse_object(bytes: &[u8], field: &str) -> Result<Members<'static>> {
    match Json::parse(bytes) {
        Ok(Json::Object(map)) => Ok(json::members_into_owned(map)),
        Ok(other) => Err(DecodeError::field(
            field,
            format!("expected a JSON object, found {}", kind(&other)),
        )),
        Err(e) => Err(DecodeError::field(field, format!("not valid JSON: {e}"))),
    }
}

/// An event envelope (snake_case or camelCase), possibly inside a CloudEvent.
struct Envelope<'a> {
    path: &'a str,
    map: &'a Members<'a>,
    /// Event id from an outer CloudEvent, which takes precedence.
    id: Option<String>,
    source: Option<String>,
    /// Fallback time (CloudEvent `time` or Kafka timestamp).
    time: Option<Timestamp>,
    /// The CloudEvent `type`, a fallback for the event type.
    ce_type: Option<String>,
}

impl Envelope<'_> {
    fn decode(self, raw: &[u8]) -> Result<TaskEvent> {
        let top = Obj::new(self.path, self.map);
        let event_kind = self.kind(&top)?;

        // The task body: `task_data`, `payload`, `data` or `task`; a flat
        // event carries the task fields beside the envelope's.
        let body_found = lookup(&top, names!["taskdata", "payload", "data", "task"]);
        let body_path = body_found.map(|f| f.field());
        let nested;
        let body = match (body_found, body_path.as_deref()) {
            (Some(found), Some(path)) => match found.value {
                Json::Object(map) => {
                    nested = Obj::new(path, map);
                    &nested
                }
                other => {
                    return Err(found.error(format!("expected an object, found {}", kind(other))));
                }
            },
            _ => &top,
        };
        // camelCase updates carry the database rows before and after.
        let row = |names: &[Name]| -> Result<Option<(Cow<'_, str>, &Members<'_>)>> {
            let Some(found) = lookup(body, names) else {
                return Ok(None);
            };
            match found.value {
                Json::Object(map) => Ok(Some((found.field(), map))),
                other => Err(found.error(format!("expected an object, found {}", kind(other)))),
            }
        };
        let new_row = row(names!["newstate", "after", "current"])?;
        let old_row = row(names!["previousstate", "oldstate", "before", "previous"])?;

        let envelope = task::EnvelopeIds::read(&top, body)?;
        let task = match &new_row {
            Some((path, map)) => {
                let new = Obj::new(path, map);
                task::decode(&Layers::new(&[&new, body]), &envelope, event_kind)?
            }
            None => task::decode(&Layers::new(&[body]), &envelope, event_kind)?,
        };
        let previous = old_row
            .as_ref()
            .map(|(path, map)| {
                let old = Obj::new(path, map);
                task::decode(&Layers::new(&[&old]), &envelope, EventKind::Updated)
            })
            .transpose()?;

        // A CloudEvent's id is checked where it was read.
        let id = match self.id {
            Some(id) => id,
            None => match lookup(&top, names!["eventid"]) {
                Some(found) => task::id_at(&found)?,
                // No id at all: derive one from the bytes, so a redelivery of
                // the same record gets the same id.
                None => format!("sha256:{}", &hex::encode(Sha256::digest(raw))[..32]),
            },
        };
        let source = match self.source {
            Some(source) => Some(source),
            None => lookup(&top, names!["source"])
                .map(|f| f.string())
                .transpose()?,
        };
        let occurred_at = match lookup(&top, names!["timestamp", "time", "occurredat", "eventtime"])
        {
            Some(found) => time::instant(&found, &jiff::tz::TimeZone::UTC)?,
            None => task
                .updated_at
                .or(task.completed_at)
                .or(task.created_at)
                .or(self.time)
                .ok_or_else(|| {
                    DecodeError::field(
                        fields::join(self.path, "timestamp"),
                        "missing (and no CloudEvent time or record timestamp to fall back on)",
                    )
                })?,
        };
        Ok(TaskEvent {
            id,
            kind: event_kind,
            occurred_at,
            source,
            task,
            previous,
        })
    }

    fn kind(&self, top: &Obj<'_>) -> Result<EventKind> {
        if let Some(found) = lookup(top, names!["eventtype", "type", "event", "action"]) {
            let text = found.string()?;
            return parse_kind(&text).ok_or_else(|| {
                found.error(format!(
                    "{} is not a known event type (expected created, updated, completed or deleted, optionally prefixed with \"task.\")",
                    describe(found.value)
                ))
            });
        }
        if let Some(ce_type) = &self.ce_type
            && let Some(kind) = parse_kind(ce_type)
        {
            return Ok(kind);
        }
        Err(DecodeError::field(
            fields::join(self.path, "event_type"),
            "missing (expected event_type, eventType or a CloudEvent type naming the change)",
        ))
    }
}

/// Reads `created`, `task.created`, `TaskCreated`, `task-created`, `create`…
fn parse_kind(text: &str) -> Option<EventKind> {
    const WORDS: [(&[&str], EventKind); 4] = [
        (
            &["created", "create", "added", "add", "new"],
            EventKind::Created,
        ),
        (
            &["updated", "update", "changed", "modified", "edited"],
            EventKind::Updated,
        ),
        (
            &["completed", "complete", "done", "finished"],
            EventKind::Completed,
        ),
        (
            &["deleted", "delete", "removed", "remove"],
            EventKind::Deleted,
        ),
    ];
    let last = text
        .rsplit(['.', '_', '-', ':', '/'])
        .find(|s| !s.is_empty())?;
    let word = match (last.get(..4), last.get(4..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("task") && !rest.is_empty() => {
            rest
        }
        _ => last,
    };
    fields::word_in(&WORDS, word)
}

#[cfg(test)]
mod tests;
