//! Wiring: builds the VM from a validated [`VmmConfig`], runs one thread per vCPU and waits for
//! the guest to stop (reset / power-off), a vCPU error, or SIGTERM/SIGINT/SIGHUP.

use std::{
    fs::OpenOptions,
    os::fd::AsFd,
    sync::{atomic::AtomicBool, Arc, Mutex},
};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, cpuid, layout};
use crate::config::{CpuCompat, VmmConfig};
use crate::devices::{i8042, serial::SerialDevice, Bus, IrqLine};
use crate::vstate::{
    vcpu::{Vcpu, VcpuExitReason},
    vm::Vm,
};

/// Process exit status of `myvm-vmm`.
pub mod exit_code {
    /// The guest powered off or reset (triple fault with `reboot=t`, i8042 reset).
    pub const GUEST_EXIT: i32 = 0;
    /// The VM failed at runtime (KVM internal/emulation error, entry failure, device setup).
    pub const VM_ERROR: i32 = 1;
    /// Invalid configuration or command line; no VM was created.
    pub const CONFIG_ERROR: i32 = 2;
    /// Stopped by SIGTERM/SIGINT/SIGHUP: 128 + signal number (143 for SIGTERM).
    pub const SIGNAL_BASE: i32 = 128;
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cmdline(#[from] boot::cmdline::CmdlineError),
    #[error("serial log {0}: {1}")]
    SerialLog(String, std::io::Error),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("signals: {0}")]
    Signal(nix::Error),
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
    #[error(transparent)]
    Device(#[from] crate::devices::vhost_user::VhostUserError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Net(#[from] crate::devices::virtio_net::NetError),
    #[error(transparent)]
    Balloon(#[from] crate::devices::virtio_balloon::BalloonError),
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Guest(VcpuExitReason),
    Signal(Signal),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Guest(VcpuExitReason::Reset | VcpuExitReason::Shutdown) => {
                exit_code::GUEST_EXIT
            }
            Outcome::Guest(VcpuExitReason::Error(_)) => exit_code::VM_ERROR,
            Outcome::Signal(s) => exit_code::SIGNAL_BASE + *s as i32,
        }
    }
}

/// First reason any vCPU or device reports for stopping the VM.
pub struct ExitSignal {
    reason: Mutex<Option<VcpuExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }
    pub fn report(&self, r: VcpuExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        let _ = self.evt.write(1);
    }
    pub fn take(&self) -> Option<VcpuExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether CPUID hides the features KVM-PVM cannot emulate.
pub fn pvm_compat(c: CpuCompat) -> bool {
    match c {
        CpuCompat::On => true,
        CpuCompat::Off => false,
        CpuCompat::Auto => !cpuid::host_has_hw_virt(),
    }
}

/// Signals that stop the VM; blocked in every thread and read through a signalfd.
pub fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s.add(Signal::SIGHUP);
    s
}

/// Builds and runs the VM until it stops. Call from the main thread before other threads exist.
pub fn run(cfg: &VmmConfig) -> Result<Outcome, VmmError> {
    let sigs = stop_signals();
    sigs.thread_block().map_err(VmmError::Signal)?;
    let sigfd = SignalFd::with_flags(&sigs, nix::sys::signalfd::SfdFlags::SFD_NONBLOCK)
        .map_err(VmmError::Signal)?;

    // Taps first: they are opened by name in our network namespace, and a missing one is the
    // most likely setup error.
    let taps = crate::devices::virtio_net::open_taps(cfg)?;

    let vcpus = cfg.vcpus as u8;
    let mem_size = u64::from(cfg.memory_mib) << 20;
    let vm = Vm::new(cfg.vcpus)?;
    let mem = crate::memory::create(mem_size)?;
    vm.set_memory(&mem)?;

    let compat = pvm_compat(cfg.cpu_compat);
    let slots = cfg.virtio_slots();
    let extra = if compat {
        boot::cmdline::PVM_COMPAT_ARGS
    } else {
        ""
    };
    let cmdline = boot::cmdline::build(&cfg.cmdline, extra, &slots)?;
    tracing::info!(%cmdline, "kernel command line");
    let boot_info = boot::load(
        &mem,
        mem_size,
        &cfg.kernel,
        cfg.initrd.as_deref(),
        &cmdline,
        vcpus,
        cfg.boot_protocol,
    )?;

    let exit = Arc::new(ExitSignal::new().map_err(|e| VmmError::Io("eventfd", e))?);

    // Port I/O: COM1 and the i8042.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.serial_log)
        .map_err(|e| VmmError::SerialLog(cfg.serial_log.display().to_string(), e))?;
    let serial_irq = IrqLine::new().map_err(|e| VmmError::Io("eventfd", e))?;
    vm.register_irqfd(&serial_irq.0, layout::SERIAL_IRQ)?;
    let mut pio = Bus::new();
    pio.insert(
        Arc::new(Mutex::new(SerialDevice::new(serial_irq, log))),
        u64::from(layout::SERIAL_PORT),
        8,
    )?;
    let exit_for_reset = exit.clone();
    let kbd = i8042::I8042::new(i8042::ResetTrigger(Arc::new(move || {
        tracing::info!("guest reset through the i8042");
        exit_for_reset.report(VcpuExitReason::Reset);
    })));
    pio.insert(Arc::new(Mutex::new(kbd)), u64::from(layout::I8042_PORT), 5)?;

    // MMIO: virtio devices backed by vhost-user daemons, then the tap-backed virtio-net devices
    // (served by the `virtio-net` thread).
    let mut mmio = Bus::new();
    let devices = crate::devices::vhost_user::attach_all(cfg, &vm, &mem, &slots, &mut mmio)?;
    let net = crate::devices::virtio_net::attach_all(
        cfg,
        taps,
        &vm,
        &mem,
        &slots[devices.transports.len()..],
        &mut mmio,
    )?;
    // The balloon last (the shim counts on that order for the device announcements).
    let balloon = match cfg.balloon_mib {
        Some(mib) => Some(crate::devices::virtio_balloon::attach(
            u64::from(mib),
            &vm,
            &mem,
            &slots[devices.transports.len() + cfg.net.len()],
            &mut mmio,
        )?),
        None => None,
    };
    // SAFETY: validated as an inherited descriptor (>= 3) that only the control channel uses.
    let mut control = cfg
        .control_fd
        .map(|fd| unsafe { crate::control::Control::from_fd(fd, balloon.clone()) });

    if compat {
        tracing::info!(
            "host has no hardware virtualization (KVM-PVM): hiding cx16, popcnt, xsave, avx, \
             rdrand, rdseed and smap from the guest (CPUID masks, which KVM-PVM partly ignores, \
             and kernel parameters)"
        );
    }
    let supported = vm.supported_cpuid()?;
    let mut vcpu_list = Vec::new();
    for i in 0..vcpus {
        let v = Vcpu::new(&vm, i)?;
        v.configure(&supported, vcpus, compat, (i == 0).then_some(&boot_info))?;
        vcpu_list.push(v);
    }

    let filters = if cfg.seccomp {
        Some(crate::seccomp::Filters::build()?)
    } else {
        tracing::warn!("seccomp filters are off (--no-seccomp)");
        None
    };

    let buses = Arc::new((pio, mmio));
    let stop = Arc::new(AtomicBool::new(false));
    for mut v in vcpu_list {
        let buses = buses.clone();
        let exit = exit.clone();
        let stop = stop.clone();
        let filter = filters.as_ref().map(|f| f.vcpu.clone());
        // Guest RAM stays mapped for as long as any vCPU can run (the main thread returns and
        // exits the process while vCPUs may still be inside KVM_RUN).
        let ram = mem.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{}", v.index))
            .spawn(move || {
                let _ram = ram;
                if let Some(f) = filter {
                    if let Err(e) = crate::seccomp::apply(&f) {
                        exit.report(VcpuExitReason::Error(format!(
                            "seccomp on vCPU thread: {e}"
                        )));
                        return;
                    }
                }
                if v.index == 0 {
                    if let Some(t0) = crate::PROCESS_START.get() {
                        tracing::info!(
                            ms = t0.elapsed().as_secs_f64() * 1000.0,
                            "first KVM_RUN (time since process start)"
                        );
                    }
                }
                let reason = v.run(&buses.0, &buses.1, &stop);
                tracing::info!(vcpu = v.index, ?reason, "vCPU stopped");
                exit.report(reason);
            })
            .map_err(|e| VmmError::Io("spawning a vCPU thread", e))?;
    }
    if let Some(em) = net {
        let exit = exit.clone();
        crate::devices::virtio_net::spawn_io_thread(
            em,
            filters.as_ref().map(|f| f.net.clone()),
            move |msg| exit.report(VcpuExitReason::Error(msg)),
        )
        .map_err(|e| VmmError::Io("spawning the virtio-net thread", e))?;
    }
    if let Some(f) = &filters {
        crate::seccomp::apply(&f.vmm)?;
    }
    tracing::info!(vcpus, memory_mib = cfg.memory_mib, "VM running");

    let outcome = wait(
        &sigfd,
        &exit,
        &devices.watches,
        control.as_mut(),
        balloon.as_ref(),
    )?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(devices);
    Ok(outcome)
}

/// Waits for a vCPU/device exit report, a stop signal, or a vhost-user daemon hanging up (the
/// device would stop working: the VM is ended with an error instead of hanging). Meanwhile it
/// answers the control channel and serves the balloon's queues.
fn wait(
    sigfd: &SignalFd,
    exit: &ExitSignal,
    watches: &[crate::devices::vhost_user::BackendWatch],
    mut control: Option<&mut crate::control::Control>,
    balloon: Option<&crate::devices::virtio_balloon::Balloon>,
) -> Result<Outcome, VmmError> {
    use std::os::fd::AsRawFd;
    let pollfd = |fd: i32, events: i16| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // libc::poll directly: nix's PollFlags drops revents it does not know (POLLRDHUP).
    let mut fds = vec![
        pollfd(sigfd.as_fd().as_raw_fd(), libc::POLLIN),
        pollfd(exit.evt.as_raw_fd(), libc::POLLIN),
    ];
    // Only hang-ups: replies on the sockets are read by the vCPU threads.
    fds.extend(
        watches
            .iter()
            .map(|w| pollfd(w.fd.as_raw_fd(), libc::POLLRDHUP)),
    );
    let kicks = balloon.map(|b| b.kick_fds()).unwrap_or_default();
    let kicks_at = fds.len();
    fds.extend(kicks.iter().map(|(_, fd)| pollfd(*fd, libc::POLLIN)));
    let control_at = fds.len();
    if let Some(c) = &control {
        fds.push(pollfd(c.fd(), libc::POLLIN));
    }
    loop {
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(VmmError::Signal(e));
        }
        if let Some(r) = exit.take() {
            return Ok(Outcome::Guest(r));
        }
        let hup = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
        for (w, fd) in watches.iter().zip(&fds[2..]) {
            if fd.revents & hup != 0 {
                let msg = format!("vhost-user backend {} disconnected", w.name);
                tracing::error!("{msg}");
                return Ok(Outcome::Guest(VcpuExitReason::Error(msg)));
            }
        }
        if let Some(b) = balloon {
            for ((queue, _), fd) in kicks.iter().zip(&fds[kicks_at..control_at]) {
                if fd.revents & libc::POLLIN != 0 {
                    b.process(*queue);
                }
            }
        }
        if let (Some(c), Some(fd)) = (control.as_deref_mut(), fds.get(control_at)) {
            if fd.revents & (libc::POLLIN | hup) != 0 && !c.serve() {
                // The shim is gone or misbehaved: no more control requests (the VM goes on; a
                // dead shim's VMM is ended by PDEATHSIG).
                fds.truncate(control_at);
                control = None;
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Ok(Some(info)) = sigfd.read_signal() {
                let sig = Signal::try_from(info.ssi_signo as i32).unwrap_or(Signal::SIGTERM);
                tracing::info!(signal = %sig, "stopping the VM");
                return Ok(Outcome::Signal(sig));
            }
        }
    }
}
