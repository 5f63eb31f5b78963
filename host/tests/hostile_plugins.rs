//! Plugins that misbehave — or attack the host — are stopped or refused
//! with a classified error; the runtime stays healthy and a well-behaved
//! plugin beside them keeps producing its normal output for the same
//! events. One test plugin carries every attack, picked by `[config]`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TEST_PLUGIN, created, load, mode, plugin_dir, sandbox};
use todo_eventd::dispatch::{DispatchPolicy, Dispatcher, MAX_HOPS, Outcome};
use todo_eventd::plugin::Plugin;
use todo_eventd::plugin::health::QuarantinePolicy;
use todo_eventd::sandbox::{
    CallError, GrantPolicy, LogPolicy, MAX_RESOURCES_WITH_FILES, Sandbox, SandboxConfig, TrapKind,
};
use todo_eventd::telemetry::PluginMetrics;
use todo_eventd::units::ByteSize;

/// No call here may take anywhere near this long; a test that does has
/// found a call that its deadline did not stop.
const BOUND: Duration = Duration::from_secs(20);

fn trap_kind(err: &CallError) -> Option<TrapKind> {
    match err {
        CallError::Trap { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// A manifest for `mode` with extra `[limits]` and `[config]` lines.
fn manifest(mode: &str, limits: &str, config: &str) -> String {
    format!(
        "[outputs]\nout = \"out-topic\"\n[limits]\nmemory = \"32MiB\"\n{limits}\n[config]\nmode = \"{mode}\"\n{config}\n"
    )
}

/// The first plugin's outcomes for `count` created events (tasks `t0`,
/// `t1`, …), in order.
async fn first_outcomes(dispatcher: &mut Dispatcher, count: i64) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for n in 0..count {
        let event = created(&format!("t{n}"), 1_000 + n);
        outcomes.push(
            dispatcher
                .dispatch(&event, 0, event.occurred_at)
                .await
                .remove(0),
        );
    }
    outcomes
}

/// One call of a plugin in `mode` (with `[config]` lines `config` and a
/// 10 s call limit) for a `created` event: the plugins loaded, and its
/// outcome.
async fn one_call(mode: &str, config: &str) -> (Vec<Arc<Plugin>>, Outcome) {
    let text = manifest(mode, "call_timeout = \"10s\"", config);
    let dir = plugin_dir(&[(mode, TEST_PLUGIN, Some(&text))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let outcome = Dispatcher::new(&plugins)
        .dispatch(&created("t1", 1_000), 0, 1_000)
        .await
        .remove(0);
    (plugins, outcome)
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test]
async fn each_hostile_plugin_fails_with_its_class_and_the_good_one_carries_on() {
    let cases = [
        ("a-looper", mode("loop")),
        ("b-hog", mode("grow")),
        ("c-deep", mode("stack")),
        ("d-panicker", mode("panic")),
        ("e-snoop", mode("bad-emit")),
        ("f-sleeper", mode("sleep")),
        ("g-host-looper", mode("host-loop")),
    ];
    let mut files: Vec<(&str, &[u8], Option<&str>)> = cases
        .iter()
        .map(|(name, manifest)| (*name, TEST_PLUGIN, Some(manifest.as_str())))
        .collect();
    let echo = mode("echo");
    files.push(("z-echo", TEST_PLUGIN, Some(&echo)));
    let dir = plugin_dir(&files);
    let sandbox = sandbox();
    let plugins = load(&sandbox, dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);

    for round in 1..=3_u64 {
        let event = created("t1", 1_000 * i64::try_from(round).unwrap());
        let outcomes =
            tokio::time::timeout(BOUND, dispatcher.dispatch(&event, 0, event.occurred_at))
                .await
                .expect("every call ends at its deadline");
        let by_name = |name: &str| {
            outcomes
                .iter()
                .find(|o| o.plugin.name == name)
                .unwrap_or_else(|| panic!("{name} was not called"))
        };
        let expect = [
            ("a-looper", TrapKind::Deadline, "time limit of 50ms"),
            ("b-hog", TrapKind::Memory, "memory limit of 8MiB"),
            ("c-deep", TrapKind::StackOverflow, "call stack exhausted"),
            ("d-panicker", TrapKind::Panic, "boom on event ev-t1-"),
            (
                "e-snoop",
                TrapKind::Denied,
                "emit to output \"secret\", which the manifest does not map (mapped: out)",
            ),
            // Waiting in a WASI pollable (a day's sleep) ends on time too.
            ("f-sleeper", TrapKind::Deadline, "time limit of 50ms"),
            ("g-host-looper", TrapKind::Deadline, "time limit of 50ms"),
        ];
        for (name, kind, text) in expect {
            let err = by_name(name).result.as_ref().expect_err(name);
            assert_eq!(trap_kind(err), Some(kind), "{name}: {err}");
            assert!(err.to_string().contains(text), "{name}: {err}");
            assert!(err.is_plugin_fault(), "{name}");
        }
        // The well-behaved plugin saw every round, with its state intact.
        let emits = by_name("z-echo").result.as_ref().expect("echo succeeds");
        assert_eq!(emits.len(), 1);
        let value: serde_json::Value = serde_json::from_str(&emits[0].value).unwrap();
        assert_eq!(value["count"], round, "echo state carried across rounds");
        assert_eq!(emits[0].topic, "out-topic");
    }
}

#[tokio::test]
async fn floods_are_stopped_by_quotas_and_memory_stays_bounded() {
    let generous = "call_timeout = \"10s\"";
    let cases = [
        (
            "state-flood",
            "",
            "quota: state value of 1048576 bytes",
            "the largest state value (996928 bytes)",
        ),
        (
            "state-flood",
            "size = 500000",
            "quota: 45001",
            "bytes of state written exceeds limits.state_bytes_per_call (4MiB)",
        ),
        (
            "emit-flood",
            "",
            "quota: an emitted record of 1048576 bytes (+ headers)",
            "the producer's message.max.bytes (1000000)",
        ),
        (
            "emit-flood",
            "size = 100000",
            "quota: 4200000 bytes emitted",
            "limits.emit_bytes_per_call (4MiB)",
        ),
        (
            "timer-flood",
            "",
            "quota: 1001 timers set",
            "limits.timers_per_call (1000)",
        ),
        (
            "emit-flood",
            "size = 10\ncount = 5000",
            "quota: 1001 emits",
            "limits.emits_per_call (1000)",
        ),
        // Tiny keys: 5000 of 10 bytes are far under the bytes a call may
        // write, but each would be a changelog record.
        (
            "state-churn",
            "size = 0\ncount = 5000",
            "quota: 1001 keys changed",
            "limits.state_changes_per_call (1000)",
        ),
    ];
    let sandbox = sandbox();
    let before = rss_mib();
    for (attack, config, what, quota) in cases {
        let text = manifest(attack, generous, config);
        let dir = plugin_dir(&[("attacker", TEST_PLUGIN, Some(&text))]);
        let plugins = load(&sandbox, dir.path()).await;
        let mut dispatcher = Dispatcher::new(&plugins);
        for n in 0..40 {
            let event = created(&format!("t{n}"), 1_000 + n);
            let outcome = &dispatcher.dispatch(&event, 0, event.occurred_at).await[0];
            let err = outcome.result.as_ref().unwrap_err();
            assert_eq!(err.kind(), "quota", "{attack}: {err}");
            let message = err.to_string();
            assert!(
                message.starts_with(what) && message.ends_with(quota),
                "{attack}: {message}"
            );
            assert!(err.is_plugin_fault());
            assert!(outcome.changed.is_empty(), "{attack}: nothing applied");
        }
        assert!(dispatcher.state("attacker").unwrap().is_empty());
    }
    let after = rss_mib();
    assert!(
        after < 600 && after.saturating_sub(before) < 300,
        "RSS {before} MiB before the floods, {after} MiB after"
    );
}

/// A key's value and timer payload share one changelog record, so they are
/// held to the largest value together — set in one call, or the value in
/// one and the timer in a later one.
#[tokio::test]
async fn a_value_and_timer_too_large_together_are_refused() {
    let sandbox = sandbox();
    for together in [true, false] {
        let config = if together { "together = true" } else { "" };
        let text = manifest("big-key", "call_timeout = \"10s\"", config);
        let dir = plugin_dir(&[("hoarder", TEST_PLUGIN, Some(&text))]);
        let plugins = load(&sandbox, dir.path()).await;
        let mut dispatcher = Dispatcher::new(&plugins);
        let outcomes = first_outcomes(&mut dispatcher, 3).await;
        let refused = if together {
            &outcomes[..]
        } else {
            assert!(outcomes[0].result.is_ok(), "the value alone fits");
            assert_eq!(outcomes[0].changed, ["big"]);
            &outcomes[1..]
        };
        for outcome in refused {
            let err = outcome.result.as_ref().unwrap_err();
            assert_eq!(
                err.to_string(),
                "quota: 1200000 bytes of state value and timer payload under key \"big\" \
                 exceeds the largest state value (996928 bytes)",
                "together: {together}"
            );
            assert!(outcome.changed.is_empty());
        }
        let state = dispatcher.state("hoarder").unwrap();
        assert_eq!(
            state.get("big").map(<[u8]>::len),
            (!together).then_some(600_000)
        );
        assert_eq!(state.timer_count(), 0);
    }
}

#[tokio::test]
async fn per_partition_quotas_cap_what_a_plugin_keeps() {
    let text = manifest(
        "state-churn",
        "state_keys = 250\nstate_bytes = \"1MiB\"",
        "count = 100\nsize = 100",
    );
    let dir = plugin_dir(&[("hoarder", TEST_PLUGIN, Some(&text))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    let results = first_outcomes(&mut dispatcher, 4).await;
    assert!(results[..2].iter().all(|o| o.result.is_ok()));
    let err = results[2].result.as_ref().unwrap_err();
    assert_eq!(
        err.to_string(),
        "quota: 300 state keys in this partition exceeds limits.state_keys (250)"
    );
    assert_eq!(
        dispatcher.state("hoarder").unwrap().len(),
        200,
        "the failed call kept nothing"
    );

    let timers = manifest("timer-flood", "timers = 1500", "count = 1000");
    let dir = plugin_dir(&[("timers", TEST_PLUGIN, Some(&timers))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    // Each call sets the same 1000 keys: moving timers does not add any.
    for n in 0..3 {
        let event = created("t", 1_000 + n);
        assert!(
            dispatcher.dispatch(&event, 0, event.occurred_at).await[0]
                .result
                .is_ok()
        );
    }
    assert_eq!(dispatcher.timer_count(), 1000);
}

#[tokio::test]
async fn a_timer_storm_is_throttled_then_quarantined() {
    let dir = plugin_dir(&[("stormy", TEST_PLUGIN, Some(&mode("rearm")))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let metrics = Arc::new(PluginMetrics::default());
    let policy = DispatchPolicy {
        quarantine: QuarantinePolicy {
            storm_after: 10,
            ..QuarantinePolicy::default()
        },
        min_timer_rearm: Duration::from_secs(1),
        ..DispatchPolicy::default()
    };
    let mut dispatcher = Dispatcher::with(&plugins, policy, metrics.clone());
    let event = created("t1", 0);
    assert!(dispatcher.dispatch(&event, 0, 0).await[0].result.is_ok());
    assert_eq!(dispatcher.next_due(), Some(0), "set for now by on-event");

    // Each firing re-arms for "now"; each re-arm is pushed back a second;
    // the tenth in a minute quarantines the plugin (10 s), and each trial
    // that storms again doubles the wait.
    let mut firings = Vec::new();
    while let Some(due) = dispatcher.next_due().filter(|due| *due < 60_000) {
        let firing = dispatcher.fire_next(due).await.unwrap();
        assert!(firing.outcome.result.is_ok());
        firings.push(due);
        assert!(firings.len() <= 12, "{firings:?}");
    }
    let mut expect: Vec<i64> = (0..10).map(|s| s * 1_000).collect();
    expect.extend([19_000, 39_000]);
    assert_eq!(firings, expect);
    let health = plugins[0].health.snapshot();
    assert!(
        health.last_error.unwrap().starts_with("timer storm:"),
        "the reason is recorded"
    );
    assert_eq!(
        dispatcher.next_due(),
        health.retry_at,
        "the timer waits for the quarantine to pass"
    );
    let text = {
        let telemetry = todo_eventd::telemetry::Telemetry {
            plugins: metrics,
            ..Default::default()
        };
        telemetry.encode()
    };
    assert!(
        text.contains("todo_eventd_plugin_timers_throttled_total{plugin=\"stormy\"} 12"),
        "{text}"
    );
}

/// A log writer the tests can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's log until the guard is dropped.
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn plugin_logs_are_escaped_cut_and_rate_limited() {
    let (captured, _guard) = Captured::start();

    let metrics = Arc::new(PluginMetrics::default());
    let sandbox = Arc::new(
        Sandbox::with_metrics(
            SandboxConfig {
                log: LogPolicy {
                    lines_per_second: 1,
                    burst: 20,
                    max_line: ByteSize::kib(1),
                },
                ..SandboxConfig::default()
            },
            metrics.clone(),
        )
        .unwrap(),
    );
    let forge = mode("log-forge");
    let flood = manifest("log-flood", "call_timeout = \"10s\"", "count = 300");
    let dir = plugin_dir(&[
        ("forger", TEST_PLUGIN, Some(&forge)),
        ("flooder", TEST_PLUGIN, Some(&flood)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    let started = std::time::Instant::now();
    let outcomes = dispatcher.dispatch(&created("t1", 1_000), 0, 1_000).await;
    let refilled = started.elapsed().as_secs() + 1;
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");

    let log = captured.text();
    let forged: Vec<&str> = log.lines().filter(|l| l.contains("Forged line")).collect();
    assert_eq!(forged.len(), 1, "{log}");
    assert!(
        forged[0].contains("innocent\\n2026-01-01T00:00:00.000000Z  INFO todo_eventd::daemon: Forged line.\\u{1b}[31m red"),
        "{}",
        forged[0]
    );
    assert!(!log.contains('\u{1b}'), "no raw escape reaches the log");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000000Z")),
        "no forged line of its own"
    );
    // 600 lines of 1 MB asked for (log and stdout): a burst of 20 cut to
    // 1 KiB got through, and one more per second.
    let flood_lines = log.lines().filter(|l| l.contains("yyyy")).count() as u64;
    assert!((1..=20 + refilled).contains(&flood_lines), "{flood_lines}");
    assert!(log.len() < 100_000, "{} bytes of log", log.len());
    let text = todo_eventd::telemetry::Telemetry {
        plugins: metrics,
        ..Default::default()
    }
    .encode();
    let dropped = text
        .lines()
        .find(|l| l.starts_with("todo_eventd_plugin_log_dropped_total{plugin=\"flooder\"}"))
        .unwrap();
    let count: u64 = dropped.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 600 - 20 - refilled, "{dropped}");
}

/// A plugin that rejects every event — or fails every call without being
/// quarantined — would write a warning per call into the daemon's log,
/// past the rate its own log lines are held to. Those warnings are held to
/// a rate per plugin too; the errors metric still counts every call.
#[tokio::test]
async fn a_plugin_that_fails_every_call_cannot_flood_the_daemons_log() {
    let (captured, _guard) = Captured::start();

    let metrics = Arc::new(PluginMetrics::default());
    let sandbox =
        Arc::new(Sandbox::with_metrics(SandboxConfig::default(), metrics.clone()).unwrap());
    let fail = mode("fail");
    let dir = plugin_dir(&[("grumpy", TEST_PLUGIN, Some(&fail))]);
    let plugins = load(&sandbox, dir.path()).await;
    let mut dispatcher = Dispatcher::with(&plugins, DispatchPolicy::OFFLINE, metrics.clone());
    let started = std::time::Instant::now();
    let calls = 500;
    let outcomes = first_outcomes(&mut dispatcher, calls).await;
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        outcomes.iter().all(|o| o.result.is_err()),
        "every call fails"
    );

    let series = |text: &str, name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("plugin=\"grumpy\""))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("Plugin rejected its input."))
            .count() as u64
    };
    let log = captured.text();
    let lines = warned(&log);
    assert!((1..=20 + refilled).contains(&lines), "{lines} warnings");
    let text = todo_eventd::telemetry::Telemetry {
        plugins: metrics.clone(),
        ..Default::default()
    }
    .encode();
    assert_eq!(
        series(&text, "todo_eventd_plugin_errors_total"),
        500,
        "every failure counted"
    );
    assert_eq!(
        series(&text, "todo_eventd_plugin_warnings_suppressed_total"),
        500 - lines
    );

    // A second later the next failure is written again, after a line that
    // says how many were left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let outcome = dispatcher.dispatch(&created("late", 9_000), 0, 9_000).await;
    assert!(outcome[0].result.is_err());
    let log = captured.text();
    assert_eq!(warned(&log), lines + 1, "{log}");
    // Every line left out is told of, in the summary lines before the
    // lines written after them (more than one if the calls took seconds).
    let told: u64 = log
        .lines()
        .filter(|l| l.contains("Similar warnings suppressed") && l.contains("about=grumpy"))
        .map(|l| {
            let count = l.split("suppressed=").nth(1).unwrap_or_default();
            count
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(told, 500 - lines, "{log}");
}

/// A plugin hands the host at most twice its largest record (and 1 MiB)
/// in one crossing. One pollable a million times over in one `poll` is a 4 MB
/// list the host would lift into 16 MB of handles (until wasmtime's limit
/// of 100 000 lent handles stopped it, "store handle limit exceeded"): it
/// traps, naming the cause, before the host allocates anything for it. A
/// list under the bound is polled as ever.
#[tokio::test]
async fn a_poll_of_one_pollable_repeated_past_the_bound_traps() {
    let (_, outcome) = one_call("poll-flood", "").await;
    let err = outcome.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "trap", "{err}");
    assert!(err.is_plugin_fault());
    assert!(
        err.to_string()
            .contains("too much data is being copied between the host and the guest"),
        "{err}"
    );

    let (_, outcome) = one_call("poll-flood", "size = 1000").await;
    let effects = outcome.result.as_ref().unwrap();
    assert_eq!(effects[0].value, "1000", "every index ready");
}

/// An error's text is cut to a bound in what the daemon keeps and logs;
/// one larger than what a plugin may hand the host in one crossing is not
/// even read: the call traps.
#[tokio::test]
async fn error_text_from_a_plugin_is_bounded() {
    let (plugins, outcome) = one_call("big-error", "size = 1500000").await;
    let err = outcome.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "plugin-error");
    assert!(!err.is_plugin_fault(), "rejecting input is not a fault");
    let message = err.to_string();
    assert!(message.len() < 1200, "{} bytes", message.len());
    assert!(
        message.ends_with("… (1500000 bytes)"),
        "{}",
        &message[message.len() - 40..]
    );
    assert!(plugins[0].health.snapshot().last_error.is_none());

    let (_, outcome) = one_call("big-error", "size = 30000000").await;
    let err = outcome.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "trap", "{err}");
    assert!(
        err.to_string().contains("too much data is being copied"),
        "{err}"
    );
}

#[tokio::test]
async fn effects_of_a_failed_call_are_discarded() {
    let fail = mode("fail");
    let dir = plugin_dir(&[("failing", TEST_PLUGIN, Some(&fail))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    let event = created("t1", 1_000);
    let outcomes = dispatcher.dispatch(&event, 0, 1_000).await;
    let err = outcomes[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "plugin-error");
    assert_eq!(
        err.to_string(),
        "plugin returned bad-input error [refused]: event ev-t1-1000 is not welcome"
    );
    let state = dispatcher.state("failing").unwrap();
    assert!(state.is_empty(), "state write discarded");
    assert_eq!(state.timer_count(), 0, "timer discarded");
    assert!(dispatcher.fire_next(i64::MAX).await.is_none());
}

/// An operator lowered `limits.timers` below what a plugin's restored
/// state holds. A firing takes its timer out before the call, so setting
/// it again in `on-timer` was measured as growth past the limit: the call
/// failed with `quota` (counted toward quarantine) and the timer was gone
/// for good. Growth now counts from before the timer was taken out.
#[tokio::test]
async fn a_plugin_over_a_lowered_timer_limit_keeps_a_timer_it_rearms() {
    let rearm = mode("rearm").replace("[limits]\n", "[limits]\ntimers = 1\n");
    let dir = plugin_dir(&[("rearming", TEST_PLUGIN, Some(&rearm))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    let mut state = todo_eventd::state::PluginState::default();
    for (key, due) in [("a", 1_000), ("b", 5_000)] {
        let timer = todo_eventd::state::Timer {
            due,
            payload: Vec::new(),
            hops: 0,
        };
        state.set_timer(key.to_owned(), Some(timer));
    }
    dispatcher.restore([("rearming".to_owned(), state)].into());
    assert_eq!(dispatcher.timer_count(), 2, "over the limit of 1");

    let firing = dispatcher.fire_next(1_000).await.unwrap();
    assert!(firing.outcome.result.is_ok(), "{:?}", firing.outcome.result);
    assert_eq!(dispatcher.timer_count(), 2, "re-armed, not lost");
    let state = dispatcher.state("rearming").unwrap();
    assert!(state.timer("a").is_some_and(|t| t.due > 1_000));
    assert_eq!(plugins[0].health.snapshot().consecutive_failures, 0);
}

#[tokio::test]
async fn timers_fire_in_order_with_their_payload() {
    let timer = mode("timer");
    let dir = plugin_dir(&[("timers", TEST_PLUGIN, Some(&timer))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    for (task, at) in [("late", 5_000), ("early", 1_000)] {
        let event = created(task, at);
        assert!(dispatcher.dispatch(&event, 0, at).await[0].result.is_ok());
    }
    assert_eq!(dispatcher.next_due(), Some(61_000));
    assert!(dispatcher.fire_next(60_999).await.is_none(), "not due yet");
    let first = dispatcher.fire_next(100_000).await.unwrap();
    assert_eq!(first.timer.key, "early");
    let emits = first.outcome.result.unwrap();
    let value: serde_json::Value = serde_json::from_str(&emits[0].value).unwrap();
    assert_eq!(value["payload"], "ev-early-1000");
    assert_eq!(
        first.outcome.changed,
        ["early"],
        "the firing's removal is among its changes"
    );
    let state = dispatcher.state("timers").unwrap();
    assert!(state.timer("early").is_none() && state.timer("late").is_some());
    assert_eq!(
        dispatcher.fire_next(100_000).await.unwrap().timer.key,
        "late"
    );
    assert!(dispatcher.fire_next(100_000).await.is_none());
}

/// More plugin instances than the sandbox may hold (`sandbox.max_instances`,
/// say after a rebalance assigned many partitions) is the daemon's limit,
/// not a plugin's fault: the plugin that found no room is not quarantined,
/// and the error says which setting to raise.
#[tokio::test]
async fn a_plugin_that_finds_no_room_for_an_instance_is_not_blamed() {
    let sandbox = sandbox_holding(2);
    let echo = mode("echo");
    let dir = plugin_dir(&[
        ("a", TEST_PLUGIN, Some(&echo)),
        ("b", TEST_PLUGIN, Some(&echo)),
        ("c", TEST_PLUGIN, Some(&echo)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let policy = DispatchPolicy {
        quarantine: QuarantinePolicy {
            after: 3,
            ..QuarantinePolicy::default()
        },
        ..DispatchPolicy::OFFLINE
    };
    let mut dispatcher = Dispatcher::with(&plugins, policy, Arc::default());
    for n in 0..10 {
        let outcomes = dispatcher
            .dispatch(&created(&format!("t{n}"), 1_000 + n), 0, 1_000 + n)
            .await;
        assert!(outcomes[0].result.is_ok() && outcomes[1].result.is_ok());
        let err = outcomes[2].result.as_ref().unwrap_err();
        assert_eq!(err.kind(), "capacity");
        assert!(
            err.to_string().contains("sandbox.max_instances is 2"),
            "{err}"
        );
    }
    let health = plugins[2].health.snapshot();
    assert_eq!((health.consecutive_failures, health.quarantines), (0, 0));
    assert!(health.retry_at.is_none());
}

/// A timer whose call finds no room for an instance is put back as it
/// was, not dead-lettered (the call removed it, so a dead letter was all
/// that was left of a reminder), and the plugin's timers wait a second, so
/// a full pool costs one attempt a second, not one per timer. Once there
/// is room they fire, with their own due times.
#[tokio::test]
async fn a_timer_that_finds_no_room_fires_later() {
    use todo_eventd::dispatch::NO_ROOM_TIMER_DELAY_MS;
    use todo_eventd::state::{PluginState, Timer};
    let sandbox = sandbox_holding(2);
    let echo = mode("echo");
    let dir = plugin_dir(&[
        ("a", TEST_PLUGIN, Some(&echo)),
        ("b", TEST_PLUGIN, Some(&echo)),
        ("timed", TEST_PLUGIN, Some(&mode("timer"))),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    // One partition's plugins hold the pool's two instances.
    let mut busy = Dispatcher::new(&plugins[..2]);
    for outcome in busy.dispatch(&created("t0", 1_000), 0, 1_000).await {
        outcome.result.unwrap();
    }
    // Another partition's restored timer comes due.
    let mut timed = Dispatcher::new(&plugins[2..]);
    let mut state = PluginState::default();
    let timer = Timer {
        due: 5_000,
        payload: b"ev-1".to_vec(),
        hops: 0,
    };
    state.set_timer("t1".into(), Some(timer.clone()));
    state.set_timer("t2".into(), Some(timer));
    timed.restore([("timed".to_owned(), state)].into());
    let firing = timed.fire_next(6_000).await.unwrap();
    assert_eq!(firing.postponed, Some(6_000 + NO_ROOM_TIMER_DELAY_MS));
    assert_eq!(firing.outcome.result.as_ref().unwrap().len(), 0);
    assert!(firing.outcome.changed.is_empty(), "nothing to write");
    let state = timed.state("timed").unwrap();
    for key in ["t1", "t2"] {
        let kept = state.timer(key).unwrap();
        assert_eq!((kept.due, kept.payload.as_slice()), (5_000, &b"ev-1"[..]));
    }
    assert!(
        timed.fire_next(6_999).await.is_none(),
        "the other timer waits too"
    );

    drop(busy);
    for key in ["t1", "t2"] {
        let firing = timed.fire_next(7_000).await.unwrap();
        assert_eq!(firing.postponed, None);
        assert_eq!((firing.timer.key.as_str(), firing.timer.due), (key, 5_000));
        let emits = firing.outcome.result.unwrap();
        let value: serde_json::Value = serde_json::from_str(&emits[0].value).unwrap();
        assert_eq!(value["payload"], "ev-1");
    }
    assert_eq!(timed.timer_count(), 0);
}

/// A sandbox of eight instances whose manifests may grant what `grants`
/// allows.
fn sandbox_granting(grants: GrantPolicy) -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 8,
            grants,
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

/// A sandbox whose pool holds `max_instances` instances.
fn sandbox_holding(max_instances: u32) -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances,
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

/// A sandbox whose input topic is `task-events`.
fn sandbox_reading_task_events() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 8,
            input_topics: vec!["task-events".into()],
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

/// A `feedback` manifest: `out` is the input topic.
fn feedback(limits: &str, config: &str) -> String {
    format!(
        "[outputs]\nout = \"task-events\"\n[limits]\n{limits}\n[config]\nmode = \"feedback\"\n{config}\n"
    )
}

fn quota(outcome: &Outcome) -> String {
    match outcome.result.as_ref().unwrap_err() {
        CallError::Quota(quota) => quota.quota.to_owned(),
        other => panic!("not a quota: {other}"),
    }
}

/// A plugin feeding its output back to the input topic may write one
/// record there per call unless its manifest asks for more: two per call
/// would double the loop at every round.
#[tokio::test]
async fn a_plugin_may_not_multiply_what_it_feeds_back_to_the_input() {
    let sandbox = sandbox_reading_task_events();
    let doubling = feedback("", "");
    let allowed = feedback("input_emits_per_call = 2", "");
    let elsewhere = manifest("feedback", "", "");
    let dir = plugin_dir(&[
        ("a-doubling", TEST_PLUGIN, Some(&doubling)),
        ("b-allowed", TEST_PLUGIN, Some(&allowed)),
        ("c-elsewhere", TEST_PLUGIN, Some(&elsewhere)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    let outcomes = dispatcher.dispatch(&created("t1", 1_000), 0, 1_000).await;
    assert_eq!(quota(&outcomes[0]), "limits.input_emits_per_call");
    assert_eq!(
        outcomes[0].result.as_ref().unwrap_err().to_string(),
        "quota: 2 emits to the input topic task-events exceeds limits.input_emits_per_call (1)"
    );
    assert_eq!(outcomes[1].result.as_ref().unwrap().len(), 2, "raised");
    assert_eq!(
        outcomes[2].result.as_ref().unwrap().len(),
        2,
        "other topics are not held to it"
    );
}

/// However a loop through the input goes — straight from `on-event`, or
/// through a timer set on the way — a call handling a record
/// `max_hops` plugin emits from its producer's may not feed the input; at
/// `MAX_HOPS` no call may emit at all (a loop through another deployment).
#[tokio::test]
async fn a_loop_through_the_input_ends_at_max_hops() {
    let sandbox = sandbox_reading_task_events();
    let straight = feedback("", "copies = 1");
    let timed = feedback("", "copies = 1\nvia_timer = true");
    let elsewhere = manifest("feedback", "", "copies = 1");
    let dir = plugin_dir(&[
        ("a-straight", TEST_PLUGIN, Some(&straight)),
        ("b-timed", TEST_PLUGIN, Some(&timed)),
        ("c-elsewhere", TEST_PLUGIN, Some(&elsewhere)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let policy = DispatchPolicy {
        max_hops: 3,
        ..DispatchPolicy::OFFLINE
    };
    let mut dispatcher = Dispatcher::with(&plugins, policy, Arc::default());
    let event = created("t1", 1_000);
    for hops in 0..3 {
        let outcomes = dispatcher.dispatch(&event, hops, 1_000).await;
        assert_eq!(outcomes[0].result.as_ref().unwrap().len(), 1, "{hops}");
        // The timer set at `hops` fires with them.
        let firing = dispatcher.fire_next(1_000).await.unwrap();
        assert_eq!(firing.hops, hops);
        assert_eq!(firing.outcome.result.as_ref().unwrap().len(), 1);
    }
    let outcomes = dispatcher.dispatch(&event, 3, 1_000).await;
    let err = outcomes[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "max-hops");
    assert_eq!(
        err.to_string(),
        "loop: an emit to task-events while handling input 3 plugin emits from its producer's record; plugins.max_hops = 3 for an input topic"
    );
    assert!(
        !err.counts_toward_quarantine(),
        "a record fed back by another plugin can provoke it"
    );
    assert!(outcomes[1].result.is_ok(), "setting the timer is allowed");
    assert!(
        outcomes[2].result.is_ok(),
        "other topics are not held to it"
    );
    let firing = dispatcher.fire_next(1_000).await.unwrap();
    assert_eq!(firing.hops, 3, "the timer keeps the hops it was set at");
    assert_eq!(
        firing.outcome.result.as_ref().unwrap_err().kind(),
        "max-hops"
    );

    let outcomes = dispatcher.dispatch(&event, MAX_HOPS, 1_000).await;
    let err = outcomes[2].result.as_ref().unwrap_err();
    assert_eq!(
        err.to_string(),
        "loop: an emit to out-topic while handling input 64 plugin emits from its producer's record; no emit is allowed from 64 (a loop through another deployment?)"
    );
}

/// A granted directory is checked on its real path at load; should a part
/// of it be swapped for a symlink since (a plugin writing to a
/// neighbouring grant could), a new instance is refused the directory
/// rather than following the link.
#[tokio::test]
async fn a_granted_directory_swapped_for_a_symlink_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let sandbox = sandbox_granting(GrantPolicy {
        writable: vec![root.path().to_path_buf()],
        ..GrantPolicy::default()
    });
    let granted = format!(
        "[wasi]\ndirs = [{{ host = \"{}\", guest = \"/data\", writable = true }}]\n",
        data.display()
    );
    let dir = plugin_dir(&[("granted", TEST_PLUGIN, Some(&granted))]);
    let plugins = load(&sandbox, dir.path()).await;
    let event = created("t1", 1_000);
    assert!(
        Dispatcher::new(&plugins).dispatch(&event, 0, 1_000).await[0]
            .result
            .is_ok()
    );

    std::fs::remove_dir(&data).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &data).unwrap();
    let outcomes = Dispatcher::new(&plugins).dispatch(&event, 0, 1_000).await;
    let err = outcomes[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "instantiate");
    assert!(
        err.to_string().contains("no longer resolves to itself"),
        "{err}"
    );
}

/// A FIFO nobody writes to, in a directory a plugin was granted: each
/// call that opens it ends at its deadline, though the open still holds a
/// thread of the runtime's blocking pool (wasmtime-wasi runs file calls
/// there and cannot cut an `open(2)` short). The daemon's own blocking
/// work — here, reading the plugins directory — runs on a pool of its own
/// and still goes through once the runtime's is all taken.
#[test]
fn a_fifo_in_a_granted_directory_holds_no_call_past_its_deadline_nor_the_daemon() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let fifo = root.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let granted = format!(
        "{}[wasi]\ndirs = [{{ host = \"{}\", guest = \"/data\" }}]\n",
        mode("read-file"),
        root.path().display()
    );
    let dir = plugin_dir(&[("reader", TEST_PLUGIN, Some(&granted))]);
    let reload = runtime.block_on(async {
        let sandbox = sandbox_granting(GrantPolicy {
            readable: vec![root.path().to_path_buf()],
            ..GrantPolicy::default()
        });
        let plugins = load(&sandbox, dir.path()).await;
        let mut dispatcher = Dispatcher::new(&plugins);
        // Two calls take the runtime's two blocking threads for good; the
        // third waits for one.
        for round in 1..=3 {
            let event = created("t1", 1_000 * round);
            let outcomes = tokio::time::timeout(BOUND, dispatcher.dispatch(&event, 0, 1_000))
                .await
                .expect("the call ends at its deadline");
            let err = outcomes[0].result.as_ref().unwrap_err();
            assert_eq!(trap_kind(err), Some(TrapKind::Deadline), "{err}");
        }
        tokio::time::timeout(BOUND, todo_eventd::plugin::load_dir(&sandbox, dir.path())).await
    });
    // The stuck opens end only when a writer comes: leave them be (a
    // runtime dropped with them would wait for them).
    runtime.shutdown_background();
    let reload = reload.expect("reading the plugins directory waited for the plugin's stuck opens");
    assert_eq!(reload.unwrap().plugins.len(), 1);
}

/// Each file a plugin opens in a granted directory is a descriptor of the
/// daemon's, held while the plugin keeps it; an instance with granted
/// directories may hold only `MAX_RESOURCES_WITH_FILES` WASI resources,
/// so a plugin hoarding open files cannot run the daemon out of the
/// descriptors its broker connections need.
#[tokio::test]
async fn a_plugin_cannot_hoard_open_files() {
    let root = tempfile::tempdir().unwrap();
    let sandbox = sandbox_granting(GrantPolicy {
        readable: vec![root.path().to_path_buf()],
        ..GrantPolicy::default()
    });
    let hoarder = |count: usize| {
        format!(
            "{}count = {count}\n[wasi]\ndirs = [{{ host = \"{}\", guest = \"/data\" }}]\n",
            mode("open-many").replace("50ms", "5s"),
            root.path().display()
        )
    };
    let within = MAX_RESOURCES_WITH_FILES - 50;
    let (modest, greedy) = (hoarder(within), hoarder(MAX_RESOURCES_WITH_FILES + 50));
    let dir = plugin_dir(&[
        ("a-modest", TEST_PLUGIN, Some(&modest)),
        ("b-greedy", TEST_PLUGIN, Some(&greedy)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let outcomes = Dispatcher::new(&plugins)
        .dispatch(&created("t1", 1_000), 0, 1_000)
        .await;
    let emits = outcomes[0].result.as_ref().expect("within the bound");
    assert_eq!(emits[0].value, within.to_string());
    let err = outcomes[1].result.as_ref().expect_err("past the bound");
    assert_eq!(err.kind(), "trap");
    assert!(
        err.to_string().contains("resource table has no free keys"),
        "{err}"
    );
    assert!(err.is_plugin_fault(), "{err}");
}

/// `plugins test` on `lines` with `plugins`, returning its result and the
/// JSON lines it wrote.
async fn offline_run(
    plugins: &[Arc<Plugin>],
    lines: &[String],
    options: &todo_eventd::offline::Options,
) -> (
    Result<todo_eventd::offline::Summary, todo_eventd::offline::Error>,
    Vec<serde_json::Value>,
) {
    let input = lines.join("\n");
    let mut out = Vec::new();
    let result = todo_eventd::offline::run(plugins, input.as_bytes(), options, &mut out).await;
    let written = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (result, written)
}

/// An offline run bounds timer calls per step of its clock, not per run:
/// a plugin re-arming forever stops the run with the step and the plugin
/// named, while an honest timer firing once per line never adds up to it.
#[tokio::test]
async fn offline_timer_calls_are_bounded_per_step_of_the_clock() {
    let event = |n: i64| {
        let at = jiff::Timestamp::from_second(1_800_000_000 + n * 3_600).unwrap();
        serde_json::json!({
            "event_id": format!("e{n}"), "event_type": "created", "user_id": "u",
            "task_id": format!("t{n}"), "timestamp": at.to_string(),
        })
        .to_string()
    };
    let options = todo_eventd::offline::Options {
        advance: Duration::from_secs(3_600),
        max_firings_per_step: 2,
        ..Default::default()
    };
    let timer = mode("timer");
    let dir = plugin_dir(&[("honest", TEST_PLUGIN, Some(&timer))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let lines: Vec<String> = (0..6).map(event).collect();
    let (result, _) = offline_run(&plugins, &lines, &options).await;
    let summary = result.unwrap();
    assert_eq!(summary.timers_fired, 6, "one per line, none lost");

    let rearm = mode("rearm");
    let dir = plugin_dir(&[("rearming", TEST_PLUGIN, Some(&rearm))]);
    let plugins = load(&sandbox(), dir.path()).await;
    let (result, written) = offline_run(&plugins, &lines[..1], &options).await;
    let err = result.unwrap_err().to_string();
    assert_eq!(
        err,
        "more than 2 timer calls while --advance moved the clock from \
         2027-01-15T08:00:00Z to 2027-01-15T09:00:00Z (3 of them to plugin rearming): \
         a plugin is re-arming a timer in a loop, or that step spans far more time than the \
         rest of the input"
    );
    assert!(written.iter().all(|line| line["kind"] != "dead-letter"));
}

/// A timer call that finds no instance free is kept and tried again, as
/// in the daemon — and an offline run says so, rather than counting it
/// as fired with nothing to show.
#[tokio::test]
async fn an_offline_timer_call_with_no_instance_free_is_reported_postponed() {
    // One instance, recycled after two calls: `a` sets its timers and
    // gives its instance up on the second event, which `b` then holds.
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 1,
            max_calls_per_instance: 2,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let (timer, echo) = (mode("timer"), mode("echo"));
    let dir = plugin_dir(&[
        ("a", TEST_PLUGIN, Some(&timer)),
        ("b", TEST_PLUGIN, Some(&echo)),
    ]);
    let plugins = load(&sandbox, dir.path()).await;
    let lines = [
        common::event("e1", "u", "t1", "created"),
        common::event("e2", "u", "t2", "created"),
    ];
    let options = todo_eventd::offline::Options {
        advance: Duration::from_secs(65),
        ..Default::default()
    };
    let (result, written) = offline_run(&plugins, &lines, &options).await;
    let summary = result.unwrap();
    assert_eq!(summary.timers_fired, 0, "{written:?}");
    let postponed: Vec<_> = written
        .iter()
        .filter(|line| line["kind"] == "postponed")
        .collect();
    assert_eq!(postponed.len() as u64, summary.timers_postponed);
    // Due at 08:01:00, then one try a second until 08:01:05.
    assert_eq!(postponed.len(), 6, "{written:?}");
    assert_eq!(postponed[0]["plugin"], "a");
    assert_eq!(postponed[0]["timer"], "t1");
    assert_eq!(postponed[0]["at"], "2026-01-26T08:01:00Z");
    assert_eq!(postponed[0]["retry_at"], "2026-01-26T08:01:01Z");
}

/// A plugin with a backlog of timers due long ago (a due time of 0, set
/// on every event, say) does not hold back another plugin's timer due
/// now: plugins take turns to fire (before, the earliest timer of all went
/// first, and the other plugin's waited behind the whole backlog).
#[tokio::test]
async fn a_backlog_of_overdue_timers_does_not_hold_back_another_plugins() {
    let timer = mode("timer");
    let dir = plugin_dir(&[
        ("a-backlog", TEST_PLUGIN, Some(&timer)),
        ("b-punctual", TEST_PLUGIN, Some(&timer)),
    ]);
    let plugins = load(&sandbox(), dir.path()).await;
    let mut dispatcher = Dispatcher::new(&plugins);
    let timers = |due: &[i64]| {
        let mut state = todo_eventd::state::PluginState::default();
        for (n, due) in due.iter().enumerate() {
            let timer = todo_eventd::state::Timer {
                due: *due,
                payload: Vec::new(),
                hops: 0,
            };
            state.set_timer(format!("t{n}"), Some(timer));
        }
        state
    };
    let backlog: Vec<i64> = (0..500).collect();
    dispatcher.restore(
        [
            ("a-backlog".to_owned(), timers(&backlog)),
            ("b-punctual".to_owned(), timers(&[5_000])),
        ]
        .into(),
    );
    let mut fired = Vec::new();
    for _ in 0..4 {
        let firing = dispatcher.fire_next(10_000).await.unwrap();
        assert!(firing.outcome.result.is_ok(), "{:?}", firing.outcome.result);
        fired.push((firing.outcome.plugin.name.clone(), firing.timer.due));
    }
    assert!(
        fired.contains(&("b-punctual".to_owned(), 5_000)),
        "b's timer waits behind a's backlog: {fired:?}"
    );
    // Each plugin's own timers still fire earliest first.
    let a_due: Vec<i64> = fired
        .iter()
        .filter(|(plugin, _)| plugin == "a-backlog")
        .map(|(_, due)| *due)
        .collect();
    assert_eq!(a_due, [0, 1, 2]);
}
