"""{{name}}: a todo-eventd plugin in Python.

For every event it receives, it emits one record to its logical output
`out` (map it to a topic in {{name}}.toml), keyed by task id. Build, check
and try it with:

    todo-eventd plugins build
    todo-eventd plugins check dist
    todo-eventd plugins test --plugins dist --events events.ndjson --stats
"""

import todo_plugin
from todo_plugin import emit_json, info, kind_name


class WitWorld(todo_plugin.Plugin):
    """The plugin; componentize-py exports the class with this name."""

    def init(self, config):
        # `[config]` of the manifest as (key, value) pairs; raise
        # todo_plugin.bad_input(...) here to reject a bad configuration.
        self.config = dict(config)
        info(f"{{name}} ready, {len(self.config)} config value(s)")

    def on_event(self, event):
        emit_json("out", event.task.id, {
            "event_id": event.id,
            "event_type": kind_name(event.kind),
            "task_id": event.task.id,
            "user_id": event.task.user_id,
        })
