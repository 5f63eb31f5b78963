//! The audit plugin: an audit trail of every task change. For each event,
//! one record goes to the `audit` output, keyed by task id:
//!
//! `{"event_id", "event_type", "task_id", "user_id", "at", "before", "after"}`
//!
//! where `before` and `after` are [task snapshots](todo_plugin_sdk::snapshot)
//! (`after` is `null` on delete). `before` is the last snapshot this plugin
//! saw of the task, else the producer's previous state if it sent one, else
//! `null`. The last snapshot is kept in state per task and deleted with the
//! task, so a re-created task starts with `before: null`; a task nothing
//! happens to for `snapshot_ttl_days` (config, default 30) is forgotten
//! too, by a timer under the snapshot's key, so the state holds the tasks
//! of the last 30 days rather than every task that was ever live (a
//! snapshot kept by 0.2.0, before the TTL, gets its timer at the task's
//! next event).
//!
//! Its Python twin is `examples/audit-python`; CI checks both give the same
//! records.

use std::cell::Cell;

use serde::Serialize;
use todo_plugin_sdk::{
    Config, DAY_MS, Error, EventKind, FiredTimer, Plugin, Result, TaskEvent, TaskSnapshot,
    emit_json, host, rfc3339, state, timers, typed_state,
};

struct AuditPlugin;

const DEFAULT_SNAPSHOT_TTL_DAYS: u32 = 30;
/// Where a task's last snapshot (and its expiry timer) is kept.
const KEY_PREFIX: &str = "task/";

thread_local! {
    /// `snapshot_ttl_days` in ms, read once in `init` (an instance's config
    /// does not change; a new config comes with new instances).
    static SNAPSHOT_TTL_MS: Cell<i64> =
        const { Cell::new(DEFAULT_SNAPSHOT_TTL_DAYS as i64 * DAY_MS) };
}

/// One audit record.
#[derive(Serialize)]
struct AuditRecord<'a> {
    event_id: &'a str,
    event_type: &'static str,
    task_id: &'a str,
    user_id: &'a str,
    at: String,
    before: Option<TaskSnapshot>,
    after: Option<TaskSnapshot>,
}

impl Plugin for AuditPlugin {
    fn init(config: &Config) -> Result {
        SNAPSHOT_TTL_MS.set(config.days_ms("snapshot_ttl_days", DEFAULT_SNAPSHOT_TTL_DAYS)?);
        Ok(())
    }

    fn on_event(event: TaskEvent) -> Result {
        let task = &event.task;
        let key = [KEY_PREFIX, &task.id].concat();
        if key.len() > 1024 {
            return Err(Error::bad_input(
                "task-id-too-long",
                format!(
                    "task id of {} bytes is too long to keep a snapshot for",
                    task.id.len()
                ),
            ));
        }
        let before = match typed_state::get::<TaskSnapshot>(&key)? {
            Some(seen) => Some(seen),
            None => event.previous.as_ref().map(TaskSnapshot::from),
        };
        let after = (event.kind != EventKind::Deleted).then(|| task.snapshot());
        match &after {
            Some(snapshot) => {
                typed_state::set(&key, snapshot)?;
                let expires = host::now().saturating_add(SNAPSHOT_TTL_MS.get());
                timers::set(&key, expires, &[]);
            }
            None => {
                state::delete(&key);
                timers::cancel(&key);
            }
        }
        let record = AuditRecord {
            event_id: &event.id,
            event_type: event.kind.name(),
            task_id: &task.id,
            user_id: &task.user_id,
            at: rfc3339(event.occurred_at),
            before,
            after,
        };
        emit_json("audit", Some(&task.id), &record)
    }

    /// A task's snapshot expired: nothing happened to it for the TTL (an
    /// event since would have moved the timer).
    fn on_timer(timer: FiredTimer) -> Result {
        if timer.key.starts_with(KEY_PREFIX) {
            state::delete(&timer.key);
        }
        Ok(())
    }
}

todo_plugin_sdk::export!(AuditPlugin);
