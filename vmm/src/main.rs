//! `myvm-vmm`: see `docs/vmm.md` and `myvm-vmm --help`.

use clap::Parser;
use myvm_vmm::{config::cli::Cli, vmm};

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    myvm_vmm::PROCESS_START.get_or_init(std::time::Instant::now);
    // Never outlive the process that started us (the shim).
    // SAFETY: plain prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if nix::unistd::getppid().as_raw() == 1 {
        eprintln!("myvm-vmm: parent already exited");
        return vmm::exit_code::VM_ERROR;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MYVM_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let cli = Cli::parse();
    let print = cli.print_config;
    let cfg = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("myvm-vmm: invalid configuration: {e}");
            return vmm::exit_code::CONFIG_ERROR;
        }
    };
    if print {
        println!("{}", serde_json::to_string_pretty(&cfg).unwrap_or_default());
        return 0;
    }
    match vmm::run(&cfg) {
        Ok(outcome) => {
            tracing::info!(?outcome, "VM stopped");
            outcome.exit_code()
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("myvm-vmm: {e:#}");
            vmm::exit_code::VM_ERROR
        }
    }
}
