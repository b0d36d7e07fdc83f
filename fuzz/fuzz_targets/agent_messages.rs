//! Decoding of what the in-guest agent answers, as the shim consumes it: the protobuf payloads of
//! the `myvm_protocol::agent` responses (the guest controls every byte of them), then what the
//! shim does with them that is reachable from outside `shim::service` (exit records and their
//! containerd timestamps, pids, event dispatch). The ttrpc framing around them is the ttrpc
//! crate's; the containerd `Metrics` conversion of stats (`to_metrics`) is private to the service.
//!
//! Input: one byte choosing the message type, then its encoding. For every message that parses:
//! it re-encodes to exactly `compute_size` bytes and decodes back to an equal message, and its
//! `Debug` form (what the shim logs) can be produced.

#![no_main]

use libfuzzer_sys::fuzz_target;
use myvm::shim::state::Exit;
use myvm_protocol::agent::{
    self as ag, CheckResponse, CreateContainerResponse, ExecProcessResponse, GetEventsResponse,
    GuestDetailsResponse, ListProcessesResponse, StartContainerResponse, StatsContainerResponse,
    VersionResponse, WaitProcessResponse,
};
use protobuf::Message;

fn decode<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::parse_from_bytes(bytes).ok()?;
    let out = m.write_to_bytes().expect("a decoded message encodes");
    assert_eq!(u64::try_from(out.len()).unwrap(), m.compute_size());
    let again = M::parse_from_bytes(&out).expect("a re-encoded message decodes");
    assert!(again == m, "re-encoding changed the message");
    std::hint::black_box(format!("{m:?}"));
    Some(m)
}

/// The shim's record of an exit (service.rs: `Exit { status: exit_status as u32, at_ns }`) and
/// the timestamp it gives containerd.
fn exit(exit_status: i32, at_ns: i64) {
    let e = Exit {
        status: exit_status as u32,
        at_ns,
    };
    let t = e.timestamp();
    assert!((0..1_000_000_000).contains(&t.nanos), "nanos {}", t.nanos);
    assert_eq!(
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
        i128::from(at_ns),
        "timestamp of {at_ns} ns"
    );
}

/// The shim's event dispatch (service.rs `on_event`): OOM first, then exits.
fn event(e: &ag::Event) {
    if e.has_oom() {
        std::hint::black_box(e.oom());
    } else if e.has_exited() {
        let x = e.exited();
        exit(x.exit_status, x.exited_at_ns);
    }
    std::hint::black_box((&e.container_id, &e.exec_id));
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 11 {
        0 => {
            if let Some(m) = decode::<CheckResponse>(bytes) {
                let _ = std::hint::black_box(m.status.enum_value());
            }
        }
        1 => {
            decode::<VersionResponse>(bytes);
        }
        2 => {
            if let Some(m) = decode::<GuestDetailsResponse>(bytes) {
                // `myvm boot` reports these as milliseconds.
                std::hint::black_box((m.uptime_ns as f64 / 1e6, m.agent_init_ns as f64 / 1e6));
            }
        }
        3 => {
            if let Some(m) = decode::<CreateContainerResponse>(bytes) {
                std::hint::black_box(m.pid as u32);
            }
        }
        4 => {
            if let Some(m) = decode::<ExecProcessResponse>(bytes) {
                std::hint::black_box(m.pid as u32);
            }
        }
        5 => {
            if let Some(m) = decode::<WaitProcessResponse>(bytes) {
                exit(m.exit_status, m.exited_at_ns);
            }
        }
        6 => {
            if let Some(m) = decode::<ListProcessesResponse>(bytes) {
                std::hint::black_box(m.pids.iter().map(|&p| p as u32).collect::<Vec<_>>());
            }
        }
        7 => {
            if let Some(m) = decode::<StatsContainerResponse>(bytes) {
                let stat = |k: &str| m.memory.stat.get(k).copied().unwrap_or(0);
                std::hint::black_box((
                    m.cpu.usage_usec,
                    m.pids.current,
                    stat("anon"),
                    m.io.iter().map(|i| u64::from(i.major)).sum::<u64>(),
                ));
            }
        }
        8 => {
            if let Some(m) = decode::<GetEventsResponse>(bytes) {
                m.events.iter().for_each(event);
            }
        }
        9 => {
            if let Some(e) = decode::<ag::Event>(bytes) {
                event(&e);
            }
        }
        // The many empty responses (Start, Signal, Remove, ...): unknown fields only.
        _ => {
            decode::<StartContainerResponse>(bytes);
        }
    }
});
