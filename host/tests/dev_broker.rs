//! `todo-eventd broker`, the embedded broker as a process of its own: its
//! address on the first line of stdout, the default topics with the
//! partitions asked for, a daemon (which finds its topics there and needs
//! no CreateTopics) and `todo-eventd produce` working against it, and a
//! clean exit on SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{reader, value};
use rdkafka::consumer::{BaseConsumer, Consumer};
use todo_eventd::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_todo-eventd");

/// Sends SIGTERM and waits (at most 20 s) for a clean exit.
fn terminate(mut child: Child, what: &str) {
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_and_produce_work_against_the_standalone_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Command::new(BIN)
        .args(["broker", "--partitions", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("broker.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(broker.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let address = first.trim().to_owned();
    let (host, port) = address.rsplit_once(':').expect("HOST:PORT");
    assert!(!host.is_empty() && port.parse::<u16>().is_ok(), "{first:?}");
    let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
    assert!(log.contains("100000 records"), "limits logged: {log}");

    // The default topics, two partitions each.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &address)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let expected = todo_eventd::broker::default_topics(&Config::default()).unwrap();
    for topic in &expected {
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        assert_eq!(
            found.map(|t| t.partitions().len()),
            Some(2),
            "topic {topic}"
        );
    }
    for topic in [
        "task-events",
        "task-events.dlq",
        "todo-eventd.plugin-state",
        "audit",
    ] {
        assert!(expected.contains(topic), "{topic} among {expected:?}");
    }

    // A daemon with the bundled plugins (creating topics by default: all
    // exist, so it asks for none), and an event sent with `produce`.
    let plugins = dir.path().join("plugins");
    let installed = Command::new(BIN)
        .args(["plugins", "install"])
        .arg(&plugins)
        .env("TODO_EVENTD_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(installed.status.success());
    let daemon = Command::new(BIN)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--brokers", &address])
        .arg("--plugins")
        .arg(&plugins)
        .env("TODO_EVENTD_CACHE_DIR", dir.path().join("cache"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("daemon.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, common::event("dev-1", "ada", "t-1", "created")).unwrap();
    let produced = Command::new(BIN)
        .args(["produce", "--brokers", &address])
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );

    let audit = reader(&address, &["audit"]);
    let record = tokio::time::timeout(Duration::from_secs(60), audit.recv()).await;
    let daemon_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    let record = match record {
        Ok(Ok(record)) => record,
        other => panic!("no audit record: {other:?}\n{}", daemon_log()),
    };
    assert_eq!(value(&record.detach())["event_id"], "dev-1");
    assert!(
        !daemon_log().contains("creating topics"),
        "no CreateTopics asked: {}",
        daemon_log()
    );

    terminate(daemon, "the daemon");
    terminate(broker, "the broker");
}
