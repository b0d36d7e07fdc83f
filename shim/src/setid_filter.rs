//! The seccomp filter of the virtiofsd that serves a pod's volumes: it refuses every mode with
//! the set-user-ID or set-group-ID bit, at creation (`open`, `openat`, `creat`, `mkdir(at)`,
//! `mknod(at)`) and by `chmod` (`chmod`, `fchmod`, `fchmodat`, `fchmodat2`), with EPERM.
//!
//! Volumes are directories the host's own users share (hostPath, emptyDir on the node disk).
//! virtiofsd runs as root and creates files with the guest's owners, so without this, guest root
//! could leave a root-owned set-user-ID binary on the host for any host user to run. Device
//! nodes and file capabilities are refused by dropping CAP_MKNOD and CAP_SETFCAP
//! (`--modcaps`). The containers' root filesystems are served by another virtiofsd without
//! this filter: inside its rootfs, a container installs set-user-ID programs as under runc.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The mode bits refused.
pub const SETID_BITS: u64 = (libc::S_ISUID | libc::S_ISGID) as u64;

/// (syscall, index of its mode argument).
const MODE_ARGS: [(libc::c_long, u8); 9] = [
    (libc::SYS_open, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_creat, 1),
    (libc::SYS_mkdir, 1),
    (libc::SYS_mkdirat, 2),
    (libc::SYS_mknod, 1),
    (libc::SYS_mknodat, 2),
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
];

/// `fchmodat` and `fchmodat2` take the mode as their third argument.
const FCHMODAT: [libc::c_long; 2] = [libc::SYS_fchmodat, 452];

/// The compiled filter (built before the fork: applying it allocates nothing).
pub fn program() -> Result<BpfProgram, seccompiler::BackendError> {
    let setid_rules = |arg: u8| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        [libc::S_ISUID as u64, libc::S_ISGID as u64]
            .into_iter()
            .map(|bit| {
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(bit),
                    bit,
                )?])
            })
            .collect()
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, arg) in MODE_ARGS {
        rules.insert(nr, setid_rules(arg)?);
    }
    for nr in FCHMODAT {
        rules.insert(nr, setid_rules(2)?);
    }
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )?
    .try_into()
}

/// Installs `program` in the calling process (for `pre_exec`: it survives the exec). Also sets
/// no_new_privs.
pub fn apply(program: &BpfProgram) -> std::io::Result<()> {
    seccompiler::apply_filter(program).map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child: creating or chmodding to setuid/setgid is refused, the same without those
    /// bits works.
    #[test]
    fn set_id_modes_are_refused_and_others_pass() {
        let prog = program().unwrap();
        let dir = std::env::temp_dir().join(format!("myvm-setid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        // SAFETY: the child only makes system calls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = (|| -> std::io::Result<bool> {
                    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                    apply(&prog)?;
                    let open = |name: &str, mode| {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(mode)
                            .open(d.join(name))
                    };
                    let perm = |m| std::fs::Permissions::from_mode(m);
                    let refused = |r: std::io::Result<()>| {
                        r.is_err_and(|e| e.raw_os_error() == Some(libc::EPERM))
                    };
                    Ok(open("plain", 0o755).is_ok()
                        && refused(open("suid", 0o4755).map(drop))
                        && refused(open("sgid", 0o2755).map(drop))
                        && std::fs::set_permissions(d.join("plain"), perm(0o700)).is_ok()
                        && refused(std::fs::set_permissions(d.join("plain"), perm(0o4755)))
                        && refused(std::fs::set_permissions(d.join("plain"), perm(0o2700)))
                        && std::fs::create_dir(d.join("sub")).is_ok())
                })();
                unsafe { libc::_exit(if ok.unwrap_or(false) { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        assert!(!dir.join("suid").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
