//! The analytics plugin: per-user task counters and rates, emitted as
//! snapshots keyed by user to the `analytics` output (suitable for a
//! compacted topic).
//!
//! Snapshots are throttled: the first change for a user arms a timer
//! `snapshot_interval` ahead (config, default 60s); every change until it
//! fires folds into the same snapshot.
//!
//! Counting is idempotent per task: each task's lifecycle is tracked in
//! state, so a duplicate `created` or `completed` event is not counted twice.

mod stats;

use todo_plugin_sdk::{
    EventKind, FiredTimer, Guest, PluginError, TaskEvent, error, host, json_state, output, timers,
};

use crate::stats::{TaskRecord, UserStats};

struct AnalyticsPlugin;

const DEFAULT_INTERVAL_MS: i64 = 60_000;

fn user_key(user: &str) -> String {
    format!("user:{user}")
}

fn task_key(task: &str) -> String {
    format!("task:{task}")
}

fn snapshot_interval() -> Result<i64, PluginError> {
    let Some(text) = host::config("snapshot_interval") else {
        return Ok(DEFAULT_INTERVAL_MS);
    };
    parse_interval(&text).ok_or_else(|| {
        error(
            "bad-config",
            format!("snapshot_interval {text:?} is not a duration like \"60s\", \"5m\" or \"1h\""),
        )
    })
}

/// `"90s"`, `"5m"`, `"1h"` or plain seconds, in milliseconds.
fn parse_interval(text: &str) -> Option<i64> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(n * scale).filter(|ms| *ms > 0)
}

impl Guest for AnalyticsPlugin {
    fn on_event(event: TaskEvent) -> Result<(), PluginError> {
        let task = &event.task;
        let user = user_key(&task.user_id);
        let mut stats: UserStats = json_state::get(&user)?.unwrap_or_default();
        let record_key = task_key(&task.id);
        let record: Option<TaskRecord> = json_state::get(&record_key)?;
        let at = event.occurred_at;

        let changed = match event.kind {
            EventKind::Created => stats.created(record.as_ref(), task, at),
            EventKind::Updated => stats.updated(record.as_ref(), task, at),
            EventKind::Completed => stats.completed(record.as_ref(), task, at),
            EventKind::Deleted => stats.deleted(record.as_ref(), task),
        };
        let Some(new_record) = changed else {
            return Ok(());
        };
        // Deleted tasks keep a small record too, so a duplicate delete is
        // recognised.
        json_state::set(&record_key, &new_record)?;
        json_state::set(&user, &stats)?;
        let timer = format!("snapshot:{}", task.user_id);
        if timers::get(&timer).is_none() {
            let interval = snapshot_interval()?;
            timers::set(&timer, host::now() + interval, task.user_id.as_bytes());
        }
        Ok(())
    }

    fn on_timer(timer: FiredTimer) -> Result<(), PluginError> {
        let user_id = String::from_utf8(timer.payload).map_err(|_| {
            error(
                "corrupt-timer",
                format!("timer {} has a non-UTF-8 user id", timer.key),
            )
        })?;
        let Some(stats) = json_state::get::<UserStats>(&user_key(&user_id))? else {
            return Ok(());
        };
        let snapshot = stats.snapshot(&user_id, host::now());
        output::emit("analytics", Some(&user_id), &snapshot.to_string());
        Ok(())
    }
}

todo_plugin_sdk::export!(AnalyticsPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("60s"), Some(60_000));
        assert_eq!(parse_interval("5m"), Some(300_000));
        assert_eq!(parse_interval("30"), Some(30_000));
        assert_eq!(parse_interval("0s"), None);
        assert_eq!(parse_interval("soon"), None);
    }
}
