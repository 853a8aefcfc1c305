//! The client side of the control socket: requests with their answers (`Control`), and
//! the guest's screen (`DisplayClient`): `display-attach`, the framebuffer memfd mapped
//! read-only, and the events the engine pushes. The engine's own `--window` uses it, and
//! so can any program that shows a VM's screen.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, IoSliceMut, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::protocol::{Event, Request, Response, ScreenMode};

/// A connection for requests: one line out, one line back.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    pub fn connect(path: &Path) -> io::Result<Control> {
        let stream = UnixStream::connect(path)?;
        Ok(Control {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Bounds how long `ask` waits to send and to hear back (`None`: forever), so an
    /// engine that hangs cannot hang its client.
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)
    }

    /// Sends `request` and waits for its answer.
    pub fn ask(&mut self, request: &Request) -> io::Result<Response> {
        let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_str(&answer).map_err(io::Error::other)
    }
}

/// A scanout's framebuffer as the engine shares it: its memfd, mapped read-only.
pub struct MappedFramebuffer {
    ptr: NonNull<u8>,
    len: usize,
    pub mode: ScreenMode,
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only and owned by this value; the engine writes the pages
// concurrently, which readers tolerate (they only copy bytes out).
unsafe impl Send for MappedFramebuffer {}

impl MappedFramebuffer {
    fn map(fd: OwnedFd, mode: ScreenMode) -> io::Result<Self> {
        let len = usize::try_from(u64::from(mode.stride) * u64::from(mode.height))
            .map_err(|_| io::ErrorKind::InvalidData)?;
        let size = std::fs::File::from(fd.try_clone()?).metadata()?.len();
        if len == 0 || (size as usize) < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("framebuffer memfd holds {size} bytes, the mode needs {len}"),
            ));
        }
        // SAFETY: a shared read-only mapping of `len` bytes of a memfd at least that
        // large (checked above, and sealed against shrinking by the engine); the kernel
        // picks the address and the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedFramebuffer {
            ptr: NonNull::new(ptr.cast()).ok_or(io::ErrorKind::OutOfMemory)?,
            len,
            mode,
            _fd: fd,
        })
    }

    /// The pixels: `mode.height` rows of `mode.stride` bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedFramebuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made; nothing borrows it past `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// What the display connection delivers.
pub enum DisplayMessage {
    /// A new mode: the mapping of the new framebuffer, or `None` if the scanout is off.
    Mode(ScreenMode, Option<MappedFramebuffer>),
    Event(Event),
}

/// A connection attached to the display: mode changes with their memfds, damage and
/// cursor events, in order.
pub struct DisplayClient {
    stream: UnixStream,
    /// Bytes received and not yet parsed into lines.
    pending: Vec<u8>,
    /// Descriptors received, in order: each belongs to the next line that carries one.
    fds: VecDeque<OwnedFd>,
}

/// A line longer than this is a broken engine, not a display event.
const MAX_LINE: usize = 1 << 20;

impl DisplayClient {
    /// Attaches to the engine's display; returns the client and the current mode.
    pub fn attach(path: &Path) -> io::Result<(DisplayClient, DisplayMessage)> {
        let mut stream = UnixStream::connect(path)?;
        stream.write_all(b"{\"request\":\"display-attach\"}\n")?;
        let mut client = DisplayClient {
            stream,
            pending: Vec::new(),
            fds: VecDeque::new(),
        };
        let line = client.next_line()?;
        let mode = match serde_json::from_str::<Response>(&line).map_err(io::Error::other)? {
            Response::Display(mode) => mode,
            Response::Error { message } => return Err(io::Error::other(message)),
            other => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
        };
        let first = client.with_framebuffer(mode)?;
        Ok((client, first))
    }

    /// How long `next_message` waits before it fails with `WouldBlock` (`None`: for
    /// ever). A message half received by then is kept for the next call.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Blocks until the engine sends the next message.
    pub fn next_message(&mut self) -> io::Result<DisplayMessage> {
        let line = self.next_line()?;
        match serde_json::from_str::<Event>(&line).map_err(io::Error::other)? {
            Event::Mode(mode) => self.with_framebuffer(mode),
            event => Ok(DisplayMessage::Event(event)),
        }
    }

    fn with_framebuffer(&mut self, mode: ScreenMode) -> io::Result<DisplayMessage> {
        if !mode.enabled {
            return Ok(DisplayMessage::Mode(mode, None));
        }
        let fd = self.fds.pop_front().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "a mode came without its memfd")
        })?;
        let mapped = MappedFramebuffer::map(fd, mode.clone())?;
        Ok(DisplayMessage::Mode(mode, Some(mapped)))
    }

    fn next_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            self.receive()?;
        }
    }

    /// One `recvmsg`: bytes onto `pending`, descriptors onto `fds`.
    fn receive(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 16 << 10];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let (bytes, fds) =
            {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors in this
                        // process for us; nothing else owns them.
                        fds.extend(raw.into_iter().map(|r| unsafe {
                            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r)
                        }));
                    }
                }
                (msg.bytes, fds)
            };
        if bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pending.extend_from_slice(&buf[..bytes]);
        self.fds.extend(fds);
        Ok(())
    }
}
