//! The spawner thread: it creates threads for filtered ones, so that a new thread starts
//! without its creator's filter (seccomp filters are inherited at clone) and installs
//! its own.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::{Builder, JoinHandle};

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the spawner; from `sandbox::init`, before any filter exists.
pub(super) fn start() -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    Builder::new()
        .name("spawner".into())
        .stack_size(64 << 10)
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

pub(super) fn spawn<T, F>(builder: Builder, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(spawner) = SPAWNER.get() else {
        return builder.spawn(f);
    };
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = done_tx.send(builder.spawn(f));
    });
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the spawner thread has ended"))?;
    done_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped a request"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_started_through_the_spawner_runs_and_joins() {
        start().unwrap();
        let handle = spawn(Builder::new().name("t".into()), || 41 + 1).unwrap();
        assert_eq!(handle.join().unwrap(), 42);
    }
}
