//! Builds the guest plugins (`plugins/*`) for `wasm32-wasip2` so the daemon
//! can embed the bundled ones and tests can load real components — the way
//! wasmtime's `test-programs/artifacts/build.rs` builds its guests.
//!
//! The guests are built by a nested `cargo build --release` with a separate
//! target directory (so it does not contend for the outer build's lock).
//! Paths are handed to the crate as `GUEST_<NAME>_WASM` environment
//! variables.
//!
//! rustup installs the targets of `rust-toolchain.toml` only when it
//! installs the toolchain itself, so a machine that already had the pinned
//! toolchain may lack `wasm32-wasip2`: the build adds it through rustup
//! (with a warning), or fails with the one-line fix as its last line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest crates, by package name.
const GUESTS: &[&str] = &[
    "reminders",
    "recurrence",
    "analytics",
    "audit",
    "test-plugin",
];

/// The target the guests are compiled to.
const TARGET: &str = "wasm32-wasip2";

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

    ensure_target();
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
    // Guests ship inside the binary: no debug info, smaller files. Every
    // event runs their code: one codegen unit and fat LTO make the bundled
    // plugins' calls up to 12 % faster and their files 6–12 % smaller
    // (BENCHMARKS.md, fifth pass).
    cargo
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
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

/// Makes sure the active toolchain has the guest target's standard library.
fn ensure_target() {
    let rustc = env("RUSTC");
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = |sysroot: &Path| sysroot.join("lib/rustlib").join(TARGET).is_dir();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    println!(
        "cargo:warning=the {TARGET} target is missing; adding it with `rustup target add {TARGET}`"
    );
    let added = rustup.status().is_ok_and(|status| status.success());
    if !added || !sysroot.as_deref().is_some_and(installed) {
        let fix = match &toolchain {
            Some(toolchain) => format!("rustup target add {TARGET} --toolchain {toolchain}"),
            None => format!("rustup target add {TARGET}"),
        };
        eprintln!(
            "error: the guest plugins are compiled for {TARGET}, which this toolchain lacks, and `rustup target add` did not add it."
        );
        eprintln!("fix: {fix}");
        std::process::exit(1);
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
