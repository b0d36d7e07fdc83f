use super::*;
use std::sync::Mutex;

/// Records what the transport hands to the device.
#[derive(Default)]
struct Seen {
    activated: Option<(u64, Vec<ActiveQueue>)>,
    resets: u32,
}

struct TestDevice {
    seen: Arc<Mutex<Seen>>,
    fail: bool,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 256]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 29 | 0b101
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        acked: u64,
        queues: &[ActiveQueue],
        kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError> {
        assert_eq!(kicks.len(), 2);
        if self.fail {
            return Err(ActivateError("backend refused".into()));
        }
        self.seen.lock().unwrap().activated = Some((acked, queues.to_vec()));
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
    }
    fn vring_irq_always(&self) -> bool {
        true
    }
}

fn setup(fail: bool) -> (MmioTransport, Arc<Mutex<Seen>>, IrqLine) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = crate::memory::create(64 << 20).unwrap();
    let irq = IrqLine::new().unwrap();
    let t = MmioTransport::new(
        Box::new(TestDevice {
            seen: seen.clone(),
            fail,
        }),
        mem,
        irq.clone(),
    )
    .unwrap();
    (t, seen, irq)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, low: u32, high: u32) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, low);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, high);
    w(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, i: u32, base: u64) {
    w(t, reg::QUEUE_SEL, i);
    assert_eq!(r(t, reg::QUEUE_NUM_MAX), 256);
    w(t, reg::QUEUE_NUM, 128);
    w(t, reg::QUEUE_DESC_LOW, base as u32);
    w(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
    w(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w(t, reg::QUEUE_DRIVER_HIGH, 0);
    w(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w(t, reg::QUEUE_DEVICE_HIGH, 0);
    w(t, reg::QUEUE_READY, 1);
    assert_eq!(r(t, reg::QUEUE_READY), 1);
}

#[test]
fn identification_registers() {
    let (mut t, _, _) = setup(false);
    assert_eq!(r(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), 19);
    assert_eq!(r(&mut t, reg::VENDOR_ID), VENDOR_ID);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), (1 << 29) | 0b101);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    // Config space is byte addressable.
    let mut b = [0u8; 2];
    t.read(reg::CONFIG + 4, &mut b);
    assert_eq!(b, [4, 5]);
    // Unaligned / odd-size register accesses read as zero.
    let mut b = [0xffu8; 2];
    t.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn full_driver_sequence_activates_with_queue_addresses() {
    let (mut t, seen, irq) = setup(false);
    negotiate(&mut t, 0b100, 1);
    assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    setup_queue(&mut t, 0, 0x10_0000);
    setup_queue(&mut t, 1, 0x20_0000);
    w(&mut t, reg::STATUS, 0xf);
    assert!(t.is_activated());
    let (acked, qs) = seen.lock().unwrap().activated.clone().unwrap();
    assert_eq!(acked, VIRTIO_F_VERSION_1 | 0b100);
    assert_eq!(
        qs,
        vec![
            ActiveQueue {
                index: 0,
                size: 128,
                desc: 0x10_0000,
                avail: 0x10_1000,
                used: 0x10_2000
            },
            ActiveQueue {
                index: 1,
                size: 128,
                desc: 0x20_0000,
                avail: 0x20_1000,
                used: 0x20_2000
            },
        ]
    );
    // vhost-user devices always report a used-ring interrupt once running.
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
    // QueueNotify without an ioeventfd kicks through the eventfd.
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(t.kicks()[1].read().unwrap(), 1);
    assert!(
        irq.0.read().is_err(),
        "no interrupt raised for a good activation"
    );
    // Queue registers are read-only after DRIVER_OK.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    // Reset.
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert!(!t.is_activated());
    assert_eq!(seen.lock().unwrap().resets, 1);
}

#[test]
fn features_without_version_1_or_not_offered_are_refused() {
    let (mut t, _, _) = setup(false);
    negotiate(&mut t, 0b100, 0); // no VERSION_1
    assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    w(&mut t, reg::STATUS, 0);
    negotiate(&mut t, 0b010, 1); // bit 1 not offered
    assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn features_and_queues_only_in_the_right_state() {
    let (mut t, _, _) = setup(false);
    // Before DRIVER: feature writes ignored.
    w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut t, reg::DRIVER_FEATURES, 1);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        r(&mut t, reg::STATUS) & status::FEATURES_OK,
        0,
        "VERSION_1 never acked"
    );
    w(&mut t, reg::STATUS, 0);
    // Queue registers before FEATURES_OK are ignored.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    // Status may not drop bits.
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    // Out-of-range queue selector.
    negotiate(&mut t, 0, 1);
    w(&mut t, reg::QUEUE_SEL, 7);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
}

#[test]
fn invalid_queue_or_failed_activation_needs_reset() {
    let (mut t, seen, irq) = setup(false);
    negotiate(&mut t, 0, 1);
    // A ring outside guest memory.
    setup_queue(&mut t, 0, 0x1_0000_0000);
    w(&mut t, reg::STATUS, 0xf);
    assert!(!t.is_activated());
    assert!(seen.lock().unwrap().activated.is_none());
    assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(irq.0.read().unwrap(), 1);
    w(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);

    let (mut t, _, _) = setup(true);
    negotiate(&mut t, 0, 1);
    setup_queue(&mut t, 0, 0x10_0000);
    w(&mut t, reg::STATUS, 0xf);
    assert!(!t.is_activated());
    assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

/// Found by the `virtio_mmio` fuzz target: writing FAILED used to be allowed to drop the other
/// bits, leaving the device running while the driver could rewrite queues and features and
/// then set DRIVER_OK again, activating the device a second time without a reset.
#[test]
fn failed_neither_drops_bits_nor_reactivates() {
    let (mut t, seen, _) = setup(false);
    negotiate(&mut t, 0, 1);
    setup_queue(&mut t, 0, 0x10_0000);
    w(&mut t, reg::STATUS, 0xf);
    assert!(t.is_activated());
    w(&mut t, reg::STATUS, status::FAILED);
    assert_eq!(
        r(&mut t, reg::STATUS),
        0xf,
        "FAILED alone drops bits: ignored"
    );
    // Queue registers stay read-only while the device runs.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_DESC_LOW, 0x30_0000);
    w(&mut t, reg::STATUS, 0xf | status::FAILED);
    assert_eq!(r(&mut t, reg::STATUS), 0xf | status::FAILED);
    assert!(t.is_activated());
    assert_eq!(
        seen.lock().unwrap().activated.as_ref().unwrap().1[0].desc,
        0x10_0000
    );
    assert_eq!(seen.lock().unwrap().resets, 0);
    // A driver that gave up (FAILED) before DRIVER_OK does not start the device.
    w(&mut t, reg::STATUS, 0);
    assert_eq!(seen.lock().unwrap().resets, 1);
    seen.lock().unwrap().activated = None;
    negotiate(&mut t, 0, 1);
    setup_queue(&mut t, 0, 0x10_0000);
    w(&mut t, reg::STATUS, 0xb | status::FAILED);
    w(&mut t, reg::STATUS, 0xf | status::FAILED);
    assert!(!t.is_activated());
    assert!(seen.lock().unwrap().activated.is_none());
}
