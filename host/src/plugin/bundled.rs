//! The plugins that ship inside the binary — reminders, recurrence,
//! analytics and audit — with their default manifests. `demo` runs them directly and
//! `plugins install DIR` writes them out for operators to start from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::Manifest;
use super::{LoadError, LoadReport};
use crate::sandbox::Sandbox;

/// One bundled plugin.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The plugin name (file stem).
    pub name: &'static str,
    /// The compiled component.
    pub wasm: &'static [u8],
    /// The default manifest.
    pub manifest: &'static str,
}

/// Every bundled plugin.
pub const ALL: &[Bundled] = &[
    Bundled {
        name: "reminders",
        wasm: include_bytes!(env!("GUEST_REMINDERS_WASM")),
        manifest: include_str!("../../../plugins/reminders/reminders.toml"),
    },
    Bundled {
        name: "recurrence",
        wasm: include_bytes!(env!("GUEST_RECURRENCE_WASM")),
        manifest: include_str!("../../../plugins/recurrence/recurrence.toml"),
    },
    Bundled {
        name: "analytics",
        wasm: include_bytes!(env!("GUEST_ANALYTICS_WASM")),
        manifest: include_str!("../../../plugins/analytics/analytics.toml"),
    },
    Bundled {
        name: "audit",
        wasm: include_bytes!(env!("GUEST_AUDIT_WASM")),
        manifest: include_str!("../../../plugins/audit/audit.toml"),
    },
];

/// Loads the bundled plugins with their default manifests, without touching
/// the filesystem.
pub async fn load(sandbox: &Arc<Sandbox>) -> Result<LoadReport, LoadError> {
    let mut report = LoadReport::default();
    for plugin in ALL {
        let manifest_file = PathBuf::from(format!("<bundled>/{}.toml", plugin.name));
        let manifest = Manifest::parse(plugin.manifest).map_err(|message| LoadError::Manifest {
            file: manifest_file.clone(),
            message,
        })?;
        let file = PathBuf::from(format!("<bundled>/{}.wasm", plugin.name));
        let loaded = super::from_parts(
            sandbox,
            plugin.name.into(),
            file,
            plugin.wasm,
            manifest,
            &manifest_file,
        )
        .await?;
        report.plugins.push(Arc::new(loaded));
    }
    Ok(report)
}

/// Writes every bundled plugin (`NAME.wasm` + `NAME.toml`) into `dir`,
/// creating it if needed. Existing manifests are kept, so an operator's
/// edits survive a reinstall; `.wasm` files are replaced atomically.
pub fn install(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for plugin in ALL {
        let manifest = dir.join(format!("{}.toml", plugin.name));
        // `create_new` writes through no symlink (not even a dangling one
        // planted where the manifest goes) and keeps an existing file.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&manifest)
        {
            Ok(mut file) => {
                std::io::Write::write_all(&mut file, plugin.manifest.as_bytes())?;
                written.push(manifest);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        let wasm = dir.join(format!("{}.wasm", plugin.name));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, plugin.wasm)?;
        // Temporary files are created 0600; a daemon running as another
        // user (systemd DynamicUser, a Kubernetes runAsUser) must read it.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tmp.persist(&wasm).map_err(|e| e.error)?;
        written.push(wasm);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_keeps_manifests_and_writes_through_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let first = ALL[0].name;
        // A dangling symlink planted where a manifest goes.
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(format!("{first}.toml"))).unwrap();
        let written = install(dir.path()).unwrap();
        assert!(!elsewhere.exists(), "nothing written through the link");
        assert!(
            !written.iter().any(|p| p.ends_with(format!("{first}.toml"))),
            "{written:?}"
        );
        assert!(dir.path().join(format!("{first}.wasm")).is_file());
        // A second install keeps the manifests written by the first.
        let again = install(dir.path()).unwrap();
        assert!(
            again
                .iter()
                .all(|p| p.extension().is_some_and(|e| e == "wasm"))
        );
    }
}
