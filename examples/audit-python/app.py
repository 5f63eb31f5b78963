"""audit: a before/after trail of every task change, in Python.

For every task event it emits one record to the logical output `audit`,
keyed by task id:

    {"event_id", "event_type", "task_id", "user_id", "at", "before", "after"}

`before` is the last snapshot this plugin saw of the task (kept in state
under `task/<id>`), else the producer's previous state, else null; `after`
is the task now, or null when it was deleted (which also forgets it). A
task nothing happens to for `snapshot_ttl_days` (config, default 30) is
forgotten too, by a timer under the snapshot's key. Snapshots have the
shape of `todo_plugin.task_snapshot`.
"""

import todo_plugin
from todo_plugin import (
    EventKind, bad_input, config_positive, emit_json, kind_name, now,
    rfc3339, state_delete, state_get_json, state_set_json, task_snapshot,
    timer_cancel, timer_set,
)

MAX_KEY_BYTES = 1024  # the host's limit on a state key
DAY_MS = 86_400_000
KEY_PREFIX = "task/"  # a task's last snapshot, and its expiry timer


class WitWorld(todo_plugin.Plugin):
    def init(self, config):
        self.snapshot_ttl_ms = config_positive(config, "snapshot_ttl_days", 30) * DAY_MS

    def on_event(self, event):
        task = event.task
        key = f"{KEY_PREFIX}{task.id}"
        if len(key.encode()) > MAX_KEY_BYTES:
            raise bad_input(
                "task-id-too-long",
                f"task id of {len(task.id.encode())} bytes is too long "
                "to keep a snapshot for",
            )

        before = state_get_json(key)
        if before is None and event.previous is not None:
            before = task_snapshot(event.previous)

        if event.kind == EventKind.DELETED:
            after = None
            state_delete(key)
            timer_cancel(key)
        else:
            after = task_snapshot(task)
            state_set_json(key, after)
            timer_set(key, now() + self.snapshot_ttl_ms)

        emit_json("audit", task.id, {
            "event_id": event.id,
            "event_type": kind_name(event.kind),
            "task_id": task.id,
            "user_id": task.user_id,
            "at": rfc3339(event.occurred_at),
            "before": before,
            "after": after,
        })

    def on_timer(self, timer):
        # Nothing happened to the task for the TTL (an event would have
        # moved the timer): forget its snapshot.
        if timer.key.startswith(KEY_PREFIX):
            state_delete(timer.key)
