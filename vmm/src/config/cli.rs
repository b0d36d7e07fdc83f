//! Command-line flags of `myvm-vmm`; they override the values of an optional JSON file.

use std::path::PathBuf;

use super::{
    parse_fs_arg, parse_net_arg, BootProtocol, ConfigError, CpuCompat, FsConfig, NetConfig,
    VmmConfig,
};

/// myvm's own KVM microVM monitor: boots a PVH `vmlinux` + initramfs with a serial console and
/// virtio devices on virtio-mmio: vhost-user vsock and virtio-fs, tap-backed virtio-net.
#[derive(Debug, clap::Parser)]
#[command(name = "myvm-vmm", version)]
pub struct Cli {
    /// JSON configuration file (fields of `VmmConfig`); flags given as well override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ELF vmlinux with a PVH entry point.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs (newc cpio).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the VMM appends `virtio_mmio.device=` entries).
    #[arg(long, allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1..=32).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB (at least 64).
    #[arg(long = "memory-mib", alias = "memory")]
    pub memory_mib: Option<u32>,
    /// File the guest serial console is written to (appended).
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    /// vhost-user socket of the vsock backend (vhost-device-vsock).
    #[arg(long)]
    pub vsock_socket: Option<PathBuf>,
    /// virtio-fs device served by a vhost-user daemon, as TAG=SOCKET (repeatable).
    #[arg(long = "fs", value_parser = parse_fs_value)]
    pub fs: Vec<FsConfig>,
    /// virtio-net device on an existing tap, as tap=<ifname>,mac=<aa:bb:cc:dd:ee:ff>[,mtu=<n>][,fd=<n>]
    /// (fd: an inherited /dev/net/tun fd already attached to that tap)
    /// (repeatable).
    #[arg(long = "net", value_parser = parse_net_value)]
    pub net: Vec<NetConfig>,
    /// Turn the seccomp filters off (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Keep the guest away from instructions KVM-PVM cannot emulate: mask them in CPUID and append
    /// `noxsave clearcpuid=cx16,popcnt,rdrand,rdseed,smap` (auto: when the host lacks vmx/svm).
    #[arg(long, value_enum)]
    pub cpu_compat: Option<CpuCompat>,
    /// Boot protocol (auto: PVH when the kernel has a PVH note, else the Linux 64-bit protocol).
    #[arg(long, value_enum)]
    pub boot_protocol: Option<BootProtocol>,
    /// A virtio-balloon (free page reporting on) that holds this many MiB of guest RAM from boot;
    /// resized through the control channel.
    #[arg(long)]
    pub balloon_mib: Option<u32>,
    /// An inherited, connected stream socket to answer control requests on (see `docs/vmm.md`).
    #[arg(long)]
    pub control_fd: Option<i32>,
    /// Print the effective configuration as JSON and exit without creating a VM.
    #[arg(long)]
    pub print_config: bool,
}

fn parse_fs_value(s: &str) -> Result<FsConfig, String> {
    parse_fs_arg(s).map_err(|e| e.to_string())
}

fn parse_net_value(s: &str) -> Result<NetConfig, String> {
    parse_net_arg(s).map_err(|e| e.to_string())
}

impl Cli {
    /// Merges the JSON file (if any) with the flags and validates the result.
    pub fn into_config(self) -> Result<VmmConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => VmmConfig::from_json_file(path)?,
            None => VmmConfig::new(PathBuf::new(), self.serial_log.clone().unwrap_or_default()),
        };
        if let Some(k) = self.kernel {
            cfg.kernel = k;
        }
        if self.initrd.is_some() {
            cfg.initrd = self.initrd;
        }
        if let Some(c) = self.cmdline {
            cfg.cmdline = c;
        }
        if let Some(v) = self.vcpus {
            cfg.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            cfg.memory_mib = m;
        }
        if let Some(s) = self.serial_log {
            cfg.serial_log = s;
        }
        if self.vsock_socket.is_some() {
            cfg.vsock_socket = self.vsock_socket;
        }
        if !self.fs.is_empty() {
            cfg.fs = self.fs;
        }
        if !self.net.is_empty() {
            cfg.net = self.net;
        }
        if self.no_seccomp {
            cfg.seccomp = false;
        }
        if let Some(c) = self.cpu_compat {
            cfg.cpu_compat = c;
        }
        if let Some(b) = self.boot_protocol {
            cfg.boot_protocol = b;
        }
        if self.balloon_mib.is_some() {
            cfg.balloon_mib = self.balloon_mib;
        }
        if self.control_fd.is_some() {
            cfg.control_fd = self.control_fd;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
