//! End-to-end: the real `todo-eventd` binary against a real Kafka-protocol
//! broker process (tansu 0.6.0). Ignored by the fast tier; the full suite
//! (`cargo test --workspace -- --include-ignored`, what `.ci/run` runs)
//! includes them.

#![allow(clippy::unwrap_used)]

#[path = "../host/tests/common/mod.rs"]
mod common;
mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::TEST_PLUGIN;
use harness::{Broker, Process, by_topic, daemon, header, json, read_until};
use rdkafka::Message;
use todo_eventd::config::Config;
use todo_eventd::kafka;

const BIN: &str = env!("CARGO_BIN_EXE_todo-eventd");

fn cli(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bundled plugins with a 2 s analytics snapshot interval.
fn bundled_plugins(dir: &Path) {
    cli(&["plugins", "install", dir.to_str().unwrap()]);
    let manifest = dir.join("analytics.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"60s\"", "\"2s\"");
    std::fs::write(manifest, text).unwrap();
}

/// Sends `events` to `task-events` with the binary's `produce` command.
fn produce(broker: &Broker, work: &Path, events: &[String]) {
    let file = work.join("events.ndjson");
    std::fs::write(&file, events.join("\n")).unwrap();
    let file = file.to_str().unwrap();
    cli(&[
        "produce",
        "--brokers",
        &broker.address,
        "--topic",
        "task-events",
        file,
    ]);
}

/// One daemon in `group` running the bundled plugins from `WORK/plugins`,
/// and its work directory.
fn bundled_daemon(broker: &Broker, group: &str) -> (Process, tempfile::TempDir) {
    let (work, args) = bundled_setup(group);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = daemon(
        Path::new(BIN),
        &broker.address,
        work.path(),
        "daemon",
        &args,
    );
    (daemon, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "end-to-end: needs a tansu broker; run with --include-ignored"]
async fn sample_stream_in_expected_records_out() {
    let broker = Broker::start();
    let (mut daemon, work) = bundled_daemon(&broker, "e2e-sample");
    daemon.assert_assigned();

    let events = todo_eventd::demo::sample_events(jiff::Timestamp::now().as_millisecond());
    produce(&broker, work.path(), &events);

    let topics = ["reminders", "analytics", "task-events", "task-events.dlq"];
    let seen = read_until(&broker.address, &topics, Duration::from_secs(90), |seen| {
        let t = by_topic(seen);
        let count = |topic: &str| t.get(topic).map_or(0, Vec::len);
        let occurrences = t.get("task-events").map_or(0, |m| {
            m.iter()
                .filter(|m| header(m, "source.plugin").as_deref() == Some("recurrence"))
                .count()
        });
        count("reminders") >= 1
            && count("task-events.dlq") >= 2
            && count("analytics") >= 2
            && occurrences >= 1
    })
    .await;
    let topics = by_topic(&seen);

    let reminder = json(topics["reminders"][0]);
    assert_eq!(reminder["task_id"], "101", "{reminder}");
    assert_eq!(reminder["title"], "Call the plumber");
    assert_eq!(topics["reminders"][0].key(), Some(&b"ada"[..]));

    let next = topics["task-events"]
        .iter()
        .find(|m| header(m, "source.plugin").as_deref() == Some("recurrence"))
        .unwrap();
    assert_eq!(json(next)["task_id"], "102-r2");
    assert_eq!(header(next, "source.event.id").as_deref(), Some("demo-3"));

    let reasons: BTreeSet<String> = topics["task-events.dlq"]
        .iter()
        .map(|m| {
            assert_eq!(header(m, "error.stage").as_deref(), Some("decode"));
            header(m, "error.message").unwrap()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("not valid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("\"task.exploded\" is not a known event type")),
        "{reasons:?}"
    );

    let bob = topics["analytics"]
        .iter()
        .map(|m| json(m))
        .find(|v| v["user_id"] == "bob")
        .unwrap();
    assert_eq!(
        (bob["created"].as_u64(), bob["deleted"].as_u64()),
        (Some(1), Some(1))
    );

    assert!(
        daemon.terminate(Duration::from_secs(30)),
        "graceful shutdown failed:\n{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "end-to-end: needs a tansu broker; run with --include-ignored"]
async fn two_daemons_share_partitions_and_a_kill_9_loses_nothing() {
    let broker = Broker::start();
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("echo.wasm"), TEST_PLUGIN).unwrap();
    std::fs::write(
        plugins.join("echo.toml"),
        "[outputs]\nout = \"e2e-out\"\n[config]\nmode = \"echo\"\n",
    )
    .unwrap();
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\ngroup_id = \"e2e-pair\"\npartitions = 4\n[plugins]\ndir = \"{}\"\n[pipeline]\nshutdown_timeout = \"20s\"\n",
            plugins.display()
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut first = daemon(Path::new(BIN), &broker.address, work.path(), "first", &args);
    first.assert_assigned();
    let mut second = daemon(
        Path::new(BIN),
        &broker.address,
        work.path(),
        "second",
        &args,
    );
    second.assert_assigned();

    let total = 2000;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("ev-{i:05}"), "event_type": "created", "user_id": format!("user-{}", i % 97),
                "task_id": format!("task-{i}"), "timestamp": "2026-01-26T08:00:00Z", "task_data": {"title": "t"}
            })
            .to_string()
        })
        .collect();
    let producer = kafka::producer(&broker.address, &Config::default().kafka).unwrap();
    let (head, tail) = lines.split_at(total / 2);
    kafka::produce_lines(
        &producer,
        "task-events",
        head.join("\n").as_bytes(),
        usize::MAX,
    )
    .await
    .unwrap();

    // Both members handle events before one of them dies.
    let some = read_until(
        &broker.address,
        &["e2e-out"],
        Duration::from_secs(60),
        |seen| seen.len() >= 200,
    )
    .await;
    assert!(some.len() >= 200, "outputs are flowing");
    first.kill9();
    // The orchestrator restarts it (systemd `Restart=`, a Kubernetes pod).
    // tansu 0.6.0 keeps a killed member's assignment in the group, so the
    // survivor alone would not take those partitions over; on Kafka it does
    // after `session.timeout.ms`. The replacement joining forces the
    // rebalance that hands them out again.
    let third = daemon(Path::new(BIN), &broker.address, work.path(), "third", &args);
    third.assert_assigned();
    kafka::produce_lines(
        &producer,
        "task-events",
        tail.join("\n").as_bytes(),
        usize::MAX,
    )
    .await
    .unwrap();

    let seen = read_until(
        &broker.address,
        &["e2e-out"],
        Duration::from_secs(120),
        |seen| {
            seen.iter()
                .map(|m| json(m)["event"].as_str().unwrap_or_default().to_owned())
                .collect::<BTreeSet<_>>()
                .len()
                >= total
        },
    )
    .await;
    let ids: BTreeSet<String> = seen
        .iter()
        .map(|m| json(m)["event"].as_str().unwrap().to_owned())
        .collect();
    let tail = |log: String| {
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    let missing: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .filter(|id| !ids.contains(id))
        .collect();
    assert_eq!(
        ids.len(),
        total,
        "every input event's output arrived (duplicates allowed); missing {missing:?}\nsecond daemon's log:\n{}\nthird daemon's log:\n{}\nfirst daemon's log:\n{}",
        tail(second.log_text()),
        tail(third.log_text()),
        tail(first.log_text()),
    );

    // The group split the partitions: the first member handed some to the
    // second when it joined, and the second handled some (its metrics).
    let (_, metrics) = common::http_get(second.admin_addr(), "/metrics");
    let samples = common::parse_metrics(&metrics);
    let handed = |name: &str, labels: &[(&str, &str)], member: &str| {
        common::sample(&samples, name, labels).unwrap_or_else(|| panic!("{member}: no {name}"))
    };
    assert!(
        handed("todo_eventd_events_in_total", &[], "second") > 0.0,
        "the second daemon handled events"
    );
    assert!(
        handed(
            "todo_eventd_rebalances_total",
            &[("kind", "assign")],
            "second"
        ) >= 1.0,
        "the second daemon was assigned partitions"
    );
    assert!(
        second.terminate(Duration::from_secs(40)),
        "graceful shutdown failed:\n{}",
        second.log_text()
    );
}

/// `count` created events for different users whose reminders are due
/// `ahead` from now.
fn reminder_events(count: usize, ahead_s: i64) -> Vec<String> {
    let now = jiff::Timestamp::now().as_millisecond();
    let at = |s: i64| todo_eventd::clock::rfc3339(now + s * 1000);
    (0..count)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("rem-{i}"), "event_type": "created", "user_id": format!("user-{i}"),
                "task_id": format!("task-{i}"), "timestamp": at(0),
                "task_data": {"title": format!("Reminder {i}"), "due_at": at(3600), "remind_at": at(ahead_s)}
            })
            .to_string()
        })
        .collect()
}

/// Produces `total` reminders due `ahead_s` from now and waits until every
/// reminder timer is in the group's changelog.
async fn schedule_reminders(broker: &Broker, group: &str, total: usize, ahead_s: i64) {
    let producer = kafka::producer(&broker.address, &Config::default().kafka).unwrap();
    let events = reminder_events(total, ahead_s);
    kafka::produce_lines(
        &producer,
        "task-events",
        events.join("\n").as_bytes(),
        usize::MAX,
    )
    .await
    .unwrap();
    let changelog = format!("{group}.plugin-state");
    let is_timer = |m: &rdkafka::message::OwnedMessage| {
        use todo_eventd::state::changelog::{self, Change};
        m.key()
            .and_then(|k| changelog::decode(k, m.payload()).ok())
            .is_some_and(|e| matches!(e.change, Change::Key { timer: Some(_), .. }))
    };
    let seen = read_until(
        &broker.address,
        &[&changelog],
        Duration::from_secs(60),
        |seen| seen.iter().filter(|m| is_timer(m)).count() >= total,
    )
    .await;
    assert!(
        seen.iter().filter(|m| is_timer(m)).count() >= total,
        "timers reached the changelog"
    );
}

/// Waits for `total` reminders and checks each task got exactly one;
/// `daemon`'s log goes into the failure message.
async fn assert_each_reminder_once(broker: &Broker, total: usize, daemon: &Process) {
    let seen = read_until(
        &broker.address,
        &["reminders"],
        Duration::from_secs(90),
        |seen| reminder_counts(seen).len() >= total,
    )
    .await;
    let counts = reminder_counts(&seen);
    assert_eq!(
        counts.len(),
        total,
        "every reminder fired:\n{}",
        daemon.log_text()
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "one reminder per task: {counts:?}"
    );
}

/// The bundled plugins in a fresh work dir, and `run` args for `group`.
fn bundled_setup(group: &str) -> (tempfile::TempDir, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    bundled_plugins(&plugins);
    let args = vec![
        "--plugins".to_owned(),
        plugins.to_str().unwrap().to_owned(),
        "--group".to_owned(),
        group.to_owned(),
    ];
    (work, args)
}

/// Task ids of the reminders seen, with how often each arrived.
fn reminder_counts(
    seen: &[rdkafka::message::OwnedMessage],
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for m in seen.iter().filter(|m| m.topic() == "reminders") {
        *counts
            .entry(json(m)["task_id"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "end-to-end: needs a tansu broker; run with --include-ignored"]
async fn reminders_scheduled_before_a_kill_9_fire_after_a_restart() {
    let broker = Broker::start();
    let (work, args) = bundled_setup("e2e-durable");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = daemon(Path::new(BIN), &broker.address, work.path(), "first", &args);
    first.assert_assigned();
    let total = 12;
    schedule_reminders(&broker, "e2e-durable", total, 30).await;
    first.kill9();
    // Start the replacement once the dead member's session (10 s) is over:
    // tansu 0.6.0 only drops a silent member when someone joins after
    // that, and would otherwise keep its partitions assigned to it.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let second = daemon(
        Path::new(BIN),
        &broker.address,
        work.path(),
        "second",
        &args,
    );
    assert_each_reminder_once(&broker, total, &second).await;
    // The reminders came from restored timers: the replacement read the
    // changelog (its metrics say how much).
    let (_, metrics) = common::http_get(second.admin_addr(), "/metrics");
    let samples = common::parse_metrics(&metrics);
    let restored = common::sample(&samples, "todo_eventd_restored_records_total", &[]);
    assert!(restored.is_some_and(|n| n > 0.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "end-to-end: needs a tansu broker; run with --include-ignored"]
async fn a_stopped_member_hands_its_timers_to_the_other() {
    let broker = Broker::start();
    let (work, args) = bundled_setup("e2e-handover");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = daemon(Path::new(BIN), &broker.address, work.path(), "first", &args);
    first.assert_assigned();
    let second = daemon(
        Path::new(BIN),
        &broker.address,
        work.path(),
        "second",
        &args,
    );
    second.assert_assigned();
    let total = 24;
    schedule_reminders(&broker, "e2e-handover", total, 25).await;
    // Graceful stop: the first member drains, commits and leaves; the
    // second restores its partitions and fires their timers.
    assert!(
        first.terminate(Duration::from_secs(40)),
        "{}",
        first.log_text()
    );
    assert_each_reminder_once(&broker, total, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "end-to-end: needs a tansu broker; run with --include-ignored"]
async fn an_operator_drops_in_a_plugin_and_watches_it() {
    let broker = Broker::start();
    let (mut daemon, work) = bundled_daemon(&broker, "e2e-ops");
    let plugins = work.path().join("plugins");
    let admin = daemon.admin_addr();
    let get = move |path: &'static str| {
        tokio::task::spawn_blocking(move || common::http_get(admin, path))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while get("/readyz").await.unwrap().0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Drop in a plugin: the manifest, then the component under a hidden
    // name renamed into place.
    let manifest =
        "version = \"1.0.0\"\n[outputs]\nout = \"e2e-echo\"\n[config]\nmode = \"echo\"\n";
    std::fs::write(plugins.join("echo.toml"), manifest).unwrap();
    std::fs::write(plugins.join(".echo.wasm"), TEST_PLUGIN).unwrap();
    std::fs::rename(plugins.join(".echo.wasm"), plugins.join("echo.wasm")).unwrap();
    // The watcher loads it and creates its output topic (a sync point, not
    // the assertion); /plugins lists it as active.
    daemon.wait_for_log(
        "Created the output topics of a new plugin",
        Duration::from_secs(60),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let echo = loop {
        let (status, body) = get("/plugins").await.unwrap();
        assert_eq!(status, 200);
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let echo = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "echo" && p["status"] == "active")
            .cloned();
        if let Some(echo) = echo {
            break echo;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(echo["version"], "1.0.0");

    produce(
        &broker,
        work.path(),
        &[common::event("ops-1", "ada", "501", "created")],
    );
    let seen = read_until(
        &broker.address,
        &["e2e-echo"],
        Duration::from_secs(60),
        |seen| !seen.is_empty(),
    )
    .await;
    assert_eq!(seen.len(), 1, "{}", daemon.log_text());
    assert_eq!(json(&seen[0])["event"], "ops-1");
    assert_eq!(header(&seen[0], "source.plugin").as_deref(), Some("echo"));

    let (status, text) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let samples = common::parse_metrics(&text);
    let value = |name: &str, labels: &[(&str, &str)]| {
        common::sample(&samples, name, labels).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let echo_calls = [("plugin", "echo"), ("handler", "on-event")];
    assert_eq!(value("todo_eventd_plugin_calls_total", &echo_calls), 1.0);
    let loaded = [("plugin", "echo"), ("result", "loaded")];
    assert_eq!(value("todo_eventd_plugin_reloads_total", &loaded), 1.0);
    assert!(value("todo_eventd_events_in_total", &[]) >= 1.0);
    assert_eq!(value("todo_eventd_ready", &[]), 1.0);
    assert!(daemon.terminate(Duration::from_secs(30)));
}
