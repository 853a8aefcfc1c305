//! 2D resources (virtio 1.2, 5.7.6.8 "Device Operation: controlq"): a host-side copy of
//! the guest's image, and the guest pages backing it. TRANSFER_TO_HOST_2D copies from
//! the backing into the host copy; scanouts and the cursor read the host copy.

use std::mem::size_of;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::display::Rect;
use crate::format::{PixelFormat, BYTES_PER_PIXEL};
use crate::protocol::{CommandError, MemEntry};

/// What a resource costs besides its pixels, charged against the memory cap so that a
/// guest cannot exhaust the host with millions of 1x1 resources.
pub const RESOURCE_OVERHEAD: u64 = 256;

/// One run of guest memory backing a resource, at `start` bytes into the backing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackingRun {
    addr: GuestAddress,
    len: u32,
    start: u64,
}

/// The scatter list of guest memory a resource's pixels come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backing {
    runs: Vec<BackingRun>,
    len: u64,
}

impl Backing {
    /// Host bytes a backing of `entries` entries costs.
    pub fn cost(entries: u32) -> u64 {
        u64::from(entries) * size_of::<BackingRun>() as u64
    }

    /// Checks every entry lies in guest memory (empty entries are skipped).
    pub fn new<M: GuestMemory>(entries: &[MemEntry], mem: &M) -> Result<Self, CommandError> {
        let mut backing = Backing::default();
        for e in entries.iter().filter(|e| e.length > 0) {
            let outside = CommandError::BackingOutsideMemory {
                addr: e.addr,
                len: e.length,
            };
            if !mem.check_range(GuestAddress(e.addr), e.length as usize, Permissions::Read) {
                return Err(outside);
            }
            backing.runs.push(BackingRun {
                addr: GuestAddress(e.addr),
                len: e.length,
                start: backing.len,
            });
            // Cannot overflow: at most 2^32 entries of less than 2^32 bytes.
            backing.len += u64::from(e.length);
        }
        Ok(backing)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Number of (non-empty) runs.
    pub fn entries(&self) -> u32 {
        self.runs.len() as u32
    }

    /// Reads `out.len()` bytes at `offset` into the backing (the caller checked that
    /// `offset + out.len() <= len`).
    fn read<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), CommandError> {
        // The run holding `offset`: the last one starting at or before it.
        let mut i = self
            .runs
            .partition_point(|r| r.start <= offset)
            .saturating_sub(1);
        let mut pos = offset;
        let mut done = 0usize;
        while done < out.len() {
            let run = self
                .runs
                .get(i)
                .ok_or(CommandError::TransferOutsideBacking { backing: self.len })?;
            let in_run = pos - run.start;
            let n = (u64::from(run.len) - in_run).min((out.len() - done) as u64) as usize;
            mem.read_slice(&mut out[done..done + n], GuestAddress(run.addr.0 + in_run))
                .map_err(CommandError::BackingMemory)?;
            done += n;
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }
}

/// A 2D resource.
#[derive(Debug)]
pub struct Resource {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// The host copy: `width * 4` bytes per row, no padding.
    data: Vec<u8>,
    pub backing: Option<Backing>,
}

impl Resource {
    /// Host bytes a `width`x`height` resource costs; saturates (2^32 x 2^32 pixels of 4
    /// bytes do not fit in 64 bits), which no memory cap admits.
    pub fn cost(width: u32, height: u32) -> u64 {
        (u64::from(width) * u64::from(height))
            .saturating_mul(u64::from(BYTES_PER_PIXEL))
            .saturating_add(RESOURCE_OVERHEAD)
    }

    /// A black resource; fails instead of aborting when the host has no memory for it.
    pub fn new(format: PixelFormat, width: u32, height: u32) -> Result<Self, CommandError> {
        let len = Self::cost(width, height) - RESOURCE_OVERHEAD;
        let len = usize::try_from(len).map_err(|_| CommandError::InvalidSize { width, height })?;
        let mut data = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|_| CommandError::HostAllocation(len as u64))?;
        data.resize(len, 0);
        Ok(Resource {
            format,
            width,
            height,
            data,
            backing: None,
        })
    }

    /// Bytes per row of the host copy (and of the guest's image in the backing).
    pub fn stride(&self) -> u64 {
        u64::from(self.width) * u64::from(BYTES_PER_PIXEL)
    }

    /// Checks `r` lies in the resource.
    pub fn check_rect(&self, r: &Rect) -> Result<(), CommandError> {
        if r.is_inside(self.width, self.height) {
            Ok(())
        } else {
            Err(CommandError::RectOutOfBounds {
                rect: *r,
                width: self.width,
                height: self.height,
            })
        }
    }

    /// TRANSFER_TO_HOST_2D: row `i` of `r` comes from `offset + i * stride` in the
    /// backing (the layout Linux and QEMU use: the backing holds the whole image, and
    /// `offset` is where `r`'s first pixel is).
    pub fn transfer_to_host<M: GuestMemory>(
        &mut self,
        id: u32,
        r: &Rect,
        offset: u64,
        mem: &M,
    ) -> Result<(), CommandError> {
        self.check_rect(r)?;
        let backing = self.backing.as_ref().ok_or(CommandError::NoBacking(id))?;
        if r.is_empty() {
            return Ok(());
        }
        let stride = self.stride();
        let row_len = u64::from(r.width) * u64::from(BYTES_PER_PIXEL);
        let outside = CommandError::TransferOutsideBacking {
            backing: backing.len(),
        };
        let end = stride
            .checked_mul(u64::from(r.height - 1))
            .and_then(|n| n.checked_add(offset))
            .and_then(|n| n.checked_add(row_len));
        match end {
            Some(end) if end <= backing.len() => {}
            _ => return Err(outside),
        }
        // In bounds: the rectangle is inside the resource, whose size fits in usize.
        let row_len = row_len as usize;
        for row in 0..u64::from(r.height) {
            let src = offset + row * stride;
            let dst = ((u64::from(r.y) + row) * stride
                + u64::from(r.x) * u64::from(BYTES_PER_PIXEL)) as usize;
            backing.read(mem, src, &mut self.data[dst..dst + row_len])?;
        }
        Ok(())
    }

    /// The `width` pixels of row `y` from column `x` (inside the resource).
    pub fn row(&self, x: u32, y: u32, width: u32) -> &[u8] {
        let bpp = BYTES_PER_PIXEL as usize;
        let start = y as usize * self.stride() as usize + x as usize * bpp;
        &self.data[start..start + width as usize * bpp]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn transfer_reads_across_discontiguous_entries() {
        let mem = mem();
        // A 4x2 image (32 bytes) split 12 + 20 over two far-apart runs.
        let image: Vec<u8> = (0..32).collect();
        mem.write_slice(&image[..12], GuestAddress(0x3000)).unwrap();
        mem.write_slice(&image[12..], GuestAddress(0x1000)).unwrap();
        let entries = [
            MemEntry {
                addr: 0x3000,
                length: 12,
            },
            MemEntry {
                addr: 0x1000,
                length: 20,
            },
        ];
        let mut res = Resource::new(PixelFormat::B8G8R8A8, 4, 2).unwrap();
        res.backing = Some(Backing::new(&entries, &mem).unwrap());
        // The 2x2 rectangle at (1, 0): rows start at offsets 4 and 20.
        res.transfer_to_host(1, &Rect::new(1, 0, 2, 2), 4, &mem)
            .unwrap();
        assert_eq!(
            res.row(0, 0, 4),
            &[0, 0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 0, 0, 0, 0]
        );
        assert_eq!(res.row(1, 1, 2), &image[20..28]);
    }

    #[test]
    fn transfer_bounds() {
        let mem = mem();
        let mut res = Resource::new(PixelFormat::B8G8R8X8, 4, 4).unwrap();
        let r = Rect::new(0, 0, 4, 4);
        assert!(matches!(
            res.transfer_to_host(3, &r, 0, &mem),
            Err(CommandError::NoBacking(3))
        ));
        let entries = [MemEntry {
            addr: 0x1000,
            length: 64,
        }];
        res.backing = Some(Backing::new(&entries, &mem).unwrap());
        res.transfer_to_host(3, &r, 0, &mem).unwrap();
        for (offset, rect) in [
            (4, r),
            (u64::MAX - 8, Rect::new(0, 0, 1, 1)),
            (0, Rect::new(0, 0, 5, 1)),
            (0, Rect::new(u32::MAX, 0, 2, 1)),
        ] {
            let err = res.transfer_to_host(3, &rect, offset, &mem).unwrap_err();
            assert!(
                matches!(
                    err,
                    CommandError::TransferOutsideBacking { .. }
                        | CommandError::RectOutOfBounds { .. }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn the_largest_resource_costs_more_than_any_cap() {
        assert_eq!(Resource::cost(u32::MAX, u32::MAX), u64::MAX);
        assert_eq!(Resource::cost(1, 1), 4 + RESOURCE_OVERHEAD);
    }

    #[test]
    fn backing_outside_guest_memory_is_refused() {
        let entries = [MemEntry {
            addr: 0xfff0,
            length: 0x100,
        }];
        assert!(matches!(
            Backing::new(&entries, &mem()),
            Err(CommandError::BackingOutsideMemory { addr: 0xfff0, .. })
        ));
    }
}
