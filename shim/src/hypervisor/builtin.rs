//! The `builtin` backend: our own VMM, `myvm-vmm` (vmm/), attached to the same vhost-user
//! daemons as QEMU, with its own virtio-net devices on the pod's taps. It appends the
//! `virtio_mmio.device=` entries (vsock first, then the fs devices, then the net devices, in
//! order) and, on hosts without vmx/svm, the kernel parameters KVM-PVM needs.
//! Exit status 0 = guest reset/power-off; 1 = runtime failure; 2 = bad configuration.

use std::{path::PathBuf, process::Command};

use super::control::{BalloonState, LineControl};
use super::{spawn_vmm, BackendKind, Hypervisor, HypervisorError, VmConfig};
use crate::process::Managed;

pub struct Builtin {
    binary: PathBuf,
    process: Option<Managed>,
    control: Option<LineControl>,
}

impl Builtin {
    pub fn new(binary: PathBuf) -> Self {
        Builtin {
            binary,
            process: None,
            control: None,
        }
    }

    fn control(&mut self) -> Result<&mut LineControl, HypervisorError> {
        self.control.as_mut().ok_or(HypervisorError::NotRunning)
    }

    pub fn args(&self, c: &VmConfig) -> Vec<String> {
        let mut a = vec![
            "--kernel".into(),
            c.kernel.display().to_string(),
            "--initrd".into(),
            c.initrd.display().to_string(),
            "--cmdline".into(),
            c.cmdline.clone(),
            "--vcpus".into(),
            c.vcpus.to_string(),
            "--memory-mib".into(),
            c.memory_mib.to_string(),
            "--serial-log".into(),
            c.serial_log.display().to_string(),
            "--vsock-socket".into(),
            c.vsock_vhost_socket.display().to_string(),
            // Always a balloon: free page reporting gives freed guest memory back.
            "--balloon-mib".into(),
            c.balloon_mib.to_string(),
            "--control-fd".into(),
            crate::jail::CONTROL_FD.to_string(),
        ];
        for fs in &c.fs {
            a.push("--fs".into());
            a.push(format!("{}={}", fs.tag, fs.vhost_socket.display()));
        }
        // In-process virtio-net on the tap, attached for it as an inherited fd; mtu 0 = not
        // announced, as QEMU's host_mtu=0.
        for (i, net) in c.net.iter().enumerate() {
            let fd = crate::jail::tap_fd(i);
            let mut v = format!("tap={},mac={},fd={fd}", net.tap, net.mac);
            if net.mtu != 0 {
                v.push_str(&format!(",mtu={}", net.mtu));
            }
            a.push("--net".into());
            a.push(v);
        }
        a
    }
}

impl Hypervisor for Builtin {
    fn kind(&self) -> BackendKind {
        BackendKind::Builtin
    }

    fn describe(&self) -> String {
        "builtin/kvm".into()
    }

    fn start(&mut self, config: &VmConfig) -> Result<(), HypervisorError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(config));
        let control = spawn_vmm(&mut self.process, "myvm-vmm", cmd, config, true)?;
        self.control = Some(LineControl::new(control)?);
        Ok(())
    }

    fn set_balloon_mib(&mut self, mib: u64) -> Result<(), HypervisorError> {
        self.control()?.set_balloon_mib(mib)
    }

    fn balloon(&mut self) -> Result<BalloonState, HypervisorError> {
        self.control()?.balloon()
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
    use crate::hypervisor::{FsDevice, NetDevice};

    #[test]
    fn command_line() {
        let c = VmConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 128,
            balloon_mib: 64,
            serial_log: "/d/serial.log".into(),
            vsock_vhost_socket: "/d/v.sock".into(),
            fs: vec![FsDevice {
                tag: "myvmfs".into(),
                vhost_socket: "/d/fs.sock".into(),
            }],
            net: vec![
                NetDevice {
                    tap: "tap0_myvm".into(),
                    mac: "0a:58:0a:f4:00:05".into(),
                    mtu: 1450,
                },
                NetDevice {
                    tap: "tap1_myvm".into(),
                    mac: "0a:58:0a:f4:00:06".into(),
                    mtu: 0,
                },
            ],
            netns: Some("/var/run/netns/cni-1".into()),
            work_dir: "/d".into(),
            vmm_uid: None,
        };
        let a = Builtin::new("myvm-vmm".into()).args(&c).join(" ");
        assert_eq!(
            a,
            "--kernel /k --initrd /i --cmdline console=ttyS0 --vcpus 2 --memory-mib 128 --serial-log /d/serial.log \
             --vsock-socket /d/v.sock --balloon-mib 64 --control-fd 199 --fs myvmfs=/d/fs.sock \
             --net tap=tap0_myvm,mac=0a:58:0a:f4:00:05,fd=200,mtu=1450 --net tap=tap1_myvm,mac=0a:58:0a:f4:00:06,fd=201"
        );
    }
}
