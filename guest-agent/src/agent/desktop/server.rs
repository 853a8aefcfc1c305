//! The system agent's end of the session socket: binds it (mode 0666 in a 0755
//! directory: any local user may knock, [`PeerRule`] decides from `SO_PEERCRED`), checks
//! each peer, takes its hello, hands its clipboard to the worker as a [`RemoteSession`]
//! and reads what it sends until it goes.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::link::{self, FrameReader, FromSession, LinkError};
use super::peer::PeerRule;
use super::remote::{LinkConn, RemoteSession};
use crate::agent::clipboard::GuestClipboard;
use crate::agent::log;
use crate::protocol::{
    error_code, Capabilities, ErrorReply, Hello, Message, NO_REPLY, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};

/// A client must say hello this soon.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that stops reading is given up rather than blocking the clipboard worker.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still owing their hello: past this many, new ones are turned away (a
/// local user opening sockets by the thousand costs a thread each for up to 5 s).
const MAX_UNGREETED: usize = 16;

/// Counts a connection among the ungreeted until dropped.
struct Ungreeted;

static UNGREETED: AtomicUsize = AtomicUsize::new(0);

impl Ungreeted {
    fn enter() -> Option<Self> {
        let before = UNGREETED.fetch_add(1, Ordering::SeqCst);
        let entered = Self;
        (before < MAX_UNGREETED).then_some(entered)
    }
}

impl Drop for Ungreeted {
    fn drop(&mut self) {
        UNGREETED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds `path` (replacing a stale socket, refusing a live one) and serves session
/// clients from a thread.
pub fn serve(path: &Path, clipboard: Arc<GuestClipboard>, rule: PeerRule) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    // A stale socket is replaced; a live one belongs to another agent and is left alone.
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another agent serves desktop sessions there",
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    std::thread::Builder::new()
        .name("vireo-session-accept".into())
        .spawn(move || accept_loop(&listener, &clipboard, &rule))?;
    Ok(())
}

fn accept_loop(listener: &UnixListener, clipboard: &Arc<GuestClipboard>, rule: &PeerRule) {
    static LINKS: AtomicU64 = AtomicU64::new(1);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let uid = match rule.check(&stream) {
            Ok(uid) => uid,
            Err(why) => {
                log(format_args!("session socket: refused: {why}"));
                let _ = stream.set_write_timeout(Some(HELLO_TIMEOUT));
                let _ = link::send(&mut stream, NO_REPLY, &refusal(why));
                continue;
            }
        };
        let Some(ungreeted) = Ungreeted::enter() else {
            log(format_args!(
                "session socket: too many connections owe a hello"
            ));
            continue;
        };
        let link = LINKS.fetch_add(1, Ordering::SeqCst);
        let clipboard = Arc::clone(clipboard);
        let spawned = std::thread::Builder::new()
            .name("vireo-session-link".into())
            .spawn(move || {
                match serve_session(stream, uid, link, &clipboard, ungreeted) {
                    Ok(()) => log(format_args!("session of uid {uid}: gone")),
                    Err(e) => log(format_args!("session of uid {uid}: {e}")),
                }
                clipboard.remote_gone(link);
            });
        if let Err(e) = spawned {
            log(format_args!("session socket: no thread for a client: {e}"));
        }
    }
}

fn refusal(text: String) -> Message {
    Message::Error(ErrorReply {
        code: error_code::NOT_SUPPORTED,
        in_reply_to_kind: 0,
        text,
    })
}

/// One session client, from its hello until it goes (or breaks the rules).
fn serve_session(
    stream: UnixStream,
    uid: u32,
    link: u64,
    clipboard: &GuestClipboard,
    ungreeted: Ungreeted,
) -> Result<(), LinkError> {
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = FrameReader::new(stream.try_clone()?);
    let conn = Arc::new(LinkConn::new(stream.try_clone()?));
    let result = hello(&mut reader, &conn).and_then(|()| {
        drop(ungreeted);
        stream.set_read_timeout(None)?;
        log(format_args!(
            "session of uid {uid}: its clipboard is the guest's"
        ));
        clipboard.attach_remote(RemoteSession {
            link,
            uid,
            conn: Arc::clone(&conn),
        });
        read_loop(&mut reader, &conn, link, clipboard)
    });
    if let Err(LinkError::Unexpected { .. } | LinkError::Decode(_) | LinkError::Frame(_)) = &result
    {
        let why = result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        let error = ErrorReply {
            code: error_code::MALFORMED,
            in_reply_to_kind: 0,
            text: why,
        };
        let _ = conn.send(NO_REPLY, &Message::Error(error));
    }
    conn.shutdown();
    match result {
        Err(LinkError::Closed) => Ok(()),
        other => other,
    }
}

fn hello(reader: &mut FrameReader<UnixStream>, conn: &LinkConn) -> Result<(), LinkError> {
    let payload = reader.next_payload()?;
    let (id, peer) = match link::from_session(&payload)? {
        FromSession::Hello(id, peer) => (id, peer),
        other => {
            let kind = match other {
                FromSession::Grab(_) => crate::protocol::kind::CLIPBOARD_GRAB,
                FromSession::Release(_) => crate::protocol::kind::CLIPBOARD_RELEASE,
                FromSession::Reply(_, m) => m.kind(),
                FromSession::Hello(..) => crate::protocol::kind::HELLO,
            };
            return Err(LinkError::Unexpected { id: 0, kind });
        }
    };
    if peer.major != PROTOCOL_MAJOR {
        let text = format!(
            "the agent speaks protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}, the session {}.{}",
            peer.major, peer.minor
        );
        let _ = conn.send(id, &refusal(text.clone()));
        return Err(io::Error::new(io::ErrorKind::InvalidData, text).into());
    }
    let ours = Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        capabilities: Capabilities::CLIPBOARD,
        software: concat!("vireo-agent ", env!("CARGO_PKG_VERSION")).into(),
    };
    conn.send(id, &Message::Hello(ours))
        .map_err(|e| io::Error::other(e).into())
}

fn read_loop(
    reader: &mut FrameReader<UnixStream>,
    conn: &LinkConn,
    link: u64,
    clipboard: &GuestClipboard,
) -> Result<(), LinkError> {
    loop {
        let payload = reader.next_payload()?;
        match link::from_session(&payload)? {
            FromSession::Grab(grab) => {
                if conn.on_grab(grab) {
                    clipboard.remote_changed(link);
                }
            }
            FromSession::Release(release) => {
                if conn.on_release(release) {
                    clipboard.remote_changed(link);
                }
            }
            FromSession::Reply(id, message) => conn.deliver(id, message),
            FromSession::Hello(id, _) => {
                return Err(LinkError::Unexpected {
                    id,
                    kind: crate::protocol::kind::HELLO,
                })
            }
        }
    }
}
