//! Ambient capabilities a manifest may grant through WASI: environment
//! variables, host directories and the real clocks. Everything is denied
//! unless listed; there is no network grant at all.
//!
//! A manifest is as untrusted as its plugin, so what it may grant is the
//! operator's call ([`GrantPolicy`], from `[sandbox]`): environment
//! variables by name (never the daemon's own `TODO_EVENTD_*`), read-only
//! directories under `allowed_dirs`, read-write ones under
//! `writable_dirs` — none by default. Directory grants are resolved to
//! their real path at load, and an instance is refused the directory if
//! the path no longer resolves there (a symlink put in its way since);
//! `/proc`, `/sys` and `/dev` are never granted (nor a directory holding
//! them), nor writing where the daemon reads code from (the plugins
//! directory, the component cache).

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Ambient capabilities (a manifest's `[wasi]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WasiGrants {
    /// Names of host environment variables the plugin may read.
    #[serde(default)]
    pub env: Vec<String>,
    /// Give the plugin the real wall and monotonic clocks. Without this,
    /// WASI clocks report the host's per-call `now`, so plugins stay
    /// deterministic under `plugins test`.
    #[serde(default)]
    pub ambient_clock: bool,
    /// Host directories the plugin may open.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// A host directory made visible to the plugin.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Whether the plugin may write to it.
    #[serde(default)]
    pub writable: bool,
}

/// Environment variables one manifest may grant, at most.
const MAX_ENV_GRANTS: usize = 64;
/// Directories one manifest may grant, at most (each is an open file per
/// instance).
const MAX_DIR_GRANTS: usize = 16;
/// Host trees no grant may reach into: they hold the daemon's own
/// environment, memory and devices.
const NEVER_GRANTED: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Environment variables with this prefix hold the daemon's settings and
/// secrets (`TODO_EVENTD_KAFKA_PROPERTY_SASL_PASSWORD`).
const DAEMON_ENV_PREFIX: &str = "TODO_EVENTD_";

/// What the operator lets manifests grant (`sandbox.allowed_env`,
/// `sandbox.allowed_dirs`, `sandbox.writable_dirs`); by default nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantPolicy {
    /// Environment variable names a manifest may grant.
    pub env: Vec<String>,
    /// Directories under which a manifest may grant read-only access.
    pub readable: Vec<PathBuf>,
    /// Directories under which a manifest may grant read-write access
    /// (and read-only).
    pub writable: Vec<PathBuf>,
    /// The daemon's own directories, each with the setting that names it:
    /// no writable grant may overlap them.
    pub protected: Vec<(PathBuf, &'static str)>,
}

impl GrantPolicy {
    /// Checks `grants` against the policy; the error names the manifest
    /// key and the setting that would allow it. Returns the grants with
    /// every directory resolved to its real path.
    pub fn check(&self, grants: &WasiGrants) -> Result<WasiGrants, String> {
        if grants.env.len() > MAX_ENV_GRANTS {
            return Err(format!(
                "wasi.env: {} names, more than {MAX_ENV_GRANTS}",
                grants.env.len()
            ));
        }
        if grants.dirs.len() > MAX_DIR_GRANTS {
            return Err(format!(
                "wasi.dirs: {} directories, more than {MAX_DIR_GRANTS}",
                grants.dirs.len()
            ));
        }
        for name in &grants.env {
            let shown = crate::text::quote_bounded(name, 64);
            if name.starts_with(DAEMON_ENV_PREFIX) {
                return Err(format!(
                    "wasi.env: {shown} is one of the daemon's own settings; never granted"
                ));
            }
            if !self.env.contains(name) {
                return Err(format!("wasi.env: {shown} is not in sandbox.allowed_env"));
            }
        }
        let mut resolved = grants.clone();
        for dir in &mut resolved.dirs {
            let shown = crate::text::quote_bounded(&dir.host.to_string_lossy(), 256);
            let not_under = if dir.writable {
                format!("wasi.dirs: {shown} (writable) is not under sandbox.writable_dirs")
            } else {
                format!("wasi.dirs: {shown} is not under sandbox.allowed_dirs")
            };
            if dir.host.components().any(|c| c == Component::ParentDir) {
                return Err(format!("wasi.dirs: {shown} may not have a '..' in it"));
            }
            // The path as written must lie under a root the operator
            // allows before the host's files are looked at: otherwise the
            // error would tell a manifest's author whether any path on the
            // host exists (and a hung mount anywhere would hold the load).
            // The real path is held to the rules below.
            let host = std::path::absolute(&dir.host).map_err(|_| not_under.clone())?;
            let written_under = self.readable.iter().chain(&self.writable).any(|root| {
                std::path::absolute(root).is_ok_and(|root| host.starts_with(root))
                    || std::fs::canonicalize(root).is_ok_and(|root| host.starts_with(root))
            });
            if !written_under {
                return Err(not_under);
            }
            let real = std::fs::canonicalize(&dir.host)
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| format!("wasi.dirs: {shown} is not a directory on this host"))?;
            if NEVER_GRANTED
                .iter()
                .any(|never| overlaps(&real, Path::new(never)))
            {
                return Err(format!(
                    "wasi.dirs: {shown} is or holds /proc, /sys or /dev; never granted"
                ));
            }
            let under = |roots: &[PathBuf]| {
                roots
                    .iter()
                    .filter_map(|root| std::fs::canonicalize(root).ok())
                    .any(|root| real.starts_with(root))
            };
            if dir.writable {
                if !under(&self.writable) {
                    return Err(not_under);
                }
                if let Some((_, setting)) =
                    self.protected.iter().find(|(own, _)| overlaps(&real, own))
                {
                    return Err(format!(
                        "wasi.dirs: {shown} (writable) overlaps the daemon's own {setting}; never granted"
                    ));
                }
            } else if !under(&self.readable) && !under(&self.writable) {
                return Err(not_under);
            }
            dir.host = real;
        }
        Ok(resolved)
    }
}

/// The key granted directories are looked up and opened under
/// ([`crate::blocking::Abandoned`]): their host paths, one per line.
pub(super) fn lookup_key(dirs: &[DirGrant]) -> String {
    dirs.iter()
        .map(|dir| dir.host.to_string_lossy())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `real` (a resolved path) and `own` are one inside the other.
fn overlaps(real: &Path, own: &Path) -> bool {
    let own = std::fs::canonicalize(own).unwrap_or_else(|_| own.to_path_buf());
    real.starts_with(&own) || own.starts_with(real)
}

impl WasiGrants {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && !self.ambient_clock && self.dirs.is_empty()
    }

    /// One line per kind of grant, for operators: `env: TZ, LANG`,
    /// `dir: /srv/data -> /data (read-write)`, `clock: real`, `network:
    /// none`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.push(if self.env.is_empty() {
            "env: none".to_owned()
        } else {
            format!("env: {}", self.env.join(", "))
        });
        if self.dirs.is_empty() {
            lines.push("dirs: none".to_owned());
        }
        for dir in &self.dirs {
            lines.push(format!(
                "dir: {} -> {} ({})",
                dir.host.display(),
                dir.guest,
                if dir.writable {
                    "read-write"
                } else {
                    "read-only"
                }
            ));
        }
        lines.push(format!(
            "clock: {}",
            if self.ambient_clock {
                "real"
            } else {
                "host event time"
            }
        ));
        lines.push("network: none".to_owned());
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_described() {
        let grants: WasiGrants = toml::from_str(
            "env = [\"TZ\"]\nambient_clock = true\ndirs = [{ host = \"/srv\", guest = \"/data\", writable = true }]",
        )
        .unwrap();
        assert_eq!(
            grants.describe(),
            [
                "env: TZ",
                "dir: /srv -> /data (read-write)",
                "clock: real",
                "network: none"
            ]
        );
        assert!(WasiGrants::default().is_empty());
    }

    fn grants(text: &str) -> WasiGrants {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_what_the_operator_allows_is_granted() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let plugins = root.path().join("plugins");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir_all(&plugins).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(data.join("sub"), &link).unwrap();
        let dir = |path: &Path, writable: bool| {
            grants(&format!(
                "dirs = [{{ host = \"{}\", guest = \"/d\", writable = {writable} }}]",
                path.display()
            ))
        };
        let nothing = GrantPolicy::default();
        assert_eq!(
            nothing.check(&grants("env = [\"TZ\"]")).unwrap_err(),
            "wasi.env: TZ is not in sandbox.allowed_env"
        );
        let shown = data.display();
        assert_eq!(
            nothing.check(&dir(&data, false)).unwrap_err(),
            format!("wasi.dirs: {shown} is not under sandbox.allowed_dirs")
        );
        assert!(nothing.check(&grants("ambient_clock = true")).is_ok());

        let policy = GrantPolicy {
            env: vec![
                "TZ".into(),
                "TODO_EVENTD_KAFKA_PROPERTY_SASL_PASSWORD".into(),
            ],
            readable: vec![root.path().to_path_buf()],
            writable: vec![data.clone()],
            protected: vec![(plugins.clone(), "plugins.dir")],
        };
        assert!(policy.check(&grants("env = [\"TZ\"]")).is_ok());
        assert_eq!(
            policy
                .check(&grants(
                    "env = [\"TODO_EVENTD_KAFKA_PROPERTY_SASL_PASSWORD\"]"
                ))
                .unwrap_err(),
            "wasi.env: TODO_EVENTD_KAFKA_PROPERTY_SASL_PASSWORD is one of the daemon's own settings; never granted"
        );
        // Resolved to the real path, which is what the plugin will open.
        let resolved = policy.check(&dir(&link, true)).unwrap();
        assert_eq!(
            resolved.dirs[0].host,
            std::fs::canonicalize(data.join("sub")).unwrap()
        );
        assert!(policy.check(&dir(&plugins, false)).is_ok(), "reading is");
        let err = policy.check(&dir(&plugins, true)).unwrap_err();
        assert!(
            err.ends_with("(writable) is not under sandbox.writable_dirs"),
            "{err}"
        );
        let everywhere = GrantPolicy {
            writable: vec![PathBuf::from("/")],
            ..policy
        };
        let err = everywhere.check(&dir(root.path(), true)).unwrap_err();
        assert!(
            err.ends_with("(writable) overlaps the daemon's own plugins.dir; never granted"),
            "{err}"
        );
        for never in ["/proc/self", "/"] {
            let err = everywhere.check(&dir(Path::new(never), false)).unwrap_err();
            assert!(
                err.ends_with("is or holds /proc, /sys or /dev; never granted"),
                "{err}"
            );
        }
        let err = everywhere
            .check(&dir(&root.path().join("nope"), false))
            .unwrap_err();
        assert!(err.ends_with("is not a directory on this host"), "{err}");
        // Outside every allowed root, a path is refused as written, so
        // the answer is the same whether it exists or not.
        let under_root = GrantPolicy {
            readable: vec![root.path().to_path_buf()],
            ..GrantPolicy::default()
        };
        for path in ["/etc", "/no/such/dir"] {
            assert_eq!(
                under_root.check(&dir(Path::new(path), false)).unwrap_err(),
                format!("wasi.dirs: {path} is not under sandbox.allowed_dirs")
            );
        }
        for path in ["../data", "/srv/../etc"] {
            assert_eq!(
                everywhere.check(&dir(Path::new(path), false)).unwrap_err(),
                format!("wasi.dirs: {path} may not have a '..' in it")
            );
        }
        let many = format!("env = [{}]", vec!["\"TZ\""; 65].join(","));
        assert_eq!(
            everywhere.check(&grants(&many)).unwrap_err(),
            "wasi.env: 65 names, more than 64"
        );
    }
}
