"""Helpers for todo-eventd plugins written in Python: the twin of the Rust SDK.

A plugin is a module (``app.py``) defining a class ``WitWorld`` that
componentize-py exports as the ``todo:plugin@0.2.0`` world ``plugin``::

    import todo_plugin
    from todo_plugin import emit_json, kind_name

    class WitWorld(todo_plugin.Plugin):
        def on_event(self, event):
            emit_json("out", event.task.id, {"seen": kind_name(event.kind)})

Build it with ``todo-eventd plugins build`` (componentize-py 0.25 under
the hood; this file is supplied if the project has none).

Things to know about componentize-py:

- The app module is imported, and ``WitWorld`` instantiated, at *build*
  time; the component starts from that snapshot. Module-level code therefore
  must not call the host, and every module used at run time must be imported
  at the top of a file.
- componentize-py makes a separate instance for each export. ``Plugin``
  makes them share one attribute dict, so what ``init`` stores on ``self``
  is seen by ``on_event`` and ``on_timer``.
- A handler fails by raising the exception that ``bad_input``,
  ``retryable`` or ``internal`` returns. Any other exception traps: the call
  is dead-lettered and counted toward the plugin's quarantine (the
  traceback goes to the plugin's log).
- componentize-py 0.25 never frees ``bytes`` passed to the host (state
  values, timer payloads): they stay in the instance's memory until it is
  recycled. The host replaces an instance once it passes 3/4 of ``memory``,
  so give ``memory`` room to spare (the template's 64MiB is plenty).

Handlers' effects (emits, state writes, timers) are applied only if the
handler returns normally. Instances are recycled at any time, so keep
durable data in ``state`` and ``timers``, not in globals or on ``self``.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, output as _output, state, timers
from wit_world.imports.types import (
    ErrorKind,
    EventKind,
    FiredTimer,
    Frequency,
    PluginError,
    Priority,
    Recurrence_Rrule,
    Recurrence_Simple,
    Task,
    TaskEvent,
)

__all__ = [
    "Plugin", "bad_input", "retryable", "internal",
    "trace", "debug", "info", "warn", "error",
    "state_get_json", "state_set_json", "state_delete",
    "emit_json", "timer_set_json", "timer_set", "timer_cancel",
    "timer_payload_json", "now", "config_positive",
    "rfc3339", "kind_name", "priority_name", "task_snapshot",
    "ErrorKind", "EventKind", "FiredTimer", "Frequency", "PluginError",
    "Priority", "Task", "TaskEvent",
]


class Plugin(wit_world.WitWorld):
    """Base class for a plugin's ``WitWorld``: every export has a default.

    ``init`` accepts any configuration, ``on_event`` and ``on_timer`` do
    nothing; override what the plugin needs. All instances share one
    attribute dict (componentize-py makes one instance per export).
    """

    _shared_attributes: dict = {}

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.__dict__ = Plugin._shared_attributes
        return self

    def init(self, config: list[tuple[str, str]]) -> None:
        """Called once per instance with the manifest's ``[config]`` pairs."""

    def on_event(self, event: TaskEvent) -> None:
        """Handle one event of a subscribed kind."""

    def on_timer(self, timer: FiredTimer) -> None:
        """Handle a timer this plugin set that has come due."""


# Errors: `raise bad_input("missing-due-date", "the task has no due date")`.

def _error(kind: ErrorKind, code: str, message: str) -> Err:
    # componentize-py maps exactly `Err` (not a subclass) to `err(...)`.
    return Err(PluginError(kind=kind, code=code, message=message))


def bad_input(code: str, message: str) -> Err:
    """An error to raise for input that retrying will not fix (dead-lettered)."""
    return _error(ErrorKind.BAD_INPUT, code, message)


def retryable(code: str, message: str) -> Err:
    """An error to raise for a transient failure (the call is retried)."""
    return _error(ErrorKind.RETRYABLE, code, message)


def internal(code: str, message: str) -> Err:
    """An error to raise for a bug or broken invariant (counts toward quarantine)."""
    return _error(ErrorKind.INTERNAL, code, message)


# Logging through the host, tagged with the plugin and the event.

def trace(message: str) -> None:
    """Log ``message`` at trace level."""
    host.log(host.LogLevel.TRACE, message)


def debug(message: str) -> None:
    """Log ``message`` at debug level."""
    host.log(host.LogLevel.DEBUG, message)


def info(message: str) -> None:
    """Log ``message`` at info level."""
    host.log(host.LogLevel.INFO, message)


def warn(message: str) -> None:
    """Log ``message`` at warn level."""
    host.log(host.LogLevel.WARN, message)


def error(message: str) -> None:
    """Log ``message`` at error level."""
    host.log(host.LogLevel.ERROR, message)


# JSON in state, outputs and timer payloads.

def _dumps(value) -> str:
    # Compact, UTF-8 as is (like serde_json), so Rust and Python plugins agree.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(data: bytes, code: str, what: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise internal(code, f"{what}: {e}") from None


def state_get_json(key: str, default=None):
    """The decoded JSON value under ``key``, or ``default`` if there is none.

    A value that is not JSON raises ``internal("corrupt-state", ...)``.
    """
    data = state.get(key)
    return default if data is None else _loads(data, "corrupt-state", f"state key {key}")


def state_set_json(key: str, value) -> None:
    """Store ``value`` as compact JSON under ``key``."""
    state.set(key, _dumps(value).encode())


def state_delete(key: str) -> None:
    """Remove ``key`` from the state."""
    state.delete(key)


def emit_json(output: str, key: str | None, value) -> None:
    """Emit ``value`` as compact JSON with ``key`` to the logical ``output``."""
    _output.emit(output, key, _dumps(value))


def timer_set_json(key: str, due_ms: int, payload) -> None:
    """Set (or move) the timer ``key`` to ``due_ms`` with a JSON ``payload``."""
    timers.set(key, due_ms, _dumps(payload).encode())


def timer_set(key: str, due_ms: int, payload: bytes = b"") -> None:
    """Set (or move) the timer ``key`` to ``due_ms`` with a raw ``payload``."""
    timers.set(key, due_ms, payload)


def timer_cancel(key: str) -> None:
    """Cancel the timer ``key``, if one is pending."""
    timers.cancel(key)


def timer_payload_json(timer: FiredTimer):
    """The decoded JSON payload of a fired timer (``None`` if it is empty).

    A payload that is not JSON raises ``internal("corrupt-timer", ...)``.
    """
    if not timer.payload:
        return None
    return _loads(timer.payload, "corrupt-timer", f"timer {timer.key} payload")


# The clock and the configuration.

def now() -> int:
    """The host's clock, in milliseconds since the epoch (virtual under
    ``plugins test``)."""
    return host.now()


def config_positive(config: list[tuple[str, str]], key: str, default: int) -> int:
    """The ``[config]`` value under ``key`` as a whole number from 1 to
    4294967295 (an optional leading ``+``, as Rust's ``u32`` parsing takes),
    else ``default`` when it is not set.

    Anything else raises ``bad_input("bad-config", ...)`` naming the key,
    like the Rust SDK's ``Config::positive`` (the wording differs).
    """
    text = dict(config).get(key)
    if text is None:
        return default
    digits = text[1:] if text.startswith("+") else text
    if not (0 < len(digits) <= 10 and digits.isascii() and digits.isdigit()):
        raise bad_input("bad-config", f"config.{key} = {_dumps(text)}: not a whole number")
    if int(digits) > 0xFFFF_FFFF:
        raise bad_input("bad-config", f"config.{key} = {_dumps(text)}: larger than 4294967295")
    if int(digits) == 0:
        raise bad_input("bad-config", f"config.{key} must be at least 1")
    return int(digits)


# Names and formatting.

def rfc3339(ms: int) -> str:
    """Format milliseconds since the epoch as RFC 3339 UTC.

    ``2026-01-22T10:00:00Z``; milliseconds only when non-zero, as in
    ``2024-02-29T00:00:00.123Z``. Works for any integer, negative included.
    """
    secs, millis = divmod(ms, 1000)
    days, rem = divmod(secs, 86_400)
    # Howard Hinnant's civil_from_days: days since 1970-01-01 to a date.
    era, doe = divmod(days + 719_468, 146_097)
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    text = (f"{year:04}-{month:02}-{day:02}"
            f"T{rem // 3600:02}:{rem % 3600 // 60:02}:{rem % 60:02}")
    return f"{text}.{millis:03}Z" if millis else f"{text}Z"


def _rfc3339_or_none(ms: int | None) -> str | None:
    return None if ms is None else rfc3339(ms)


_KIND_NAMES = {
    EventKind.CREATED: "created",
    EventKind.UPDATED: "updated",
    EventKind.COMPLETED: "completed",
    EventKind.DELETED: "deleted",
}

_PRIORITY_NAMES = {
    Priority.LOW: "low",
    Priority.MEDIUM: "medium",
    Priority.HIGH: "high",
    Priority.URGENT: "urgent",
}

_FREQUENCY_NAMES = {
    Frequency.DAILY: "daily",
    Frequency.WEEKLY: "weekly",
    Frequency.MONTHLY: "monthly",
    Frequency.YEARLY: "yearly",
}


def kind_name(kind: EventKind) -> str:
    """``created``, ``updated``, ``completed`` or ``deleted``."""
    return _KIND_NAMES[kind]


def priority_name(priority: Priority) -> str:
    """``low``, ``medium``, ``high`` or ``urgent``."""
    return _PRIORITY_NAMES[priority]


def _recurrence(recurrence) -> dict | None:
    if isinstance(recurrence, Recurrence_Simple):
        simple = recurrence.value
        return {
            "frequency": _FREQUENCY_NAMES[simple.frequency],
            "interval": simple.interval,
            "until": _rfc3339_or_none(simple.until),
            "max_occurrences": simple.max_occurrences,
        }
    if isinstance(recurrence, Recurrence_Rrule):
        return {"rrule": recurrence.value}
    return None


def task_snapshot(task: Task) -> dict:
    """The task as a JSON-ready dict (timestamps as RFC 3339, enums by name).

    Keys, in order: ``id``, ``user_id``, ``title``, ``description``,
    ``completed``, ``priority``, ``tags``, ``due``, ``remind_at``,
    ``recurrence``, ``series_id``, ``occurrence``, ``series_start``,
    ``time_zone``, ``created_at``, ``updated_at``, ``completed_at``; absent
    values are ``None``. ``recurrence`` is ``{"frequency", "interval",
    "until", "max_occurrences"}`` for a simple pattern or ``{"rrule"}``.
    """
    return {
        "id": task.id,
        "user_id": task.user_id,
        "title": task.title,
        "description": task.description,
        "completed": task.completed,
        "priority": None if task.priority is None else priority_name(task.priority),
        "tags": list(task.tags),
        "due": _rfc3339_or_none(task.due),
        "remind_at": _rfc3339_or_none(task.remind_at),
        "recurrence": _recurrence(task.recurrence),
        "series_id": task.series_id,
        "occurrence": task.occurrence,
        "series_start": _rfc3339_or_none(task.series_start),
        "time_zone": task.time_zone,
        "created_at": _rfc3339_or_none(task.created_at),
        "updated_at": _rfc3339_or_none(task.updated_at),
        "completed_at": _rfc3339_or_none(task.completed_at),
    }
