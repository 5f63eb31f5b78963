//! Helpers shared by the integration tests: a sandbox, plugin directories
//! built from the real guest components, and events.

#![allow(dead_code, clippy::unwrap_used)]

pub mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;

use tempfile::TempDir;
use todo_eventd::kafka;
use todo_eventd::plugin::{self, Plugin};
use todo_eventd::sandbox::{Sandbox, SandboxConfig};
use todo_eventd::world::TaskEvent;

/// The test plugin (`plugins/test-plugin`), built for wasm32-wasip2.
pub const TEST_PLUGIN: &[u8] = include_bytes!(env!("GUEST_TEST_PLUGIN_WASM"));

pub fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 32,
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

/// A directory holding `NAME.wasm` (+ `NAME.toml` if given) for each entry.
pub fn plugin_dir(files: &[(&str, &[u8], Option<&str>)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, wasm, manifest) in files {
        std::fs::write(dir.path().join(format!("{name}.wasm")), wasm).unwrap();
        if let Some(manifest) = manifest {
            std::fs::write(dir.path().join(format!("{name}.toml")), manifest).unwrap();
        }
    }
    dir
}

/// A test-plugin manifest with the given mode and an `out` output.
pub fn mode(mode: &str) -> String {
    format!(
        "[outputs]\nout = \"out-topic\"\n[limits]\nmemory = \"8MiB\"\ncall_timeout = \"50ms\"\n[config]\nmode = \"{mode}\"\n"
    )
}

/// Loads every plugin in `dir`, failing the test on any load error.
pub async fn load(sandbox: &Arc<Sandbox>, dir: &Path) -> Vec<Arc<Plugin>> {
    let report = plugin::load_dir(sandbox, dir).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report.plugins
}

/// A decoded `created` event for task `task` at `at` (ms).
pub fn created(task: &str, at: i64) -> TaskEvent {
    let json = serde_json::json!({
        "event_id": format!("ev-{task}-{at}"),
        "event_type": "created",
        "user_id": "u-1",
        "task_id": task,
        "timestamp": jiff::Timestamp::from_millisecond(at).unwrap().to_string(),
        "task_data": {"title": "t"},
    });
    todo_eventd::event::decode(json.to_string().as_bytes()).unwrap()
}

/// A task event as producers send it (snake case).
pub fn event(id: &str, user: &str, task: &str, kind: &str) -> String {
    serde_json::json!({
        "event_id": id, "event_type": kind, "user_id": user, "task_id": task,
        "timestamp": "2026-01-26T08:00:00Z", "task_data": {"title": "t"}
    })
    .to_string()
}

/// `count` `created` events, each for its own user and task
/// (`ev-I`, `uI`, `tI`), spreading over the partitions.
pub fn created_events(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            event(
                &format!("ev-{i}"),
                &format!("u{i}"),
                &format!("t{i}"),
                "created",
            )
        })
        .collect()
}

/// A consumer of every partition of `topics` from the start, assigned them
/// ([`kafka::from_the_start`] says why), once each exists (up to a minute).
pub fn reader(brokers: &str, topics: &[&str]) -> StreamConsumer {
    static READERS: AtomicU32 = AtomicU32::new(0);
    let group = format!("test-reader-{}", READERS.fetch_add(1, Ordering::Relaxed));
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let counts: Vec<(&str, i32)> = topics
        .iter()
        .map(|topic| (*topic, partition_count(&consumer, topic)))
        .collect();
    consumer
        .assign(&kafka::from_the_start(counts).unwrap())
        .unwrap();
    consumer
}

/// How many partitions `topic` has, once it exists.
fn partition_count(consumer: &StreamConsumer, topic: &str) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let found = consumer
            .fetch_metadata(Some(topic), std::time::Duration::from_secs(5))
            .ok()
            .and_then(|metadata| {
                let topic = metadata.topics().first()?;
                (topic.error().is_none() && !topic.partitions().is_empty())
                    .then(|| topic.partitions().len())
            });
        if let Some(count) = found {
            return i32::try_from(count).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "topic {topic} does not exist"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A record's value as JSON.
pub fn value(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().unwrap()).unwrap()
}

/// `component` with a custom section appended: the same behaviour, a
/// different content hash (a "new version" of a plugin).
pub fn with_custom_section(component: &[u8], label: &str) -> Vec<u8> {
    let name = b"todo-eventd-test";
    let mut payload = vec![u8::try_from(name.len()).unwrap()];
    payload.extend_from_slice(name);
    payload.extend_from_slice(label.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&payload);
    bytes
}

/// A minimal HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text format: `name{label="value",...} number` per line.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap();
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// The value of the sample named `name` whose labels include `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
        .map(|s| s.value)
}

/// Logs to the test's output when RUST_LOG is set (for debugging a test:
/// `RUST_LOG=todo_eventd=debug cargo test NAME -- --nocapture`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `condition` every 50 ms until it holds; fails the test after 60 s
/// (a condition on what the system did, never a fixed sleep).
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
