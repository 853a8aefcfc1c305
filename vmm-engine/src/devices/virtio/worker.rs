//! One thread per activated device, owning its queues: an epoll loop over a kill eventfd,
//! each queue's notify eventfd and any backend fds the device adds (house style 3).
//!
//! Backends come in two kinds: a fixed list (`backend_fds`, known when the worker starts:
//! a disk, a request eventfd) and fds the handler adds and removes while it runs through
//! the `FdRegistry` it gets in `attach` (vsock's connections come and go).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::quiesce::{DeviceGate, Wake};

/// What a device's worker does when the driver or a backend needs it.
pub trait WorkerHandler: Send + 'static {
    /// The driver notified queue `index` (its position among the notifiers handed to
    /// `Worker::spawn`). Errors are the guest's doing (a broken ring); they are logged
    /// and the worker goes on serving the other queues.
    fn queue_notified(&mut self, index: usize) -> Result<(), String>;
    /// Backend fds to wait on besides the queues (a socket, a tap device).
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Backend fd number `index` (position in `backend_fds`) is readable.
    fn backend_ready(&mut self, _index: usize) -> Result<(), String> {
        Ok(())
    }
    /// Called once, before the thread starts, with the registry for fds the handler adds
    /// while it runs.
    fn attach(&mut self, _registry: FdRegistry) {}
    /// An fd the handler registered with `token` has `events`.
    fn registered_fd_ready(&mut self, _token: u32, _events: EventSet) -> Result<(), String> {
        Ok(())
    }
}

/// Notifies each of `queues` once, as the driver does after posting buffers. For a
/// restore: a kick the driver made just before the save was pending in the old
/// process's eventfd and is gone, and with EVENT_IDX the driver will not kick again for
/// buffers it has already announced; so a restored device looks at every queue once
/// when its worker starts (a kick with nothing new costs one empty drain).
/// Stops a device's worker for a save and hands its handler (with the queues) back.
pub fn stop_for_save<H: WorkerHandler>(
    worker: &mut Option<Worker<H>>,
) -> Result<H, super::SaveError> {
    worker
        .take()
        .and_then(Worker::stop)
        .ok_or(super::SaveError::WorkerLost)
}

pub fn kick_each(queues: &[super::ActiveQueue]) -> io::Result<()> {
    queues.iter().try_for_each(|q| q.notify.write(1))
}

/// Epoll tokens at and above this are the handler's own (`FdRegistry`), below it the
/// worker's: kill, queues, fixed backends.
const REGISTERED_TOKEN_BASE: u64 = 1 << 32;

/// Adds and removes a handler's own fds in its worker's epoll, each with a token of the
/// handler's choosing (it comes back in `registered_fd_ready`).
pub struct FdRegistry {
    epoll: Arc<Epoll>,
}

impl FdRegistry {
    /// Waits for `events` on `fd`. The fd stays the caller's: remove it before closing it
    /// (closing also removes it, unless it was duplicated).
    pub fn add(&self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, REGISTERED_TOKEN_BASE + u64::from(token)),
        )
    }

    /// Changes the events waited for on `fd`.
    pub fn modify(&self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, REGISTERED_TOKEN_BASE + u64::from(token)),
        )
    }

    /// Stops waiting on `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// A running worker thread.
pub struct Worker<H: WorkerHandler> {
    kill: EventFd,
    thread: Option<JoinHandle<H>>,
}

/// Epoll tokens: 0 is the kill event, then one per queue, then the backends; the
/// device gate's "held" fd sits just below the handler's own.
const TOKEN_KILL: u64 = 0;
const TOKEN_HOLD: u64 = REGISTERED_TOKEN_BASE - 1;

impl<H: WorkerHandler> Worker<H> {
    /// Starts a thread named `name` serving `notifiers` (one eventfd per queue), held
    /// by the process's device gate while the VM is paused.
    pub fn spawn(name: &str, notifiers: Vec<EventFd>, handler: H) -> io::Result<Self> {
        Self::spawn_gated(name, notifiers, handler, DeviceGate::process())
    }

    /// `spawn` with the gate given (tests use their own), or none.
    pub fn spawn_gated(
        name: &str,
        notifiers: Vec<EventFd>,
        mut handler: H,
        gate: Option<Arc<DeviceGate>>,
    ) -> io::Result<Self> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Arc::new(Epoll::new()?);
        epoll.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_KILL),
        )?;
        for (i, fd) in notifiers.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 1 + i as u64),
            )?;
        }
        let backend_base = 1 + notifiers.len() as u64;
        for (i, fd) in handler.backend_fds().into_iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, backend_base + i as u64),
            )?;
        }
        if let Some(gate) = &gate {
            epoll.ctl(
                ControlOperation::Add,
                gate.held_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_HOLD),
            )?;
        }
        handler.attach(FdRegistry {
            epoll: epoll.clone(),
        });
        let kill_for_thread = kill.try_clone()?;
        if let Some(gate) = &gate {
            gate.worker_started();
        }
        let gate_for_thread = gate.clone();
        // Through the spawner: a vCPU thread starts a worker when the guest sets
        // DRIVER_OK, and the worker must not inherit the vCPU's filter.
        let builder = std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(512 << 10);
        let spawned = crate::sandbox::spawn(builder, move || {
            crate::sandbox::enter(crate::sandbox::ThreadKind::Device);
            let handler = run(
                epoll,
                &kill_for_thread,
                notifiers,
                handler,
                &gate_for_thread,
            );
            if let Some(gate) = gate_for_thread {
                gate.worker_ended();
            }
            handler
        });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                if let Some(gate) = gate {
                    gate.worker_ended();
                }
                return Err(e);
            }
        };
        Ok(Self {
            kill,
            thread: Some(thread),
        })
    }

    /// Stops the thread and gives the handler (and the queues it owns) back.
    pub fn stop(mut self) -> Option<H> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Option<H> {
        let thread = self.thread.take()?;
        let _ = self.kill.write(1);
        thread.join().ok()
    }
}

impl<H: WorkerHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn run<H: WorkerHandler>(
    epoll: Arc<Epoll>,
    kill: &EventFd,
    notifiers: Vec<EventFd>,
    mut handler: H,
    gate: &Option<Arc<DeviceGate>>,
) -> H {
    let mut events = vec![EpollEvent::default(); notifiers.len() + 32];
    let backend_base = 1 + notifiers.len() as u64;
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("device worker: epoll failed: {e}");
                return handler;
            }
        };
        crate::sandbox::trip_point(crate::sandbox::ThreadKind::Device);
        // A hold parks the worker before it serves anything else of this batch; the
        // rest is served after the release (edge-triggered fds are not re-reported).
        let held = events[..n].iter().any(|e| e.data() == TOKEN_HOLD);
        if let (true, Some(gate)) = (held, gate) {
            if gate.park(kill) == Wake::Killed {
                let _ = kill.read();
                return handler;
            }
        }
        for event in &events[..n] {
            let token = event.data();
            let result = if token == TOKEN_HOLD {
                Ok(())
            } else if token == TOKEN_KILL {
                let _ = kill.read();
                return handler;
            } else if token < backend_base {
                let index = (token - 1) as usize;
                // Consume the kick first: a kick that arrives while we drain re-arms it.
                let _ = notifiers[index].read();
                handler.queue_notified(index)
            } else if token >= REGISTERED_TOKEN_BASE {
                handler
                    .registered_fd_ready((token - REGISTERED_TOKEN_BASE) as u32, event.event_set())
            } else {
                handler.backend_ready((token - backend_base) as usize)
            };
            if let Err(e) = result {
                tracing::warn!("device worker: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Recorder(mpsc::Sender<usize>);
    impl WorkerHandler for Recorder {
        fn queue_notified(&mut self, index: usize) -> Result<(), String> {
            self.0.send(index).map_err(|e| e.to_string())
        }
    }

    #[test]
    fn kicks_reach_the_handler_and_stop_returns_it() {
        let (tx, rx) = mpsc::channel();
        let notifiers = vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let kick1 = notifiers[1].try_clone().unwrap();
        let worker = Worker::spawn("test-worker", notifiers, Recorder(tx)).unwrap();
        kick1.write(1).unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            1
        );
        assert!(worker.stop().is_some());
    }

    #[test]
    fn a_held_worker_serves_nothing_until_released_and_can_still_be_stopped() {
        use std::time::Duration;
        let gate = Arc::new(DeviceGate::new().unwrap());
        let (tx, rx) = mpsc::channel();
        let notifiers = vec![EventFd::new(0).unwrap()];
        let kick = notifiers[0].try_clone().unwrap();
        let worker =
            Worker::spawn_gated("test-held", notifiers, Recorder(tx), Some(gate.clone())).unwrap();
        gate.hold(Duration::from_secs(5)).unwrap();
        kick.write(1).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a held worker served a kick"
        );
        gate.release();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);

        // Held again, then stopped as a save does: the parked worker ends.
        gate.hold(Duration::from_secs(5)).unwrap();
        assert!(worker.stop().is_some());
        gate.release();
    }

    /// A handler that registers an fd of its own once attached, and records its events.
    struct Registering {
        fd: RawFd,
        registry: Option<FdRegistry>,
        seen: mpsc::Sender<(u32, bool)>,
    }
    impl WorkerHandler for Registering {
        fn queue_notified(&mut self, _index: usize) -> Result<(), String> {
            Ok(())
        }
        fn attach(&mut self, registry: FdRegistry) {
            registry.add(self.fd, 7, EventSet::IN).unwrap();
            self.registry = Some(registry);
        }
        fn registered_fd_ready(&mut self, token: u32, events: EventSet) -> Result<(), String> {
            // Level-triggered: remove it so that it does not fire again.
            if let Some(r) = &self.registry {
                r.remove(self.fd).map_err(|e| e.to_string())?;
            }
            self.seen
                .send((token, events.contains(EventSet::IN)))
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn registered_fds_come_back_with_their_token() {
        let (tx, rx) = mpsc::channel();
        let own = EventFd::new(0).unwrap();
        let handler = Registering {
            fd: own.as_raw_fd(),
            registry: None,
            seen: tx,
        };
        let worker =
            Worker::spawn("test-registry", vec![EventFd::new(0).unwrap()], handler).unwrap();
        own.write(1).unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            (7, true)
        );
        assert!(worker.stop().is_some());
    }
}
