//! The control socket: a Unix socket in the VM's runtime directory where the app (or a
//! test, or `socat`) sends `protocol::Request`s and reads `protocol::Response`s, one JSON
//! line each. One thread serves the listener and every client through one epoll loop;
//! the VM's owner stops it at teardown.

pub mod protocol;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use protocol::{encode_response, parse_request, Request, Response};

/// Answers requests; the VM implements it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;
}

/// A client may not send a line longer than this (a runaway client is disconnected).
const MAX_LINE: usize = 64 << 10;
/// More clients than this are turned away.
const MAX_CLIENTS: usize = 16;
const TOKEN_STOP: u64 = 0;
const TOKEN_LISTENER: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control socket {0} is in use by another engine: stop that VM first")]
    InUse(PathBuf),
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the control thread: {0}")]
    Thread(#[source] io::Error),
}

pub struct ControlServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ControlServer {
    /// Listens on `path` (a stale socket left by a dead engine is replaced; a live one
    /// is an error) and serves requests with `handler` until stopped.
    pub fn start(path: &Path, handler: Arc<dyn Handler>) -> Result<Self, Error> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InUse(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| Error::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?;
        let epoll = Epoll::new().map_err(Error::Thread)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_STOP),
            )
            .map_err(Error::Thread)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(Error::Thread)?;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .stack_size(256 << 10)
            .spawn(move || serve(epoll, listener, handler))
            .map_err(Error::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Client {
    stream: UnixStream,
    pending: Vec<u8>,
}

fn serve(epoll: Epoll, listener: UnixListener, handler: Arc<dyn Handler>) {
    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut next_token = TOKEN_LISTENER + 1;
    let mut events = vec![EpollEvent::default(); MAX_CLIENTS + 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for event in &events[..n] {
            match event.data() {
                TOKEN_STOP => return,
                TOKEN_LISTENER => accept(&epoll, &listener, &mut clients, &mut next_token),
                token => {
                    let keep = clients
                        .get_mut(&token)
                        .is_some_and(|c| serve_client(c, handler.as_ref()));
                    if !keep {
                        if let Some(c) = clients.remove(&token) {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                c.stream.as_raw_fd(),
                                EpollEvent::default(),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn accept(
    epoll: &Epoll,
    listener: &UnixListener,
    clients: &mut HashMap<u64, Client>,
    next_token: &mut u64,
) {
    while let Ok((stream, _)) = listener.accept() {
        if clients.len() >= MAX_CLIENTS {
            let mut s = stream;
            let _ = s.write_all(
                encode_response(&Response::Error {
                    message: "too many clients".into(),
                })
                .as_bytes(),
            );
            continue;
        }
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let token = *next_token;
        *next_token += 1;
        if epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )
            .is_ok()
        {
            clients.insert(
                token,
                Client {
                    stream,
                    pending: Vec::new(),
                },
            );
        }
    }
}

/// Reads what the client sent and answers each complete line. False: drop the client.
fn serve_client(client: &mut Client, handler: &dyn Handler) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match client.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => client.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    while let Some(end) = client.pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = client.pending.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        if text.trim().is_empty() {
            continue;
        }
        let response = match parse_request(&text) {
            Ok(request) => handler.handle(request),
            Err(error) => error,
        };
        // Responses are small; a client that does not read them is dropped.
        client.stream.set_nonblocking(false).ok();
        let sent = client
            .stream
            .write_all(encode_response(&response).as_bytes())
            .is_ok();
        client.stream.set_nonblocking(true).ok();
        if !sent {
            return false;
        }
    }
    if client.pending.len() > MAX_LINE {
        let _ = client.stream.write_all(
            encode_response(&Response::Error {
                message: "request line too long".into(),
            })
            .as_bytes(),
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, request: Request) -> Response {
            match request {
                Request::Status {} => Response::Status {
                    state: "running".into(),
                    vcpus: 1,
                    memory_mib: 64,
                },
                _ => Response::Ok,
            }
        }
    }

    #[test]
    fn serves_clients_and_survives_bad_lines() {
        let path =
            std::env::temp_dir().join(format!("vireo-control-test-{}.sock", std::process::id()));
        let server = ControlServer::start(&path, Arc::new(Echo)).unwrap();
        assert!(matches!(
            ControlServer::start(&path, Arc::new(Echo)),
            Err(Error::InUse(_))
        ));
        let stream = UnixStream::connect(&path).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        w.write_all(b"{\"request\":\"status\"}\ngarbage\n\n{\"request\":\"power-off\"}\n")
            .unwrap();
        let mut line = String::new();
        for expected in [
            "\"state\":\"running\"",
            "bad request",
            "\"response\":\"ok\"",
        ] {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains(expected), "{line}");
        }
        drop(server);
        assert!(!path.exists(), "socket removed at teardown");
    }
}
