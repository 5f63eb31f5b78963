//! The pipeline on librdkafka's in-process mock cluster: what lands on which
//! topic with which key and headers, order per partition, at-least-once
//! under injected produce failures, and commits on shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::harness::{
    BUNDLED_TOPICS, CHANGELOG, Harness, PARTITIONS, distinct_events, echo_plugins, header,
};
use common::{
    TEST_PLUGIN, created_events, event, eventually, load, mode, plugin_dir, reader, sandbox, value,
};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use todo_eventd::clock::Clock;
use todo_eventd::pipeline::Pipeline;
use todo_eventd::sandbox::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outputs_and_dead_letters_land_with_keys_and_headers() {
    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let echo = mode("echo");
    let fail = mode("fail");
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&echo)),
        ("grumpy", TEST_PLUGIN, Some(&fail)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    harness
        .produce(&[
            event("e1", "u1", "t1", "created"),
            "{\"event_type\":\"created\",\"task_id\":".to_owned(),
            event("e2", "u2", "t2", "task.completed"),
        ])
        .await;
    // Per good event: one echo output and one dead letter from `grumpy`;
    // plus one decode dead letter.
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic", "task-events.dlq"],
            |seen| seen.len() >= 5,
            async |_| {},
        )
        .await;
    assert_eq!(seen.len(), 5, "{seen:#?}");

    let mut outputs: Vec<_> = seen.iter().filter(|m| m.topic() == "out-topic").collect();
    outputs.sort_by_key(|m| header(m, "source.event.id"));
    assert_eq!(outputs.len(), 2);
    for (message, (id, task)) in outputs.iter().zip([("e1", "t1"), ("e2", "t2")]) {
        assert_eq!(message.key(), Some(task.as_bytes()));
        assert_eq!(value(message)["event"], id);
        assert_eq!(header(message, "source.event.id").as_deref(), Some(id));
        assert_eq!(header(message, "source.plugin").as_deref(), Some("echo"));
        assert_eq!(
            header(message, "source.topic").as_deref(),
            Some("task-events")
        );
        assert!(header(message, "source.offset").is_some());
    }

    let dead: Vec<_> = seen
        .iter()
        .filter(|m| m.topic() == "task-events.dlq")
        .collect();
    let decode = dead
        .iter()
        .find(|m| header(m, "error.stage").as_deref() == Some("decode"))
        .unwrap();
    assert_eq!(
        decode.payload(),
        Some(&b"{\"event_type\":\"created\",\"task_id\":"[..]),
        "original bytes kept"
    );
    assert_eq!(
        header(decode, "error.message").as_deref(),
        Some("not valid JSON: EOF while parsing a value at line 1 column 34")
    );
    assert_eq!(
        header(decode, "original.topic").as_deref(),
        Some("task-events")
    );
    assert!(
        header(decode, "original.partition").is_some()
            && header(decode, "original.offset").is_some()
    );
    let plugin_failures: Vec<_> = dead
        .iter()
        .filter(|m| header(m, "error.stage").as_deref() == Some("plugin"))
        .collect();
    assert_eq!(plugin_failures.len(), 2);
    for message in plugin_failures {
        assert_eq!(header(message, "error.plugin").as_deref(), Some("grumpy"));
        assert_eq!(
            header(message, "error.kind").as_deref(),
            Some("plugin-error")
        );
        assert!(
            header(message, "error.message")
                .unwrap()
                .contains("is not welcome")
        );
        assert!(
            value(message)["event_type"].is_string(),
            "original event bytes"
        );
    }
    assert_eq!(stats.events_in.get(), 3);

    // Shutdown committed everything that was processed.
    assert_eq!(harness.committed(), harness.end_offsets());
}

/// A timer whose call fails is gone (the call removed it), so its dead
/// letter carries all of it — plugin, key, due time and payload — for the
/// operator to set it again. (Before, the payload was left out and lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_timers_dead_letter_keeps_its_payload() {
    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let timed = format!("{}timer_fails = \"1\"\n", mode("timer"));
    let dir = plugin_dir(&[("timed", TEST_PLUGIN, Some(&timed))]);
    let plugins = load(&sandbox(), dir.path()).await;
    // Its timer is due a minute after the event: long past.
    harness.produce(&[event("e1", "u1", "t1", "created")]).await;
    let (seen, _) = harness
        .run_until(
            plugins,
            &["task-events.dlq"],
            |seen| !seen.is_empty(),
            async |_| {},
        )
        .await;
    let dead = &seen[0];
    assert_eq!(header(dead, "error.stage").as_deref(), Some("timer"));
    assert_eq!(header(dead, "error.plugin").as_deref(), Some("timed"));
    assert!(
        header(dead, "error.message")
            .unwrap()
            .contains("timer t1 is not welcome")
    );
    assert_eq!(dead.key(), Some(&b"t1"[..]));
    let record = value(dead);
    assert_eq!(record["plugin"], "timed");
    assert_eq!(record["timer"], "t1");
    assert_eq!(record["due"], "2026-01-26T08:01:00Z");
    assert_eq!(record["payload"], "e1");
}

/// A producer sending nothing but undecodable records gets every one
/// dead-lettered, but cannot flood the daemon's log: the warning per record
/// is held to a rate, the rest counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_of_undecodable_records_is_dead_lettered_without_flooding_the_log() {
    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let plugins = echo_plugins().await;
    let count = 400;
    let lines: Vec<String> = (0..count)
        .map(|i| format!("{{\"event_type\":\"created\",\"task_id\":{i}"))
        .collect();
    let started = std::time::Instant::now();
    harness.produce(&lines).await;
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["task-events.dlq"],
            |seen| seen.len() >= count,
            async |_| {},
        )
        .await;
    let refilled = started.elapsed().as_secs() + 1;
    assert_eq!(seen.len(), count, "every record dead-lettered");
    assert!(
        seen.iter()
            .all(|m| header(m, "error.stage").as_deref() == Some("decode"))
    );
    let suppressed = stats.warnings_suppressed.get();
    let written = count as u64 - suppressed;
    assert!(
        (1..=20 + refilled).contains(&written),
        "{written} warnings written, {suppressed} suppressed"
    );
}

/// A timer that is always due — here a plugin re-arming it for now, with
/// no minimum delay to push it back — takes turns with the partition's
/// records: it cannot hold them up for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_that_stay_due_do_not_starve_the_records() {
    let mut harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    harness.config.plugins.min_timer_rearm = Duration::ZERO;
    harness.config.plugins.timer_storm_quarantine_after = 0;
    let echo = mode("echo");
    let rearm = mode("rearm");
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&echo)),
        ("rearm", TEST_PLUGIN, Some(&rearm)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    // One user: one partition, whose first event starts the timer.
    let lines: Vec<String> = (0..30)
        .map(|i| event(&format!("ev-{i:02}"), "storm", &format!("t{i}"), "created"))
        .collect();
    harness.produce(&lines).await;
    let (seen, stats) = harness.run_until_echoed(plugins, 30).await;
    assert_eq!(distinct_events(&seen), 30, "every record was handled");
    assert!(
        stats.timers_fired.get() > 30,
        "the timers kept firing meanwhile: {}",
        stats.timers_fired.get()
    );
}

/// A plugin feeding back twice what it reads to the input topic — a loop
/// that doubles every round — makes a bounded number of records: every
/// output carries its hops, and the loop ends at `plugins.max_hops`, each
/// record there dead-lettered with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loop_through_the_input_topic_ends_at_max_hops() {
    let mut harness = Harness::new(&["task-events", "task-events.dlq", CHANGELOG]);
    harness.config.plugins.max_hops = 3;
    let sandbox = Arc::new(Sandbox::new(harness.config.sandbox_config(None)).unwrap());
    let manifest = "[outputs]\nout = \"task-events\"\n[limits]\ninput_emits_per_call = 2\n[config]\nmode = \"feedback\"\n";
    let dir = plugin_dir(&[("doubling", TEST_PLUGIN, Some(manifest))]);
    let plugins = load(&sandbox, dir.path()).await;
    harness
        .produce(&[event("ev", "looper", "t1", "created")])
        .await;
    let dead = |seen: &[OwnedMessage]| {
        seen.iter()
            .filter(|m| m.topic() == "task-events.dlq")
            .count()
    };
    let (seen, _) = harness
        .run_until(
            plugins,
            &["task-events", "task-events.dlq"],
            |seen| dead(seen) >= 8 && seen.len() >= 8 + 15,
            async |_| {},
        )
        .await;
    assert_eq!(dead(&seen), 8, "the third round's records, each refused");
    for letter in seen.iter().filter(|m| m.topic() == "task-events.dlq") {
        let message = header(letter, "error.message").unwrap();
        assert!(message.contains("plugins.max_hops = 3"), "{message}");
        let hops = header(letter, "todo-eventd.hops");
        assert_eq!(hops.as_deref(), Some("3"), "a replay starts as deep");
        assert_eq!(header(letter, "error.kind").as_deref(), Some("max-hops"));
    }
    let mut rounds: HashMap<Option<String>, usize> = HashMap::new();
    for record in seen.iter().filter(|m| m.topic() == "task-events") {
        *rounds
            .entry(header(record, "todo-eventd.hops"))
            .or_default() += 1;
    }
    let expected = HashMap::from([
        (None, 1),
        (Some("1".to_owned()), 2),
        (Some("2".to_owned()), 4),
        (Some("3".to_owned()), 8),
    ]);
    assert_eq!(rounds, expected);
    assert_eq!(
        harness.end_offsets().values().sum::<i64>(),
        15,
        "nothing more was fed back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_is_kept_per_key() {
    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let plugins = echo_plugins().await;
    let users = ["ann", "ben", "cat", "dan", "eve"];
    let lines: Vec<String> = (0..400)
        .map(|i| {
            let user = users[i % users.len()];
            event(&format!("{user}-{i:04}"), user, user, "updated")
        })
        .collect();
    harness.produce(&lines).await;
    let (seen, _) = harness
        .run_until(
            plugins,
            &["out-topic"],
            |seen| seen.len() >= 400,
            async |_| {},
        )
        .await;
    assert_eq!(seen.len(), 400);
    let mut per_key: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    let mut sorted = seen;
    sorted.sort_by_key(|m| (m.partition(), m.offset()));
    for message in &sorted {
        per_key
            .entry(message.key().unwrap().to_vec())
            .or_default()
            .push(value(message)["event"].as_str().unwrap().to_owned());
    }
    assert_eq!(per_key.len(), users.len());
    for (key, ids) in per_key {
        let mut in_order = ids.clone();
        in_order.sort();
        assert_eq!(
            ids,
            in_order,
            "order for key {}",
            String::from_utf8_lossy(&key)
        );
        // The plugin's per-partition state counted them in order too.
        assert_eq!(ids.len(), 80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_produces_hold_offsets_until_delivered() {
    let mut harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    // Deliveries give up quickly, so the worker's own re-send path runs.
    harness
        .config
        .kafka
        .properties
        .insert("message.timeout.ms".into(), "300".into());
    harness
        .config
        .kafka
        .properties
        .insert("retry.backoff.ms".into(), "20".into());
    let plugins = echo_plugins().await;
    let lines: Vec<String> = (0..30)
        .map(|i| {
            event(
                &format!("ev-{i:02}"),
                &format!("u{i}"),
                &format!("t{i}"),
                "created",
            )
        })
        .collect();
    harness.produce(&lines).await;

    let cluster = harness.broker.cluster();
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic"],
            |seen| distinct_events(seen) >= 30,
            async |_| {
                // Every produce request fails for a while…
                cluster.request_errors(
                    RDKafkaApiKey::Produce,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
                );
                tokio::time::sleep(Duration::from_secs(4)).await;
                // …and meanwhile no input offset may be committed.
                let committed: i64 = harness.committed().values().sum();
                assert_eq!(
                    committed, 0,
                    "offsets committed while no output was delivered"
                );
                cluster.clear_request_errors(RDKafkaApiKey::Produce);
            },
        )
        .await;
    assert_eq!(
        distinct_events(&seen),
        30,
        "every event's output arrived (duplicates allowed)"
    );
    assert!(stats.resends.get() > 0, "the failure path was exercised");
    assert_eq!(harness.committed(), harness.end_offsets());
}

/// The README's main job: the demo shows every kind of output the bundled
/// plugins make, and the dead letters, on an embedded broker of its own,
/// then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_shows_every_kind_of_output_and_stops() {
    let plugins = todo_eventd::demo::plugins(&sandbox()).await.unwrap();
    let mut out = Vec::new();
    let metrics = todo_eventd::demo::run(todo_eventd::config::Config::default(), plugins, &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("timed out"), "{out}");
    for shown in [
        "from reminders",
        "from recurrence",
        "from analytics",
        "from audit",
        "stage=decode",
    ] {
        assert!(out.contains(shown), "no {shown:?} in:\n{out}");
    }
    assert_eq!(metrics.dead_letters.get(), 2, "{out}");
}

/// A member thrown out of the group (its heartbeat answered "unknown
/// member", as after a session timeout) has lost its partitions: others may
/// own them already and have restored their state, so it writes no more of
/// it. The changes it held are dropped — whoever handles the records next
/// makes them again — instead of being drained into the changelog behind
/// the next owner's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_assignment_writes_no_more_state() {
    let mut harness = Harness::new(&BUNDLED_TOPICS);
    harness.config.pipeline.changelog_flush_interval = Duration::from_secs(3600);
    harness.config.pipeline.changelog_flush_idle = Duration::from_secs(3600);
    let plugins = todo_eventd::demo::plugins(&sandbox()).await.unwrap();
    harness.produce(&created_events(6)).await;
    // No other consumer group's member runs: the injected error must reach
    // the pipeline's heartbeat.
    let pipeline = Pipeline::new(harness.config.clone(), plugins);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = pipeline.run(&harness.brokers, async {
        let _ = stopped.await;
    });
    let stats = &pipeline.telemetry.pipeline;
    let cluster = harness.broker.cluster();
    let changelog: BaseConsumer =
        todo_eventd::kafka::client_config(&harness.brokers, &harness.config.kafka, &[])
            .create()
            .unwrap();
    let lose = async {
        eventually("the events are handled", || stats.events_in.get() >= 6).await;
        cluster.request_errors(
            RDKafkaApiKey::Heartbeat,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
        );
        eventually("the assignment is lost and taken again", || {
            stats.rebalances("lost") >= 1 && stats.rebalances("assign") >= 2
        })
        .await;
        let written: Vec<i64> = (0..PARTITIONS)
            .map(|p| {
                changelog
                    .fetch_watermarks(CHANGELOG, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect();
        assert_eq!(
            written.iter().sum::<i64>(),
            0,
            "state written for partitions this member had lost: {written:?}; {}",
            stats.summary()
        );
        let committed: i64 = harness.committed().values().sum();
        assert_eq!(
            committed, 0,
            "offsets committed for partitions this member had lost"
        );
        eventually("the events are handled again", || {
            stats.events_in.get() >= 12
        })
        .await;
        let _ = stop.send(());
    };
    let (ran, ()) = tokio::join!(run, lose);
    ran.unwrap();
    assert!(
        stats.changelog_records.get() > 0,
        "written by the drain at shutdown, once the partitions were this member's again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_second_member_takes_half_and_nothing_is_lost() {
    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let plugins = echo_plugins().await;
    let lines: Vec<String> = (0..600)
        .map(|i| {
            event(
                &format!("ev-{i:04}"),
                &format!("u{}", i % 50),
                &format!("t{i}"),
                "created",
            )
        })
        .collect();
    let (head, tail) = lines.split_at(300);
    harness.produce(head).await;

    let second = Pipeline::new(harness.config.clone(), plugins.clone());
    let (stop_second, second_stopped) = tokio::sync::oneshot::channel::<()>();
    let joined = async {
        // Join once the first member has committed progress, forcing a
        // cooperative rebalance that revokes some of its partitions
        // mid-stream; send the rest once the second member is ready, so
        // both have records to handle.
        eventually("the first member commits", || {
            harness.committed().values().sum::<i64>() > 0
        })
        .await;
        let produce_tail = async {
            eventually("the second member is ready", || {
                second.telemetry.readiness.is_ready()
            })
            .await;
            harness.produce(tail).await;
        };
        let (ran, ()) = tokio::join!(
            second.run(&harness.brokers, async {
                let _ = second_stopped.await;
            }),
            produce_tail
        );
        ran.unwrap();
    };
    let first_run = async {
        let result = harness
            .run_until(
                plugins,
                &["out-topic"],
                |seen| distinct_events(seen) >= 600,
                async |_| {},
            )
            .await;
        let _ = stop_second.send(());
        result
    };
    let ((seen, first), ()) = tokio::join!(first_run, joined);
    assert_eq!(distinct_events(&seen), 600, "every event's output arrived");
    let revoked = first.rebalances("revoke");
    let handled_by_second = second.telemetry.pipeline.events_in.get();
    assert!(revoked > 0, "the first member gave partitions up");
    assert!(handled_by_second > 0, "the second member handled events");
    assert_eq!(harness.committed(), harness.end_offsets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_and_timers_survive_a_restart() {
    let mut harness = Harness::new(&BUNDLED_TOPICS);
    let sandbox = sandbox();
    let plugins = todo_eventd::demo::plugins(&sandbox).await.unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    // Event time stands still unless the test moves it.
    let (clock, _) = Clock::manual(now);
    harness.clock = clock;
    let at = |s: i64| todo_eventd::clock::rfc3339(now + s * 1000);
    let created = |task: &str, remind: Option<i64>| {
        let mut data = serde_json::json!({"title": format!("task {task}"), "due_at": at(3600)});
        if let Some(r) = remind {
            data["remind_at"] = serde_json::json!(at(r));
        }
        serde_json::json!({"event_id": format!("c-{task}"), "event_type": "created", "user_id": "ada",
            "task_id": task, "timestamp": at(0), "task_data": data})
        .to_string()
    };
    harness
        .produce(&[created("1", Some(10)), created("2", None)])
        .await;

    // First instance: handles both events (state and the reminder timer go
    // to the changelog) and shuts down well before the reminder is due.
    let (changes, first) = harness
        .run_until(
            plugins.clone(),
            &[CHANGELOG],
            |seen| seen.len() >= 4,
            async |_| {},
        )
        .await;
    assert!(changes.len() >= 4);
    assert!(first.changelog_records.get() >= 4);
    assert_eq!(
        first.timers_fired.get(),
        0,
        "stopped before any timer was due"
    );

    // Second instance, same group: restores, fires the reminder once at its
    // time (the test moves the clock past it), and the analytics counters
    // continue from the first instance's.
    let (clock, hand) = Clock::manual(now);
    harness.clock = clock;
    let completed =
        serde_json::json!({"event_id": "done-2", "event_type": "completed", "user_id": "ada",
        "task_id": "2", "timestamp": at(1), "task_data": {"title": "task 2"}})
        .to_string();
    let (seen, second) = harness
        .run_until(
            plugins,
            &["reminders", "analytics"],
            |seen| {
                let reminders = seen.iter().filter(|m| m.topic() == "reminders").count();
                let continued = seen
                    .iter()
                    .filter(|m| m.topic() == "analytics")
                    .any(|m| value(m)["created"] == 2 && value(m)["completed"] == 1);
                reminders >= 1 && continued
            },
            async |pipeline| {
                harness.produce(&[completed]).await;
                eventually("the completion is handled", || {
                    pipeline.telemetry.pipeline.events_in.get() >= 1
                })
                .await;
                hand.advance_to(now + 11_000);
            },
        )
        .await;
    assert!(second.restored_records.get() >= 4, "{}", second.summary());
    let reminders: Vec<_> = seen.iter().filter(|m| m.topic() == "reminders").collect();
    assert_eq!(reminders.len(), 1, "exactly one reminder");
    assert_eq!(value(reminders[0])["task_id"], "1");
    let fired_at = value(reminders[0])["fired_at"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert!(
        fired_at.as_millisecond() >= now + 10_000,
        "not before its time"
    );
    assert!(
        seen.iter().any(|m| m.topic() == "analytics"
            && value(m)["created"] == 2
            && value(m)["completed"] == 1),
        "analytics continued from the first instance's counts"
    );
    // Everything on the reminders topic, after both instances stopped.
    let all = reader(&harness.brokers, &["reminders"]);
    let mut count = 0;
    // The first wait covers the reader's first fetch; then 3 s of quiet.
    let mut wait = Duration::from_secs(20);
    while let Ok(message) = tokio::time::timeout(wait, all.recv()).await {
        message.unwrap();
        count += 1;
        wait = Duration::from_secs(3);
    }
    assert_eq!(count, 1, "no duplicate reminder");
}

/// A changelog written by an earlier version (a record per value and per
/// timer, the reminders timer keyed by the bare task id) is restored, and
/// the first write of such a key tombstones its older records — so none
/// can outlive the newer record under compaction — and a restore of the
/// result holds only the new state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_changelog_is_restored_and_its_records_retired() {
    use todo_eventd::state::Timer;
    use todo_eventd::state::changelog::{self, EntryKind, Restorer};

    let harness = Harness::new(&["task-events", "task-events.dlq", "reminders", CHANGELOG]);
    let old_memo = changelog::key("task-events", "reminders", EntryKind::Value, "task:1");
    let old_timer = changelog::key("task-events", "reminders", EntryKind::Timer, "1");
    let far = jiff::Timestamp::now().as_millisecond() + 86_400_000;
    // Every partition: the task's user lands on one of them.
    harness
        .write_changelog(&[
            (
                old_memo.clone(),
                Some(br#"{"last_event_at":0,"sent":null,"expiry_armed":true}"#.to_vec()),
            ),
            (
                old_timer.clone(),
                Some(changelog::timer_value(&Timer {
                    due: far,
                    payload: br#"{"expire":"1"}"#.to_vec(),
                    hops: 0,
                })),
            ),
        ])
        .await;
    harness.produce(&[event("e1", "ada", "1", "updated")]).await;

    let sandbox = sandbox();
    let reminders: Vec<_> = todo_eventd::demo::plugins(&sandbox)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.name == "reminders")
        .collect();
    let new_memo = changelog::key("task-events", "reminders", EntryKind::Key, "task:1");
    let retired = |m: &OwnedMessage, key: &[u8]| m.key() == Some(key) && m.payload().is_none();
    let done = |seen: &[OwnedMessage]| {
        seen.iter().any(|m| retired(m, &old_memo))
            && seen.iter().any(|m| retired(m, &old_timer))
            && seen.iter().any(|m| m.key() == Some(&new_memo[..]))
    };
    let (seen, stats) = harness
        .run_until(reminders, &[CHANGELOG], done, async |_| {})
        .await;
    assert!(
        done(&seen),
        "the memo rewritten, the older records tombstoned: {}",
        stats.summary()
    );

    // The written partition, read as a restore would: the memo under its
    // key, the old timer gone, nothing older left live.
    let partition = seen
        .iter()
        .find(|m| retired(m, &old_memo))
        .map(|m| m.partition())
        .unwrap();
    let mut restorer = Restorer::default();
    for m in seen.iter().filter(|m| m.partition() == partition) {
        restorer.apply("task-events", m.key().unwrap(), m.payload());
    }
    let (states, legacy) = restorer.into_parts();
    assert!(legacy.is_empty(), "{legacy:?}");
    let state = &states["reminders"];
    assert!(state.get("task:1").is_some(), "the memo, rewritten");
    assert!(state.timer("1").is_none(), "the bare-id timer, cancelled");
}

/// An older changelog's record whose key a newer record deleted (the
/// newer record a tombstone, the key never written again) is tombstoned
/// at the restore. Left to a next write of the key, which never comes, it
/// stayed live: once compaction removed the newer tombstone, it was the
/// key's last record and came back at every restore (a reminder for a
/// task long finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_record_of_a_deleted_key_is_retired_at_the_restore() {
    use todo_eventd::state::changelog::{self, EntryKind, Restorer};

    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let older = changelog::key("task-events", "echo", EntryKind::Value, "k");
    let newer = changelog::key("task-events", "echo", EntryKind::Key, "k");
    harness
        .write_changelog(&[(older.clone(), Some(b"1".to_vec())), (newer.clone(), None)])
        .await;
    let retired = |seen: &[OwnedMessage], partition: i32| {
        seen.iter().any(|m| {
            m.partition() == partition && m.key() == Some(&older[..]) && m.payload().is_none()
        })
    };
    let done = |seen: &[OwnedMessage]| (0..PARTITIONS).all(|p| retired(seen, p));
    let (seen, stats) = harness
        .run_until(echo_plugins().await, &[CHANGELOG], done, async |_| {})
        .await;
    assert!(
        done(&seen),
        "the older record tombstoned in every partition: {}",
        stats.summary()
    );
    // What compaction leaves (the newer tombstone gone): nothing of the key.
    for partition in 0..PARTITIONS {
        let mut restorer = Restorer::default();
        for m in seen
            .iter()
            .filter(|m| m.partition() == partition && m.key() != Some(&newer[..]))
        {
            restorer.apply("task-events", m.key().unwrap(), m.payload());
        }
        let (states, legacy) = restorer.into_parts();
        assert!(
            states
                .get("echo")
                .is_none_or(|state| state.get("k").is_none()),
            "partition {partition}: the deleted key came back"
        );
        assert!(legacy.is_empty(), "partition {partition}: {legacy:?}");
    }
}

/// A removed plugin's state is kept until the operator names it in
/// `plugins.forget`: then each partition's restore drops it and tombstones
/// its records (its current ones and an older changelog's), while a loaded
/// plugin named there keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forgotten_plugins_state_is_deleted_from_the_changelog() {
    use todo_eventd::state::Timer;
    use todo_eventd::state::changelog::{self, EntryKind, Restorer};

    let mut harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    harness.config.plugins.forget = vec!["gone".into(), "echo".into()];
    let gone = changelog::key("task-events", "gone", EntryKind::Key, "k");
    let gone_older = changelog::key("task-events", "gone", EntryKind::Value, "old");
    let kept = changelog::key("task-events", "echo", EntryKind::Key, "kept");
    let timer = Timer {
        due: jiff::Timestamp::now().as_millisecond() + 86_400_000,
        payload: b"{}".to_vec(),
        hops: 0,
    };
    harness
        .write_changelog(&[
            (gone.clone(), changelog::key_value(Some(b"1"), Some(&timer))),
            (gone_older.clone(), Some(b"2".to_vec())),
            (kept.clone(), changelog::key_value(Some(b"3"), None)),
        ])
        .await;

    let tombstoned = |seen: &[OwnedMessage], key: &[u8], partition: i32| {
        seen.iter()
            .any(|m| m.partition() == partition && m.key() == Some(key) && m.payload().is_none())
    };
    let done = |seen: &[OwnedMessage]| {
        (0..PARTITIONS).all(|p| tombstoned(seen, &gone, p) && tombstoned(seen, &gone_older, p))
    };
    let (seen, stats) = harness
        .run_until(echo_plugins().await, &[CHANGELOG], done, async |_| {})
        .await;
    assert!(
        done(&seen),
        "the removed plugin's records tombstoned: {}",
        stats.summary()
    );
    for partition in 0..PARTITIONS {
        assert!(
            !tombstoned(&seen, &kept, partition),
            "the loaded plugin's state is kept"
        );
        let mut restorer = Restorer::default();
        for m in seen.iter().filter(|m| m.partition() == partition) {
            restorer.apply("task-events", m.key().unwrap(), m.payload());
        }
        let (states, legacy) = restorer.into_parts();
        let forgotten = states
            .get("gone")
            .is_none_or(|state| state.is_empty() && state.timer_count() == 0);
        assert!(forgotten, "partition {partition}: {:?}", states.get("gone"));
        assert!(legacy.is_empty(), "partition {partition}: {legacy:?}");
        assert_eq!(states["echo"].get("kept"), Some(&b"3"[..]));
    }
}

/// Changelog records a restore cannot read (a newer version's, another
/// writer's) are skipped and their keys start empty: the restore still
/// succeeds, and says so — a warning and a metric an alert can watch, not
/// only a count on an info line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreadable_changelog_records_are_counted_where_an_alert_sees_them() {
    use todo_eventd::state::changelog::{self, EntryKind};

    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let kept = changelog::key("task-events", "echo", EntryKind::Key, "kept");
    harness
        .write_changelog(&[
            (b"junk".to_vec(), Some(b"junk".to_vec())),
            (kept, changelog::key_value(Some(b"1"), None)),
        ])
        .await;
    let (_, stats) = harness
        .run_until(
            echo_plugins().await,
            &["out-topic"],
            |_| true,
            async |pipeline| {
                let stats = &pipeline.telemetry.pipeline;
                eventually("every partition restored", || {
                    stats.restored_records.get() >= PARTITIONS as u64
                })
                .await;
            },
        )
        .await;
    assert_eq!(
        stats.changelog_unreadable.get(),
        PARTITIONS as u64,
        "one unreadable record per partition: {}",
        stats.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_queues_pause_and_resume_partitions_without_losing_a_record() {
    let mut harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    harness.config.pipeline.queue_capacity = 1;
    harness.config.pipeline.max_in_flight = 1;
    if let Ok(debug) = std::env::var("RDKAFKA_DEBUG") {
        harness
            .config
            .kafka
            .properties
            .insert("debug".into(), debug);
    }
    let plugins = echo_plugins().await;
    let lines: Vec<String> = (0..500)
        .map(|i| {
            event(
                &format!("ev-{i:04}"),
                &format!("u{}", i % 7),
                &format!("t{i}"),
                "created",
            )
        })
        .collect();
    harness.produce(&lines).await;
    let (seen, stats) = harness.run_until_echoed(plugins, 500).await;
    assert_eq!(distinct_events(&seen), 500, "{}", stats.summary());
    assert_eq!(harness.committed(), harness.end_offsets());
}

/// A header named in bytes that are not UTF-8 (rdkafka's header reader
/// panics on one) is an unknown header like any other: the record is
/// handled, and so is the one after it on its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_name_that_is_not_utf8_is_ignored() {
    let harness = Harness::new(&["task-events", "task-events.dlq", "out-topic", CHANGELOG]);
    let plugins = echo_plugins().await;
    produce_with_raw_header(
        &harness.brokers,
        b"u-1",
        event("odd-header", "u-1", "t-1", "created").as_bytes(),
        c"\xff\xfe",
    );
    let after = event("after", "u-1", "t-1", "updated");
    produce_with_raw_header(&harness.brokers, b"u-1", after.as_bytes(), c"ok");
    let (seen, stats) = harness.run_until_echoed(plugins, 2).await;
    let events: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events,
        ["after", "odd-header"].map(str::to_owned).into(),
        "both records echoed"
    );
    assert_eq!(stats.events_in.get(), 2);
}

/// Produces one record to `task-events` with a header named `name`,
/// through librdkafka itself: rdkafka's API takes only UTF-8 names.
#[allow(unsafe_code)]
fn produce_with_raw_header(brokers: &str, key: &[u8], value: &[u8], name: &std::ffi::CStr) {
    use rdkafka::bindings as rdsys;
    use rdkafka::producer::{BaseProducer, Producer};
    use rdsys::rd_kafka_vtype_t as Type;
    use rdsys::rd_kafka_vu_s__bindgen_ty_1 as U;

    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let memory = |bytes: &[u8]| U {
        mem: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: bytes.as_ptr().cast_mut().cast(),
            size: bytes.len(),
        },
    };
    let field = |vtype, u| rdsys::rd_kafka_vu_t { vtype, u };
    let fields = [
        field(
            Type::RD_KAFKA_VTYPE_TOPIC,
            U {
                cstr: c"task-events".as_ptr(),
            },
        ),
        field(Type::RD_KAFKA_VTYPE_KEY, memory(key)),
        field(Type::RD_KAFKA_VTYPE_VALUE, memory(value)),
        field(
            Type::RD_KAFKA_VTYPE_MSGFLAGS,
            U {
                i: rdsys::RD_KAFKA_MSG_F_COPY,
            },
        ),
        field(
            Type::RD_KAFKA_VTYPE_HEADER,
            U {
                header: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: b"v".as_ptr().cast(),
                    size: 1,
                },
            },
        ),
    ];
    // SAFETY: every pointer is live for the call, and the key and value
    // are copied (`RD_KAFKA_MSG_F_COPY`); the producer's context takes no
    // per-record opaque.
    let error = unsafe {
        rdsys::rd_kafka_produceva(
            producer.client().native_ptr(),
            fields.as_ptr(),
            fields.len(),
        )
    };
    assert!(error.is_null(), "the record was not queued");
    producer.flush(Duration::from_secs(10)).unwrap();
}
