//! Minimal i8042 keyboard controller (ports 0x60/0x64): the guest's reset command (0xfe on
//! port 0x64, e.g. `reboot=k`) ends the VM.
//!
//! Reads answer like a controller that is not there: data 0xff, status 0xfd (output buffer
//! "full", input buffer empty). A guest kernel with the i8042 driver finds the output buffer
//! never drains and gives up at once ("No controller found"), where answering 0 (vm-superio's
//! status) made it wait its full command timeout (about 0.5 s of every boot, more nested) for a
//! control byte that never came; a guest resetting through the controller (`reboot=k`) sees the
//! input buffer empty and writes its reset command at once. Ports 0x61-0x63 (in the window, not
//! the controller's) read 0.

use vm_superio::I8042Device;

use super::BusDevice;

/// Called when the guest asks the controller to pulse the reset line.
#[derive(Clone)]
pub struct ResetTrigger(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        (self.0)();
        Ok(())
    }
}

/// Mapped at 0x60 with a window of 5 ports (0x60 data, 0x64 command/status).
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(on_reset: ResetTrigger) -> Self {
        I8042 {
            inner: I8042Device::new(on_reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(match offset {
            0 => 0xff,
            4 => 0xfd,
            _ => 0,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            let _ = self.inner.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    #[test]
    fn reset_command_fires_once() {
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let mut k = I8042::new(ResetTrigger(Arc::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        })));
        k.write(4, &[0x20]); // read command byte: not a reset
        assert_eq!(n.load(Ordering::SeqCst), 0);
        k.write(4, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reads_answer_like_an_absent_controller() {
        let mut k = I8042::new(ResetTrigger(Arc::new(|| {})));
        for (port, want) in [(0, 0xff), (1, 0), (2, 0), (3, 0), (4, 0xfd)] {
            let mut b = [0u8];
            k.read(port, &mut b);
            assert_eq!(b, [want], "port 0x6{port}");
        }
        // Linux's reset path waits for the input buffer (status bit 1) to be empty.
        let mut s = [0u8];
        k.read(4, &mut s);
        assert_eq!(s[0] & 0x02, 0);
        // Also after a command that would have queued a reply on a real controller.
        k.write(4, &[0x20]);
        let mut b = [0u8];
        k.read(0, &mut b);
        assert_eq!(b, [0xff]);
    }
}
