//! Ambient capabilities a manifest may grant through WASI: environment
//! variables, host directories and the real clocks. Everything is denied
//! unless listed; there is no network grant at all.

use std::path::PathBuf;

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
}
