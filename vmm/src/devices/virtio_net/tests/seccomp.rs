//! The data path under the real seccomp filters: the event loop on a thread with the
//! `virtio-net` filter (as `spawn_io_thread` runs it in the VMM), activation, kicks and reset on
//! a thread with the vCPU filter (where the guest's register writes are handled). A syscall
//! missing from a list kills the process (SIGSYS), so this runs in a child process.

use super::driver::QSIZE;
use super::*;
use crate::seccomp::{apply, Filters};

/// Runs `f` on `d` in a thread under the vCPU filter, and hands `d` back.
fn under_vcpu_filter(filters: &Filters, mut d: Driver, f: fn(&mut Driver)) -> Driver {
    let prog = filters.vcpu.clone();
    std::thread::spawn(move || {
        apply(&prog).unwrap();
        f(&mut d);
        d
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn wait_used(d: &Driver, q: usize, n: u16) {
    let end = Instant::now() + Duration::from_secs(5);
    while d.used_idx(q) < n {
        assert!(Instant::now() < end, "queue {q}: no used entry {n}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn recv_wait(host: &PacketSocket) -> Vec<u8> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(f) = host.recv() {
            return f;
        }
        assert!(Instant::now() < end, "no frame on the tap");
    }
}

#[test]
fn child_data_path_under_seccomp() {
    if std::env::var_os("MYVM_SECCOMP_NET_CHILD").is_none() {
        return; // only meaningful as the child of the test below
    }
    in_netns(|| {
        make_tap("tsec");
        let (d, em, _) = Driver::create(&net_config("tsec", Some(1500)), open_up("tsec"));
        let host = PacketSocket::bind("tsec");
        let filters = Filters::build().unwrap();
        spawn_io_thread(em, Some(filters.net.clone()), |msg| {
            eprintln!("{msg}");
            std::process::abort();
        })
        .unwrap();

        let tx = frame([0xff; 6], GUEST_MAC, 300, 11);
        d.mem
            .write_slice(&[0u8; 12], GuestAddress(0x40_0000))
            .unwrap();
        d.mem.write_slice(&tx, GuestAddress(0x40_000c)).unwrap();
        let d = under_vcpu_filter(&filters, d, |d| {
            d.start();
            d.push_chain(TX_QUEUE, &[(0x40_0000, 12, false), (0x40_000c, 300, false)]);
            d.kick(TX_QUEUE);
            d.push_chain(RX_QUEUE, &[(0x60_0000, 12, true), (0x60_1000, 4096, true)]);
            d.kick(RX_QUEUE);
        });
        assert_eq!(recv_wait(&host), tx);
        wait_used(&d, TX_QUEUE, 1);
        let rx = frame(GUEST_MAC, HOST_MAC, 1000, 12);
        host.send(&rx);
        wait_used(&d, RX_QUEUE, 1);
        assert_eq!(d.used(RX_QUEUE, 0), (0, 1012));
        let mut got = vec![0u8; 1000];
        d.mem.read_slice(&mut got, GuestAddress(0x60_1000)).unwrap();
        assert_eq!(got, rx);
        assert!(d.irq.0.read().is_ok(), "irqfd signalled");

        // Out of RX buffers: the loop takes the tap out of its set (epoll_ctl).
        host.send(&rx);
        std::thread::sleep(Duration::from_millis(100));
        // Reset, then a frame while reset, then a restart that gets it.
        let d = under_vcpu_filter(&filters, d, |d| {
            d.write_reg(reg::STATUS, 0);
            assert!(!d.t.is_activated());
        });
        host.send(&rx);
        std::thread::sleep(Duration::from_millis(100));
        let d = under_vcpu_filter(&filters, d, |d| {
            d.start();
            let h = d.push_chain(RX_QUEUE, &[(0x60_0000, 4096, true)]);
            assert!(h < QSIZE);
            d.kick(RX_QUEUE);
        });
        wait_used(&d, RX_QUEUE, 1);
        assert_eq!(d.used(RX_QUEUE, 0).1, 1012);
        println!("data path ran under the seccomp filters");
    });
}

#[test]
fn data_path_works_under_the_seccomp_filters() {
    let out = crate::seccomp::run_test_in_child(
        "devices::virtio_net::tests::seccomp::child_data_path_under_seccomp",
        ("MYVM_SECCOMP_NET_CHILD", "1".as_ref()),
    );
    let stdout = crate::seccomp::child_passed(&out);
    assert!(
        stdout.contains("data path ran under the seccomp filters"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
