//! A plugin that misbehaves on purpose, for the sandbox's tests and
//! benchmarks. Its `mode` config value picks the behaviour:
//!
//! - `noop` (default): succeed and do nothing;
//! - `echo`: emit `{"event": ID, "kind": KIND}` to the `out` output, keyed by
//!   task id, and count events in state;
//! - `loop`: spin forever (the call deadline must stop it);
//! - `grow`: allocate without bound (the memory limit must stop it);
//! - `stack`: recurse without bound (stack overflow);
//! - `panic`: panic with a message;
//! - `bad-emit`: emit to an output the manifest does not grant;
//! - `fail`: write state, set a timer, emit, then return an error (none of
//!   which may be applied);
//! - `timer`: set a timer 1 minute after the event, emit on fire;
//! - `flaky`: return an error from the first `fail_calls` calls of an
//!   instance, then behave like `echo` (a plugin that fails for a while,
//!   then recovers).

use std::sync::atomic::{AtomicU64, Ordering};

use todo_plugin_sdk::{
    FiredTimer, Guest, PluginError, TaskEvent, error, host, output, state, timers,
};

struct TestPlugin;

/// Counts the event in state and emits `{"event", "kind", "count"}` to
/// `out`, keyed by task id.
fn echo(event: &TaskEvent) {
    let count = state::get("count")
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    state::set("count", count.to_string().as_bytes());
    let value = serde_json::json!({
        "event": event.id,
        "kind": event.kind.name(),
        "count": count,
    });
    output::emit("out", Some(&event.task.id), &value.to_string());
}

fn mode() -> String {
    host::config("mode").unwrap_or_else(|| "noop".into())
}

impl Guest for TestPlugin {
    fn on_event(event: TaskEvent) -> Result<(), PluginError> {
        match mode().as_str() {
            "noop" => Ok(()),
            "echo" => {
                echo(&event);
                Ok(())
            }
            "flaky" => {
                static CALLS: AtomicU64 = AtomicU64::new(0);
                let fail_calls = host::config("fail_calls")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if CALLS.fetch_add(1, Ordering::Relaxed) < fail_calls {
                    return Err(error(
                        "flaky",
                        format!("not ready to handle event {} yet", event.id),
                    ));
                }
                echo(&event);
                Ok(())
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "stack" => {
                // Scalars only, so the recursion uses the wasm call stack
                // (not Rust's shadow stack in linear memory); the bound is
                // unknowable to the optimiser.
                #[inline(never)]
                fn depth(n: u64, stop: u64) -> u64 {
                    if n == stop {
                        n
                    } else {
                        depth(n + 1, stop).wrapping_mul(3) ^ n
                    }
                }
                let stop = u64::MAX - event.occurred_at.unsigned_abs();
                Err(error("unreachable", depth(0, stop).to_string()))
            }
            "panic" => panic!("boom on event {}", event.id),
            "bad-emit" => {
                output::emit("secret", None, "{}");
                Ok(())
            }
            "fail" => {
                state::set("poison", b"1");
                timers::set("poison", event.occurred_at + 1, b"");
                output::emit("out", None, "{\"poison\":true}");
                Err(error(
                    "refused",
                    format!("event {} is not welcome", event.id),
                ))
            }
            "timer" => {
                timers::set(
                    &event.task.id,
                    event.occurred_at + 60_000,
                    event.id.as_bytes(),
                );
                Ok(())
            }
            other => Err(error("bad-config", format!("unknown mode {other}"))),
        }
    }

    fn on_timer(timer: FiredTimer) -> Result<(), PluginError> {
        let value = serde_json::json!({
            "timer": timer.key,
            "due": timer.due,
            "payload": String::from_utf8_lossy(&timer.payload),
        });
        output::emit("out", Some(&timer.key), &value.to_string());
        Ok(())
    }
}

todo_plugin_sdk::export!(TestPlugin);
