//! A host cgroup per sandbox for its VMM and vhost-user daemons: caps what one pod can take from
//! the host (memory, tasks) and accounts it (the pod overhead a RuntimeClass reports). cgroup v2
//! where the host has it, else the v1 `memory` and `pids` hierarchies.
//!
//! Layout: `<root>/myvm/<name>` (v2) or `<root>/<controller>/myvm/<name>` (v1).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
#[error("host cgroup {path}: {what}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    what: &'static str,
    source: std::io::Error,
}

#[derive(Debug)]
pub struct HostCgroup {
    /// One directory (v2) or one per controller (v1).
    dirs: Vec<PathBuf>,
    v2: bool,
}

/// Limits for a sandbox's host processes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
}

fn write(dir: &Path, file: &str, value: &str, what: &'static str) -> Result<(), CgroupError> {
    std::fs::write(dir.join(file), value).map_err(|source| CgroupError {
        path: dir.join(file),
        what,
        source,
    })
}

impl HostCgroup {
    /// Creates the sandbox's cgroup under `root` (normally /sys/fs/cgroup) with `limits`.
    pub fn create_in(root: &Path, name: &str, limits: Limits) -> Result<HostCgroup, CgroupError> {
        let cg = Self::layout(root, name);
        let v2 = cg.v2;
        for d in &cg.dirs {
            if v2 {
                // Controllers must be enabled for the children of each level.
                let parent = d.parent().expect("has a parent");
                std::fs::create_dir_all(parent).map_err(|source| CgroupError {
                    path: parent.into(),
                    what: "mkdir",
                    source,
                })?;
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
            }
            if let Err(source) = std::fs::create_dir_all(d) {
                cg.remove();
                return Err(CgroupError {
                    path: d.clone(),
                    what: "mkdir",
                    source,
                });
            }
        }
        let set = || -> Result<(), CgroupError> {
            let pids = limits.pids.to_string();
            cg.set_memory_max(limits.memory_bytes)?;
            let pids_dir = if v2 { &cg.dirs[0] } else { &cg.dirs[1] };
            write(pids_dir, "pids.max", &pids, "pids limit")
        };
        if let Err(e) = set() {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Sets the memory limit (when the pod's VM grows).
    pub fn set_memory_max(&self, bytes: u64) -> Result<(), CgroupError> {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        write(&self.dirs[0], file, &bytes.to_string(), "memory limit")
    }

    pub fn create(name: &str, limits: Limits) -> Result<HostCgroup, CgroupError> {
        Self::create_in(Path::new(ROOT), name, limits)
    }

    /// The cgroup `name` as `create` would lay it out, without touching anything (to remove
    /// what a dead shim left).
    pub fn existing(name: &str) -> HostCgroup {
        Self::layout(Path::new(ROOT), name)
    }

    /// Where cgroup `name` lives below `root`: one v2 directory, or one per v1 controller.
    fn layout(root: &Path, name: &str) -> HostCgroup {
        let v2 = root.join("cgroup.controllers").exists();
        let dirs = if v2 {
            vec![root.join("myvm").join(name)]
        } else {
            ["memory", "pids"]
                .iter()
                .map(|c| root.join(c).join("myvm").join(name))
                .collect()
        };
        HostCgroup { dirs, v2 }
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string(), "adding a process")?;
        }
        Ok(())
    }

    /// Host memory the sandbox's processes use now (bytes).
    pub fn memory_usage(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How many of the sandbox's host processes the kernel killed for the cgroup's memory limit.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The cgroup directories (for tests and diagnostics).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cgroup once its processes are gone (retries briefly while they exit).
    pub fn remove(&self) {
        for d in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
            if d.exists() {
                tracing::warn!("host cgroup {} still busy, left in place", d.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root and cgroup v2 at /sys/fs/cgroup (make test runs it)"]
    fn caps_and_accounts_a_process() {
        assert!(
            nix::unistd::geteuid().is_root() && Path::new(ROOT).exists(),
            "needs root and /sys/fs/cgroup"
        );
        let name = format!("test-{}", std::process::id());
        let limits = Limits {
            memory_bytes: 64 << 20,
            pids: 16,
        };
        let cg = HostCgroup::create(&name, limits).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add(child.id()).unwrap();
        let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(
            membership.contains(&format!("/myvm/{name}")),
            "{membership}"
        );
        let limit_file = if cg.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        assert_eq!(
            std::fs::read_to_string(cg.dirs()[0].join(limit_file))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
        assert!(cg.memory_usage().is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove();
        assert!(cg.dirs().iter().all(|d| !d.exists()));
    }

    #[test]
    #[ignore = "needs root and cgroup v2 at /sys/fs/cgroup (make test runs it)"]
    fn counts_its_oom_kills() {
        assert!(
            nix::unistd::geteuid().is_root() && Path::new(ROOT).exists(),
            "needs root and /sys/fs/cgroup"
        );
        let name = format!("test-oom-{}", std::process::id());
        let limits = Limits {
            memory_bytes: 16 << 20,
            pids: 16,
        };
        let cg = HostCgroup::create(&name, limits).unwrap();
        assert_eq!(cg.oom_kills(), 0);
        // Joins the cgroup during its first sleep, then grows past the limit.
        let mut hog = std::process::Command::new("sh")
            .args(["-c", "sleep 0.5; x=a; while true; do x=$x$x; done"])
            .spawn()
            .unwrap();
        cg.add(hog.id()).unwrap();
        let status = hog.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        assert_eq!(cg.oom_kills(), 1);
        cg.remove();
    }
}
