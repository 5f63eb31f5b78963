//! Resident memory of the daemon alone: the real `todo-eventd run` binary
//! with the bundled plugins (`plugins install`) over `BENCH_PARTITIONS`
//! partitions (default 8), fed `BENCH_EVENTS` events of the bench mix
//! (default 100 000: as many live tasks, each with state in every plugin) at
//! full speed. Samples the daemon's `VmRSS` every 20 ms until every event
//! is handled and its offset stored, and prints the peak (`VmHWM`), the
//! resident size once the load is over, and the state held.
//!
//! Run: `cargo bench -p todo-eventd --bench memory`
//! Options (env): `BENCH_BROKERS` (an external broker such as a local
//! tansu; default: the in-process mock cluster, in this bench's process so
//! the daemon's figure holds no broker), `BENCH_EVENTS`,
//! `BENCH_PARTITIONS`.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Brokers, DAEMON_TOPICS, env_or, events, status_kib};
use todo_eventd::config::Config;
use todo_eventd::kafka;

const BIN: &str = env!("CARGO_BIN_EXE_todo-eventd");

/// The value of an unlabelled metric from the admin endpoint.
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn main() {
    let total: usize = env_or("BENCH_EVENTS", 100_000);
    let partitions: i32 = env_or("BENCH_PARTITIONS", 8);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut config = Config::default();
    config.kafka.partitions = partitions;
    let topics: Vec<&str> = DAEMON_TOPICS
        .into_iter()
        .chain(["todo-eventd.plugin-state"])
        .collect();
    let broker = Brokers::from_env();
    runtime.block_on(broker.create_topics(&config.kafka, &topics, &["todo-eventd.plugin-state"]));
    let brokers = broker.bootstrap.clone();

    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let installed = Command::new(BIN)
        .args(["plugins", "install"])
        .arg(&plugins)
        .status()
        .unwrap();
    assert!(installed.success(), "plugins install");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Command::new(BIN)
        .args(["run", "--brokers", &brokers, "--admin-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--plugins")
        .arg(&plugins)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id().to_string();
    let started = Instant::now();
    while metric(port, "todo_eventd_ready") != Some(1.0) {
        assert!(started.elapsed() < Duration::from_secs(60), "daemon ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle = status_kib(&pid, "VmRSS:");

    let lines = events(total).join("\n");
    let producer = kafka::producer(&brokers, &config.kafka).unwrap();
    runtime
        .block_on(kafka::produce_lines(
            &producer,
            "task-events",
            lines.as_bytes(),
            usize::MAX,
        ))
        .unwrap();
    let loaded = Instant::now();
    let mut peak = idle;
    loop {
        peak = peak.max(status_kib(&pid, "VmRSS:"));
        let stored = metric(port, "todo_eventd_offsets_stored_total").unwrap_or(0.0);
        if stored as usize >= total {
            break;
        }
        assert!(
            loaded.elapsed() < Duration::from_secs(600),
            "{stored} of {total} handled in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let handled = loaded.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = status_kib(&pid, "VmRSS:");
    let hwm = status_kib(&pid, "VmHWM:");
    let changelog = metric(port, "todo_eventd_changelog_records_total").unwrap_or(0.0);
    let _ = Command::new("kill").arg(&pid).status();
    let _ = daemon.wait();

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{total} events (bench mix: {total} live tasks) over {partitions} partitions on {}, handled in {handled:.2?}",
        broker.name()
    );
    println!(
        "daemon RSS: idle {:.1} MiB, peak {:.1} MiB (VmHWM {:.1} MiB), after the load {:.1} MiB; {changelog} changelog records",
        mib(idle),
        mib(peak),
        mib(hwm),
        mib(after)
    );
}
