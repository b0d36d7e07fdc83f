//! myvm-vmm: myvm's own KVM microVM monitor built from rust-vmm crates.
//!
//! Layout: [`config`] (CLI/JSON + validation), [`memory`] (memfd guest RAM), [`boot`] (kernel
//! loading, PVH start info, CPUID, MP table), [`vstate`] (KVM VM and vCPUs), [`devices`]
//! (serial, i8042, virtio-mmio, vhost-user, virtio-net, virtio-balloon), [`control`] (the shim's
//! control channel), [`seccomp`] and [`vmm`] (wiring + run loop).

pub mod boot;
pub mod config;
pub mod control;
pub mod devices;
pub mod memory;
pub mod seccomp;
pub mod vmm;
pub mod vstate;

/// When the process started (set first thing in `main`); used to report time to first KVM_RUN.
pub static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
