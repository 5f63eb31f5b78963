//! The reminders plugin: one timer per task at its remind time; when it
//! fires, a reminder goes to the `reminders` output.
//!
//! - created/updated with a remind time in the future, not completed, and
//!   not after the due time: set (or move) the task's timer;
//! - completed, deleted, or an update that removes the remind time: cancel;
//! - timer fired: emit the reminder, unless the task is already past due
//!   (a late timer after a long outage never reminds after the due time).
//!
//! Each reminder has an id made of the task id and the remind time. Per task
//! the plugin remembers the time of the newest event it applied and the last
//! reminder it sent, so a duplicate, replayed or out-of-date event can
//! neither produce a second reminder nor move a timer back.

use serde::{Deserialize, Serialize};
use serde_json::json;
use todo_plugin_sdk::{
    EventKind, FiredTimer, Guest, PluginError, TaskEvent, Timestamp, error, host, json_state,
    output, rfc3339, timers,
};

struct RemindersPlugin;

/// What a pending reminder carries in its timer payload.
#[derive(Serialize, Deserialize)]
struct Pending {
    reminder_id: String,
    task_id: String,
    user_id: String,
    title: Option<String>,
    due: Option<Timestamp>,
    remind_at: Timestamp,
}

/// What the plugin remembers per task.
#[derive(Default, Serialize, Deserialize)]
struct Memo {
    /// `occurred-at` of the newest event applied; older events are stale.
    last_event_at: Timestamp,
    /// The id of the last reminder emitted.
    sent: Option<String>,
}

fn memo_key(task_id: &str) -> String {
    format!("task:{task_id}")
}

fn log(level: host::LogLevel, message: &str) {
    host::log(level, message);
}

impl Guest for RemindersPlugin {
    fn on_event(event: TaskEvent) -> Result<(), PluginError> {
        let task = &event.task;
        let key = memo_key(&task.id);
        let mut memo: Memo = json_state::get(&key)?.unwrap_or_default();
        if event.occurred_at < memo.last_event_at {
            log(
                host::LogLevel::Debug,
                &format!(
                    "task {}: ignoring event {} older than one already applied",
                    task.id, event.id
                ),
            );
            return Ok(());
        }
        memo.last_event_at = event.occurred_at;
        json_state::set(&key, &memo)?;
        if matches!(event.kind, EventKind::Completed | EventKind::Deleted) {
            timers::cancel(&task.id);
            return Ok(());
        }
        let Some(remind_at) = task.remind_at.filter(|_| !task.completed) else {
            timers::cancel(&task.id);
            return Ok(());
        };
        let now = host::now();
        if remind_at <= now {
            // Too late to remind; an old timer for this task is stale too.
            timers::cancel(&task.id);
            log(
                host::LogLevel::Debug,
                &format!(
                    "task {}: remind time {} is not in the future",
                    task.id,
                    rfc3339(remind_at)
                ),
            );
            return Ok(());
        }
        if task.due.is_some_and(|due| remind_at > due) {
            timers::cancel(&task.id);
            log(
                host::LogLevel::Info,
                &format!(
                    "task {}: remind time is after the due time; no reminder",
                    task.id
                ),
            );
            return Ok(());
        }
        let reminder_id = format!("{}@{}", task.id, rfc3339(remind_at));
        if memo.sent.as_deref() == Some(reminder_id.as_str()) {
            return Ok(());
        }
        let pending = Pending {
            reminder_id,
            task_id: task.id.clone(),
            user_id: task.user_id.clone(),
            title: task.title.clone(),
            due: task.due,
            remind_at,
        };
        let payload = serde_json::to_vec(&pending).map_err(|e| error("encode", e.to_string()))?;
        timers::set(&task.id, remind_at, &payload);
        Ok(())
    }

    fn on_timer(timer: FiredTimer) -> Result<(), PluginError> {
        let pending: Pending = serde_json::from_slice(&timer.payload)
            .map_err(|e| error("corrupt-timer", format!("timer {}: {e}", timer.key)))?;
        let now = host::now();
        if pending.due.is_some_and(|due| now > due) {
            log(
                host::LogLevel::Warn,
                &format!(
                    "task {}: reminder fired after the due time; dropped",
                    pending.task_id
                ),
            );
            return Ok(());
        }
        let key = memo_key(&pending.task_id);
        let mut memo: Memo = json_state::get(&key)?.unwrap_or_default();
        if memo.sent.as_deref() == Some(pending.reminder_id.as_str()) {
            return Ok(());
        }
        let value = json!({
            "reminder_id": pending.reminder_id,
            "task_id": pending.task_id,
            "user_id": pending.user_id,
            "title": pending.title,
            "due_at": pending.due.map(rfc3339),
            "remind_at": rfc3339(pending.remind_at),
            "fired_at": rfc3339(now),
        });
        output::emit("reminders", Some(&pending.user_id), &value.to_string());
        memo.sent = Some(pending.reminder_id);
        json_state::set(&key, &memo)
    }
}

todo_plugin_sdk::export!(RemindersPlugin);
