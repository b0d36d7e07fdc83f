//! Guest RAM: one memfd (so vhost-user daemons can map it), mapped MAP_SHARED with vm-memory,
//! split around the 32-bit MMIO gap.

use std::{ffi::CString, fs::File, os::fd::FromRawFd};

use vm_memory::{FileOffset, GuestMemoryMmap};

use crate::boot::layout::ram_ranges;

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create: {0}")]
    Memfd(std::io::Error),
    #[error("sizing the guest memory memfd to {0} bytes: {1}")]
    Truncate(u64, std::io::Error),
    #[error("mapping guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
}

/// Creates `size` bytes of guest RAM backed by a memfd.
pub fn create(size: u64) -> Result<GuestMemory, MemoryError> {
    let name = CString::new("myvm-guest-ram").expect("static name");
    // SAFETY: valid NUL-terminated name; the returned fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, owned file descriptor.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(size, e))?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| {
            let fo = FileOffset::from_arc(file.clone(), offset);
            offset += len;
            (addr, len as usize, Some(fo))
        })
        .collect();
    Ok(GuestMemoryMmap::from_ranges_with_files(ranges)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn memfd_backed_and_shared() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let r = mem.iter().next().unwrap();
        let fo = r.file_offset().expect("file backed");
        assert_eq!(fo.start(), 0);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        // The same bytes are visible through the memfd (what a vhost-user daemon maps).
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        fo.file().read_exact_at(&mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
    }

    #[test]
    fn split_around_the_gap() {
        // Mapping is lazy, so a 4 GiB guest costs nothing here.
        let mem = create(4 << 30).unwrap();
        let regions: Vec<_> = mem
            .iter()
            .map(|r| (r.start_addr().0, r.len(), r.file_offset().unwrap().start()))
            .collect();
        assert_eq!(
            regions,
            vec![
                (0, MMIO_GAP_START, 0),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START, MMIO_GAP_START)
            ]
        );
    }
}
