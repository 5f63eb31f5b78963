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
//! neither produce a second reminder nor move a timer back. An event dated
//! more than a day after the host's clock is refused (`bad-input`, so the
//! daemon dead-letters it with the reason): its producer's clock is wrong,
//! and applying it would make every real event for the task look older —
//! ignored — until that date, and keep the memo from expiring.
//!
//! State stays bounded: what is remembered of a task is deleted when the
//! task is deleted, and expires `memo_ttl_days` (config, default 30) after
//! the task's last event or reminder — the task's one timer is either its
//! pending reminder or that expiry. The expiry is armed once and, when it
//! fires, re-armed for the TTL after the latest event if there was one, so
//! an event does not rewrite the timer.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use serde_json::json;
use todo_plugin_sdk::{
    Config, DAY_MS, Error, EventKind, FiredTimer, Plugin, Result, TaskEvent, Timestamp, debug,
    emit_json, host, info, rfc3339, timers, typed_state, typed_timers, warn,
};

struct RemindersPlugin;

/// Days a task is remembered after its last event, unless configured.
const DEFAULT_MEMO_TTL_DAYS: u32 = 30;

/// How far after the host's clock an event may be dated.
const MAX_AHEAD_MS: Timestamp = DAY_MS;

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
    /// Whether the task's timer is its expiry (not a pending reminder).
    #[serde(default)]
    expiry_armed: bool,
    /// Whether the task's timer is under the memo's key. Memos written by
    /// earlier versions lack it: their timer is under the bare task id.
    #[serde(default, rename = "tk")]
    timer_at_key: bool,
}

impl Memo {
    /// The memo of a task seen for the first time.
    fn fresh() -> Self {
        Self {
            timer_at_key: true,
            ..Self::default()
        }
    }
}

fn memo_key(task_id: &str) -> String {
    ["task:", task_id].concat()
}

thread_local! {
    /// `memo_ttl_days` in ms, read once in `init` (an instance's config
    /// does not change; a new config comes with new instances).
    static MEMO_TTL_MS: Cell<i64> = const { Cell::new(DEFAULT_MEMO_TTL_DAYS as i64 * DAY_MS) };
}

fn memo_ttl_ms() -> i64 {
    MEMO_TTL_MS.get()
}

/// Makes the task's timer (under its memo's `key`) its memo's expiry, a
/// TTL from `from`, unless it already is (the expiry re-arms itself when
/// it fires early).
fn expire_later(key: &str, task_id: &str, memo: &mut Memo, from: Timestamp) -> Result {
    if memo.expiry_armed {
        return Ok(());
    }
    memo.expiry_armed = true;
    let payload = TimerPayload::Expire {
        expire: task_id.to_owned(),
    };
    typed_timers::set(key, from.saturating_add(memo_ttl_ms()), &payload)
}

/// The reminder `event` calls for, if any: a remind time in the future,
/// not after the due time, on a task not completed, not already sent.
fn reminder_for(event: &TaskEvent, memo: &Memo) -> Option<Pending> {
    let task = &event.task;
    let remind_at = task
        .remind_at
        .filter(|_| !task.completed && event.kind != EventKind::Completed)?;
    if remind_at <= host::now() {
        debug!(
            "task {}: remind time {} is not in the future",
            task.id,
            rfc3339(remind_at)
        );
        return None;
    }
    if task.due.is_some_and(|due| remind_at > due) {
        info!(
            "task {}: remind time is after the due time; no reminder",
            task.id
        );
        return None;
    }
    let reminder_id = [task.id.as_str(), "@", &rfc3339(remind_at)].concat();
    if memo.sent.as_deref() == Some(reminder_id.as_str()) {
        return None;
    }
    Some(Pending {
        reminder_id,
        task_id: task.id.clone(),
        user_id: task.user_id.clone(),
        title: task.title.clone(),
        due: task.due,
        remind_at,
    })
}

impl Plugin for RemindersPlugin {
    fn init(config: &Config) -> Result {
        MEMO_TTL_MS.set(config.days_ms("memo_ttl_days", DEFAULT_MEMO_TTL_DAYS)?);
        Ok(())
    }

    fn on_event(event: TaskEvent) -> Result {
        let now = host::now();
        if event.occurred_at > now.saturating_add(MAX_AHEAD_MS) {
            return Err(Error::bad_input(
                "from-the-future",
                format!(
                    "event {} is dated {}, more than a day after the host's clock ({}): \
                     applied, it would hide the task's events until then",
                    event.id,
                    rfc3339(event.occurred_at),
                    rfc3339(now)
                ),
            ));
        }
        let task = &event.task;
        let key = memo_key(&task.id);
        let mut memo: Memo = typed_state::get(&key)?.unwrap_or_else(Memo::fresh);
        if event.occurred_at < memo.last_event_at {
            debug!(
                "task {}: ignoring event {} older than one already applied",
                task.id, event.id
            );
            return Ok(());
        }
        // Earlier versions keyed the task's timer by the bare task id; it
        // now shares the memo's key (one changelog record for both). Only
        // an older memo can have such a timer (a new task's memo is new).
        if !memo.timer_at_key {
            memo.timer_at_key = true;
            if timers::get(&task.id).is_some() {
                timers::cancel(&task.id);
                memo.expiry_armed = false;
            }
        }
        if event.kind == EventKind::Deleted {
            timers::cancel(&key);
            typed_state::delete(&key);
            return Ok(());
        }
        memo.last_event_at = event.occurred_at;
        let timer = reminder_for(&event, &memo);
        match timer {
            Some(pending) => {
                memo.expiry_armed = false;
                typed_timers::set(&key, pending.remind_at, &TimerPayload::Remind(pending))?;
            }
            None => expire_later(&key, &task.id, &mut memo, host::now())?,
        }
        typed_state::set(&key, &memo)
    }

    fn on_timer(timer: FiredTimer) -> Result {
        let now = host::now();
        let pending = match timer.payload_typed::<TimerPayload>()? {
            TimerPayload::Remind(pending) => pending,
            TimerPayload::Expire { expire } => {
                let key = memo_key(&expire);
                let Some(memo) = typed_state::get::<Memo>(&key)? else {
                    return Ok(());
                };
                // Events since it was armed push the expiry back.
                let expires = memo.last_event_at.saturating_add(memo_ttl_ms());
                if expires > now {
                    let payload = TimerPayload::Expire { expire };
                    return typed_timers::set(&timer.key, expires, &payload);
                }
                typed_state::delete(&key);
                return Ok(());
            }
        };
        let key = memo_key(&pending.task_id);
        let mut memo: Memo = typed_state::get(&key)?.unwrap_or_else(Memo::fresh);
        memo.expiry_armed = false;
        if pending.due.is_some_and(|due| now > due) {
            warn!(
                "task {}: reminder fired after the due time; dropped",
                pending.task_id
            );
        } else if memo.sent.as_deref() != Some(pending.reminder_id.as_str()) {
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
        }
        expire_later(&key, &pending.task_id, &mut memo, now)?;
        typed_state::set(&key, &memo)
    }
}

todo_plugin_sdk::export!(RemindersPlugin);
