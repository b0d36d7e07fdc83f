use std::os::unix::fs::symlink;

use super::*;

/// A temporary directory, removed (without following links) on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("myvm-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic random source (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn real_path(fd: &OwnedFd) -> PathBuf {
    std::fs::read_link(sys::fd_path(fd)).unwrap()
}

fn mounted_below(path: &Path) -> Vec<String> {
    let prefix = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

#[test]
fn ids_are_single_path_components() {
    for good in ["c1", "a", "1c3dfbd30407", "pod_a.b-c", &"x".repeat(76)] {
        assert!(valid_id(good), "{good}");
    }
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/abs",
        "-x",
        ".hidden",
        "a b",
        "a\0b",
        "ü",
        &"x".repeat(77),
    ] {
        assert!(!valid_id(bad), "{bad:?}");
        assert!(matches!(check_id(bad), Err(SharedTreeError::BadId(_))));
    }
}

/// A random tree of directories, files and symlinks (to `..`, absolute paths outside, loops and
/// siblings) below `base`, with a victim directory outside it. Whatever relative path is
/// resolved below `base`, the result is inside it or an error; and removing the tree removes
/// nothing outside it.
#[test]
fn resolution_and_removal_never_leave_the_base() {
    let tmp = Tmp::new("prop");
    let victim = tmp.0.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "keep").unwrap();
    let names = ["a", "b", "c", "..", ".", "rootfs", "mounts", "0"];
    for seed in 1..=300u64 {
        let base = tmp.0.join(format!("base{seed}"));
        std::fs::create_dir(&base).unwrap();
        let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
        let mut dirs = vec![base.clone()];
        for _ in 0..24 {
            let parent = dirs[rng.below(dirs.len())].clone();
            let name = names[rng.below(6)].to_string() + &rng.below(3).to_string();
            let path = parent.join(&name);
            if path.symlink_metadata().is_ok() {
                continue;
            }
            match rng.below(5) {
                0 | 1 => {
                    std::fs::create_dir(&path).unwrap();
                    dirs.push(path);
                }
                2 => std::fs::write(&path, "x").unwrap(),
                3 => symlink(&victim, &path).unwrap(),
                _ => {
                    let rel = ["..", "../..", "../../victim", ".", "a0", "/"][rng.below(6)];
                    symlink(rel, &path).unwrap();
                }
            }
        }
        let dir = sys::open_path(&base, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        for _ in 0..40 {
            let depth = 1 + rng.below(4);
            let rel: Vec<String> = (0..depth)
                .map(|_| names[rng.below(names.len())].to_string() + &rng.below(3).to_string())
                .map(|n| if n.starts_with("..") { "..".into() } else { n })
                .collect();
            let rel = rel.join("/");
            if let Ok(fd) = sys::open_beneath(dir.as_fd(), &rel, libc::O_PATH) {
                let got = real_path(&fd);
                assert!(
                    got.starts_with(&base),
                    "{rel} resolved to {}",
                    got.display()
                );
            }
        }
        let parent = sys::open_path(&tmp.0, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        sys::remove_all_at(parent.as_fd(), &format!("base{seed}"), 0);
        assert!(!base.exists(), "seed {seed}: {} left", base.display());
        assert_eq!(
            std::fs::read_to_string(victim.join("precious")).unwrap(),
            "keep",
            "seed {seed}"
        );
    }
}

/// The view as `vhost_user` makes it for a pod: a read-only bind of the directory on itself.
fn seal(path: &Path) {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
}

#[test]
#[ignore = "needs root: bind mounts (make test runs it)"]
fn a_container_mounts_through_fds_and_undoes_everything() {
    let tmp = Tmp::new("cycle");
    let (vol, file, root) = (tmp.0.join("vol"), tmp.0.join("hosts"), tmp.0.join("root"));
    for d in [&vol, &root] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(root.join("bin"), "busybox").unwrap();
    std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
    let path = tmp.0.join("shared/sb1");
    let tree = SharedTree::create(&path).unwrap();
    seal(&path);
    // The guest's view is read-only above the mounts: no junk, no planted link.
    assert!(std::fs::write(path.join("junk"), "x").is_err());
    assert!(symlink("/etc", path.join("c1")).is_err());

    let mut cm = tree.add_container("c1").unwrap();
    cm.mount_rootfs(
        root.to_str().unwrap(),
        None,
        nix::mount::MsFlags::MS_BIND,
        None,
    )
    .unwrap();
    cm.bind_volume(3, &vol, false).unwrap();
    cm.bind_volume(4, &file, true).unwrap();
    assert!(matches!(
        tree.add_container("c1"),
        Err(SharedTreeError::Io { .. })
    ));
    assert!(matches!(
        tree.add_container("../c1"),
        Err(SharedTreeError::BadId(_))
    ));

    let c1 = path.join("c1");
    assert_eq!(
        std::fs::read_to_string(c1.join("rootfs/bin")).unwrap(),
        "busybox"
    );
    // Writable volume: writes reach the host source; the mount points themselves are fixed.
    std::fs::write(c1.join("mounts/3/new"), "y").unwrap();
    assert_eq!(std::fs::read_to_string(vol.join("new")).unwrap(), "y");
    assert!(std::fs::remove_dir(c1.join("mounts/3")).is_err());
    assert!(std::fs::write(c1.join("mounts/junk"), "x").is_err());
    // Read-only volume, read-only on the host side too; no volume is suid or dev.
    assert!(std::fs::write(c1.join("mounts/4"), "evil").is_err());
    for m in ["mounts/3", "mounts/4"] {
        let st = nix::sys::statvfs::statvfs(&c1.join(m)).unwrap();
        let f = st.flags();
        assert!(
            f.contains(nix::sys::statvfs::FsFlags::ST_NOSUID)
                && f.contains(nix::sys::statvfs::FsFlags::ST_NODEV),
            "{m}: {f:?}"
        );
    }
    assert_eq!(mounted_below(&path).len(), 4, "{:?}", mounted_below(&path));

    drop(cm);
    assert_eq!(mounted_below(&path), vec![path.display().to_string()]);
    assert!(!c1.exists(), "the container's mount points stay");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert_eq!(std::fs::read_to_string(vol.join("new")).unwrap(), "y");

    tree.remove();
    assert!(mounted_below(&path).is_empty());
    assert!(!path.exists());
}

/// What the shim does after a crash (no fds kept): a container's mounts found at its mount
/// points, then the whole pod; a link where a mount point was is never followed.
#[test]
#[ignore = "needs root: bind mounts (make test runs it)"]
fn cleanup_after_a_crash_follows_nothing() {
    let tmp = Tmp::new("dead");
    let victim = tmp.0.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "keep").unwrap();
    let path = tmp.0.join("shared/sb1");
    let tree = SharedTree::create(&path).unwrap();
    // A container whose mount point was replaced by a link before the view was sealed (what a
    // guest could do before the view was read-only): never followed.
    std::fs::create_dir_all(path.join("c0")).unwrap();
    symlink(&victim, path.join("c0/mounts")).unwrap();
    symlink(&victim, path.join("c0/rootfs")).unwrap();
    seal(&path);
    for id in ["c1", "c2"] {
        let mut cm = tree.add_container(id).unwrap();
        cm.bind_volume(0, &victim, true).unwrap();
        std::mem::forget(cm); // the shim died: nothing kept, nothing undone
    }
    cleanup_dead(&path, "sb1", "c0");
    cleanup_dead(&path, "sb1", "c1");
    assert!(!path.join("c1").exists());
    assert!(path.join("c2/mounts/0/precious").exists(), "c2 untouched");
    cleanup_dead(&path, "sb1", "../sb1");
    assert!(path.exists());
    cleanup_dead(&path, "sb1", "sb1");
    assert!(
        mounted_below(&path).is_empty(),
        "{:?}",
        mounted_below(&path)
    );
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "keep"
    );
}
