//! containerd-shim-myvm-v2: runs containerd tasks in myvm microVMs (runtime `io.containerd.myvm.v2`).

fn main() {
    containerd_shim::run::<myvm::shim::Service>(myvm::shim::RUNTIME_ID, None)
}
