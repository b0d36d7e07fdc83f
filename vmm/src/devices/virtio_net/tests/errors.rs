//! A hostile or broken driver: every bad chain is dropped (used length 0) and counted, the device
//! keeps working, nothing panics.

use super::driver::{qbase, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use super::*;
use crate::devices::virtio_net::event_handler::RateLimitedLog;

/// Guest RAM is 64 MiB: this is outside it (in the MMIO gap).
const OUTSIDE: u64 = 0xf000_0000;

#[test]
fn bad_tx_chains_are_dropped_and_the_device_keeps_working() {
    in_netns(|| {
        make_tap("tbadtx");
        let mut d = Driver::new(&net_config("tbadtx", None), open_up("tbadtx"));
        let host = PacketSocket::bind("tbadtx");
        let good = frame([0xff; 6], GUEST_MAC, 100, 9);
        d.mem
            .write_slice(&[0u8; 12], GuestAddress(0x40_0000))
            .unwrap();
        d.mem.write_slice(&good, GuestAddress(0x40_000c)).unwrap();

        let bad_chains: [&[(u64, u32, bool)]; 4] = [
            // A device-writable descriptor in a TX chain.
            &[(0x40_0000, 12, false), (0x40_000c, 100, true)],
            // A buffer outside guest memory.
            &[(0x40_0000, 12, false), (OUTSIDE, 100, false)],
            // Shorter than the virtio-net header.
            &[(0x40_0000, 8, false)],
            // Longer than any frame.
            &[(0x80_0000, 0x10000, false), (0x90_0000, 0x10000, false)],
        ];
        let mut heads: Vec<u16> = bad_chains
            .iter()
            .map(|c| d.push_chain(TX_QUEUE, c))
            .collect();
        // A descriptor that links to itself (the chain ends after queue-size descriptors):
        // 256 x 4 KiB is too long.
        let lp = 200;
        d.write_desc(
            qbase(TX_QUEUE),
            lp,
            0x80_0000,
            0x1000,
            VRING_DESC_F_NEXT,
            lp,
        );
        d.publish(TX_QUEUE, lp);
        heads.push(lp);
        // An indirect table whose length is not a multiple of 16: empty chain.
        let ind = 201;
        d.write_desc(
            qbase(TX_QUEUE),
            ind,
            0x50_0000,
            20,
            VRING_DESC_F_INDIRECT,
            0,
        );
        d.publish(TX_QUEUE, ind);
        heads.push(ind);
        // An indirect descriptor inside an indirect table (forbidden).
        let nested = 202;
        d.write_desc(0x51_0000, 0, 0x52_0000, 16, VRING_DESC_F_INDIRECT, 0);
        d.write_desc(
            qbase(TX_QUEUE),
            nested,
            0x51_0000,
            16,
            VRING_DESC_F_INDIRECT,
            0,
        );
        d.publish(TX_QUEUE, nested);
        heads.push(nested);
        // A head index past the queue size: consumed, but it cannot be returned.
        d.publish(TX_QUEUE, 300);
        d.kick(TX_QUEUE);
        d.pump_until(TX_QUEUE, heads.len() as u16);
        for (n, h) in heads.iter().enumerate() {
            assert_eq!(d.used(TX_QUEUE, n as u16), (u32::from(*h), 0));
        }
        assert!(host.recv().is_none(), "nothing reached the tap");
        assert_eq!(NetStats::get(&d.stats().tx_dropped), heads.len() as u64 + 1);
        assert_eq!(NetStats::get(&d.stats().tx_frames), 0);

        // An avail index more than a queue ahead of the device: ignored, nothing consumed.
        let idx = d.used_idx(TX_QUEUE);
        let real = heads.len() as u16 + 1;
        d.set_avail_idx(TX_QUEUE, real + 1000);
        d.kick(TX_QUEUE);
        d.run(50);
        assert_eq!(d.used_idx(TX_QUEUE), idx);
        d.set_avail_idx(TX_QUEUE, real);

        // Still working: a good frame goes out.
        let h = d.push_chain(TX_QUEUE, &[(0x40_0000, 112, false)]);
        d.kick(TX_QUEUE);
        let got = host
            .recv_pumping(&mut d, Duration::from_secs(5))
            .expect("good frame");
        assert_eq!(got, good);
        assert_eq!(d.used(TX_QUEUE, idx), (u32::from(h), 0));
        assert_eq!(NetStats::get(&d.stats().tx_frames), 1);
    });
}

#[test]
fn bad_rx_chains_lose_their_frame_and_the_next_chain_gets_the_next_one() {
    in_netns(|| {
        make_tap("tbadrx");
        let mut d = Driver::new(&net_config("tbadrx", None), open_up("tbadrx"));
        let host = PacketSocket::bind("tbadrx");
        let cases: [&[(u64, u32, bool)]; 4] = [
            // Device-readable descriptor in an RX chain.
            &[(0x60_0000, 12, false), (0x60_1000, 4096, true)],
            // Too small for the frame.
            &[(0x60_0000, 20, true)],
            // Outside guest memory.
            &[(OUTSIDE, 4096, true)],
            // Crossing the end of guest memory.
            &[((64 << 20) - 16, 4096, true)],
        ];
        for (n, bufs) in cases.iter().enumerate() {
            let h = d.push_chain(RX_QUEUE, bufs);
            d.kick(RX_QUEUE);
            host.send(&frame(GUEST_MAC, HOST_MAC, 100, n as u8));
            d.pump_until(RX_QUEUE, n as u16 + 1);
            assert_eq!(d.used(RX_QUEUE, n as u16), (u32::from(h), 0), "case {n}");
        }
        assert_eq!(NetStats::get(&d.stats().rx_dropped), cases.len() as u64);
        let f = frame(GUEST_MAC, HOST_MAC, 100, 42);
        let h = d.push_chain(RX_QUEUE, &[(0x62_0000, 4096, true)]);
        d.kick(RX_QUEUE);
        host.send(&f);
        d.pump_until(RX_QUEUE, cases.len() as u16 + 1);
        assert_eq!(d.used(RX_QUEUE, cases.len() as u16), (u32::from(h), 112));
        let mut got = vec![0u8; 100];
        d.mem.read_slice(&mut got, GuestAddress(0x62_000c)).unwrap();
        assert_eq!(got, f);
        assert_eq!(NetStats::get(&d.stats().rx_frames), 1);
    });
}

#[test]
fn rate_limited_log_counts_what_it_suppresses() {
    let mut l = RateLimitedLog::new(Duration::from_millis(100));
    assert_eq!(l.check(), Some(0));
    for _ in 0..5 {
        assert_eq!(l.check(), None);
    }
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(l.check(), Some(5));
    assert_eq!(l.check(), None);
}
