//! `containerd-shim-myvm-v2`: containerd's runtime v2 shim for myvm (see `myvm::shim`).

fn main() {
    // containerd 2.x asks `-info` with no namespace: answered before the library parses flags.
    if myvm::runtime_info::requested(&std::env::args().collect::<Vec<_>>()) {
        std::process::exit(myvm::runtime_info::run());
    }
    containerd_shim::run::<myvm::shim::Service>(
        myvm::shim::RUNTIME_ID,
        Some(myvm::shim::shim_config()),
    )
}
