//! End-to-end latency at a steady rate: events produced at `BENCH_RATE`
//! per second for `BENCH_SECONDS` through the four bundled plugins; for
//! each, the time from handing it to the producer to its audit record
//! being readable on the `audit` output (so a consumer's fetch wait is
//! included). Prints p50/p99/p999/max and the rate achieved, beside the
//! floor the broker sets: the same records at the same rate produced to a
//! topic and read straight back (one hop, measured before the pipeline
//! starts; the pipeline's path is two).
//!
//! Then reminder lateness: `BENCH_TIMERS` reminders (default 100 000) are
//! scheduled over the following 30 s, all pending at once; for each, how
//! long after its remind time the reminder was readable on `reminders`.
//!
//! Run: `cargo bench -p todo-eventd --bench latency`
//! Options (env): `BENCH_RATE` (default 5000), `BENCH_SECONDS` (default
//! 20), `BENCH_TIMERS` (default 100000), `BENCH_BROKERS` (an external
//! broker such as a local tansu; default: the in-process mock cluster),
//! `BENCH_PARTITIONS` (default 8), `BENCH_FLUSH_MS` and
//! `BENCH_FLUSH_IDLE_MS` (the pipeline's `changelog_flush_interval` and
//! `changelog_flush_idle`; default their defaults, 1 s and 50 ms).

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use todo_eventd::config::Config;
use todo_eventd::kafka;
use todo_eventd::offline::nearest_rank;
use todo_eventd::pipeline::Pipeline;
use todo_eventd::plugin::bundled;
use todo_eventd::sandbox::{Sandbox, SandboxConfig};

mod common;

use common::{Brokers, DAEMON_TOPICS, consumer, env_or, events, status_kib};

/// A consumer in a group of its own reading `topic` from `reset`
/// (`earliest`/`latest`), fetching with little wait.
fn reader(brokers: &str, config: &Config, group: &str, reset: &str, topic: &str) -> StreamConsumer {
    consumer(
        brokers,
        config,
        &[
            ("group.id", group),
            ("auto.offset.reset", reset),
            ("fetch.wait.max.ms", "5"),
        ],
        topic,
    )
}

fn main() {
    // As the daemon's `main` does.
    todo_eventd::heap::limit_retained_heap();
    let rate: usize = env_or("BENCH_RATE", 5000);
    let seconds: usize = env_or("BENCH_SECONDS", 20);
    let partitions: i32 = env_or("BENCH_PARTITIONS", 8);
    let total = rate * seconds;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = Config::default();
        config.kafka.partitions = partitions;
        config.kafka.group_id = "bench-latency".into();
        common::flush_settings(&mut config);
        // librdkafka properties for the pipeline's clients, e.g.
        // `BENCH_KAFKA=fetch.wait.max.ms=10,linger.ms=1`.
        for pair in std::env::var("BENCH_KAFKA").unwrap_or_default().split(',') {
            if let Some((key, value)) = pair.split_once('=') {
                config.kafka.properties.insert(key.into(), value.into());
            }
        }
        let run = std::process::id();
        let changelog = config.kafka.changelog_topic();
        let broker = Brokers::from_env();
        let all: Vec<&str> = DAEMON_TOPICS
            .into_iter()
            .chain([BASELINE_TOPIC, FORWARDED_TOPIC, changelog.as_str()])
            .collect();
        broker
            .create_topics(&config.kafka, &all, &[changelog.as_str()])
            .await;
        let brokers = broker.bootstrap.clone();
        config.kafka.brokers = Some(brokers.clone());

        // The floor the broker sets, before the pipeline runs.
        let one_hop = floor(&brokers, &config, run, false, rate, seconds).await;
        let two_hops = floor(&brokers, &config, run, true, rate, seconds).await;

        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
        let plugins = bundled::load(&sandbox).await.unwrap().plugins;
        let pipeline = Pipeline::new(config.clone(), plugins);
        let readiness = pipeline.telemetry.readiness.clone();
        let stats = pipeline.telemetry.pipeline.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let brokers = brokers.clone();
            async move {
                pipeline
                    .run(&brokers, async {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        while !readiness.is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let reader = reader(
            &brokers,
            &config,
            &format!("bench-latency-reader-{run}"),
            "earliest",
            "audit",
        );
        // Let the reader join before the clock starts.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let producer = kafka::producer(&brokers, &config.kafka).unwrap();
        let prefix = format!("lat{run}-");
        let (took, mut latencies) = paced(
            &producer,
            "task-events",
            &reader,
            (&records(total, &prefix), &prefix),
            rate,
            seconds,
        )
        .await;
        let lateness = reminder_lateness(&brokers, &config, run).await;
        let _ = stop.send(());
        running.await.unwrap().unwrap();

        latencies.sort_unstable();
        println!(
            "{total} events at {rate}/s over {partitions} partitions on {}: produced in {took:.2?} ({:.0} events/s), {} audit records read",
            broker.name(),
            total as f64 / took.as_secs_f64(),
            latencies.len()
        );
        if latencies.is_empty() {
            println!("no outputs read");
            return;
        }
        report("latency produce -> audit output readable", &latencies);
        for (what, latencies) in [
            ("the broker alone, one hop (produce -> readable)", &one_hop),
            ("two hops through a forwarder (the pipeline's path)", &two_hops),
        ] {
            if !latencies.is_empty() {
                report(what, latencies);
            }
        }
        report_lateness(lateness);
        println!("pipeline: {}", stats.summary());
    });
}

/// The topics of the broker-only floor: records are produced to the first;
/// for two hops a forwarder copies them to the second.
const BASELINE_TOPIC: &str = "latency-baseline";
const FORWARDED_TOPIC: &str = "latency-baseline-forwarded";

/// The latency the broker alone sets at this rate, sorted: the bench's
/// records produced to [`BASELINE_TOPIC`] and read back there, or, with
/// `forwarded`, copied to [`FORWARDED_TOPIC`] by a consumer and producer set
/// up as the pipeline's (fetch wait, producer settings) and read back there.
async fn floor(
    brokers: &str,
    config: &Config,
    run: u32,
    forwarded: bool,
    rate: usize,
    seconds: usize,
) -> Vec<Duration> {
    let hops = if forwarded { 2 } else { 1 };
    let group = |role: &str| format!("bench-latency-floor{hops}-{role}-{run}");
    let read_from = if forwarded {
        FORWARDED_TOPIC
    } else {
        BASELINE_TOPIC
    };
    let reader = reader(brokers, config, &group("reader"), "earliest", read_from);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let forwarder = forwarded.then(|| {
        let consumer = consumer(
            brokers,
            config,
            &[
                ("group.id", group("forwarder").as_str()),
                ("auto.offset.reset", "latest"),
                ("fetch.wait.max.ms", "10"),
            ],
            BASELINE_TOPIC,
        );
        let producer = kafka::producer(brokers, &config.kafka).unwrap();
        tokio::spawn(async move {
            let mut stopped = std::pin::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    message = consumer.recv() => {
                        let message = message.unwrap();
                        let mut record = FutureRecord::to(FORWARDED_TOPIC)
                            .payload(message.payload().unwrap_or_default());
                        if let Some(key) = message.key() {
                            record = record.key(key);
                        }
                        // Delivered in the background, as the pipeline's
                        // outputs are.
                        drop(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                    }
                }
            }
        })
    });
    // Let the readers join before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let producer = kafka::producer(brokers, &config.kafka).unwrap();
    let prefix = format!("floor{hops}-{run}-");
    let records = records(rate * seconds, &prefix);
    let (_, mut latencies) = paced(
        &producer,
        BASELINE_TOPIC,
        &reader,
        (&records, &prefix),
        rate,
        seconds,
    )
    .await;
    let _ = stop.send(());
    if let Some(forwarder) = forwarder {
        forwarder.await.unwrap();
    }
    latencies.sort_unstable();
    latencies
}

/// `total` records of the bench mix as (key, value) pairs, keyed by user id
/// as producers do, their event ids `{prefix}{index}`; made before a clock
/// starts so a paced loop only sends.
fn records(total: usize, prefix: &str) -> Vec<(String, String)> {
    events(total)
        .into_iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let key = value["user_id"].as_str().unwrap_or_default().to_owned();
            let line = line.replacen("\"event_id\":\"ev-", &format!("\"event_id\":\"{prefix}"), 1);
            (key, line)
        })
        .collect()
}

/// Sends `records` to `topic` at `rate` per second while `reader` reads
/// records carrying their event ids (`{prefix}{index}`); returns how long sending took and, per record
/// read back, the time from its send to its being readable.
async fn paced(
    producer: &FutureProducer,
    topic: &str,
    reader: &StreamConsumer,
    (records, prefix): (&[(String, String)], &str),
    rate: usize,
    seconds: usize,
) -> (Duration, Vec<Duration>) {
    let total = records.len();
    let sent: Mutex<Vec<Option<Instant>>> = Mutex::new(vec![None; total]);
    let produce = async {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut next = 0;
        while next < total {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
            while next < total && next < due {
                let (key, line) = &records[next];
                loop {
                    let record = FutureRecord::to(topic).payload(line).key(key);
                    if producer.send_result(record).is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                sent.lock().unwrap()[next] = Some(Instant::now());
                next += 1;
            }
        }
        started.elapsed()
    };
    let read = async {
        let mut latencies = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 60);
        while latencies.len() < total && Instant::now() < deadline {
            let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), reader.recv()).await
            else {
                continue;
            };
            let now = Instant::now();
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
            let Some(index) = value["event_id"]
                .as_str()
                .and_then(|id| id.strip_prefix(prefix))
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            if let Some(at) = sent.lock().unwrap()[index] {
                latencies.push(now - at);
            }
        }
        latencies
    };
    tokio::join!(produce, read)
}

/// Prints the percentiles of sorted `latencies` under `what`.
fn report(what: &str, latencies: &[Duration]) {
    println!(
        "{what}, {} read: p50 {:.1?}  p99 {:.1?}  p999 {:.1?}  max {:.1?}",
        latencies.len(),
        nearest_rank(latencies, 0.5),
        nearest_rank(latencies, 0.99),
        nearest_rank(latencies, 0.999),
        latencies[latencies.len() - 1]
    );
}

/// Schedules `BENCH_TIMERS` reminders over the next 30 s (all produced
/// first, so all are pending at once) and returns, per reminder read back,
/// how late it was readable after its remind time.
async fn reminder_lateness(brokers: &str, config: &Config, run: u32) -> (usize, Vec<Duration>) {
    let count: usize = env_or("BENCH_TIMERS", 100_000);
    // From the earliest offset: the reminders are told apart by their
    // task ids' prefix, so a reader that joins late still reads every one
    // (its lateness then shows the delay) instead of missing those that
    // fired before it had its partitions.
    let reader = reader(
        brokers,
        config,
        &format!("bench-lateness-reader-{run}"),
        "earliest",
        "reminders",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    // Fires from 20 s ahead (time to produce them all) over 30 s.
    let first = now_ms + 20_000;
    let lines: Vec<String> = (0..count)
        .map(|i| {
            let remind = first + (i as i64 * 30_000) / count as i64;
            let at = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
            format!(
                r#"{{"event_id":"tim{run}-{i}","event_type":"created","user_id":"user-{}","task_id":"tim{run}-{i}","timestamp":"{}","task_data":{{"title":"Reminder {i}","due_at":"{}","remind_at":"{}"}}}}"#,
                i % 5000,
                at(now_ms),
                at(remind + 3_600_000),
                at(remind)
            )
        })
        .collect();
    let producer = kafka::producer(brokers, &config.kafka).unwrap();
    for chunk in lines.chunks(20_000) {
        kafka::produce_lines(
            &producer,
            "task-events",
            chunk.join("\n").as_bytes(),
            usize::MAX,
        )
        .await
        .unwrap();
    }
    println!(
        "resident memory with {count} reminders scheduled: {} MiB (the whole bench process: pipeline, state of every task so far, the bench's own buffers{})",
        status_kib("self", "VmRSS:") / 1024,
        if std::env::var("BENCH_BROKERS").is_ok() {
            ""
        } else {
            ", and the mock cluster's data"
        }
    );
    let prefix = format!("tim{run}-");
    let mut lateness = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(120);
    while lateness.len() < count && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), reader.recv()).await
        else {
            continue;
        };
        let read_at = jiff::Timestamp::now().as_millisecond();
        let value: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
        if !value["task_id"]
            .as_str()
            .is_some_and(|t| t.starts_with(&prefix))
        {
            continue;
        }
        let Some(remind) = value["remind_at"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let late = read_at - remind.as_millisecond();
        lateness.push(Duration::from_millis(u64::try_from(late).unwrap_or(0)));
    }
    (count, lateness)
}

fn report_lateness((count, mut lateness): (usize, Vec<Duration>)) {
    lateness.sort_unstable();
    println!(
        "{count} reminders pending at once, {} read back",
        lateness.len()
    );
    if lateness.is_empty() {
        return;
    }
    println!(
        "reminder lateness (remind time -> readable on reminders): p50 {:.1?}  p99 {:.1?}  p999 {:.1?}  max {:.1?}",
        nearest_rank(&lateness, 0.5),
        nearest_rank(&lateness, 0.99),
        nearest_rank(&lateness, 0.999),
        lateness[lateness.len() - 1]
    );
}
