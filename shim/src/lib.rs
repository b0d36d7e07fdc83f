//! myvm host side: hypervisor backends, hybrid vsock, the agent client and VM lifecycle.
//! Used by the `myvm` CLI and the containerd shim.

pub mod agent_client;
pub mod assets;
pub mod check;
pub mod config;
pub mod host_cgroup;
pub mod hybrid_vsock;
pub mod hypervisor;
pub mod jail;
pub mod network;
pub mod port_forward;
pub mod process;
pub mod runtime_info;
pub mod serial;
pub mod setid_filter;
pub mod shim;
pub mod timing;
pub mod vhost_user;
pub mod vm;

/// `path` as a C string for a system call (an error if it holds a NUL byte).
pub(crate) fn c_path(path: &std::path::Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("NUL in the path {}", path.display())))
}

/// FNV-1a (64 bit): a hash that is the same in every build and process, for names and ids that
/// a later shim must derive again (VM directory names, the first uid slot a VM tries).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
