//! Plugins that misbehave are stopped or refused with a classified error;
//! the runtime stays healthy and a well-behaved plugin beside them keeps
//! producing its normal output for the same events.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TEST_PLUGIN, created, load, mode, plugin_dir, sandbox};
use todo_eventd::dispatch::Dispatcher;
use todo_eventd::sandbox::{CallError, TrapKind};

fn trap_kind(err: &CallError) -> Option<TrapKind> {
    match err {
        CallError::Trap { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn each_hostile_plugin_fails_with_its_class_and_the_good_one_carries_on() {
    let loop_manifest = mode("loop");
    let grow_manifest = mode("grow");
    let stack_manifest = mode("stack");
    let panic_manifest = mode("panic");
    let bad_emit_manifest = mode("bad-emit");
    let echo_manifest = mode("echo");
    let dir = plugin_dir(&[
        ("a-looper", TEST_PLUGIN, Some(&loop_manifest)),
        ("b-hog", TEST_PLUGIN, Some(&grow_manifest)),
        ("c-deep", TEST_PLUGIN, Some(&stack_manifest)),
        ("d-panicker", TEST_PLUGIN, Some(&panic_manifest)),
        ("e-snoop", TEST_PLUGIN, Some(&bad_emit_manifest)),
        ("z-echo", TEST_PLUGIN, Some(&echo_manifest)),
    ]);
    let sandbox = sandbox();
    let plugins = load(&sandbox, dir.path());
    let mut dispatcher = Dispatcher::new(&plugins);

    for round in 1..=3_u64 {
        let event = created("t1", 1_000 * i64::try_from(round).unwrap());
        let outcomes = dispatcher.dispatch(&event, event.occurred_at);
        let by_name = |name: &str| {
            outcomes
                .iter()
                .find(|o| o.plugin.name == name)
                .unwrap_or_else(|| panic!("{name} was not called"))
        };
        let expect = [
            ("a-looper", TrapKind::Deadline, "time limit of 50ms"),
            ("b-hog", TrapKind::Memory, "memory limit of 8388608 bytes"),
            ("c-deep", TrapKind::StackOverflow, "call stack exhausted"),
            ("d-panicker", TrapKind::Panic, "boom on event ev-t1-"),
            (
                "e-snoop",
                TrapKind::Denied,
                "emit to output \"secret\", which the manifest does not map (mapped: out)",
            ),
        ];
        for (name, kind, text) in expect {
            let err = by_name(name).result.as_ref().expect_err(name);
            assert_eq!(trap_kind(err), Some(kind), "{name}: {err}");
            assert!(err.to_string().contains(text), "{name}: {err}");
        }
        // The well-behaved plugin saw every round, with its state intact.
        let effects = by_name("z-echo").result.as_ref().expect("echo succeeds");
        assert_eq!(effects.emits.len(), 1);
        let value: serde_json::Value = serde_json::from_str(&effects.emits[0].value).unwrap();
        assert_eq!(value["count"], round, "echo state carried across rounds");
        assert_eq!(effects.emits[0].topic, "out-topic");
        // Nothing the failing plugins did was kept.
        for name in ["a-looper", "b-hog", "c-deep", "d-panicker", "e-snoop"] {
            assert!(dispatcher.state(name).unwrap().is_empty(), "{name} state");
        }
    }
}

#[test]
fn effects_of_a_failed_call_are_discarded() {
    let fail = mode("fail");
    let dir = plugin_dir(&[("failing", TEST_PLUGIN, Some(&fail))]);
    let sandbox = sandbox();
    let plugins = load(&sandbox, dir.path());
    let mut dispatcher = Dispatcher::new(&plugins);
    let event = created("t1", 1_000);
    let outcomes = dispatcher.dispatch(&event, 1_000);
    let err = outcomes[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), "plugin-error");
    assert_eq!(
        err.to_string(),
        "plugin returned error [refused]: event ev-t1-1000 is not welcome"
    );
    let state = dispatcher.state("failing").unwrap();
    assert!(state.is_empty(), "state write discarded");
    assert_eq!(state.timer_count(), 0, "timer discarded");
    assert!(dispatcher.fire_next(i64::MAX).is_none());
}

#[test]
fn timers_fire_in_order_with_their_payload() {
    let timer = mode("timer");
    let dir = plugin_dir(&[("timers", TEST_PLUGIN, Some(&timer))]);
    let sandbox = sandbox();
    let plugins = load(&sandbox, dir.path());
    let mut dispatcher = Dispatcher::new(&plugins);
    for (task, at) in [("late", 5_000), ("early", 1_000)] {
        let event = created(task, at);
        assert!(dispatcher.dispatch(&event, at)[0].result.is_ok());
    }
    assert_eq!(dispatcher.next_due(), Some(61_000));
    assert!(dispatcher.fire_next(60_999).is_none(), "not due yet");
    let first = dispatcher.fire_next(100_000).unwrap();
    assert_eq!(first.timer.key, "early");
    let effects = first.outcome.result.unwrap();
    let value: serde_json::Value = serde_json::from_str(&effects.emits[0].value).unwrap();
    assert_eq!(value["payload"], "ev-early-1000");
    assert_eq!(dispatcher.fire_next(100_000).unwrap().timer.key, "late");
    assert!(dispatcher.fire_next(100_000).is_none());
}
