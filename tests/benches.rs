//! The benchmarks run with the commands BENCHMARKS.md gives, from a clean
//! clone: each bench is built by `cargo bench` and run on small inputs — on
//! the in-process mock cluster and on a local tansu — and must print the
//! result lines the issue tables are read from (the pipeline bench's
//! `three bundled plugins (state) … % of passthrough` above all, which
//! figures are compared by across commits).
//!
//! No figure is checked: speed is measured by running the benches, never
//! asserted in a test. What this guards is that the documented commands
//! keep working and keep printing what the tables quote. Ignored by the
//! fast tier (they need tansu and take minutes); the full suite runs them.
//!
//! The commands run with `--profile dev` ([`PROFILE`]): the same bench
//! code, arguments and output, built on the dependencies the test build has
//! already compiled. The `bench` profile (optimised) built wasmtime,
//! cranelift and librdkafka again, 20 of a cold CI run's 48 minutes, and
//! no figure here is read.

#![allow(clippy::unwrap_used)]

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use harness::Broker;

/// One bench at a time: they measure with both cores, and a second one
/// beside would only slow both down.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A test's turn at the benches: taken before it starts a broker, so no
/// broker starts (or idles) while another test's bench has the cores.
/// A broker a test starts is declared after its turn, so it stops before
/// the turn passes on.
struct Turn {
    _held: MutexGuard<'static, ()>,
}

fn turn() -> Turn {
    Turn {
        _held: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// The cargo profile the benches are built with here; BENCHMARKS.md's
/// figures come from the default `bench` profile.
const PROFILE: &str = "dev";

/// `cargo bench -p todo-eventd --bench NAME -- ARGS` from the workspace
/// root (built with [`PROFILE`]), with `env` set, in the caller's turn;
/// asserts it succeeds and returns its stdout.
fn cargo_bench(_turn: &Turn, name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    build_once();
    let mut command = Command::new(cargo());
    command
        .current_dir(workspace_root())
        .args(["bench", "--profile", PROFILE, "-p", "todo-eventd"])
        .args(["--bench", name, "--"])
        .args(args);
    // Settings from the caller's environment (a broker, sizes, client
    // properties) would change what runs.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BENCH_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo bench --bench {name} {args:?} with {env:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Where BENCHMARKS.md's commands are run from.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds every bench once, so that a build failure shows as one and the
/// benches' own output is not mixed with the build's.
fn build_once() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(cargo())
            .current_dir(workspace_root())
            .args(["bench", "--profile", PROFILE, "-p", "todo-eventd"])
            .args(["--benches", "--no-run"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo bench --no-run failed");
    });
}

/// The lines of `out` that start with `label` (after indentation).
fn lines<'a>(out: &'a str, label: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.trim_start().starts_with(label))
        .collect()
}

/// The first line of `out` that starts with `label`.
fn line<'a>(out: &'a str, label: &str) -> &'a str {
    lines(out, label)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{out}"))
}

/// The number just before `unit` in `line`, e.g. `events/s`.
fn number_before(line: &str, unit: &str) -> f64 {
    let head = &line[..line
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {line:?}"))];
    head.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {unit:?} in {line:?}"))
}

/// The pipeline bench's phases, each with its CPU line before its result.
fn check_pipeline(out: &str) {
    let raw = number_before(line(out, "raw passthrough"), "events/s");
    assert!(raw > 0.0, "{out}");
    for label in [
        "three no-op plugins (no state)",
        "three bundled plugins (state)",
        "four bundled plugins (+audit)",
    ] {
        let result = line(out, label);
        assert!(number_before(result, "events/s") > 0.0, "{result}");
        assert!(number_before(result, "% of passthrough") > 0.0, "{result}");
    }
    let cpu = lines(out, "cpu:");
    assert_eq!(cpu.len(), 4, "a cpu line per phase:\n{out}");
    for line in cpu {
        assert!(number_before(line, "µs per event") > 0.0, "{line}");
    }
    let pipelines = lines(out, "pipeline:");
    assert_eq!(pipelines.len(), 3, "a counters line per pipeline:\n{out}");
    for counters in pipelines {
        // The recurrence plugin's next occurrences come back as input, so
        // the bundled phases read more than the 3000 produced.
        assert!(number_before(counters, "events in") >= 3000.0, "{counters}");
        assert!(counters.contains(" 0 dead letters"), "{counters}");
    }
}

#[test]
#[ignore = "takes minutes; the full suite runs it"]
fn pipeline_bench_on_the_mock_cluster() {
    let turn = turn();
    let out = cargo_bench(&turn, "pipeline", &[], &[("BENCH_EVENTS", "3000")]);
    check_pipeline(&out);
}

#[test]
#[ignore = "needs tansu and takes minutes; the full suite runs it"]
fn pipeline_bench_on_tansu() {
    let turn = turn();
    let broker = Broker::start();
    let out = cargo_bench(
        &turn,
        "pipeline",
        &[],
        &[("BENCH_BROKERS", &broker.address), ("BENCH_EVENTS", "3000")],
    );
    assert!(out.contains(&broker.address), "names its broker:\n{out}");
    check_pipeline(&out);
}

#[test]
#[ignore = "takes minutes; the full suite runs it"]
fn dispatch_and_reload_benches_run_each_case() {
    let turn = turn();
    let out = cargo_bench(&turn, "dispatch", &["--test"], &[]);
    for case in [
        "dispatch_one_event/noop",
        "dispatch_one_event/reminders",
        "dispatch_one_event/analytics",
        "decode/camel_update",
        "decode/camel_update_scan_only",
    ] {
        let tested = format!("Testing {case}\nSuccess");
        assert!(out.contains(&tested), "{case} did not run:\n{out}");
    }
    let out = cargo_bench(&turn, "reload", &["--test"], &[]);
    assert!(out.contains("Success"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
#[ignore = "needs tansu and takes minutes; the full suite runs it"]
fn latency_bench_reports_percentiles_and_lateness() {
    let turn = turn();
    let broker = Broker::start();
    let out = cargo_bench(
        &turn,
        "latency",
        &[],
        &[
            ("BENCH_BROKERS", &broker.address),
            ("BENCH_RATE", "500"),
            ("BENCH_SECONDS", "2"),
            ("BENCH_TIMERS", "300"),
        ],
    );
    let pipeline = line(&out, "latency produce -> audit output readable");
    for percentile in ["p50", "p99", "p999"] {
        assert!(pipeline.contains(percentile), "{pipeline}");
    }
    assert!(
        line(&out, "reminder lateness").contains("p99"),
        "lateness:\n{out}"
    );
    assert!(line(&out, "300 reminders pending at once").contains("300 read back"));
}

#[test]
#[ignore = "needs tansu and takes minutes; the full suite runs it"]
fn restore_bench_on_both_brokers() {
    let check = |out: &str| {
        assert!(
            number_before(line(out, "restored 3000 keys"), "records/s") > 0.0,
            "{out}"
        );
    };
    let turn = turn();
    check(&cargo_bench(
        &turn,
        "restore",
        &[],
        &[("BENCH_KEYS", "3000")],
    ));
    let broker = Broker::start();
    check(&cargo_bench(
        &turn,
        "restore",
        &[],
        &[("BENCH_BROKERS", &broker.address), ("BENCH_KEYS", "3000")],
    ));
}

#[test]
#[ignore = "takes minutes; the full suite runs it"]
fn memory_bench_reports_the_daemons_rss() {
    let turn = turn();
    let out = cargo_bench(&turn, "memory", &[], &[("BENCH_EVENTS", "1000")]);
    let rss = line(&out, "daemon RSS:");
    assert!(number_before(rss, "MiB, peak") > 0.0, "{rss}");
    assert!(rss.contains("changelog records"), "{rss}");
}
