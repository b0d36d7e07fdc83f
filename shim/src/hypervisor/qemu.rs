//! The `qemu` backend: `qemu-system-x86_64 -M microvm` with guest memory in a shared memfd (so the
//! vhost-user daemons can map it), serial to a log file, KVM when the host has hardware
//! virtualization, TCG otherwise. `acpi=off` is required for the guest to see virtio-mmio devices;
//! without ACPI a guest poweroff does not end QEMU, so the guest resets (`reboot=t`) and QEMU
//! runs with `-no-reboot`.

use std::{path::PathBuf, process::Command};

use super::control::{BalloonState, Qmp};
use super::{spawn_vmm, Accel, BackendKind, Hypervisor, HypervisorError, VmConfig};
use crate::process::Managed;

pub struct Qemu {
    binary: PathBuf,
    accel: Accel,
    /// `-cpu` with KVM.
    kvm_cpu: &'static str,
    process: Option<Managed>,
    qmp: Option<Qmp>,
    /// The balloon size last asked for (QMP reports only the actual one).
    balloon_target_mib: u64,
}

impl Qemu {
    pub fn new(binary: PathBuf, accel: Accel) -> Self {
        // KVM without vmx/svm in the CPU flags is KVM-PVM (only reached when KVM is forced):
        // there QEMU's `-cpu host` aborts setting IA32_ARCH_CAPABILITIES ("failed to set MSR
        // 0x10a"), so that MSR is left out. With hardware virtualization the guest gets it.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kvm_cpu = if crate::check::cpu_has_hw_virt(&cpuinfo) {
            "host"
        } else {
            "host,arch-capabilities=off"
        };
        Qemu {
            binary,
            accel,
            kvm_cpu,
            process: None,
            qmp: None,
            balloon_target_mib: 0,
        }
    }

    fn qmp(&mut self) -> Result<&mut Qmp, HypervisorError> {
        self.qmp.as_mut().ok_or(HypervisorError::NotRunning)
    }

    /// The QEMU command line for `config` (without the binary).
    pub fn args(&self, config: &VmConfig) -> Vec<String> {
        let mem = format!("{}M", config.memory_mib);
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "-M",
            "microvm,acpi=off,memory-backend=mem,x-option-roms=off",
        ]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", self.kvm_cpu]),
            Accel::Tcg => push(&["-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max"]),
        }
        push(&["-m", &mem, "-smp", &config.vcpus.to_string()]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        // QEMU's own seccomp filter: no obsolete syscalls, no setuid/exec/fork, no scheduler or
        // resource changes, once the VM is set up.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        push(&["-serial", &format!("file:{}", config.serial_log.display())]);
        push(&["-kernel", &config.kernel.display().to_string()]);
        push(&["-initrd", &config.initrd.display().to_string()]);
        push(&["-append", &config.cmdline]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=vsock,path={}",
                config.vsock_vhost_socket.display()
            ),
        ]);
        push(&["-device", "vhost-user-vsock-device,chardev=vsock"]);
        for (i, fs) in config.fs.iter().enumerate() {
            push(&[
                "-chardev",
                &format!("socket,id=fs{i},path={}", fs.vhost_socket.display()),
            ]);
            push(&[
                "-device",
                &format!("vhost-user-fs-device,chardev=fs{i},tag={}", fs.tag),
            ]);
        }
        for (i, net) in config.net.iter().enumerate() {
            push(&[
                "-netdev",
                &format!("tap,id=net{i},fd={},vhost=off", crate::jail::tap_fd(i)),
            ]);
            push(&[
                "-device",
                &format!(
                    "virtio-net-device,netdev=net{i},mac={},host_mtu={}",
                    net.mac, net.mtu
                ),
            ]);
        }
        push(&["-device", "virtio-rng-device"]);
        // Free page reporting: the guest reports free 2 MiB blocks and QEMU punches them out of
        // the memfd (for the VMM and the daemons that map it alike).
        push(&["-device", "virtio-balloon-device,free-page-reporting=on"]);
        // QMP on the inherited control channel (the balloon's size is set through it).
        push(&[
            "-chardev",
            &format!("socket,id=control,fd={}", crate::jail::CONTROL_FD),
            "-mon",
            "chardev=control,mode=control",
        ]);
        a
    }
}

impl Hypervisor for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn describe(&self) -> String {
        format!("qemu/{}", self.accel)
    }

    fn start(&mut self, config: &VmConfig) -> Result<(), HypervisorError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(config));
        let control = spawn_vmm(
            &mut self.process,
            "qemu",
            cmd,
            config,
            self.accel == Accel::Kvm,
        )?;
        self.qmp = Some(Qmp::new(control, u64::from(config.memory_mib))?);
        // QEMU has no command-line setting for the balloon's initial size: it is set through
        // QMP at once (QMP answers within milliseconds, long before the guest's driver starts
        // and reads it).
        if config.balloon_mib > 0 {
            self.set_balloon_mib(u64::from(config.balloon_mib))?;
        }
        Ok(())
    }

    fn set_balloon_mib(&mut self, mib: u64) -> Result<(), HypervisorError> {
        self.qmp()?.set_balloon_mib(mib)?;
        self.balloon_target_mib = mib;
        Ok(())
    }

    fn balloon(&mut self) -> Result<BalloonState, HypervisorError> {
        let target = self.balloon_target_mib;
        self.qmp()?.balloon(target)
    }

    fn vmm(&self) -> Option<&Managed> {
        self.process.as_ref()
    }

    fn vmm_mut(&mut self) -> Option<&mut Managed> {
        self.process.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::FsDevice;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            balloon_mib: 0,
            serial_log: "/run/x/serial.log".into(),
            vsock_vhost_socket: "/run/x/vsock.vhost.sock".into(),
            fs: vec![FsDevice {
                tag: "myvmfs".into(),
                vhost_socket: "/run/x/fs.sock".into(),
            }],
            net: vec![],
            netns: None,
            work_dir: "/run/x".into(),
            vmm_uid: None,
        }
    }

    fn joined(accel: Accel) -> String {
        Qemu::new("qemu".into(), accel).args(&config()).join(" ")
    }

    #[test]
    fn tcg_command_line_has_what_vhost_user_and_mmio_need() {
        let a = joined(Accel::Tcg);
        assert!(a.contains("-M microvm,acpi=off,memory-backend=mem"), "{a}");
        assert!(
            a.contains("memory-backend-memfd,id=mem,size=256M,share=on"),
            "{a}"
        );
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("-no-reboot"), "{a}");
        assert!(a.contains("-smp 2 "), "{a}");
        assert!(a.contains("-serial file:/run/x/serial.log"), "{a}");
        assert!(
            a.contains("socket,id=vsock,path=/run/x/vsock.vhost.sock"),
            "{a}"
        );
        assert!(
            a.contains("vhost-user-fs-device,chardev=fs0,tag=myvmfs"),
            "{a}"
        );
    }

    #[test]
    fn kvm_uses_host_cpu() {
        assert!(joined(Accel::Kvm).contains("-accel kvm -cpu host"));
    }

    #[test]
    fn bad_config_is_refused_before_spawning() {
        let mut q = Qemu::new("/nonexistent/qemu".into(), Accel::Tcg);
        let err = q.start(&config()).unwrap_err();
        assert!(
            err.to_string().contains("kernel /k/vmlinux does not exist"),
            "{err}"
        );
        assert!(q.pids().is_empty());
    }
}
