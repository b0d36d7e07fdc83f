//! 8250/16550 UART on COM1 (0x3f8, IRQ 4) from vm-superio, writing the guest console to a file.

use std::{fs::File, io::Write};

use vm_superio::{serial::NoEvents, Serial};

use super::{BusDevice, IrqLine};

/// COM1 with its output going to `W` (the serial log file).
pub struct SerialDevice<W: Write + Send = File> {
    inner: Serial<IrqLine, NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(irq: IrqLine, out: W) -> Self {
        SerialDevice {
            inner: Serial::new(irq, out),
        }
    }

    pub fn writer(&self) -> &W {
        self.inner.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                tracing::warn!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn transmits_bytes_and_raises_thre_interrupt() {
        let irq = IrqLine::new().unwrap();
        let mut s = SerialDevice::new(irq.clone(), Vec::<u8>::new());
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_ne!(
            lsr[0] & 0x20,
            0,
            "THR empty: the guest's polled console can write"
        );
        s.write(IER, &[0x02]); // enable THR-empty interrupt
        for b in b"Linux version 6.1" {
            s.write(THR, &[*b]);
        }
        assert_eq!(s.writer().as_slice(), b"Linux version 6.1");
        assert!(
            irq.0.read().unwrap() >= 1,
            "interrupt raised through the irqfd"
        );
    }
}
