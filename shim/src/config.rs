//! `/etc/myvm/config.toml`: runtime configuration of the shim (and defaults for `myvm`).
//!
//! ```toml
//! backend = "auto"          # auto | builtin | qemu
//! kernel = "/usr/local/share/myvm/vmlinux"
//! initrd = "/usr/local/share/myvm/initramfs.cpio"
//! vcpus = 1
//! memory_mib = 256
//! max_vcpus = 0          # 0: 32, the VMMs' limit
//! max_memory_mib = 0     # 0: the host's memory
//! memory_growth_mib = 1024 # how much a pod's VM can grow after boot (held in a balloon)
//! boot_timeout_s = 60
//! log_level = "info"
//! kernel_params = ""     # appended to the guest kernel's command line
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
    /// The most vCPUs a VM may get from what its pod or container asks (0: the VMMs' limit).
    pub max_vcpus: u32,
    /// The most memory a VM may get (0: the host's memory); a larger ask fails at create.
    pub max_memory_mib: u32,
    /// How much memory a pod's VM can grow by after boot (a container added or resized up):
    /// guest RAM the VM boots with but a balloon holds until the pod needs it (within
    /// `max_memory_mib`). 0: a pod's VM never grows.
    pub memory_growth_mib: u32,
    pub boot_timeout_s: u64,
    pub log_level: String,
    /// Extra guest kernel command line parameters (`key=value` pairs the kernel does not know
    /// become the agent's environment, e.g. `MYVM_AGENT_LOG=debug`).
    pub kernel_params: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: "auto".into(),
            kernel: None,
            initrd: None,
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 0,
            max_memory_mib: 0,
            memory_growth_mib: 1024,
            boot_timeout_s: 60,
            log_level: "info".into(),
            kernel_params: String::new(),
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

/// containerd's `runtimeoptions.v1.Options` (what CRI sends for a runtime's `options` table and
/// `ctr run --runtime-config-path`): `type_url = 1`, `config_path = 2`.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The `ConfigPath` of a task's runtime options, if they are containerd's runtime options and
/// name one. Malformed options are an error, not a silent default.
pub fn config_path_from_options(type_url: &str, value: &[u8]) -> Result<Option<PathBuf>, String> {
    if type_url.trim_start_matches('/').rsplit('/').next() != Some(RUNTIME_OPTIONS_TYPE) {
        return Ok(None);
    }
    let mut input = protobuf::CodedInputStream::from_bytes(value);
    let mut path = None;
    let bad = |e: protobuf::Error| format!("malformed {RUNTIME_OPTIONS_TYPE}: {e}");
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3 | 2) {
            path = Some(input.read_string().map_err(bad)?);
        } else {
            protobuf::rt::skip_field_for_tag(tag, &mut input).map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
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
        c.backend()
            .and_then(|_| c.check_kernel_params())
            .map_err(|msg| ConfigError::Invalid {
                path: path.into(),
                msg,
            })?;
        Ok(c)
    }

    /// The guest command line is at most 2048 bytes (x86); myvm's own part takes about 200.
    fn check_kernel_params(&self) -> Result<(), String> {
        const MAX: usize = 1024;
        let p = &self.kernel_params;
        if p.len() > MAX {
            return Err(format!("kernel_params is {} bytes, at most {MAX}", p.len()));
        }
        if p.chars().any(|c| c.is_control()) {
            return Err("kernel_params has a control character (newline?)".into());
        }
        Ok(())
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
        let c = load_str("kernel_params = \"MYVM_AGENT_LOG=debug quiet\"\n").unwrap();
        assert_eq!(c.kernel_params, "MYVM_AGENT_LOG=debug quiet");
        assert!(load_str("kernel_params = \"a\\nb\"\n")
            .unwrap_err()
            .to_string()
            .contains("control character"));
        let long = format!("kernel_params = \"{}\"\n", "x".repeat(1025));
        assert!(load_str(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 1024"));
    }

    #[test]
    fn config_path_comes_from_containerds_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/myvm/b.toml" (field 2).
        let mut v = vec![0x0a, 1, b'x', 0x12, 16];
        v.extend_from_slice(b"/etc/myvm/b.toml");
        let t = "type.googleapis.com/runtimeoptions.v1.Options";
        assert_eq!(
            config_path_from_options(t, &v),
            Ok(Some(PathBuf::from("/etc/myvm/b.toml")))
        );
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &[]),
            Ok(None)
        );
        // Another runtime's options are not ours to read.
        assert_eq!(
            config_path_from_options("containerd.runc.v1.Options", &v),
            Ok(None)
        );
        let err = config_path_from_options(t, &[0x12, 40, b'/']).unwrap_err();
        assert!(err.contains("malformed"), "{err}");
    }
}
