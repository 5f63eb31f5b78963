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

use serde_json::json;
use todo_plugin_sdk::{
    Config, Error, EventKind, FiredTimer, Plugin, Recurrence, Result, TaskEvent, debug, emit_json,
    host, info, rfc3339, timers, typed_state, warn,
};

struct RecurrencePlugin;

/// The logical output new occurrences go to (mapped to the input topic).
const OUTPUT: &str = "tasks";

/// Days an answered completion is remembered, unless configured.
const DEFAULT_ANSWERED_TTL_DAYS: u32 = 30;
const DAY_MS: i64 = 86_400_000;

fn answered_key(task_id: &str) -> String {
    ["answered:", task_id].concat()
}

/// Remembers that the completion of `task_id` was answered with `answer`,
/// and arranges to forget it after the TTL (the timer key is the state key).
fn remember(task_id: &str, answer: &str) -> Result {
    let key = answered_key(task_id);
    typed_state::set(&key, answer)?;
    let days = host::config("answered_ttl_days")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_ANSWERED_TTL_DAYS);
    timers::set(
        &key,
        host::now().saturating_add(i64::from(days) * DAY_MS),
        &[],
    );
    Ok(())
}

impl Plugin for RecurrencePlugin {
    fn init(config: &Config) -> Result {
        config.positive("answered_ttl_days")?;
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
        let next = match recurrence {
            Recurrence::Simple(simple) => {
                if simple.max_occurrences.is_some_and(|max| occurrence >= max) {
                    None
                } else {
                    schedule::next_simple(start, simple.frequency, simple.interval, occurrence, tz)
                        .filter(|next| simple.until.is_none_or(|until| *next <= until))
                }
            }
            Recurrence::Rrule(rule) => schedule::next_rrule(rule, start, due, tz)
                .map_err(|e| Error::bad_input("bad-rrule", format!("task {}: {e}", task.id)))?,
        };
        let series = task.series_id.clone().unwrap_or_else(|| task.id.clone());
        let Some(next) = next else {
            info!("series {series} ended after occurrence {occurrence}");
            return remember(&task.id, "ended");
        };
        let next_occurrence = occurrence + 1;
        let new_id = format!("{series}-r{next_occurrence}");
        let remind_at = task
            .remind_at
            .and_then(|remind| task.due.map(|due| next - (due - remind)));
        let recurrence_json = match recurrence {
            Recurrence::Simple(s) => json!({
                "pattern": s.frequency.name(),
                "interval": s.interval,
                "end_date": s.until.map(rfc3339),
                "max_occurrences": s.max_occurrences,
            }),
            Recurrence::Rrule(rule) => json!({ "rrule": rule }),
        };
        let now = host::now();
        let value = json!({
            "event_id": format!("{new_id}.created"),
            "event_type": "task.created",
            "source": "todo-eventd/recurrence",
            "user_id": task.user_id,
            "task_id": new_id,
            "timestamp": rfc3339(now),
            "task_data": {
                "title": task.title,
                "description": task.description,
                "completed": false,
                "priority": task.priority.map(|p| p.name()),
                "tags": task.tags,
                "due_date": rfc3339(next),
                "remind_at": remind_at.map(rfc3339),
                "time_zone": task.time_zone,
                "is_recurring": true,
                "recurrence": recurrence_json,
                "series_id": series,
                "series_start": rfc3339(start),
                "occurrence": next_occurrence,
                "previous_task_id": task.id,
            }
        });
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
