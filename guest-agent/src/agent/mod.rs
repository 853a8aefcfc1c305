//! The guest side: listen on vsock (or a Unix socket), serve one host connection at a
//! time, answer info/ping/power requests, and keep the guest clock in sync with the host.
//!
//! A connection that drops and is replaced by a new one is what a transport reset looks
//! like from inside the guest (the engine sends one after a restore), so every connection
//! after the first starts with a sync that steps the clock.

pub mod clipboard;
pub mod clock;
pub mod desktop;
pub mod display;
pub mod fs;
pub mod power;
pub mod session;
pub mod timesync;
pub mod transport;

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use crate::protocol::FrameDecoder;
use crate::util::error_chain;
use clipboard::GuestClipboard;
use clock::Clock;
use display::DisplayProbe;
use power::PowerControl;
use session::Session;
use timesync::TimeSyncConfig;
use transport::{AgentListener, AgentStream};

/// What the agent acts on; tests inject a simulated clock and a recording power control.
pub struct AgentServices {
    pub clock: Arc<dyn Clock>,
    pub power: Arc<dyn PowerControl>,
    pub time_sync: TimeSyncConfig,
    /// Shared folders, when this agent mounts them.
    pub shares: Option<Arc<fs::ShareMounts>>,
    /// The guest clipboard, shared by all connections (it outlives each).
    pub clipboard: Arc<GuestClipboard>,
    pub display: DisplayProbe,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("connection I/O failed")]
    Io(#[from] io::Error),
    #[error("closed the connection after a protocol error")]
    Protocol,
}

/// A write stuck this long means the host stopped reading: give the connection up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Room offered to each socket read: a whole 1 MiB file chunk in one or two reads,
/// straight into the frame decoder.
const READ_ROOM: usize = 512 * 1024;
/// Upper bound on a read's wait, so a deadline set while blocked is not missed by long.
const MAX_READ_WAIT: Duration = Duration::from_secs(1);

pub(crate) fn log(args: std::fmt::Arguments<'_>) {
    eprintln!("vireo-agent: {args}");
}

/// Serves one connection until the host closes it (`Ok`) or it fails.
pub fn serve_connection(
    stream: &mut AgentStream,
    services: &AgentServices,
    restored: bool,
) -> Result<(), ServeError> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_big_buffers();
    // FUSE threads write their requests too: one writer, under a lock.
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let link = Arc::new(fs::link::FsLink::new(Arc::clone(&writer)));
    let _closer = LinkCloser {
        link: Arc::clone(&link),
        shares: services.shares.clone(),
    };
    let mut session = Session::new(services, restored);
    session.set_fs_link(Arc::clone(&link));
    // The clipboard worker wakes this loop when the guest clipboard changes.
    let (wake, waker) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    services.clipboard.set_waker(waker);
    let mut decoder = FrameDecoder::new();
    // Frames waiting for the writer: while a FUSE thread holds it (blocked on a full
    // socket, say) this loop goes on reading, so that the host, whose answers fill the
    // other direction, is never stuck waiting for us while we wait for it.
    let mut outbox: Vec<Vec<u8>> = Vec::new();
    loop {
        outbox.extend(session.take_outbox());
        if !outbox.is_empty() {
            let free = match writer.try_lock() {
                Ok(w) => Some(w),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut w) = free {
                for frame in outbox.drain(..) {
                    if let Err(err) = w.write_all(&frame) {
                        // A host that wrote its last message (clipboard data) and closed:
                        // what it wrote is still here to act on, though nothing can be
                        // answered now.
                        drop(w);
                        take_last_words(stream, &mut decoder, &mut session);
                        return Err(err.into());
                    }
                }
            }
        }
        if let Some(action) = session.take_power() {
            if let Err(err) = services.power.power(action) {
                log(format_args!("{action:?} failed: {}", error_chain(&err)));
            }
        }
        if session.should_close() {
            // The last words (an error) go out before the close, however long it takes.
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            for frame in outbox.drain(..) {
                let _ = w.write_all(&frame);
            }
            return Err(ServeError::Protocol);
        }
        let now = Instant::now();
        let wait = session
            .deadline()
            .map_or(MAX_READ_WAIT, |d| d.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), MAX_READ_WAIT);
        // With frames held back, come back soon to try the writer again.
        let wait = if outbox.is_empty() {
            wait
        } else {
            wait.min(Duration::from_millis(5))
        };
        stream.set_read_timeout(Some(wait))?;
        if !wait_readable(stream, &wake, wait)? {
            session.tick(Instant::now());
            continue;
        }
        match decoder.fill_with(READ_ROOM, |room| stream.read(room)) {
            Ok(0) => return Ok(()),
            Ok(_) => loop {
                match decoder.next_frame_with(|p| session.on_payload(p, Instant::now())) {
                    Ok(Some(())) => {}
                    Ok(None) => break,
                    Err(err) => {
                        session.on_frame_error(err);
                        break;
                    }
                }
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
        session.tick(Instant::now());
    }
}

/// When a connection ends, however it ends: its shared-folder requests fail and the
/// mounts stop using it.
struct LinkCloser {
    link: Arc<fs::link::FsLink>,
    shares: Option<Arc<fs::ShareMounts>>,
}

impl Drop for LinkCloser {
    fn drop(&mut self) {
        if let Some(shares) = &self.shares {
            shares.detach(&self.link);
        }
        self.link.close();
    }
}

/// Reads what is left in a connection whose writing side failed, for a short while.
fn take_last_words(
    stream: &mut AgentStream,
    decoder: &mut FrameDecoder,
    session: &mut Session<'_>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    while let Ok(1..) = decoder.fill_with(READ_ROOM, |room| stream.read(room)) {
        while let Ok(Some(())) = decoder.next_frame_with(|p| session.on_payload(p, Instant::now()))
        {
        }
    }
}

/// Waits up to `wait` for the stream to become readable (true) or the wake socket to be
/// poked (false, its bytes drained).
fn wait_readable(stream: &AgentStream, wake: &UnixStream, wait: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [
        PollFd::new(stream.as_fd(), PollFlags::POLLIN),
        PollFd::new(wake.as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
    let (stream_ready, woken) = (ready(&fds[0]), ready(&fds[1]));
    if woken {
        let mut sink = [0u8; 64];
        while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
    }
    Ok(stream_ready)
}

/// Accepts host connections one at a time, forever.
pub fn run(listener: &AgentListener, services: &AgentServices) -> ! {
    let mut served = 0u64;
    loop {
        let mut stream = match listener.accept() {
            Ok(stream) => stream,
            Err(err) => {
                // EMFILE and the like: wait instead of spinning.
                log(format_args!("{}", error_chain(&err)));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let restored = served > 0;
        log(format_args!(
            "host connected{}",
            if restored {
                " (transport reset: treating as restored)"
            } else {
                ""
            }
        ));
        match serve_connection(&mut stream, services, restored) {
            Ok(()) => log(format_args!("host disconnected")),
            Err(err) => log(format_args!("connection ended: {}", error_chain(&err))),
        }
        served += 1;
    }
}
