//! The passt backend: user-mode networking (DHCP, TCP/UDP/ICMP to the host's network,
//! no privileges) from a `passt` child process, as libvirt and Podman use it.
//!
//! The engine and passt share a Unix stream socket pair; passt gets its end as
//! `--fd N` (Debian 12's passt, 0.0~git20230309, has it; it implies `--one-off`, so
//! passt quits when the engine's end closes). On the socket every frame is prefixed by
//! its length as a 4-byte big-endian number, QEMU's `-netdev stream` framing. Frames
//! have no virtio header: passt wants complete checksums and computes its own.
//!
//! passt started as root drops to user `nobody` by itself (`--runas`' default), which
//! needs nothing from us: it only uses the socket it inherited.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::backend::{retry_eintr, Backend, BackendError, MAX_FRAME_LEN};

/// The length prefix of a frame on the socket.
const PREFIX_LEN: usize = 4;
/// What may wait for passt to read it: when more is pending, the worker stops taking
/// frames from the guest (they stay in the tx queue) until the socket is writable.
const OUTPUT_HIGH_WATER: usize = 256 << 10;
/// The send buffer asked for passt's end of the socket: a few MiB of frames in flight.
const PASST_SNDBUF: libc::c_int = 4 << 20;
/// How much is read from the socket at once: room for a few large frames per syscall.
const INPUT_BUFFER_LEN: usize = 4 * (PREFIX_LEN + MAX_FRAME_LEN);

/// Why passt could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("--net passt: the passt program is not installed (not found in PATH): install it with `apt-get install passt`")]
    NotInstalled,
    #[error("--net passt: cannot create the socket pair for passt: {0}")]
    Socket(#[source] io::Error),
    #[error("--net passt: cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Finds `passt` in PATH, the way a shell would.
pub fn find_passt() -> Result<PathBuf, PasstError> {
    find_passt_in(&std::env::var_os("PATH").unwrap_or_default())
}

fn find_passt_in(path: &std::ffi::OsStr) -> Result<PathBuf, PasstError> {
    std::env::split_paths(path)
        .map(|dir| dir.join("passt"))
        .find(|candidate| is_executable(candidate))
        .ok_or(PasstError::NotInstalled)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A running passt and the engine's end of its socket.
pub struct Passt {
    child: Child,
    socket: UnixStream,
    /// Length-prefixed frames not yet written; `out_start` is where writing resumes.
    out: Vec<u8>,
    out_start: usize,
    /// Bytes read from the socket; `in_start..in_end` is not consumed yet.
    input: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// The frame `peek_frame` returned: its total length with the prefix.
    peeked: Option<usize>,
}

impl Passt {
    /// Starts `passt` (found in PATH) on a fresh socket pair.
    pub fn spawn() -> Result<Self, PasstError> {
        let program = find_passt()?;
        let (ours, theirs) = UnixStream::pair().map_err(PasstError::Socket)?;
        ours.set_nonblocking(true).map_err(PasstError::Socket)?;
        enlarge_send_buffer(&theirs);
        let child = spawn_with_fd(&program, OwnedFd::from(theirs))?;
        tracing::debug!("passt started as pid {}", child.id());
        Ok(Self::with_socket(child, ours))
    }

    fn with_socket(child: Child, socket: UnixStream) -> Self {
        Passt {
            child,
            socket,
            out: Vec::new(),
            out_start: 0,
            input: vec![0; INPUT_BUFFER_LEN],
            in_start: 0,
            in_end: 0,
            peeked: None,
        }
    }

    /// The child's process ID (for logs and tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// passt writes a burst of frames with one nonblocking `sendmsg` and drops whatever the
/// socket cannot take (TCP then recovers after passt's 2 s ACK timeout): its end needs a
/// send buffer as large as a guest's TCP window. passt enlarges the sockets it accepts
/// itself, not one given with `--fd`, so the engine does it before handing it over:
/// SO_SNDBUFFORCE where allowed (CAP_NET_ADMIN), else SO_SNDBUF (capped by
/// net.core.wmem_max).
fn enlarge_send_buffer(socket: &UnixStream) {
    let size: libc::c_int = PASST_SNDBUF;
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads one int through a valid pointer of the given length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

fn spawn_with_fd(program: &Path, theirs: OwnedFd) -> Result<Child, PasstError> {
    let fd = theirs.as_raw_fd();
    let parent = std::process::id();
    let mut command = Command::new(program);
    command
        .args(["--foreground", "--quiet", "--fd", &fd.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // This passt reports "Failed to send N bytes to syslog" for every message when
        // there is no syslog daemon; its real errors show as a closed socket instead.
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, prctl, getppid) on values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            // The socket pair is close-on-exec; passt must keep its end.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // If the engine dies without tearing down (a kill -9), passt goes too. The
            // signal follows the thread that forked: `boot_once` runs on the engine's
            // main thread, which lives as long as the VM.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The engine died between fork and prctl: do not outlive it.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| PasstError::Spawn {
        path: program.to_owned(),
        source,
    });
    // Our copy of passt's end closes here, so that passt's exit is seen as a hang-up.
    drop(theirs);
    child
}

impl Drop for Passt {
    fn drop(&mut self) {
        // passt would quit on its own once the socket closes (`--fd` implies
        // `--one-off`); killing it makes teardown immediate, and waiting leaves no zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend for Passt {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn checksums_valid(&self) -> bool {
        // passt builds every frame it sends itself, checksums included.
        true
    }

    fn can_send(&self) -> bool {
        self.out.len() - self.out_start < OUTPUT_HIGH_WATER
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        debug_assert!(frame.len() <= MAX_FRAME_LEN);
        if self.out_start > 0 && self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        }
        self.out
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.out.extend_from_slice(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, BackendError> {
        while self.out_start < self.out.len() {
            match retry_eintr(|| (&self.socket).write(&self.out[self.out_start..])) {
                Ok(0) => return Err(BackendError::Closed),
                Ok(n) => self.out_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
            return Ok(true);
        }
        // Keep the buffer from creeping: move the unwritten tail to the front once the
        // written head is the larger part.
        if self.out_start > self.out.len() / 2 {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
        Ok(false)
    }

    fn has_pending_output(&self) -> bool {
        self.out_start < self.out.len()
    }

    fn peek_frame(&mut self) -> Result<Option<&[u8]>, BackendError> {
        loop {
            let available = self.in_end - self.in_start;
            if available >= PREFIX_LEN {
                let prefix: [u8; PREFIX_LEN] = self.input
                    [self.in_start..self.in_start + PREFIX_LEN]
                    .try_into()
                    .expect("four bytes");
                let len = u32::from_be_bytes(prefix) as usize;
                if len > MAX_FRAME_LEN {
                    return Err(BackendError::FrameTooLong(len));
                }
                if available >= PREFIX_LEN + len {
                    self.peeked = Some(PREFIX_LEN + len);
                    let start = self.in_start + PREFIX_LEN;
                    return Ok(Some(&self.input[start..start + len]));
                }
            }
            // Need more: make room at the end (a whole frame always fits the buffer).
            if self.in_start > 0 {
                self.input.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            match retry_eintr(|| (&self.socket).read(&mut self.input[self.in_end..])) {
                Ok(0) => return Err(BackendError::Closed),
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn consume_frame(&mut self) {
        if let Some(len) = self.peeked.take() {
            self.in_start += len;
        }
    }
}

/// Test support: a `Passt` whose "passt" is the test itself, at the other end of a
/// socket pair (the child is a harmless `sleep`, killed at drop like passt).
#[cfg(test)]
pub(crate) fn fake_passt() -> (Passt, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let child = Command::new("sleep").arg("600").spawn().unwrap();
    (Passt::with_socket(child, ours), theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_out_length_prefixed() {
        let (mut passt, mut peer) = fake_passt();
        assert!(passt.can_send());
        passt.send(&[1, 2, 3]).unwrap();
        passt.send(&[9; 20]).unwrap();
        assert!(passt.has_pending_output());
        assert!(passt.flush().unwrap());
        assert!(!passt.has_pending_output());
        let mut got = [0u8; 4 + 3 + 4 + 20];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..7], &[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(&got[7..11], &[0, 0, 0, 20]);
        assert!(got[11..].iter().all(|&b| b == 9));
    }

    #[test]
    fn frames_come_in_whole_even_when_split_across_reads() {
        let (mut passt, mut peer) = fake_passt();
        assert!(passt.peek_frame().unwrap().is_none());
        peer.write_all(&[0, 0, 0, 5, 10, 11]).unwrap();
        assert!(passt.peek_frame().unwrap().is_none(), "incomplete frame");
        peer.write_all(&[12, 13, 14, 0, 0, 0, 1, 7]).unwrap();
        assert_eq!(passt.peek_frame().unwrap().unwrap(), &[10, 11, 12, 13, 14]);
        // Not consumed: the same frame again.
        assert_eq!(passt.peek_frame().unwrap().unwrap(), &[10, 11, 12, 13, 14]);
        passt.consume_frame();
        assert_eq!(passt.peek_frame().unwrap().unwrap(), &[7]);
        passt.consume_frame();
        assert!(passt.peek_frame().unwrap().is_none());
        // Many frames larger than the read buffer in total.
        let frame = vec![0xab; MAX_FRAME_LEN];
        let writer = std::thread::spawn(move || {
            for _ in 0..10 {
                peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
                peer.write_all(&frame).unwrap();
            }
            peer
        });
        let mut seen = 0;
        while seen < 10 {
            if let Some(f) = passt.peek_frame().unwrap() {
                assert_eq!(f.len(), MAX_FRAME_LEN);
                passt.consume_frame();
                seen += 1;
            }
        }
        // passt closes its end (shutdown: a test thread forking at this moment may hold
        // a copy of the fd, which would keep a mere close from being seen).
        let peer = writer.join().unwrap();
        peer.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(matches!(passt.peek_frame(), Err(BackendError::Closed)));
    }

    #[test]
    fn an_oversized_length_is_a_protocol_error() {
        let (mut passt, mut peer) = fake_passt();
        peer.write_all(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes())
            .unwrap();
        assert!(matches!(
            passt.peek_frame(),
            Err(BackendError::FrameTooLong(n)) if n == MAX_FRAME_LEN + 1
        ));
    }

    #[test]
    fn output_is_bounded_by_back_pressure() {
        let (mut passt, peer) = fake_passt();
        let frame = vec![0u8; MAX_FRAME_LEN];
        // Nobody reads: the socket fills, then the high-water mark stops the sender.
        let mut sent = 0;
        while passt.can_send() {
            passt.send(&frame).unwrap();
            passt.flush().unwrap();
            sent += 1;
            assert!(sent < 1000, "no back-pressure");
        }
        assert!(passt.has_pending_output());
        assert!(!passt.flush().unwrap());
        // passt goes away (shutdown: a test thread forking at this moment may hold a
        // copy of the fd, which would keep a mere close from being seen).
        peer.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(passt.flush().is_err());
    }

    #[test]
    fn passt_is_found_in_path_or_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vireo-passt-").unwrap();
        let empty = dir.as_path().join("empty");
        let bin = dir.as_path().join("bin");
        std::fs::create_dir(&empty).unwrap();
        std::fs::create_dir(&bin).unwrap();
        let fake = bin.join("passt");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([&empty, &bin]).unwrap();
        // Not executable yet: not a passt.
        assert!(matches!(
            find_passt_in(&path),
            Err(PasstError::NotInstalled)
        ));
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_passt_in(&path).unwrap(), fake);
        let msg = find_passt_in(empty.as_os_str()).unwrap_err().to_string();
        assert!(msg.contains("apt-get install passt"), "{msg}");
    }
}
