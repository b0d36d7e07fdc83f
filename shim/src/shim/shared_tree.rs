//! The pod's shared directory on the host (`/run/myvm/shared/<ns>/<sandbox>`), which virtiofsd
//! serves to the guest: the one module that touches anything below it.
//!
//! The guest is hostile, and it can write through virtio-fs. So, the rule:
//!
//! 1. **The guest can write only inside what the host mounts for it.** virtiofsd serves a
//!    read-only bind of the directory (`vhost_user`'s `ShareAccess::MountsOnly`); containers'
//!    root filesystems and read-write volumes are read-write mounts below it. The directories
//!    and files that serve as mount points are the host's, and the guest cannot add, remove,
//!    rename or replace one (no planted symlink, no junk filling the host disk).
//! 2. **The host never resolves a path under it with the ordinary, symlink-following calls.**
//!    Every operation starts from a directory fd the host opened itself and resolves with
//!    `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`; files are created with
//!    `O_CREAT | O_EXCL | O_NOFOLLOW`; mounts go onto an fd (`/proc/self/fd/N`, `move_mount`);
//!    unmounts go through the fds of the mounts the host made, kept from create time, not through
//!    paths found later. Mount points are made in the writable directory underneath the
//!    read-only view, reached through a detached clone of its parent's mount (`open_tree`).
//! 3. **Ids are single path components**, checked before any path is built from them.
//!
//! After a shim crash nothing was kept: the pod's clean-up then detaches the view with everything
//! mounted below it in one lazy unmount, and removes the skeleton without following anything.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// What the guest sees of a container's directory: `<id>/rootfs` and `<id>/mounts/<n>`.
pub const ROOTFS: &str = "rootfs";
pub const MOUNTS_DIR: &str = "mounts";

#[derive(Debug, thiserror::Error)]
pub enum SharedTreeError {
    #[error(
        "invalid id {0:?}: ids must be 1 to 76 characters of [A-Za-z0-9._-], starting with a \
         letter or digit"
    )]
    BadId(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err(
    what: &'static str,
    path: impl Into<String>,
) -> impl FnOnce(io::Error) -> SharedTreeError {
    let path = path.into();
    move |source| SharedTreeError::Io { what, path, source }
}

/// True if `id` (a containerd container or sandbox id) can name one directory: containerd's own
/// identifier rule, which also rules out `.`, `..` and `/`.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 76
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

pub fn check_id(id: &str) -> Result<(), SharedTreeError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(SharedTreeError::BadId(id.to_string()))
    }
}

/// A sandbox's shared directory. Made by the host, served (read-only at its top) by virtiofsd.
#[derive(Debug)]
pub struct SharedTree {
    path: PathBuf,
}

impl SharedTree {
    /// Creates the directory (root only: it will hold root filesystems and volumes, secrets
    /// included). Fails if it exists: a dead shim's tree must be cleaned up first.
    pub fn create(path: &Path) -> Result<SharedTree, SharedTreeError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let parent = path.parent().expect("the shared directory has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(io_err("mkdir", parent.display().to_string()))?;
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io_err("mkdir", path.display().to_string()))?;
        Ok(SharedTree { path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes container `id`'s directory with its mount points. Undone when the returned
    /// handle drops.
    pub fn add_container(&self, id: &str) -> Result<ContainerMounts, SharedTreeError> {
        check_id(id)?;
        let here = |what| io_err(what, self.path.join(id).display().to_string());
        let under = open_under(&self.path).map_err(here("opening the host side of"))?;
        sys::mkdirat(under.as_fd(), id, 0o755).map_err(here("mkdir"))?;
        let mut cm = ContainerMounts {
            id: id.into(),
            tree: self.path.clone(),
            under,
            view_dir: None,
            mounted: Vec::new(),
            rootfs_top: None,
        };
        let dir = sys::open_beneath(cm.under.as_fd(), id, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(here("open"))?;
        for sub in [ROOTFS, MOUNTS_DIR] {
            sys::mkdirat(dir.as_fd(), sub, 0o755).map_err(here("mkdir in"))?;
        }
        // The guest's view of it: below the read-only bind virtiofsd serves.
        let view = open_view(&self.path).map_err(here("opening the guest's view of"))?;
        cm.view_dir = Some(
            sys::open_beneath(view.as_fd(), id, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(here("open"))?,
        );
        Ok(cm)
    }

    /// Removes what is left of the tree once the VM (and its view of the tree) is gone: the
    /// host's own mount points, nothing it would have to follow a link for.
    pub fn remove(&self) {
        detach_view(&self.path);
        remove_skeleton(&self.path);
    }
}

/// A container's mounts in the shared directory: its root filesystem and volumes, and their
/// mount points. Dropping it unmounts what it mounted (through the fds it kept) and removes
/// the mount points.
#[derive(Debug)]
pub struct ContainerMounts {
    id: String,
    tree: PathBuf,
    /// The host-writable directory underneath the view (see [`open_under`]), where the mount
    /// points are made and removed.
    under: OwnedFd,
    view_dir: Option<OwnedFd>,
    /// The root of every mount made, in order.
    mounted: Vec<OwnedFd>,
    /// The topmost mount on the rootfs mount point, if any (the next one stacks on it).
    rootfs_top: Option<usize>,
}

impl ContainerMounts {
    fn view_dir(&self) -> BorrowedFd<'_> {
        self.view_dir
            .as_ref()
            .expect("set by add_container")
            .as_fd()
    }

    fn err(&self, what: &'static str, sub: &str) -> impl FnOnce(io::Error) -> SharedTreeError {
        io_err(
            what,
            self.tree.join(&self.id).join(sub).display().to_string(),
        )
    }

    /// Mounts `source` (a filesystem of type `fstype`, or a bind when `None`) on the container's
    /// rootfs mount point. Can be called again to stack mounts.
    pub fn mount_rootfs(
        &mut self,
        source: &str,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
        data: Option<&str>,
    ) -> Result<(), SharedTreeError> {
        // The mount point, or (stacking) the root of the mount before; held open while used.
        let point = match self.rootfs_top {
            Some(i) => self.mounted[i]
                .try_clone()
                .map_err(self.err("dup", ROOTFS))?,
            None => sys::open_beneath(self.view_dir(), ROOTFS, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(self.err("open", ROOTFS))?,
        };
        let target = sys::fd_path(&point);
        nix::mount::mount(Some(source), &target, fstype, flags, data)
            .map_err(|e| self.err("mount on", ROOTFS)(e.into()))?;
        // What was just mounted: its root, reached through our own mount point.
        let root = sys::openat_nofollow(self.view_dir(), ROOTFS, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(self.err("open the new mount at", ROOTFS))?;
        self.rootfs_top = Some(self.mounted.len());
        self.mounted.push(root);
        Ok(())
    }

    /// Binds host path `source` (with what is mounted below it) at `mounts/<n>`, in one step
    /// (`open_tree` + `mount_setattr` + `move_mount`), never set-user-ID or device-special on the
    /// host side, and read-only there too when `readonly`.
    pub fn bind_volume(
        &mut self,
        n: usize,
        source: &Path,
        readonly: bool,
    ) -> Result<(), SharedTreeError> {
        let name = n.to_string();
        let sub = format!("{MOUNTS_DIR}/{name}");
        let src_err = io_err("binding", source.display().to_string());
        let tree = sys::open_tree_clone(source, true).map_err(src_err)?;
        let is_dir = sys::is_dir(tree.as_fd()).map_err(self.err("stat", &sub))?;
        // The mount point, made on the host side (the guest's view is read-only).
        let mounts = sys::open_beneath(
            self.under.as_fd(),
            &format!("{}/{MOUNTS_DIR}", self.id),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(self.err("open", MOUNTS_DIR))?;
        if is_dir {
            sys::mkdirat(mounts.as_fd(), &name, 0o755)
        } else {
            sys::create_at(mounts.as_fd(), &name)
        }
        .map_err(self.err("create", &sub))?;
        let mut attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if readonly {
            attrs |= libc::MOUNT_ATTR_RDONLY;
        }
        sys::set_mount_attrs(tree.as_fd(), attrs).map_err(self.err("mount_setattr", &sub))?;
        let target = sys::open_beneath(self.view_dir(), &sub, libc::O_PATH)
            .map_err(self.err("open", &sub))?;
        sys::move_mount_onto(tree.as_fd(), target.as_fd()).map_err(self.err("move_mount", &sub))?;
        // After move_mount the tree's fd is the root of the new mount.
        self.mounted.push(tree);
        Ok(())
    }
}

impl Drop for ContainerMounts {
    fn drop(&mut self) {
        // MNT_DETACH: a busy volume (a file still open in the guest) goes away from here too.
        for root in self.mounted.drain(..).rev() {
            if let Err(e) =
                nix::mount::umount2(&sys::fd_path(&root), nix::mount::MntFlags::MNT_DETACH)
            {
                tracing::debug!(container = self.id, "umount: {e}");
            }
        }
        self.view_dir = None;
        sys::remove_all_at(self.under.as_fd(), &self.id, 0);
    }
}

/// The guest's view: the top mount at `path` (the read-only bind virtiofsd serves).
fn open_view(path: &Path) -> io::Result<OwnedFd> {
    sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
}

/// The directory underneath the view, writable by the host: `path` in a detached clone of the
/// parent's mount alone (no submounts, so not the view either).
fn open_under(path: &Path) -> io::Result<OwnedFd> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("the shared directory has no name"))?;
    let clone = sys::open_tree_clone(parent, false)?;
    sys::open_beneath(clone.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY)
}

/// Lazily unmounts the view at `path` and everything mounted below it (a no-op when `path` is
/// no mount point: then umount2 fails with EINVAL).
fn detach_view(path: &Path) {
    use nix::mount::{umount2, MntFlags};
    for _ in 0..4 {
        if umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_err() {
            break;
        }
    }
}

fn remove_skeleton(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    if let Ok(clone) = sys::open_tree_clone(parent, false) {
        sys::remove_all_at(clone.as_fd(), name, 0);
    }
}

/// Cleans up after a shim that died, from what is there (nothing was kept): for the pod,
/// detaches the view with all mounts below it and removes the skeleton; for one container of a
/// pod whose view is still there, unmounts what is mounted at its mount points.
pub fn cleanup_dead(path: &Path, sandbox_id: &str, container_id: &str) {
    if !valid_id(sandbox_id) || !valid_id(container_id) {
        return;
    }
    if sandbox_id == container_id {
        SharedTree { path: path.into() }.remove();
        return;
    }
    let Ok(view) = open_view(path) else {
        return;
    };
    let Ok(dir) = sys::open_beneath(view.as_fd(), container_id, libc::O_PATH | libc::O_DIRECTORY)
    else {
        return;
    };
    let mut points = vec![ROOTFS.to_string()];
    if let Ok(mounts) =
        sys::open_beneath(dir.as_fd(), MOUNTS_DIR, libc::O_RDONLY | libc::O_DIRECTORY)
    {
        points.extend(
            sys::entries(mounts)
                .into_iter()
                .map(|n| format!("{MOUNTS_DIR}/{n}")),
        );
    }
    for p in points {
        let at = sys::fd_path(&dir).join(&p);
        while nix::mount::umount2(
            &at,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        )
        .is_ok()
        {}
    }
    if let Ok(under) = open_under(path) {
        sys::remove_all_at(under.as_fd(), container_id, 0);
    }
}

/// The system calls, each on fds.
mod sys {
    use super::*;

    pub const RESOLVE: u64 = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_XDEV
        | libc::RESOLVE_NO_MAGICLINKS;

    fn cstr(s: &str) -> io::Result<CString> {
        CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn check(r: libc::c_long) -> io::Result<libc::c_long> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// `/proc/self/fd/N`: a path naming exactly what the fd is (for calls that take no fd).
    pub fn fd_path(fd: &OwnedFd) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    pub fn open_path(path: &Path, flags: i32) -> io::Result<OwnedFd> {
        let p = crate::c_path(path)?;
        // SAFETY: a NUL-terminated path; the result is a new fd we own.
        let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
        check(fd as libc::c_long).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `path` (relative, any depth) below `dir`, never leaving it, following no link and
    /// crossing no mount.
    pub fn open_beneath(dir: BorrowedFd<'_>, path: &str, flags: i32) -> io::Result<OwnedFd> {
        let p = cstr(path)?;
        // SAFETY: a plain struct of integers, all zero is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
        how.resolve = RESOLVE;
        // SAFETY: a NUL-terminated path and a struct we own; the result is a new fd we own.
        let fd = check(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                p.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `name` in `dir`, into a mount on it if there is one (a mount's root), following no link.
    pub fn openat_nofollow(dir: BorrowedFd<'_>, name: &str, flags: i32) -> io::Result<OwnedFd> {
        let p = cstr(name)?;
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                p.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        check(fd as libc::c_long).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn mkdirat(dir: BorrowedFd<'_>, name: &str, mode: libc::mode_t) -> io::Result<()> {
        let p = cstr(name)?;
        // SAFETY: a NUL-terminated name.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), p.as_ptr(), mode) } as libc::c_long).map(drop)
    }

    /// A new empty file (never an existing one, never through a link).
    pub fn create_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        let p = cstr(name)?;
        // SAFETY: a NUL-terminated name; the fd is closed at once.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                p.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        check(fd as libc::c_long).map(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub fn is_dir(fd: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: fstat fills a struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } as libc::c_long)?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// A detached copy of the mount at `path` (and, with `recursive`, of what is mounted below).
    pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
        let p = crate::c_path(path)?;
        let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        // SAFETY: a NUL-terminated path; the result is a new fd we own.
        let fd = check(unsafe {
            libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags)
        })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn set_mount_attrs(tree: BorrowedFd<'_>, attrs: u64) -> io::Result<()> {
        let attr = libc::mount_attr {
            attr_set: attrs,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a struct we own and an fd we hold.
        check(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        })
        .map(drop)
    }

    /// Attaches the detached `tree` on the mount point `target` (both fds).
    pub fn move_mount_onto(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: two fds we hold and empty paths.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
            )
        })
        .map(drop)
    }

    /// The names in a directory opened for reading.
    pub fn entries(dir: OwnedFd) -> Vec<String> {
        let Ok(mut d) = nix::dir::Dir::from_fd(dir) else {
            return Vec::new();
        };
        d.iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(String::from))
            .filter(|n| n != "." && n != "..")
            .collect()
    }

    /// Removes `name` in `dir` and, for a directory, what it holds: unlinks without following
    /// anything, descends without crossing a mount (a mount point in use stays, EBUSY).
    pub fn remove_all_at(dir: BorrowedFd<'_>, name: &str, depth: u32) {
        let Ok(p) = cstr(name) else { return };
        if depth < 32 {
            if let Ok(sub) = open_beneath(dir, name, libc::O_RDONLY | libc::O_DIRECTORY) {
                let children = {
                    let dup = sub.try_clone();
                    dup.map(entries).unwrap_or_default()
                };
                for c in children {
                    remove_all_at(sub.as_fd(), &c, depth + 1);
                }
            }
        }
        // SAFETY: a NUL-terminated name; unlinkat never follows a link.
        unsafe {
            if libc::unlinkat(dir.as_raw_fd(), p.as_ptr(), libc::AT_REMOVEDIR) != 0 {
                libc::unlinkat(dir.as_raw_fd(), p.as_ptr(), 0);
            }
        }
    }
}

#[cfg(test)]
#[path = "shared_tree/tests.rs"]
mod tests;
