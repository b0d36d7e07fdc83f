//! VMM configuration: CLI flags and/or a JSON file, validated before any VM is created.

use std::path::{Path, PathBuf};

pub mod cli;

use serde::{Deserialize, Serialize};

/// Most vCPUs a guest may have (the guest kernel's CONFIG_NR_CPUS; also the MP table limit we use).
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory that boots the guest image.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Most guest memory we accept (bounded so the memfd size and e820 stay sane).
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// The x86 kernel's COMMAND_LINE_SIZE (including the terminating NUL).
pub const MAX_CMDLINE_LEN: usize = 2048;
/// Longest virtio-fs tag (virtio spec: 36 bytes, not NUL-terminated when full).
pub const MAX_FS_TAG_LEN: usize = 36;
/// Longest network interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// MTU range a virtio-net device may announce (Linux's minimum for IPv4; the config field is
/// 16 bits).
pub const MIN_NET_MTU: u32 = 68;
pub const MAX_NET_MTU: u32 = 65535;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("kernel is not set")]
    NoKernel,
    #[error("kernel {0} does not exist or is not a file")]
    MissingKernel(PathBuf),
    #[error("initrd {0} does not exist or is not a file")]
    MissingInitrd(PathBuf),
    #[error("vcpus must be 1..={MAX_VCPUS}, got {0}")]
    BadVcpus(u32),
    #[error("memory must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB, got {0} MiB")]
    BadMemory(u32),
    #[error("balloon of {0} MiB is larger than the guest's {1} MiB")]
    BadBalloon(u32, u32),
    #[error("control fd {0} is not an inherited descriptor (must be 3 or more)")]
    BadControlFd(i32),
    #[error("serial log path is not set")]
    NoSerialLog,
    #[error("serial log directory {0} does not exist")]
    SerialLogDir(PathBuf),
    #[error("kernel command line is {0} bytes, the guest accepts at most {max}", max = MAX_CMDLINE_LEN - 1)]
    CmdlineTooLong(usize),
    #[error("kernel command line must not contain NUL or newline characters")]
    CmdlineChars,
    #[error("virtio-fs tag {0:?} must be 1..={MAX_FS_TAG_LEN} bytes")]
    BadFsTag(String),
    #[error("duplicate virtio-fs tag {0:?}")]
    DuplicateFsTag(String),
    #[error("bad --fs value {0:?}: expected TAG=SOCKET")]
    BadFsArg(String),
    #[error(
        "bad --net value {0:?}: {1} (expected tap=<ifname>,mac=<aa:bb:cc:dd:ee:ff>[,mtu=<n>][,fd=<n>])"
    )]
    BadNetArg(String, String),
    #[error("bad MAC address {0:?}: {1}")]
    BadMac(String, &'static str),
    #[error("bad tap name {0:?}: {1}")]
    BadTapName(String, &'static str),
    #[error("duplicate tap {0:?}: each virtio-net device needs its own tap")]
    DuplicateTap(String),
    #[error("tap {0:?}: MTU must be {MIN_NET_MTU}..={MAX_NET_MTU}, got {1}")]
    BadMtu(String, u32),
    #[error("too many virtio devices: {0} (at most {max})", max = crate::boot::layout::MAX_VIRTIO_DEVICES)]
    TooManyDevices(usize),
    #[error("cannot read config file {0}: {1}")]
    ReadFile(PathBuf, String),
    #[error("cannot parse config file {0}: {1}")]
    ParseFile(PathBuf, String),
}

/// A virtio-fs device served by a vhost-user daemon (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Mount tag the guest uses (`mount -t virtiofs <tag> <dir>`).
    pub tag: String,
    /// vhost-user socket of the daemon.
    pub socket: PathBuf,
    /// Request queues the device offers (virtiofsd serves 1 by default).
    #[serde(default = "default_fs_queues")]
    pub request_queues: u16,
}

fn default_fs_queues() -> u16 {
    1
}

/// A virtio-net device backed by a tap interface that already exists in the VMM's network
/// namespace (the VMM opens it by name, or takes it attached as an inherited fd; it never creates
/// one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of the tap interface.
    pub tap: String,
    /// An inherited `/dev/net/tun` fd already attached to the tap (a jailed VMM cannot attach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// MAC address of the guest interface (unicast).
    pub mac: MacAddr,
    /// MTU announced to the guest (VIRTIO_NET_F_MTU); none = the guest's default (1500).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff` (also in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why| ConfigError::BadMac(s.to_owned(), why);
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad("expected six hex octets separated by ':'"));
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(&parts) {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("expected six hex octets separated by ':'"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad("not hexadecimal"))?;
        }
        if mac[0] & 1 != 0 {
            return Err(bad("multicast address (the guest needs a unicast one)"));
        }
        if mac == [0; 6] {
            return Err(bad("all-zero address"));
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Whether the guest is kept away from features KVM-PVM cannot emulate (CPUID masks + kernel
/// parameters, see `boot::cmdline::PVM_COMPAT_ARGS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CpuCompat {
    /// Hide them when the host has no hardware virtualization (no vmx/svm in /proc/cpuinfo).
    #[default]
    Auto,
    /// Always hide them.
    On,
    /// Never hide them.
    Off,
}

/// Which x86 boot protocol starts the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the ELF has a PVH note, the Linux 64-bit boot protocol otherwise.
    #[default]
    Auto,
    /// PVH (`hvm_start_info`, 32-bit entry); fails for kernels without the note.
    Pvh,
    /// Linux 64-bit boot protocol (zero page, e820, long-mode entry at the ELF entry point).
    Linux,
}

/// Complete VMM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// ELF `vmlinux` (PVH entry note required).
    pub kernel: PathBuf,
    /// Uncompressed (or gzip) newc initramfs, handed over as a PVH module.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; the VMM appends its `virtio_mmio.device=` announcements.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// File the guest's serial console (ttyS0) is appended to.
    pub serial_log: PathBuf,
    /// vhost-user socket of the vsock daemon (vhost-device-vsock).
    #[serde(default)]
    pub vsock_socket: Option<PathBuf>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices backed by taps.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// seccomp filters on the VMM and vCPU threads.
    #[serde(default = "default_true")]
    pub seccomp: bool,
    #[serde(default)]
    pub cpu_compat: CpuCompat,
    #[serde(default)]
    pub boot_protocol: BootProtocol,
    /// A virtio-balloon (with free page reporting) holding this many MiB from boot; None = no
    /// balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_mib: Option<u32>,
    /// An inherited, connected stream socket the VMM answers control requests on
    /// ([`crate::control`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_fd: Option<i32>,
}

fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> u32 {
    256
}
fn default_true() -> bool {
    true
}

impl VmmConfig {
    /// A configuration with defaults for everything but the kernel and the serial log.
    pub fn new(kernel: impl Into<PathBuf>, serial_log: impl Into<PathBuf>) -> Self {
        VmmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial_log: serial_log.into(),
            vsock_socket: None,
            fs: Vec::new(),
            net: Vec::new(),
            seccomp: true,
            cpu_compat: CpuCompat::Auto,
            boot_protocol: BootProtocol::Auto,
            balloon_mib: None,
            control_fd: None,
        }
    }

    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::ReadFile(path.to_owned(), e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| ConfigError::ParseFile(path.to_owned(), e.to_string()))
    }

    /// Number of virtio-mmio devices this configuration creates.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.vsock_socket.is_some())
            + self.fs.len()
            + self.net.len()
            + usize::from(self.balloon_mib.is_some())
    }

    /// Everything that can be checked without touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::MissingKernel(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::MissingInitrd(initrd.clone()));
            }
        }
        if self.vcpus == 0 || self.vcpus > u32::from(MAX_VCPUS) {
            return Err(ConfigError::BadVcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::BadMemory(self.memory_mib));
        }
        if let Some(b) = self.balloon_mib {
            if b > self.memory_mib {
                return Err(ConfigError::BadBalloon(b, self.memory_mib));
            }
        }
        if self.control_fd.is_some_and(|fd| fd < 3) {
            return Err(ConfigError::BadControlFd(self.control_fd.unwrap_or(-1)));
        }
        if self.serial_log.as_os_str().is_empty() {
            return Err(ConfigError::NoSerialLog);
        }
        if let Some(dir) = self.serial_log.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(ConfigError::SerialLogDir(dir.to_owned()));
            }
        }
        if self.cmdline.contains(['\0', '\n']) {
            return Err(ConfigError::CmdlineChars);
        }
        // Leave room for the device announcements the VMM appends.
        let full = crate::boot::cmdline::build(
            &self.cmdline,
            crate::boot::cmdline::PVM_COMPAT_ARGS,
            &self.virtio_slots(),
        )
        .map_err(|_| ConfigError::CmdlineChars)?;
        if full.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(full.len()));
        }
        let mut tags = std::collections::HashSet::new();
        for fs in &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > MAX_FS_TAG_LEN {
                return Err(ConfigError::BadFsTag(fs.tag.clone()));
            }
            if !tags.insert(fs.tag.as_str()) {
                return Err(ConfigError::DuplicateFsTag(fs.tag.clone()));
            }
        }
        let mut taps = std::collections::HashSet::new();
        for net in &self.net {
            check_ifname(&net.tap)?;
            if !taps.insert(net.tap.as_str()) {
                return Err(ConfigError::DuplicateTap(net.tap.clone()));
            }
            if let Some(mtu) = net.mtu {
                if !(MIN_NET_MTU..=MAX_NET_MTU).contains(&mtu) {
                    return Err(ConfigError::BadMtu(net.tap.clone(), mtu));
                }
            }
        }
        if self.virtio_device_count() > crate::boot::layout::MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(self.virtio_device_count()));
        }
        Ok(())
    }

    /// MMIO window and IRQ of each virtio device, in device order (vsock first, then fs, then
    /// net).
    pub fn virtio_slots(&self) -> Vec<crate::boot::layout::VirtioSlot> {
        (0..self.virtio_device_count())
            .map(crate::boot::layout::VirtioSlot::nth)
            .collect()
    }
}

/// Parses a `--fs TAG=SOCKET` argument.
pub fn parse_fs_arg(arg: &str) -> Result<FsConfig, ConfigError> {
    let (tag, socket) = arg
        .split_once('=')
        .ok_or_else(|| ConfigError::BadFsArg(arg.to_owned()))?;
    if tag.is_empty() || socket.is_empty() {
        return Err(ConfigError::BadFsArg(arg.to_owned()));
    }
    Ok(FsConfig {
        tag: tag.to_owned(),
        socket: PathBuf::from(socket),
        request_queues: 1,
    })
}

/// Checks a network interface name as the kernel does (`dev_valid_name`).
pub fn check_ifname(name: &str) -> Result<(), ConfigError> {
    let bad = |why| Err(ConfigError::BadTapName(name.to_owned(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("not a valid interface name");
    }
    if name.contains(['/', ':', '\0']) || name.chars().any(char::is_whitespace) {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// Parses a `--net tap=<ifname>,mac=<aa:bb:cc:dd:ee:ff>[,mtu=<n>][,fd=<n>]` argument.
pub fn parse_net_arg(arg: &str) -> Result<NetConfig, ConfigError> {
    let bad = |why: String| ConfigError::BadNetArg(arg.to_owned(), why);
    let (mut tap, mut mac, mut mtu, mut fd) = (None, None, None, None);
    for part in arg.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
        let slot = match key {
            "tap" => &mut tap,
            "mac" => &mut mac,
            "mtu" => &mut mtu,
            "fd" => &mut fd,
            _ => return Err(bad(format!("unknown key {key:?}"))),
        };
        if slot.replace(value).is_some() {
            return Err(bad(format!("{key} given twice")));
        }
    }
    let tap = tap
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("missing tap name (tap=<ifname>)".into()))?;
    check_ifname(tap)?;
    let mac = mac
        .ok_or_else(|| bad("missing MAC address (mac=<aa:bb:cc:dd:ee:ff>)".into()))?
        .parse()?;
    let mtu = mtu
        .map(|m| {
            m.parse::<u32>()
                .map_err(|_| bad(format!("mtu {m:?} is not a number")))
        })
        .transpose()?;
    let fd = fd
        .map(|f| {
            f.parse::<i32>()
                .ok()
                .filter(|&f| f > 2)
                .ok_or_else(|| bad(format!("fd {f:?} is not a number above 2")))
        })
        .transpose()?;
    Ok(NetConfig {
        tap: tap.to_owned(),
        fd,
        mac,
        mtu,
    })
}

#[cfg(test)]
mod tests;
