//! The host's side of the vsock tests and benchmark: Unix-socket servers at `PATH_P`
//! for guest-initiated connections (echo, sink, source), and the `CONNECT <port>`
//! handshake for host-initiated ones. Each server accepts on its own thread and serves
//! each connection on another; dropping the server stops it and removes its socket.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a server saw on one connection.
#[derive(Clone, Debug, Default)]
pub struct ConnRecord {
    /// Bytes received.
    pub bytes: u64,
    /// The bytes themselves, when the server keeps them (`keep`).
    pub data: Vec<u8>,
    /// The connection ended with EOF (as opposed to an error).
    pub eof: bool,
}

/// What a server does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Sends back everything it reads.
    Echo,
    /// Reads and drops; answers one byte once it has `bytes`.
    Sink { bytes: u64 },
    /// Sends `bytes` zeros, then reads until EOF.
    Source { bytes: u64 },
    /// Reads until EOF and closes (connect/close cycles).
    Close,
}

/// A Unix-socket server at `PATH_<port>`.
pub struct Server {
    path: PathBuf,
    /// The listening socket, shut down in `Drop` to wake the accepting thread.
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// One record per connection, in accept order.
    pub records: Arc<Mutex<Vec<ConnRecord>>>,
}

/// `<socket>_<port>`: where guest connections to host port `port` go.
pub fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

impl Server {
    /// Serves guest connections to host port `port` of the VM whose vsock socket is
    /// `socket`; with `keep`, records each connection's bytes.
    pub fn start(socket: &Path, port: u32, mode: Mode, keep: bool) -> Server {
        let path = port_path(socket, port);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the host-side vsock server");
        let waker = listener.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let (stop2, records2) = (stop.clone(), records.clone());
        // Blocking accepts, so that a guest connecting fast never finds the backlog
        // full; `Drop` wakes the thread with a connection of its own.
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let index = {
                    let mut r = records2.lock().unwrap();
                    r.push(ConnRecord::default());
                    r.len() - 1
                };
                let records = records2.clone();
                workers.push(std::thread::spawn(move || {
                    let rec = serve(stream, mode, keep);
                    records.lock().unwrap()[index] = rec;
                }));
                workers.retain(|w: &JoinHandle<()>| !w.is_finished());
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Server {
            path,
            listener: waker,
            stop,
            thread: Some(thread),
            records,
        }
    }

    /// Connections that ended so far.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A listening socket shut down fails its pending and future accepts, which ends
        // the thread's loop (its socket file may already be gone, so connecting to it
        // is no way to wake it).
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(mut stream: UnixStream, mode: Mode, keep: bool) -> ConnRecord {
    let mut rec = ConnRecord::default();
    let mut buf = vec![0u8; 256 << 10];
    match mode {
        Mode::Source { bytes } => {
            let zeros = vec![0u8; 256 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                if stream.write_all(&zeros[..n]).is_err() {
                    return rec;
                }
                left -= n as u64;
            }
        }
        Mode::Sink { .. } | Mode::Echo | Mode::Close => {}
    }
    let mut acked = false;
    let mut echo_failed = false;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                rec.eof = true;
                break;
            }
            Ok(n) => n,
            Err(_) => break,
        };
        rec.bytes += n as u64;
        if keep {
            rec.data.extend_from_slice(&buf[..n]);
        }
        match mode {
            // A guest that shut its receiving side down makes the echo fail (EPIPE):
            // keep reading what it still sends.
            Mode::Echo if !echo_failed => echo_failed = stream.write_all(&buf[..n]).is_err(),
            Mode::Sink { bytes } if !acked && rec.bytes >= bytes => {
                acked = true;
                let _ = stream.write_all(b"!");
            }
            _ => {}
        }
    }
    rec
}

/// A host client's connection to guest port `port` through the VM's socket: writes
/// `CONNECT <port>\n`, reads `OK <host port>\n`; Err with what came instead.
pub fn connect(socket: &Path, port: u32) -> Result<(UnixStream, u32), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    // Byte by byte, so nothing after the line is taken from the stream.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {line:?}")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let host_port = line
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("unexpected answer {line:?}"))?;
    stream.set_read_timeout(None).unwrap();
    Ok((stream, host_port))
}
