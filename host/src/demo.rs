//! `todo-eventd demo`: the whole pipeline on an embedded broker with a
//! realistic sample stream, printing what lands on each topic.
//!
//! The stream (times relative to now): a task whose reminder is due a few
//! seconds ahead, an update, a completed weekly task, a deleted task and two
//! bad records. The bundled plugins run with the analytics snapshot
//! interval shortened to a few seconds so everything shows up quickly.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::json;

use crate::config::Config;
use crate::kafka::{self, EmbeddedBroker};
use crate::pipeline::Pipeline;
use crate::plugin::Plugin;
use crate::sandbox::Sandbox;
use crate::telemetry::PipelineMetrics;

/// How long the demo waits for everything to arrive.
const DEMO_TIMEOUT: Duration = Duration::from_secs(30);

/// The demo's input events, timed relative to `now` (ms).
pub fn sample_events(now: i64) -> Vec<String> {
    let t = |offset_s: i64| crate::clock::rfc3339(now + offset_s * 1000);
    vec![
        json!({"event_id": "demo-1", "event_type": "created", "user_id": "ada", "task_id": "101",
               "timestamp": t(0),
               "task_data": {"title": "Call the plumber", "priority": "high", "tags": ["home"],
                             "due_at": t(3600), "remind_at": t(5)}}).to_string(),
        json!({"specversion": "1.0", "id": "demo-2", "source": "todo-backend", "type": "com.dapr.event.sent",
               "data": {"event_type": "task.created", "task_id": 102, "user_id": "ada", "timestamp": t(0),
                        "task_data": {"title": "Weekly review", "priority": "normal", "due_at": t(-3600),
                                      "recurrence_rule": "FREQ=WEEKLY;BYDAY=MO,FR", "time_zone": "Europe/London"}}}).to_string(),
        json!({"eventId": "demo-3", "eventType": "task.completed", "userId": "ada", "timestamp": t(1),
               "payload": {"taskId": "102", "title": "Weekly review", "completed": true, "due_date": t(-3600),
                           "recurrence_rule": "FREQ=WEEKLY;BYDAY=MO,FR", "time_zone": "Europe/London"}}).to_string(),
        json!({"event_id": "demo-4", "event_type": "created", "user_id": "bob", "task_id": "201",
               "timestamp": t(1), "task_data": {"title": "Old idea", "priority": "low"}}).to_string(),
        json!({"event_id": "demo-5", "event_type": "deleted", "user_id": "bob", "task_id": "201",
               "timestamp": t(2)}).to_string(),
        r#"{"event_type":"created","task_id":"#.to_owned(),
        json!({"event_id": "demo-7", "event_type": "task.exploded", "user_id": "bob", "task_id": "9",
               "timestamp": t(2)}).to_string(),
    ]
}

/// Runs the demo, printing to `out`.
pub async fn run(
    config: Config,
    plugins: Vec<Arc<Plugin>>,
    mut out: impl Write,
) -> Result<Arc<PipelineMetrics>> {
    let broker = EmbeddedBroker::start()?;
    let brokers = broker.bootstrap_servers();
    let topics = crate::daemon::topics(&config, &plugins);
    for topic in &topics {
        broker.create_topic(topic, config.kafka.partitions)?;
    }
    writeln!(
        out,
        "embedded broker on {brokers}; topics: {}",
        join(&topics)
    )?;

    let outputs: Vec<&str> = topics
        .iter()
        .filter(|t| !config.kafka.input_topics.contains(t) || plugins_emit_to(&plugins, t))
        .map(String::as_str)
        .collect();
    let watcher: StreamConsumer = kafka::client_config(
        &brokers,
        &config.kafka,
        &[
            // Assigned its topics, never joins: librdkafka wants a group
            // id for an assignment all the same.
            ("group.id", "todo-eventd-demo-watcher"),
        ],
    )
    .create()
    .context("creating the demo's watcher")?;
    let partitions = config.kafka.partitions;
    kafka::from_the_start(outputs.iter().map(|topic| (*topic, partitions)))
        .and_then(|assignment| watcher.assign(&assignment))
        .context("assigning the demo's watcher its topics")?;

    let input = config.kafka.input_topics[0].clone();
    let pipeline = Pipeline::new(config, plugins);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = pipeline.run(&brokers, async {
        let _ = stopped.await;
    });
    let show = async {
        let producer = kafka::producer(&brokers, &pipeline.config.kafka)?;
        let events = sample_events(jiff::Timestamp::now().as_millisecond());
        let sent = kafka::produce_lines(
            &producer,
            &input,
            events.join("\n").as_bytes(),
            pipeline.config.kafka.max_record_bytes(),
        )
        .await?;
        writeln!(
            out,
            "produced {sent} events to {input} (two of them malformed)\n"
        )?;
        let mut seen = Seen::default();
        let deadline = tokio::time::Instant::now() + DEMO_TIMEOUT;
        while !seen.complete() {
            let Ok(message) = tokio::time::timeout_at(deadline, watcher.recv()).await else {
                writeln!(out, "(timed out waiting for more output)")?;
                break;
            };
            // Detached as the workers do: anyone may write to these topics,
            // and a header name that is not UTF-8 would panic rdkafka's reader.
            let message = crate::pipeline::detach(&message.context("reading output topics")?);
            let header = |name: &str| kafka::header(&message, name);
            let Some(plugin) =
                header("source.plugin").or_else(|| header("error.stage").map(|_| "-".into()))
            else {
                continue; // our own input, echoed on the input topic
            };
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            if message.topic() == pipeline.config.kafka.dead_letter_topic {
                seen.dead_letters += 1;
                writeln!(
                    out,
                    "[{}] stage={} plugin={} reason: {}\n    original: {}",
                    message.topic(),
                    header("error.stage").unwrap_or_default(),
                    header("error.plugin").unwrap_or_else(|| "-".into()),
                    header("error.message").unwrap_or_default(),
                    value
                )?;
            } else {
                match plugin.as_str() {
                    "reminders" => seen.reminders += 1,
                    "recurrence" => seen.occurrences += 1,
                    "analytics" => seen.snapshots += 1,
                    "audit" => seen.audits += 1,
                    _ => {}
                }
                writeln!(
                    out,
                    "[{}] from {plugin}, key={key}\n    {value}",
                    message.topic()
                )?;
            }
        }
        let _ = stop.send(());
        anyhow::Ok(())
    };
    let (ran, shown) = tokio::join!(run, show);
    ran?;
    shown?;
    let metrics = pipeline.telemetry.pipeline;
    writeln!(out, "\n{}", metrics.summary())?;
    Ok(metrics)
}

fn plugins_emit_to(plugins: &[Arc<Plugin>], topic: &str) -> bool {
    plugins
        .iter()
        .any(|p| p.manifest.outputs.values().any(|t| t == topic))
}

fn join(topics: &BTreeSet<String>) -> String {
    topics
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the demo has seen so far.
#[derive(Default)]
struct Seen {
    reminders: u32,
    occurrences: u32,
    snapshots: u32,
    audits: u32,
    dead_letters: u32,
}

impl Seen {
    fn complete(&self) -> bool {
        self.reminders >= 1
            && self.occurrences >= 1
            && self.snapshots >= 2
            && self.audits >= 1
            && self.dead_letters >= 2
    }
}

/// The bundled plugins, with the analytics snapshot interval shortened so
/// snapshots show up within the demo.
pub async fn plugins(sandbox: &Arc<Sandbox>) -> Result<Vec<Arc<Plugin>>> {
    let dir = tempfile::tempdir().context("creating a temporary plugins directory")?;
    crate::plugin::bundled::install(dir.path()).context("writing the bundled plugins")?;
    let analytics = dir.path().join("analytics.toml");
    let manifest = std::fs::read_to_string(&analytics)?
        .replace("snapshot_interval = \"60s\"", "snapshot_interval = \"3s\"");
    std::fs::write(&analytics, manifest)?;
    let report = crate::plugin::load_dir(sandbox, dir.path()).await?;
    if let Some(err) = report.errors.first() {
        anyhow::bail!("bundled plugin failed to load: {err}");
    }
    Ok(report.plugins)
}
