//! The TAP backend: frames go to and come from a Linux TAP interface (for bridged
//! networking), one `read`/`write` per frame.
//!
//! The interface is opened with IFF_VNET_HDR and a 12-byte header (`virtio_net_hdr_v1`'s
//! size, TUNSETVNETHDRSZ), so that checksum offload can be passed through later; today
//! no offloads are enabled on the interface (no TUNSETOFFLOAD), so the kernel only ever
//! hands us complete frames and we send it complete ones with an empty header.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::{retry_eintr, Backend, BackendError, MAX_FRAME_LEN};

/// The virtio-net header on the TAP fd (`virtio_net_hdr_v1`).
const VNET_HDR_LEN: usize = 12;

/// Why a TAP interface could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("--net tap={0}: cannot open /dev/net/tun: {1} (is the tun module loaded?)")]
    OpenTun(String, #[source] io::Error),
    #[error("--net tap={0}: opening a TAP interface needs CAP_NET_ADMIN: run as root, or create it for your user first (`sudo ip tuntap add {0} mode tap user $USER`)")]
    Permission(String),
    #[error("--net tap={0}: the kernel refused the interface: {1}")]
    SetIff(String, #[source] io::Error),
    #[error("--net tap={0}: cannot set the virtio-net header size: {1}")]
    VnetHdr(String, #[source] io::Error),
}

/// An open TAP interface.
pub struct Tap {
    file: File,
    /// One frame the kernel would not take yet (EAGAIN), with its header.
    pending: Option<Vec<u8>>,
    /// The last frame read, with its header; `peeked` while the guest has not taken it.
    input: Vec<u8>,
    input_len: usize,
    peeked: bool,
}

impl Tap {
    /// Opens (creating if needed) interface `name`, nonblocking.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| TapError::OpenTun(name.to_owned(), e))?;
        // SAFETY: `ifreq` is plain data for which all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives across the call;
        // the name is NUL-terminated (config checks it is at most IFNAMSIZ - 1 bytes).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EPERM) {
                TapError::Permission(name.to_owned())
            } else {
                TapError::SetIff(name.to_owned(), e)
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(TapError::VnetHdr(
                name.to_owned(),
                io::Error::last_os_error(),
            ));
        }
        Ok(Tap {
            file,
            pending: None,
            input: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            input_len: 0,
            peeked: false,
        })
    }

    fn write_frame(&mut self, with_header: &[u8]) -> io::Result<bool> {
        match retry_eintr(|| self.file.write(with_header)) {
            // A TAP write takes the whole frame or nothing.
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            // The interface is down (no carrier): the frame is lost, as on a cable
            // unplugged, and the card keeps working for when it comes up.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

impl Backend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn checksums_valid(&self) -> bool {
        // Frames from other hosts on the bridge are whatever they are: let the guest check.
        false
    }

    fn can_send(&self) -> bool {
        self.pending.is_none()
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        let mut buf = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        buf.resize(VNET_HDR_LEN, 0);
        buf.extend_from_slice(frame);
        if !self.write_frame(&buf)? {
            self.pending = Some(buf);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, BackendError> {
        if let Some(buf) = self.pending.take() {
            if !self.write_frame(&buf)? {
                self.pending = Some(buf);
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn has_pending_output(&self) -> bool {
        self.pending.is_some()
    }

    fn peek_frame(&mut self) -> Result<Option<&[u8]>, BackendError> {
        while !self.peeked {
            match retry_eintr(|| self.file.read(&mut self.input)) {
                Ok(n) if n < VNET_HDR_LEN => continue,
                Ok(n) => {
                    self.input_len = n;
                    self.peeked = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(&self.input[VNET_HDR_LEN..self.input_len]))
    }

    fn consume_frame(&mut self) {
        self.peeked = false;
    }
}
