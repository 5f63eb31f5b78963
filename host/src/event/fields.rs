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
//! Every name the decoder asks for is in one table, [`NAMES`], known at
//! compile time. When the decoder takes up an object ([`Obj::new`]), each
//! of its keys is hashed and matched against that table, filling a slot
//! per name; a lookup then reads slots, whatever the object's size. So
//! decoding stays linear in the size of the record however many unknown
//! keys a producer (or an attacker) puts in it: an unknown key costs a hash
//! and a probe of a few slots. Only an object in which two members answer
//! for one name is hashed again, to sort those members.

use std::borrow::Cow;

use super::DecodeError;
use super::json::{Json, Members};

/// Every field name the decoder asks for, in its normalised spelling
/// (lower case, without `_` or `-`; see [`name_of`]). A [`Name`] is an index into this table; naming a
/// field that is not here is a compile-time error.
const NAMES: &[&str] = &[
    "action",
    "after",
    "before",
    "completed",
    "completedat",
    "count",
    "created",
    "createdat",
    "current",
    "data",
    "database64",
    "deadline",
    "description",
    "details",
    "done",
    "doneat",
    "dtstart",
    "due",
    "dueat",
    "duedate",
    "duetime",
    "end",
    "enddate",
    "event",
    "eventid",
    "eventtime",
    "eventtype",
    "every",
    "freq",
    "frequency",
    "id",
    "interval",
    "iscompleted",
    "isdone",
    "isrecurring",
    "labels",
    "maxoccurrences",
    "modifiedat",
    "name",
    "newstate",
    "notes",
    "occurredat",
    "occurrence",
    "occurrenceindex",
    "occurrencenumber",
    "occurrences",
    "oldstate",
    "owner",
    "ownerid",
    "parenttaskid",
    "pattern",
    "payload",
    "previous",
    "previousstate",
    "priority",
    "recurrence",
    "recurrencecount",
    "recurrenceenddate",
    "recurrenceinterval",
    "recurrenceparentid",
    "recurrencepattern",
    "recurrencerule",
    "recurrencestart",
    "recurrencetype",
    "recurrenceuntil",
    "recurring",
    "recurringparentid",
    "remindat",
    "remindbefore",
    "remindbeforeminutes",
    "reminder",
    "reminderat",
    "reminderbefore",
    "reminderminutesbefore",
    "reminderoffset",
    "reminderoffsetminutes",
    "remindertime",
    "remindtime",
    "rrule",
    "rule",
    "seriesid",
    "seriesstart",
    "source",
    "status",
    "summary",
    "tags",
    "task",
    "taskdata",
    "taskid",
    "time",
    "timestamp",
    "timezone",
    "title",
    "type",
    "tz",
    "tzid",
    "until",
    "updated",
    "updatedat",
    "userid",
];

/// A field name as the decoder asks for it: its place in [`NAMES`]. Write
/// lists of them with [`names!`].
#[derive(Clone, Copy)]
pub(crate) struct Name(u8);

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Name({:?})", NAMES[usize::from(self.0)])
    }
}

impl Name {
    /// The name `text`. It panics unless [`NAMES`] has it, which in
    /// [`names!`] (a `const` block) is a compile-time error.
    pub(crate) const fn new(text: &'static str) -> Self {
        let mut id = 0;
        while id < NAMES.len() {
            if const_eq(NAMES[id], text) {
                // NAMES has fewer than 255 entries (`BY_HASH` checks).
                return Self(id as u8);
            }
            id += 1;
        }
        panic!("a field name must be listed, normalised, in `NAMES`")
    }
}

/// A `&'static [Name]` built at compile time: `names!["duedate", "due"]`.
macro_rules! names {
    ($($name:literal),+ $(,)?) => {
        const { &[$($crate::event::fields::Name::new($name)),+] }
    };
}
pub(crate) use names;

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Spreads the bytes' bits over the hash's top bits, which pick the slot.
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// A hash of a normalised name, as [`name_of`] takes it of a key while
/// normalising it. A rotate and an exclusive or per byte, one multiply at
/// the end: a per-byte multiply (FNV) made every byte wait three cycles on
/// the one before, and the table only has to tell about a hundred known
/// names apart.
const fn normalised_hash(name: &[u8]) -> u64 {
    let mut hash = 0u64;
    let mut i = 0;
    while i < name.len() {
        hash = hash.rotate_left(5) ^ name[i] as u64;
        i += 1;
    }
    hash.wrapping_mul(MIX)
}

/// Slots in [`BY_HASH`]: a power of two, well over [`NAMES`]' length so
/// that an unknown key's probe mostly ends at its first slot.
const TABLE_SLOTS: usize = 512;
const NO_NAME: u8 = u8::MAX;

/// Open addressing from a normalised key's hash to its [`Name`], built at
/// compile time (linear probing from the hash's top bits).
static BY_HASH: [u8; TABLE_SLOTS] = {
    assert!(NAMES.len() < NO_NAME as usize, "a Name is a u8");
    // Probes wrap with `%` and stop at an empty slot: the table needs
    // room to spare, and `home_slot` takes the hash's top bits.
    assert!(TABLE_SLOTS.is_power_of_two() && NAMES.len() * 2 <= TABLE_SLOTS);
    let mut table = [NO_NAME; TABLE_SLOTS];
    let mut id = 0;
    while id < NAMES.len() {
        let name = NAMES[id].as_bytes();
        let mut i = 0;
        while i < name.len() {
            assert!(
                name[i] != b'_' && name[i] != b'-' && !name[i].is_ascii_uppercase(),
                "a field name is written normalised: lower case, no `_` or `-`"
            );
            i += 1;
        }
        let mut slot = home_slot(normalised_hash(name));
        while table[slot] != NO_NAME {
            assert!(
                !const_eq(NAMES[table[slot] as usize], NAMES[id]),
                "a name is listed twice"
            );
            slot = (slot + 1) % TABLE_SLOTS;
        }
        // id < NO_NAME, asserted above.
        table[slot] = id as u8;
        id += 1;
    }
    table
};

const fn home_slot(hash: u64) -> usize {
    (hash >> (64 - TABLE_SLOTS.trailing_zeros())) as usize
}

/// The longest name in [`NAMES`], in bytes.
const LONGEST_NAME: usize = {
    let mut longest = 0;
    let mut id = 0;
    while id < NAMES.len() {
        if NAMES[id].len() > longest {
            longest = NAMES[id].len();
        }
        id += 1;
    }
    longest
};

/// The name `key` is a spelling of, if the decoder ever asks for it.
///
/// The key is normalised once, into a buffer on the stack, hashing as it
/// goes; a key whose normalised spelling is longer than every name stops
/// there. The slot's name is then compared whole.
fn name_of(key: &str) -> Option<Name> {
    let mut normalised = [0_u8; LONGEST_NAME];
    let mut len = 0;
    let mut hash = 0_u64;
    for &b in key.as_bytes() {
        if b == b'_' || b == b'-' {
            continue;
        }
        let b = b.to_ascii_lowercase();
        *normalised.get_mut(len)? = b;
        len += 1;
        hash = hash.rotate_left(5) ^ u64::from(b);
    }
    let normalised = &normalised[..len];
    let mut slot = home_slot(hash.wrapping_mul(MIX));
    loop {
        let id = BY_HASH[slot];
        if id == NO_NAME {
            return None;
        }
        if NAMES[usize::from(id)].as_bytes() == normalised {
            return Some(Name(id));
        }
        slot = (slot + 1) % TABLE_SLOTS;
    }
}

/// No member for a name.
const EMPTY: u32 = u32::MAX;

/// A JSON object together with the dotted path that leads to it.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    pub(crate) path: &'a str,
    members: &'a Members<'a>,
    /// Per [`Name`], the index of the member that answers for it, or
    /// [`EMPTY`]. Held by value on the stack (a [`Layers`] borrows it):
    /// a few hundred bytes, not an allocation per object.
    slots: [u32; NAMES.len()],
}

impl<'a> Obj<'a> {
    /// The object with `members` found at `path`.
    pub(crate) fn new(path: &'a str, members: &'a Members<'a>) -> Self {
        let mut slots = [EMPTY; NAMES.len()];
        let mut seen = [false; NAMES.len()];
        let mut clash = false;
        for (index, (key, value)) in members.iter().enumerate() {
            let Some(name) = name_of(key) else { continue };
            let id = usize::from(name.0);
            if seen[id] {
                // Two members answer for one name (nearly never): the
                // sorted map's rules pick between them, below.
                clash = true;
                break;
            }
            seen[id] = true;
            if !value.is_null() {
                slots[id] = member_index(index);
            }
        }
        if clash {
            slots = [EMPTY; NAMES.len()];
            for (index, name) in canonical(members) {
                let slot = &mut slots[usize::from(name.0)];
                if *slot == EMPTY {
                    *slot = member_index(index);
                }
            }
        }
        Self {
            path,
            members,
            slots,
        }
    }
}

/// A member's index as a slot holds it. A record big enough to hold
/// `u32::MAX` members is far past any broker's record size limit (each
/// member takes at least four bytes of JSON).
fn member_index(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(EMPTY)
}

/// The members that answer for a name, with that name, in the order and
/// with the answers of a sorted map: sorted by key (stably, so a repeated
/// key's last value is last), one per key, nulls left out. Members the
/// decoder never asks for are left out first.
fn canonical(members: &Members<'_>) -> Vec<(usize, Name)> {
    let mut known: Vec<(usize, Name)> = members
        .iter()
        .enumerate()
        .filter_map(|(index, (key, _))| name_of(key).map(|name| (index, name)))
        .collect();
    known.sort_by(|a, b| members[a.0].0.cmp(&members[b.0].0));
    let mut kept = Vec::with_capacity(known.len());
    for (i, &(index, name)) in known.iter().enumerate() {
        let (key, value) = &members[index];
        let last_of_key = known
            .get(i + 1)
            .is_none_or(|next| members[next.0].0 != *key);
        if last_of_key && !value.is_null() {
            kept.push((index, name));
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

impl<'a> Found<'a> {
    /// The dotted path of this value, e.g. `task_data.due_date`.
    pub(crate) fn field(&self) -> Cow<'a, str> {
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
/// Borrowed: an [`Obj`] is a few hundred bytes, not copied into a list.
#[derive(Clone, Copy)]
pub(crate) struct Layers<'o, 'a> {
    objs: &'o [&'o Obj<'a>],
}

impl<'o, 'a> Layers<'o, 'a> {
    pub(crate) fn new(objs: &'o [&'o Obj<'a>]) -> Self {
        Self { objs }
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
    names.iter().find_map(|name| {
        let index = obj.slots[usize::from(name.0)];
        if index == EMPTY {
            return None;
        }
        let (key, value) = obj.members.get(usize::try_from(index).ok()?)?;
        Some(Found {
            path: obj.path,
            key,
            value,
        })
    })
}

/// Joins a parent path and a key with a dot; at the top, the key itself.
pub(crate) fn join<'k>(path: &str, key: &'k str) -> Cow<'k, str> {
    if path.is_empty() {
        Cow::Borrowed(key)
    } else {
        let mut joined = String::with_capacity(path.len() + 1 + key.len());
        joined.push_str(path);
        joined.push('.');
        joined.push_str(key);
        Cow::Owned(joined)
    }
}

/// The value a word stands for in `table` (each value with its spellings),
/// compared case-insensitively, without lower-casing `word` into a copy.
pub(crate) fn word_in<T: Copy>(table: &[(&[&str], T)], word: &str) -> Option<T> {
    table
        .iter()
        .find(|(words, _)| words.iter().any(|w| w.eq_ignore_ascii_case(word)))
        .map(|(_, value)| *value)
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

    /// The rule [`name_of`] follows, written plainly: a producer's key
    /// spells a normalised name when they are equal case-insensitively,
    /// with `_` and `-` ignored, so `dueDate`, `due_date` and `due-date`
    /// all spell `duedate`.
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
    fn every_spelling_of_a_listed_name_finds_it_and_nothing_else_does() {
        for key in ["due_date", "dueDate", "DueDate", "due-date", "DUE_DATE"] {
            assert_eq!(
                name_of(key).map(|n| n.0),
                Some(Name::new("duedate").0),
                "{key}"
            );
        }
        // Separators do not count toward the longest name's length.
        assert_eq!(
            name_of("__r-e-m-i-n-d-e-r_o-f-f-s-e-t_m-i-n-u-t-e-s__").map(|n| n.0),
            Some(Name::new("reminderoffsetminutes").0)
        );
        for key in [
            "due_dates",
            "du",
            "",
            "_",
            "unknown",
            "dué",
            "due\u{0}",
            "due\u{0}\u{0}\u{0}date",
            "reminderoffsetminutesx",
            "reminder_offset_minutes_and_then_some_more",
        ] {
            assert!(name_of(key).is_none(), "{key}");
        }
        for (id, name) in NAMES.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            let split = format!("_{}-", &name[..1]) + &name[1..];
            for spelling in [*name, upper.as_str(), split.as_str()] {
                assert_eq!(
                    name_of(spelling).map(|n| usize::from(n.0)),
                    Some(id),
                    "{spelling}"
                );
            }
        }
    }

    #[test]
    fn layers_search_in_order_and_report_paths() {
        let inner = members(r#"{"dueDate":"x"}"#);
        let outer = members(r#"{"due_date":"y","title":null}"#);
        let (inner, outer) = (Obj::new("payload.newState", &inner), Obj::new("", &outer));
        let objs = [&inner, &outer];
        let layers = Layers::new(&objs);
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
    fn large_objects_give_the_same_answers() {
        let mut text = String::from("{");
        for i in 0..1000 {
            text.push_str(&format!(r#""unknown_{i}":{i},"#));
        }
        text.push_str(r#""Due-Date":null,"due_date":"d","TITLE":"t","title":"x","title":null}"#);
        let map = members(&text);
        let obj = Obj::new("", &map);
        let found = lookup(&obj, names!["summary", "duedate"]).unwrap();
        assert_eq!((found.key, found.value.as_str()), ("due_date", Some("d")));
        assert_eq!(lookup(&obj, names!["title"]).unwrap().key, "TITLE");
        assert!(lookup(&obj, names!["tags"]).is_none());
    }

    /// The answer a `serde_json::Map` (sorted, a repeated key's last value)
    /// gives: the first non-null entry in key order matching `name`.
    fn sorted_map_answer(text: &str, name: &str) -> Option<(String, String)> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
        map.iter()
            .find(|(key, value)| !value.is_null() && normalised_eq(key, name))
            .map(|(key, value)| (key.clone(), value.to_string()))
    }

    #[test]
    fn an_object_of_every_listed_name_answers_as_the_sorted_map_did() {
        // Each name once, spelled three ways in turn, every fourth one
        // null, among unknown keys: no name has two members, so the slots
        // are filled in one pass.
        let mut body = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let key = match i % 3 {
                0 => name.to_ascii_uppercase(),
                1 => format!("{}_{}", &name[..1], &name[1..]),
                _ => (*name).to_owned(),
            };
            let value = if i % 4 == 3 {
                "null".to_owned()
            } else {
                i.to_string()
            };
            body.push(format!(r#""{key}":{value},"unknown_{i}":{i}"#));
        }
        let text = format!("{{{}}}", body.join(","));
        let tree = members(&text);
        let obj = Obj::new("", &tree);
        for name in NAMES {
            let ours = lookup(&obj, &[Name::new(name)]).map(|found| {
                let Json::Number(n) = found.value else {
                    panic!("{name}: {:?}", found.value)
                };
                (found.key.to_owned(), n.to_string())
            });
            assert_eq!(ours, sorted_map_answer(&text, name), "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn lookups_answer_as_the_sorted_map_did(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "due_date", "dueDate", "DUE-DATE", "Due_Date", "title", "Title",
                        "TITLE", "t_itle", "tags", "T-Z", "tz", "unknown",
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
                ("tags", names!["tags"]),
                ("tz", names!["tz"]),
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
