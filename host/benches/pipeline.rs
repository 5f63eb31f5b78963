//! End-to-end throughput: events/s through the three bundled plugins versus
//! a raw passthrough (consume → produce → store offset after the ack, same
//! client settings, no decoding, no plugins), on the same broker in the same
//! run.
//!
//! Run: `cargo bench -p todo-eventd --bench pipeline`
//! Options (env): `BENCH_EVENTS` (default 100000), `BENCH_BROKERS` (an
//! external broker such as a local tansu; default: the in-process mock
//! cluster), `BENCH_PARTITIONS` (default 8), `BENCH_FLUSH_MS` and
//! `BENCH_FLUSH_IDLE_MS` (the pipeline's `changelog_flush_interval` and
//! `changelog_flush_idle`; default their defaults, 1 s and 50 ms),
//! `BENCH_PERF_MAP` (set: write the plugins' perf map, `sandbox.perf_map`,
//! so `perf report` names the functions inside them).
//!
//! Each phase also prints the process's CPU time per event over the same
//! span as its rate (all threads; on the mock cluster that includes the
//! broker) and the cores it used.
//!
//! Rates are measured from the first record consumed to the last input
//! offset stored, so group-join time does not count — but the last held
//! state changes do (written once the partition's state has been idle for
//! `changelog_flush_idle`, 50 ms). Each pipeline run also prints its steady rate, between 10 % and
//! 90 % of the records handled: it leaves out the start, where partitions
//! begin fetching one after another, and the end.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use todo_eventd::config::Config;
use todo_eventd::kafka;
use todo_eventd::pipeline::Pipeline;
use todo_eventd::plugin::bundled;
use todo_eventd::sandbox::{Sandbox, SandboxConfig};

mod common;

use common::{Brokers, DAEMON_TOPICS, consumer, env_or, events};

async fn preload(brokers: &str, config: &Config, topic: &str, lines: &[String]) {
    let producer = kafka::producer(brokers, &config.kafka).unwrap();
    for chunk in lines.chunks(20_000) {
        kafka::produce_lines(&producer, topic, chunk.join("\n").as_bytes(), usize::MAX)
            .await
            .unwrap();
    }
}

/// Consume → produce → store the offset after the ack, in order per
/// partition with a bounded window, like the pipeline but without decoding
/// or plugins.
async fn passthrough(brokers: &str, config: &Config, topic: &str, total: usize) -> Duration {
    let consumer = consumer(
        brokers,
        config,
        &[
            ("group.id", "bench-passthrough"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ],
        topic,
    );
    let producer = kafka::producer(brokers, &config.kafka).unwrap();
    let mut window = VecDeque::new();
    let mut started = None;
    let mut done = 0;
    while done < total {
        if window.len() >= 4096 || (started.is_some() && window.len() + done >= total) {
            let (partition, offset, delivery): (i32, i64, rdkafka::producer::DeliveryFuture) =
                window.pop_front().unwrap();
            delivery.await.unwrap().unwrap();
            consumer.store_offset(topic, partition, offset).unwrap();
            done += 1;
            continue;
        }
        let message = consumer.recv().await.unwrap();
        started.get_or_insert_with(|| (Instant::now(), common::cpu_time()));
        let payload = message.payload().unwrap_or_default();
        let key = message.key().unwrap_or_default();
        let delivery = loop {
            let record = FutureRecord::to("passthrough-out")
                .payload(payload)
                .key(key);
            match producer.send_result(record) {
                Ok(d) => break d,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        window.push_back((message.partition(), message.offset(), delivery));
    }
    let (started, cpu) = started.unwrap();
    let elapsed = started.elapsed();
    print_cpu(total, common::cpu_time() - cpu, elapsed);
    elapsed
}

const TEST_PLUGIN: &[u8] = include_bytes!(env!("GUEST_TEST_PLUGIN_WASM"));

/// Three stateless no-op plugins (the test plugin in `noop` mode).
async fn noop_plugins(sandbox: &Arc<Sandbox>) -> Vec<Arc<todo_eventd::plugin::Plugin>> {
    let mut plugins = Vec::new();
    for i in 1..=3 {
        let manifest =
            todo_eventd::plugin::manifest::Manifest::parse("[config]\nmode = \"noop\"\n").unwrap();
        let name = format!("noop{i}");
        let file = std::path::PathBuf::from(format!("{name}.wasm"));
        let plugin = todo_eventd::plugin::from_parts(
            sandbox,
            name,
            file,
            TEST_PLUGIN,
            manifest,
            std::path::Path::new("-"),
        )
        .await;
        plugins.push(Arc::new(plugin.unwrap()));
    }
    plugins
}

async fn through_plugins(
    brokers: &str,
    config: Config,
    plugins: Vec<Arc<todo_eventd::plugin::Plugin>>,
    total: usize,
) -> Duration {
    let pipeline = Pipeline::new(config, plugins);
    let stats = pipeline.telemetry.pipeline.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watch = async {
        let mut started = None;
        // When 10 % and 90 % of the records had been handled: the steady
        // rate between them leaves out the start (partitions assigned and
        // fetching one after another) and the end (the last held state
        // changes are written once the partition is idle, then the last
        // offsets are stored).
        let (mut tenth, mut ninetieth) = (None, None);
        loop {
            let seen = stats.events_in.get() as usize;
            if seen > 0 {
                started.get_or_insert_with(|| (Instant::now(), common::cpu_time()));
            }
            if seen * 10 >= total {
                tenth.get_or_insert_with(Instant::now);
            }
            if seen * 10 >= total * 9 {
                ninetieth.get_or_insert_with(Instant::now);
            }
            if stats.offsets_stored.get() as usize >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (started, cpu) = started.unwrap();
        let (elapsed, cpu) = (started.elapsed(), common::cpu_time() - cpu);
        let _ = stop.send(());
        let steady = ninetieth.unwrap().duration_since(tenth.unwrap());
        (elapsed, cpu, steady)
    };
    let (ran, (elapsed, cpu, steady)) = tokio::join!(
        pipeline.run(brokers, async {
            let _ = stopped.await;
        }),
        watch
    );
    ran.unwrap();
    println!("  pipeline: {}", stats.summary());
    // Both marks crossed within a poll or two: no rate to tell.
    if steady < Duration::from_millis(10) {
        println!("  steady (10–90 % of records handled): too short to tell");
    } else {
        let steady_rate = 0.8 * total as f64 / steady.as_secs_f64();
        println!("  steady (10–90 % of records handled): {steady_rate:.0} events/s");
    }
    print_cpu(total, cpu, elapsed);
    elapsed
}

/// CPU time taken while `total` events were handled in `wall`, printed
/// per event: the whole process (every thread: the pipeline or
/// passthrough, librdkafka's threads and, on the mock cluster, the broker
/// itself), and how many cores that is.
fn print_cpu(total: usize, cpu: Duration, wall: Duration) {
    println!(
        "  cpu: {:.1} µs per event ({:.2} cores)",
        cpu.as_secs_f64() * 1e6 / total as f64,
        cpu.as_secs_f64() / wall.as_secs_f64(),
    );
}

fn main() {
    // As the daemon's `main` does.
    todo_eventd::heap::limit_retained_heap();
    // `cargo bench` passes `--bench`; nothing else to parse.
    let total: usize = env_or("BENCH_EVENTS", 100_000);
    let partitions: i32 = env_or("BENCH_PARTITIONS", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = Config::default();
        config.kafka.partitions = partitions;
        common::flush_settings(&mut config);
        // Per run, each pipeline's group gets its own changelog below.
        let topics: Vec<&str> = DAEMON_TOPICS
            .into_iter()
            .chain(["passthrough-out"])
            .collect();
        let broker = Brokers::from_env();
        broker.create_topics(&config.kafka, &topics, &[]).await;
        let brokers = broker.bootstrap.clone();
        config.kafka.brokers = Some(brokers.clone());
        let lines = events(total);
        let bytes: usize = lines.iter().map(String::len).sum();
        println!(
            "{total} events (mean {} bytes) over {partitions} partitions on {}, changelog flush interval {:?}",
            bytes / total,
            broker.name(),
            config.pipeline.changelog_flush_interval,
        );
        preload(&brokers, &config, "task-events", &lines).await;

        let raw = passthrough(&brokers, &config, "task-events", total).await;
        let raw_rate = total as f64 / raw.as_secs_f64();
        println!(
            "{:<32} {raw_rate:>10.0} events/s ({raw:.2?})",
            "raw passthrough"
        );

        let sandbox = Arc::new(
            Sandbox::new(SandboxConfig {
                perf_map: std::env::var_os("BENCH_PERF_MAP").is_some(),
                ..SandboxConfig::default()
            })
            .unwrap(),
        );
        let bundled = bundled::load(&sandbox).await.unwrap().plugins;
        // The line compared across commits keeps the original three; the
        // audit plugin (added later) gets a line of its own.
        let three: Vec<_> = bundled
            .iter()
            .filter(|p| p.name != "audit")
            .cloned()
            .collect();
        let runs = [
            (
                "three no-op plugins (no state)",
                "bench-noop",
                noop_plugins(&sandbox).await,
            ),
            ("three bundled plugins (state)", "bench-bundled", three),
            (
                "four bundled plugins (+audit)",
                "bench-bundled-audit",
                bundled,
            ),
        ];
        for (label, group, plugins) in runs {
            let mut config = config.clone();
            config.kafka.group_id = group.into();
            let changelog = config.kafka.changelog_topic();
            broker
                .create_topics(&config.kafka, &[&changelog], &[&changelog])
                .await;
            let took = through_plugins(&brokers, config, plugins, total).await;
            let rate = total as f64 / took.as_secs_f64();
            println!(
                "{label:<32} {rate:>10.0} events/s ({took:.2?}), {:.1} % of passthrough",
                100.0 * rate / raw_rate
            );
        }
    });
}
