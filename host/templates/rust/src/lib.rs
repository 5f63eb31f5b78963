//! The {{name}} plugin for todo-eventd.
//!
//! For every event it receives it emits one record to its logical output
//! `out` (mapped to a Kafka topic in `{{name}}.toml`), keyed by task id.
//! Change it to do what you need; `todo-eventd plugins build` builds it and
//! `todo-eventd plugins test` runs it on `events.ndjson`.

use serde::Serialize;
use todo_plugin_sdk::{Config, Plugin, Result, TaskEvent, debug, emit_json};

struct MyPlugin;

/// What goes to `out` for each event.
#[derive(Serialize)]
struct Seen<'a> {
    event_id: &'a str,
    event_type: &'static str,
    task_id: &'a str,
    user_id: &'a str,
}

impl Plugin for MyPlugin {
    /// Runs once per instance with the manifest's `[config]`; return an
    /// error to reject a bad configuration when the plugin is loaded.
    fn init(config: &Config) -> Result {
        debug!("{{name}} starting with {} config values", config.iter().count());
        Ok(())
    }

    fn on_event(event: TaskEvent) -> Result {
        let seen = Seen {
            event_id: &event.id,
            event_type: event.kind.name(),
            task_id: &event.task.id,
            user_id: &event.task.user_id,
        };
        emit_json("out", Some(&event.task.id), &seen)
    }

    // `on_timer` keeps its default (do nothing): this plugin sets no timers.
}

todo_plugin_sdk::export!(MyPlugin);
