//! What the user says about the VM's vsock device: `--vsock cid=N,socket=PATH` on the
//! command line, or the same fields in a VM's `vm.toml`; and the host-side listener on
//! PATH, bound before KVM is touched so that a socket in use is a clear error.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::socket_path::{BindError, Live, SocketPath};

/// CIDs 0 (hypervisor), 1 (loopback) and 2 (host) are reserved (virtio 1.2, 5.10.4).
pub const MIN_GUEST_CID: u64 = 3;
/// The upper 32 bits of the CID are reserved (5.10.4), and Linux takes 0xFFFFFFFF as
/// VMADDR_CID_ANY.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// `sun_path` holds 108 bytes with the terminating NUL; guest connections to port P use
/// `PATH_P`, which adds up to 11 more.
const MAX_SOCKET_PATH: usize = 107;

/// The VM's vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (`guest_cid` in the device's configuration space).
    pub cid: u64,
    /// The Unix socket host clients connect to (`CONNECT <port>\n`); guest connections to
    /// host port P go to `<socket>_P`.
    pub socket: PathBuf,
}

/// A `--vsock` option that cannot be used as written, or a socket that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum VsockConfigError {
    #[error("--vsock needs cid=N (e.g. --vsock cid=3,socket=/tmp/vm.vsock)")]
    MissingCid,
    #[error("--vsock needs socket=PATH (e.g. --vsock cid=3,socket=/tmp/vm.vsock)")]
    MissingSocket,
    #[error("--vsock: \"{0}\" is not KEY=VALUE (keys: cid, socket)")]
    NotKeyValue(String),
    #[error("--vsock: unknown key \"{0}\" (keys: cid, socket)")]
    UnknownKey(String),
    #[error("--vsock: {0}= is given twice")]
    Duplicate(&'static str),
    #[error("--vsock: cid={0} is not a number")]
    CidNotANumber(String),
    #[error("--vsock: cid={0} is reserved (0 hypervisor, 1 loopback, 2 host): use {MIN_GUEST_CID} or more")]
    CidReserved(u64),
    #[error("--vsock: cid={0} is too large: use at most {MAX_GUEST_CID}")]
    CidTooLarge(u64),
    #[error("--vsock: socket= is empty")]
    EmptySocket,
    #[error("--vsock: socket={} is too long for a Unix socket path: use at most {MAX_SOCKET_PATH} bytes", .0.display())]
    SocketPathTooLong(PathBuf),
    #[error("--vsock: socket={} is in use by a running listener (another VM?): choose another path or stop it", .0.display())]
    SocketInUse(PathBuf),
    #[error("--vsock: socket={} exists and is not a socket: choose another path", .0.display())]
    NotASocket(PathBuf),
    #[error("--vsock: cannot listen on socket={}: {source}", .path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl VsockConfig {
    /// Checks the values a `vm.toml` could hold too (the flag parser checks them as well).
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if self.cid < MIN_GUEST_CID {
            return Err(VsockConfigError::CidReserved(self.cid));
        }
        if self.cid > MAX_GUEST_CID {
            return Err(VsockConfigError::CidTooLarge(self.cid));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(VsockConfigError::EmptySocket);
        }
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VsockConfigError::SocketPathTooLong(self.socket.clone()));
        }
        Ok(())
    }
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    /// Parses `cid=N,socket=PATH` (`,,` for a comma inside the path, as `--disk` takes it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut socket = None;
        for item in crate::devices::virtio::block::config::split_options(s) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(VsockConfigError::NotKeyValue(item));
            };
            match key {
                "cid" => {
                    if cid.is_some() {
                        return Err(VsockConfigError::Duplicate("cid"));
                    }
                    cid = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| VsockConfigError::CidNotANumber(value.to_owned()))?,
                    );
                }
                "socket" => {
                    if socket.is_some() {
                        return Err(VsockConfigError::Duplicate("socket"));
                    }
                    socket = Some(PathBuf::from(value));
                }
                other => return Err(VsockConfigError::UnknownKey(other.to_owned())),
            }
        }
        let config = VsockConfig {
            cid: cid.ok_or(VsockConfigError::MissingCid)?,
            socket: socket.ok_or(VsockConfigError::MissingSocket)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The bound host-side socket. Dropping it removes the socket file, if it is still ours.
#[derive(Debug)]
pub struct VsockListener {
    listener: UnixListener,
    file: SocketPath,
}

impl VsockListener {
    /// Listens on `path`. A stale socket file (nobody accepts on it) is replaced; a live
    /// listener or a file that is not a socket is an error naming the path, unless `live`
    /// says to take a live one over (a migration's destination on the same host).
    pub fn bind(path: &Path) -> Result<Self, VsockConfigError> {
        Self::bind_with(path, Live::Refuse)
    }

    pub fn bind_with(path: &Path, live: Live) -> Result<Self, VsockConfigError> {
        let (listener, file) = SocketPath::bind(path, live).map_err(|e| match e {
            BindError::InUse(p) => VsockConfigError::SocketInUse(p),
            BindError::NotASocket(p) => VsockConfigError::NotASocket(p),
            BindError::Io { path, source } => VsockConfigError::Listen { path, source },
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockConfigError::Listen {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { listener, file })
    }

    /// Another handle on the same listening socket, for a device.
    pub fn try_clone(&self) -> io::Result<UnixListener> {
        self.listener.try_clone()
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A socket taken over from a live engine moves to its path now (see `socket_path`).
    pub fn claim(&self) -> io::Result<()> {
        self.file.claim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VsockConfig, String> {
        s.parse::<VsockConfig>().map_err(|e| e.to_string())
    }

    #[test]
    fn good_specs_parse() {
        assert_eq!(
            parse("cid=3,socket=/tmp/v.sock").unwrap(),
            VsockConfig {
                cid: 3,
                socket: "/tmp/v.sock".into()
            }
        );
        assert_eq!(
            parse("socket=/tmp/a,,b,cid=42").unwrap().socket,
            PathBuf::from("/tmp/a,b")
        );
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        assert!(parse("cid=3").unwrap_err().contains("needs socket=PATH"));
        assert!(parse("socket=/tmp/x").unwrap_err().contains("needs cid=N"));
        for cid in ["0", "1", "2"] {
            let e = parse(&format!("cid={cid},socket=/tmp/x")).unwrap_err();
            assert!(e.contains("reserved"), "{e}");
        }
        assert!(parse("cid=4294967295,socket=/x")
            .unwrap_err()
            .contains("too large"));
        assert!(parse("cid=x,socket=/x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse("cid=3,socket=/x,port=1")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse("cid=3,cid=4,socket=/x")
            .unwrap_err()
            .contains("given twice"));
        assert!(parse("cid=3,socket=").unwrap_err().contains("empty"));
        let long = format!("cid=3,socket=/{}", "a".repeat(200));
        assert!(parse(&long).unwrap_err().contains("too long"));
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_refused_and_ours_removed() {
        let dir = std::env::temp_dir().join(format!("vireo-vsock-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        // Stale: bound, then the listener is gone but the file stays.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let ours = VsockListener::bind(&path).unwrap();
        // Live: a second engine is told the path is in use.
        let e = VsockListener::bind(&path).unwrap_err().to_string();
        assert!(e.contains("in use by a running listener"), "{e}");
        drop(ours);
        assert!(!path.exists());
        // Not a socket.
        std::fs::write(&path, b"x").unwrap();
        let e = VsockListener::bind(&path).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        let e = VsockListener::bind(&dir.join("no/such/dir/v.sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot listen"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
