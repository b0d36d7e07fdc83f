//! seccomp-BPF filters (seccompiler) for the VMM thread, the vCPU threads and the virtio-net
//! thread, installed after the VM is built (opening files and taps, creating the VM and
//! connecting to vhost-user daemons happen before). Any other syscall kills the whole process (SIGSYS). `--no-seccomp` turns them off.
//!
//! The allowed syscalls are the lists below; `docs/vmm.md` explains why each is needed.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building seccomp filter: {0}")]
    Build(#[from] seccompiler::Error),
    #[error("building seccomp filter: {0}")]
    Backend(#[from] seccompiler::BackendError),
}

/// Syscalls every thread of the VMM needs (memory allocation, locks, signals, thread exit,
/// logging to stderr, clocks).
pub const COMMON: &[(&str, i64)] = &[
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("futex", libc::SYS_futex),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("sched_yield", libc::SYS_sched_yield),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("getrandom", libc::SYS_getrandom),
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl), // F_GETFD: std checks an fd is open before closing it
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
];

/// The VMM (main) thread: waits on the signalfd and the exit eventfd, then exits.
pub const VMM_ONLY: &[(&str, i64)] = &[
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    // Dropping the vhost-user connections on exit.
    ("shutdown", libc::SYS_shutdown),
];

/// vCPU threads: KVM_RUN (and register reads for error reports) plus the vhost-user messages
/// sent when the guest driver activates or resets a device (these run on the vCPU thread that
/// took the MMIO exit).
pub const VCPU_ONLY: &[(&str, i64)] = &[
    ("ioctl", libc::SYS_ioctl), // restricted to KVM_RUN / KVM_GET_REGS / KVM_GET_SREGS
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
];

/// The `virtio-net` thread: waits on its epoll set (tap, queue kicks) and takes the tap out of it
/// while the guest has no RX buffer. Frames move with `read`/`write` on the tap, interrupts and
/// kicks are eventfd `read`/`write` (all in COMMON). glibc's epoll_wait() is the epoll_wait
/// syscall on x86_64.
pub const NET_ONLY: &[(&str, i64)] = &[
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
];

const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
pub const KVM_RUN: u64 = 0xae80;
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

fn rules(lists: &[&[(&str, i64)]]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut m = BTreeMap::new();
    for list in lists {
        for (_, nr) in list.iter() {
            m.insert(*nr, Vec::new());
        }
    }
    if let Some(ioctls) = m.get_mut(&libc::SYS_ioctl) {
        for req in [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS] {
            ioctls.push(SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )?])?);
        }
    }
    Ok(m)
}

fn compile(lists: &[&[(&str, i64)]]) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules(lists)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Compiled filters for each kind of thread.
#[derive(Clone)]
pub struct Filters {
    pub vmm: BpfProgram,
    pub vcpu: BpfProgram,
    pub net: BpfProgram,
}

impl Filters {
    pub fn build() -> Result<Self, SeccompError> {
        Ok(Filters {
            vmm: compile(&[COMMON, VMM_ONLY])?,
            vcpu: compile(&[COMMON, VCPU_ONLY])?,
            net: compile(&[COMMON, NET_ONLY])?,
        })
    }
}

/// Installs `prog` on the calling thread (and sets no_new_privs).
pub fn apply(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog)?;
    Ok(())
}

/// Runs the unit test `name` alone in a child process of this test binary, with `env` set: a
/// seccomp filter stays on its thread (and may kill the process), so filtered code is tested
/// away from the test runner.
#[cfg(test)]
pub(crate) fn run_test_in_child(name: &str, env: (&str, &std::ffi::OsStr)) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(env.0, env.1)
        .output()
        .unwrap()
}

/// The stdout of a child from [`run_test_in_child`], after checking that it passed (its status,
/// signal, stdout and stderr otherwise).
#[cfg(test)]
pub(crate) fn child_passed(out: &std::process::Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {:?} (signal {:?})\n{stdout}\n{}",
        out.status,
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_ioctl_numbers_match_kvm() {
        let f = Filters::build().unwrap();
        assert!(!f.vmm.is_empty() && !f.vcpu.is_empty() && !f.net.is_empty());
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn allowed_syscalls_work_under_the_vcpu_filter() {
        let f = Filters::build().unwrap();
        // Created before the filter (eventfd2 is not allowed afterwards).
        let e = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        std::thread::spawn(move || {
            apply(&f.vcpu).unwrap();
            e.write(3).unwrap();
            assert_eq!(e.read().unwrap(), 3);
            let v: Vec<u8> = vec![1; 4 << 20]; // mmap-backed allocation
            assert_eq!(v.iter().map(|b| *b as usize).sum::<usize>(), 4 << 20);
        })
        .join()
        .expect("thread ran under the filter");
    }

    /// Runs in a child process (see the parent test below): a denied syscall must kill it.
    #[test]
    fn child_denied_syscall() {
        if std::env::var_os("MYVM_SECCOMP_CHILD").is_none() {
            return; // only meaningful as the child of `denied_syscall_kills_the_process`
        }
        let f = Filters::build().unwrap();
        apply(&f.vmm).unwrap();
        // SAFETY: plain syscall; socket() is not on the VMM thread's list.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        std::process::exit(0); // not reached
    }

    #[test]
    fn denied_syscall_kills_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let st = run_test_in_child(
            "seccomp::tests::child_denied_syscall",
            ("MYVM_SECCOMP_CHILD", "1".as_ref()),
        )
        .status;
        assert_eq!(st.signal(), Some(libc::SIGSYS), "status {st:?}");
    }
}
