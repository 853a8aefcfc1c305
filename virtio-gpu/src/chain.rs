//! A descriptor chain split into its device-readable request and device-writable
//! response buffers (virtio 1.2, 2.7.4 "Message Framing": no assumption on how the
//! driver cut either into descriptors). Addresses are checked when read or written, so a
//! descriptor outside guest memory only fails the access that touches it.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// A run of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    addr: GuestAddress,
    len: u64,
}

/// Consumes guest buffers front to back.
#[derive(Clone, Debug, Default)]
struct Cursor {
    runs: Vec<Run>,
    /// Index of the current run, and bytes already consumed in it.
    index: usize,
    done_in_run: u64,
    /// Bytes left over all runs (saturating: a chain can claim more than 2^64).
    remaining: u64,
}

impl Cursor {
    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.runs.push(Run {
                addr,
                len: u64::from(len),
            });
            self.remaining = self.remaining.saturating_add(u64::from(len));
        }
    }

    /// Runs `f(addr, len)` over the next `n` bytes (`n <= remaining`), piece by piece.
    fn advance<E>(
        &mut self,
        n: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = 0usize;
        while done < n {
            let run = self.runs[self.index];
            let left_in_run = run.len - self.done_in_run;
            let take = (n - done).min(usize::try_from(left_in_run).unwrap_or(usize::MAX));
            let addr = GuestAddress(run.addr.0.wrapping_add(self.done_in_run));
            f(addr, done, take)?;
            done += take;
            self.done_in_run += take as u64;
            self.remaining -= take as u64;
            if self.done_in_run == run.len {
                self.index += 1;
                self.done_in_run = 0;
            }
        }
        Ok(())
    }
}

/// The two halves of one chain.
#[derive(Debug, Default)]
pub struct Chain {
    readable: Cursor,
    writable: Cursor,
    written: u64,
}

impl Chain {
    pub fn new(descriptors: impl IntoIterator<Item = Descriptor>) -> Self {
        let mut chain = Chain::default();
        for desc in descriptors {
            if desc.is_write_only() {
                chain.writable.push(desc.addr(), desc.len());
            } else {
                chain.readable.push(desc.addr(), desc.len());
            }
        }
        chain
    }

    /// Device-readable bytes not read yet.
    #[cfg(test)]
    pub fn readable_left(&self) -> u64 {
        self.readable.remaining
    }

    /// Device-writable bytes not written yet.
    pub fn writable_left(&self) -> u64 {
        self.writable.remaining
    }

    /// Bytes written so far: the used length for the used ring.
    pub fn written(&self) -> u32 {
        u32::try_from(self.written).unwrap_or(u32::MAX)
    }

    /// Reads the next `out.len()` request bytes, or as many as there are; returns how
    /// many.
    pub fn read<M: GuestMemory>(
        &mut self,
        mem: &M,
        out: &mut [u8],
    ) -> Result<usize, vm_memory::GuestMemoryError> {
        let n = usize::try_from(self.readable.remaining)
            .unwrap_or(usize::MAX)
            .min(out.len());
        self.readable.advance(n, |addr, at, len| {
            mem.read_slice(&mut out[at..at + len], addr)
        })?;
        Ok(n)
    }

    /// Writes `data` into the response buffers; the caller checked it fits.
    pub fn write<M: GuestMemory>(
        &mut self,
        mem: &M,
        data: &[u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let n = usize::try_from(self.writable.remaining)
            .unwrap_or(usize::MAX)
            .min(data.len());
        self.writable.advance(n, |addr, at, len| {
            mem.write_slice(&data[at..at + len], addr)?;
            self.written += len as u64;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    fn desc(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn reads_and_writes_across_descriptors() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[1, 2, 3], GuestAddress(0x100)).unwrap();
        mem.write_slice(&[4, 5, 6, 7], GuestAddress(0x200)).unwrap();
        let mut chain = Chain::new([
            desc(0x100, 3, false),
            desc(0x200, 4, false),
            desc(0x300, 2, true),
            desc(0x400, 8, true),
        ]);
        assert_eq!(chain.readable_left(), 7);
        let mut buf = [0u8; 5];
        assert_eq!(chain.read(&mem, &mut buf).unwrap(), 5);
        assert_eq!(buf, [1, 2, 3, 4, 5]);
        assert_eq!(chain.read(&mem, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], &[6, 7]);
        chain.write(&mem, &[9, 8, 7]).unwrap();
        assert_eq!(chain.written(), 3);
        assert_eq!(chain.writable_left(), 7);
        let mut got = [0u8; 2];
        mem.read_slice(&mut got, GuestAddress(0x300)).unwrap();
        assert_eq!(got, [9, 8]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x400)).unwrap(), 7);
    }

    #[test]
    fn a_descriptor_outside_memory_fails_its_access_only() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mut chain = Chain::new([desc(u64::MAX - 1, 16, false), desc(0x100, 8, true)]);
        let mut buf = [0u8; 16];
        assert!(chain.read(&mem, &mut buf).is_err());
        chain.write(&mem, &[1; 8]).unwrap();
        assert_eq!(chain.written(), 8);
    }
}
