//! Lenient field lookup over JSON objects.
//!
//! Producers spell the same field many ways (`due_date`, `dueDate`,
//! `due-date`). Keys are compared after lower-casing and dropping `_` and
//! `-`, and a lookup can search several objects in order (e.g. `newState`,
//! then `payload`, then the envelope). Every value found carries the path it
//! came from, so an error can name the field exactly as the producer wrote it.
//!
//! A key that repeats counts once, with its last value, and of two keys
//! spelled differently that normalise alike the one that sorts first wins
//! (as when the decoder read serde_json's sorted map).
//!
//! An object with many keys is indexed by normalised key once, so the cost
//! of decoding stays linear in the size of the record however many unknown
//! keys a producer (or an attacker) puts in it.

use std::collections::HashMap;
use std::rc::Rc;

use super::DecodeError;
use super::json::{Json, Members};

/// Objects with more keys than this are indexed in a hash map; smaller ones
/// are scanned, comparing the hashes of their keys' normalised spellings.
const INDEX_ABOVE: usize = 16;

type Index<'a> = HashMap<String, (&'a str, &'a Json<'a>)>;

/// A field name as the decoder asks for it, in its normalised spelling (see
/// [`normalise`]), with that spelling's hash computed at compile time. Write
/// lists of them with [`names!`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Name {
    text: &'static str,
    hash: u64,
}

impl Name {
    /// The name `text`; a compile-time error unless it is normalised.
    pub(crate) const fn new(text: &'static str) -> Self {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            assert!(
                b != b'_' && b != b'-' && !b.is_ascii_uppercase(),
                "a field name is written normalised: lower case, no `_` or `-`"
            );
            i += 1;
        }
        Self {
            text,
            hash: fnv1a(bytes),
        }
    }
}

/// A `&'static [Name]` built at compile time: `names!["duedate", "due"]`.
macro_rules! names {
    ($($name:literal),+ $(,)?) => {
        const { &[$($crate::event::fields::Name::new($name)),+] }
    };
}
pub(crate) use names;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes` (a normalised name's).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i] as u64).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// The hash of `key`'s normalised spelling, without building it.
fn normalised_hash(key: &str) -> u64 {
    key.bytes()
        .filter(|b| *b != b'_' && *b != b'-')
        .fold(FNV_OFFSET, |hash, b| {
            (hash ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
        })
}

/// One of 128 bits for a hash: a lookup of a name whose bit no entry set
/// needs no scan.
fn hash_bit(hash: u64) -> u128 {
    1 << (hash >> 57)
}

/// An entry of a small object with its normalised key's hash.
struct Entry<'a> {
    hash: u64,
    key: &'a str,
    value: &'a Json<'a>,
}

impl<'a> Entry<'a> {
    fn new(key: &'a str, value: &'a Json<'a>) -> Self {
        Self {
            hash: normalised_hash(key),
            key,
            value,
        }
    }
}

/// How an object's keys are searched.
enum Keys<'a> {
    /// Small objects: the non-null entries, scanned in order, and a bit per
    /// entry's hash (see [`hash_bit`]) so most absent names skip the scan.
    Scan {
        present: u128,
        entries: Vec<Entry<'a>>,
    },
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
    /// The object with `members` found at `path`.
    pub(crate) fn new(path: &'a str, members: &'a Members<'a>) -> Self {
        let keys = if members.len() > INDEX_ABOVE {
            let mut index = Index::with_capacity(members.len());
            for (key, value) in canonical(members) {
                index.entry(normalise(key)).or_insert((key, value));
            }
            Keys::Index(index)
        } else {
            let mut entries: Vec<Entry<'a>> = members
                .iter()
                .map(|(key, value)| Entry::new(key, value))
                .collect();
            // Where no two keys normalise alike (nearly always), each name
            // matches one entry at most and the order does not matter.
            let clash = entries
                .iter()
                .enumerate()
                .any(|(i, a)| entries[i + 1..].iter().any(|b| b.hash == a.hash));
            if clash {
                entries = canonical(members)
                    .into_iter()
                    .map(|(key, value)| Entry::new(key, value))
                    .collect();
            } else {
                entries.retain(|e| !e.value.is_null());
            }
            let present = entries.iter().fold(0, |bits, e| bits | hash_bit(e.hash));
            Keys::Scan { present, entries }
        };
        Self {
            path,
            keys: Rc::new(keys),
        }
    }
}

/// The non-null members in the order and with the answers of a sorted map:
/// sorted by key (stably, so a repeated key's last value is last), one per
/// key.
fn canonical<'a>(members: &'a Members<'a>) -> Vec<(&'a str, &'a Json<'a>)> {
    let mut sorted: Vec<(&'a str, &'a Json<'a>)> =
        members.iter().map(|(k, v)| (k.as_ref(), v)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept = Vec::with_capacity(sorted.len());
    for (i, entry) in sorted.iter().enumerate() {
        let last_of_key = sorted.get(i + 1).is_none_or(|next| next.0 != entry.0);
        if last_of_key && !entry.1.is_null() {
            kept.push(*entry);
        }
    }
    kept
}

/// A value found by a lookup, with its full path for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Found<'a> {
    pub(crate) path: &'a str,
    pub(crate) key: &'a str,
    pub(crate) value: &'a Json<'a>,
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
            Json::String(s) => Ok(s.as_ref().to_owned()),
            Json::Number(n) => Ok(n.to_string()),
            other => Err(self.error(format!(
                "expected a string or number, found {}",
                kind(other)
            ))),
        }
    }

    /// The value as a string.
    pub(crate) fn string(&self) -> Result<String, DecodeError> {
        match self.value {
            Json::String(s) => Ok(s.as_ref().to_owned()),
            other => Err(self.error(format!("expected a string, found {}", kind(other)))),
        }
    }

    /// The value as a boolean; `"true"`/`"false"` and `0`/`1` are accepted.
    pub(crate) fn bool(&self) -> Result<bool, DecodeError> {
        match self.value {
            Json::Bool(b) => Ok(*b),
            Json::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Json::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            Json::Number(n) if n.as_u64() == Some(1) => Ok(true),
            Json::Number(n) if n.as_u64() == Some(0) => Ok(false),
            other => Err(self.error(format!("expected true or false, found {}", describe(other)))),
        }
    }

    /// The value as a positive integer that fits `u32`; numeric strings are
    /// accepted.
    pub(crate) fn positive_u32(&self) -> Result<u32, DecodeError> {
        let n = match self.value {
            Json::Number(n) => n.as_u64(),
            Json::String(s) => s.trim().parse::<u64>().ok(),
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

    /// The first non-null value under any of `names`, searching the layers
    /// in order.
    pub(crate) fn get(&self, names: &[Name]) -> Option<Found<'a>> {
        self.objs.iter().find_map(|obj| lookup(obj, names))
    }

    /// The path of the first layer, for "missing" errors.
    pub(crate) fn primary_path(&self) -> &'a str {
        self.objs.first().map_or("", |o| o.path)
    }
}

/// Looks up the first non-null value under any of `names` in one object.
pub(crate) fn lookup<'a>(obj: &Obj<'a>, names: &[Name]) -> Option<Found<'a>> {
    let found = |(key, value): (&'a str, &'a Json<'a>)| Found {
        path: obj.path,
        key,
        value,
    };
    match obj.keys.as_ref() {
        Keys::Index(index) => names
            .iter()
            .find_map(|name| index.get(name.text).copied().map(found)),
        Keys::Scan { present, entries } => names
            .iter()
            .filter(|name| present & hash_bit(name.hash) != 0)
            .find_map(|name| {
                entries
                    .iter()
                    .find(|e| e.hash == name.hash && normalised_eq(e.key, name.text))
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
pub(crate) fn kind(value: &Json<'_>) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The most of a bad string value a message quotes, in bytes.
const QUOTE_BYTES: usize = 64;

/// A short rendering of a value for messages: scalars verbatim (strings
/// cut to a few dozen bytes, control characters escaped), containers by
/// their type.
pub(crate) fn describe(value: &Json<'_>) -> String {
    match value {
        Json::String(s) => format!("\"{}\"", crate::text::quote_bounded(s, QUOTE_BYTES)),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        Json::Null => "null".to_owned(),
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

    /// The members of the object `text` holds.
    fn members(text: &str) -> Members<'_> {
        match Json::parse(text.as_bytes()).unwrap() {
            Json::Object(members) => members,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn a_keys_hash_is_its_normalised_names() {
        for key in ["due_date", "dueDate", "DueDate", "due-date", "DUE_DATE"] {
            assert_eq!(normalised_hash(key), Name::new("duedate").hash, "{key}");
        }
        assert_ne!(normalised_hash("due_dates"), Name::new("duedate").hash);
    }

    #[test]
    fn layers_search_in_order_and_report_paths() {
        let inner = members(r#"{"dueDate":"x"}"#);
        let outer = members(r#"{"due_date":"y","title":null}"#);
        let layers = Layers::new([Obj::new("payload.newState", &inner), Obj::new("", &outer)]);
        let found = layers.get(names!["duedate"]).unwrap();
        assert_eq!(found.field(), "payload.newState.dueDate");
        assert!(
            layers.get(names!["title"]).is_none(),
            "null counts as absent"
        );
    }

    #[test]
    fn a_repeated_key_counts_with_its_last_value() {
        let map = members(r#"{"title":"first","title":"last","due":"x","due":null}"#);
        let obj = Obj::new("", &map);
        assert_eq!(
            lookup(&obj, names!["title"]).unwrap().value.as_str(),
            Some("last")
        );
        assert!(
            lookup(&obj, names!["due"]).is_none(),
            "the last value is null"
        );
        // Two spellings of one field: the one that sorts first, wherever
        // it stands in the record.
        let map = members(r#"{"due_date":"snake","dueDate":"camel"}"#);
        let found = lookup(&Obj::new("", &map), names!["duedate"]).unwrap();
        assert_eq!(found.key, "dueDate");
    }

    #[test]
    fn large_objects_are_indexed_with_the_same_answers() {
        let mut text = String::from("{");
        for i in 0..1000 {
            text.push_str(&format!(r#""unknown_{i}":{i},"#));
        }
        text.push_str(r#""Due-Date":null,"due_date":"d","TITLE":"t","title":"x","title":null}"#);
        let map = members(&text);
        let obj = Obj::new("", &map);
        assert!(matches!(obj.keys.as_ref(), Keys::Index(_)));
        let found = lookup(&obj, names!["nothing", "duedate"]).unwrap();
        assert_eq!((found.key, found.value.as_str()), ("due_date", Some("d")));
        assert_eq!(lookup(&obj, names!["title"]).unwrap().key, "TITLE");
        assert!(lookup(&obj, names!["absent"]).is_none());
    }

    /// The answer a `serde_json::Map` (sorted, a repeated key's last value)
    /// gives: the first non-null entry in key order matching `name`.
    fn sorted_map_answer(text: &str, name: &str) -> Option<(String, String)> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
        map.iter()
            .find(|(key, value)| !value.is_null() && normalised_eq(key, name))
            .map(|(key, value)| (key.clone(), value.to_string()))
    }

    proptest::proptest! {
        #[test]
        fn lookups_answer_as_the_sorted_map_did(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "due_date", "dueDate", "DUE-DATE", "Due_Date", "title", "Title",
                        "TITLE", "t_itle", "other", "x",
                    ]),
                    proptest::option::of(0_u8..4),
                ),
                0..40,
            )
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(key, value)| match value {
                    Some(v) => format!(r#""{key}":{v}"#),
                    None => format!(r#""{key}":null"#),
                })
                .collect();
            let text = format!("{{{}}}", body.join(","));
            let tree = self::members(&text);
            let obj = Obj::new("", &tree);
            for (name, names) in [
                ("duedate", names!["duedate"]),
                ("title", names!["title"]),
                ("other", names!["other"]),
                ("x", names!["x"]),
            ] {
                let ours = lookup(&obj, names).map(|found| {
                    let value = match found.value {
                        Json::Number(n) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    (found.key.to_owned(), value)
                });
                proptest::prop_assert_eq!(ours, sorted_map_answer(&text, name), "{}", text);
            }
        }
    }
}
