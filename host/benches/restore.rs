//! State restore rate: changelog records applied per second when a
//! partition is assigned.
//!
//! Run: `cargo bench -p todo-eventd --bench restore`
//! Options (env): `BENCH_KEYS` (default 30000 — the in-process mock
//! cluster keeps at most 5 MiB per partition), `BENCH_BROKERS` (an external
//! broker such as a local tansu, e.g. with `BENCH_KEYS=1000000`).

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use todo_eventd::config::Config;
use todo_eventd::kafka::{self, EmbeddedBroker, OutRecord};
use todo_eventd::pipeline::restore_partition;
use todo_eventd::state::changelog;

fn main() {
    // As the daemon's `main` does.
    todo_eventd::heap::limit_retained_heap();
    let keys: usize = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = Config::default();
        let topic = config.kafka.changelog_topic();
        let embedded;
        let brokers = match std::env::var("BENCH_BROKERS") {
            Ok(brokers) => {
                let topics = BTreeSet::from([topic.clone()]);
                kafka::ensure_topics(&brokers, &config.kafka, &topics, &topics).await.unwrap();
                brokers
            }
            Err(_) => {
                embedded = EmbeddedBroker::start().unwrap();
                embedded.create_topic(&topic, 1).unwrap();
                embedded.bootstrap_servers()
            }
        };
        // Analytics-like state: one ~120-byte JSON value per key.
        let producer = kafka::producer(&brokers, &config.kafka).unwrap();
        let value = br#"{"created":12,"completed":7,"deleted":1,"open":{"task-1":{"due":1769414400000}},"by_priority":{"high":3}}"#;
        let started = Instant::now();
        let mut pending = Vec::new();
        for i in 0..keys {
            let record = OutRecord {
                topic: topic.clone(),
                partition: Some(0),
                key: Some(changelog::key("task-events", "analytics", changelog::EntryKind::Key, &format!("user:{i:08}"))),
                value: changelog::key_value(Some(value), None),
                headers: Vec::new(),
            };
            pending.push(record.enqueue(&producer).await.unwrap());
            if pending.len() >= 10_000 {
                for d in pending.drain(..) {
                    d.await.unwrap().unwrap();
                }
            }
        }
        for d in pending.drain(..) {
            d.await.unwrap().unwrap();
        }
        println!("wrote {keys} changelog records in {:.2?}", started.elapsed());

        let client = kafka::client_config(&brokers, &config.kafka, &[]);
        let started = Instant::now();
        let restorer = tokio::task::spawn_blocking(move || {
            let cancel = std::sync::atomic::AtomicBool::new(false);
            restore_partition(&client, &topic, 0, "task-events", Duration::from_secs(600), &cancel)
                .unwrap()
        })
        .await
        .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(restorer.applied as usize, keys);
        let (states, _) = restorer.into_parts();
        assert_eq!(states["analytics"].len(), keys);
        println!(
            "restored {keys} keys in {elapsed:.2?}: {:.0} records/s",
            keys as f64 / elapsed.as_secs_f64(),
        );
    });
}
