//! The real binary, as a plugin author uses it: `plugins install`,
//! `plugins check` and `plugins test` on the repository's sample events.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{TEST_PLUGIN, plugin_dir};
use serde_json::Value;

fn todo_eventd(args: &[&str], cache: &Path) -> Output {
    daemon_command(cache).args(args).output().unwrap()
}

/// The binary with this test's cache and none of the runner's
/// `TODO_EVENTD_*` settings (they would change what is checked).
fn daemon_command(cache: &Path) -> Command {
    command_for_the_daemon(env!("CARGO_BIN_EXE_todo-eventd"), cache)
}

/// `program` (the binary, or a shell that runs it) with the environment
/// [`daemon_command`] gives the binary.
fn command_for_the_daemon(program: &str, cache: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TODO_EVENTD_") {
            command.env_remove(name);
        }
    }
    command.env("TODO_EVENTD_CACHE_DIR", cache);
    command
}

fn install(cache: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = todo_eventd(&["plugins", "install", dir.path().to_str().unwrap()], cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn plugins_test_on_the_sample_events_shows_every_plugin_working() {
    let cache = tempfile::tempdir().unwrap();
    let plugins = install(cache.path());
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events.ndjson");
    let out = todo_eventd(
        &[
            "plugins",
            "test",
            "--plugins",
            plugins.path().to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--advance",
            "72h",
        ],
        cache.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is JSON lines only"))
        .collect();
    let emits = |plugin: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["kind"] == "emit" && l["plugin"] == plugin)
            .collect()
    };

    // Task 42's reminder was moved by an update to 2026-01-28T08:00 and
    // fires exactly then, once, despite a replayed `created` event.
    let reminders = emits("reminders");
    let pay_rent: Vec<_> = reminders
        .iter()
        .filter(|r| r["value"]["task_id"] == "42")
        .collect();
    assert_eq!(pay_rent.len(), 1, "{reminders:#?}");
    assert_eq!(pay_rent[0]["at"], "2026-01-28T08:00:00Z");
    assert_eq!(pay_rent[0]["value"]["remind_at"], "2026-01-28T08:00:00Z");
    assert_eq!(pay_rent[0]["output"], "reminders");
    // Task 44 was completed before its reminder: no reminder.
    assert!(reminders.iter().all(|r| r["value"]["task_id"] != "44"));
    // Task 46: due 14:30 Berlin (13:30Z), reminder offset "1h".
    let dentist: Vec<_> = reminders
        .iter()
        .filter(|r| r["value"]["task_id"] == "46")
        .collect();
    assert_eq!(dentist.len(), 1);
    assert_eq!(dentist[0]["at"], "2026-01-29T12:30:00Z");

    // The completed weekly task gets its next occurrence, due a week later.
    let next: Vec<_> = emits("recurrence");
    let standup = next
        .iter()
        .find(|e| e["value"]["task_data"]["previous_task_id"] == "43")
        .unwrap();
    assert_eq!(standup["output"], "tasks");
    assert_eq!(standup["value"]["event_type"], "task.created");
    assert_eq!(standup["value"]["task_id"], "43-r2");
    assert_eq!(
        standup["value"]["task_data"]["due_date"],
        "2026-02-02T09:00:00Z"
    );

    // Analytics snapshots are throttled (a minute after a change), keyed by user.
    let snapshots = emits("analytics");
    assert!(!snapshots.is_empty());
    let u3: Vec<_> = snapshots.iter().filter(|s| s["key"] == "u-3").collect();
    let last_u3 = u3
        .iter()
        .find(|s| s["at"] == "2026-01-26T18:06:00Z")
        .unwrap();
    // Task 45 is first seen deleted: it existed, so it counts as created.
    assert_eq!(last_u3["value"]["created"], 3);
    assert_eq!(last_u3["value"]["completed"], 1);
    assert_eq!(last_u3["value"]["deleted"], 1);
    assert_eq!(last_u3["value"]["completion_rate"], 0.333);
    assert_eq!(last_u3["value"]["open"], 1);
    // The dentist task (due 13:30Z on the 29th) is counted overdue when
    // its due time passes, in a snapshot a minute later.
    let overdue = u3.last().unwrap();
    assert_eq!(overdue["at"], "2026-01-29T13:31:00Z");
    assert_eq!(overdue["value"]["overdue"], 1);
    assert_eq!(overdue["value"]["by_priority"]["urgent"]["overdue"], 1);

    // Bad lines are dead-lettered with the line number and a clear reason.
    let dead: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "dead-letter")
        .collect();
    let reasons: Vec<(u64, &str)> = dead
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                5,
                "not valid JSON: EOF while parsing a value at line 1 column 34"
            ),
            (
                6,
                "event_type: \"task.exploded\" is not a known event type (expected created, updated, completed or deleted, optionally prefixed with \"task.\")"
            ),
            (
                10,
                "task_id: missing (expected task_id, taskId or task_data.id)"
            ),
        ]
    );
    assert!(
        dead.iter()
            .all(|d| d["stage"] == "decode" && d["plugin"].is_null())
    );
}

#[test]
fn plugins_check_lists_plugins_and_fails_on_an_invalid_one() {
    let cache = tempfile::tempdir().unwrap();
    let plugins = install(cache.path());
    let dir = plugins.path().to_str().unwrap();
    let out = todo_eventd(&["plugins", "check", dir], cache.path());
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for name in ["analytics", "audit", "recurrence", "reminders"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{stdout}"
        );
    }
    assert!(stdout.contains("outputs=reminders->reminders"), "{stdout}");

    std::fs::write(
        plugins.path().join("broken.wasm"),
        b"\0asm\x0d\0\x01\0garbage",
    )
    .unwrap();
    let out = todo_eventd(&["plugins", "check", dir], cache.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let broken = stdout.lines().find(|l| l.contains("broken.wasm")).unwrap();
    assert!(
        broken.starts_with("invalid") && broken.contains("does not compile"),
        "{broken}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok")).count(),
        4,
        "the others still load"
    );
}

/// `plugins check` and `plugins test` judge plugins by the daemon's
/// configuration (`--config`, or `TODO_EVENTD_CONFIG` as for `run`): its
/// default limits fill a manifest's gaps and its maximums refuse a
/// manifest, as the daemon would.
#[test]
fn plugins_check_and_test_hold_plugins_to_the_daemons_configuration() {
    let cache = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[
        ("plain", TEST_PLUGIN, None),
        ("big", TEST_PLUGIN, Some("[limits]\nmemory = \"32MiB\"\n")),
        (
            "loop",
            TEST_PLUGIN,
            Some("[outputs]\nout = \"task-events\"\n[config]\nmode = \"feedback\"\ncopies = 1\n"),
        ),
    ]);
    let etc = tempfile::tempdir().unwrap();
    let config = etc.path().join("todo-eventd.toml");
    std::fs::write(
        &config,
        "[sandbox.default_limits]\nmemory = \"16MiB\"\ncall_timeout = \"77ms\"\n\
         [sandbox.max_limits]\nmemory = \"16MiB\"\n\
         [plugins]\nmax_hops = 0\n\
         # A secret only the service may read: judging plugins needs none.\n\
         [kafka.property_files]\n\"sasl.password\" = \"/nonexistent/kafka-password\"\n",
    )
    .unwrap();
    let (dir, config) = (dir.path().to_str().unwrap(), config.to_str().unwrap());
    let limits_of = |stdout: &str, name: &str| -> String {
        let mut lines = stdout.lines().skip_while(|l| !l.contains(name));
        lines
            .find(|l| l.trim_start().starts_with("limits"))
            .unwrap()
            .to_owned()
    };

    // Without the daemon's configuration: the built-in defaults.
    let out = todo_eventd(&["plugins", "check", dir], cache.path());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        limits_of(&stdout, "plain").contains("call_timeout=200ms"),
        "{stdout}"
    );

    let with_flag = todo_eventd(&["plugins", "check", dir, "--config", config], cache.path());
    let with_env = daemon_command(cache.path())
        .args(["plugins", "check", dir])
        .env("TODO_EVENTD_CONFIG", config)
        .output()
        .unwrap();
    for out in [with_flag, with_env] {
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        let plain = limits_of(&stdout, "plain");
        assert!(plain.contains("memory=16MiB call_timeout=77ms"), "{stdout}");
        let big = stdout.lines().find(|l| l.contains("big.toml")).unwrap();
        assert!(
            big.starts_with("invalid")
                && big.ends_with(
                    "limits.memory: 32MiB exceeds the daemon's maximum of 16MiB (sandbox.max_limits.memory)"
                ),
            "{big}"
        );
    }

    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events.ndjson");
    let out = todo_eventd(
        &[
            "plugins",
            "test",
            "--plugins",
            dir,
            "--events",
            events.to_str().unwrap(),
            "--config",
            config,
        ],
        cache.path(),
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    // The others run, but the run fails: a CI step must not pass with a
    // plugin that cannot load.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("warning: skipping invalid plugin: ")
            && stderr.contains("(sandbox.max_limits.memory)")
            && stderr.contains("error: 1 invalid plugin(s) skipped"),
        "{stderr}"
    );
    // `plugins.max_hops = 0`: no plugin may feed the input topic.
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(r#""plugin":"loop""#) && l.contains(r#""error":"max-hops""#)),
        "{stdout}"
    );
}

#[test]
fn plugins_check_shows_grants_and_limits_and_refuses_a_plugin_that_cannot_start() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let granted = format!(
        "[wasi]\nenv = [\"TZ\"]\ndirs = [{{ host = \"{}\", guest = \"/data\", writable = true }}]\n",
        data.path().display()
    );
    let dir = plugin_dir(&[
        ("granted", TEST_PLUGIN, Some(&granted)),
        (
            "cramped",
            TEST_PLUGIN,
            Some("[limits]\nmemory = \"1MiB\"\n"),
        ),
    ]);
    // A manifest grants only what the operator allows: nothing by default.
    let out = todo_eventd(
        &["plugins", "check", dir.path().to_str().unwrap()],
        cache.path(),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let refused = stdout.lines().find(|l| l.contains("granted.toml")).unwrap();
    assert!(
        refused.starts_with("invalid")
            && refused.ends_with("wasi.env: TZ is not in sandbox.allowed_env"),
        "{stdout}"
    );

    let etc = tempfile::tempdir().unwrap();
    let config = etc.path().join("todo-eventd.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox]\nallowed_env = [\"TZ\"]\nwritable_dirs = [\"{}\"]\n",
            data.path().display()
        ),
    )
    .unwrap();
    let out = todo_eventd(
        &[
            "plugins",
            "check",
            dir.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    for want in [
        "warning: no [outputs] mapped, so every emit will fail",
        "grant  env: TZ",
        "(read-write)",
        "grant  network: none",
        "limits memory=64MiB call_timeout=200ms emits_per_call=1000",
    ] {
        assert!(stdout.contains(want), "{want}\n{stdout}");
    }
    let cramped = stdout.lines().find(|l| l.contains("cramped.wasm")).unwrap();
    assert!(
        cramped.starts_with("invalid")
            && cramped.contains("memory limit 1MiB is below the component's minimum"),
        "{cramped}"
    );
}

#[test]
fn plugins_test_goes_on_past_bad_and_oversized_lines_and_a_plugin_that_never_returns() {
    let cache = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[(
        "sleeper",
        TEST_PLUGIN,
        Some("[limits]\ncall_timeout = \"200ms\"\n[config]\nmode = \"sleep\"\n"),
    )]);
    let events = dir.path().join("events.ndjson");
    let good = |id: &str| {
        format!(
            "{{\"event_id\":\"{id}\",\"event_type\":\"created\",\"user_id\":\"u\",\"task_id\":\"t\",\"timestamp\":\"2026-01-26T08:00:00Z\"}}\n"
        )
    };
    let mut bytes = good("first").into_bytes();
    bytes.extend_from_slice(b"{\"event_id\":\"\xff\xfe\"}\n");
    // Over pipeline.max_event_bytes (256 KiB): measured, not held.
    bytes.extend_from_slice(format!("{{\"title\":\"{}\"}}\n", "x".repeat(300_000)).as_bytes());
    bytes.extend_from_slice(good("fourth").as_bytes());
    std::fs::write(&events, bytes).unwrap();
    let started = std::time::Instant::now();
    let out = todo_eventd(
        &[
            "plugins",
            "test",
            "--plugins",
            dir.path().to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(lines[0]["error"], "deadline");
    assert_eq!(lines[1]["stage"], "decode");
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[2]["stage"], "decode");
    assert_eq!(lines[2]["line"], 3);
    assert_eq!(
        lines[2]["reason"],
        "record of 300012 bytes exceeds pipeline.max_event_bytes (256KiB)"
    );
    assert_eq!(lines[3]["error"], "deadline");
    assert_eq!(lines[3]["line"], 4);
}

#[test]
fn logs_can_be_json_and_a_plugin_cannot_forge_a_line() {
    let cache = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[(
        "forger",
        TEST_PLUGIN,
        Some("[config]\nmode = \"log-forge\"\n"),
    )]);
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        "{\"event_id\":\"e1\",\"event_type\":\"created\",\"user_id\":\"u\",\"task_id\":\"t\",\"timestamp\":\"2026-01-26T08:00:00Z\"}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_todo-eventd"))
        .args(["--log-format", "json", "plugins", "test", "--plugins"])
        .arg(dir.path())
        .arg("--events")
        .arg(&events)
        .env("TODO_EVENTD_CACHE_DIR", cache.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let mut lines = stderr.lines().collect::<Vec<_>>();
    let summary = lines.pop().unwrap();
    assert_eq!(summary, "1 events, 0 emits, 0 dead-letters, 0 timers fired");
    let logs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(logs.len(), 1, "one line, not a forged second one: {stderr}");
    let message = logs[0]["fields"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("innocent\\n2026-01-01T00:00:00.000000Z  INFO todo_eventd::daemon: Forged line.\\u{1b}[31m"),
        "{message}"
    );
    assert_eq!(logs[0]["fields"]["plugin"], "forger");
    assert!(!stderr.contains('\u{1b}'));
}

/// A shell's soft open-file limit (often 1024) is far below the
/// descriptors plugins granted directories may hold: the daemon raises
/// its soft limit to the hard one (`ulimit -Hn`, `LimitNOFILE=`) at start,
/// and says so.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    assert!(
        hard.parse::<u64>().is_ok_and(|hard| hard > 100),
        "this test needs a hard limit above 100, not {hard}"
    );
    let out = command_for_the_daemon("sh", cache.path())
        .args(["-c", "ulimit -Sn 100 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_todo-eventd"))
        .args(["plugins", "check", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Raised the open-file limit to the hard limit.")
            && stderr.contains("from=100")
            && stderr.contains(&format!("to={hard}")),
        "{stderr}"
    );
}

/// The engine reserves address space for the whole instance pool up front;
/// when the machine refuses it (here a 4 GB `ulimit -v`), the error names
/// the settings that size the pool, not only mmap's complaint.
#[test]
fn an_instance_pool_the_machine_refuses_names_its_settings() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = command_for_the_daemon("sh", cache.path())
        .args(["-c", "ulimit -v 4000000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_todo-eventd"))
        .args(["plugins", "check", dir.path().to_str().unwrap()])
        .env("TODO_EVENTD_SANDBOX_MAX_INSTANCES", "10000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "starting the wasm engine, whose instance pool reserves address space for \
             sandbox.max_instances (10000) instances of up to sandbox.max_limits.memory (512MiB): "
        ),
        "{stderr}"
    );
}

/// With no cache directory given and `XDG_CACHE_HOME`/`HOME` empty or
/// relative, a Python build has nowhere safe to install its tools: it
/// stops, rather than install and run them from the working directory or
/// a shared temporary one.
#[test]
fn a_python_build_without_a_private_tools_directory_stops() {
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("app.py"), "").unwrap();
    std::fs::write(project.path().join("audit.toml"), "").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = command_for_the_daemon(env!("CARGO_BIN_EXE_todo-eventd"), cache.path())
        .env_remove("TODO_EVENTD_CACHE_DIR")
        .env("XDG_CACHE_HOME", "relative/cache")
        .env("HOME", "")
        .current_dir(project.path())
        .args(["plugins", "build", "."])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("componentize-py: no directory to install it in"),
        "{stderr}"
    );
    assert!(!project.path().join("relative").exists());
    assert!(!project.path().join("todo-eventd").exists());
}
