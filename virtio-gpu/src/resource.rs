//! 2D resources (virtio 1.2, 5.7.6.8 "Device Operation: controlq"): the host's copy of
//! the guest's image, and the guest pages backing it. TRANSFER_TO_HOST_2D copies from
//! the backing into the host copy; scanouts and the cursor read it. The host copy is a
//! `Vec` of the resource's own until a scanout shows the resource whole; from then on it
//! is a framebuffer the display made, which the scanout shows as it is.

use std::mem::size_of;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::display::{Framebuffer, FramebufferId, Rect};
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

    /// The runs as (guest address, length), in order: what a snapshot keeps.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.runs.iter().map(|r| (r.addr.0, r.len))
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

/// Where a resource's pixels live on the host.
enum Storage {
    /// A packed copy of its own (`width * 4` bytes per row): resources no scanout shows
    /// whole.
    Host(Vec<u8>),
    /// A framebuffer from the display, which scanouts show directly.
    Display {
        id: FramebufferId,
        framebuffer: Box<dyn Framebuffer>,
    },
}

impl Storage {
    /// Bytes per row (`packed` for a host copy), and the bytes.
    fn rows(&self, packed: usize) -> (usize, &[u8]) {
        match self {
            Storage::Host(data) => (packed, data),
            Storage::Display { framebuffer, .. } => {
                (framebuffer.stride() as usize, framebuffer.pixels())
            }
        }
    }

    fn rows_mut(&mut self, packed: usize) -> (usize, &mut [u8]) {
        match self {
            Storage::Host(data) => (packed, data),
            Storage::Display { framebuffer, .. } => {
                (framebuffer.stride() as usize, framebuffer.pixels_mut())
            }
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Host(data) => write!(f, "Host({} bytes)", data.len()),
            Storage::Display { id, framebuffer } => {
                write!(f, "Display({id:?}, stride {})", framebuffer.stride())
            }
        }
    }
}

/// A 2D resource.
#[derive(Debug)]
pub struct Resource {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    storage: Storage,
    pub backing: Option<Backing>,
    /// When a scanout last showed it (the device's counter; 0: never), so that the
    /// display storage of the longest unseen resource is the one given back.
    pub last_shown: u64,
}

/// Whether `framebuffer` holds a `width`x`height` image of 4-byte pixels.
pub fn framebuffer_fits(framebuffer: &dyn Framebuffer, width: u32, height: u32) -> bool {
    let row = u64::from(width) * u64::from(BYTES_PER_PIXEL);
    let stride = u64::from(framebuffer.stride());
    stride >= row && framebuffer.pixels().len() as u64 >= stride * u64::from(height)
}

/// A packed, zeroed `len`-byte buffer; fails instead of aborting when the host has no
/// memory for it.
fn host_buffer(len: u64) -> Result<Vec<u8>, CommandError> {
    let len = usize::try_from(len).map_err(|_| CommandError::HostAllocation(len))?;
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| CommandError::HostAllocation(len as u64))?;
    data.resize(len, 0);
    Ok(data)
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
        if usize::try_from(len).is_err() {
            return Err(CommandError::InvalidSize { width, height });
        }
        Ok(Resource {
            format,
            width,
            height,
            storage: Storage::Host(host_buffer(len)?),
            backing: None,
            last_shown: 0,
        })
    }

    /// Bytes per row of the guest's image in the backing (and of a host copy).
    pub fn stride(&self) -> u64 {
        u64::from(self.width) * u64::from(BYTES_PER_PIXEL)
    }

    /// Bytes per row of the storage, and the storage.
    fn storage(&self) -> (usize, &[u8]) {
        self.storage.rows(self.stride() as usize)
    }

    /// The display framebuffer holding the pixels, if they are in one.
    pub fn display_storage(&self) -> Option<(FramebufferId, &dyn Framebuffer)> {
        match &self.storage {
            Storage::Host(_) => None,
            Storage::Display { id, framebuffer } => Some((*id, framebuffer.as_ref())),
        }
    }

    /// Moves the pixels into `framebuffer` (checked with [`framebuffer_fits`]), which
    /// becomes the storage; the host copy is freed.
    pub fn move_to_display(&mut self, id: FramebufferId, mut framebuffer: Box<dyn Framebuffer>) {
        let stride = framebuffer.stride() as usize;
        let dst = (stride, framebuffer.pixels_mut());
        copy_rows(self.storage(), dst, self.stride() as usize, self.height);
        self.storage = Storage::Display { id, framebuffer };
    }

    /// Moves the pixels back into a host copy, dropping the display's framebuffer.
    pub fn move_to_host(&mut self) -> Result<(), CommandError> {
        if matches!(self.storage, Storage::Host(_)) {
            return Ok(());
        }
        let mut data = host_buffer(Self::cost(self.width, self.height) - RESOURCE_OVERHEAD)?;
        let row = self.stride() as usize;
        copy_rows(self.storage(), (row, &mut data), row, self.height);
        self.storage = Storage::Host(data);
        Ok(())
    }

    /// Bytes of the pixels packed (`width * 4` per row).
    pub fn packed_len(&self) -> u64 {
        Self::cost(self.width, self.height) - RESOURCE_OVERHEAD
    }

    /// A packed copy of the pixels (`width * 4` bytes per row), wherever they are.
    pub fn packed_pixels(&self) -> Vec<u8> {
        let row = self.stride() as usize;
        // The resource holds this much already: within the memory cap.
        let mut out = vec![0u8; self.packed_len() as usize];
        copy_rows(self.storage(), (row, &mut out), row, self.height);
        out
    }

    /// Replaces the pixels with `packed` (`width * 4` bytes per row, `packed_len`
    /// bytes; rows past a shorter `packed` stay as they were).
    pub fn load_pixels(&mut self, packed: &[u8]) {
        let row = self.stride() as usize;
        let height = self.height;
        copy_rows((row, packed), self.storage.rows_mut(row), row, height);
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
        let height = self.height;
        let dst = self.storage.rows_mut(stride as usize);
        copy_in(backing, mem, r, offset, stride, dst, height)
    }

    /// The `width` pixels of row `y` from column `x` (inside the resource); `None` only
    /// if the display shrank the framebuffer holding them.
    pub fn row(&self, x: u32, y: u32, width: u32) -> Option<&[u8]> {
        let bpp = BYTES_PER_PIXEL as usize;
        let (stride, pixels) = self.storage();
        let start = y as usize * stride + x as usize * bpp;
        pixels.get(start..start + width as usize * bpp)
    }
}

/// Copies the rectangle `r` of an image whose rows are `src_stride` bytes apart in
/// `backing` (from `offset`, all checked to lie in it) into `dst` (rows `dst.0` bytes
/// apart). Full-width rectangles of a packed destination are one run of bytes on both
/// sides: one read, split only where the backing's runs are.
fn copy_in<M: GuestMemory>(
    backing: &Backing,
    mem: &M,
    r: &Rect,
    offset: u64,
    src_stride: u64,
    (dst_stride, dst): (usize, &mut [u8]),
    height: u32,
) -> Result<(), CommandError> {
    let bpp = BYTES_PER_PIXEL as usize;
    // The storage was checked to hold the image when it was made; a display that shrank
    // its framebuffer since loses the update rather than panicking the device. Past
    // this, every index is in bounds: `r` is inside the resource.
    if (dst.len() as u64) < dst_stride as u64 * u64::from(height) {
        return Err(CommandError::Framebuffer(std::io::Error::other(
            "the display's framebuffer shrank",
        )));
    }
    let row_len = r.width as usize * bpp;
    let first = r.y as usize * dst_stride + r.x as usize * bpp;
    if row_len as u64 == src_stride && row_len == dst_stride {
        let len = row_len * r.height as usize;
        return backing.read(mem, offset, &mut dst[first..first + len]);
    }
    for row in 0..r.height as usize {
        let at = first + row * dst_stride;
        backing.read(
            mem,
            offset + row as u64 * src_stride,
            &mut dst[at..at + row_len],
        )?;
    }
    Ok(())
}

/// Copies `height` rows of `row_len` bytes between images whose rows are `.0` bytes
/// apart.
fn copy_rows(src: (usize, &[u8]), dst: (usize, &mut [u8]), row_len: usize, height: u32) {
    let (src_stride, src) = src;
    let (dst_stride, dst) = dst;
    for y in 0..height as usize {
        let from = src.get(y * src_stride..y * src_stride + row_len);
        let to = dst.get_mut(y * dst_stride..y * dst_stride + row_len);
        // Both were checked to hold the image; a display that shrank its framebuffer
        // since loses rows rather than panicking the device.
        if let (Some(from), Some(to)) = (from, to) {
            to.copy_from_slice(from);
        }
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
            res.row(0, 0, 4).unwrap(),
            &[0, 0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 0, 0, 0, 0]
        );
        assert_eq!(res.row(1, 1, 2).unwrap(), &image[20..28]);
    }

    /// A framebuffer with 8 bytes of padding after each row.
    struct Padded(Vec<u8>, u32);

    impl Framebuffer for Padded {
        fn stride(&self) -> u32 {
            self.1
        }
        fn pixels(&self) -> &[u8] {
            &self.0
        }
        fn pixels_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }

    #[test]
    fn pixels_move_into_a_padded_framebuffer_and_back() {
        let mem = mem();
        let image: Vec<u8> = (0..32).collect();
        mem.write_slice(&image, GuestAddress(0x1000)).unwrap();
        let entries = [MemEntry {
            addr: 0x1000,
            length: 32,
        }];
        let mut res = Resource::new(PixelFormat::B8G8R8A8, 4, 2).unwrap();
        res.backing = Some(Backing::new(&entries, &mem).unwrap());
        res.transfer_to_host(1, &Rect::new(0, 0, 4, 1), 0, &mem)
            .unwrap();
        assert!(!framebuffer_fits(&Padded(vec![0; 47], 24), 4, 2));
        res.move_to_display(FramebufferId(7), Box::new(Padded(vec![0xee; 48], 24)));
        let (id, fb) = res.display_storage().unwrap();
        assert_eq!(id, FramebufferId(7));
        assert_eq!(&fb.pixels()[..16], &image[..16]);
        assert_eq!(&fb.pixels()[16..24], &[0xee; 8], "padding untouched");
        assert_eq!(&fb.pixels()[24..40], &[0; 16], "row 1 was black");
        // A full-width transfer into padded rows goes row by row.
        res.transfer_to_host(1, &Rect::new(0, 0, 4, 2), 0, &mem)
            .unwrap();
        assert_eq!(res.row(0, 1, 4).unwrap(), &image[16..]);
        assert_eq!(
            &res.display_storage().unwrap().1.pixels()[16..24],
            &[0xee; 8]
        );
        res.move_to_host().unwrap();
        assert!(res.display_storage().is_none());
        assert_eq!(res.row(0, 0, 4).unwrap(), &image[..16]);
        assert_eq!(res.row(0, 1, 4).unwrap(), &image[16..]);
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
