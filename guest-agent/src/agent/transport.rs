//! The agent's listening side: AF_VSOCK on [`AGENT_VSOCK_PORT`] in a guest, or a Unix
//! socket (tests, and the agent run on the host itself).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};
use nix::sys::time::TimeVal;

use crate::protocol::AGENT_VSOCK_PORT;

/// `VMADDR_CID_ANY`: accept connections addressed to any of this guest's CIDs.
const VMADDR_CID_ANY: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport {0:?} is not vsock, vsock:PORT or unix:PATH")]
    BadSpec(String),
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("accept failed")]
    Accept(#[source] io::Error),
}

/// Where the agent listens: `vsock`, `vsock:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock { port: u32 },
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "vsock" {
            return Ok(Self::Vsock {
                port: AGENT_VSOCK_PORT,
            });
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(|port| Self::Vsock { port })
                .map_err(|_| TransportError::BadSpec(s.into()));
        }
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Self::Unix(path.into())),
            _ => Err(TransportError::BadSpec(s.into())),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vsock { port } => write!(f, "vsock:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug)]
pub enum AgentListener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl AgentListener {
    /// Binds and listens. A Unix socket file left by an earlier run is replaced.
    pub fn bind(addr: &ListenAddr) -> Result<Self, TransportError> {
        let listen_err = |source| TransportError::Listen {
            what: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(listen_err(e)),
                    _ => {}
                }
                UnixListener::bind(path).map(Self::Unix).map_err(listen_err)
            }
            ListenAddr::Vsock { port } => {
                let fd = socket::socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|e| listen_err(e.into()))?;
                socket::bind(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, *port))
                    .map_err(|e| listen_err(e.into()))?;
                // One host connection at a time; a couple queued covers a reset racing
                // the old connection's teardown.
                let backlog = Backlog::new(4).map_err(|e| listen_err(e.into()))?;
                socket::listen(&fd, backlog).map_err(|e| listen_err(e.into()))?;
                Ok(Self::Vsock(fd))
            }
        }
    }

    pub fn accept(&self) -> Result<AgentStream, TransportError> {
        match self {
            Self::Unix(listener) => listener
                .accept()
                .map(|(s, _)| AgentStream::Unix(s))
                .map_err(TransportError::Accept),
            Self::Vsock(fd) => {
                let raw = socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
                    .map_err(|e| TransportError::Accept(e.into()))?;
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                Ok(AgentStream::Vsock(owned))
            }
        }
    }
}

/// A connection from the host.
#[derive(Debug)]
pub enum AgentStream {
    Unix(UnixStream),
    Vsock(OwnedFd),
}

impl AgentStream {
    /// A second handle on the same connection (one thread reads, others write).
    pub fn try_clone(&self) -> io::Result<Self> {
        match self {
            Self::Unix(s) => s.try_clone().map(Self::Unix),
            Self::Vsock(fd) => fd.try_clone().map(Self::Vsock),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(timeout),
            Self::Vsock(fd) => set_timeout(fd, sockopt::ReceiveTimeout, timeout),
        }
    }

    /// Socket buffers big enough for a few 1 MiB file chunks: with the default ~200 KiB a
    /// chunk crosses in many pieces, each a wake-up of the reader and the writer.
    /// Best effort: the kernel caps it at `net.core.wmem_max`/`rmem_max`.
    pub fn set_big_buffers(&self) {
        let fd = match self {
            Self::Unix(s) => s.as_fd(),
            Self::Vsock(fd) => fd.as_fd(),
        };
        set_big_buffers(fd);
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_write_timeout(timeout),
            Self::Vsock(fd) => set_timeout(fd, sockopt::SendTimeout, timeout),
        }
    }
}

/// See [`AgentStream::set_big_buffers`]; also for the host's side of the connection.
pub fn set_big_buffers(fd: std::os::fd::BorrowedFd<'_>) {
    const BUFFER: usize = 4 << 20;
    let _ = socket::setsockopt(&fd, sockopt::SndBuf, &BUFFER);
    let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &BUFFER);
}

fn set_timeout<O>(fd: &OwnedFd, opt: O, timeout: Option<Duration>) -> io::Result<()>
where
    O: nix::sys::socket::SetSockOpt<Val = TimeVal>,
{
    let tv = TimeVal::from(timeout.map(libc_timeval).unwrap_or(libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    }));
    socket::setsockopt(fd, opt, &tv).map_err(io::Error::from)
}

fn libc_timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        // A zero timeval means "no timeout": round a sub-microsecond one up.
        tv_usec: (d.subsec_micros().max(u32::from(d.is_zero()))) as libc::suseconds_t,
    }
}

impl AsFd for AgentStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Unix(s) => s.as_fd(),
            Self::Vsock(fd) => fd.as_fd(),
        }
    }
}

impl Read for AgentStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Vsock(fd) => nix::unistd::read(fd.as_fd(), buf).map_err(io::Error::from),
        }
    }
}

impl Write for AgentStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Vsock(fd) => nix::unistd::write(fd.as_fd(), buf).map_err(io::Error::from),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parses() {
        assert_eq!(
            "vsock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock {
                port: AGENT_VSOCK_PORT
            }
        );
        assert_eq!(
            "vsock:52".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock { port: 52 }
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        for bad in ["vsock:x", "unix:", "tcp:1", ""] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_listener_replaces_a_stale_socket_and_accepts() {
        let path = std::env::temp_dir().join(format!("vireo-agent-t-{}.sock", std::process::id()));
        let addr = ListenAddr::Unix(path.clone());
        drop(AgentListener::bind(&addr).unwrap());
        let listener = AgentListener::bind(&addr).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let mut server = listener.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn vsock_listener_binds_where_the_kernel_has_vsock() {
        let addr = ListenAddr::Vsock {
            port: 47_000 + std::process::id() % 1000,
        };
        match AgentListener::bind(&addr) {
            Ok(AgentListener::Vsock(_)) => {}
            Ok(other) => panic!("not a vsock listener: {other:?}"),
            Err(TransportError::Listen { source, .. })
                if source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                eprintln!("skipped: this kernel has no AF_VSOCK");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
