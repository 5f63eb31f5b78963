//! The real binary, as a plugin author uses it: `plugins install`,
//! `plugins check` and `plugins test` on the repository's sample events.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn todo_eventd(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_todo-eventd"))
        .args(args)
        .env("TODO_EVENTD_CACHE_DIR", cache)
        .output()
        .unwrap()
}

fn install(cache: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = todo_eventd(&["plugins", "install", dir.path().to_str().unwrap()], cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn plugins_test_on_the_sample_events_shows_every_plugin_working() {
    let cache = tempfile::tempdir().unwrap();
    let plugins = install(cache.path());
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events.ndjson");
    let out = todo_eventd(
        &[
            "plugins",
            "test",
            "--plugins",
            plugins.path().to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--advance",
            "72h",
        ],
        cache.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is JSON lines only"))
        .collect();
    let emits = |plugin: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["kind"] == "emit" && l["plugin"] == plugin)
            .collect()
    };

    // Task 42's reminder was moved by an update to 2026-01-28T08:00 and
    // fires exactly then, once, despite a replayed `created` event.
    let reminders = emits("reminders");
    let pay_rent: Vec<_> = reminders
        .iter()
        .filter(|r| r["value"]["task_id"] == "42")
        .collect();
    assert_eq!(pay_rent.len(), 1, "{reminders:#?}");
    assert_eq!(pay_rent[0]["at"], "2026-01-28T08:00:00Z");
    assert_eq!(pay_rent[0]["value"]["remind_at"], "2026-01-28T08:00:00Z");
    assert_eq!(pay_rent[0]["output"], "reminders");
    // Task 44 was completed before its reminder: no reminder.
    assert!(reminders.iter().all(|r| r["value"]["task_id"] != "44"));
    // Task 46: due 14:30 Berlin (13:30Z), reminder offset "1h".
    let dentist: Vec<_> = reminders
        .iter()
        .filter(|r| r["value"]["task_id"] == "46")
        .collect();
    assert_eq!(dentist.len(), 1);
    assert_eq!(dentist[0]["at"], "2026-01-29T12:30:00Z");

    // The completed weekly task gets its next occurrence, due a week later.
    let next: Vec<_> = emits("recurrence");
    let standup = next
        .iter()
        .find(|e| e["value"]["task_data"]["previous_task_id"] == "43")
        .unwrap();
    assert_eq!(standup["output"], "tasks");
    assert_eq!(standup["value"]["event_type"], "task.created");
    assert_eq!(standup["value"]["task_id"], "43-r2");
    assert_eq!(
        standup["value"]["task_data"]["due_date"],
        "2026-02-02T09:00:00Z"
    );

    // Analytics snapshots are throttled (a minute after a change), keyed by user.
    let snapshots = emits("analytics");
    assert!(!snapshots.is_empty());
    let last_u3 = snapshots.iter().rev().find(|s| s["key"] == "u-3").unwrap();
    assert_eq!(last_u3["value"]["created"], 2);
    assert_eq!(last_u3["value"]["completed"], 1);
    assert_eq!(last_u3["value"]["deleted"], 1);
    assert_eq!(last_u3["value"]["completion_rate"], 0.5);
    assert_eq!(last_u3["at"], "2026-01-26T18:06:00Z");

    // Bad lines are dead-lettered with the line number and a clear reason.
    let dead: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "dead-letter")
        .collect();
    let reasons: Vec<(u64, &str)> = dead
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                5,
                "not valid JSON: EOF while parsing a value at line 1 column 34"
            ),
            (
                6,
                "event_type: \"task.exploded\" is not a known event type (expected created, updated, completed or deleted, optionally prefixed with \"task.\")"
            ),
            (
                10,
                "task_id: missing (expected task_id, taskId or task_data.id)"
            ),
        ]
    );
    assert!(
        dead.iter()
            .all(|d| d["stage"] == "decode" && d["plugin"].is_null())
    );
}

#[test]
fn plugins_check_lists_plugins_and_fails_on_an_invalid_one() {
    let cache = tempfile::tempdir().unwrap();
    let plugins = install(cache.path());
    let dir = plugins.path().to_str().unwrap();
    let out = todo_eventd(&["plugins", "check", dir], cache.path());
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for name in ["analytics", "recurrence", "reminders"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{stdout}"
        );
    }
    assert!(stdout.contains("outputs=reminders->reminders"), "{stdout}");

    std::fs::write(
        plugins.path().join("broken.wasm"),
        b"\0asm\x0d\0\x01\0garbage",
    )
    .unwrap();
    let out = todo_eventd(&["plugins", "check", dir], cache.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let broken = stdout.lines().find(|l| l.contains("broken.wasm")).unwrap();
    assert!(
        broken.starts_with("invalid") && broken.contains("does not compile"),
        "{broken}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok")).count(),
        3,
        "the others still load"
    );
}
