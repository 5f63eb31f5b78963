//! The recurrence plugin: when a recurring task is completed, emit a
//! `task.created` event for its next occurrence.
//!
//! - Simple patterns (daily/weekly/monthly/yearly × interval) step from the
//!   series' first due time in the task's time zone, so a 09:00 task stays at
//!   09:00 local across DST and "monthly on the 31st" clamps to the month's
//!   last day without drifting (Jan 31 → Feb 28 → Mar 31).
//! - RRULEs are evaluated with the `rrule` crate, anchored (`DTSTART`) at the
//!   series' first due time in the task's time zone.
//! - `until` / `max-occurrences` (and RRULE `UNTIL`/`COUNT`) end the series.
//! - The new task's id is derived from the series id and the occurrence
//!   number, so a replayed completion produces the same task, and the plugin
//!   remembers which completions it already answered — until the task is
//!   deleted, or for `answered_ttl_days` (config, default 30; a timer per
//!   answer), after which a replay would re-emit the same task id.

mod schedule;

use std::cell::Cell;

use serde::Serialize;
use todo_plugin_sdk::{
    Config, DAY_MS, Error, EventKind, FiredTimer, Plugin, Recurrence, Result, TaskEvent, debug,
    emit_json, host, info, rfc3339, timers, typed_state, warn,
};

use self::schedule::Next;

struct RecurrencePlugin;

/// The `task.created` event for a next occurrence, in the snake_case shape
/// producers send. Fields are in alphabetical order, the order the output
/// had when it was built as a `serde_json` map, so its bytes are unchanged.
#[derive(Serialize)]
struct CreatedJson<'a> {
    event_id: String,
    event_type: &'static str,
    source: &'static str,
    task_data: TaskJson<'a>,
    task_id: &'a str,
    timestamp: String,
    user_id: &'a str,
}

/// The next occurrence's `task_data`.
#[derive(Serialize)]
struct TaskJson<'a> {
    completed: bool,
    description: Option<&'a str>,
    due_date: String,
    is_recurring: bool,
    occurrence: u32,
    previous_task_id: &'a str,
    priority: Option<&'static str>,
    recurrence: RecurrenceJson<'a>,
    remind_at: Option<String>,
    series_id: &'a str,
    series_start: Option<String>,
    tags: &'a [String],
    time_zone: Option<&'a str>,
    title: Option<&'a str>,
}

/// The series' pattern, as the completed task had it.
#[derive(Serialize)]
#[serde(untagged)]
enum RecurrenceJson<'a> {
    Simple {
        end_date: Option<String>,
        interval: u32,
        max_occurrences: Option<u32>,
        pattern: &'static str,
    },
    Rrule {
        rrule: &'a str,
    },
}

/// The logical output new occurrences go to (mapped to the input topic).
const OUTPUT: &str = "tasks";

/// Days an answered completion is remembered, unless configured.
const DEFAULT_ANSWERED_TTL_DAYS: u32 = 30;

thread_local! {
    /// `answered_ttl_days` in ms, read once in `init` (an instance's config
    /// does not change; a new config comes with new instances).
    static ANSWERED_TTL_MS: Cell<i64> =
        const { Cell::new(DEFAULT_ANSWERED_TTL_DAYS as i64 * DAY_MS) };
}

fn answered_key(task_id: &str) -> String {
    ["answered:", task_id].concat()
}

/// Remembers that the completion of `task_id` was answered with `answer`,
/// and arranges to forget it after the TTL (the timer key is the state key).
fn remember(task_id: &str, answer: &str) -> Result {
    let key = answered_key(task_id);
    typed_state::set(&key, answer)?;
    timers::set(&key, host::now().saturating_add(ANSWERED_TTL_MS.get()), &[]);
    Ok(())
}

impl Plugin for RecurrencePlugin {
    fn init(config: &Config) -> Result {
        ANSWERED_TTL_MS.set(config.days_ms("answered_ttl_days", DEFAULT_ANSWERED_TTL_DAYS)?);
        Ok(())
    }

    fn on_event(event: TaskEvent) -> Result {
        let task = &event.task;
        if event.kind == EventKind::Deleted {
            let key = answered_key(&task.id);
            typed_state::delete(&key);
            timers::cancel(&key);
            return Ok(());
        }
        let completed_now = match event.kind {
            EventKind::Completed => true,
            EventKind::Updated => {
                task.completed && event.previous.as_ref().is_some_and(|p| !p.completed)
            }
            _ => false,
        };
        let Some(recurrence) = task.recurrence.as_ref().filter(|_| completed_now) else {
            return Ok(());
        };
        if typed_state::get::<String>(&answered_key(&task.id))?.is_some() {
            debug!("completion of task {} already answered", task.id);
            return Ok(());
        }
        let Some(due) = task.due.or(task.completed_at) else {
            warn!(
                "recurring task {} has no due date; no next occurrence",
                task.id
            );
            return Ok(());
        };
        let occurrence = task.occurrence.unwrap_or(1);
        let start = task.series_start.unwrap_or(due);
        let tz = schedule::time_zone(task.time_zone.as_deref())
            .map_err(|e| Error::bad_input("bad-time-zone", e))?;
        // A place in the series is counted only from the series' own start;
        // without one, this task starts the count.
        let counted = task.series_start.is_some();
        let done = if counted { occurrence } else { 1 };
        let next = match recurrence {
            Recurrence::Simple(simple) => {
                schedule::next_simple_after(start, simple.frequency, simple.interval, done, due, tz)
                    .filter(|next| simple.until.is_none_or(|until| next.at <= until))
            }
            Recurrence::Rrule(rule) => schedule::next_rrule(rule, start, due, done, tz)
                .map_err(|e| Error::bad_input("bad-rrule", format!("task {}: {e}", task.id)))?,
        };
        let next = next
            .map(|next| Next {
                occurrence: if counted {
                    next.occurrence
                } else {
                    occurrence.saturating_add(1)
                },
                ..next
            })
            .filter(|next| match recurrence {
                Recurrence::Simple(simple) => simple
                    .max_occurrences
                    .is_none_or(|max| next.occurrence <= max),
                Recurrence::Rrule(_) => true,
            });
        let series = task.series_id.clone().unwrap_or_else(|| task.id.clone());
        let Some(Next {
            at: next,
            occurrence: next_occurrence,
        }) = next
        else {
            info!("series {series} ended after occurrence {occurrence}");
            return remember(&task.id, "ended");
        };
        let new_id = format!("{series}-r{next_occurrence}");
        let remind_at = task
            .remind_at
            .and_then(|remind| task.due.map(|due| next - (due - remind)));
        let recurrence_json = match recurrence {
            Recurrence::Simple(s) => RecurrenceJson::Simple {
                end_date: s.until.map(rfc3339),
                interval: s.interval,
                max_occurrences: s.max_occurrences,
                pattern: s.frequency.name(),
            },
            Recurrence::Rrule(rule) => RecurrenceJson::Rrule { rrule: rule },
        };
        let value = CreatedJson {
            event_id: format!("{new_id}.created"),
            event_type: "task.created",
            source: "todo-eventd/recurrence",
            task_data: TaskJson {
                completed: false,
                description: task.description.as_deref(),
                due_date: rfc3339(next),
                is_recurring: true,
                occurrence: next_occurrence,
                previous_task_id: &task.id,
                priority: task.priority.map(|p| p.name()),
                recurrence: recurrence_json,
                remind_at: remind_at.map(rfc3339),
                series_id: &series,
                // Only a task counted from the series' start, or its first,
                // can give the start on: one numbered N without it would
                // hand on its own due date as occurrence 1's, and the next
                // count from there would jump N places ahead.
                series_start: (counted || occurrence == 1).then(|| rfc3339(start)),
                tags: &task.tags,
                time_zone: task.time_zone.as_deref(),
                title: task.title.as_deref(),
            },
            task_id: &new_id,
            timestamp: rfc3339(host::now()),
            user_id: &task.user_id,
        };
        emit_json(OUTPUT, Some(&task.user_id), &value)?;
        remember(&task.id, &new_id)
    }

    /// An answered completion's TTL ran out: forget it.
    fn on_timer(timer: FiredTimer) -> Result {
        typed_state::delete(&timer.key);
        Ok(())
    }
}

todo_plugin_sdk::export!(RecurrencePlugin);

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed event serializes to the bytes the `serde_json` map it
    /// replaced wrote: keys in alphabetical order, absent values as null.
    #[test]
    fn the_next_occurrence_is_written_in_the_established_shape() {
        let tags = ["work".to_owned()];
        let event = CreatedJson {
            event_id: "43-r2.created".into(),
            event_type: "task.created",
            source: "todo-eventd/recurrence",
            task_data: TaskJson {
                completed: false,
                description: None,
                due_date: "2026-02-02T09:00:00Z".into(),
                is_recurring: true,
                occurrence: 2,
                previous_task_id: "43",
                priority: Some("medium"),
                recurrence: RecurrenceJson::Simple {
                    end_date: None,
                    interval: 1,
                    max_occurrences: None,
                    pattern: "weekly",
                },
                remind_at: None,
                series_id: "43",
                series_start: Some("2026-01-26T09:00:00Z".into()),
                tags: &tags,
                time_zone: Some("Europe/Berlin"),
                title: Some("Team \"standup\""),
            },
            task_id: "43-r2",
            timestamp: "2026-01-26T09:05:00Z".into(),
            user_id: "u-17",
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"event_id":"43-r2.created","event_type":"task.created","source":"todo-eventd/recurrence","task_data":{"completed":false,"description":null,"due_date":"2026-02-02T09:00:00Z","is_recurring":true,"occurrence":2,"previous_task_id":"43","priority":"medium","recurrence":{"end_date":null,"interval":1,"max_occurrences":null,"pattern":"weekly"},"remind_at":null,"series_id":"43","series_start":"2026-01-26T09:00:00Z","tags":["work"],"time_zone":"Europe/Berlin","title":"Team \"standup\""},"task_id":"43-r2","timestamp":"2026-01-26T09:05:00Z","user_id":"u-17"}"#
        );
        let rrule = RecurrenceJson::Rrule {
            rrule: "FREQ=WEEKLY;BYDAY=MO",
        };
        assert_eq!(
            serde_json::to_string(&rrule).unwrap(),
            r#"{"rrule":"FREQ=WEEKLY;BYDAY=MO"}"#
        );
    }
}
