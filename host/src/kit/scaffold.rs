//! `plugins new`: a plugin project from the templates.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{KitError, WIT};

/// The language of a plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

const EVENTS: &str = include_str!("../../../examples/events.ndjson");
const MANIFEST: &str = include_str!("../../templates/manifest.toml");

/// `(path in the project, template)` for a Rust project.
const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs"),
    ),
    ("README.md", include_str!("../../templates/rust/README.md")),
    (".gitignore", "/target\n/dist\n"),
    (
        "sdk/Cargo.toml",
        include_str!("../../templates/rust/sdk.Cargo.toml"),
    ),
    ("sdk/wit/plugin.wit", WIT),
    (
        "sdk/src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "sdk/src/error.rs",
        include_str!("../../../plugins/sdk/src/error.rs"),
    ),
    (
        "sdk/src/json.rs",
        include_str!("../../../plugins/sdk/src/json.rs"),
    ),
    (
        "sdk/src/log.rs",
        include_str!("../../../plugins/sdk/src/log.rs"),
    ),
    (
        "sdk/src/snapshot.rs",
        include_str!("../../../plugins/sdk/src/snapshot.rs"),
    ),
    (
        "sdk/src/time.rs",
        include_str!("../../../plugins/sdk/src/time.rs"),
    ),
    (
        "sdk/src/typed.rs",
        include_str!("../../../plugins/sdk/src/typed.rs"),
    ),
];

/// `(path in the project, template)` for a Python project.
const PYTHON: &[(&str, &str)] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    (
        "todo_plugin.py",
        include_str!("../../templates/python/todo_plugin.py"),
    ),
    (
        "README.md",
        include_str!("../../templates/python/README.md"),
    ),
    (".gitignore", "/dist\n__pycache__/\n"),
    ("wit/plugin.wit", WIT),
];

impl Lang {
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Rust => RUST,
            Self::Python => PYTHON,
        }
    }

    /// Limits that fit a fresh plugin in this language, with headroom.
    fn limits(self) -> (&'static str, &'static str) {
        match self {
            Self::Rust => ("16MiB", "100ms"),
            Self::Python => ("64MiB", "1s"),
        }
    }
}

/// Names cargo refuses for a package (Rust's keywords, reserved ones
/// included) or that would clash with a crate of the standard library.
const NOT_CRATE_NAMES: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Whether `name` can be a plugin file stem, a crate and a Python-friendly
/// name: refused here rather than by cargo at the first build.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
        && !NOT_CRATE_NAMES.contains(&name.replace('-', "_").as_str())
}

/// Creates `parent/name`, a plugin project in `lang` that builds as it is:
/// a handler emitting one record per event to its output `out`, the
/// manifest mapping it, sample events and a README. Returns the project
/// directory and the files written.
pub fn new_project(
    name: &str,
    lang: Lang,
    parent: &Path,
) -> Result<(PathBuf, Vec<PathBuf>), KitError> {
    if !valid_name(name) {
        return Err(KitError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .map_err(KitError::io(&dir))?
            .next()
            .is_none();
        if !empty {
            return Err(KitError::Exists(dir));
        }
    }
    let (memory, call_timeout) = lang.limits();
    let render = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{memory}}", memory)
            .replace("{{call_timeout}}", call_timeout)
            .replace("{{componentize_py}}", super::COMPONENTIZE_PY_VERSION)
    };
    let manifest = format!("{name}.toml");
    let files = lang
        .files()
        .iter()
        .map(|(path, template)| (*path, *template))
        .chain([(manifest.as_str(), MANIFEST), ("events.ndjson", EVENTS)]);
    let mut written = Vec::new();
    for (path, template) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(KitError::io(parent))?;
        }
        // A new file only: never through a link or over a file put there
        // since the directory was found empty.
        std::fs::File::create_new(&file)
            .and_then(|mut out| out.write_all(render(template).as_bytes()))
            .map_err(KitError::io(&file))?;
        written.push(file);
    }
    Ok((dir, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_projects_are_not_overwritten() {
        for bad in ["", "Caps", "1st", "a b", "../x", "a.b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for keyword in ["fn", "match", "test", "std", "proc-macro"] {
            assert!(!valid_name(keyword), "{keyword:?}");
        }
        for fine in ["fnord", "matcher", "tests", "my-std"] {
            assert!(valid_name(fine), "{fine:?}");
        }
        let parent = tempfile::tempdir().unwrap();
        let err = new_project("../evil", Lang::Rust, parent.path()).unwrap_err();
        assert!(
            err.to_string().contains("not a usable plugin name"),
            "{err}"
        );

        let (dir, files) = new_project("hello", Lang::Python, parent.path()).unwrap();
        assert!(files.contains(&dir.join("hello.toml")));
        let manifest = std::fs::read_to_string(dir.join("hello.toml")).unwrap();
        assert!(manifest.contains("out = \"hello-out\""), "{manifest}");
        assert!(!manifest.contains("{{"), "{manifest}");
        let err = new_project("hello", Lang::Rust, parent.path()).unwrap_err();
        assert!(matches!(err, KitError::Exists(_)), "{err}");
    }

    #[test]
    fn a_rust_project_gets_every_file_of_the_sdk() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/src");
        for file in std::fs::read_dir(&sdk).unwrap() {
            let name = file.unwrap().file_name();
            let path = format!("sdk/src/{}", name.to_string_lossy());
            assert!(
                RUST.iter().any(|(copied, _)| *copied == path),
                "{path} is not copied into new projects"
            );
        }
    }
}
