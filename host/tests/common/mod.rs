//! Helpers shared by the integration tests: a sandbox, plugin directories
//! built from the real guest components, and events.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;
use todo_eventd::plugin::{self, Plugin};
use todo_eventd::sandbox::{Sandbox, SandboxConfig};
use todo_eventd::world::TaskEvent;

/// The test plugin (`plugins/test-plugin`), built for wasm32-wasip2.
pub const TEST_PLUGIN: &[u8] = include_bytes!(env!("GUEST_TEST_PLUGIN_WASM"));

pub fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            max_instances: 32,
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

/// A directory holding `NAME.wasm` (+ `NAME.toml` if given) for each entry.
pub fn plugin_dir(files: &[(&str, &[u8], Option<&str>)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, wasm, manifest) in files {
        std::fs::write(dir.path().join(format!("{name}.wasm")), wasm).unwrap();
        if let Some(manifest) = manifest {
            std::fs::write(dir.path().join(format!("{name}.toml")), manifest).unwrap();
        }
    }
    dir
}

/// A test-plugin manifest with the given mode and an `out` output.
pub fn mode(mode: &str) -> String {
    format!(
        "[outputs]\nout = \"out-topic\"\n[limits]\nmemory = \"8MiB\"\ncall_timeout = \"50ms\"\n[config]\nmode = \"{mode}\"\n"
    )
}

/// Loads every plugin in `dir`, failing the test on any load error.
pub fn load(sandbox: &Arc<Sandbox>, dir: &Path) -> Vec<Arc<Plugin>> {
    let report = plugin::load_dir(sandbox, dir).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report.plugins
}

/// A decoded `created` event for task `task` at `at` (ms).
pub fn created(task: &str, at: i64) -> TaskEvent {
    let json = serde_json::json!({
        "event_id": format!("ev-{task}-{at}"),
        "event_type": "created",
        "user_id": "u-1",
        "task_id": task,
        "timestamp": jiff::Timestamp::from_millisecond(at).unwrap().to_string(),
        "task_data": {"title": "t"},
    });
    todo_eventd::event::decode(json.to_string().as_bytes()).unwrap()
}
