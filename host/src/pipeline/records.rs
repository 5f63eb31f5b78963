//! The records the pipeline produces: plugin outputs and dead letters, with
//! headers that trace each one back to its input.

pub use crate::kafka::OutRecord;
use crate::plugin::Plugin;
use crate::sandbox::Emit;

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
}

impl Source<'_> {
    fn trace_headers(&self, prefix: &str, headers: &mut Vec<(&'static str, Vec<u8>)>) {
        let (topic, partition, offset) = match prefix {
            "source" => ("source.topic", "source.partition", "source.offset"),
            _ => ("original.topic", "original.partition", "original.offset"),
        };
        headers.push((topic, self.topic.as_bytes().to_vec()));
        headers.push((partition, self.partition.to_string().into_bytes()));
        if let Some(o) = self.offset {
            headers.push((offset, o.to_string().into_bytes()));
        }
    }
}

/// A plugin's emit as a record, with `source.*` headers naming the input
/// and the plugin version (`source.plugin.hash`, the component's SHA-256).
pub fn output(emit: &Emit, plugin: &Plugin, source: &Source<'_>) -> OutRecord {
    let mut headers = Vec::with_capacity(6);
    if let Some(id) = source.event_id {
        headers.push(("source.event.id", id.as_bytes().to_vec()));
    }
    headers.push(("source.plugin", plugin.name.as_bytes().to_vec()));
    headers.push(("source.plugin.hash", plugin.hash.as_bytes().to_vec()));
    source.trace_headers("source", &mut headers);
    OutRecord {
        topic: emit.topic.clone(),
        partition: None,
        key: emit.key.as_ref().map(|k| k.as_bytes().to_vec()),
        value: Some(emit.value.as_bytes().to_vec()),
        headers,
    }
}

/// Why something was dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// `decode`, `plugin` or `timer`.
    pub stage: &'static str,
    /// The plugin involved, if any.
    pub plugin: Option<&'a str>,
    /// The error class (`plugin-error`, `deadline`, …), if any.
    pub kind: Option<&'static str>,
    /// The full message.
    pub message: &'a str,
}

/// A dead-letter record: the original key and bytes, with `error.*` and
/// `original.*` headers.
pub fn dead_letter(topic: &str, source: &Source<'_>, failure: &Failure<'_>) -> OutRecord {
    let mut headers = Vec::with_capacity(8);
    headers.push(("error.stage", failure.stage.as_bytes().to_vec()));
    headers.push(("error.message", failure.message.as_bytes().to_vec()));
    if let Some(plugin) = failure.plugin {
        headers.push(("error.plugin", plugin.as_bytes().to_vec()));
    }
    if let Some(kind) = failure.kind {
        headers.push(("error.kind", kind.as_bytes().to_vec()));
    }
    if let Some(id) = source.event_id {
        headers.push(("source.event.id", id.as_bytes().to_vec()));
    }
    source.trace_headers("original", &mut headers);
    OutRecord {
        topic: topic.to_owned(),
        partition: None,
        key: source.key.map(<[u8]>::to_vec),
        value: Some(source.value.to_vec()),
        headers,
    }
}
