//! Loading a plugins directory: every bad file is reported with its name
//! and the reason, and the good plugins still load.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TEST_PLUGIN, mode, plugin_dir, sandbox};
use todo_eventd::plugin::load_dir;
use todo_eventd::sandbox::{Sandbox, SandboxConfig};

#[test]
fn bad_files_are_rejected_by_name_while_the_rest_load() {
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
        ("off", TEST_PLUGIN, Some("enabled = false\n")),
    ]);
    std::fs::write(dir.path().join("orphan.toml"), "").unwrap();

    let report = load_dir(&sandbox(), dir.path()).unwrap();
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
            "greedy.toml",
            "limits.memory: 68719476736 bytes exceeds the daemon's maximum",
        ),
        ("half.wasm", "does not compile"),
        ("orphan.toml", "no orphan.wasm beside it"),
        (
            "other-world.wasm",
            "does not implement the todo:plugin world",
        ),
        ("text.wasm", "not a WebAssembly file"),
        ("typo.toml", "unknown field `memroy`"),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for (error, (file, text)) in errors.iter().zip(expect) {
        assert!(
            error.starts_with(file) && error.contains(text),
            "{error}\n  wanted {file}: …{text}…"
        );
    }
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
    // the file is not rewritten.
    let modified = std::fs::metadata(entries[0].as_ref().unwrap().path())
        .unwrap()
        .modified()
        .unwrap();
    let second = Sandbox::new(config()).unwrap();
    second.prepare(TEST_PLUGIN).unwrap();
    let after = std::fs::metadata(entries[0].as_ref().unwrap().path())
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(modified, after);

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

fn wat_component(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}
