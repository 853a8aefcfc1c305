//! Quiescing the devices while the VM is paused: every device worker parks between two
//! events, so no backend (a packet from passt, a host vsock connection, an injected key)
//! writes guest memory or raises an interrupt until the VM resumes. Whatever arrives
//! meanwhile waits in its fd and is served after the release, as if it came then.
//!
//! The gate is one per process, as the VM is (one engine process per VM): workers
//! register with it when they start, so a device activated while the VM is paused parks
//! at once. The gate's state is two eventfds, one readable while held and one while
//! released, so a worker waits on them with epoll/poll like on any other fd, and can
//! still be stopped (a save kills parked workers) while it waits.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    #[error("{busy} device worker(s) did not stop within {timeout:?}")]
    Timeout { busy: usize, timeout: Duration },
    #[error("cannot signal the device workers: {0}")]
    Signal(io::Error),
}

#[derive(Default)]
struct Counts {
    held: bool,
    /// Workers that have started and not ended.
    live: usize,
    /// Workers waiting for the release.
    parked: usize,
}

pub struct DeviceGate {
    /// Readable while held: in every worker's epoll.
    held: EventFd,
    /// Readable while released: what a parked worker waits for.
    released: EventFd,
    counts: Mutex<Counts>,
    changed: Condvar,
}

/// What a parked worker was woken for.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Released,
    Killed,
}

impl DeviceGate {
    pub fn new() -> io::Result<Self> {
        let gate = Self {
            held: EventFd::new(libc::EFD_NONBLOCK)?,
            released: EventFd::new(libc::EFD_NONBLOCK)?,
            counts: Mutex::default(),
            changed: Condvar::new(),
        };
        gate.released.write(1)?;
        Ok(gate)
    }

    /// The gate of this process's VM. `None` only if eventfds cannot be made at all,
    /// and then workers run ungated (a pause still stops the vCPUs).
    pub fn process() -> Option<Arc<DeviceGate>> {
        static GATE: OnceLock<Option<Arc<DeviceGate>>> = OnceLock::new();
        GATE.get_or_init(|| match DeviceGate::new() {
            Ok(gate) => Some(Arc::new(gate)),
            Err(e) => {
                tracing::warn!("device workers will not be quiesced on pause: {e}");
                None
            }
        })
        .clone()
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fd a worker's epoll waits on (readable while held).
    pub fn held_fd(&self) -> i32 {
        self.held.as_raw_fd()
    }

    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    /// A worker thread starts (called before it runs, so a hold counts it).
    pub fn worker_started(&self) {
        self.lock().live += 1;
    }

    /// A worker thread ends.
    pub fn worker_ended(&self) {
        self.lock().live -= 1;
        self.changed.notify_all();
    }

    /// Asks every worker to park and waits until each has (or `timeout` passes, and
    /// then the gate is released again). Holding a held gate only waits.
    pub fn hold(&self, timeout: Duration) -> Result<(), QuiesceError> {
        let mut counts = self.lock();
        if !counts.held {
            counts.held = true;
            // The released fd first: a worker seeing "held" must find "released" unset.
            let _ = self.released.read();
            self.held.write(1).map_err(QuiesceError::Signal)?;
        }
        let deadline = Instant::now() + timeout;
        while counts.parked < counts.live {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let busy = counts.live - counts.parked;
                drop(counts);
                self.release();
                return Err(QuiesceError::Timeout { busy, timeout });
            }
            counts = self
                .changed
                .wait_timeout(counts, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets every parked worker go on.
    pub fn release(&self) {
        let mut counts = self.lock();
        if counts.held {
            counts.held = false;
            let _ = self.held.read();
            if let Err(e) = self.released.write(1) {
                tracing::error!("cannot release the device workers: {e}");
            }
        }
    }

    /// Called by a worker that saw the held fd readable: waits for the release or for
    /// `kill` (the worker is being stopped).
    ///
    /// A worker leaves only under the lock and only while the gate is released, so
    /// `parked` counts exactly the workers that cannot run. A hold that comes right
    /// after a release, before a woken worker got the lock, finds it still counted
    /// and keeps it parked; a worker whose `released` signal that hold already took
    /// back simply sleeps on. (Leaving on poll's word alone let such a hold return
    /// while the worker ran on.)
    pub fn park(&self, kill: &EventFd) -> Wake {
        {
            let mut counts = self.lock();
            if !counts.held {
                return Wake::Released;
            }
            counts.parked += 1;
        }
        self.changed.notify_all();
        loop {
            let wake = wait_either(kill, &self.released);
            let mut counts = self.lock();
            if wake == Wake::Killed || !counts.held {
                counts.parked -= 1;
                return wake;
            }
        }
    }
}

/// Blocks until `kill` or `released` is readable.
fn wait_either(kill: &EventFd, released: &EventFd) -> Wake {
    let mut fds = [
        libc::pollfd {
            fd: kill.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: released.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds that outlives the call; poll
        // writes only their `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // poll on two valid eventfds cannot otherwise fail; stop rather than spin.
            return Wake::Killed;
        }
        if fds[0].revents != 0 {
            return Wake::Killed;
        }
        if fds[1].revents != 0 {
            return Wake::Released;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_waits_for_every_live_worker_and_release_lets_them_go() {
        let gate = Arc::new(DeviceGate::new().unwrap());
        gate.worker_started();
        let kill = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = {
            let gate = Arc::clone(&gate);
            let kill = kill.try_clone().unwrap();
            std::thread::spawn(move || {
                // What a worker's loop does: wait for the held fd, then park.
                let mut fd = [libc::pollfd {
                    fd: gate.held_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd, alive for the call.
                unsafe { libc::poll(fd.as_mut_ptr(), 1, 5000) };
                let wake = gate.park(&kill);
                gate.worker_ended();
                wake
            })
        };
        gate.hold(Duration::from_secs(5)).unwrap();
        assert!(gate.is_held());
        assert_eq!(gate.lock().parked, 1);
        gate.release();
        assert_eq!(worker.join().unwrap(), Wake::Released);
        assert_eq!(gate.lock().live, 0);
    }

    #[test]
    fn a_hold_right_after_a_release_keeps_the_worker_parked() {
        let gate = Arc::new(DeviceGate::new().unwrap());
        let kill = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // Times the worker has run between two parks.
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        gate.worker_started();
        let worker = {
            let (gate, runs) = (Arc::clone(&gate), Arc::clone(&runs));
            let kill = kill.try_clone().unwrap();
            std::thread::spawn(move || {
                loop {
                    let mut fd = [libc::pollfd {
                        fd: gate.held_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    // SAFETY: one valid pollfd, alive for the call.
                    unsafe { libc::poll(fd.as_mut_ptr(), 1, -1) };
                    if gate.park(&kill) == Wake::Killed {
                        break;
                    }
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                gate.worker_ended();
            })
        };
        gate.hold(Duration::from_secs(5)).unwrap();
        for _ in 0..200 {
            gate.release();
            gate.hold(Duration::from_secs(5)).unwrap();
            // Held: the worker must not run, however the release and hold interleaved.
            let before = runs.load(std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), before);
        }
        kill.write(1).unwrap();
        worker.join().unwrap();
        assert_eq!(gate.lock().parked, 0);
    }

    #[test]
    fn a_worker_that_never_parks_makes_the_hold_time_out_released() {
        let gate = DeviceGate::new().unwrap();
        gate.worker_started();
        let err = gate.hold(Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(err, QuiesceError::Timeout { busy: 1, .. }),
            "{err}"
        );
        assert!(!gate.is_held());
    }

    #[test]
    fn a_parked_worker_can_be_killed() {
        let gate = DeviceGate::new().unwrap();
        gate.hold(Duration::from_millis(10)).unwrap();
        let kill = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        kill.write(1).unwrap();
        assert_eq!(gate.park(&kill), Wake::Killed);
    }
}
