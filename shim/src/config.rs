//! `/etc/myvm/config.toml`: runtime configuration of the shim (and defaults for `myvm`).
//!
//! ```toml
//! backend = "auto"          # auto | builtin | qemu
//! kernel = "/usr/local/share/myvm/vmlinux"
//! initrd = "/usr/local/share/myvm/initramfs.cpio"
//! vcpus = 1
//! memory_mib = 256
//! boot_timeout_s = 60
//! log_level = "info"
//! ```
//! Every key is optional. containerd's runtime option `ConfigPath` names another file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hypervisor::BackendKind;

pub const DEFAULT_PATH: &str = "/etc/myvm/config.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub backend: String,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub boot_timeout_s: u64,
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: "auto".into(),
            kernel: None,
            initrd: None,
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_s: 60,
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

impl Config {
    /// Loads `path`; a missing file at the default path means the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let c: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        c.backend().map_err(|msg| ConfigError::Invalid {
            path: path.into(),
            msg,
        })?;
        Ok(c)
    }

    /// `None` = auto.
    pub fn backend(&self) -> Result<Option<BackendKind>, String> {
        match self.backend.as_str() {
            "auto" => Ok(None),
            other => other.parse().map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let p = std::env::temp_dir().join(format!(
            "myvm-config-test-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        let r = Config::load(&p);
        std::fs::remove_file(&p).unwrap();
        r
    }

    #[test]
    fn parses_and_defaults() {
        let c = load_str("backend = \"qemu\"\nmemory_mib = 512\n").unwrap();
        assert_eq!(c.backend().unwrap(), Some(BackendKind::Qemu));
        assert_eq!((c.memory_mib, c.vcpus), (512, 1));
        if !Path::new(DEFAULT_PATH).exists() {
            assert_eq!(
                Config::load(Path::new(DEFAULT_PATH)).unwrap(),
                Config::default()
            );
        }
    }

    #[test]
    fn rejects_unknown_keys_and_backends() {
        assert!(load_str("memory = 5\n")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        assert!(load_str("backend = \"xen\"\n")
            .unwrap_err()
            .to_string()
            .contains("unknown backend"));
        assert!(matches!(
            Config::load(Path::new("/nonexistent/x.toml")),
            Err(ConfigError::Read { .. })
        ));
    }
}
