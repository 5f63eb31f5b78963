//! The task body: from a `task_data`/`payload`/`newState` row to a WIT
//! [`Task`].

use jiff::tz::TimeZone;

use super::fields::{Found, Layers, Name, Obj, describe, join, kind, lookup, names, word_in};
use super::json::Json;
use super::{DecodeError, Result, recurrence, time};
use crate::world::{EventKind, Priority, Task, Timestamp};

/// The ids an envelope declares for its subject, which take precedence over
/// the ids inside the task row. Checked ([`id_at`]).
pub(crate) struct EnvelopeIds<'a> {
    task_id: Option<String>,
    user_id: Option<String>,
    /// Where the task id would be, for the "missing" message.
    body_path: &'a str,
}

impl<'a> EnvelopeIds<'a> {
    pub(crate) fn read(top: &Obj<'_>, body: &Obj<'a>) -> Result<Self> {
        let task_id = lookup(top, names!["taskid"])
            .map(|f| id_at(&f))
            .transpose()?;
        let user_id = lookup(top, names!["userid"])
            .map(|f| id_at(&f))
            .transpose()?;
        Ok(Self {
            task_id,
            user_id,
            body_path: body.path,
        })
    }
}

/// Decodes a task from its rows (searched in order).
pub(crate) fn decode(
    rows: &Layers<'_, '_>,
    envelope: &EnvelopeIds<'_>,
    kind: EventKind,
) -> Result<Task> {
    let id = match &envelope.task_id {
        Some(id) => id.clone(),
        None => rows
            .get(names!["taskid", "id"])
            .map(|f| id_at(&f))
            .transpose()?
            .ok_or_else(|| {
                let inner = join(envelope.body_path, "id");
                DecodeError::field(
                    "task_id",
                    format!("missing (expected task_id, taskId or {inner})"),
                )
            })?,
    };
    let user_id = match &envelope.user_id {
        Some(user) => user.clone(),
        None => rows
            .get(names!["userid", "owner", "ownerid"])
            .map(|f| id_at(&f))
            .transpose()?
            .ok_or_else(|| DecodeError::field("user_id", "missing (expected user_id or userId)"))?,
    };

    let (time_zone, tz) = match rows.get(names!["timezone", "tz", "tzid"]) {
        Some(found) => {
            let (name, tz) = time::time_zone(&found)?;
            (Some(name), tz)
        }
        None => (None, TimeZone::UTC),
    };
    let instant = |names: &[Name]| -> Result<Option<Timestamp>> {
        rows.get(names).map(|f| time::instant(&f, &tz)).transpose()
    };

    let due = instant(names!["duedate", "dueat", "due", "duetime", "deadline"])?;
    let remind_at = match rows.get(names![
        "remindat",
        "remindertime",
        "remindtime",
        "reminderat",
        "reminder",
    ]) {
        // A time; or, if it is not one, an offset before the due time
        // (`"reminder": "PT1H"`, `"reminder": 30`).
        Some(found) => match time::instant(&found, &tz) {
            Ok(at) => Some(at),
            Err(not_a_time) => match time::offset(&found) {
                Ok(_) => Some(offset_before_due(&found, due)?),
                Err(_) => return Err(not_a_time),
            },
        },
        None => remind_from_offset(rows, due)?,
    };
    let completed = match rows.get(names!["completed", "iscompleted", "done", "isdone"]) {
        Some(found) => found.bool()?,
        None => rows
            .get(names!["status"])
            .and_then(|f| f.value.as_str())
            .is_some_and(|s| matches!(s.to_ascii_lowercase().as_str(), "done" | "completed")),
    } || kind == EventKind::Completed;

    Ok(Task {
        id,
        user_id,
        title: optional_string(rows, names!["title", "name", "summary"])?,
        description: optional_string(rows, names!["description", "notes", "details"])?,
        completed,
        priority: rows
            .get(names!["priority"])
            .map(|f| priority(&f))
            .transpose()?,
        tags: rows
            .get(names!["tags", "labels"])
            .map(|f| tags(&f))
            .transpose()?
            .unwrap_or_default(),
        due,
        remind_at,
        recurrence: recurrence::decode(rows, &tz)?,
        series_id: rows
            .get(names![
                "seriesid",
                "parenttaskid",
                "recurrenceparentid",
                "recurringparentid",
            ])
            .map(|f| id_at(&f))
            .transpose()?,
        occurrence: rows
            .get(names!["occurrence", "occurrencenumber", "occurrenceindex"])
            .map(|f| f.positive_u32())
            .transpose()?,
        series_start: instant(names!["seriesstart", "recurrencestart", "dtstart"])?,
        time_zone,
        created_at: instant(names!["createdat", "created"])?,
        updated_at: instant(names!["updatedat", "modifiedat", "updated"])?,
        completed_at: instant(names!["completedat", "doneat"])?,
    })
}

/// The longest id (event, task, user, series) accepted. Plugins key their
/// state and timers by ids, so an id is held well below the host's key
/// limit; a longer one is bad input, dead-lettered at decode.
pub const MAX_ID_BYTES: usize = 256;

/// The id `found` holds (a string or a number), checked ([`check_id`]);
/// an error names the field as the producer spelled it.
pub(crate) fn id_at(found: &Found<'_>) -> Result<String> {
    let id = found.string_or_number()?;
    check_id(&id).map_err(|reason| found.error(reason))?;
    Ok(id)
}

/// Why `id` is no id, if it is not: empty, or longer than
/// [`MAX_ID_BYTES`].
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        Err("is empty".to_owned())
    } else if id.len() > MAX_ID_BYTES {
        Err(format!(
            "is {} bytes long; ids may be at most {MAX_ID_BYTES} bytes",
            id.len()
        ))
    } else {
        Ok(())
    }
}

/// A reminder given as "this long before the due time".
fn remind_from_offset(rows: &Layers<'_, '_>, due: Option<Timestamp>) -> Result<Option<Timestamp>> {
    let Some(found) = rows.get(names![
        "reminderoffsetminutes",
        "reminderminutesbefore",
        "remindbeforeminutes",
        "reminderoffset",
        "remindbefore",
        "reminderbefore",
    ]) else {
        return Ok(None);
    };
    offset_before_due(&found, due).map(Some)
}

/// The instant an offset field (`"1h"`, `PT30M`, minutes) puts before `due`.
fn offset_before_due(found: &Found<'_>, due: Option<Timestamp>) -> Result<Timestamp> {
    let offset = time::offset(found)?;
    let Some(due) = due else {
        return Err(found.error("a reminder offset needs a due date, and the task has none"));
    };
    let offset_ms = i64::try_from(offset.as_millis())
        .map_err(|_| found.error(format!("{} is too large", describe(found.value))))?;
    Ok(due.saturating_sub(offset_ms))
}

fn optional_string(rows: &Layers<'_, '_>, names: &[Name]) -> Result<Option<String>> {
    rows.get(names).map(|f| f.string_or_number()).transpose()
}

fn priority(found: &Found<'_>) -> Result<Priority> {
    const WORDS: [(&[&str], Priority); 4] = [
        (&["low"], Priority::Low),
        (&["medium", "normal", "med"], Priority::Medium),
        (&["high"], Priority::High),
        (&["urgent", "critical"], Priority::Urgent),
    ];
    let text = match found.value {
        Json::String(s) => s.trim(),
        other => {
            return Err(found.error(format!("expected a priority name, found {}", kind(other))));
        }
    };
    word_in(&WORDS, text).ok_or_else(|| {
        found.error(format!(
            "{} is not a priority (expected low, medium, high or urgent)",
            describe(found.value)
        ))
    })
}

/// The most tags a task may have: each is a string every plugin receives
/// and may keep, so a record cannot hand over a hundred thousand.
const MAX_TAGS: usize = 1000;

/// Tags as a list, or as one comma-separated string; blanks are dropped;
/// at most [`MAX_TAGS`].
fn tags(found: &Found<'_>) -> Result<Vec<String>> {
    let tags = all_tags(found)?;
    if tags.len() > MAX_TAGS {
        return Err(found.error(format!(
            "{} tags, more than the {MAX_TAGS} a task may have",
            tags.len()
        )));
    }
    Ok(tags)
}

fn all_tags(found: &Found<'_>) -> Result<Vec<String>> {
    let split = |s: &str| {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    match found.value {
        Json::String(s) => Ok(split(s)),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Json::String(s) if s.trim().is_empty() => None,
                Json::String(s) => Some(Ok(s.trim().to_owned())),
                Json::Number(n) => Some(Ok(n.to_string())),
                other => Some(Err(DecodeError::field(
                    format!("{}[{i}]", found.field()),
                    format!("expected a string tag, found {}", kind(other)),
                ))),
            })
            .collect(),
        other => Err(found.error(format!(
            "expected a list of tags or a comma-separated string, found {}",
            kind(other)
        ))),
    }
}
