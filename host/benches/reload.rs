//! Hot-reload and scrape costs: rescanning an unchanged plugins directory,
//! loading a new version of a plugin (compiling it, or taking it from the
//! compiled-component cache), and encoding `/metrics`.
//!
//! Run: `cargo bench -p todo-eventd --bench reload`

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use todo_eventd::clock::Clock;
use todo_eventd::dispatch::Dispatcher;
use todo_eventd::plugin::{Registry, bundled};
use todo_eventd::sandbox::{Sandbox, SandboxConfig};
use todo_eventd::telemetry::Telemetry;

fn sandbox(cache: Option<std::path::PathBuf>) -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            cache_dir: cache,
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

fn bench_reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("rescan");
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    bundled::install(dir.path()).unwrap();
    std::fs::write(dir.path().join("echo.wasm"), common::TEST_PLUGIN).unwrap();
    std::fs::write(dir.path().join("echo.toml"), common::mode("echo")).unwrap();
    let telemetry = Telemetry::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Four plugins, nothing changed: read and hash every file.
    let (registry, _) = rt
        .block_on(Registry::open(
            sandbox(None),
            dir.path().to_owned(),
            telemetry.plugins.clone(),
            Clock::System,
        ))
        .unwrap();
    group.bench_function("unchanged", |b| {
        b.iter(|| assert!(rt.block_on(registry.rescan()).unwrap().is_empty()));
    });

    // A new version each time, no cache: validate + compile + swap.
    let mut version = 0u64;
    group.bench_function("new_version_compiled", |b| {
        b.iter(|| {
            version += 1;
            let bytes = common::with_custom_section(common::TEST_PLUGIN, &version.to_string());
            std::fs::write(dir.path().join("echo.wasm"), bytes).unwrap();
            assert_eq!(rt.block_on(registry.rescan()).unwrap().loaded, ["echo"]);
        });
    });

    // Two versions alternating with a warm compiled-component cache (a
    // restart, or a roll-back to a version seen before).
    let cache = tempfile::tempdir().unwrap();
    let (registry, _) = rt
        .block_on(Registry::open(
            sandbox(Some(cache.path().to_owned())),
            dir.path().to_owned(),
            telemetry.plugins.clone(),
            Clock::System,
        ))
        .unwrap();
    let versions = [
        common::with_custom_section(common::TEST_PLUGIN, "a"),
        common::with_custom_section(common::TEST_PLUGIN, "b"),
    ];
    let mut next = 0;
    group.bench_function("new_version_cached", |b| {
        b.iter(|| {
            next = 1 - next;
            std::fs::write(dir.path().join("echo.wasm"), &versions[next]).unwrap();
            assert_eq!(rt.block_on(registry.rescan()).unwrap().loaded, ["echo"]);
        });
    });
    group.finish();

    // A scrape with four plugins' series populated.
    let plugins = registry.current().plugins.clone();
    let mut dispatcher = Dispatcher::with(&plugins, Default::default(), telemetry.plugins.clone());
    let event = common::created("t1", 1_769_414_400_000);
    for _ in 0..100 {
        rt.block_on(dispatcher.dispatch(&event, 0, 1_769_414_400_000));
    }
    c.bench_function("metrics/encode", |b| {
        b.iter(|| telemetry.encode().len());
    });
}

criterion_group!(benches, bench_reload);
criterion_main!(benches);
