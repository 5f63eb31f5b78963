//! Lenient field lookup over JSON objects.
//!
//! Producers spell the same field many ways (`due_date`, `dueDate`,
//! `due-date`). Keys are compared after lower-casing and dropping `_` and
//! `-`, and a lookup can search several objects in order (e.g. `newState`,
//! then `payload`, then the envelope). Every value found carries the path it
//! came from, so an error can name the field exactly as the producer wrote it.
//!
//! An object with many keys is indexed by normalised key once, so the cost
//! of decoding stays linear in the size of the record however many unknown
//! keys a producer (or an attacker) puts in it.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use super::DecodeError;

/// Objects with more keys than this are indexed in a hash map; smaller ones
/// are scanned over their keys' normalised spellings (cheaper than hashing).
const INDEX_ABOVE: usize = 16;

/// The longest normalised key kept inline for a scan; longer keys (which no
/// field name is) are compared the slow way.
const INLINE_KEY: usize = 24;

type Index<'a> = HashMap<String, (&'a str, &'a Value)>;

/// A non-null entry of a small object with its key's normalised spelling.
struct Entry<'a> {
    /// The normalised key, if it fits inline: its bytes and length.
    norm: Option<([u8; INLINE_KEY], u8)>,
    key: &'a str,
    value: &'a Value,
}

impl Entry<'_> {
    fn matches(&self, name: &str) -> bool {
        match &self.norm {
            Some((bytes, len)) => &bytes[..usize::from(*len)] == name.as_bytes(),
            None => normalised_eq(self.key, name),
        }
    }
}

/// A key's normalised spelling inline, or `None` if it is too long.
fn normalise_inline(key: &str) -> Option<([u8; INLINE_KEY], u8)> {
    let mut bytes = [0; INLINE_KEY];
    let mut len = 0;
    for b in key.bytes().filter(|b| *b != b'_' && *b != b'-') {
        *bytes.get_mut(len)? = b.to_ascii_lowercase();
        len += 1;
    }
    Some((bytes, u8::try_from(len).ok()?))
}

/// How an object's keys are searched.
enum Keys<'a> {
    /// Small objects: the non-null entries, scanned in order.
    Scan(Vec<Entry<'a>>),
    /// Large objects: normalised key → the first non-null entry.
    Index(Index<'a>),
}

/// A JSON object together with the dotted path that leads to it.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    pub(crate) path: &'a str,
    /// Its keys, normalised once.
    keys: Rc<Keys<'a>>,
}

impl<'a> Obj<'a> {
    /// The object `map` found at `path`.
    pub(crate) fn new(path: &'a str, map: &'a Map<String, Value>) -> Self {
        let entries = map.iter().filter(|(_, v)| !v.is_null());
        let keys = if map.len() > INDEX_ABOVE {
            let mut index = Index::with_capacity(map.len());
            for (key, value) in entries {
                index.entry(normalise(key)).or_insert((key.as_str(), value));
            }
            Keys::Index(index)
        } else {
            Keys::Scan(
                entries
                    .map(|(key, value)| Entry {
                        norm: normalise_inline(key),
                        key,
                        value,
                    })
                    .collect(),
            )
        };
        Self {
            path,
            keys: Rc::new(keys),
        }
    }
}

/// A value found by a lookup, with its full path for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Found<'a> {
    pub(crate) path: &'a str,
    pub(crate) key: &'a str,
    pub(crate) value: &'a Value,
}

impl Found<'_> {
    /// The dotted path of this value, e.g. `task_data.due_date`.
    pub(crate) fn field(&self) -> String {
        join(self.path, self.key)
    }

    /// An error about this value.
    pub(crate) fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::field(self.field(), reason)
    }

    /// The value as a string; numbers are accepted and kept as their decimal
    /// text (ids are often numeric).
    pub(crate) fn string_or_number(&self) -> Result<String, DecodeError> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.error(format!(
                "expected a string or number, found {}",
                kind(other)
            ))),
        }
    }

    /// The value as a string.
    pub(crate) fn string(&self) -> Result<String, DecodeError> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(format!("expected a string, found {}", kind(other)))),
        }
    }

    /// The value as a boolean; `"true"`/`"false"` and `0`/`1` are accepted.
    pub(crate) fn bool(&self) -> Result<bool, DecodeError> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
            other => Err(self.error(format!("expected true or false, found {}", describe(other)))),
        }
    }

    /// The value as a positive integer that fits `u32`; numeric strings are
    /// accepted.
    pub(crate) fn positive_u32(&self) -> Result<u32, DecodeError> {
        let n = match self.value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n.and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Ok(n),
            _ => Err(self.error(format!(
                "{} is not a positive whole number",
                describe(self.value)
            ))),
        }
    }
}

/// Several objects searched in order; the first that has a key wins.
#[derive(Default)]
pub(crate) struct Layers<'a> {
    objs: Vec<Obj<'a>>,
}

impl<'a> Layers<'a> {
    pub(crate) fn new(objs: impl IntoIterator<Item = Obj<'a>>) -> Self {
        Self {
            objs: objs.into_iter().collect(),
        }
    }

    /// The first non-null value under any of `names` (normalised spellings,
    /// see [`normalise`]), searching the layers in order.
    pub(crate) fn get(&self, names: &[&str]) -> Option<Found<'a>> {
        self.objs.iter().find_map(|obj| lookup(obj, names))
    }

    /// The path of the first layer, for "missing" errors.
    pub(crate) fn primary_path(&self) -> &'a str {
        self.objs.first().map_or("", |o| o.path)
    }
}

/// Looks up the first non-null value under any of `names` in one object.
pub(crate) fn lookup<'a>(obj: &Obj<'a>, names: &[&str]) -> Option<Found<'a>> {
    let found = |(key, value): (&'a str, &'a Value)| Found {
        path: obj.path,
        key,
        value,
    };
    match obj.keys.as_ref() {
        Keys::Index(index) => names
            .iter()
            .find_map(|name| index.get(*name).copied().map(found)),
        Keys::Scan(entries) => names.iter().find_map(|name| {
            entries
                .iter()
                .find(|e| e.matches(name))
                .map(|e| found((e.key, e.value)))
        }),
    }
}

/// A key as [`normalised_eq`] compares it: lower case, without `_` and `-`.
fn normalise(key: &str) -> String {
    key.bytes()
        .filter(|b| *b != b'_' && *b != b'-')
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

/// Compares a producer's key with a normalised name: case-insensitive, with
/// `_` and `-` ignored, so `dueDate`, `due_date` and `due-date` all match
/// `duedate`.
fn normalised_eq(key: &str, name: &str) -> bool {
    let mut key = key
        .bytes()
        .filter(|b| *b != b'_' && *b != b'-')
        .map(|b| b.to_ascii_lowercase());
    let mut name = name.bytes();
    loop {
        match (key.next(), name.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Joins a parent path and a key with a dot.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The JSON type of a value, for messages ("found an array").
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The most of a bad string value a message quotes, in bytes.
const QUOTE_BYTES: usize = 64;

/// A short rendering of a value for messages: scalars verbatim (strings
/// cut to a few dozen bytes, control characters escaped), containers by
/// their type.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{}\"", crate::text::quote_bounded(s, QUOTE_BYTES)),
        Value::Number(_) | Value::Bool(_) | Value::Null => value.to_string(),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_across_spellings() {
        for key in ["due_date", "dueDate", "DueDate", "due-date", "DUE_DATE"] {
            assert!(normalised_eq(key, "duedate"), "{key}");
        }
        assert!(!normalised_eq("due_dates", "duedate"));
        assert!(!normalised_eq("due", "duedate"));
    }

    #[test]
    fn long_keys_are_matched_the_slow_way() {
        let long = "a_very_long_key_that_does_not_fit_inline_at_all";
        let map: Map<String, Value> =
            serde_json::from_str(&format!(r#"{{"{long}":1,"Due_Date":"d"}}"#)).unwrap();
        let obj = Obj::new("", &map);
        let name = normalise(long);
        assert!(name.len() > INLINE_KEY);
        assert_eq!(lookup(&obj, &[name.as_str()]).unwrap().key, long);
        assert_eq!(lookup(&obj, &["duedate"]).unwrap().key, "Due_Date");
    }

    #[test]
    fn layers_search_in_order_and_report_paths() {
        let inner: Map<String, Value> = serde_json::from_str(r#"{"dueDate":"x"}"#).unwrap();
        let outer: Map<String, Value> =
            serde_json::from_str(r#"{"due_date":"y","title":null}"#).unwrap();
        let layers = Layers::new([Obj::new("payload.newState", &inner), Obj::new("", &outer)]);
        let found = layers.get(&["duedate"]).unwrap();
        assert_eq!(found.field(), "payload.newState.dueDate");
        assert!(layers.get(&["title"]).is_none(), "null counts as absent");
    }

    #[test]
    fn large_objects_are_indexed_with_the_same_answers() {
        let mut map = Map::new();
        for i in 0..1000 {
            map.insert(format!("unknown_{i}"), Value::from(i));
        }
        map.insert("Due-Date".into(), Value::Null);
        map.insert("due_date".into(), Value::from("d"));
        map.insert("TITLE".into(), Value::from("t"));
        let obj = Obj::new("", &map);
        assert!(matches!(obj.keys.as_ref(), Keys::Index(_)));
        let found = lookup(&obj, &["nothing", "duedate"]).unwrap();
        assert_eq!((found.key, found.value), ("due_date", &Value::from("d")));
        assert_eq!(lookup(&obj, &["title"]).unwrap().key, "TITLE");
        assert!(lookup(&obj, &["absent"]).is_none());
    }
}
