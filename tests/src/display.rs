//! A display client of the engine's control socket, as the app is one: it sends
//! requests, reads answers and pushed events (JSON lines), and collects the memfds that
//! ride on `display` answers and `mode` events (SCM_RIGHTS). Also the probe guest's test
//! image, recomputed on the host.

use std::collections::VecDeque;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::Value;

/// The probe guest's `gpu::pattern` (tests/probe-guest/src/gpu.rs), as R, G, B, A: a
/// 64x64 checkerboard of 8-pixel squares at the top left, then gradients.
pub fn probe_pattern(x: u32, y: u32) -> [u8; 4] {
    if x < 64 && y < 64 {
        let v = if (x / 8 + y / 8) & 1 == 0 { 0xff } else { 0 };
        return [v, v, v, 0xff];
    }
    [x as u8, y as u8, ((x / 4) ^ (y / 4)) as u8, 0xff]
}

/// The probe guest's cursor image pixel (`gpu::cursor_pixel`), as R, G, B, A.
pub fn probe_cursor_pixel(x: u32, y: u32) -> [u8; 4] {
    [0x80, (y * 4) as u8, (x * 4) as u8, 0xff]
}

/// One line from the engine, with the fd that came with it.
pub struct Line {
    pub json: Value,
    pub fd: Option<OwnedFd>,
    pub at: Instant,
}

pub struct DisplayClient {
    stream: UnixStream,
    buf: Vec<u8>,
    /// fds received, in order, not yet matched to a line.
    fds: VecDeque<OwnedFd>,
    /// Lines read while waiting for an answer (events), in order.
    pending: VecDeque<Line>,
}

impl DisplayClient {
    /// Connects to `path`, waiting up to `wait` for the engine to create it.
    pub fn connect(path: &Path, wait: Duration) -> DisplayClient {
        let end = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => panic!("cannot connect to {path:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        DisplayClient {
            stream,
            buf: Vec::new(),
            fds: VecDeque::new(),
            pending: VecDeque::new(),
        }
    }

    /// Reads the next line (blocking up to `timeout`); `None` on timeout or EOF.
    fn read_line(&mut self, timeout: Duration) -> Option<Line> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let json: Value = serde_json::from_slice(&line).expect("the engine sends JSON");
                let carries_fd = json.get("enabled") == Some(&Value::Bool(true))
                    && (json.get("response").is_some_and(|r| r == "display")
                        || json.get("event").is_some_and(|e| e == "mode"));
                let fd = if carries_fd {
                    self.fds.pop_front()
                } else {
                    None
                };
                return Some(Line {
                    json,
                    fd,
                    at: Instant::now(),
                });
            }
            let left = end.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 65536];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let (n, fds) = {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .ok()?;
                let mut fds = Vec::new();
                for c in msg.cmsgs().ok()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these fds for us; nothing
                        // else owns them.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                (msg.bytes, fds)
            };
            if n == 0 {
                return None;
            }
            self.fds.extend(fds);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `request` and returns its answer; events read meanwhile wait in order.
    pub fn ask(&mut self, request: &str) -> Line {
        self.stream
            .write_all(format!("{request}\n").as_bytes())
            .expect("the engine reads requests");
        loop {
            let line = self
                .read_line(Duration::from_secs(20))
                .unwrap_or_else(|| panic!("no answer to {request}"));
            if line.json.get("response").is_some() {
                return line;
            }
            self.pending.push_back(line);
        }
    }

    /// The next pushed event, waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Line> {
        if let Some(line) = self.pending.pop_front() {
            return Some(line);
        }
        self.read_line(timeout)
    }

    /// Events until one satisfies `want` (returned) or `timeout` passes (panics, naming
    /// what came instead).
    pub fn wait_event(&mut self, timeout: Duration, want: impl Fn(&Value) -> bool) -> Line {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(line) if want(&line.json) => return line,
                Some(line) => seen.push(line.json.to_string()),
                None => panic!("no such event; got {seen:#?}"),
            }
        }
    }
}

/// `json[key]` as u64 (panics naming the key if missing).
pub fn field(json: &Value, key: &str) -> u64 {
    json.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}
