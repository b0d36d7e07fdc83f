//! Where the guest image and the helper daemons are.
//!
//! Each is looked up in order: its environment variable, then the install location
//! (`make install`), then `PATH` for binaries.

use std::path::{Path, PathBuf};

use crate::check::find_in_path;

/// Install location of the guest image.
pub const SHARE_DIR: &str = "/usr/local/share/myvm";
/// Install location of the helper daemons.
pub const LIBEXEC_DIR: &str = "/usr/local/libexec/myvm";

#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vhost_vsock: PathBuf,
    pub virtiofsd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{what} not found (looked at: {looked}); build it with `make image deps` or install with `make install`, or set {var}")]
pub struct MissingAsset {
    pub what: &'static str,
    pub var: &'static str,
    pub looked: String,
}

impl Assets {
    pub fn discover() -> Result<Self, MissingAsset> {
        Ok(Assets {
            kernel: find(
                "guest kernel",
                "MYVM_KERNEL",
                &[Path::new(SHARE_DIR).join("vmlinux")],
                None,
            )?,
            initrd: find(
                "guest initramfs",
                "MYVM_INITRD",
                &[Path::new(SHARE_DIR).join("initramfs.cpio")],
                None,
            )?,
            vhost_vsock: find(
                "vhost-device-vsock",
                "MYVM_VHOST_VSOCK",
                &[Path::new(LIBEXEC_DIR).join("vhost-device-vsock")],
                Some("vhost-device-vsock"),
            )?,
            virtiofsd: find(
                "virtiofsd",
                "MYVM_VIRTIOFSD",
                &[
                    Path::new(LIBEXEC_DIR).join("virtiofsd"),
                    PathBuf::from("/usr/libexec/virtiofsd"),
                ],
                Some("virtiofsd"),
            )?,
        })
    }
}

fn find(
    what: &'static str,
    var: &'static str,
    defaults: &[PathBuf],
    in_path: Option<&str>,
) -> Result<PathBuf, MissingAsset> {
    let mut looked = Vec::new();
    if let Some(v) = std::env::var_os(var) {
        let p = PathBuf::from(v);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(format!("${var}={}", p.display()));
    }
    for p in defaults {
        if p.is_file() {
            return Ok(p.clone());
        }
        looked.push(p.display().to_string());
    }
    if let Some(name) = in_path {
        if let Some(p) = find_in_path(name) {
            return Ok(p);
        }
        looked.push(format!("{name} in PATH"));
    }
    Err(MissingAsset {
        what,
        var,
        looked: looked.join(", "),
    })
}
