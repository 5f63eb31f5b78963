//! `plugins build`: a project directory in, `NAME.wasm` + `NAME.toml` out.
//!
//! The project's manifest is its one `*.toml` besides the build tools'
//! own (`Cargo.toml`, `pyproject.toml`, `rust-toolchain.toml`, …) and
//! hidden files; its stem names the plugin and must be a name the daemon
//! takes. A `Cargo.toml` makes it a Rust project, an `app.py` a Python one.
//! Both files are written beside their final names, under fresh names
//! made exclusively (never through a name planted there), and renamed into
//! place, the manifest first, so a daemon watching the output directory
//! never reads half a file.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{KitError, WIT};

/// The componentize-py release Python plugins are built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The Rust target plugins are compiled to.
const TARGET: &str = "wasm32-wasip2";

/// The helper module Python projects import.
const PYTHON_HELPER: &str = include_str!("../../templates/python/todo_plugin.py");

/// What a build wrote.
#[derive(Debug)]
pub struct Built {
    /// The plugin's name.
    pub name: String,
    /// `OUT/NAME.wasm`.
    pub wasm: PathBuf,
    /// `OUT/NAME.toml`.
    pub manifest: PathBuf,
}

/// Configuration files of build tools, never a plugin's manifest.
const TOOL_CONFIGS: &[&str] = &[
    "Cargo.toml",
    "pyproject.toml",
    "rust-toolchain.toml",
    "rustfmt.toml",
    "clippy.toml",
    "deny.toml",
    "Cross.toml",
    "ruff.toml",
    "taplo.toml",
    "typos.toml",
    "_typos.toml",
];

/// Builds the project in `dir` into `out` (default `dir/dist`). `tools`
/// is where tools installed on first use live (componentize-py's
/// virtualenv): a directory of this user's alone
/// ([`crate::private_dir`]), since they are run from there. Without one
/// (no `HOME`, no cache directory) a Python project is refused.
pub fn build(dir: &Path, out: Option<&Path>, tools: Option<&Path>) -> Result<Built, KitError> {
    let not_a_project = |message: String| KitError::NotAProject {
        dir: dir.to_owned(),
        message,
    };
    let manifest = find_manifest(dir)?;
    let name = manifest
        .file_stem()
        .and_then(OsStr::to_str)
        .filter(|name| crate::plugin::is_plugin_name(name))
        .ok_or_else(|| {
            not_a_project(format!(
                "{}: the manifest's name names the plugin, and plugin names may only contain \
                 letters, digits, '-', '_' and '.'",
                crate::text::escape_control(&manifest.display().to_string())
            ))
        })?
        .to_owned();
    let out = out.map_or_else(|| dir.join("dist"), Path::to_owned);
    std::fs::create_dir_all(&out).map_err(KitError::io(&out))?;
    let (wasm, copied) = if dir.join("Cargo.toml").is_file() {
        let built = build_rust(dir)?;
        publish(&out, &name, &manifest, |staged| {
            // Through the file made for it, not its name again.
            let mut from = std::fs::File::open(&built).map_err(KitError::io(&built))?;
            std::io::copy(&mut from, &mut staged.as_file()).map_err(KitError::io(&built))?;
            Ok(())
        })?
    } else if dir.join("app.py").is_file() {
        publish(&out, &name, &manifest, |staged| {
            build_python(dir, staged.path(), tools)
        })?
    } else {
        return Err(not_a_project(
            "neither Cargo.toml (Rust) nor app.py (Python) found; create a project with `todo-eventd plugins new`".into(),
        ));
    };
    Ok(Built {
        name,
        wasm,
        manifest: copied,
    })
}

/// A file to be written in `out` under a fresh hidden name
/// (`.NAME.EXT.RANDOM.part`), made exclusively — a name planted there
/// before, a symlink to someone's file say, is never written through —
/// and removed unless it is published.
fn staging(out: &Path, name: &str, ext: &str) -> Result<tempfile::NamedTempFile, KitError> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}.{ext}."))
        .suffix(".part")
        .tempfile_in(out)
        .map_err(KitError::io(out))
}

/// Writes `OUT/NAME.wasm` (by `write`, into a staged file; readable by a
/// daemon running as another user) and a copy of `manifest` as
/// `OUT/NAME.toml` (unless it is that file; with the manifest's mode), and
/// renames them into place, the manifest first; returns their paths.
fn publish(
    out: &Path,
    name: &str,
    manifest: &Path,
    write: impl FnOnce(&tempfile::NamedTempFile) -> Result<(), KitError>,
) -> Result<(PathBuf, PathBuf), KitError> {
    let wasm = out.join(format!("{name}.wasm"));
    let staged = staging(out, name, "wasm")?;
    write(&staged)?;
    // By path: a tool may have written the file anew under its name.
    std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(KitError::io(staged.path()))?;
    let copied = out.join(format!("{name}.toml"));
    if copied != manifest {
        let staged_manifest = staging(out, name, "toml")?;
        let mut from = std::fs::File::open(manifest).map_err(KitError::io(manifest))?;
        std::io::copy(&mut from, &mut staged_manifest.as_file())
            .map_err(KitError::io(staged_manifest.path()))?;
        // The manifest's own mode, as a copy keeps it — one kept from
        // other users (a `[config]` secret) is not made readable to them —
        // but never writable by others, nor more than read and write.
        let mode = from
            .metadata()
            .map_err(KitError::io(manifest))?
            .permissions()
            .mode();
        staged_manifest
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o644))
            .map_err(KitError::io(staged_manifest.path()))?;
        staged_manifest
            .persist(&copied)
            .map_err(|e| KitError::io(&copied)(e.error))?;
    }
    staged
        .persist(&wasm)
        .map_err(|e| KitError::io(&wasm)(e.error))?;
    Ok((wasm, copied))
}

/// The project's plugin manifest.
fn find_manifest(dir: &Path) -> Result<PathBuf, KitError> {
    let entries = std::fs::read_dir(dir).map_err(KitError::io(dir))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(KitError::io(dir))?.path();
        let file = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        if file.ends_with(".toml")
            && !file.starts_with('.')
            && !TOOL_CONFIGS.contains(&file)
            && path.is_file()
        {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(KitError::NotAProject {
            dir: dir.to_owned(),
            message: "no plugin manifest (NAME.toml) found".into(),
        }),
        _ => Err(KitError::NotAProject {
            dir: dir.to_owned(),
            message: format!(
                "more than one manifest ({}); keep one NAME.toml",
                found
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Runs `command`, failing with its name and exit status.
fn run(tool: &'static str, command: &mut Command) -> Result<(), KitError> {
    let status = command.status().map_err(|e| KitError::Tool {
        tool,
        message: format!("cannot run it: {e}"),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(KitError::Tool {
            tool,
            message: format!("failed ({status}); see its output above"),
        })
    }
}

/// Compiles a Rust project for `wasm32-wasip2`; returns the component.
fn build_rust(dir: &Path) -> Result<PathBuf, KitError> {
    let cargo_toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml).map_err(KitError::io(&cargo_toml))?;
    let package = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_owned))
        .ok_or_else(|| KitError::NotAProject {
            dir: dir.to_owned(),
            message: "Cargo.toml has no [package] name".into(),
        })?;
    ensure_rust_target(dir)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let target_dir = if target_dir.is_relative() {
        dir.join(target_dir)
    } else {
        target_dir
    };
    run(
        "cargo",
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(dir)
            .args(["build", "--release", "--target", TARGET, "--target-dir"])
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET"),
    )?;
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if wasm.is_file() {
        Ok(wasm)
    } else {
        Err(KitError::Tool {
            tool: "cargo",
            message: format!(
                "built, but {} is missing: is the crate a `cdylib`?",
                wasm.display()
            ),
        })
    }
}

/// Adds the `wasm32-wasip2` target with rustup when the toolchain `dir`
/// builds with lacks it.
fn ensure_rust_target(dir: &Path) -> Result<(), KitError> {
    let sysroot = Command::new("rustc")
        .current_dir(dir)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = |root: &Option<PathBuf>| {
        root.as_ref()
            .is_some_and(|r| r.join("lib/rustlib").join(TARGET).is_dir())
    };
    if installed(&sysroot) {
        return Ok(());
    }
    tracing::warn!("The {TARGET} target is missing; adding it with rustup.");
    run(
        "rustup",
        Command::new("rustup")
            .current_dir(dir)
            .args(["target", "add", TARGET]),
    )
    .map_err(|_| KitError::Tool {
        tool: "rustup",
        message: format!("could not add the {TARGET} target; run `rustup target add {TARGET}`"),
    })
}

/// Builds a Python project with componentize-py into `out`.
fn build_python(dir: &Path, out: &Path, tools: Option<&Path>) -> Result<(), KitError> {
    let tools = tools.ok_or_else(|| KitError::Tool {
        tool: "componentize-py",
        message: "no directory to install it in: set HOME or XDG_CACHE_HOME, or pass --cache-dir"
            .into(),
    })?;
    let componentize = componentize_py(tools)?;
    let scratch = tempfile::tempdir().map_err(KitError::io(std::env::temp_dir()))?;
    let wit = scratch.path().join("wit");
    std::fs::create_dir_all(&wit).map_err(KitError::io(&wit))?;
    std::fs::write(wit.join("plugin.wit"), WIT).map_err(KitError::io(&wit))?;
    // The project's own helper module wins; the shipped one fills in.
    let helpers = scratch.path().join("lib");
    std::fs::create_dir_all(&helpers).map_err(KitError::io(&helpers))?;
    std::fs::write(helpers.join("todo_plugin.py"), PYTHON_HELPER)
        .map_err(KitError::io(&helpers))?;
    run(
        "componentize-py",
        Command::new(&componentize)
            .arg("-d")
            .arg(&wit)
            .args(["-w", "plugin", "componentize", "app", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(&helpers)
            .arg("-o")
            .arg(out),
    )
}

/// `command`, creating what it creates writable by its owner only
/// (umask `022`), whatever umask the user has: a virtualenv made with
/// `002` would let the group replace its programs.
fn private_files(command: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec only `umask`, which is
    // async-signal-safe and touches no memory of ours, runs.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    command
}

/// componentize-py at the pinned version, installed into a virtualenv
/// under `tools` on first use.
fn componentize_py(tools: &Path) -> Result<PathBuf, KitError> {
    let venv = tools.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let bin = venv.join("bin").join("componentize-py");
    // Whoever may write `tools`, or anything on the way to `bin`, chooses
    // the program run as `bin`: all of it must be this user's alone, and a
    // directory found open to others is refused, not closed — what it holds
    // may have been put there while it was open.
    let untrusted = |what: &Path, why: String| KitError::Tool {
        tool: "componentize-py",
        message: format!(
            "{}: {why}; componentize-py is run from there, so it must belong to this user (or \
             root) and be writable by its owner only: remove it to have it installed again, \
             or pass another --cache-dir",
            what.display()
        ),
    };
    crate::private_dir::open_strict(tools).map_err(|err| untrusted(tools, err.to_string()))?;
    for path in [&venv, &venv.join("bin"), &bin] {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if let Some(why) = crate::private_dir::unsafe_because("it", &meta) {
                    return Err(untrusted(path, why));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
            Err(err) => return Err(untrusted(path, err.to_string())),
        }
    }
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "installing componentize-py {COMPONENTIZE_PY_VERSION} into {} (first use)",
        venv.display()
    );
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run(
        "python3 -m venv",
        private_files(Command::new(&python).args(["-m", "venv"]).arg(&venv)),
    )
    .map_err(|e| KitError::Tool {
        tool: "python3",
        message: format!("{e}; Python plugins need python3 (3.10 or later) with venv"),
    })?;
    let installed = run(
        "pip",
        private_files(&mut Command::new(venv.join("bin").join("pip"))).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("componentize-py=={COMPONENTIZE_PY_VERSION}"),
        ]),
    );
    if let Err(err) = installed {
        // A half-made virtualenv must not pass for an installed one.
        let _ = std::fs::remove_dir_all(&venv);
        return Err(err);
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for file in files {
            std::fs::write(dir.path().join(file), "").expect("write");
        }
        dir
    }

    fn refusal(dir: &Path, tools: Option<&Path>) -> String {
        match build(dir, None, tools) {
            Ok(built) => panic!("built {built:?}"),
            Err(err) => err.to_string(),
        }
    }

    /// `--out` may be a shared plugins directory: names planted there in
    /// advance (the old fixed `.NAME.wasm.part`, a symlink to another
    /// user's file) are never written through, and nothing staged is left
    /// behind. The manifest keeps its mode, less any write by others.
    #[test]
    fn publishing_writes_through_no_planted_name() {
        let project = project(&["echo.toml"]);
        let source = project.path().join("echo.toml");
        std::fs::write(&source, "version = \"2\"\n").expect("write");
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o660)).expect("chmod");
        let out = tempfile::tempdir().expect("temp dir");
        let victim = out.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        for planted in [".echo.wasm.part", ".echo.toml.part"] {
            std::os::unix::fs::symlink(&victim, out.path().join(planted)).expect("symlink");
        }
        let (wasm, manifest) = publish(
            out.path(),
            "echo",
            &project.path().join("echo.toml"),
            |staged| std::fs::write(staged.path(), b"\0asm").map_err(KitError::io(staged.path())),
        )
        .expect("published");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(std::fs::read(&wasm).expect("read"), b"\0asm");
        assert_eq!(
            std::fs::read_to_string(&manifest).expect("read"),
            "version = \"2\"\n"
        );
        for (file, mode) in [(&wasm, 0o644), (&manifest, 0o640)] {
            let meta = std::fs::symlink_metadata(file).expect("stat");
            assert!(meta.is_file(), "{}", file.display());
            assert_eq!(
                meta.permissions().mode() & 0o777,
                mode,
                "{}",
                file.display()
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(out.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".echo.toml.part",
                ".echo.wasm.part",
                "echo.toml",
                "echo.wasm",
                "victim"
            ]
        );

        // A failed build leaves nothing staged.
        let failed = publish(
            out.path(),
            "other",
            &project.path().join("echo.toml"),
            |_| {
                Err(KitError::Tool {
                    tool: "cargo",
                    message: "failed".into(),
                })
            },
        );
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(out.path()).expect("list").count(), 5);
    }

    #[test]
    fn the_manifest_is_the_one_toml_no_tool_owns_and_names_a_plugin() {
        let dir = project(&[
            "echo.toml",
            "Cargo.toml",
            "rust-toolchain.toml",
            "clippy.toml",
            ".rustfmt.toml",
        ]);
        assert_eq!(
            find_manifest(dir.path()).expect("found"),
            dir.path().join("echo.toml")
        );

        let dir = project(&["echo.toml", "other.toml"]);
        let refused = refusal(dir.path(), None);
        assert!(refused.contains("more than one manifest"), "{refused}");

        // A stem the daemon would refuse as a plugin name is refused here,
        // before anything is built.
        let dir = project(&["my plugin.toml", "Cargo.toml"]);
        let refused = refusal(dir.path(), None);
        assert!(
            refused.contains("my plugin.toml: the manifest's name names the plugin"),
            "{refused}"
        );
    }

    #[test]
    fn tools_are_run_only_from_a_directory_of_this_users_alone() {
        // No place for tools (no HOME): a Python project is refused, not
        // built with tools from a shared temporary directory.
        let dir = project(&["echo.toml", "app.py"]);
        let refused = refusal(dir.path(), None);
        assert!(
            refused.contains("componentize-py: no directory to install it in"),
            "{refused}"
        );

        let root = tempfile::tempdir().expect("temp dir");
        let tools = root.path().join("tools");
        let bin = tools
            .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"))
            .join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::write(bin.join("componentize-py"), "").expect("write");
        let mode = |path: &Path| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(path).expect("stat").mode() & 0o7777
        };
        assert_eq!(
            componentize_py(&tools).expect("ours"),
            bin.join("componentize-py")
        );
        // Open to others, now or at any step down to the program: refused
        // (someone may have put a program there), and left as it is.
        let program = bin.join("componentize-py");
        for (path, opened) in [(&tools, 0o777), (&bin, 0o775), (&program, 0o666)] {
            let before = mode(path);
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(opened)).expect("chmod");
            let refused = componentize_py(&tools)
                .expect_err("open to others")
                .to_string();
            assert!(
                refused.contains(&format!(
                    "{}: it is writable by its group or others",
                    path.display()
                )) && refused.contains("remove it to have it installed again"),
                "{refused}"
            );
            assert_eq!(mode(path), opened);
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(before)).expect("chmod");
        }

        // Another user's (only root can make one to test with): refused
        // before anything in it is run, and left as it is.
        if crate::private_dir::euid() == 0 {
            std::os::unix::fs::chown(&tools, Some(12_345), None).expect("chown");
            std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
            let refused = componentize_py(&tools)
                .expect_err("another user's")
                .to_string();
            assert!(refused.contains("belongs to uid 12345"), "{refused}");
            assert_eq!(mode(&tools), 0o777);
        }
    }
}
