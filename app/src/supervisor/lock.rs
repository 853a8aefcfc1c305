//! The run lock: an exclusive `flock` on `<runtime>/<id>/lock`, taken by the VM's
//! monitor and inherited by its engine, so it is held exactly as long as either lives
//! (the kernel drops it when the last descriptor closes, even after a crash). A second
//! app or CLI finds it held and refuses to start the VM; the app tells running VMs from
//! stopped ones the same way, which is how it re-attaches after a restart.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock, held.
pub struct RunLock(Flock<File>);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the VM is already running (another Vireo started it)")]
    Held,
    #[error("cannot open the lock {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn open(path: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.display().to_string(),
            source,
        })
}

impl RunLock {
    /// Takes the lock. Someone merely checking it (`is_held`) holds it for microseconds,
    /// so a busy lock is tried again for `patience` before it counts as held.
    pub fn acquire(path: &Path, patience: Duration) -> Result<RunLock, LockError> {
        let deadline = Instant::now() + patience;
        let mut file = open(path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(RunLock(lock)),
                Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, Errno::EWOULDBLOCK)) => return Err(LockError::Held),
                Err((_, errno)) => {
                    return Err(LockError::Open {
                        path: path.display().to_string(),
                        source: errno.into(),
                    })
                }
            }
        }
    }

    /// Lets children inherit the descriptor (and with it the lock): Rust opens files
    /// close-on-exec.
    pub fn inherit_to_children(&self) -> std::io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(&*self.0, FcntlArg::F_SETFD(FdFlag::empty()))?;
        Ok(())
    }
}

/// Whether some process holds the lock at `path` (a missing file: nobody).
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let path = std::env::temp_dir().join(format!("vireo-lock-{}", std::process::id()));
        assert!(!is_held(&path));
        let lock = RunLock::acquire(&path, Duration::ZERO).unwrap();
        assert!(is_held(&path));
        assert!(matches!(
            RunLock::acquire(&path, Duration::from_millis(30)),
            Err(LockError::Held)
        ));
        drop(lock);
        assert!(!is_held(&path));
        RunLock::acquire(&path, Duration::ZERO).unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
