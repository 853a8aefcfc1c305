//! One thread per activated device, owning its queues: an epoll loop over a kill eventfd,
//! each queue's notify eventfd and any backend fds the device adds (house style 3).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

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
}

/// A running worker thread.
pub struct Worker<H: WorkerHandler> {
    kill: EventFd,
    thread: Option<JoinHandle<H>>,
}

/// Epoll tokens: 0 is the kill event, then one per queue, then the backends.
const TOKEN_KILL: u64 = 0;

impl<H: WorkerHandler> Worker<H> {
    /// Starts a thread named `name` serving `notifiers` (one eventfd per queue).
    pub fn spawn(name: &str, notifiers: Vec<EventFd>, handler: H) -> io::Result<Self> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
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
        let kill_for_thread = kill.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(512 << 10)
            .spawn(move || run(epoll, kill_for_thread, notifiers, handler))?;
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
    epoll: Epoll,
    kill: EventFd,
    notifiers: Vec<EventFd>,
    mut handler: H,
) -> H {
    let mut events = vec![EpollEvent::default(); notifiers.len() + 8];
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
        for event in &events[..n] {
            let token = event.data();
            let result = if token == TOKEN_KILL {
                let _ = kill.read();
                return handler;
            } else if token < backend_base {
                let index = (token - 1) as usize;
                // Consume the kick first: a kick that arrives while we drain re-arms it.
                let _ = notifiers[index].read();
                handler.queue_notified(index)
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
}
