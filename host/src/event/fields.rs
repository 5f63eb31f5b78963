//! Lenient field lookup over JSON objects.
//!
//! Producers spell the same field many ways (`due_date`, `dueDate`,
//! `due-date`). Keys are compared after lower-casing and dropping `_` and
//! `-`, and a lookup can search several objects in order (e.g. `newState`,
//! then `payload`, then the envelope). Every value found carries the path it
//! came from, so an error can name the field exactly as the producer wrote it.

use serde_json::{Map, Value};

use super::DecodeError;

/// A JSON object together with the dotted path that leads to it.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub(crate) path: &'a str,
    pub(crate) map: &'a Map<String, Value>,
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
#[derive(Clone, Default)]
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
        self.objs.iter().find_map(|obj| lookup(*obj, names))
    }

    /// The path of the first layer, for "missing" errors.
    pub(crate) fn primary_path(&self) -> &'a str {
        self.objs.first().map_or("", |o| o.path)
    }
}

/// Looks up the first non-null value under any of `names` in one object.
pub(crate) fn lookup<'a>(obj: Obj<'a>, names: &[&str]) -> Option<Found<'a>> {
    names.iter().find_map(|name| {
        obj.map
            .iter()
            .find(|(k, v)| !v.is_null() && normalised_eq(k, name))
            .map(|(key, value)| Found {
                path: obj.path,
                key,
                value,
            })
    })
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

/// A short rendering of a value for messages: scalars verbatim, containers
/// by their type.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => value.to_string(),
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
    fn layers_search_in_order_and_report_paths() {
        let inner: Map<String, Value> = serde_json::from_str(r#"{"dueDate":"x"}"#).unwrap();
        let outer: Map<String, Value> =
            serde_json::from_str(r#"{"due_date":"y","title":null}"#).unwrap();
        let layers = Layers::new([
            Obj {
                path: "payload.newState",
                map: &inner,
            },
            Obj {
                path: "",
                map: &outer,
            },
        ]);
        let found = layers.get(&["duedate"]).unwrap();
        assert_eq!(found.field(), "payload.newState.dueDate");
        assert!(layers.get(&["title"]).is_none(), "null counts as absent");
    }
}
