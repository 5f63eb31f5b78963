//! The reminders plugin: one timer per task at its remind time; when it
//! fires, a reminder goes to the `reminders` output.
//!
//! - created/updated with a remind time in the future, not completed, and
//!   not after the due time: set (or move) the task's timer;
//! - completed, or an update that removes the remind time: cancel;
//! - deleted: cancel, and forget the task;
//! - timer fired: emit the reminder, unless the task is already past due
//!   (a late timer after a long outage never reminds after the due time).
//!
//! Each reminder has an id made of the task id and the remind time. Per task
//! the plugin remembers the time of the newest event it applied and the last
//! reminder it sent, so a duplicate, replayed or out-of-date event can
//! neither produce a second reminder nor move a timer back.
//!
//! State stays bounded: what is remembered of a task is deleted when the
//! task is deleted, and expires `memo_ttl_days` (config, default 30) after
//! the task's last event or reminder — the task's one timer is either its
//! pending reminder or that expiry.

use serde::{Deserialize, Serialize};
use serde_json::json;
use todo_plugin_sdk::{
    Config, EventKind, FiredTimer, Plugin, Result, TaskEvent, Timestamp, debug, emit_json, host,
    info, json_state, json_timers, rfc3339, timers, warn,
};

struct RemindersPlugin;

/// Days a task is remembered after its last event, unless configured.
const DEFAULT_MEMO_TTL_DAYS: u32 = 30;
const DAY_MS: i64 = 86_400_000;

/// What a task's timer carries.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TimerPayload {
    /// A reminder to send.
    Remind(Pending),
    /// Forget the task (nothing happened to it for the TTL).
    Expire {
        /// The task whose memo expires.
        expire: String,
    },
}

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

fn memo_ttl_ms() -> i64 {
    let days = host::config("memo_ttl_days")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_MEMO_TTL_DAYS);
    i64::from(days) * DAY_MS
}

/// Replaces the task's timer with its memo's expiry.
fn expire_later(task_id: &str, from: Timestamp) -> Result {
    let payload = TimerPayload::Expire {
        expire: task_id.to_owned(),
    };
    json_timers::set(task_id, from.saturating_add(memo_ttl_ms()), &payload)
}

impl Plugin for RemindersPlugin {
    fn init(config: &Config) -> Result {
        config.positive("memo_ttl_days")?;
        Ok(())
    }

    fn on_event(event: TaskEvent) -> Result {
        let task = &event.task;
        let key = memo_key(&task.id);
        let mut memo: Memo = json_state::get(&key)?.unwrap_or_default();
        if event.occurred_at < memo.last_event_at {
            debug!(
                "task {}: ignoring event {} older than one already applied",
                task.id, event.id
            );
            return Ok(());
        }
        if event.kind == EventKind::Deleted {
            timers::cancel(&task.id);
            json_state::delete(&key);
            return Ok(());
        }
        memo.last_event_at = event.occurred_at;
        json_state::set(&key, &memo)?;
        let now = host::now();
        let remind_at = task
            .remind_at
            .filter(|_| !task.completed && event.kind != EventKind::Completed);
        let Some(remind_at) = remind_at else {
            return expire_later(&task.id, now);
        };
        if remind_at <= now {
            // Too late to remind; an old timer for this task is stale too.
            debug!(
                "task {}: remind time {} is not in the future",
                task.id,
                rfc3339(remind_at)
            );
            return expire_later(&task.id, now);
        }
        if task.due.is_some_and(|due| remind_at > due) {
            info!(
                "task {}: remind time is after the due time; no reminder",
                task.id
            );
            return expire_later(&task.id, now);
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
        json_timers::set(&task.id, remind_at, &TimerPayload::Remind(pending))
    }

    fn on_timer(timer: FiredTimer) -> Result {
        let pending = match timer.payload_json::<TimerPayload>()? {
            TimerPayload::Remind(pending) => pending,
            TimerPayload::Expire { expire } => {
                json_state::delete(&memo_key(&expire));
                return Ok(());
            }
        };
        let now = host::now();
        if pending.due.is_some_and(|due| now > due) {
            warn!(
                "task {}: reminder fired after the due time; dropped",
                pending.task_id
            );
            return expire_later(&pending.task_id, now);
        }
        let key = memo_key(&pending.task_id);
        let mut memo: Memo = json_state::get(&key)?.unwrap_or_default();
        if memo.sent.as_deref() != Some(pending.reminder_id.as_str()) {
            let value = json!({
                "reminder_id": pending.reminder_id,
                "task_id": pending.task_id,
                "user_id": pending.user_id,
                "title": pending.title,
                "due_at": pending.due.map(rfc3339),
                "remind_at": rfc3339(pending.remind_at),
                "fired_at": rfc3339(now),
            });
            emit_json("reminders", Some(&pending.user_id), &value)?;
            memo.sent = Some(pending.reminder_id);
            json_state::set(&key, &memo)?;
        }
        expire_later(&pending.task_id, now)
    }
}

todo_plugin_sdk::export!(RemindersPlugin);
