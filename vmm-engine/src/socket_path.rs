//! The Unix socket files an engine listens on (the control socket, the vsock socket):
//! bound at their path, removed when the engine ends if they are still its own, and
//! handed over between engines on one host.
//!
//! The handover is for a live migration to an engine on the same host, as in an engine
//! upgrade: the destination (`--incoming`) is started with the source's own flags, so
//! the same paths, while the source still listens on them. It binds a spare path beside
//! each (`PATH.incoming`) and, once the VM runs there, renames it over PATH: clients that
//! connect from then on reach the destination, and the source, finding a file at PATH
//! that is no longer its own, leaves it in place when it exits.

use std::io;
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0} is in use by another running VM (another engine listens on it)")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket: move it away or choose another path")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether a live listener at the path is an error or is to be taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    Refuse,
    TakeOver,
}

/// A socket file this engine created.
#[derive(Debug)]
pub struct SocketPath {
    /// Where the file is now, and where it belongs.
    now: Mutex<PathBuf>,
    target: PathBuf,
    /// (st_dev, st_ino) of the file we created: a file someone else put at the path
    /// later is not removed.
    identity: (u64, u64),
}

impl SocketPath {
    /// Listens on `path`. A stale socket file there (nobody accepts on it: left by an
    /// engine that was killed) is replaced; a live one is refused or, with
    /// `Live::TakeOver`, left serving until [`SocketPath::claim`].
    pub fn bind(path: &Path, live: Live) -> Result<(UnixListener, SocketPath), BindError> {
        let io_err = |source| BindError::Io {
            path: path.to_owned(),
            source,
        };
        let at = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
            Err(e) => return Err(io_err(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(BindError::NotASocket(path.to_owned()))
            }
            Ok(_) if UnixStream::connect(path).is_err() => {
                std::fs::remove_file(path).map_err(io_err)?;
                path.to_owned()
            }
            Ok(_) if live == Live::TakeOver => {
                let spare = spare_path(path);
                // A spare left by a destination that died is never live.
                let _ = std::fs::remove_file(&spare);
                spare
            }
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
        };
        let listener = UnixListener::bind(&at).map_err(io_err)?;
        let meta = std::fs::symlink_metadata(&at).map_err(io_err)?;
        let bound = SocketPath {
            now: Mutex::new(at),
            target: path.to_owned(),
            identity: (meta.st_dev(), meta.st_ino()),
        };
        Ok((listener, bound))
    }

    /// The path clients use.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Moves a socket bound at the spare path over its real one (nothing to do for one
    /// bound there from the start).
    pub fn claim(&self) -> io::Result<()> {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if *now != self.target {
            std::fs::rename(&*now, &self.target)?;
            *now = self.target.clone();
        }
        Ok(())
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let now = self.now.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Ok(meta) = std::fs::symlink_metadata(&*now) {
            if (meta.st_dev(), meta.st_ino()) == self.identity {
                let _ = std::fs::remove_file(&*now);
            }
        }
    }
}

fn spare_path(path: &Path) -> PathBuf {
    let mut spare = path.as_os_str().to_owned();
    spare.push(".incoming");
    PathBuf::from(spare)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vireo-sockpath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_live_socket_is_refused_or_taken_over_and_the_old_owner_leaves_the_new_file() {
        let dir = dir("takeover");
        let path = dir.join("c.sock");
        let (_old_listener, old) = SocketPath::bind(&path, Live::Refuse).unwrap();
        let e = SocketPath::bind(&path, Live::Refuse).unwrap_err();
        assert!(matches!(e, BindError::InUse(_)), "{e}");

        let (new_listener, new) = SocketPath::bind(&path, Live::TakeOver).unwrap();
        // Until the claim, clients still reach the old listener's file.
        assert!(dir.join("c.sock.incoming").exists());
        new.claim().unwrap();
        assert!(!dir.join("c.sock.incoming").exists());
        new_listener.set_nonblocking(true).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        assert!(
            new_listener.accept().is_ok(),
            "the new listener serves the path"
        );

        drop(old);
        assert!(
            path.exists(),
            "the old owner removed its successor's socket"
        );
        drop(new);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_plain_file_refused() {
        let dir = dir("stale");
        let path = dir.join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        let (_l, bound) = SocketPath::bind(&path, Live::Refuse).unwrap();
        assert_eq!(bound.path(), path);
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = SocketPath::bind(&file, Live::TakeOver).unwrap_err();
        assert!(matches!(e, BindError::NotASocket(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
