//! Dispatch cost: one decoded event through one plugin, including applying
//! its effects to the partition state, for a no-op plugin and for each
//! bundled plugin (`dispatch_one_event`: 4096 events over and over;
//! `dispatch_new_task`: a task never seen before every time); plus instance
//! creation and event decoding.
//!
//! Run: `cargo bench -p todo-eventd --bench dispatch` (with
//! `BENCH_PERF_MAP` set, wasmtime writes the plugins' perf map, so
//! `perf report` names the functions inside them).

#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use todo_eventd::dispatch::Dispatcher;
use todo_eventd::plugin::manifest::Manifest;
use todo_eventd::plugin::{self, Plugin, bundled};
use todo_eventd::sandbox::{Sandbox, SandboxConfig};
use todo_eventd::world::TaskEvent;

const TEST_PLUGIN: &[u8] = include_bytes!(env!("GUEST_TEST_PLUGIN_WASM"));
const NOW: i64 = 1_769_414_400_000; // 2026-01-26T08:00:00Z

fn load(
    rt: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
    name: &str,
    wasm: &'static [u8],
    manifest: &str,
) -> Arc<Plugin> {
    let manifest = Manifest::parse(manifest).unwrap();
    let file = PathBuf::from(format!("{name}.wasm"));
    Arc::new(
        rt.block_on(plugin::from_parts(
            sandbox,
            name.into(),
            file,
            wasm,
            manifest,
            &PathBuf::from("-"),
        ))
        .unwrap(),
    )
}

/// Distinct events (task ids 0..n) so state grows realistically.
fn events(n: usize, template: &str) -> Vec<TaskEvent> {
    (0..n)
        .map(|i| {
            let json = template.replace("{ID}", &i.to_string());
            todo_eventd::event::decode(json.as_bytes()).unwrap()
        })
        .collect()
}

/// How many new tasks a `dispatch_new_task` case calls with before it
/// starts from empty state: reminders keeps a timer per task, and a
/// partition holds at most 100 000 by default.
const FRESH_TASKS_PER_STATE: usize = 50_000;

/// Gives `event` and its task ids no earlier event had (`n` counts up).
fn rename(event: &mut TaskEvent, n: usize) {
    event.id.clear();
    event.task.id.clear();
    write!(event.id, "new-ev-{n}").unwrap();
    write!(event.task.id, "new-{n}").unwrap();
}

const CREATED: &str = r#"{"event_id":"ev-{ID}","event_type":"created","user_id":"u-{ID}","task_id":"{ID}","timestamp":"2026-01-26T08:00:00Z","task_data":{"title":"Pay rent","priority":"high","tags":["home","money"],"due_at":"2026-01-27T09:00:00Z","remind_at":"2026-01-27T08:00:00Z"}}"#;
const COMPLETED_WEEKLY: &str = r#"{"event_id":"ev-{ID}","event_type":"completed","user_id":"u-{ID}","task_id":"{ID}","timestamp":"2026-01-26T09:05:00Z","task_data":{"title":"Standup","completed":true,"due_date":"2026-01-26T09:00:00Z","time_zone":"Europe/Berlin","recurrence":{"pattern":"weekly","interval":1}}}"#;

fn bench_dispatch(c: &mut Criterion) {
    // The worker's runtime is multi-threaded; a call is polled to the end
    // on one of its threads either way.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            perf_map: std::env::var_os("BENCH_PERF_MAP").is_some(),
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let noop = load(
        &rt,
        &sandbox,
        "noop",
        TEST_PLUGIN,
        "[config]\nmode = \"noop\"\n",
    );
    let mut plugins = vec![(noop, CREATED)];
    for b in bundled::ALL {
        let template = if b.name == "recurrence" {
            COMPLETED_WEEKLY
        } else {
            CREATED
        };
        plugins.push((load(&rt, &sandbox, b.name, b.wasm, b.manifest), template));
    }

    let mut group = c.benchmark_group("dispatch_one_event");
    for (plugin, template) in &plugins {
        let events = events(4096, template);
        let mut dispatcher = Dispatcher::new(std::slice::from_ref(plugin));
        let mut i = 0;
        // The calls run inside one `block_on`, as a partition's worker
        // awaits them inside its task: entering the runtime per call would
        // add ≈ 0.1 µs that the pipeline never pays.
        group.bench_function(plugin.name.as_str(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let event = &events[i % events.len()];
                        i += 1;
                        let outcomes = dispatcher.dispatch(black_box(event), 0, NOW).await;
                        assert!(outcomes[0].result.is_ok());
                        black_box(outcomes);
                    }
                    started.elapsed()
                })
            });
        });
    }
    group.finish();

    // The cases above cycle 4096 events, so after the first cycle each call
    // sees an event it has seen before (analytics returns early, reminders
    // rewrites what it holds). These give every call a task never seen
    // before, as in the pipeline bench's mix: each iteration renames the
    // event and its task (≈ 0.05 µs, timed). The state is dropped, untimed,
    // every `FRESH_TASKS_PER_STATE` events, below the per-partition quotas.
    let mut group = c.benchmark_group("dispatch_new_task");
    for (plugin, template) in plugins.iter().filter(|(p, _)| p.name != "noop") {
        let mut events = events(4096, template);
        let mut dispatcher = Dispatcher::new(std::slice::from_ref(plugin));
        let mut seen = 0;
        group.bench_function(plugin.name.as_str(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut took = Duration::ZERO;
                    let mut started = Instant::now();
                    for _ in 0..iters {
                        if seen % FRESH_TASKS_PER_STATE == FRESH_TASKS_PER_STATE - 1 {
                            took += started.elapsed();
                            dispatcher = Dispatcher::new(std::slice::from_ref(plugin));
                            started = Instant::now();
                        }
                        let slot = seen % events.len();
                        let event = &mut events[slot];
                        rename(event, seen);
                        seen += 1;
                        let outcomes = dispatcher.dispatch(black_box(event), 0, NOW).await;
                        assert!(outcomes[0].result.is_ok());
                        black_box(outcomes);
                    }
                    took + started.elapsed()
                })
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("instantiate");
    for (plugin, _) in &plugins {
        group.bench_function(plugin.name.as_str(), |b| {
            b.iter(|| {
                rt.block_on(sandbox.instantiate(&plugin.pre, plugin.spec.clone()))
                    .unwrap()
            });
        });
    }
    group.finish();

    // The camelCase update with `previousState`/`newState`, decoded once per
    // event; and, as the floor any serde_json-based decoder starts from,
    // the same bytes only scanned (UTF-8 checked, every value skipped).
    const CAMEL_UPDATE: &[u8] = br#"{"eventId":"2b7c9d10","eventType":"task.updated","source":"task-service","userId":"7","timestamp":"2026-01-22T11:00:00.123456","payload":{"taskId":"42","userId":"7","previousState":{"id":42,"title":"Pay rent","completed":false,"due_date":"2026-02-01T09:00:00","reminder_time":"2026-02-01T08:00:00"},"newState":{"id":42,"title":"Pay rent","completed":false,"due_date":"2026-02-02T09:00:00","reminder_time":"2026-02-02T08:00:00","tags":"home,money","priority":"high"}}}"#;
    c.bench_function("decode/camel_update", |b| {
        b.iter(|| todo_eventd::event::decode(black_box(CAMEL_UPDATE)).unwrap());
    });
    c.bench_function("decode/camel_update_scan_only", |b| {
        b.iter(|| {
            let text = std::str::from_utf8(black_box(CAMEL_UPDATE)).unwrap();
            serde_json::from_str::<serde::de::IgnoredAny>(text).unwrap()
        });
    });

    // A 1.3 MB record with 100 000 keys nobody asked for: decoding stays
    // linear in the record's size.
    let mut wide = serde_json::json!({
        "event_id": "wide", "event_type": "created", "user_id": "u", "task_id": "t",
        "timestamp": "2026-01-26T08:00:00Z",
    });
    for i in 0..100_000 {
        wide[format!("unknown_field_{i}")] = serde_json::json!(i);
    }
    let wide = wide.to_string();
    c.bench_function("decode/100k_unknown_keys", |b| {
        b.iter(|| todo_eventd::event::decode(black_box(wide.as_bytes())).unwrap());
    });
}

criterion_group!(benches, bench_dispatch);
criterion_main!(benches);
