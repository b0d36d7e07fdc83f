//! libcontainer's processes between the agent and the container (intermediate, init) report a
//! failure to the agent only as the top error's text ("failed to prepare rootfs"): the cause
//! is logged in the child, with `tracing`, and lost at the process boundary. This layer catches
//! those error events in the child processes and writes them to a pipe the agent reads after
//! the build, so that the host gets the whole error.

use std::{
    fmt::Write as _,
    io::Read,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
};

use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The write end of the current capture's pipe, or -1.
static SINK: AtomicI32 = AtomicI32::new(-1);
/// The agent's own pid: events there are not the children's.
static AGENT: AtomicU32 = AtomicU32::new(0);
/// At most this much of the children's errors is kept.
const MAX: usize = 4096;

pub struct ChildErrors;

impl ChildErrors {
    pub fn layer() -> ChildErrors {
        AGENT.store(std::process::id(), Ordering::Relaxed);
        ChildErrors
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ChildErrors {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let fd = SINK.load(Ordering::Relaxed);
        if fd < 0
            || *event.metadata().level() != Level::ERROR
            || std::process::id() == AGENT.load(Ordering::Relaxed)
        {
            return;
        }
        let mut f = Fields(String::new());
        event.record(&mut f);
        f.0.push('\n');
        // Non-blocking: a full pipe loses the line, never stalls the child.
        // SAFETY: a buffer we own; fd is a pipe's write end the agent keeps open meanwhile.
        unsafe { libc::write(fd, f.0.as_ptr().cast(), f.0.len()) };
    }
}

/// Runs `f` (a libcontainer build, serialized by the caller) and returns what its child
/// processes logged as errors, one line each ("" if nothing or no pipe).
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, String) {
    let Ok((r, w)) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
    else {
        return (f(), String::new());
    };
    SINK.store(w.as_raw_fd(), Ordering::Relaxed);
    let out = f();
    SINK.store(-1, Ordering::Relaxed);
    drop(w);
    (out, read_all(r))
}

fn read_all(r: OwnedFd) -> String {
    let mut buf = Vec::new();
    let _ = std::fs::File::from(r)
        .take(MAX as u64)
        .read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().replace('\n', "; ")
}
