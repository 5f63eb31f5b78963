//! Generated tests of every parser that takes input from outside: the
//! event decoder, plugin manifests and the daemon configuration.
//!
//! `cargo test` runs a light pass (proptest's default 256 cases each); a
//! long run is `PROPTEST_CASES=1000000 cargo test --release --test
//! properties` (its result is in the closing note of the code-health issue).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use todo_eventd::clock::rfc3339;
use todo_eventd::config::Config;
use todo_eventd::event::{DecodeError, decode};
use todo_eventd::plugin::manifest::Manifest;
use todo_eventd::world::{EventKind, Priority, Task, TaskEvent};

/// `PROPTEST_CASES` cases (default 256), failures not written to disk.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with keys producers might use.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("event_type".to_owned()),
        Just("task_id".to_owned()),
        Just("user_id".to_owned()),
        Just("timestamp".to_owned()),
        Just("task_data".to_owned()),
        Just("data".to_owned()),
        Just("due_at".to_owned()),
        Just("remind_at".to_owned()),
        Just("recurrence".to_owned()),
        Just("priority".to_owned()),
        Just("tags".to_owned()),
        Just("time_zone".to_owned()),
        "[a-zA-Z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        Just(json!("created")),
        Just(json!("2026-01-26T08:00:00Z")),
        Just(json!("PT1H")),
        Just(json!("FREQ=WEEKLY;BYDAY=MO")),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    /// Bytes of any kind: an error or an event, never a panic.
    #[test]
    fn the_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    /// Any JSON: an event, or an error that names the field at fault.
    #[test]
    fn every_rejection_of_json_names_a_field(value in any_json()) {
        let text = serde_json::to_vec(&value).unwrap();
        match decode(&text) {
            Ok(_) => {}
            Err(DecodeError::Field { field, reason }) => {
                prop_assert!(!field.is_empty() && !reason.is_empty(), "{field}: {reason}");
            }
            Err(other) => prop_assert!(false, "valid JSON rejected without a field: {other}"),
        }
    }
}

/// A valid event as the host represents it, with values every producer
/// shape can carry.
fn valid_event() -> impl Strategy<Value = TaskEvent> {
    let id = "[a-zA-Z0-9_-]{1,40}";
    let time = 0_i64..4_102_444_800_000; // 1970 to 2100, to the millisecond
    let kind = prop_oneof![
        Just(EventKind::Created),
        Just(EventKind::Updated),
        Just(EventKind::Completed),
        Just(EventKind::Deleted),
    ];
    let priority = prop::option::of(prop_oneof![
        Just(Priority::Low),
        Just(Priority::Medium),
        Just(Priority::High),
        Just(Priority::Urgent),
    ]);
    let text = prop::option::of("[^\u{0}-\u{1f}]{0,40}");
    let times = (
        prop::option::of(time.clone()),
        prop::option::of(time.clone()),
        prop::option::of(time.clone()),
        prop::option::of(time.clone()),
        prop::option::of(time.clone()),
    );
    (
        (id, kind, time, id, id),
        (text.clone(), text, any::<bool>(), priority),
        prop::collection::vec("[a-z0-9]{1,8}", 0..4),
        times,
    )
        .prop_map(
            |(
                (event_id, kind, occurred_at, user_id, task_id),
                (title, description, completed, priority),
                tags,
                (due, remind_at, created_at, updated_at, completed_at),
            )| TaskEvent {
                id: event_id,
                kind,
                occurred_at,
                source: None,
                task: Task {
                    id: task_id,
                    user_id,
                    title,
                    description,
                    completed: completed || kind == EventKind::Completed,
                    priority,
                    tags,
                    due,
                    remind_at,
                    recurrence: None,
                    series_id: None,
                    occurrence: None,
                    series_start: None,
                    time_zone: None,
                    created_at,
                    updated_at,
                    completed_at,
                },
                previous: None,
            },
        )
}

/// `event` as a producer sends it: the snake_case envelope, or the
/// camelCase one with `newState`.
fn encode(event: &TaskEvent, camel: bool) -> Value {
    let task = &event.task;
    let time = |t: Option<i64>| t.map(rfc3339);
    let names: [&str; 10] = if camel {
        [
            "title",
            "description",
            "completed",
            "priority",
            "tags",
            "dueAt",
            "remindAt",
            "createdAt",
            "updatedAt",
            "completedAt",
        ]
    } else {
        [
            "title",
            "description",
            "completed",
            "priority",
            "tags",
            "due_at",
            "remind_at",
            "created_at",
            "updated_at",
            "completed_at",
        ]
    };
    let values = [
        task.title.clone().map(Value::String),
        task.description.clone().map(Value::String),
        Some(Value::Bool(task.completed)),
        task.priority.map(|p| {
            json!(match p {
                Priority::Low => "low",
                Priority::Medium => "medium",
                Priority::High => "high",
                Priority::Urgent => "urgent",
            })
        }),
        Some(json!(task.tags)),
        time(task.due).map(Value::String),
        time(task.remind_at).map(Value::String),
        time(task.created_at).map(Value::String),
        time(task.updated_at).map(Value::String),
        time(task.completed_at).map(Value::String),
    ];
    let data: Map<String, Value> = names
        .iter()
        .zip(values)
        .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
        .collect();
    if camel {
        json!({
            "eventId": event.id, "eventType": format!("task.{}", event.kind.name()),
            "userId": task.user_id, "taskId": task.id, "timestamp": rfc3339(event.occurred_at),
            "newState": data,
        })
    } else {
        json!({
            "event_id": event.id, "event_type": event.kind.name(),
            "user_id": task.user_id, "task_id": task.id, "timestamp": rfc3339(event.occurred_at),
            "task_data": data,
        })
    }
}

proptest! {
    #![proptest_config(config())]

    /// A valid event, encoded the way producers do, decodes back to itself.
    #[test]
    fn valid_events_round_trip_through_producer_shapes(event in valid_event(), camel in any::<bool>()) {
        let text = serde_json::to_vec(&encode(&event, camel)).unwrap();
        let decoded = decode(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, event);
    }
}

/// A key no parser knows.
fn unknown_key() -> impl Strategy<Value = String> {
    "zz[a-z_]{0,12}"
}

proptest! {
    #![proptest_config(config())]

    /// Every section of a manifest rejects a key it does not know, naming it.
    #[test]
    fn manifests_reject_every_unknown_key(key in unknown_key(), section in 0_usize..3) {
        let text = match section {
            0 => format!("{key} = 1\n"),
            1 => format!("[limits]\n{key} = 1\n"),
            _ => format!("[wasi]\n{key} = 1\n"),
        };
        let err = Manifest::parse(&text).unwrap_err();
        prop_assert!(err.contains(&key), "{err}");
    }

    /// Every section of the daemon configuration rejects a key it does not
    /// know, naming it.
    #[test]
    fn the_config_rejects_every_unknown_key(key in unknown_key(), section in 0_usize..7) {
        let sections = ["", "kafka", "pipeline", "plugins", "sandbox", "admin", "sandbox.default_limits"];
        let text = match sections[section] {
            "" => format!("{key} = 1\n"),
            name => format!("[{name}]\n{key} = 1\n"),
        };
        let err = toml::from_str::<Config>(&text).unwrap_err().to_string();
        prop_assert!(err.contains(&key), "{err}");
    }
}
