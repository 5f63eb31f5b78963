//! The analytics plugin: per-user task counters and rates, emitted as
//! snapshots keyed by user to the `analytics` output (suitable for a
//! compacted topic).
//!
//! Snapshots are throttled: the first change for a user arms a timer
//! `snapshot_interval` ahead (config, default 60s); every change until it
//! fires folds into the same snapshot.
//!
//! State stays small and bounded: the per-user value holds counters only;
//! each task has its own record (so a duplicate `created` or `completed`
//! is not counted twice) and one timer — at its due time while it is open
//! (to count it overdue), else `record_ttl_days` (config, default 30) after
//! it was completed or deleted, when its record is forgotten.

mod stats;

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use todo_plugin_sdk::{
    Config, DAY_MS, Error, FiredTimer, Plugin, Result, TaskEvent, emit_json, host, timers,
    typed_state, typed_timers,
};

use crate::stats::{Status, TaskRecord, UserStats};

struct AnalyticsPlugin;

/// `snapshot_interval` unless configured: 60 s.
const DEFAULT_INTERVAL_MS: i64 = 60_000;
const DEFAULT_RECORD_TTL_DAYS: u32 = 30;

fn user_key(user: &str) -> String {
    ["user:", user].concat()
}

fn task_key(task: &str) -> String {
    ["task:", task].concat()
}

/// What a task's timer is for.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TaskTimer {
    /// The task falls due: count it overdue if still open.
    Due { user: String, task: String },
    /// Forget the record of a finished task.
    Forget { task: String },
}

/// `snapshot_interval` as ms: a duration like "60s", between 1 ms and
/// centuries.
fn parse_interval(text: &str) -> Result<i64> {
    let interval = humantime::parse_duration(text).map_err(|e| {
        Error::bad_input(
            "bad-config",
            format!(
                "config.snapshot_interval = {text:?} is not a duration like \"60s\" or \"5m\": {e}"
            ),
        )
    })?;
    match i64::try_from(interval.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(Error::bad_input(
            "bad-config",
            format!("config.snapshot_interval = {text:?} must be between 1ms and centuries"),
        )),
    }
}

thread_local! {
    /// `snapshot_interval` in ms, read once in `init` (an instance's config
    /// does not change; a new config comes with new instances).
    static SNAPSHOT_INTERVAL_MS: Cell<i64> = const { Cell::new(DEFAULT_INTERVAL_MS) };
    /// `record_ttl_days` in ms, read once in `init`.
    static RECORD_TTL_MS: Cell<i64> = const { Cell::new(DEFAULT_RECORD_TTL_DAYS as i64 * DAY_MS) };
}

/// Arms the user's snapshot timer, unless one is pending.
fn snapshot_soon(user_id: &str) -> Result {
    let timer = ["snapshot:", user_id].concat();
    if timers::get(&timer).is_none() {
        timers::set(
            &timer,
            host::now().saturating_add(SNAPSHOT_INTERVAL_MS.get()),
            user_id.as_bytes(),
        );
    }
    Ok(())
}

impl Plugin for AnalyticsPlugin {
    fn init(config: &Config) -> Result {
        let interval = config.get("snapshot_interval").map(parse_interval);
        SNAPSHOT_INTERVAL_MS.set(interval.transpose()?.unwrap_or(DEFAULT_INTERVAL_MS));
        RECORD_TTL_MS.set(config.days_ms("record_ttl_days", DEFAULT_RECORD_TTL_DAYS)?);
        Ok(())
    }

    fn on_event(event: TaskEvent) -> Result {
        let task = &event.task;
        let user = user_key(&task.user_id);
        let mut stats: UserStats = typed_state::get(&user)?.unwrap_or_default();
        let record_key = task_key(&task.id);
        let record: Option<TaskRecord> = typed_state::get(&record_key)?;
        let now = host::now();
        let Some(change) = stats.apply(event.kind, record.as_ref(), task, event.occurred_at, now)
        else {
            return Ok(());
        };
        let timer = match (change.record.status, change.watch_due) {
            (Status::Open, Some(due)) => Some((
                due,
                TaskTimer::Due {
                    user: task.user_id.clone(),
                    task: task.id.clone(),
                },
            )),
            (Status::Open, None) => None,
            (Status::Completed | Status::Deleted, _) => Some((
                now.saturating_add(RECORD_TTL_MS.get()),
                TaskTimer::Forget {
                    task: task.id.clone(),
                },
            )),
        };
        match timer {
            Some((due, payload)) => typed_timers::set(&record_key, due, &payload)?,
            None => timers::cancel(&record_key),
        }
        typed_state::set(&record_key, &change.record)?;
        typed_state::set(&user, &stats)?;
        snapshot_soon(&task.user_id)
    }

    fn on_timer(timer: FiredTimer) -> Result {
        if timer.key.starts_with("snapshot:") {
            let user_id = String::from_utf8(timer.payload).map_err(|_| {
                Error::internal(
                    "corrupt-timer",
                    format!("timer {} has a non-UTF-8 user id", timer.key),
                )
            })?;
            let Some(stats) = typed_state::get::<UserStats>(&user_key(&user_id))? else {
                return Ok(());
            };
            return emit_json(
                "analytics",
                Some(&user_id),
                &stats.snapshot(&user_id, host::now()),
            );
        }
        match timer.payload_typed::<TaskTimer>()? {
            TaskTimer::Forget { task } => {
                let key = task_key(&task);
                let record: Option<TaskRecord> = typed_state::get(&key)?;
                if record.is_some_and(|r| r.status != Status::Open) {
                    typed_state::delete(&key);
                }
                Ok(())
            }
            TaskTimer::Due { user, task } => {
                let (user_key, task_key) = (user_key(&user), task_key(&task));
                let (Some(mut stats), Some(record)) = (
                    typed_state::get::<UserStats>(&user_key)?,
                    typed_state::get::<TaskRecord>(&task_key)?,
                ) else {
                    return Ok(());
                };
                let Some(record) = stats.due_passed(&record, timer.due) else {
                    return Ok(());
                };
                typed_state::set(&task_key, &record)?;
                typed_state::set(&user_key, &stats)?;
                snapshot_soon(&user)
            }
        }
    }
}

todo_plugin_sdk::export!(AnalyticsPlugin);
