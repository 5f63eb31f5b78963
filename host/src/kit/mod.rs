//! The plugin authoring kit: `plugins new` writes a working plugin project
//! (Rust or Python) from the templates in `host/templates/`, and `plugins
//! build` turns a project into `NAME.wasm` + `NAME.toml` ready for a
//! plugins directory — with cargo for the `wasm32-wasip2` target, or with a
//! pinned componentize-py installed on first use.
//!
//! Projects stand alone: a Rust project carries the SDK's source (and the
//! WIT it binds) in `sdk/`, so it builds outside this repository with only
//! crates.io; a Python project carries the helper module `todo_plugin.py`.

mod scaffold;
mod toolchain;

use std::path::PathBuf;

pub use self::scaffold::{Lang, new_project};
pub use self::toolchain::{COMPONENTIZE_PY_VERSION, build};

/// The `todo:plugin` WIT that new plugins target.
pub const WIT: &str = include_str!("../../../wit/0.2.0/plugin.wit");

/// Why a project could not be created or built.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A plugin name that cannot be a file stem and a crate name.
    #[error(
        "{0:?} is not a usable plugin name: use lower-case letters, digits, '-' and '_', starting with a letter, and not a Rust keyword or standard crate name (cargo refuses those)"
    )]
    BadName(String),
    /// The project directory exists and is not empty.
    #[error("{} already exists and is not empty", .0.display())]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The directory is not a plugin project.
    #[error("{}: {message}", dir.display())]
    NotAProject {
        /// The directory.
        dir: PathBuf,
        /// What is missing or ambiguous.
        message: String,
    },
    /// A tool the build needs is missing or failed.
    #[error("{tool}: {message}")]
    Tool {
        /// The tool, e.g. `cargo` or `componentize-py`.
        tool: &'static str,
        /// What went wrong and how to fix it.
        message: String,
    },
}

impl KitError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
