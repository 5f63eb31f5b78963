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
//!   remembers which completions it already answered.

mod schedule;

use serde_json::json;
use todo_plugin_sdk::{
    EventKind, FiredTimer, Guest, PluginError, Recurrence, TaskEvent, error, host, json_state,
    output, rfc3339,
};

struct RecurrencePlugin;

/// The logical output new occurrences go to (mapped to the input topic).
const OUTPUT: &str = "tasks";

impl Guest for RecurrencePlugin {
    fn on_event(event: TaskEvent) -> Result<(), PluginError> {
        let task = &event.task;
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
        let answered_key = format!("answered:{}", task.id);
        if json_state::get::<String>(&answered_key)?.is_some() {
            host::log(
                host::LogLevel::Debug,
                &format!("completion of task {} already answered", task.id),
            );
            return Ok(());
        }
        let Some(due) = task.due.or(task.completed_at) else {
            host::log(
                host::LogLevel::Warn,
                &format!(
                    "recurring task {} has no due date; no next occurrence",
                    task.id
                ),
            );
            return Ok(());
        };
        let occurrence = task.occurrence.unwrap_or(1);
        let start = task.series_start.unwrap_or(due);
        let tz = schedule::time_zone(task.time_zone.as_deref())
            .map_err(|e| error("bad-time-zone", e))?;
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
                .map_err(|e| error("bad-rrule", format!("task {}: {e}", task.id)))?,
        };
        let series = task.series_id.clone().unwrap_or_else(|| task.id.clone());
        let Some(next) = next else {
            host::log(
                host::LogLevel::Info,
                &format!("series {series} ended after occurrence {occurrence}"),
            );
            json_state::set(&answered_key, &"ended".to_owned())?;
            return Ok(());
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
        output::emit(OUTPUT, Some(&task.user_id), &value.to_string());
        json_state::set(&answered_key, &new_id)
    }

    fn on_timer(_timer: FiredTimer) -> Result<(), PluginError> {
        Ok(())
    }
}

todo_plugin_sdk::export!(RecurrencePlugin);
