//! Child reaping for PID 1 (and, outside a VM, a child subreaper).
//!
//! SIGCHLD is blocked in every thread; one reaper thread waits for it and collects every exited
//! child with `waitpid(-1)`. Code that starts a process asks for its exit with [`subscribe`]; an
//! exit that arrives before the subscription is kept for a while, so the fork/subscribe race is
//! harmless. Nothing else in the agent may call `wait*`.

#![allow(dead_code)] // subscribe/unblock are used by the container layer

use std::{
    collections::HashMap,
    sync::{mpsc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    sys::{
        signal::{SigSet, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

/// How long an exit nobody subscribed to is kept (orphans re-parented to PID 1 are never claimed).
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    waiters: HashMap<i32, mpsc::Sender<WaitStatus>>,
    unclaimed: HashMap<i32, (WaitStatus, Instant)>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

fn sigchld() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks SIGCHLD in the calling thread (call before any thread is spawned) and starts the reaper.
pub fn start() -> Result<()> {
    sigchld().thread_block().context("blocking SIGCHLD")?;
    if std::process::id() != 1 {
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    }
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(reap_loop)
        .context("spawning the reaper thread")?;
    Ok(())
}

/// To be called in a forked child before exec: the blocked SIGCHLD would otherwise be inherited.
pub fn unblock_in_child() -> nix::Result<()> {
    sigchld().thread_unblock()
}

/// The exit status of `pid` (a child of the agent), delivered once.
pub fn subscribe(pid: Pid) -> mpsc::Receiver<WaitStatus> {
    let (tx, rx) = mpsc::channel();
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((status, _)) = st.unclaimed.remove(&pid.as_raw()) {
        let _ = tx.send(status);
    } else {
        st.waiters.insert(pid.as_raw(), tx);
    }
    rx
}

fn reap_loop() {
    let set = sigchld();
    // SIGCHLD wakes us at once; the timeout is a backstop so no exit can be missed for long.
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        // SAFETY: `set` is a valid sigset; a null siginfo pointer is allowed.
        unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
        reap_all();
    }
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(status) => {
                tracing::debug!(?status, "reaped");
                deliver(status)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid: {e}");
                return;
            }
        }
    }
}

fn deliver(status: WaitStatus) {
    let Some(pid) = status.pid() else { return };
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    match st.waiters.remove(&pid.as_raw()) {
        Some(tx) => {
            let _ = tx.send(status);
        }
        None => {
            let now = Instant::now();
            st.unclaimed
                .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
            st.unclaimed.insert(pid.as_raw(), (status, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_before_subscribe_is_kept() {
        let pid = Pid::from_raw(424242);
        deliver(WaitStatus::Exited(pid, 7));
        let rx = subscribe(pid);
        assert!(matches!(rx.recv().unwrap(), WaitStatus::Exited(_, 7)));
    }

    #[test]
    fn subscriber_gets_exit() {
        let pid = Pid::from_raw(434343);
        let rx = subscribe(pid);
        deliver(WaitStatus::Exited(pid, 3));
        assert!(matches!(rx.recv().unwrap(), WaitStatus::Exited(_, 3)));
    }
}
