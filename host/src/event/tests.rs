//! Decoder tests: one fixture file per case in `tests/fixtures/events`, each
//! with its expected result beside it — `NAME.expected.json` (the decoded
//! event) or `NAME.error.txt` (the exact error). Run with `BLESS=1` to write
//! the expectations after checking the output by hand.

use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 15, "fixtures missing from {}", dir.display());
    files
}

#[test]
fn fixtures_decode_to_their_expectations() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for path in fixtures() {
        let bytes = std::fs::read(&path).expect("read fixture");
        let expected_event = path.with_extension("expected.json");
        let expected_error = path.with_extension("error.txt");
        let result = decode(&bytes);
        if bless {
            match &result {
                Ok(event) => std::fs::write(
                    &expected_event,
                    serde_json::to_string_pretty(event).expect("serialize") + "\n",
                ),
                Err(err) => std::fs::write(&expected_error, format!("{err}\n")),
            }
            .expect("bless");
            continue;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match result {
            Ok(event) => match std::fs::read_to_string(&expected_event) {
                Ok(want) => {
                    let want: serde_json::Value =
                        serde_json::from_str(&want).expect("expected json");
                    let got = serde_json::to_value(&event).expect("serialize");
                    if got != want {
                        failures.push(format!("{name}: decoded to\n{got:#}\nwanted\n{want:#}"));
                    }
                }
                Err(_) => failures.push(format!(
                    "{name}: decoded, but only an error is expected: {event:?}"
                )),
            },
            Err(err) => match std::fs::read_to_string(&expected_error) {
                Ok(want) if want.trim_end() == err.to_string() => {}
                Ok(want) => failures.push(format!(
                    "{name}: error\n  {err}\nwanted\n  {}",
                    want.trim_end()
                )),
                Err(_) => failures.push(format!("{name}: unexpected error: {err}")),
            },
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_fixtures_are_errors_and_good_ones_are_not() {
    for path in fixtures() {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let result = decode(&std::fs::read(&path).expect("read"));
        assert_eq!(
            result.is_err(),
            name.starts_with("bad-"),
            "{name}: {result:?}"
        );
    }
}

#[test]
fn cloud_events_binary_mode_reads_ce_headers() {
    let body = br#"{"task_id":"1","user_id":"u","task_data":{"title":"t"}}"#;
    let headers: &[(&str, &[u8])] = &[
        ("ce_specversion", b"1.0"),
        ("ce_id", b"bin-1"),
        ("ce_type", b"task.completed"),
        ("ce_source", b"svc"),
        ("ce_time", b"2026-01-22T10:00:00Z"),
    ];
    let event = decode_record(
        body,
        RecordMeta {
            headers,
            timestamp: None,
        },
    )
    .unwrap();
    assert_eq!(event.id, "bin-1");
    assert_eq!(event.kind, EventKind::Completed);
    assert_eq!(event.source.as_deref(), Some("svc"));
    assert!(event.task.completed);
    assert_eq!(event.occurred_at, 1_769_076_000_000);

    // An attribute that cannot be read is refused, naming its header,
    // not dropped (a different id, the record's time instead).
    let refused = |replaced: (&'static str, &'static [u8])| {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| if h.0 == replaced.0 { replaced } else { *h })
            .collect();
        let meta = RecordMeta {
            headers: &headers,
            timestamp: Some(42_000),
        };
        decode_record(body, meta).unwrap_err().to_string()
    };
    assert_eq!(refused(("ce_id", b"\xff")), "header ce_id: not UTF-8");
    assert_eq!(
        refused(("ce_time", b"yesterday")),
        "header ce_time: \"yesterday\" is not an RFC 3339 time"
    );
}

#[test]
fn record_timestamp_is_the_last_resort_and_ids_are_derived() {
    let body = br#"{"event_type":"deleted","task_id":3,"user_id":"u"}"#;
    let meta = RecordMeta {
        headers: &[],
        timestamp: Some(42_000),
    };
    let event = decode_record(body, meta).unwrap();
    assert_eq!(event.occurred_at, 42_000);
    assert!(event.id.starts_with("sha256:"), "{}", event.id);
    assert_eq!(
        event.id,
        decode_record(body, meta).unwrap().id,
        "derived ids are stable"
    );
    let err = decode(body).unwrap_err();
    assert_eq!(
        err.to_string(),
        "timestamp: missing (and no CloudEvent time or record timestamp to fall back on)"
    );
    // A record timestamp no event time can be is none at all.
    let far = RecordMeta {
        headers: &[],
        timestamp: Some(i64::MAX),
    };
    assert_eq!(decode_record(body, far).unwrap_err(), err);
}

#[test]
fn event_type_spellings() {
    for (text, kind) in [
        ("created", EventKind::Created),
        ("task.created", EventKind::Created),
        ("TaskCreated", EventKind::Created),
        ("task-updated", EventKind::Updated),
        ("com.example.todo.task.completed", EventKind::Completed),
        ("DELETE", EventKind::Deleted),
        ("TASKNEW", EventKind::Created),
        ("todo/Task_Finished", EventKind::Completed),
    ] {
        assert_eq!(parse_kind(text), Some(kind), "{text}");
    }
    for text in [
        "task.exploded",
        "task",
        "TaSk",
        "",
        "tâsk",
        "créé",
        "taskdeleted!",
    ] {
        assert_eq!(parse_kind(text), None, "{text}");
    }
}

/// Regression: `"reminder": "PT1H"` (a duration under a remind-time field
/// name) was dead-lettered as "not an RFC 3339 time".
#[test]
fn a_duration_under_a_remind_time_name_is_an_offset_before_due() {
    let event = |reminder: &str| {
        format!(
            r#"{{"event_type":"created","task_id":1,"user_id":"u","timestamp":"2026-01-01T00:00:00Z","task_data":{{"due_at":"2026-01-02T10:00:00Z","reminder":{reminder}}}}}"#
        )
    };
    let due = "2026-01-02T10:00:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    // (A bare number under a time name stays an epoch time.)
    for (reminder, before_ms) in [("\"PT1H\"", 3_600_000), ("\"30m\"", 1_800_000)] {
        let decoded = decode(event(reminder).as_bytes()).unwrap();
        assert_eq!(decoded.task.remind_at, Some(due - before_ms), "{reminder}");
    }
    // A time is still a time.
    let decoded = decode(event("\"2026-01-02T09:00:00Z\"").as_bytes()).unwrap();
    assert_eq!(decoded.task.remind_at, Some(due - 3_600_000));
    // Neither a time nor an offset: the time error, naming the field.
    let err = decode(event("\"soonish\"").as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("task_data.reminder:"), "{err}");
    // An offset without a due date says so.
    let body = br#"{"event_type":"created","task_id":1,"user_id":"u","timestamp":"2026-01-01T00:00:00Z","task_data":{"reminder":"PT1H"}}"#;
    let err = decode(body).unwrap_err().to_string();
    assert!(err.contains("needs a due date"), "{err}");
}

/// What one record may hand every plugin is bounded: its size (checked
/// before parsing) and its number of tags (named in the error).
#[test]
fn a_record_too_large_or_with_too_many_tags_is_refused() {
    let limit = ByteSize::kib(1);
    assert_eq!(check_size(1024, limit), Ok(()));
    assert_eq!(
        check_size(1025, limit).unwrap_err().to_string(),
        "record of 1025 bytes exceeds pipeline.max_event_bytes (1KiB)"
    );
    // Headers count too: a binary CloudEvent's become event fields.
    let headers: &[(&str, &[u8])] = &[("ce_source", &[b's'; 16])];
    let meta = RecordMeta {
        headers,
        timestamp: None,
    };
    assert_eq!(
        decode_bounded(&[b' '; 1000], meta, limit)
            .unwrap_err()
            .to_string(),
        "record of 1025 bytes exceeds pipeline.max_event_bytes (1KiB)"
    );
    let event = |tags: &str| {
        format!(
            r#"{{"event_type":"created","task_id":1,"user_id":"u","timestamp":"2026-01-01T00:00:00Z","task_data":{{"tags":{tags}}}}}"#
        )
    };
    let list = |n: usize| {
        let tags: Vec<String> = (0..n).map(|i| format!("\"t{i}\"")).collect();
        format!("[{}]", tags.join(","))
    };
    assert_eq!(
        decode(event(&list(1000)).as_bytes())
            .unwrap()
            .task
            .tags
            .len(),
        1000
    );
    assert_eq!(
        decode(event(&list(1001)).as_bytes())
            .unwrap_err()
            .to_string(),
        "task_data.tags: 1001 tags, more than the 1000 a task may have"
    );
    let text: Vec<String> = (0..1500).map(|i| format!("t{i}")).collect();
    let err = decode(event(&format!("\"{}\"", text.join(","))).as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task_data.tags: 1500 tags, more than the 1000 a task may have"
    );
}

#[test]
fn priority_spellings() {
    use crate::world::Priority;
    let record = |priority: &str| {
        format!(
            r#"{{"event_type":"created","task_id":"t","user_id":"u","timestamp":"2026-01-01T00:00:00Z","priority":{priority}}}"#
        )
    };
    for (text, want) in [
        ("\" High \"", Priority::High),
        ("\"NORMAL\"", Priority::Medium),
        ("\"med\"", Priority::Medium),
        ("\"Critical\"", Priority::Urgent),
        ("\"low\"", Priority::Low),
    ] {
        let event = decode(record(text).as_bytes()).expect(text);
        assert_eq!(event.task.priority, Some(want), "{text}");
    }
    for (text, error) in [
        (
            "\"höch\"",
            "priority: \"höch\" is not a priority (expected low, medium, high or urgent)",
        ),
        ("3", "priority: expected a priority name, found a number"),
    ] {
        let err = decode(record(text).as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), error, "{text}");
    }
}
