//! `vireo-agent session`: runs as the desktop user inside the graphical session, owns
//! the session's clipboard (the [`X11Clipboard`]: arboard serves what it writes, XFixes
//! says when another program copies) and offers it to the system agent over its local
//! socket. It reconnects by itself when the agent restarts, exits when the X connection
//! ends (the session is over) or when the agent tells it a newer session took over.
//!
//! The rules on this side: a copy made in the session is grabbed (`serial` counting our
//! grabs) and its content kept, so a request is answered from what was copied even after
//! the owner exits; what the agent writes is remembered as ours, so XFixes reporting our
//! own write is not grabbed back (no echo).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::link::{self, FrameReader, FromAgent, LinkError};
use crate::agent::clipboard::x11::X11Clipboard;
use crate::agent::clipboard::{Entries, Payload, SessionClipboard};
use crate::agent::log;
use crate::protocol::clipboard::{format_name, too_large_text};
use crate::protocol::{
    error_code, Capabilities, ClipboardContent, ClipboardData, ClipboardGrab, ClipboardRelease,
    ClipboardRequest, ErrorReply, Hello, Message, NO_REPLY, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};

/// How long the agent may take to answer our hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A write the agent does not take within this is a dead agent.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
const HELLO_ID: u32 = 1;

pub struct SessionConfig {
    pub socket: PathBuf,
    pub limit: usize,
}

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The X connection ended: the session is over.
    SessionOver,
    /// The agent said another session owns the clipboard (or refused us): its words.
    StoodDown(String),
}

enum Event {
    XChanged,
    XEnded,
    /// What connection number `.0`'s reader got.
    Agent(u64, Result<FromAgent, LinkError>),
}

/// What this session last saw of its clipboard, and what it told the agent.
struct Held {
    entries: Entries,
    /// The entries our last write produced: XFixes reporting them is our own echo.
    own: Option<Entries>,
    /// Our current grab towards the agent.
    grab: Option<u32>,
    serial: u32,
}

pub fn run(config: &SessionConfig) -> Result<SessionEnd, String> {
    let mut x = X11Clipboard::open()?;
    let (tx, rx) = mpsc::channel();
    let (changed, ended) = (tx.clone(), tx.clone());
    x.watch_until_closed(
        move || changed.send(Event::XChanged).is_ok(),
        move || {
            let _ = ended.send(Event::XEnded);
        },
    )?;
    let mut held = Held {
        entries: x.read(config.limit).unwrap_or_default(),
        own: None,
        grab: None,
        serial: 0,
    };
    let mut backoff = BACKOFF.0;
    let mut conn_no = 0u64;
    let mut told_unreachable = false;
    loop {
        conn_no += 1;
        match connect(config, conn_no, tx.clone()) {
            Ok(Connected::Up(mut stream)) => {
                log(format_args!(
                    "session: connected to {}",
                    config.socket.display()
                ));
                told_unreachable = false;
                backoff = BACKOFF.0;
                let mut link = Link {
                    stream: &mut stream,
                    x: &mut x,
                    held: &mut held,
                    limit: config.limit,
                };
                match link.serve(&rx, conn_no) {
                    Ok(Some(end)) => return Ok(end),
                    Ok(None) => log(format_args!("session: the agent went away; reconnecting")),
                    Err(e) => log(format_args!("session: {e}; reconnecting")),
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            Ok(Connected::Refused(why)) => return Ok(SessionEnd::StoodDown(why)),
            Err(e) => {
                if !told_unreachable {
                    log(format_args!("session: {e}; retrying"));
                    told_unreachable = true;
                }
            }
        }
        // Wait before the next try, following the session meanwhile.
        if let Some(end) = wait_offline(&rx, &mut x, &mut held, config.limit, backoff) {
            return Ok(end);
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// Waits `wait`, keeping up with the session's clipboard; `Some` when the session ended.
fn wait_offline(
    rx: &Receiver<Event>,
    x: &mut X11Clipboard,
    held: &mut Held,
    limit: usize,
    wait: Duration,
) -> Option<SessionEnd> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(Event::XEnded) | Err(RecvTimeoutError::Disconnected) => {
                return Some(SessionEnd::SessionOver)
            }
            Ok(Event::XChanged) => {
                if let Some(entries) = read_x(x, limit) {
                    held.entries = entries;
                    held.own = None;
                }
            }
            Ok(Event::Agent(..)) => {}
            Err(RecvTimeoutError::Timeout) => return None,
        }
    }
}

fn read_x(x: &mut X11Clipboard, limit: usize) -> Option<Entries> {
    for attempt in 0..3 {
        match x.read(limit) {
            Ok(entries) => return Some(entries),
            Err(why) => log(format_args!(
                "session: reading the clipboard ({attempt}): {why}"
            )),
        }
    }
    None
}

enum Connected {
    Up(UnixStream),
    Refused(String),
}

/// Connects and says hello; the reader thread then feeds `events`.
fn connect(
    config: &SessionConfig,
    conn_no: u64,
    events: Sender<Event>,
) -> Result<Connected, String> {
    let mut stream = UnixStream::connect(&config.socket)
        .map_err(|e| format!("cannot reach the agent at {}: {e}", config.socket.display()))?;
    let io = |e: std::io::Error| e.to_string();
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
    stream.set_read_timeout(Some(HELLO_TIMEOUT)).map_err(io)?;
    let hello = Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        capabilities: Capabilities::CLIPBOARD,
        software: concat!("vireo-agent session ", env!("CARGO_PKG_VERSION")).into(),
    };
    // A refusal may already be waiting: read the answer even if this write fails.
    let sent = link::send(&mut stream, HELLO_ID, &Message::Hello(hello));
    let mut reader = FrameReader::new(stream.try_clone().map_err(io)?);
    let answer = reader
        .next_payload()
        .and_then(|p| link::from_agent(&p, HELLO_ID));
    match answer {
        Ok(FromAgent::HelloReply(Message::Hello(_))) => {}
        Ok(FromAgent::HelloReply(Message::Error(e)) | FromAgent::StandDown(e)) => {
            return Ok(Connected::Refused(e.text))
        }
        Ok(_) => return Err("the agent did not answer the hello".into()),
        Err(e) => return Err(sent.err().map_or(e.to_string(), |s| s.to_string())),
    }
    stream.set_read_timeout(None).map_err(io)?;
    std::thread::Builder::new()
        .name("vireo-session-reader".into())
        .spawn(move || loop {
            let message = reader
                .next_payload()
                .and_then(|p| link::from_agent(&p, HELLO_ID));
            let last = message.is_err();
            if events.send(Event::Agent(conn_no, message)).is_err() || last {
                return;
            }
        })
        .map_err(io)?;
    Ok(Connected::Up(stream))
}

/// One connection to the agent.
struct Link<'a> {
    stream: &'a mut UnixStream,
    x: &'a mut X11Clipboard,
    held: &'a mut Held,
    limit: usize,
}

impl Link<'_> {
    /// Serves until the agent goes (`None`), or the session ends or stands down.
    fn serve(
        &mut self,
        rx: &Receiver<Event>,
        conn_no: u64,
    ) -> Result<Option<SessionEnd>, LinkError> {
        // The agent learns what the session holds: a grab, or a release of serial 0.
        self.held.grab = None;
        self.announce()?;
        loop {
            match rx.recv() {
                Ok(Event::XEnded) | Err(_) => return Ok(Some(SessionEnd::SessionOver)),
                Ok(Event::XChanged) => self.x_changed()?,
                Ok(Event::Agent(n, _)) if n != conn_no => {}
                Ok(Event::Agent(_, Err(LinkError::Closed))) => return Ok(None),
                Ok(Event::Agent(_, Err(e))) => return Err(e),
                Ok(Event::Agent(_, Ok(FromAgent::StandDown(e)))) => {
                    return Ok(Some(SessionEnd::StoodDown(e.text)))
                }
                Ok(Event::Agent(_, Ok(FromAgent::Request(id, m)))) => {
                    let reply = self.answer(m);
                    link::send(self.stream, id, &reply)?;
                }
                Ok(Event::Agent(_, Ok(FromAgent::HelloReply(m)))) => {
                    return Err(LinkError::Unexpected {
                        id: HELLO_ID,
                        kind: m.kind(),
                    })
                }
            }
        }
    }

    fn announce(&mut self) -> Result<(), LinkError> {
        if self.held.entries.is_empty() {
            let serial = self.held.grab.take().unwrap_or(0);
            let release = ClipboardRelease { serial };
            return link::send(self.stream, NO_REPLY, &Message::ClipboardRelease(release));
        }
        self.held.serial = self.held.serial.wrapping_add(1).max(1);
        self.held.grab = Some(self.held.serial);
        let grab = ClipboardGrab {
            serial: self.held.serial,
            formats: self.held.entries.iter().map(|(f, _)| *f).collect(),
        };
        link::send(self.stream, NO_REPLY, &Message::ClipboardGrab(grab))
    }

    /// XFixes: the selection's owner changed. Our own write coming back is no news.
    fn x_changed(&mut self) -> Result<(), LinkError> {
        let Some(entries) = read_x(self.x, self.limit) else {
            return Ok(());
        };
        if self.held.own.as_ref() == Some(&entries) || self.held.entries == entries {
            self.held.entries = entries;
            return Ok(());
        }
        self.held.own = None;
        self.held.entries = entries;
        if self.held.entries.is_empty() && self.held.grab.is_none() {
            return Ok(());
        }
        self.announce()
    }

    fn answer(&mut self, request: Message) -> Message {
        let kind = request.kind();
        let result = match request {
            Message::ClipboardRequest(r) => self.serve_request(r),
            Message::ClipboardData(d) => self.write(ClipboardContent::one(d.format, d.data)),
            Message::ClipboardRelease(_) => self.write(ClipboardContent::default()),
            _ => Err((
                error_code::UNEXPECTED,
                "not a request the session answers".into(),
            )),
        };
        result.unwrap_or_else(|(code, text)| {
            Message::Error(ErrorReply {
                code,
                in_reply_to_kind: kind,
                text,
            })
        })
    }

    fn serve_request(&self, request: ClipboardRequest) -> Result<Message, (u16, String)> {
        if self.held.grab != Some(request.serial) {
            let text = format!("grab {} is not the session's current grab", request.serial);
            return Err((error_code::FAILED, text));
        }
        let found = self.held.entries.iter().find(|(f, _)| *f == request.format);
        match found.map(|(_, p)| p) {
            Some(Payload::Data(data)) => Ok(Message::ClipboardData(ClipboardData {
                serial: request.serial,
                format: request.format,
                data: data.clone(),
            })),
            Some(Payload::TooLarge(len)) => Err((
                error_code::TOO_LARGE,
                too_large_text(request.format, *len, self.limit),
            )),
            Some(Payload::Refused(text)) => Err((error_code::TOO_LARGE, text.clone())),
            None => Err((
                error_code::FAILED,
                format!(
                    "the session clipboard holds no {}",
                    format_name(request.format)
                ),
            )),
        }
    }

    /// The agent's content onto the session clipboard (empty: clear it).
    fn write(&mut self, content: ClipboardContent) -> Result<Message, (u16, String)> {
        content
            .check_limit(self.limit)
            .map_err(|t| (error_code::TOO_LARGE, t))?;
        let written = if content.is_empty() {
            self.x.clear().map(|()| Vec::new())
        } else {
            self.x.write(&content, self.limit)
        };
        let entries = written.map_err(|t| (error_code::FAILED, t))?;
        self.held.own = Some(entries.clone());
        self.held.entries = entries;
        // The agent's data now, not a copy of ours.
        self.held.grab = None;
        Ok(Message::Pong(Vec::new()))
    }
}
