//! The pipeline under faults, on the mock cluster: a record or an emit that
//! cannot be produced, a dead-letter topic that cannot be written, bad input
//! that must not quarantine anyone, a restore that fails, a partition whose
//! plugin is stuck, a broker outage, and plugins that burn their whole
//! deadline while the admin endpoint must keep answering. Nothing is lost,
//! nothing loops silently, and whatever cannot progress is reported.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness::{CHANGELOG, Harness, echo_plugins, header};
use common::{
    TEST_PLUGIN, created_events, event, eventually, http_get, load, mode, plugin_dir, reader,
    sandbox, value,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use todo_eventd::admin::{self, Admin};
use todo_eventd::kafka::{self, OutRecord};
use todo_eventd::pipeline::Pipeline;
use todo_eventd::sandbox::{Sandbox, SandboxConfig};
use todo_eventd::telemetry::NotReady;

const TOPICS: [&str; 4] = ["task-events", "task-events.dlq", "out-topic", CHANGELOG];

/// Produces `value` with key `key` through a producer without the
/// harness's size limits.
async fn produce_raw(harness: &Harness, key: &str, value: Vec<u8>) {
    let producer = kafka::producer(
        &harness.brokers,
        &todo_eventd::config::Config::default().kafka,
    )
    .unwrap();
    let record = OutRecord {
        topic: "task-events".into(),
        partition: None,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: Vec::new(),
    };
    let delivery = record.enqueue(&producer).await.unwrap();
    delivery.await.unwrap().unwrap();
}

/// Limits `harness`'s producer to 100 kB records and returns a sandbox that
/// holds plugins to the same limit, as the daemon does.
fn with_small_records(harness: &mut Harness) -> Arc<Sandbox> {
    const MAX_RECORD_BYTES: usize = 100_000;
    harness
        .config
        .kafka
        .properties
        .insert("message.max.bytes".into(), MAX_RECORD_BYTES.to_string());
    Arc::new(
        Sandbox::new(SandboxConfig {
            max_record_bytes: MAX_RECORD_BYTES,
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

fn by_topic(seen: &[OwnedMessage], topic: &str) -> Vec<OwnedMessage> {
    seen.iter()
        .filter(|m| m.topic() == topic)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_or_emit_is_dead_lettered_and_the_records_behind_it_are_handled() {
    let mut harness = Harness::new(&TOPICS);
    // Breaking a quota is the plugin's own failure and would quarantine
    // it; here only the records matter.
    harness.config.plugins.quarantine_after = 0;
    // The producer sends at most 100 kB: a 600 kB input cannot be
    // dead-lettered whole, and a 99 kB emit does not fit either.
    let sandbox = with_small_records(&mut harness);
    // The 600 kB input is decoded (and refused for its event type), not
    // refused for its size.
    harness.config.pipeline.max_event_bytes = todo_eventd::units::ByteSize::mib(1);
    let attacker = format!(
        "{}only_user = \"u2\"\nsize = 99000\ncount = 1\n",
        mode("emit-flood")
    );
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("poisoner", TEST_PLUGIN, Some(&attacker)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let poison = serde_json::json!({
        "event_id": "poison", "event_type": "exploded", "user_id": "u1", "task_id": "t0",
        "timestamp": "2026-01-26T08:00:00Z", "task_data": {"title": "x".repeat(600_000)}
    })
    .to_string();
    produce_raw(&harness, "u1", poison.into_bytes()).await;
    let good: Vec<String> = (1..=5)
        .flat_map(|i| {
            [
                event(&format!("a-{i}"), "u1", &format!("t{i}"), "created"),
                event(&format!("b-{i}"), "u2", &format!("t{i}"), "created"),
            ]
        })
        .collect();
    harness.produce(&good).await;

    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic", "task-events.dlq"],
            |seen| {
                let outputs = by_topic(seen, "out-topic");
                let events: BTreeSet<String> = outputs
                    .iter()
                    .map(|m| value(m)["event"].as_str().unwrap().to_owned())
                    .collect();
                events.len() >= 10 && by_topic(seen, "task-events.dlq").len() >= 6
            },
            async |_| {},
        )
        .await;
    let outputs = by_topic(&seen, "out-topic");
    let events: BTreeSet<String> = outputs
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), 10, "every good record of both keys handled");
    let dead = by_topic(&seen, "task-events.dlq");
    let reasons: Vec<_> = dead.iter().map(|m| header(m, "error.message")).collect();
    assert_eq!(dead.len(), 6, "{}: {reasons:#?}", stats.summary());
    let poison = dead
        .iter()
        .find(|m| header(m, "error.stage").as_deref() == Some("decode"))
        .unwrap();
    assert!(poison.payload().unwrap().len() < 100_000);
    assert_eq!(
        header(poison, "error.original.truncated").as_deref(),
        Some("true")
    );
    assert!(
        header(poison, "error.message")
            .unwrap()
            .contains("\"exploded\" is not a known event type")
    );
    let quota: Vec<_> = dead
        .iter()
        .filter(|m| header(m, "error.kind").as_deref() == Some("quota"))
        .collect();
    assert_eq!(quota.len(), 5);
    assert!(
        header(quota[0], "error.message")
            .unwrap()
            .contains("message.max.bytes (100000)")
    );
    assert_eq!(harness.committed(), harness.end_offsets());
}

/// A key's state value and timer payload go into one changelog record. A
/// plugin that keeps each under the largest value, but not both together,
/// is refused at the call (the event dead-lettered with the reason) rather
/// than left to stall the partition on a record the producer cannot send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_too_large_for_one_changelog_record_is_refused_at_the_call() {
    let mut harness = Harness::new(&TOPICS);
    harness.config.plugins.quarantine_after = 0;
    let sandbox = with_small_records(&mut harness);
    // A 60 kB value on the first event, a 60 kB timer payload under the
    // same key on every later one; time enough for both on a busy machine.
    let hoarder = "[outputs]\nout = \"out-topic\"\n[limits]\ncall_timeout = \"5s\"\n\
                   [config]\nmode = \"big-key\"\nsize = 60000\n";
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("hoarder", TEST_PLUGIN, Some(hoarder)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let lines: Vec<String> = (0..3)
        .map(|i| event(&format!("ev-{i}"), "u1", &format!("t{i}"), "created"))
        .collect();
    harness.produce(&lines).await;
    let hoarded = |seen: &[OwnedMessage]| -> Vec<OwnedMessage> {
        by_topic(seen, CHANGELOG)
            .into_iter()
            .filter(|m| {
                m.key()
                    .is_some_and(|k| k.windows(7).any(|w| w == b"hoarder"))
            })
            .collect()
    };
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic", "task-events.dlq", CHANGELOG],
            |seen| {
                by_topic(seen, "out-topic").len() >= 3
                    && by_topic(seen, "task-events.dlq").len() >= 2
                    && !hoarded(seen).is_empty()
            },
            async |_| {},
        )
        .await;
    assert_eq!(by_topic(&seen, "out-topic").len(), 3, "{}", stats.summary());
    let dead = by_topic(&seen, "task-events.dlq");
    assert_eq!(dead.len(), 2, "{}", stats.summary());
    for (m, id) in dead.iter().zip(["ev-1", "ev-2"]) {
        assert_eq!(header(m, "source.event.id").as_deref(), Some(id));
        assert_eq!(header(m, "error.kind").as_deref(), Some("quota"));
        assert_eq!(header(m, "error.plugin").as_deref(), Some("hoarder"));
        assert_eq!(
            header(m, "error.message").as_deref(),
            Some(
                "quota: 120000 bytes of state value and timer payload under key \"big\" \
                 exceeds the largest state value (96928 bytes)"
            )
        );
    }
    // The value alone was written: one record, no timer in it.
    let hoarded = hoarded(&seen);
    assert_eq!(hoarded.len(), 1);
    assert_eq!(hoarded[0].payload().map(<[u8]>::len), Some(1 + 60_000));
    assert_eq!(harness.committed(), harness.end_offsets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_not_even_a_dead_letter_can_be_written_the_partition_stalls_loudly_then_recovers() {
    let harness = Harness::new(&TOPICS);
    let plugins = echo_plugins().await;
    let cluster = harness.broker.cluster();
    let lines: Vec<String> = (0..3)
        .map(|i| event(&format!("ev-{i}"), "u1", &format!("t{i}"), "created"))
        .collect();
    harness.produce(&lines).await;
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic", "task-events.dlq"],
            |seen| input_ids(seen).len() >= 3,
            async |pipeline| {
                // From before the first record is handled, nothing may be
                // written anywhere (as if the ACLs were wrong): outputs,
                // dead letters and state all fail for good.
                cluster.request_errors(
                    RDKafkaApiKey::Produce,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100_000],
                );
                eventually("the partition reports a stall", || {
                    matches!(
                        pipeline.telemetry.readiness.check(),
                        Err(NotReady::Stalled { ref reason, .. }) if reason.contains("cannot produce to")
                    )
                })
                .await;
                assert!(
                    pipeline
                        .telemetry
                        .encode()
                        .contains("todo_eventd_partition_stalled{topic=\"task-events\""),
                    "a metric says so"
                );
                let committed: i64 = harness.committed().values().sum();
                assert_eq!(committed, 0, "nothing committed while nothing was delivered");
                cluster.clear_request_errors(RDKafkaApiKey::Produce);
                eventually("ready again", || pipeline.telemetry.readiness.is_ready()).await;
            },
        )
        .await;
    // Each input arrived: as its output, or — the output having been
    // refused for good — dead-lettered with the reason.
    assert_eq!(
        input_ids(&seen).len(),
        3,
        "{:?}: {}",
        input_ids(&seen),
        stats.summary()
    );
    for dead in by_topic(&seen, "task-events.dlq") {
        assert_eq!(header(&dead, "error.stage").as_deref(), Some("deliver"));
    }
    assert!(stats.undeliverable.get() >= 1 || !by_topic(&seen, "out-topic").is_empty());
    assert_eq!(harness.committed(), harness.end_offsets());
}

/// The inputs that outputs or dead letters stand for.
fn input_ids(seen: &[OwnedMessage]) -> BTreeSet<String> {
    seen.iter()
        .map(|m| match m.topic() {
            "out-topic" => value(m)["event"].as_str().unwrap().to_owned(),
            _ => header(m, "source.event.id").unwrap(),
        })
        .collect()
}

/// A record over `pipeline.max_event_bytes` is dead-lettered at decode,
/// naming its size and the bound; no plugin sees it (so it cannot make one
/// run out of memory, time or output room), and the records behind it are
/// handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_record_is_dead_lettered_before_any_plugin_sees_it() {
    let mut harness = Harness::new(&TOPICS);
    harness.config.pipeline.max_event_bytes = todo_eventd::units::ByteSize::kib(2);
    let plugins = echo_plugins().await;
    let big = serde_json::json!({
        "event_id": "big", "event_type": "created", "user_id": "u1", "task_id": "t1",
        "timestamp": "2026-01-26T08:00:00Z", "task_data": {"title": "x".repeat(3000)}
    })
    .to_string();
    let size = big.len();
    let lines = [
        event("before", "u1", "t0", "created"),
        big,
        event("after", "u1", "t2", "created"),
    ];
    harness.produce(&lines).await;
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic", "task-events.dlq"],
            |seen| {
                by_topic(seen, "out-topic").len() >= 2
                    && !by_topic(seen, "task-events.dlq").is_empty()
            },
            async |_| {},
        )
        .await;
    let outputs: BTreeSet<String> = by_topic(&seen, "out-topic")
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outputs, BTreeSet::from(["before".into(), "after".into()]));
    let dead = by_topic(&seen, "task-events.dlq");
    assert_eq!(dead.len(), 1, "{}", stats.summary());
    assert_eq!(header(&dead[0], "error.stage").as_deref(), Some("decode"));
    assert_eq!(header(&dead[0], "error.plugin"), None);
    assert_eq!(
        header(&dead[0], "error.message"),
        Some(format!(
            "record of {size} bytes exceeds pipeline.max_event_bytes (2KiB)"
        ))
    );
    assert_eq!(
        dead[0].payload().map(<[u8]>::len),
        Some(size),
        "the original, whole"
    );
    assert_eq!(harness.committed(), harness.end_offsets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_quarantines_nobody() {
    let mut harness = Harness::new(&TOPICS);
    harness.config.plugins.quarantine_after = 3;
    let reject = format!("{}only_user = \"picky\"\n", mode("reject"));
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("strict", TEST_PLUGIN, Some(&reject)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let long_id = "t".repeat(1025);
    let mut lines: Vec<String> = (0..5)
        .map(|i| event(&format!("long-{i}"), "u1", &long_id, "created"))
        .collect();
    lines
        .extend((0..5).map(|i| event(&format!("picky-{i}"), "picky", &format!("p{i}"), "created")));
    lines.extend((0..5).map(|i| event(&format!("good-{i}"), "u1", &format!("g{i}"), "created")));
    harness.produce(&lines).await;
    let metrics = Arc::new(std::sync::Mutex::new(String::new()));
    let (seen, _) = harness
        .run_until(
            plugins,
            &["out-topic", "task-events.dlq"],
            // 5 decode dead letters, 5 echo outputs for picky, 5 rejections,
            // 5 echo outputs for the good ones.
            |seen| seen.len() >= 20,
            async |pipeline| {
                let metrics = metrics.clone();
                eventually("all handled", || {
                    pipeline.telemetry.pipeline.offsets_stored.get() >= 15
                })
                .await;
                *metrics.lock().unwrap() = pipeline.telemetry.encode();
            },
        )
        .await;
    let kinds: BTreeMap<String, usize> =
        by_topic(&seen, "task-events.dlq")
            .iter()
            .fold(BTreeMap::new(), |mut kinds, m| {
                let kind =
                    header(m, "error.kind").unwrap_or_else(|| header(m, "error.stage").unwrap());
                *kinds.entry(kind).or_default() += 1;
                kinds
            });
    assert_eq!(
        kinds,
        BTreeMap::from([("decode".into(), 5), ("plugin-error".into(), 5)])
    );
    let decode = by_topic(&seen, "task-events.dlq")
        .into_iter()
        .find(|m| header(m, "error.stage").as_deref() == Some("decode"))
        .unwrap();
    assert_eq!(
        header(&decode, "error.message").as_deref(),
        Some("task_id: is 1025 bytes long; ids may be at most 256 bytes")
    );
    assert_eq!(by_topic(&seen, "out-topic").len(), 10);
    let metrics = metrics.lock().unwrap();
    assert!(
        !metrics.contains("todo_eventd_plugin_quarantines_total{plugin=\"strict\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("todo_eventd_plugin_quarantined{plugin=\"strict\"} 0")
            || !metrics.contains("todo_eventd_plugin_quarantined{plugin=\"strict\"}")
    );
}

/// A member restores at most `pipeline.max_concurrent_restores` partitions
/// at once — each read is a consumer of its own, with its own fetch
/// buffers —; the others wait their turn, not ready, and all restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_take_turns() {
    let mut harness = Harness::new(&TOPICS);
    harness.config.pipeline.max_concurrent_restores = 1;
    // Every request takes 200 ms: each restore reads for at least that.
    harness
        .broker
        .cluster()
        .broker_round_trip_time(1, Duration::from_millis(200))
        .unwrap();
    let pipeline = Pipeline::new(harness.config.clone(), echo_plugins().await);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = pipeline.run(&harness.brokers, async {
        let _ = stopped.await;
    });
    let watch = async {
        let (readiness, stats) = (&pipeline.telemetry.readiness, &pipeline.telemetry.pipeline);
        let (mut most, mut waited) = (0, false);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !readiness.is_ready() && Instant::now() < deadline {
            let running = stats.restores_running.get();
            most = most.max(running);
            // Restoring, and not reading: waiting for a turn.
            waited |= matches!(readiness.check(), Err(NotReady::Restoring(n)) if n > running);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = readiness.is_ready();
        let _ = stop.send(());
        (ready, most, waited)
    };
    let (ran, (ready, most, waited)) = tokio::join!(run, watch);
    ran.unwrap();
    assert!(ready, "every partition restored in turn");
    assert_eq!(most, 1, "restores read one at a time");
    assert!(waited, "a partition waited for its turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_that_fails_is_retried_and_restores_everything() {
    let harness = Harness::new(&TOPICS);
    let plugins = echo_plugins().await;
    let first: Vec<String> = (0..10)
        .map(|i| event(&format!("a-{i}"), "u1", &format!("t{i}"), "created"))
        .collect();
    harness.produce(&first).await;
    let (seen, _) = harness
        .run_until(
            plugins.clone(),
            &["out-topic"],
            |seen| seen.len() >= 10,
            async |_| {},
        )
        .await;
    let counts: BTreeSet<u64> = seen
        .iter()
        .map(|m| value(m)["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, (1..=10).collect());

    // The next member cannot read the changelog (as if its ACLs were
    // wrong) until the test says otherwise.
    let changelog = harness.config.kafka.changelog_topic();
    let cluster = harness.broker.cluster();
    cluster
        .topic_error(
            &changelog,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let pipeline = Pipeline::new(harness.config.clone(), plugins);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = pipeline.run(&harness.brokers, async {
        let _ = stopped.await;
    });
    let check = async {
        eventually("failed restores", || {
            pipeline.telemetry.pipeline.restore_failures.get() >= 3
        })
        .await;
        assert!(
            !pipeline.telemetry.readiness.is_ready(),
            "not ready while restoring"
        );
        cluster
            .topic_error(&changelog, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
            .unwrap();
        eventually("restored and ready", || {
            pipeline.telemetry.readiness.is_ready()
        })
        .await;
        let second: Vec<String> = (0..5)
            .map(|i| event(&format!("b-{i}"), "u1", &format!("s{i}"), "created"))
            .collect();
        harness.produce(&second).await;
        let reader = reader(&harness.brokers, &["out-topic"]);
        let mut counts = BTreeSet::new();
        while counts.len() < 15 {
            let message = tokio::time::timeout(Duration::from_secs(60), reader.recv())
                .await
                .unwrap()
                .unwrap();
            counts.insert(value(&message.detach())["count"].as_u64().unwrap());
        }
        let _ = stop.send(());
        counts
    };
    let (ran, counts) = tokio::join!(run, check);
    ran.unwrap();
    assert_eq!(
        counts,
        (1..=15).collect(),
        "the state count went on from 10: the partition was not started empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_partition_does_not_hold_up_the_others() {
    let mut harness = Harness::new(&TOPICS);
    harness.config.pipeline.queue_capacity = 1;
    harness.config.pipeline.max_in_flight = 1;
    // The stuck user's every event waits in a WASI sleep until its 2 s
    // deadline; an echo plugin beside it answers everyone.
    let stuck = format!(
        "{}only_user = \"stuck\"\n",
        mode("sleep").replace("call_timeout = \"50ms\"", "call_timeout = \"2s\"")
    );
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("sleepy", TEST_PLUGIN, Some(&stuck)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut lines: Vec<String> = (0..50)
        .map(|i| event(&format!("stuck-{i}"), "stuck", &format!("s{i}"), "created"))
        .collect();
    lines.extend((0..60).map(|i| {
        event(
            &format!("fast-{i}"),
            &format!("user{i}"),
            &format!("f{i}"),
            "created",
        )
    }));
    harness.produce(&lines).await;
    // Which partition each input landed on.
    let inputs = reader(&harness.brokers, &["task-events"]);
    let mut partition_of = BTreeMap::new();
    while partition_of.len() < lines.len() {
        let message = inputs.recv().await.unwrap().detach();
        let id = value(&message)["event_id"].as_str().unwrap().to_owned();
        partition_of.insert(id, message.partition());
    }
    let stuck_partition = partition_of["stuck-0"];
    let elsewhere: BTreeSet<String> = partition_of
        .iter()
        .filter(|(id, p)| id.starts_with("fast") && **p != stuck_partition)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(elsewhere.len() >= 10, "{elsewhere:?}");

    let started = Instant::now();
    let (seen, _) = harness
        .run_until(
            plugins,
            &["out-topic"],
            |seen| {
                let done: BTreeSet<String> = seen
                    .iter()
                    .map(|m| value(m)["event"].as_str().unwrap().to_owned())
                    .collect();
                elsewhere.is_subset(&done)
            },
            async |_| {},
        )
        .await;
    let handled: BTreeSet<String> = seen
        .iter()
        .map(|m| value(m)["event"].as_str().unwrap().to_owned())
        .collect();
    assert!(elsewhere.is_subset(&handled));
    // The stuck partition needs 50 × 2 s; the others did not wait for it.
    let stuck_done = handled.iter().filter(|id| id.starts_with("stuck")).count();
    assert!(
        stuck_done < 50,
        "{stuck_done} stuck events done after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_rides_out_a_broker_outage() {
    let mut harness = Harness::new(&TOPICS);
    harness
        .config
        .kafka
        .properties
        .insert("statistics.interval.ms".into(), "500".into());
    let plugins = echo_plugins().await;
    let lines: Vec<String> = (0..200)
        .map(|i| {
            event(
                &format!("ev-{i:03}"),
                &format!("u{}", i % 20),
                &format!("t{i}"),
                "created",
            )
        })
        .collect();
    let cluster = harness.broker.cluster();
    let (seen, stats) = harness
        .run_until(
            plugins,
            &["out-topic"],
            |seen| {
                let ids: BTreeSet<&str> = seen.iter().map(header_event).collect();
                ids.len() >= 200
            },
            async |pipeline| {
                harness.produce(&lines[..100]).await;
                eventually("the first half handled", || {
                    pipeline.telemetry.pipeline.offsets_stored.get() >= 100
                })
                .await;
                cluster.broker_down(1).unwrap();
                eventually("not ready while the broker is down", || {
                    pipeline.telemetry.readiness.check() == Err(NotReady::BrokerUnreachable)
                })
                .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                cluster.broker_up(1).unwrap();
                eventually("ready again", || pipeline.telemetry.readiness.is_ready()).await;
                harness.produce(&lines[100..]).await;
            },
        )
        .await;
    let ids: BTreeSet<&str> = seen.iter().map(header_event).collect();
    assert_eq!(ids.len(), 200, "{}", stats.summary());
    assert_eq!(harness.committed(), harness.end_offsets());
}

/// A broker that stops answering (every answer held for ten minutes) just
/// as the daemon stops, with offsets still to commit: the last commit is
/// given up on in bounded time (what was not committed is redelivered), and
/// the group is left on that commit's thread when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_that_stops_answering_does_not_hold_up_the_shutdown() {
    let mut harness = Harness::new(&TOPICS);
    harness.config.pipeline.shutdown_timeout = Duration::from_secs(2);
    // No periodic commit after the first (at once, with nothing to
    // commit): every stored offset is left to the last one.
    harness.config.pipeline.commit_interval = Duration::from_secs(3600);
    harness.produce(&created_events(20)).await;
    let pipeline = Pipeline::new(harness.config.clone(), echo_plugins().await);
    let cluster = harness.broker.cluster();
    let stopping = harness
        .run_while(&pipeline, async {
            eventually("every event handled", || {
                pipeline.telemetry.pipeline.offsets_stored.get() >= 20
            })
            .await;
            cluster
                .broker_round_trip_time(1, Duration::from_secs(600))
                .unwrap();
            Instant::now()
        })
        .await;
    let took = stopping.elapsed();
    // About 5 s (the last commit's bound); without the bounds the last
    // commit waits for over ten minutes.
    assert!(took < Duration::from_secs(25), "the stop took {took:?}");
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
}

fn header_event(message: &OwnedMessage) -> &str {
    message
        .headers()
        .and_then(|h| {
            rdkafka::message::Headers::iter(h)
                .find(|h| h.key == "source.event.id")
                .and_then(|h| h.value)
        })
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_default()
}

/// Plugins on every partition burn their whole deadline on every event,
/// on a runtime of two threads: the admin endpoint still answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_answers_while_every_plugin_burns_its_deadline() {
    let harness = Harness::new(&TOPICS);
    let busy = mode("loop").replace("call_timeout = \"50ms\"", "call_timeout = \"2s\"");
    let dir = plugin_dir(&[("busy", TEST_PLUGIN, Some(&busy))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let lines: Vec<String> = created_events(30);
    harness.produce(&lines).await;
    let pipeline = Pipeline::new(harness.config.clone(), plugins);
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Admin {
        telemetry: pipeline.telemetry.clone(),
        plugins: pipeline.plugins.clone(),
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(server.serve(listener, async {
        let _ = admin_stopped.await;
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = pipeline.run(&harness.brokers, async {
        let _ = stopped.await;
    });
    let probe = async {
        eventually("every partition busy", || {
            pipeline.telemetry.pipeline.events_in.get() >= 3
        })
        .await;
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let started = Instant::now();
            let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
                .await
                .unwrap();
            slowest = slowest.max(started.elapsed());
            assert_eq!((status, body.as_str()), (200, "ok\n"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
        slowest
    };
    let (ran, slowest) = tokio::join!(run, probe);
    ran.unwrap();
    let _ = stop_admin.send(());
    admin.await.unwrap();
    // A call holding a runtime thread for its whole deadline would keep
    // this at up to 2 s.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest /healthz: {slowest:?}"
    );
}

/// A member fenced for good (another process joined with its
/// `group.instance.id`: librdkafka's fatal error) takes no more part in
/// the group. The pipeline gives its partitions up and returns the error
/// with librdkafka's reason, so the process exits and is restarted, instead of staying up, reporting ready, with
/// nothing assigned (before: the error was counted and logged, and the
/// pipeline ran on).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_fenced_out_of_its_group_stops_with_the_error() {
    let mut harness = Harness::new(&TOPICS);
    harness
        .config
        .kafka
        .properties
        .insert("group.instance.id".into(), "replica-0".into());
    let plugins = echo_plugins().await;
    harness.produce(&created_events(5)).await;
    let pipeline = Pipeline::new(harness.config.clone(), plugins);
    let ran = pipeline.run(&harness.brokers, std::future::pending());
    let fence = async {
        eventually("the first records handled", || {
            pipeline.telemetry.pipeline.offsets_stored.get() >= 5
        })
        .await;
        harness.broker.cluster().request_errors(
            RDKafkaApiKey::Heartbeat,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID; 10],
        );
        std::future::pending::<()>().await;
    };
    let ran = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            ran = ran => ran,
            () = fence => unreachable!(),
        }
    })
    .await
    .expect("the pipeline stops within a minute of being fenced");
    let err = ran.expect_err("the pipeline returns the fatal error");
    let err = err.to_string();
    assert!(
        err.starts_with("consuming from task-events: the consumer failed for good (")
            && err.contains("group.instance.id"),
        "{err}"
    );
    assert!(!pipeline.telemetry.readiness.is_ready());
}
