//! The record parsed once into a borrowed JSON tree.
//!
//! [`serde_json::Value`] copies every key and string into its own
//! allocation and every object into a B-tree; the decoder only reads a few
//! fields and copies out the ones it keeps. [`Json`] borrows strings and keys
//! from the record's bytes (unless they hold escapes) and keeps an object's
//! members as they came, in a `Vec`. Parsing is still serde_json's, so its
//! syntax errors, depth limit (128) and number handling are unchanged.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// An object's members in document order; a key may repeat (see
/// [`super::fields::Obj`] for which one counts).
pub(crate) type Members<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

/// One JSON value, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Members<'a>),
}

impl<'a> Json<'a> {
    /// Parses `bytes` as one JSON value.
    ///
    /// The bytes are checked as UTF-8 once, in one pass, rather than string
    /// by string as serde_json checks a slice; text that is not UTF-8 is
    /// parsed as a slice, so its error is serde_json's own.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }

    /// The same value owning all of its text, for a tree parsed from a
    /// buffer that does not outlive it (a CloudEvent's `data` string or
    /// `data_base64` payload).
    pub(crate) fn into_owned(self) -> Json<'static> {
        match self {
            Self::Null => Json::Null,
            Self::Bool(b) => Json::Bool(b),
            Self::Number(n) => Json::Number(n),
            Self::String(s) => Json::String(Cow::Owned(s.into_owned())),
            Self::Array(items) => Json::Array(items.into_iter().map(Json::into_owned).collect()),
            Self::Object(members) => Json::Object(members_into_owned(members)),
        }
    }

    /// The text of a string value.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }
}

/// An object's members owning all of their text.
pub(crate) fn members_into_owned(members: Members<'_>) -> Members<'static> {
    members
        .into_iter()
        .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
        .collect()
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor(PhantomData))
    }
}

struct TreeVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TreeVisitor<'a> {
    type Value = Json<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'a>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'a>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'a>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'a>, E> {
        // As serde_json's own `Value`: a non-finite float (which JSON text
        // cannot hold) is null.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'a>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'a>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'a>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'a>, D::Error> {
        de::Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'a>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'a>, A::Error> {
        // serde_json gives no size hint. Room for 4 members is taken once
        // one comes, so an empty object (2 bytes of input) costs nothing and
        // a chain of one-member objects (`{"":{"":…}}`, 5 bytes a level)
        // under 45 bytes of tree per input byte; a chain of one-element
        // arrays (`[[…]]`, 128 bytes a level) sets the bound: 64 bytes per
        // input byte, as with serde_json's `Value` (whose map took a
        // B-tree node of ≈ 630 bytes per object).
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed(PhantomData))? {
            if members.capacity() == 0 {
                members.reserve_exact(4);
            }
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// Reads an object key, borrowing it when it has no escapes.
struct KeySeed<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = Cow<'a, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = Cow<'a, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The tree of a `serde_json` value, for tests written with `json!`.
#[cfg(test)]
pub(crate) fn tree(value: &serde_json::Value) -> Json<'static> {
    let text = value.to_string();
    Json::parse(text.as_bytes())
        .map(Json::into_owned)
        .expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_unless_escaped() {
        let tree = Json::parse(br#"{"plain":"text","esc\"aped":"a\nb","n":[1,-2,2.5,null,true]}"#)
            .unwrap();
        let Json::Object(members) = &tree else {
            panic!("{tree:?}")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("plain")));
        assert!(matches!(members[0].1, Json::String(Cow::Borrowed("text"))));
        assert_eq!(members[1].0, "esc\"aped");
        assert!(matches!(members[1].0, Cow::Owned(_)));
        assert_eq!(members[1].1.as_str(), Some("a\nb"));
        let Json::Array(items) = &members[2].1 else {
            panic!("{tree:?}")
        };
        let shown: Vec<String> = items
            .iter()
            .map(|v| match v {
                Json::Number(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(shown, ["1", "-2", "2.5", "Null", "Bool(true)"]);
    }

    #[test]
    fn errors_and_limits_are_serde_jsons() {
        // Text that is not UTF-8 (a bad byte in a string, in a key, after
        // the value) takes serde_json's slice path and error.
        for bad in [
            &b"{"[..],
            b"{\"a\":}",
            b"[1,]",
            b"{} x",
            b"{\"a\":\"\xff\"}",
            b"{\"\xc3\":1}",
            b"{\"a\":\"ok\",} \xff",
            b"{\"a\":1}\xfe",
        ] {
            let ours = Json::parse(bad).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<serde_json::Value>(bad)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs);
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            Json::parse(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("recursion limit")
        );
    }

    #[test]
    fn a_member_takes_the_room_its_growth_rule_counts_on() {
        assert!(size_of::<(Cow<'_, str>, Json<'_>)>() <= 56);
        assert!(size_of::<Json<'_>>() <= 32);
    }

    #[test]
    fn repeated_keys_are_all_kept_in_order() {
        let tree = Json::parse(br#"{"a":1,"a":null}"#).unwrap();
        let Json::Object(members) = tree else {
            panic!()
        };
        assert_eq!(members.len(), 2);
        assert!(members[1].1.is_null());
    }
}
