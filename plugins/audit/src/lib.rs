//! The audit plugin: an audit trail of every task change. For each event,
//! one record goes to the `audit` output, keyed by task id:
//!
//! `{"event_id", "event_type", "task_id", "user_id", "at", "before", "after"}`
//!
//! where `before` and `after` are [task snapshots](todo_plugin_sdk::snapshot)
//! (`after` is `null` on delete). `before` is the last snapshot this plugin
//! saw of the task, else the producer's previous state if it sent one, else
//! `null`. The last snapshot is kept in state per task and deleted with the
//! task, so a re-created task starts with `before: null`.
//!
//! Its Python twin is `examples/audit-python`; CI checks both give the same
//! records.

use serde::Serialize;
use todo_plugin_sdk::{
    Error, EventKind, Plugin, Result, TaskEvent, TaskSnapshot, emit_json, rfc3339, state,
    typed_state,
};

struct AuditPlugin;

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
    fn on_event(event: TaskEvent) -> Result {
        let task = &event.task;
        let key = format!("task/{}", task.id);
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
            Some(snapshot) => typed_state::set(&key, snapshot)?,
            None => state::delete(&key),
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
}

todo_plugin_sdk::export!(AuditPlugin);
