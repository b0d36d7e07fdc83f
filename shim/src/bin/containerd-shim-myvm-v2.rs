//! `containerd-shim-myvm-v2`: containerd's runtime v2 shim for myvm (see `myvm::shim`).

fn main() {
    containerd_shim::run::<myvm::shim::Service>(
        myvm::shim::RUNTIME_ID,
        Some(myvm::shim::shim_config()),
    )
}
