//! The records the pipeline produces: plugin outputs and dead letters, with
//! headers that trace each one back to its input.
//!
//! Dead letters are sized to fit: the reason is bounded, and an original
//! too large for the producer's `message.max.bytes` is cut (marked with
//! `error.original.truncated` and its full size), so a poison record cannot
//! make its own dead letter undeliverable.

pub use crate::kafka::OutRecord;
use crate::plugin::Plugin;
use crate::sandbox::{Emit, RECORD_OVERHEAD_BYTES};
use crate::text;

/// The header that says how many plugin emits a record is from its
/// producer's record: every output carries its input's hops plus one, and
/// a dead letter its input's, so a loop through the input topics can be
/// cut off (`plugins.max_hops`) — and the count survives a trip through
/// another deployment, a mirror or a replay of dead letters.
pub const HOPS_HEADER: &str = "todo-eventd.hops";

/// How much of the original a last-resort dead letter keeps.
const MINIMAL_ORIGINAL_BYTES: usize = 1024;

/// Where the input being handled came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// Input offset; `None` for a timer.
    pub offset: Option<i64>,
    /// Input key.
    pub key: Option<&'a [u8]>,
    /// Input value.
    pub value: &'a [u8],
    /// The decoded event's id, if it decoded.
    pub event_id: Option<&'a str>,
    /// How many plugin emits the input is from its producer's record.
    pub hops: u32,
}

/// Which header names trace a record to its input.
#[derive(Debug, Clone, Copy)]
enum Trace {
    /// `source.*`, on outputs.
    Source,
    /// `original.*`, on dead letters.
    Original,
}

impl Source<'_> {
    fn trace_headers(&self, trace: Trace, headers: &mut Vec<(&'static str, Vec<u8>)>) {
        let (topic, partition, offset) = match trace {
            Trace::Source => ("source.topic", "source.partition", "source.offset"),
            Trace::Original => ("original.topic", "original.partition", "original.offset"),
        };
        headers.push((topic, self.topic.as_bytes().to_vec()));
        headers.push((partition, self.partition.to_string().into_bytes()));
        if let Some(o) = self.offset {
            headers.push((offset, o.to_string().into_bytes()));
        }
    }
}

/// The hops a record's [`HOPS_HEADER`] values say: the largest that is a
/// number, 0 without one (a producer's own header cannot lift the bound,
/// only bring it closer for that record).
pub fn hops<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A plugin's emit as a record, with `source.*` headers naming the input
/// and the plugin version (`source.plugin.hash`, the component's SHA-256),
/// and its hops.
pub fn output(emit: &Emit, plugin: &Plugin, source: &Source<'_>) -> OutRecord {
    let mut headers = Vec::with_capacity(7);
    if let Some(id) = source.event_id {
        headers.push(("source.event.id", id.as_bytes().to_vec()));
    }
    headers.push(("source.plugin", plugin.name.as_bytes().to_vec()));
    headers.push(("source.plugin.hash", plugin.hash.as_bytes().to_vec()));
    source.trace_headers(Trace::Source, &mut headers);
    let hops = source.hops.saturating_add(1);
    headers.push((HOPS_HEADER, hops.to_string().into_bytes()));
    OutRecord {
        topic: emit.topic.clone(),
        partition: None,
        key: emit.key.as_ref().map(|k| k.as_bytes().to_vec()),
        value: Some(emit.value.as_bytes().to_vec()),
        headers,
    }
}

/// Where a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The record could not be decoded.
    Decode,
    /// A plugin's `on-event` failed.
    Plugin,
    /// A plugin's `on-timer` failed.
    Timer,
    /// What the input produced could not be delivered.
    Deliver,
}

impl Stage {
    /// The `error.stage` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Plugin => "plugin",
            Self::Timer => "timer",
            Self::Deliver => "deliver",
        }
    }
}

/// Why something was dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// Where it failed.
    pub stage: Stage,
    /// The plugin involved, if any.
    pub plugin: Option<&'a str>,
    /// The error class (`plugin-error`, `deadline`, …), if any.
    pub kind: Option<&'static str>,
    /// The message (bounded and escaped here).
    pub message: &'a str,
}

/// A dead-letter record: the original key and bytes, with `error.*` and
/// `original.*` headers, no larger than `max_bytes` (the original is cut
/// if needed).
pub fn dead_letter(
    topic: &str,
    source: &Source<'_>,
    failure: &Failure<'_>,
    max_bytes: usize,
) -> OutRecord {
    let mut headers = Vec::with_capacity(10);
    headers.push(("error.stage", failure.stage.as_str().as_bytes().to_vec()));
    headers.push(("error.message", text::message(failure.message).into_bytes()));
    if let Some(plugin) = failure.plugin {
        headers.push(("error.plugin", plugin.as_bytes().to_vec()));
    }
    if let Some(kind) = failure.kind {
        headers.push(("error.kind", kind.as_bytes().to_vec()));
    }
    if source.hops > 0 {
        headers.push((HOPS_HEADER, source.hops.to_string().into_bytes()));
    }
    if let Some(id) = source.event_id {
        headers.push(("source.event.id", id.as_bytes().to_vec()));
    }
    source.trace_headers(Trace::Original, &mut headers);
    let mut record = OutRecord {
        topic: topic.to_owned(),
        partition: None,
        key: source.key.map(<[u8]>::to_vec),
        value: None,
        headers,
    };
    if record.size() + RECORD_OVERHEAD_BYTES > max_bytes {
        // The key alone leaves no room: cut it, and say so (a replay goes
        // out under another key, to another partition).
        cut_key(&mut record, MINIMAL_ORIGINAL_BYTES);
    }
    let room = |record: &OutRecord| max_bytes.saturating_sub(record.size() + RECORD_OVERHEAD_BYTES);
    if source.value.len() <= room(&record) {
        record.value = Some(source.value.to_vec());
    } else {
        record
            .headers
            .push(("error.original.truncated", b"true".to_vec()));
        record.headers.push((
            "error.original.size",
            source.value.len().to_string().into_bytes(),
        ));
        let room = room(&record);
        record.value = Some(source.value[..room].to_vec());
    }
    record
}

/// A last-resort dead letter after the full one could not be produced: the
/// same headers, the key cut to 1 KiB and only the first 1 KiB of the
/// original.
pub fn minimal_dead_letter(full: &OutRecord, original_size: usize) -> OutRecord {
    let mut headers: Vec<_> = full
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("error.original."))
        .cloned()
        .collect();
    let value = full.value.as_deref().unwrap_or_default();
    let mut cut = value[..value.len().min(MINIMAL_ORIGINAL_BYTES)].to_vec();
    if cut.len() < original_size {
        headers.push(("error.original.truncated", b"true".to_vec()));
        headers.push((
            "error.original.size",
            original_size.to_string().into_bytes(),
        ));
    } else {
        cut = value.to_vec();
    }
    let mut minimal = OutRecord {
        topic: full.topic.clone(),
        partition: None,
        key: full.key.clone(),
        value: Some(cut),
        headers,
    };
    let key_size = full
        .headers
        .iter()
        .find(|(name, _)| *name == "error.original.key.size")
        .and_then(|(_, size)| std::str::from_utf8(size).ok()?.parse().ok());
    match key_size {
        // Cut already in the full one: the original's size, not the cut's.
        Some(size) => mark_key_cut(&mut minimal.headers, size),
        None => cut_key(&mut minimal, MINIMAL_ORIGINAL_BYTES),
    }
    minimal
}

/// Cuts `record`'s key to `max` bytes, if longer, and marks it so.
fn cut_key(record: &mut OutRecord, max: usize) {
    let Some(key) = record.key.as_mut().filter(|key| key.len() > max) else {
        return;
    };
    let size = key.len();
    key.truncate(max);
    mark_key_cut(&mut record.headers, size);
}

/// Marks a record's key as cut from `size` bytes:
/// `error.original.key.truncated` and `error.original.key.size`.
fn mark_key_cut(headers: &mut Vec<(&'static str, Vec<u8>)>, size: usize) {
    headers.push(("error.original.key.truncated", b"true".to_vec()));
    headers.push(("error.original.key.size", size.to_string().into_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(value: &[u8]) -> Source<'_> {
        Source {
            topic: "task-events",
            partition: 2,
            offset: Some(7),
            key: Some(b"u1"),
            value,
            event_id: None,
            hops: 0,
        }
    }

    fn header<'a>(record: &'a OutRecord, name: &str) -> Option<&'a [u8]> {
        record
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn a_dead_letter_fits_the_producer_and_keeps_the_reason_short() {
        let big = vec![b'x'; 600_000];
        let reason = "bad ".repeat(10_000);
        let failure = Failure {
            stage: Stage::Decode,
            plugin: None,
            kind: None,
            message: &reason,
        };
        let record = dead_letter("dlq", &source(&big), &failure, 100_000);
        assert!(
            record.size() + RECORD_OVERHEAD_BYTES <= 100_000,
            "{}",
            record.size()
        );
        assert_eq!(
            header(&record, "error.original.truncated"),
            Some(&b"true"[..])
        );
        assert_eq!(header(&record, "error.original.size"), Some(&b"600000"[..]));
        assert!(header(&record, "error.message").unwrap().len() < 1100);
        assert_eq!(header(&record, "original.offset"), Some(&b"7"[..]));

        let small = dead_letter("dlq", &source(b"{}"), &failure, 100_000);
        assert_eq!(small.value.as_deref(), Some(&b"{}"[..]));
        assert!(header(&small, "error.original.truncated").is_none());

        let minimal = minimal_dead_letter(&record, big.len());
        assert_eq!(minimal.value.as_ref().map(Vec::len), Some(1024));
        assert_eq!(
            header(&minimal, "error.original.size"),
            Some(&b"600000"[..])
        );
        assert_eq!(header(&minimal, "error.stage"), Some(&b"decode"[..]));

        // A key that alone leaves no room is cut too, and marked.
        let key = vec![b'k'; 2_000_000];
        let huge_key = Source {
            key: Some(&key),
            ..source(b"{}")
        };
        let record = dead_letter("dlq", &huge_key, &failure, 100_000);
        assert!(record.size() + RECORD_OVERHEAD_BYTES <= 100_000);
        assert_eq!(record.key.as_ref().map(Vec::len), Some(1024));
        assert_eq!(record.value.as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            header(&record, "error.original.key.truncated"),
            Some(&b"true"[..])
        );
        assert_eq!(
            header(&record, "error.original.key.size"),
            Some(&b"2000000"[..])
        );
        let minimal = minimal_dead_letter(&record, 2);
        assert_eq!(minimal.key.as_ref().map(Vec::len), Some(1024));
        assert_eq!(
            header(&minimal, "error.original.key.size"),
            Some(&b"2000000"[..])
        );

        // The last resort cuts a key the full one kept, and says so.
        let keyed = Source {
            key: Some(&key[..5000]),
            ..source(b"{}")
        };
        let full = dead_letter("dlq", &keyed, &failure, 100_000);
        assert_eq!(full.key.as_ref().map(Vec::len), Some(5000));
        let minimal = minimal_dead_letter(&full, 2);
        assert_eq!(minimal.key.as_ref().map(Vec::len), Some(1024));
        assert_eq!(
            header(&minimal, "error.original.key.size"),
            Some(&b"5000"[..])
        );
    }

    #[test]
    fn hops_are_read_at_their_largest_and_kept_on_dead_letters() {
        assert_eq!(hops([]), 0);
        assert_eq!(hops([&b"2"[..], b"junk", b"7", b"-1", b""]), 7);
        assert_eq!(hops([&b"99999999999"[..]]), 0, "not a u32");

        let deep = Source {
            hops: 3,
            ..source(b"{}")
        };
        let failure = Failure {
            stage: Stage::Plugin,
            plugin: Some("p"),
            kind: Some("max-hops"),
            message: "loop",
        };
        let letter = dead_letter("dlq", &deep, &failure, 100_000);
        assert_eq!(
            header(&letter, HOPS_HEADER),
            Some(&b"3"[..]),
            "replayed as deep"
        );
        let minimal = minimal_dead_letter(&letter, 2);
        assert_eq!(header(&minimal, HOPS_HEADER), Some(&b"3"[..]));
        let shallow = dead_letter("dlq", &source(b"{}"), &failure, 100_000);
        assert_eq!(header(&shallow, HOPS_HEADER), None);
    }
}
