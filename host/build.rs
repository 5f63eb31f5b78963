//! Builds the guest plugins (`plugins/*`) for `wasm32-wasip2` so the daemon
//! can embed the bundled ones and tests can load real components — the way
//! wasmtime's `test-programs/artifacts/build.rs` builds its guests.
//!
//! The guests are built by a nested `cargo build --release` with a separate
//! target directory (so it does not contend for the outer build's lock).
//! Paths are handed to the crate as `GUEST_<NAME>_WASM` environment
//! variables.

use std::path::PathBuf;
use std::process::Command;

/// Guest crates, by package name.
const GUESTS: &[&str] = &["reminders", "recurrence", "analytics", "test-plugin"];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_owned();
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let target_dir = root.join("target").join("guests");
    let mut cargo = Command::new(env("CARGO"));
    cargo
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for guest in GUESTS {
        cargo.args(["-p", guest]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cargo.env_remove(var);
    }
    // Guests ship inside the binary: no debug info, smaller files.
    cargo
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    let status = cargo
        .status()
        .expect("run cargo to build the guest plugins");
    assert!(
        status.success(),
        "building the guest plugins for wasm32-wasip2 failed"
    );

    let out = target_dir.join("wasm32-wasip2").join("release");
    for guest in GUESTS {
        let file = out.join(format!("{}.wasm", guest.replace('-', "_")));
        assert!(file.exists(), "guest build produced no {}", file.display());
        let var = format!("GUEST_{}_WASM", guest.to_uppercase().replace('-', "_"));
        println!("cargo:rustc-env={var}={}", file.display());
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
