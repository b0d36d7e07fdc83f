//! An exec gets the container's seccomp filter, as under runc.
//!
//! libcontainer's tenant builder (what runs a process in a running container) rebuilds the
//! spec's `linux` section from the namespaces and the cgroup alone: its process would run
//! without the container's seccomp filter. The exec's process JSON already carries the rest of
//! the container's security settings (capabilities, no_new_privs, rlimits, user: containerd
//! copies the container's process), and the guest has no AppArmor or SELinux for either.
//!
//! So the exec is built with [`ExecSecurity`] as its executor, which loads the filter in the
//! exec'd process itself, just before `execve`, in runc's order:
//! - with no_new_privs, after the capabilities are dropped (no privilege needed);
//! - without it, loading a filter needs CAP_SYS_ADMIN, so libcontainer is given the process's
//!   capabilities plus CAP_SYS_ADMIN and CAP_SETPCAP ([`widened`]), and the executor loads the
//!   filter, then drops to the exec's own capabilities (every set, the bounding set too).
//!
//! Either way the process runs its program with the filter, or the exec fails.

use std::collections::HashMap;

use libcontainer::{
    capabilities::drop_privileges,
    oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, Spec},
    seccomp,
    syscall::linux::LinuxSyscall,
    workload::{
        default::DefaultExecutor, Executor, ExecutorError, ExecutorSetEnvsError,
        ExecutorValidationError,
    },
};

use super::error::{ContainerError, Result};

/// The executor of an exec in a container that has a seccomp filter.
#[derive(Clone, Debug)]
pub struct ExecSecurity {
    seccomp: LinuxSeccomp,
    /// The exec's own capabilities, to drop to once the filter is loaded; `None` when the
    /// process has no_new_privs (libcontainer drops to them itself).
    drop_to: Option<LinuxCapabilities>,
}

/// Capabilities that loading a filter without no_new_privs, then dropping the bounding set,
/// need.
const NEEDED: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// `caps` plus what the executor needs until the filter is loaded.
pub fn widened(caps: &LinuxCapabilities) -> LinuxCapabilities {
    let add = |set: &Option<std::collections::HashSet<Capability>>| {
        let mut s = set.clone().unwrap_or_default();
        s.extend(NEEDED);
        Some(s)
    };
    let mut w = caps.clone();
    w.set_bounding(add(caps.bounding()))
        .set_effective(add(caps.effective()))
        .set_permitted(add(caps.permitted()));
    w
}

impl ExecSecurity {
    /// The executor for an exec with `process` (its no_new_privs and capabilities) in a
    /// container whose filter is `seccomp`; adjusts the process's capabilities as explained
    /// above. Seccomp user notification (`listenerPath`) is not available to an exec.
    pub fn prepare(
        seccomp: &LinuxSeccomp,
        process: &mut oci_spec::runtime::Process,
    ) -> Result<ExecSecurity> {
        if seccomp::is_notify(seccomp) {
            return Err(ContainerError::Invalid(
                "the container's seccomp profile notifies a listener (SCMP_ACT_NOTIFY): an exec cannot get it in myvm".into(),
            ));
        }
        if process.no_new_privileges() == Some(false) {
            // libcontainer reads "no_new_privs: false" as "load seccomp late", which needs the
            // privilege we drop: absent is what false means.
            process.set_no_new_privileges(None);
        }
        // With no_new_privs, or no capabilities in the spec (libcontainer leaves the agent's
        // then), the filter loads as the process is: nothing to widen or drop.
        let drop_to = match process.capabilities().clone() {
            Some(caps) if process.no_new_privileges() != Some(true) => {
                process.set_capabilities(Some(widened(&caps)));
                Some(caps)
            }
            _ => None,
        };
        Ok(ExecSecurity {
            seccomp: seccomp.clone(),
            drop_to,
        })
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Other(format!("exec: {what}: {e}"))
}

impl Executor for ExecSecurity {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let notify = seccomp::initialize_seccomp(&self.seccomp)
            .map_err(|e| failed("loading the container's seccomp filter", e))?;
        if let Some(fd) = notify {
            // `prepare` refused notifying profiles; never leave a listener fd to the program.
            let _ = nix::unistd::close(fd);
            return Err(failed("seccomp", "unexpected notify fd"));
        }
        if let Some(caps) = &self.drop_to {
            drop_privileges(caps, &LinuxSyscall)
                .map_err(|e| failed("dropping to the exec's capabilities", e))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(
        &self,
        envs: HashMap<String, String>,
    ) -> std::result::Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: &str) -> oci_spec::runtime::Process {
        serde_json::from_str(json).unwrap()
    }

    const SECCOMP: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#;

    #[test]
    fn without_no_new_privs_the_filter_is_loaded_with_privilege_then_dropped() {
        let seccomp: LinuxSeccomp = serde_json::from_str(SECCOMP).unwrap();
        let mut p = process(
            r#"{"cwd":"/","user":{"uid":1000,"gid":1000},"args":["sh"],"noNewPrivileges":false,
                "capabilities":{"bounding":["CAP_CHOWN"],"effective":["CAP_CHOWN"],
                                "permitted":["CAP_CHOWN"]}}"#,
        );
        let x = ExecSecurity::prepare(&seccomp, &mut p).unwrap();
        assert_eq!(p.no_new_privileges(), None);
        let caps = p.capabilities().clone().unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.clone().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Chown));
        }
        let drop_to = x.drop_to.unwrap();
        assert_eq!(
            drop_to.bounding().clone().unwrap(),
            [Capability::Chown].into()
        );
    }

    #[test]
    fn with_no_new_privs_the_process_is_untouched() {
        let seccomp: LinuxSeccomp = serde_json::from_str(SECCOMP).unwrap();
        let json = r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"noNewPrivileges":true,
                       "capabilities":{"bounding":["CAP_CHOWN"]}}"#;
        let mut p = process(json);
        let x = ExecSecurity::prepare(&seccomp, &mut p).unwrap();
        assert!(x.drop_to.is_none());
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::to_value(process(json)).unwrap()
        );
    }

    #[test]
    fn without_capabilities_in_the_spec_nothing_is_widened() {
        let seccomp: LinuxSeccomp = serde_json::from_str(SECCOMP).unwrap();
        let mut p = process(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]}"#);
        let x = ExecSecurity::prepare(&seccomp, &mut p).unwrap();
        assert!(x.drop_to.is_none() && p.capabilities().is_none());
    }

    #[test]
    fn notifying_profiles_are_refused() {
        let seccomp: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/l.sock","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        let mut p = process(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]}"#);
        let err = ExecSecurity::prepare(&seccomp, &mut p).unwrap_err();
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
    }
}
