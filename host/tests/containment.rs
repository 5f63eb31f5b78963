//! The real daemon on its own embedded broker, with hostile plugins and a
//! hostile plugins directory: a plugin that sleeps forever holds up only
//! its own partition, a plugin that re-arms its timer for now is
//! throttled, a FIFO dropped into the directory does not block hot reload,
//! `/healthz` keeps answering, memory stays bounded, and SIGTERM ends the
//! process within its shutdown timeout.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../tests/harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TEST_PLUGIN, event, http_get, mode, parse_metrics, plugin_dir, sample, value};
use rdkafka::Message;

const SHUTDOWN_TIMEOUT_S: u64 = 5;

fn produce(brokers: &str, lines: &[String]) {
    let producer =
        todo_eventd::kafka::producer(brokers, &todo_eventd::config::Config::default().kafka)
            .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(todo_eventd::kafka::produce_lines(
            &producer,
            "task-events",
            lines.join("\n").as_bytes(),
            usize::MAX,
        ))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_and_files_hold_up_nothing_and_sigterm_is_prompt() {
    let sleeper = format!(
        "{}only_user = \"stuck\"\n",
        mode("sleep").replace("call_timeout = \"50ms\"", "call_timeout = \"1s\"")
    );
    let stormer = format!("{}only_user = \"storm\"\n", mode("rearm"));
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("sleeper", TEST_PLUGIN, Some(&sleeper)),
        ("stormer", TEST_PLUGIN, Some(&stormer)),
    ]);
    let work = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_todo-eventd"));
    let mut daemon = harness::daemon_embedded(
        bin,
        work.path(),
        "daemon",
        &[
            "--plugins",
            dir.path().to_str().unwrap(),
            "--set",
            &format!("pipeline.shutdown_timeout={SHUTDOWN_TIMEOUT_S}s"),
            "--set",
            "plugins.reload_debounce=100ms",
            "--set",
            "kafka.partitions=3",
        ],
    );
    let brokers = daemon.embedded_broker();
    let admin = daemon.admin_addr();
    daemon.assert_assigned();

    let mut lines: Vec<String> = (0..20)
        .map(|i| event(&format!("stuck-{i}"), "stuck", &format!("s{i}"), "created"))
        .collect();
    lines
        .extend((0..3).map(|i| event(&format!("storm-{i}"), "storm", &format!("r{i}"), "created")));
    lines.extend((0..40).map(|i| {
        event(
            &format!("fast-{i}"),
            &format!("user{i}"),
            &format!("f{i}"),
            "created",
        )
    }));
    {
        let (brokers, lines) = (brokers.clone(), lines.clone());
        tokio::task::spawn_blocking(move || produce(&brokers, &lines))
            .await
            .unwrap();
    }
    // Which partition each input went to: the stuck one's fast events wait
    // behind it (a second each), the others must not.
    let inputs = harness::read_until(
        &brokers,
        &["task-events"],
        Duration::from_secs(60),
        |seen| seen.len() >= lines.len(),
    )
    .await;
    let partition_of: BTreeMap<String, i32> = inputs
        .iter()
        .map(|m| {
            (
                value(m)["event_id"].as_str().unwrap().to_owned(),
                m.partition(),
            )
        })
        .collect();
    let stuck = partition_of["stuck-0"];
    let free: BTreeSet<String> = partition_of
        .iter()
        .filter(|(id, p)| id.starts_with("fast") && **p != stuck)
        .map(|(id, _)| id.clone())
        .collect();
    let outputs = harness::read_until(&brokers, &["out-topic"], Duration::from_secs(60), |seen| {
        let done: BTreeSet<String> = seen
            .iter()
            .map(|m| value(m)["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        free.is_subset(&done)
    })
    .await;
    let done: BTreeSet<String> = outputs
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        free.is_subset(&done),
        "events on free partitions were handled"
    );

    // A FIFO dropped into the directory: rejected by name, reload goes on.
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("trap.wasm"))
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = tokio::task::spawn_blocking(move || http_get(admin, "/plugins"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        if body.contains("a FIFO (named pipe), not a regular file") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the FIFO was never reported: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Meanwhile the daemon answers, throttles the storm and stays small.
    for _ in 0..10 {
        let started = Instant::now();
        let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .unwrap();
    let samples = parse_metrics(&metrics);
    let throttled = sample(
        &samples,
        "todo_eventd_plugin_timers_throttled_total",
        &[("plugin", "stormer")],
    )
    .unwrap_or(0.0);
    assert!(throttled >= 1.0, "{metrics}");
    let deadlines = sample(
        &samples,
        "todo_eventd_plugin_errors_total",
        &[("plugin", "sleeper"), ("kind", "deadline")],
    )
    .unwrap_or(0.0);
    assert!(deadlines >= 1.0, "{metrics}");
    let rss = daemon.rss_mib();
    assert!(rss < 600, "daemon RSS {rss} MiB");

    // SIGTERM with a partition still stuck behind a sleeping plugin.
    let started = Instant::now();
    assert!(
        daemon.terminate(Duration::from_secs(SHUTDOWN_TIMEOUT_S + 15)),
        "the daemon did not exit cleanly on SIGTERM:\n{}",
        daemon.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(SHUTDOWN_TIMEOUT_S + 10),
        "exit took {:?}",
        started.elapsed()
    );
}
