//! `myvm`: the operator's command line.
//!
//! - `myvm check`: which hypervisor backend this host gets, and why.
//! - `myvm boot`: boots a throw-away microVM, prints the guest's details and the time from start
//!   to agent-ready, and shuts it down.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use myvm::{
    assets::Assets,
    check::HostInfo,
    hypervisor::BackendKind,
    vm::{Vm, VmOptions},
};

#[derive(Parser)]
#[command(name = "myvm", version, about = "myvm: containers in KVM microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what this host supports and which backend `auto` picks.
    Check,
    /// Boot a throw-away VM, print guest details and the time to agent-ready, shut it down.
    Boot {
        /// Hypervisor backend: auto, builtin or qemu.
        #[arg(long, default_value = "auto")]
        backend: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u32,
        /// Seconds the guest may take to answer.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Extra guest kernel command line parameters.
        #[arg(long, default_value = "")]
        append: String,
    },
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MYVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("myvm: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check => {
            print!("{}", HostInfo::detect().report());
            Ok(())
        }
        Command::Boot {
            backend,
            vcpus,
            memory,
            timeout,
            json,
            append,
        } => boot(&backend, vcpus, memory, timeout, json, &append),
    }
}

fn parse_backend(s: &str) -> Result<Option<BackendKind>> {
    if s == "auto" {
        return Ok(None);
    }
    Ok(Some(s.parse().map_err(anyhow::Error::msg)?))
}

fn boot(
    backend: &str,
    vcpus: u32,
    memory: u32,
    timeout: u64,
    json: bool,
    append: &str,
) -> Result<()> {
    let host = HostInfo::detect();
    let assets = Assets::discover()?;
    let opts = VmOptions {
        backend: parse_backend(backend)?,
        vcpus,
        memory_mib: memory,
        boot_timeout: Duration::from_secs(timeout),
        extra_cmdline: append.to_string(),
        ..Default::default()
    };
    let vm = Vm::boot(&opts, &assets, &host).context("booting the VM")?;
    let details = vm.agent().guest_details().context("GetGuestDetails")?;
    let backend = vm.backend();
    let boot_ms = vm.boot_time().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let status = vm
        .shutdown(Duration::from_secs(10))
        .context("shutting the VM down")?;
    let shutdown_ms = t.elapsed().as_secs_f64() * 1000.0;
    if json {
        let v = serde_json::json!({
            "backend": backend,
            "kernel_release": details.kernel_release,
            "kernel_version": details.kernel_version,
            "vcpus": details.vcpus,
            "mem_total_bytes": details.mem_total_bytes,
            "mem_available_bytes": details.mem_available_bytes,
            "agent_version": details.agent_version,
            "guest_uptime_at_query_ms": details.uptime_ns as f64 / 1e6,
            "agent_init_ms": details.agent_init_ns as f64 / 1e6,
            "boot_to_agent_ready_ms": boot_ms,
            "shutdown_ms": shutdown_ms,
            "vmm_exit": status.code(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("backend:             {backend}");
        println!("guest kernel:        {}", details.kernel_release);
        println!("                     {}", details.kernel_version);
        println!("vcpus:               {}", details.vcpus);
        println!(
            "memory:              {} MiB total, {} MiB available",
            details.mem_total_bytes >> 20,
            details.mem_available_bytes >> 20
        );
        println!(
            "agent:               myvm-agent {} (init {:.1} ms)",
            details.agent_version,
            details.agent_init_ns as f64 / 1e6
        );
        println!(
            "start → agent ready: {boot_ms:.0} ms (guest kernel uptime {:.0} ms)",
            details.uptime_ns as f64 / 1e6
        );
        println!("shutdown:            {shutdown_ms:.0} ms (VMM exit {status})");
    }
    Ok(())
}
