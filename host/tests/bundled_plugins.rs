//! The bundled plugins keep their state bounded: what they remember of a
//! task is deleted with the task, or expires through a timer (the TTLs in
//! their manifests' `[config]`; audit's snapshots too), and analytics'
//! per-user value holds counters only, however many tasks the user has.

#![allow(clippy::unwrap_used)]

mod common;

use common::sandbox;
use serde_json::json;
use todo_eventd::dispatch::Dispatcher;
use todo_eventd::plugin::bundled;
use todo_eventd::world::{TaskEvent, Timestamp};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn event(id: &str, kind: &str, task: &str, at: Timestamp, data: serde_json::Value) -> TaskEvent {
    let mut json = json!({
        "event_id": id,
        "event_type": kind,
        "user_id": "u-1",
        "task_id": task,
        "timestamp": jiff::Timestamp::from_millisecond(at).unwrap().to_string(),
    });
    json["task_data"] = data;
    todo_eventd::event::decode(json.to_string().as_bytes()).unwrap()
}

fn time(at: Timestamp) -> String {
    jiff::Timestamp::from_millisecond(at).unwrap().to_string()
}

async fn dispatcher() -> Dispatcher {
    let report = bundled::load(&sandbox()).await.unwrap();
    Dispatcher::new(&report.plugins)
}

/// Sends `event` through every plugin, asserting each call succeeded.
async fn send(dispatcher: &mut Dispatcher, event: &TaskEvent) {
    for outcome in dispatcher.dispatch(event, 0, event.occurred_at).await {
        assert!(
            outcome.result.is_ok(),
            "{}: {:?}",
            outcome.plugin.name,
            outcome.result
        );
    }
}

/// Fires every timer due by `until`, asserting each call succeeded.
async fn fire_until(dispatcher: &mut Dispatcher, until: Timestamp) {
    while let Some(due) = dispatcher.next_due().filter(|due| *due <= until) {
        let firing = dispatcher.fire_next(due).await.unwrap();
        assert!(firing.outcome.result.is_ok(), "{:?}", firing.outcome.result);
    }
}

fn keys(dispatcher: &Dispatcher, plugin: &str) -> (usize, usize) {
    let state = dispatcher.state(plugin).unwrap();
    (state.len(), state.timer_count())
}

#[tokio::test]
async fn what_is_remembered_of_a_task_goes_with_the_task() {
    let mut d = dispatcher().await;
    let recurring = json!({
        "title": "Water plants", "completed": false,
        "due_at": time(T0 + DAY), "remind_at": time(T0 + DAY - 3_600_000),
        "is_recurring": true, "recurrence_rule": "daily",
    });
    send(&mut d, &event("e1", "created", "t1", T0, recurring.clone())).await;
    let mut done = recurring;
    done["completed"] = json!(true);
    send(&mut d, &event("e2", "completed", "t1", T0 + 1_000, done)).await;
    for plugin in ["reminders", "recurrence", "analytics", "audit"] {
        assert_ne!(keys(&d, plugin).0, 0, "{plugin} remembers the task");
    }
    send(&mut d, &event("e3", "deleted", "t1", T0 + 2_000, json!({}))).await;
    assert_eq!(keys(&d, "reminders"), (0, 0), "memo and timer deleted");
    assert_eq!(
        keys(&d, "recurrence"),
        (0, 0),
        "answer and its timer deleted"
    );
    assert_eq!(keys(&d, "audit"), (0, 0), "snapshot deleted");
    // Analytics keeps the user's counters, and the deleted task's record
    // only until its TTL.
    assert_eq!(keys(&d, "analytics").0, 2);
    fire_until(&mut d, T0 + 31 * DAY).await;
    assert_eq!(
        keys(&d, "analytics"),
        (1, 0),
        "only the user's counters remain"
    );
}

#[tokio::test]
async fn memos_and_answers_expire_when_nothing_happens_to_a_task() {
    let mut d = dispatcher().await;
    let data = json!({"title": "Call mum", "completed": false, "due_at": time(T0 + DAY),
        "is_recurring": true, "recurrence_rule": "weekly"});
    send(&mut d, &event("e1", "created", "t2", T0, data.clone())).await;
    let mut done = data;
    done["completed"] = json!(true);
    send(&mut d, &event("e2", "completed", "t2", T0 + 1_000, done)).await;
    assert_eq!(keys(&d, "reminders"), (1, 1), "a memo and its expiry");
    assert_eq!(keys(&d, "recurrence"), (1, 1), "an answer and its expiry");
    assert_eq!(keys(&d, "audit"), (1, 1), "a snapshot and its expiry");
    fire_until(&mut d, T0 + 29 * DAY).await;
    assert_eq!(keys(&d, "reminders"), (1, 1), "kept within the TTL");
    assert_eq!(keys(&d, "audit"), (1, 1), "kept within the TTL");
    fire_until(&mut d, T0 + 31 * DAY).await;
    assert_eq!(keys(&d, "reminders"), (0, 0));
    assert_eq!(keys(&d, "recurrence"), (0, 0));
    assert_eq!(keys(&d, "audit"), (0, 0));
}

#[tokio::test]
async fn audit_forgets_a_task_untouched_for_its_configured_ttl() {
    let mut d = configured(
        "audit",
        &[("snapshot_ttl_days = 30", "snapshot_ttl_days = 2")],
    )
    .await
    .unwrap();
    let data = json!({"title": "Call mum", "completed": false});
    send(&mut d, &event("e1", "created", "t6", T0, data.clone())).await;
    assert_eq!(keys(&d, "audit"), (1, 1), "a snapshot and its expiry");
    assert_eq!(d.next_due(), Some(T0 + 2 * DAY), "two days, as configured");
    // An event a day later moves the expiry; `before` is the snapshot.
    let mut renamed = data;
    renamed["title"] = json!("Call mum back");
    let outcomes = d
        .dispatch(
            &event("e2", "updated", "t6", T0 + DAY, renamed.clone()),
            0,
            T0 + DAY,
        )
        .await;
    let record = only_record(&outcomes);
    assert_eq!(record["before"]["title"], "Call mum");
    assert_eq!(d.next_due(), Some(T0 + 3 * DAY), "moved by the event");
    fire_until(&mut d, T0 + 3 * DAY).await;
    assert_eq!(keys(&d, "audit"), (0, 0), "forgotten once expired");
    // The next event finds nothing, so `before` is null (no previous state
    // from the producer either), and the task is kept afresh.
    let at = T0 + 4 * DAY;
    let outcomes = d
        .dispatch(&event("e3", "updated", "t6", at, renamed), 0, at)
        .await;
    assert_eq!(only_record(&outcomes)["before"], serde_json::Value::Null);
    assert_eq!(keys(&d, "audit"), (1, 1));

    a_ttl_of_zero_days_is_refused("audit", "snapshot_ttl_days").await;
}

/// The one record among `outcomes` (one plugin's).
fn only_record(outcomes: &[todo_eventd::dispatch::Outcome]) -> serde_json::Value {
    let [outcome] = outcomes else {
        panic!("one plugin, one outcome: {} outcomes", outcomes.len())
    };
    let emits = outcome.result.as_ref().unwrap();
    let [emit] = emits.as_slice() else {
        panic!("one record: {} records", emits.len())
    };
    serde_json::from_str(&emit.value).unwrap()
}

/// The bundled plugin `name` alone, its manifest edited by `edits`
/// (`from` → `to`, each of which must apply).
async fn configured(
    name: &str,
    edits: &[(&str, &str)],
) -> Result<Dispatcher, todo_eventd::plugin::LoadError> {
    let bundled = bundled::ALL.iter().find(|p| p.name == name).unwrap();
    let mut manifest = bundled.manifest.to_owned();
    for (from, to) in edits {
        assert!(manifest.contains(from), "{name}'s manifest has no {from:?}");
        manifest = manifest.replace(from, to);
    }
    let manifest = todo_eventd::plugin::manifest::Manifest::parse(&manifest).unwrap();
    let plugin = todo_eventd::plugin::from_parts(
        &sandbox(),
        name.into(),
        format!("{name}.wasm").into(),
        bundled.wasm,
        manifest,
        std::path::Path::new(&format!("{name}.toml")),
    )
    .await?;
    Ok(Dispatcher::new(&[std::sync::Arc::new(plugin)]))
}

#[tokio::test]
async fn a_configured_memo_ttl_is_the_one_kept() {
    let mut d = configured("reminders", &[("memo_ttl_days = 30", "memo_ttl_days = 2")])
        .await
        .unwrap();
    let data = json!({"title": "Call mum", "completed": false});
    send(&mut d, &event("e1", "created", "t3", T0, data)).await;
    assert_eq!(keys(&d, "reminders"), (1, 1), "a memo and its expiry");
    assert_eq!(d.next_due(), Some(T0 + 2 * DAY), "two days, as configured");
    fire_until(&mut d, T0 + 2 * DAY).await;
    assert_eq!(keys(&d, "reminders"), (0, 0));
}

#[tokio::test]
async fn a_configured_answer_ttl_is_the_one_kept() {
    let mut d = configured(
        "recurrence",
        &[("answered_ttl_days = 30", "answered_ttl_days = 2")],
    )
    .await
    .unwrap();
    let done = json!({"title": "Call mum", "completed": true, "due_at": time(T0),
        "is_recurring": true, "recurrence_rule": "weekly"});
    send(&mut d, &event("e1", "completed", "t5", T0, done)).await;
    assert_eq!(keys(&d, "recurrence"), (1, 1), "an answer and its expiry");
    assert_eq!(d.next_due(), Some(T0 + 2 * DAY), "two days, as configured");
    fire_until(&mut d, T0 + 2 * DAY).await;
    assert_eq!(keys(&d, "recurrence"), (0, 0));

    a_ttl_of_zero_days_is_refused("recurrence", "answered_ttl_days").await;
}

/// Plugin `name` with `key = 0` (set to 30 in its manifest) is refused at
/// load, naming the key.
async fn a_ttl_of_zero_days_is_refused(name: &str, key: &str) {
    let (from, to) = (format!("{key} = 30"), format!("{key} = 0"));
    let refused = configured(name, &[(from.as_str(), to.as_str())])
        .await
        .err()
        .expect("a TTL of 0 days is refused");
    assert!(
        refused
            .to_string()
            .contains(&format!("config.{key} must be at least 1")),
        "{refused}"
    );
}

#[tokio::test]
async fn analytics_snapshots_and_forgets_on_its_configured_schedule() {
    let mut d = configured(
        "analytics",
        &[
            ("snapshot_interval = \"60s\"", "snapshot_interval = \"5s\""),
            ("record_ttl_days = 30", "record_ttl_days = 3"),
        ],
    )
    .await
    .unwrap();
    let data = json!({"title": "Call mum", "completed": false});
    send(&mut d, &event("e1", "created", "t4", T0, data.clone())).await;
    assert_eq!(d.next_due(), Some(T0 + 5_000), "the snapshot, 5 s on");
    fire_until(&mut d, T0 + 5_000).await;
    let mut done = data;
    done["completed"] = json!(true);
    send(&mut d, &event("e2", "completed", "t4", T0 + 6_000, done)).await;
    fire_until(&mut d, T0 + 11_000).await;
    assert_eq!(
        d.next_due(),
        Some(T0 + 6_000 + 3 * DAY),
        "the finished task's record is kept three days, as configured"
    );
    fire_until(&mut d, T0 + 6_000 + 3 * DAY).await;
    assert_eq!(keys(&d, "analytics"), (1, 0), "only the user's counters");

    // Without either key: 60 s and 30 days.
    let mut d = configured(
        "analytics",
        &[
            ("snapshot_interval = \"60s\"", ""),
            ("record_ttl_days = 30", ""),
        ],
    )
    .await
    .unwrap();
    let data = json!({"title": "Call mum", "completed": true});
    send(&mut d, &event("e3", "completed", "t5", T0, data)).await;
    assert_eq!(d.next_due(), Some(T0 + 60_000), "the default interval");
    fire_until(&mut d, T0 + 60_000).await;
    assert_eq!(d.next_due(), Some(T0 + 30 * DAY), "the default TTL");

    let refused = [
        (
            "snapshot_interval = \"60s\"",
            "snapshot_interval = \"soon\"",
            "is not a duration",
        ),
        (
            "snapshot_interval = \"60s\"",
            "snapshot_interval = \"0s\"",
            "must be between",
        ),
        (
            "record_ttl_days = 30",
            "record_ttl_days = 0",
            "must be at least 1",
        ),
    ];
    for (from, to, says) in refused {
        let Err(err) = configured("analytics", &[(from, to)]).await else {
            panic!("{to} was accepted");
        };
        let err = err.to_string();
        let key = to.split(' ').next().unwrap();
        assert!(
            err.contains(&format!("config.{key}")) && err.contains(says),
            "{err}"
        );
    }
}

#[tokio::test]
async fn analytics_keeps_a_small_value_per_user_however_many_tasks() {
    let mut d = dispatcher().await;
    let user_value = |d: &Dispatcher| d.state("analytics").unwrap().get("user:u-1").unwrap().len();
    let mut sizes = Vec::new();
    for i in 0..300 {
        let data = json!({"title": "x", "completed": false, "priority": "high", "tags": ["a"],
            "due_at": time(T0 + DAY)});
        send(
            &mut d,
            &event(&format!("e{i}"), "created", &format!("t{i}"), T0 + i, data),
        )
        .await;
        if i == 9 || i == 299 {
            sizes.push(user_value(&d));
        }
    }
    // Only the counters' digits grow (10 tasks → 300 tasks).
    assert!(
        sizes[1] - sizes[0] < 32,
        "the per-user value grew with tasks: {sizes:?}"
    );
    assert!(sizes[1] < 1024, "{} bytes", sizes[1]);
    // The tasks fall due: counted overdue by their timers.
    fire_until(&mut d, T0 + DAY + 60_000).await;
    // The SDK's compact encoding: a 0x00 byte, then MessagePack.
    let stored = d.state("analytics").unwrap().get("user:u-1").unwrap();
    assert_eq!(stored[0], 0, "stored compact, not as JSON");
    // The per-user counters are an array (created, completed, deleted,
    // reopened, open, overdue, …), not a map with field names.
    let value: serde_json::Value = rmp_serde::from_slice(&stored[1..]).unwrap();
    assert_eq!(value[5], 300, "{value}");
}

/// An event dated far after the host's clock (a producer with a wrong
/// clock) is refused with the reason, not applied: applied, it made every
/// real event for the task look older, ignored until that date, and kept
/// the task's memo from expiring.
#[tokio::test]
async fn reminders_refuses_an_event_dated_days_ahead_of_the_clock() {
    let mut d = dispatcher().await;
    let task = |remind_at: Timestamp| json!({"title": "Call back", "completed": false, "remind_at": time(remind_at)});
    let ahead = event("e1", "created", "t1", T0 + 2 * DAY, task(T0 + 3 * DAY));
    let outcomes = d.dispatch(&ahead, 0, T0).await;
    let reminders = outcomes
        .iter()
        .find(|o| o.plugin.name == "reminders")
        .unwrap();
    let err = reminders.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "plugin-error");
    assert!(
        err.to_string().contains(
            "[from-the-future]: event e1 is dated 2026-01-03T00:00:00Z, more than a day after \
             the host's clock (2026-01-01T00:00:00Z)"
        ),
        "{err}"
    );
    assert_eq!(keys(&d, "reminders"), (0, 0), "nothing applied");
    // The task's real events still count, and a few hours of skew is fine.
    send(
        &mut d,
        &event("e2", "created", "t1", T0, task(T0 + 3_600_000)),
    )
    .await;
    let skewed = event("e3", "updated", "t1", T0 + 3_600_000, task(T0 + 7_200_000));
    for outcome in d.dispatch(&skewed, 0, T0 + 1_000).await {
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    }
    let reminders = d.state("reminders").unwrap();
    assert_eq!(
        reminders.next_due(),
        Some(T0 + 7_200_000),
        "the reminder moved"
    );
}

/// A producer's series numbered without its start (occurrence 5, due on
/// the 10th) goes on a day at a time when its next tasks are completed in
/// turn: numbered 6 and 7, due the 11th and 12th — no jump of five places
/// once the plugin's own tasks come back. Completed late, past dates of
/// the series, a task counted from the start is followed by the first date
/// after its due date.
#[tokio::test]
async fn a_series_goes_on_from_each_completion_without_a_jump() {
    let mut d = configured("recurrence", &[]).await.unwrap();
    let mut task = "a".to_owned();
    let mut data = json!({
        "title": "water the plants", "due_date": time(T0 + 9 * DAY),
        "is_recurring": true, "recurrence_rule": "daily", "occurrence": 5,
    });
    for (number, day) in [(6, 10), (7, 11)] {
        data["completed"] = json!(true);
        let done = event(
            &format!("done-{number}"),
            "completed",
            &task,
            T0 + day * DAY,
            data,
        );
        let next = only_record(&d.dispatch(&done, 0, done.occurred_at).await);
        assert_eq!(next["task_data"]["occurrence"], number, "{next}");
        assert_eq!(
            next["task_data"]["due_date"],
            time(T0 + day * DAY),
            "{next}"
        );
        task = next["task_id"].as_str().unwrap().to_owned();
        data = next["task_data"].clone();
    }

    // A series counted from its start (the 1st, daily): the 3rd moved to
    // the 8th, noon, is followed by the 9th, the 9th occurrence.
    let counted = json!({
        "title": "stretch", "due_date": "2026-01-08T12:00:00Z", "completed": true,
        "is_recurring": true, "recurrence_rule": "daily", "occurrence": 3,
        "series_start": time(T0), "series_id": "s",
    });
    let done = event("late", "completed", "s-r3", T0 + 8 * DAY, counted);
    let next = only_record(&d.dispatch(&done, 0, done.occurred_at).await);
    assert_eq!(next["task_id"], "s-r9", "{next}");
    assert_eq!(next["task_data"]["due_date"], time(T0 + 8 * DAY), "{next}");
}
