//! What the pipeline benches share: settings from the environment, the
//! event mix, a consumer, and a process's memory figures.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use todo_eventd::config::{Config, KafkaConfig};
use todo_eventd::kafka::{self, EmbeddedBroker};

/// The environment variable `name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's topics with the bundled plugins: input, dead letters and
/// the plugins' outputs.
pub const DAEMON_TOPICS: [&str; 5] = [
    "task-events",
    "task-events.dlq",
    "reminders",
    "analytics",
    "audit",
];

/// The broker a bench runs on: the one `BENCH_BROKERS` names (such as a
/// local tansu), or else an in-process mock cluster started here.
pub struct Brokers {
    /// The bootstrap servers.
    pub bootstrap: String,
    embedded: Option<EmbeddedBroker>,
}

impl Brokers {
    pub fn from_env() -> Self {
        match std::env::var("BENCH_BROKERS") {
            Ok(bootstrap) => Self {
                bootstrap,
                embedded: None,
            },
            Err(_) => {
                let broker = EmbeddedBroker::start().unwrap();
                Self {
                    bootstrap: broker.bootstrap_servers(),
                    embedded: Some(broker),
                }
            }
        }
    }

    /// Whether this is the in-process mock cluster.
    pub fn is_mock(&self) -> bool {
        self.embedded.is_some()
    }

    /// How a bench's summary line names it.
    pub fn name(&self) -> &str {
        if self.is_mock() {
            "the in-process mock cluster"
        } else {
            &self.bootstrap
        }
    }

    /// Creates those of `topics` that are missing, with `kafka.partitions`
    /// partitions each; on an external broker those in `compacted` are
    /// compacted.
    pub async fn create_topics(&self, kafka: &KafkaConfig, topics: &[&str], compacted: &[&str]) {
        match &self.embedded {
            Some(broker) => {
                for topic in topics {
                    broker.create_topic(topic, kafka.partitions).unwrap();
                }
            }
            None => {
                let set =
                    |names: &[&str]| names.iter().map(|&n| n.to_owned()).collect::<BTreeSet<_>>();
                kafka::ensure_topics(&self.bootstrap, kafka, &set(topics), &set(compacted))
                    .await
                    .unwrap();
            }
        }
    }
}

/// The changelog flush settings from `BENCH_FLUSH_MS` (the pipeline's
/// `changelog_flush_interval`) and `BENCH_FLUSH_IDLE_MS`
/// (`changelog_flush_idle`), where set.
#[allow(dead_code, reason = "the memory bench keeps the defaults")]
pub fn flush_settings(config: &mut Config) {
    let millis = |name: &str| {
        std::env::var(name).ok().map(|ms| {
            let ms = ms
                .parse()
                .unwrap_or_else(|_| panic!("{name}: milliseconds, not {ms:?}"));
            Duration::from_millis(ms)
        })
    };
    if let Some(interval) = millis("BENCH_FLUSH_MS") {
        config.pipeline.changelog_flush_interval = interval;
    }
    if let Some(idle) = millis("BENCH_FLUSH_IDLE_MS") {
        config.pipeline.changelog_flush_idle = idle;
    }
}

/// A realistic mix (~360 bytes each): mostly creates with reminders, some
/// updates, completions of weekly recurring tasks and deletes.
pub fn events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let user = format!("user-{}", i % 5000);
            let task = format!("task-{i}");
            let (kind, extra) = match i % 10 {
                0..=5 => ("created", r#","remind_at":"2030-01-01T08:00:00Z""#),
                6 | 7 => ("updated", r#","priority":"high""#),
                8 => ("completed", r#","recurrence":{"pattern":"weekly","interval":1},"completed":true"#),
                _ => ("deleted", ""),
            };
            format!(
                r#"{{"event_id":"ev-{i}","event_type":"{kind}","user_id":"{user}","task_id":"{task}","timestamp":"2026-01-26T08:00:00Z","task_data":{{"title":"Benchmark task number {i}","description":"Generated","priority":"medium","tags":["bench","load"],"due_at":"2030-01-01T09:00:00Z"{extra}}}}}"#
            )
        })
        .collect()
}

/// The CPU time this process has used so far, user and system, all threads.
#[allow(dead_code, reason = "read by the pipeline bench only")]
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a `rusage` into the pointer it is given,
    // which points at one; `RUSAGE_SELF` is a valid `who`.
    #[allow(unsafe_code)]
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A `/proc/PID/status` figure in KiB (`field` such as `VmRSS:` or
/// `VmHWM:`; `pid` a number or `self`); 0 if it cannot be read.
#[allow(dead_code, reason = "read by the memory and latency benches only")]
pub fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A consumer of `topic` with the daemon's client settings (`config.kafka`)
/// and `properties` (its group, where to start, …).
#[allow(dead_code, reason = "the memory bench reads no topic")]
pub fn consumer(
    brokers: &str,
    config: &Config,
    properties: &[(&str, &str)],
    topic: &str,
) -> StreamConsumer {
    let consumer: StreamConsumer = kafka::client_config(brokers, &config.kafka, properties)
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribed");
    consumer
}
