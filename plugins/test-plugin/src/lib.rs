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
//! - `panic-or-reject`: return a `bad-input` error for tasks whose id
//!   starts with `reject`, panic on the others;
//! - `bad-emit`: emit to an output the manifest does not grant;
//! - `long-key`: write state under a key of 2000 bytes (over the host's
//!   bound);
//! - `fail`: write state, set a timer, emit, then return an error (none of
//!   which may be applied);
//! - `timer`: set a timer 1 minute after the event (its payload the event
//!   id), emit on fire — or, with `timer_fails` set, fail the `on-timer`
//!   call with a `bad-input` error;
//! - `flaky`: trap (panic) while the host's clock is before `fail_until`
//!   (ms), then behave like `echo` (a plugin that fails for a while, then
//!   recovers);
//! - `reject`: return a `bad-input` error for every event (a plugin
//!   rejecting its input, which must not quarantine it);
//! - `internal`: return an `internal` error for every event (a bug, which
//!   counts toward quarantine);
//! - `retry`: return a `retryable` error for the first `fail_times` (3)
//!   calls with each event, then behave like `echo` (the attempts are
//!   counted in the instance, which retries reuse);
//! - `feedback`: emit `copies` (2) `created` events derived from the event
//!   (ids `ID.N`, same user and task) to `out` — mapped to the input topic,
//!   a loop that doubles with every round; with `via_timer` set, set a
//!   timer due at once and emit them when it fires.
//!
//! With `init = "fail"`, `init` rejects the configuration; with
//! `init = "sleep"`, it sleeps a day, and with `init = "spin"` it loops
//! forever (the start-up deadline must end either).
//!
//! Attacks on the host, for the containment tests (sizes from `[config]`):
//! - `sleep`: sleep `sleep_ms` (default: a day) through WASI's monotonic
//!   clock (subscribe-duration + poll);
//! - `host-loop`: call host imports in a loop forever;
//! - `rearm`: set a timer for now on every event and re-arm it for now
//!   every time it fires;
//! - `state-flood`: write `count` (50) state values of `size` (1 MiB);
//! - `emit-flood`: emit `count` (3000) records of `size` (1 MiB);
//! - `timer-flood`: set `count` (800 000) timers;
//! - `log-flood`: log `count` (1000) lines of `size` (1 MB), and print as
//!   many to stdout;
//! - `log-forge`: log a line with a newline, a fake daemon log line and
//!   ANSI escapes;
//! - `big-error`: return an error whose message is `size` (30 MB) long;
//! - `state-churn`: write `count` distinct keys of `size` bytes per event
//!   (the per-partition quotas must stop it);
//! - `big-key`: keep a value and a timer payload of `size` (600 kB) each
//!   under one key — the value on the first event and the timer on later
//!   ones, or both in one call with `together` set.
//!
//! With `only_user` set, every mode applies to that user's events only;
//! other events are ignored.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use todo_plugin_sdk::{
    Config, Error, FiredTimer, Plugin, Result, TaskEvent, host, output, rfc3339, state, timers,
};

thread_local! {
    /// Calls per event id, for `retry` (instances live across retries).
    static ATTEMPTS: RefCell<HashMap<String, u64>> = RefCell::new(HashMap::new());
    /// `mode`, read once in `init` (a no-op call then makes no host call
    /// and no allocation, so the dispatch bench measures the host alone);
    /// one leaked string per instance.
    static MODE: Cell<&'static str> = const { Cell::new("noop") };
    /// `only_user`, read once in `init`.
    static ONLY_USER: RefCell<Option<String>> = const { RefCell::new(None) };
}

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

/// Emits `copies` `created` events derived from event `id` (user `user`,
/// task `task`) to `out`, for `feedback`.
fn feed_back(id: &str, user: &str, task: &str) {
    for n in 0..number("copies", 2) {
        let value = serde_json::json!({
            "event_id": format!("{id}.{n}"),
            "event_type": "created",
            "user_id": user,
            "task_id": task,
            "timestamp": rfc3339(host::now()),
            "task_data": {"title": "again"},
        });
        output::emit("out", Some(user), &value.to_string());
    }
}

fn mode() -> &'static str {
    MODE.get()
}

/// Whether `only_user` is set to someone other than `user`.
fn ignores(user: &str) -> bool {
    ONLY_USER.with(|only| only.borrow().as_deref().is_some_and(|only| only != user))
}

/// A number from `[config]`, or `default`.
fn number(key: &str, default: u64) -> u64 {
    host::config(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The attacks on the host; `None` for a mode that is not one.
fn attack(mode: &str, event: &TaskEvent) -> Option<Result> {
    let size = |default| usize::try_from(number("size", default)).unwrap_or(usize::MAX);
    match mode {
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(number(
                "sleep_ms", 86_400_000,
            )));
        }
        "host-loop" => loop {
            std::hint::black_box(state::get("anything"));
            std::hint::black_box(host::now());
        },
        "rearm" => timers::set("storm", host::now(), b""),
        // A file in a granted directory: a FIFO nobody writes to holds
        // the host's open (or read) until a writer comes.
        // Files held open at once: each is a descriptor of the host's.
        "open-many" => {
            let path = host::config("path").unwrap_or_else(|| "/data".to_owned());
            let held: Vec<std::fs::File> = (0..number("count", 1000))
                .map_while(|_| std::fs::File::open(&path).ok())
                .collect();
            output::emit("out", None, &held.len().to_string());
        }
        // One pollable, `size` times over in one `poll`: a list the host
        // would lift into several times its size.
        "poll-flood" => {
            let ready = wasip2::clocks::monotonic_clock::subscribe_duration(0);
            let list = vec![&ready; size(1_000_000)];
            let woken = wasip2::io::poll::poll(&list);
            output::emit("out", None, &woken.len().to_string());
        }
        "read-file" => {
            let path = host::config("path").unwrap_or_else(|| "/data/pipe".to_owned());
            std::hint::black_box(std::fs::read(path).ok());
        }
        "state-flood" => {
            let value = vec![7u8; size(1 << 20)];
            for i in 0..number("count", 50) {
                state::set(&format!("{}-{i}", event.id), &value);
            }
        }
        // A value and a timer payload under one key, each under the
        // largest value but not both together: in one call (`together`),
        // or the value first and the timer on the next event.
        "big-key" => {
            let bytes = vec![7u8; size(600_000)];
            let together = host::config("together").is_some();
            let stored = state::get("big").is_some();
            if together || !stored {
                state::set("big", &bytes);
            }
            if together || stored {
                timers::set("big", host::now() + 86_400_000, &bytes);
            }
        }
        "state-churn" => {
            let value = vec![7u8; size(1024)];
            for i in 0..number("count", 100) {
                state::set(&format!("{}-{i}", event.id), &value);
            }
        }
        "emit-flood" => {
            let value = "x".repeat(size(1 << 20));
            for _ in 0..number("count", 3000) {
                output::emit("out", None, &value);
            }
        }
        "timer-flood" => {
            for i in 0..number("count", 800_000) {
                timers::set(&format!("t{i}"), event.occurred_at + 60_000, b"");
            }
        }
        "log-flood" => {
            let line = "y".repeat(size(1_000_000));
            for _ in 0..number("count", 1000) {
                host::log(host::LogLevel::Info, &line);
                // Through WASI stdout, which the host logs too.
                #[allow(clippy::print_stdout)]
                {
                    println!("{line}");
                }
            }
        }
        "log-forge" => host::log(
            host::LogLevel::Warn,
            "innocent\n2026-01-01T00:00:00.000000Z  INFO todo_eventd::daemon: Forged line.\u{1b}[31m red",
        ),
        "big-error" => {
            return Some(Err(Error::bad_input(
                "bad-input",
                "e".repeat(size(30_000_000)),
            )));
        }
        _ => return None,
    }
    Some(Ok(()))
}

impl Plugin for TestPlugin {
    fn init(config: &Config) -> Result {
        let mode = config.get("mode").unwrap_or("noop");
        MODE.set(Box::leak(mode.to_owned().into_boxed_str()));
        ONLY_USER.set(config.get("only_user").map(str::to_owned));
        match config.get("init") {
            Some("fail") => Err(Error::bad_input(
                "bad-config",
                "config.init = \"fail\" asks init to fail",
            )),
            // Never returns: the instance's deadline must end it.
            Some("sleep") => {
                std::thread::sleep(std::time::Duration::from_secs(86_400));
                Ok(())
            }
            Some("spin") => loop {
                std::hint::black_box(MODE.get());
            },
            // What init does through the imports goes nowhere: refused.
            Some("emit") => {
                output::emit("out", None, "from init");
                Ok(())
            }
            Some("write") => {
                state::set("from-init", b"1");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_event(event: TaskEvent) -> Result {
        if ignores(&event.task.user_id) {
            return Ok(());
        }
        let mode = mode();
        if let Some(result) = attack(mode, &event) {
            return result;
        }
        match mode {
            "noop" => Ok(()),
            "reject" => Err(Error::bad_input(
                "bad-input",
                format!("task {} is not acceptable", event.task.id),
            )),
            "internal" => Err(Error::internal(
                "broken",
                format!("invariant broken at event {}", event.id),
            )),
            "retry" => {
                let attempt = ATTEMPTS.with(|a| {
                    let mut a = a.borrow_mut();
                    let n = a.entry(event.id.clone()).or_default();
                    *n += 1;
                    *n
                });
                if attempt <= number("fail_times", 3) {
                    return Err(Error::retryable(
                        "busy",
                        format!("attempt {attempt} at event {}", event.id),
                    ));
                }
                echo(&event);
                Ok(())
            }
            "echo" => {
                echo(&event);
                Ok(())
            }
            "feedback" if host::config("via_timer").is_some() => {
                let payload = format!("{}\n{}", event.task.user_id, event.task.id);
                timers::set(&event.id, host::now(), payload.as_bytes());
                Ok(())
            }
            "feedback" => {
                feed_back(&event.id, &event.task.user_id, &event.task.id);
                Ok(())
            }
            "flaky" => {
                let fail_until = number("fail_until", 0);
                if u64::try_from(host::now()).unwrap_or(0) < fail_until {
                    panic!("not ready to handle event {} before {fail_until}", event.id);
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
                Err(Error::internal("unreachable", depth(0, stop).to_string()))
            }
            "panic" => panic!("boom on event {}", event.id),
            "panic-or-reject" if event.task.id.starts_with("reject") => Err(Error::bad_input(
                "bad-input",
                format!("task {} is not acceptable", event.task.id),
            )),
            "panic-or-reject" => panic!("boom on event {}", event.id),
            "bad-emit" => {
                output::emit("secret", None, "{}");
                Ok(())
            }
            "long-key" => {
                state::set(&"k".repeat(2000), b"1");
                Ok(())
            }
            "fail" => {
                state::set("poison", b"1");
                timers::set("poison", event.occurred_at + 1, b"");
                output::emit("out", None, "{\"poison\":true}");
                Err(Error::bad_input(
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
            other => Err(Error::bad_input(
                "bad-config",
                format!("unknown mode {other}"),
            )),
        }
    }

    fn on_timer(timer: FiredTimer) -> Result {
        if mode() == "rearm" {
            timers::set(&timer.key, host::now(), b"");
            return Ok(());
        }
        if mode() == "feedback" {
            let payload = String::from_utf8_lossy(&timer.payload);
            let (user, task) = payload.split_once('\n').unwrap_or(("u", "t"));
            feed_back(&timer.key, user, task);
            return Ok(());
        }
        if host::config("timer_fails").is_some() {
            return Err(Error::bad_input(
                "refused",
                format!("timer {} is not welcome", timer.key),
            ));
        }
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
