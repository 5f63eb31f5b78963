//! The plugin interface from the author's side: components built against
//! `todo:plugin@0.1.0` keep loading and running; 0.2.0's `init` rejects a
//! bad configuration at load; its error kinds decide what happens to an
//! event — `bad-input` is dead-lettered at once, `retryable` is retried in
//! place with back-off and then dead-lettered, `internal` counts toward
//! quarantine.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TEST_PLUGIN, created, load, mode, plugin_dir, sandbox};
use todo_eventd::dispatch::{DispatchPolicy, Dispatcher, RetryWait};
use todo_eventd::plugin::{self, health::QuarantinePolicy};
use todo_eventd::sandbox::CallError;
use todo_eventd::telemetry::PluginMetrics;
use todo_eventd::world::{ErrorKind, WitVersion};

/// The test plugin as built against `todo:plugin@0.1.0` (before 0.2.0
/// existed), kept as a binary so the old interface stays covered.
const TEST_PLUGIN_0_1: &[u8] = include_bytes!("fixtures/plugins/test-plugin-0.1.0.wasm");

fn plugin_error_kind(err: &CallError) -> Option<ErrorKind> {
    match err {
        CallError::Plugin { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[tokio::test]
async fn a_component_built_against_0_1_0_loads_and_emits() {
    let reject = mode("reject");
    let dir = plugin_dir(&[
        ("echo-0-1", TEST_PLUGIN_0_1, Some(&mode("echo"))),
        ("reject-0-1", TEST_PLUGIN_0_1, Some(&reject)),
        ("echo-0-2", TEST_PLUGIN, Some(&mode("echo"))),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let version = |name: &str| {
        plugins
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .wit_version()
    };
    assert_eq!(version("echo-0-1"), WitVersion::V0_1);
    assert_eq!(version("echo-0-2"), WitVersion::V0_2);

    let mut dispatcher = Dispatcher::new(&plugins);
    let outcomes = dispatcher.dispatch(&created("t1", 1_000), 0, 1_000).await;
    let emits = |name: &str| {
        let outcome = outcomes.iter().find(|o| o.plugin.name == name).unwrap();
        outcome.result.as_ref().unwrap().clone()
    };
    // The same event reaches both versions, field for field.
    let (old, new) = (emits("echo-0-1"), emits("echo-0-2"));
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].value, new[0].value);
    assert_eq!(old[0].key.as_deref(), Some("t1"));
    // A 0.1.0 error has no kind: it is the plugin rejecting its input.
    let rejected = outcomes
        .iter()
        .find(|o| o.plugin.name == "reject-0-1")
        .unwrap();
    let err = rejected.result.as_ref().unwrap_err();
    assert_eq!(plugin_error_kind(err), Some(ErrorKind::BadInput), "{err}");
    assert!(!err.is_plugin_fault());
}

#[tokio::test]
async fn init_rejects_a_bad_configuration_at_load() {
    let manifest = format!("{}init = \"fail\"\n", mode("echo"));
    let dir = plugin_dir(&[
        ("picky", TEST_PLUGIN, Some(&manifest)),
        ("fine", TEST_PLUGIN, Some(&mode("echo"))),
    ]);
    let report = plugin::load_dir(&sandbox(), dir.path()).await.unwrap();
    assert_eq!(report.plugins.len(), 1, "the other plugin still loads");
    let err = report.errors[0].to_string();
    assert!(
        err.contains("picky.wasm")
            && err.contains("init rejected the configuration: bad-input [bad-config]"),
        "{err}"
    );
}

/// `init` has no event or partition: a record it emits or state it
/// writes would go nowhere, so the plugin is refused at load, saying so,
/// rather than loaded with its writes dropped.
#[tokio::test]
async fn an_init_that_emits_or_writes_state_is_refused_at_load() {
    for (init, says) in [
        (
            "emit",
            "init emitted 1 record(s) and changed 0 state or timer key(s)",
        ),
        (
            "write",
            "init emitted 0 record(s) and changed 1 state or timer key(s)",
        ),
    ] {
        let manifest = format!("{}init = \"{init}\"\n", mode("echo"));
        let dir = plugin_dir(&[("eager", TEST_PLUGIN, Some(&manifest))]);
        let report = plugin::load_dir(&sandbox(), dir.path()).await.unwrap();
        assert!(report.plugins.is_empty(), "init = {init} loaded");
        let err = report.errors[0].to_string();
        assert!(err.contains("eager.wasm") && err.contains(says), "{err}");
    }
}

/// A manifest with `limits.retry_backoff = "10ms"`.
fn with_backoff(manifest: &str) -> String {
    manifest.replace("[limits]\n", "[limits]\nretry_backoff = \"10ms\"\n")
}

#[tokio::test]
async fn an_init_that_never_returns_is_cut_off_and_rejected() {
    // A sleep ends when the call's timer fires; a loop usually when the
    // epoch callback traps it, else when the timer fires. Either way the
    // error is the same, and the start is tried three times before the
    // plugin is rejected.
    for init in ["sleep", "spin"] {
        let manifest = format!("{}init = \"{init}\"\n", mode("echo"));
        let dir = plugin_dir(&[("slow", TEST_PLUGIN, Some(&manifest))]);
        let started = std::time::Instant::now();
        let report = plugin::load_dir(&sandbox(), dir.path()).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "init = {init} was not cut off"
        );
        assert!(report.plugins.is_empty());
        let err = report.errors[0].to_string();
        assert!(
            err.contains("slow.wasm")
                && err.contains(
                    "deadline: init took longer than the call time limit of 50ms (3 attempts)"
                ),
            "init = {init}: {err}"
        );
    }
}

fn policy(quarantine_after: u32) -> DispatchPolicy {
    DispatchPolicy {
        quarantine: QuarantinePolicy {
            after: quarantine_after,
            ..QuarantinePolicy::default()
        },
        ..DispatchPolicy::default()
    }
}

#[tokio::test]
async fn a_retryable_error_is_retried_in_place_with_backoff_then_dead_lettered() {
    // Fails 3 times per event, then succeeds: within the 5 retries.
    let flaky = with_backoff(&format!("{}fail_times = 3\n", mode("retry")));
    // Fails 100 times: the retries run out.
    let down = with_backoff(&format!("{}fail_times = 100\n", mode("retry")));
    let dir = plugin_dir(&[
        ("flaky", TEST_PLUGIN, Some(&flaky)),
        ("down", TEST_PLUGIN, Some(&down)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let metrics = Arc::new(PluginMetrics::default());
    let mut dispatcher = Dispatcher::with(&plugins, policy(1), metrics.clone());

    let started = std::time::Instant::now();
    let outcomes = dispatcher.dispatch(&created("t1", 1_000), 0, 1_000).await;
    let waited = started.elapsed();
    let by_name = |name: &str| outcomes.iter().find(|o| o.plugin.name == name).unwrap();

    let flaky = by_name("flaky").result.as_ref().unwrap();
    assert_eq!(flaky.len(), 1, "the fourth attempt succeeded and emitted");
    let err = by_name("down").result.as_ref().unwrap_err();
    assert_eq!(plugin_error_kind(err), Some(ErrorKind::Retryable), "{err}");
    // The last of 1 + 5 attempts is the one reported.
    assert!(err.to_string().contains("attempt 6 at event"), "{err}");
    // Back-off (a lower bound: sleeps never end early): 10+20+40 ms for
    // flaky, then 10+20+…+160 ms for down.
    assert!(waited >= Duration::from_millis(70 + 310), "{waited:?}");
    // A transient failure is not the plugin's fault, but one that outlasts
    // every retry is: with quarantine after one failure, `down` is
    // quarantined (a plugin that always asks for a retry would otherwise
    // hold up its partition for every event, forever), `flaky` is not.
    assert!(by_name("down").plugin.health.retry_at().is_some());
    assert!(by_name("flaky").plugin.health.retry_at().is_none());
    let text = todo_eventd::telemetry::Telemetry {
        plugins: metrics,
        ..Default::default()
    }
    .encode();
    assert!(
        text.contains("todo_eventd_plugin_retries_total{plugin=\"down\"} 5"),
        "{text}"
    );
    assert!(text.contains("todo_eventd_plugin_retries_total{plugin=\"flaky\"} 3"));
}

/// A plugin answering `retryable` to every event until its last retry,
/// then `ok`, would keep each event's partition waiting through all of
/// its retries — with 20 of them, over seven minutes of back-off per event
/// — and never count as failing. Retries are paid for from a budget per
/// plugin: once it is spent, `retryable` fails at once (the dead letter
/// says why) and counts toward quarantine; another plugin's retries are
/// paid from its own.
#[tokio::test]
async fn retries_stop_once_the_plugins_retry_budget_is_spent() {
    let stalling = with_backoff(&format!("{}fail_times = 19\n", mode("retry")))
        .replace("[limits]\n", "[limits]\nretries = 20\n");
    let flaky = with_backoff(&format!("{}fail_times = 3\n", mode("retry")));
    let dir = plugin_dir(&[
        ("stalling", TEST_PLUGIN, Some(&stalling)),
        ("flaky", TEST_PLUGIN, Some(&flaky)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let budget = Duration::from_millis(300);
    let policy = DispatchPolicy {
        retry_wait: RetryWait::Backoff { budget },
        ..policy(2)
    };
    let mut dispatcher = Dispatcher::with(&plugins, policy, Arc::default());

    for (n, at) in [(1, 1_000), (2, 2_000)] {
        let outcomes = tokio::time::timeout(
            Duration::from_secs(20),
            dispatcher.dispatch(&created(&format!("t{n}"), at), 0, at),
        )
        .await
        .expect("the budget ends the retries");
        let by_name = |name: &str| outcomes.iter().find(|o| o.plugin.name == name).unwrap();
        let err = by_name("stalling").result.as_ref().unwrap_err();
        assert_eq!(plugin_error_kind(err), Some(ErrorKind::Retryable), "{err}");
        assert!(
            err.to_string()
                .contains("the plugin's retry budget of 300ms is spent"),
            "event {n}: {err}"
        );
        assert!(
            by_name("flaky").result.is_ok(),
            "event {n}: its own budget pays for its three retries"
        );
    }
    let health = |name: &str| {
        let plugin = plugins.iter().find(|p| p.name == name).unwrap();
        plugin.health.retry_at()
    };
    assert!(health("stalling").is_some(), "two events failed in a row");
    assert!(health("flaky").is_none());
}

/// An `internal` error and a denial (an emit to an output the manifest
/// does not map — the plugin's own choice) count toward quarantine; a
/// plugin rejecting its input, or using a key over the bound (which input
/// can provoke), does not. (Before, a plugin failing every call with a
/// denial was never quarantined.)
#[tokio::test]
async fn an_internal_error_counts_toward_quarantine_and_bad_input_does_not() {
    let dir = plugin_dir(&[
        ("buggy", TEST_PLUGIN, Some(&mode("internal"))),
        ("keyed", TEST_PLUGIN, Some(&mode("long-key"))),
        ("snoop", TEST_PLUGIN, Some(&mode("bad-emit"))),
        ("strict", TEST_PLUGIN, Some(&mode("reject"))),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::with(&plugins, policy(2), Arc::default());
    for at in [1_000, 2_000] {
        for outcome in dispatcher.dispatch(&created("t1", at), 0, at).await {
            let err = outcome.result.unwrap_err();
            if outcome.plugin.name == "keyed" {
                assert_eq!(err.kind(), "key-too-long", "{err}");
                assert!(err.to_string().contains("state key of 2000 bytes"), "{err}");
            }
        }
    }
    let quarantined = |name: &str| {
        plugins
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .health
            .retry_at()
            .is_some()
    };
    assert!(quarantined("buggy"), "two internal errors in a row");
    assert!(quarantined("snoop"), "two denials in a row");
    assert!(!quarantined("strict"), "rejecting input is no fault");
    assert!(!quarantined("keyed"), "an over-long key is no fault");
    let outcomes = dispatcher.dispatch(&created("t1", 3_000), 0, 3_000).await;
    let buggy = outcomes.iter().find(|o| o.plugin.name == "buggy").unwrap();
    assert!(matches!(buggy.result, Err(CallError::Quarantined { .. })));
}

/// Only a success ends a run of failures: rejecting some events (no fault)
/// between traps on the others does not keep a plugin out of quarantine.
/// A clean rejection on the trial call after the back-off lifts it.
#[tokio::test]
async fn rejections_between_traps_do_not_keep_a_plugin_out_of_quarantine() {
    let dir = plugin_dir(&[("mixed", TEST_PLUGIN, Some(&mode("panic-or-reject")))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::with(&plugins, policy(3), Arc::default());
    let health = &plugins[0].health;
    for (n, task) in ["t0", "reject1", "t2", "reject3", "t4"].iter().enumerate() {
        let at = 1_000 + n as i64;
        let outcome = dispatcher
            .dispatch(&created(task, at), 0, at)
            .await
            .remove(0);
        let kind = outcome.result.unwrap_err().kind();
        let expected = if task.starts_with("reject") {
            "plugin-error"
        } else {
            "panic"
        };
        assert_eq!(kind, expected, "{task}");
    }
    let retry_at = health.retry_at().expect("three traps, rejections between");
    assert_eq!(health.snapshot().consecutive_failures, 3);
    let outcome = dispatcher
        .dispatch(&created("reject-trial", retry_at), 0, retry_at)
        .await
        .remove(0);
    assert_eq!(outcome.result.unwrap_err().kind(), "plugin-error");
    assert!(health.retry_at().is_none(), "the trial call answered");
    assert_eq!(health.snapshot().consecutive_failures, 0);
}

/// `sandbox.perf_map`: compiling a plugin writes the perf map `perf report`
/// reads, naming the plugin's functions.
#[tokio::test]
async fn a_perf_map_names_the_plugins_functions() {
    use todo_eventd::sandbox::{Sandbox, SandboxConfig};
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 4,
            perf_map: true,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let dir = plugin_dir(&[("noop", TEST_PLUGIN, Some(&mode("noop")))]);
    assert_eq!(load(&sandbox, dir.path()).await.len(), 1);
    let path = format!("/tmp/perf-{}.map", std::process::id());
    let map = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        map.lines().any(|line| line.ends_with("cabi_realloc")),
        "no plugin function in the perf map:\n{}",
        map.lines().take(20).collect::<Vec<_>>().join("\n")
    );
}
