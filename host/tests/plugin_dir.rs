//! Loading a plugins directory: every bad file is reported with its name
//! and the reason, and the good plugins still load. The directory is
//! untrusted: FIFOs, devices, huge files and symlinks to anything but a
//! regular file are refused without being read, limits are checked where
//! they are set, and errors never quote a file's contents.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{TEST_PLUGIN, mode, plugin_dir, sandbox};
use todo_eventd::clock::Clock;
use todo_eventd::plugin::registry::ScanReport;
use todo_eventd::plugin::{Registry, load_dir};
use todo_eventd::sandbox::{Sandbox, SandboxConfig};
use todo_eventd::telemetry::{PluginMetrics, Telemetry};

#[tokio::test]
async fn bad_files_are_rejected_by_name_while_the_rest_load() {
    let echo = mode("echo");
    // A valid component that targets some other world: no exports at all.
    let empty_component = wat_component("(component)");
    let truncated = &TEST_PLUGIN[..TEST_PLUGIN.len() / 2];
    let dir = plugin_dir(&[
        ("good", TEST_PLUGIN, Some(&echo)),
        ("text", b"hello, I am not wasm", None),
        ("core", b"\0asm\x01\0\0\0", None),
        ("half", truncated, None),
        ("other-world", &empty_component, None),
        ("typo", TEST_PLUGIN, Some("[limits]\nmemroy = \"8MiB\"\n")),
        (
            "greedy",
            TEST_PLUGIN,
            Some("[limits]\nmemory = \"64GiB\"\n"),
        ),
        (
            "cramped",
            TEST_PLUGIN,
            Some("[limits]\nmemory = \"1MiB\"\n"),
        ),
        ("nothing", TEST_PLUGIN, Some("[limits]\nmemory = 0\n")),
        (
            "forever",
            TEST_PLUGIN,
            Some("[limits]\ncall_timeout = \"10years\"\n"),
        ),
        ("off", TEST_PLUGIN, Some("enabled = false\n")),
    ]);
    std::fs::write(dir.path().join("orphan.toml"), "").unwrap();
    // Files that are not regular files, or too large to be a plugin.
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("fifo.wasm"))
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.wasm")).unwrap();
    std::fs::File::create(dir.path().join("sparse.wasm"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::write(dir.path().join("passwd.wasm"), TEST_PLUGIN).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd.toml")).unwrap();
    std::fs::create_dir(dir.path().join("dir.wasm")).unwrap();

    let report = tokio::time::timeout(Duration::from_secs(60), load_dir(&sandbox(), dir.path()))
        .await
        .expect("reading the directory never blocks")
        .unwrap();
    let names: Vec<_> = report.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(report.disabled, ["off"]);

    let mut errors: Vec<String> = report
        .errors
        .iter()
        .map(|e| {
            let file = e.file().file_name().unwrap().to_string_lossy().into_owned();
            assert!(e.to_string().contains(&file), "error names its file: {e}");
            format!("{file}: {e}")
        })
        .collect();
    errors.sort();
    let expect = [
        ("core.wasm", "a core WebAssembly module, not a component"),
        (
            "cramped.wasm",
            "cannot start under its limits: instantiation failed: memory limit 1MiB is below the component's minimum: it needs at least",
        ),
        (
            "dir.wasm",
            "cannot read: refused: a directory, not a regular file",
        ),
        (
            "fifo.wasm",
            "cannot read: refused: a FIFO (named pipe), not a regular file",
        ),
        (
            "forever.toml",
            "limits.call_timeout: 10years exceeds the daemon's maximum of 1m",
        ),
        (
            "greedy.toml",
            "limits.memory: 64GiB exceeds the daemon's maximum of 512MiB",
        ),
        ("half.wasm", "does not compile"),
        (
            "nothing.toml",
            "limits.memory: 0 bytes is below the least allowed, 64KiB",
        ),
        ("orphan.toml", "no orphan.wasm beside it"),
        (
            "other-world.wasm",
            "does not implement the todo:plugin world",
        ),
        ("passwd.toml", "line 1, column "),
        (
            "sparse.wasm",
            "cannot read: refused: 1073741824 bytes is larger than the limit of 64MiB",
        ),
        ("text.wasm", "not a WebAssembly file"),
        ("typo.toml", "unknown field `memroy`"),
        (
            "zero.wasm",
            "cannot read: refused: a character device, not a regular file",
        ),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for (error, (file, text)) in errors.iter().zip(expect) {
        assert!(
            error.starts_with(file) && error.contains(text),
            "{error}\n  wanted {file}: …{text}…"
        );
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = passwd.lines().next().unwrap();
    assert!(
        !errors
            .iter()
            .any(|e| e.contains(first_line) || e.contains("root:")),
        "no error quotes a file's contents: {errors:#?}"
    );
}

/// A FIFO dropped into the directory is refused without blocking a
/// reload — and reported once, not at every rescan. A file name that would
/// forge a log line is shown escaped, and names that never loaded leave no
/// metric series behind once gone.
#[tokio::test]
async fn a_fifo_dropped_in_while_running_does_not_block_a_reload() {
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&mode("echo")))]);
    let metrics = Arc::new(PluginMetrics::default());
    let (registry, report) = open_registry(sandbox(), dir.path(), metrics.clone()).await;
    assert_eq!(report.loaded, ["echo"]);
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("trap.wasm"))
        .status()
        .unwrap();
    assert!(status.success());
    let report = tokio::time::timeout(Duration::from_secs(30), registry.rescan())
        .await
        .expect("a rescan never waits on a FIFO")
        .unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert!(
        report.rejected[0]
            .to_string()
            .ends_with("trap.wasm: cannot read: refused: a FIFO (named pipe), not a regular file"),
        "{}",
        report.rejected[0]
    );
    let statuses = registry.statuses();
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].status.as_str(), "active", "echo keeps serving");

    // Still there, still refused: nothing new to report.
    std::fs::write(dir.path().join("x\nERROR forged.wasm"), b"junk").unwrap();
    let report = registry.rescan().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "only the new file: {report:?}");
    let error = report.rejected[0].to_string();
    assert!(
        error.ends_with(
            "x\\nERROR forged.wasm: plugin names may only contain letters, digits, '-', '_' and '.'"
        ),
        "{error}"
    );
    assert!(registry.rescan().await.unwrap().is_empty());
    let rejected = |text: &str, name: &str| {
        text.lines().any(|l| {
            l.starts_with("todo_eventd_plugin_reloads_total{")
                && l.contains(&format!("plugin=\"{name}\""))
                && l.contains("result=\"rejected\"")
                && l.ends_with(" 1")
        })
    };
    let text = Telemetry {
        plugins: metrics.clone(),
        ..Default::default()
    };
    assert!(rejected(&text.encode(), "trap"), "{}", text.encode());

    // Gone: their series go too.
    std::fs::remove_file(dir.path().join("trap.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("x\nERROR forged.wasm")).unwrap();
    registry.rescan().await.unwrap();
    let encoded = text.encode();
    assert!(
        !encoded.contains("trap") && !encoded.contains("forged"),
        "{encoded}"
    );
    assert!(encoded.contains("plugin=\"echo\""), "{encoded}");
}

/// A directory serving two echo plugins, `echo` and `other`, its registry
/// and the metrics it reports to.
async fn echo_and_other() -> (tempfile::TempDir, Registry, Telemetry) {
    let echo = mode("echo");
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&echo)),
        ("other", TEST_PLUGIN, Some(&echo)),
    ]);
    let metrics = Arc::new(PluginMetrics::default());
    let (registry, report) = open_registry(sandbox(), dir.path(), metrics.clone()).await;
    assert_eq!(report.loaded, ["echo", "other"]);
    let text = Telemetry {
        plugins: metrics,
        ..Default::default()
    };
    (dir, registry, text)
}

/// A quarantined plugin that is disabled, or whose `.wasm` goes while its
/// manifest stays, no longer shows as quarantined: the alert on
/// `plugin_quarantined` would otherwise fire for good for a plugin that
/// is not there.
#[tokio::test]
async fn a_plugin_taken_out_is_no_longer_shown_quarantined() {
    let echo = mode("echo");
    let (dir, registry, text) = echo_and_other().await;
    let metrics = text.plugins.clone();
    let quarantined = |name: &str| {
        let line = format!("todo_eventd_plugin_quarantined{{plugin=\"{name}\"}} 1");
        text.encode().lines().any(|l| l == line)
    };
    // Both quarantined, as the dispatcher marks them.
    for name in ["echo", "other"] {
        metrics.set_quarantined(name, true);
        assert!(quarantined(name), "{}", text.encode());
    }
    std::fs::write(
        dir.path().join("echo.toml"),
        format!("enabled = false\n{echo}"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("other.wasm")).unwrap();
    let report = registry.rescan().await.unwrap();
    assert_eq!(report.disabled, ["echo"], "{report:?}");
    assert_eq!(report.removed, ["other"], "{report:?}");
    assert!(!quarantined("echo"), "disabled: {}", text.encode());
    assert!(!quarantined("other"), "its .wasm gone: {}", text.encode());
}

/// A plugin that served and is removed keeps its series a while — a
/// scrape sees its last counts and its `removed` reload — and then they
/// go, so plugins renamed in a loop do not grow `/metrics` for good.
#[tokio::test]
async fn a_removed_plugins_series_go_after_a_while() {
    let (dir, registry, text) = echo_and_other().await;
    let metrics = text.plugins.clone();
    let shown = |name: &str| {
        let label = format!("plugin=\"{name}\"");
        text.encode().lines().any(|l| l.contains(&label))
    };
    // Calls made, as the dispatcher counts them.
    for name in ["echo", "other"] {
        let slot = metrics.slot(name);
        slot.call(todo_eventd::world::Handler::OnEvent, Duration::ZERO, 0);
        metrics.error(name, "deadline");
    }
    std::fs::remove_file(dir.path().join("other.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("other.toml")).unwrap();
    let report = registry.rescan().await.unwrap();
    let removed_at = std::time::Instant::now();
    assert_eq!(report.removed, ["other"], "{report:?}");
    let removed = "todo_eventd_plugin_reloads_total{plugin=\"other\",result=\"removed\"} 1";
    assert!(
        text.encode().lines().any(|l| l == removed),
        "{}",
        text.encode()
    );

    metrics.expire(removed_at + todo_eventd::telemetry::REMOVED_SERIES_KEPT);
    assert!(!shown("other"), "{}", text.encode());
    assert!(shown("echo"), "{}", text.encode());
}

/// A rejected change undone — the serving version's files back as they
/// were — is no new version: the plugin keeps serving as it was, its
/// health (a quarantine, a spent retry budget) included.
#[tokio::test]
async fn the_serving_versions_files_back_are_no_new_version() {
    let echo = mode("echo");
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&echo))]);
    let (registry, report) = open_registry(sandbox(), dir.path(), Arc::default()).await;
    assert_eq!(report.loaded, ["echo"]);
    let serving = registry.current().plugins[0].clone();
    std::fs::write(dir.path().join("echo.wasm"), b"junk").unwrap();
    let report = registry.rescan().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    std::fs::write(dir.path().join("echo.wasm"), TEST_PLUGIN).unwrap();
    let report = registry.rescan().await.unwrap();
    assert!(report.is_empty(), "{report:?}");
    assert!(Arc::ptr_eq(&registry.current().plugins[0], &serving));
    let statuses = registry.statuses();
    assert_eq!(statuses[0].last_error, None, "the rejection is over");
    assert_eq!(statuses[0].reloads, 0);
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let config = || SandboxConfig {
        cache_dir: Some(cache.path().to_owned()),
        max_instances: 4,
        ..SandboxConfig::default()
    };
    let first = Sandbox::new(config()).unwrap();
    first.prepare(TEST_PLUGIN).unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one compiled artifact");
    let entry = entries[0]
        .as_ref()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    assert!(
        entry.starts_with(&Sandbox::content_hash(TEST_PLUGIN)),
        "{entry}"
    );

    // A new engine with the same settings loads it instead of compiling;
    // the file is not rewritten (a rewrite is a new file renamed over it).
    let file = || {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(entries[0].as_ref().unwrap().path()).unwrap();
        (meta.ino(), meta.len())
    };
    let before = file();
    let second = Sandbox::new(config()).unwrap();
    second.prepare(TEST_PLUGIN).unwrap();
    assert_eq!(before, file());

    // A corrupt cache entry is discarded and the component recompiled.
    std::fs::write(entries[0].as_ref().unwrap().path(), b"garbage").unwrap();
    let third = Sandbox::new(config()).unwrap();
    third.prepare(TEST_PLUGIN).unwrap();
    assert!(
        std::fs::metadata(entries[0].as_ref().unwrap().path())
            .unwrap()
            .len()
            > 1000
    );
}

/// An entry is native code the daemon runs: the daemon keeps its cache
/// directory to itself, and an entry it cannot be sure it wrote is
/// compiled afresh and replaced, never run.
#[test]
fn a_cache_entry_that_may_not_be_ours_is_replaced_not_run() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("components");
    let config = || SandboxConfig {
        cache_dir: Some(cache.clone()),
        max_instances: 4,
        ..SandboxConfig::default()
    };
    Sandbox::new(config())
        .unwrap()
        .prepare(TEST_PLUGIN)
        .unwrap();
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let copy = root.path().join("copy.cwasm");
    std::fs::copy(&entry, &copy).unwrap();
    let is_file = || std::fs::symlink_metadata(&entry).unwrap().is_file();

    // A symlink in the entry's place (to a valid artifact) is not followed.
    std::fs::remove_file(&entry).unwrap();
    std::os::unix::fs::symlink(&copy, &entry).unwrap();
    Sandbox::new(config())
        .unwrap()
        .prepare(TEST_PLUGIN)
        .unwrap();
    assert!(is_file(), "the symlink was replaced by a fresh entry");

    // Nor is a valid artifact another user owns (only root can make one).
    let euid = std::fs::metadata(&copy).unwrap().uid(); // the file is ours
    if euid == 0 {
        std::fs::copy(&copy, &entry).unwrap();
        std::os::unix::fs::chown(&entry, Some(12_345), None).unwrap();
        Sandbox::new(config())
            .unwrap()
            .prepare(TEST_PLUGIN)
            .unwrap();
        assert_eq!(std::fs::metadata(&entry).unwrap().uid(), euid, "replaced");
    }

    // Its own directory opened up to others is closed again at start.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    Sandbox::new(config())
        .unwrap()
        .prepare(TEST_PLUGIN)
        .unwrap();
    let mode = std::fs::metadata(&cache).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn a_component_the_pool_refuses_is_not_cached() {
    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_owned()),
        max_instances: 4,
        ..SandboxConfig::default()
    })
    .unwrap();
    // It compiles, but a 4 GiB memory minimum is above any pool slot.
    let huge = wat_component("(component (core module (memory 65536)))");
    assert!(sandbox.prepare(&huge).is_err());
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .map(|dir| dir.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(entries.is_empty(), "{entries:?}");
}

/// A component whose one function makes Cranelift use hundreds of MB
/// (`statements` multiplications in a row; 300 000 took ≈ 330 MiB).
fn compile_bomb(statements: usize) -> Vec<u8> {
    let mut body = String::new();
    for i in 0..statements {
        body += &format!("(local.set 1 (i64.mul (local.get 1) (i64.const {i})))");
    }
    wat_component(&format!(
        "(component (core module (func (export \"f\") (param i64) (result i64) (local i64) {body} (local.get 1))))"
    ))
}

/// Compiling is where a plugin's bytes cost the most: a hostile component
/// (59 MB, a dozen such functions) took 0.9 GB to compile on two threads,
/// more on more. The daemon compiles in a child process it kills at a
/// memory or time bound; the plugin is rejected naming the bound, and the
/// others load.
#[tokio::test]
async fn a_plugin_too_costly_to_compile_is_rejected_while_the_rest_load() {
    use todo_eventd::sandbox::Compiler;
    let bomb = compile_bomb(300_000);
    let echo = mode("echo");
    let dir = plugin_dir(&[("good", TEST_PLUGIN, Some(&echo)), ("bomb", &bomb, None)]);
    // The time bound is tested with a compiler that sleeps (the sandbox's
    // compile tests): a bomb's compile time depends on the machine.
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 8,
            compiler: Some(Compiler {
                program: env!("CARGO_BIN_EXE_todo-eventd").into(),
                memory: "96MiB".parse().unwrap(),
                timeout: Duration::from_secs(600),
            }),
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let report = load_dir(&sandbox, dir.path()).await.unwrap();
    let names: Vec<_> = report.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["good"], "compiled in the child");
    let [error] = report.errors.as_slice() else {
        panic!("{:?}", report.errors)
    };
    let error = error.to_string();
    assert!(
        error.contains("bomb.wasm")
            && error.contains("compiling it took more than 96MiB of memory (at least "),
        "{error}"
    );
}

/// A plugin rejected at start-up is counted where an alert sees it (the
/// reload counter only counts changes while running), and the count
/// follows the directory.
#[tokio::test]
async fn plugins_rejected_at_start_up_are_counted() {
    let dir = plugin_dir(&[
        ("echo", TEST_PLUGIN, Some(&mode("echo"))),
        ("junk", b"not wasm", None),
    ]);
    let metrics = Arc::new(PluginMetrics::default());
    let (registry, report) = open_registry(sandbox(), dir.path(), metrics.clone()).await;
    assert_eq!((report.loaded.len(), report.rejected.len()), (1, 1));
    let rejected = || metric(&metrics, "todo_eventd_plugins_rejected");
    assert_eq!(rejected().as_deref(), Some("1"));
    // The scan is recorded where an alert sees rescans stop.
    let scanned: i64 = metric(
        &metrics,
        "todo_eventd_plugin_scan_success_timestamp_seconds",
    )
    .and_then(|v| v.parse().ok())
    .unwrap_or_default();
    assert!(scanned > 1_700_000_000, "{scanned}");
    std::fs::remove_file(dir.path().join("junk.wasm")).unwrap();
    registry.rescan().await.unwrap();
    assert_eq!(rejected().as_deref(), Some("0"));
}

/// The value `/metrics` shows for the unlabelled series `name`.
fn metric(metrics: &Arc<PluginMetrics>, name: &str) -> Option<String> {
    let text = Telemetry {
        plugins: metrics.clone(),
        ..Default::default()
    }
    .encode();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

/// A manifest swapped for a symlink whose target is gone is a broken
/// file, not an absent one: the version serving keeps serving with its
/// settings, rather than the plugin reloading with a default manifest.
#[tokio::test]
async fn a_dangling_manifest_link_keeps_the_serving_version() {
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&mode("echo")))]);
    let (registry, report) =
        open_registry(sandbox(), dir.path(), Arc::new(PluginMetrics::default())).await;
    assert_eq!(report.loaded, ["echo"]);
    let manifest = dir.path().join("echo.toml");
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.toml"), &manifest).unwrap();
    let report = registry.rescan().await.unwrap();
    assert!(report.loaded.is_empty(), "{report:?}");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let error = report.rejected[0].to_string();
    assert!(
        error.ends_with("echo.toml: cannot read: refused: a symlink to a file that does not exist"),
        "{error}"
    );
    let statuses = registry.statuses();
    assert_eq!(statuses[0].status.as_str(), "active", "{statuses:?}");
}

/// A compile the machine did not carry to its end (here the compiler is
/// SIGKILLed, as by the kernel's OOM killer) is no verdict on the files.
/// They are not compiled again at every rescan, which would run the OOM
/// killer every 30 s, but after a back-off that doubles, and not after the
/// third failure in a row; an edit is tried at once, and the files load
/// once the machine lets them.
#[tokio::test]
async fn files_the_machine_could_not_compile_are_tried_again_after_a_back_off() {
    use std::os::unix::fs::PermissionsExt as _;
    use todo_eventd::clock::rfc3339;
    use todo_eventd::plugin::registry::{COMPILE_RETRY_FIRST, COMPILE_TRIES};
    use todo_eventd::sandbox::Compiler;
    let tools = tempfile::tempdir().unwrap();
    let (allowed, tries) = (tools.path().join("allowed"), tools.path().join("tries"));
    let program = tools.path().join("compiler");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\n[ \"$1\" = compile-component ] || exit 0\necho >> '{}'\n\
             [ -e '{}' ] && exec '{}' \"$@\"\nkill -9 $$\n",
            tries.display(),
            allowed.display(),
            env!("CARGO_BIN_EXE_todo-eventd"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another test's fork may hold the new file open for writing for a
    // moment ("Text file busy"): wait until it runs.
    while std::process::Command::new(&program).status().is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let compiles = || std::fs::read_to_string(&tries).unwrap_or_default().len();
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 8,
            compiler: Some(Compiler {
                program,
                memory: "512MiB".parse().unwrap(),
                timeout: Duration::from_secs(600),
            }),
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let start = 1_800_000_000_000;
    let (clock, hand) = Clock::manual(start);
    let dir = plugin_dir(&[("echo", TEST_PLUGIN, Some(&mode("echo")))]);
    let (registry, report) = Registry::open(
        sandbox,
        dir.path().to_owned(),
        Arc::default(),
        clock.clone(),
    )
    .await
    .unwrap();
    let [error] = report.rejected.as_slice() else {
        panic!("{report:?}")
    };
    let error = error.to_string();
    assert!(
        error.contains("cannot compile now: the compiler was killed, not by its bounds"),
        "{error}"
    );
    let first = i64::try_from(COMPILE_RETRY_FIRST.as_millis()).unwrap();
    let retry_at = |registry: &Registry| registry.statuses()[0].retry_at.clone();
    assert_eq!(retry_at(&registry), Some(rfc3339(start + first)));
    let last_error = |registry: &Registry| registry.statuses()[0].last_error.clone();
    let shown = last_error(&registry).unwrap_or_default();
    assert!(
        shown.ends_with(&format!("; tried again at {}", rfc3339(start + first))),
        "{shown}"
    );
    assert_eq!(compiles(), 1);

    // Not compiled again before the back-off is over…
    assert!(registry.rescan().await.unwrap().is_empty());
    assert_eq!(compiles(), 1);
    // …then again, failing again: the next wait is twice as long.
    hand.advance(COMPILE_RETRY_FIRST);
    assert_eq!(registry.rescan().await.unwrap().rejected.len(), 1);
    assert_eq!(compiles(), 2);
    assert_eq!(retry_at(&registry), Some(rfc3339(clock.now() + 2 * first)));
    hand.advance(COMPILE_RETRY_FIRST);
    assert!(registry.rescan().await.unwrap().is_empty());
    assert_eq!(compiles(), 2);
    // The third failure in a row stands: not compiled again, however long
    // the files stay as they are.
    hand.advance(COMPILE_RETRY_FIRST);
    assert_eq!(registry.rescan().await.unwrap().rejected.len(), 1);
    assert_eq!(compiles(), COMPILE_TRIES as usize);
    assert_eq!(retry_at(&registry), None);
    let shown = last_error(&registry).unwrap_or_default();
    assert!(
        shown.ends_with("; 3 tries in a row, not tried again until the files change"),
        "{shown}"
    );
    hand.advance(Duration::from_secs(24 * 3600));
    assert!(registry.rescan().await.unwrap().is_empty());
    assert_eq!(compiles(), 3);

    // An edit is new files: compiled at once, the back-off starting over.
    let mut manifest = mode("echo");
    manifest.push_str("\n# edited\n");
    std::fs::write(dir.path().join("echo.toml"), manifest).unwrap();
    assert_eq!(registry.rescan().await.unwrap().rejected.len(), 1);
    assert_eq!(compiles(), 4);
    assert_eq!(retry_at(&registry), Some(rfc3339(clock.now() + first)));

    // The machine lets the compile finish: the files load when next due.
    std::fs::write(&allowed, "").unwrap();
    assert!(registry.rescan().await.unwrap().is_empty());
    hand.advance(COMPILE_RETRY_FIRST);
    assert_eq!(registry.rescan().await.unwrap().loaded, ["echo"]);
    assert_eq!(compiles(), 5);
    let status = &registry.statuses()[0];
    assert_eq!(
        (status.status.as_str(), status.retry_at.as_deref()),
        ("active", None)
    );
}

/// A flood of stray names in the plugins directory is held to the number
/// the registry tracks: the new names past it are ignored (and counted
/// where an alert sees them), and a plugin is never pushed out by names
/// that sort before it, serving or at a start.
#[tokio::test]
async fn a_flood_of_names_is_held_to_the_bound_and_never_evicts_a_plugin() {
    use todo_eventd::plugin::registry::MAX_NAMES;
    let dir = plugin_dir(&[("zz-echo", TEST_PLUGIN, Some(&mode("echo")))]);
    let metrics = Arc::new(PluginMetrics::default());
    let (registry, report) = open_registry(sandbox(), dir.path(), metrics.clone()).await;
    assert_eq!(report.loaded, ["zz-echo"]);
    let flood = MAX_NAMES + 10;
    for i in 0..flood {
        std::fs::write(dir.path().join(format!("a{i:05}.toml")), "").unwrap();
    }
    registry.rescan().await.unwrap();
    let statuses = registry.statuses();
    assert_eq!(statuses.len(), MAX_NAMES);
    let echo = statuses
        .iter()
        .find(|s| s.name == "zz-echo")
        .expect("still tracked");
    assert_eq!(echo.status.as_str(), "active");
    assert_eq!(registry.current().plugins.len(), 1);
    let rejected = metric(&metrics, "todo_eventd_plugins_rejected");
    // Every stray name counts: the tracked ones as rejected, the rest as
    // ignored.
    assert_eq!(rejected, Some(flood.to_string()));

    // A daemon starting among the flood takes names with a `.wasm` first.
    let (restarted, report) = open_registry(sandbox(), dir.path(), Arc::default()).await;
    assert_eq!(report.loaded, ["zz-echo"]);
    assert_eq!(restarted.statuses().len(), MAX_NAMES);
}

/// A registry over `dir`, and what its first scan found.
async fn open_registry(
    sandbox: Arc<Sandbox>,
    dir: &Path,
    metrics: Arc<PluginMetrics>,
) -> (Registry, ScanReport) {
    Registry::open(sandbox, dir.to_owned(), metrics, Clock::System)
        .await
        .unwrap()
}

fn wat_component(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

/// A component's text (here a 90 000-byte import name) is bounded before
/// a rejection is kept for `/plugins`, logged or returned: a directory of
/// links to one such file would otherwise hold 90 KB per entry and serve
/// it with every `/plugins` request.
#[tokio::test]
async fn a_rejections_text_from_the_file_is_bounded() {
    let name = "a".repeat(90_000);
    let long = wat_component(&format!("(component (import \"{name}\" (instance)))"));
    let dir = plugin_dir(&[("long", &long, None)]);
    let (registry, report) = open_registry(sandbox(), dir.path(), Arc::default()).await;
    let [error] = report.rejected.as_slice() else {
        panic!("{report:?}")
    };
    let error = error.to_string();
    assert!(
        error.contains("imports `aaaa") && error.len() < 1_200,
        "{} bytes",
        error.len()
    );
    let statuses = registry.statuses();
    let shown = statuses[0].last_error.as_deref().unwrap_or_default();
    assert!(
        shown.contains("aaaa") && shown.len() < 1_200,
        "{} bytes",
        shown.len()
    );
}

/// A plugin that cannot start because the instance pool is full is no
/// verdict on its files: the next rescan tries it again, and it loads once
/// there is room.
#[tokio::test]
async fn a_plugin_refused_for_want_of_room_loads_at_a_later_rescan() {
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 1,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let echo = mode("echo");
    let dir = plugin_dir(&[("first", TEST_PLUGIN, Some(&echo))]);
    let (registry, report) = open_registry(sandbox, dir.path(), Arc::default()).await;
    assert_eq!(report.loaded, ["first"]);
    // The one slot is taken (a partition's warm instance, say).
    let held = registry.current().plugins[0].instantiate().await.unwrap();
    std::fs::write(dir.path().join("second.wasm"), TEST_PLUGIN).unwrap();
    std::fs::write(dir.path().join("second.toml"), &echo).unwrap();
    let report = registry.rescan().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let error = report.rejected[0].to_string();
    assert!(
        error.contains("cannot start now") && error.contains("tried again at the next rescan"),
        "{error}"
    );
    drop(held);
    let report = registry.rescan().await.unwrap();
    assert_eq!(report.loaded, ["second"], "{report:?}");
}
