//! myvm-agent: PID 1 of a myvm microVM.
//!
//! As init it mounts the pseudo filesystems, reaps orphans and ends the VM on request; as the
//! agent it serves the ttrpc API of `myvm-protocol` on vsock port 1024. Outside a VM (not PID 1)
//! it can serve on a Unix socket instead, for tests: `myvm-agent --listen unix:///path`.

mod container;
mod guest;
mod init;
mod network;
mod peer;
mod reaper;
mod sandbox;
mod service;

use std::{
    io::Write,
    os::fd::AsRawFd,
    sync::{mpsc, Arc},
    time::Instant,
};

use anyhow::{Context, Result};
use myvm_protocol::{AGENT_VSOCK_PORT, READY_VSOCK_PORT, STDIO_VSOCK_PORT};

fn main() {
    let started = Instant::now();
    let pid1 = std::process::id() == 1;
    if let Err(e) = run(started, pid1) {
        eprintln!("myvm-agent: fatal: {e:#}");
        if pid1 {
            // PID 1 must not exit: that panics the guest kernel. End the VM instead.
            init::end_vm();
        }
        std::process::exit(1);
    }
}

fn run(started: Instant, pid1: bool) -> Result<()> {
    let mut listen = format!("vsock://-1:{AGENT_VSOCK_PORT}");
    let mut stdio_listen = format!("vsock://-1:{STDIO_VSOCK_PORT}");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--stdio-listen" => {
                stdio_listen = args.next().context("--stdio-listen needs an address")?
            }
            "--version" => {
                println!("myvm-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            other if pid1 => eprintln!("myvm-agent: ignoring argument {other:?}"),
            other => {
                anyhow::bail!("unknown argument {other:?} (use --listen ADDR --stdio-listen ADDR)")
            }
        }
    }

    if pid1 {
        init::setup().context("init")?;
    }
    init_logging();
    // Every thread inherits a blocked SIGCHLD; the reaper collects it with sigwait.
    reaper::start().context("starting the reaper")?;

    let events = Arc::new(container::events::EventQueue::default());
    let manager = Arc::new(container::Manager::new(events));
    sandbox::serve_stdio(&stdio_listen, manager.clone())
        .with_context(|| format!("serving stdio streams on {stdio_listen}"))?;

    let (shutdown_tx, shutdown_rx) = mpsc::channel::<()>();
    let server = service::serve(&listen, started, manager, shutdown_tx)
        .with_context(|| format!("serving the agent API on {listen}"))?;
    tracing::info!(
        listen,
        pid1,
        init_ms = started.elapsed().as_millis() as u64,
        "myvm-agent {} ready",
        env!("CARGO_PKG_VERSION")
    );

    if pid1 {
        notify_ready(started);
    }

    // Wait for a Shutdown request (or, outside a VM, for the channel to close).
    let _ = shutdown_rx.recv();
    tracing::info!("shutdown requested");
    if pid1 {
        init::end_vm();
    }
    server.shutdown();
    Ok(())
}

/// Tells the host we serve: a guest-initiated vsock connection to the host's READY port carrying
/// one line `READY <agent init ns> <guest uptime ns>` (CLOCK_BOOTTIME: time since the kernel
/// started), from which the host places kernel start and agent start on its own clock. Not
/// fatal: the host also polls.
fn notify_ready(started: Instant) {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let result = (|| -> Result<()> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(
            fd.as_raw_fd(),
            &VsockAddr::new(libc::VMADDR_CID_HOST, READY_VSOCK_PORT),
        )?;
        let mut stream = std::fs::File::from(fd);
        let uptime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
        let uptime_ns = uptime.tv_sec() as u128 * 1_000_000_000 + uptime.tv_nsec() as u128;
        writeln!(stream, "READY {} {uptime_ns}", started.elapsed().as_nanos())?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!("could not notify the host on vsock port {READY_VSOCK_PORT}: {e:#}");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MYVM_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(container::child_errors::ChildErrors::layer())
        .init();
}
