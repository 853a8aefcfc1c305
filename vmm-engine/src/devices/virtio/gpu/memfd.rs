//! A framebuffer in a memfd (the storage of a resource a scanout shows whole, or a
//! scanout's own copy of part of one), so that a client of the control socket maps the
//! very pages the device writes the guest's pixels into: they never travel through the
//! socket.
//!
//! The memfd is sealed against shrinking and growing (a client that truncated it would
//! make the device's next write fault) and against new writable mappings
//! (`F_SEAL_FUTURE_WRITE`): clients map it read-only, the device alone writes.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use virtio_gpu::{Framebuffer, ScanoutMode};

/// A `stride * height` byte framebuffer in a shared mapping of a memfd.
pub struct MemfdFramebuffer {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
    stride: u32,
}

// SAFETY: the mapping is owned by this value alone in this process (the device writes
// it through `&mut self`); moving it to another thread moves that ownership.
unsafe impl Send for MemfdFramebuffer {}

impl MemfdFramebuffer {
    /// A zeroed, tightly packed framebuffer for `mode`.
    pub fn new(mode: ScanoutMode) -> io::Result<Self> {
        let stride = mode
            .width
            .checked_mul(4)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let len = usize::try_from(u64::from(stride) * u64::from(mode.height))
            .map_err(|_| io::ErrorKind::OutOfMemory)?;
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: the name is a NUL-terminated string; memfd_create returns a new fd or -1.
        let raw = unsafe {
            libc::memfd_create(
                c"vireo-framebuffer".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = File::from(fd);
        file.set_len(len as u64)?;
        let fd = OwnedFd::from(file);
        // SAFETY: maps `len` bytes of a memfd we just sized to `len`; the kernel picks the
        // address; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let framebuffer = MemfdFramebuffer {
            fd: Arc::new(fd),
            ptr: NonNull::new(ptr.cast()).ok_or(io::ErrorKind::OutOfMemory)?,
            len,
            stride,
        };
        // Sealed after our own writable mapping exists: clients can no longer resize it
        // or map it writable. F_SEAL_FUTURE_WRITE needs Linux 5.1; without it the size
        // seals still hold.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let fd = framebuffer.fd.as_raw_fd();
        // SAFETY: fcntl on an fd we own; F_ADD_SEALS takes an int and changes no memory.
        let sealed = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals | F_SEAL_FUTURE_WRITE) };
        if sealed < 0 {
            // SAFETY: as above.
            if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(framebuffer)
    }

    /// The memfd, to pass to clients.
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }
}

/// `F_SEAL_FUTURE_WRITE` (Linux 5.1, `include/uapi/linux/fcntl.h`).
const F_SEAL_FUTURE_WRITE: libc::c_int = 0x0010;

impl Framebuffer for MemfdFramebuffer {
    fn stride(&self) -> u32 {
        self.stride
    }

    fn pixels(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for as long as `self` lives; the memfd is sealed
        // against shrinking, so every page stays backed. Other processes can map it
        // read-only only (F_SEAL_FUTURE_WRITE; on kernels before 5.1 a client could
        // write pixels, which changes bytes but never their validity as `u8`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn pixels_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `pixels`; `&mut self` makes this the only reference here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MemfdFramebuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_gpu::PixelFormat;

    #[test]
    fn writes_show_through_another_mapping_and_the_size_is_sealed() {
        let mode = ScanoutMode {
            width: 3,
            height: 2,
            format: PixelFormat::B8G8R8A8,
        };
        let mut fb = MemfdFramebuffer::new(mode).unwrap();
        assert_eq!(fb.stride(), 12);
        assert_eq!(fb.pixels().len(), 24);
        fb.pixels_mut()[5] = 0xab;
        // What a client does with the fd it received: read it.
        let dup = fb.fd().try_clone().unwrap();
        let file = File::from(dup);
        let mut got = vec![0u8; 24];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut got, 0).unwrap();
        assert_eq!(got[5], 0xab);
        assert!(file.set_len(4).is_err(), "a client cannot shrink it");
    }

    #[test]
    fn an_empty_mode_is_refused() {
        let mode = ScanoutMode {
            width: 0,
            height: 2,
            format: PixelFormat::B8G8R8A8,
        };
        assert!(MemfdFramebuffer::new(mode).is_err());
    }
}
