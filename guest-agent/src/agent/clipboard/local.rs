//! `vireo-agent clipboard get|set` inside the guest: a Unix socket of the running agent's
//! (mode 0600), spoken in the same frames and messages as the host protocol, one request
//! per connection:
//!
//! - set: `ClipboardData { serial: 0, .. }` → `Pong` once the clipboard holds it, or an
//!   error (over the limit, not UTF-8 ...);
//! - get: `ClipboardRequest { serial: 0, format }` → `ClipboardData` or an error.
//!
//! With no graphical session this is the guest's clipboard; with one it is a way to
//! script it that keeps the content alive after the command exits (the agent owns it).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{GuestClipboard, LookupError};
use crate::agent::log;
use crate::protocol::clipboard::{format_name, too_large_text};
use crate::protocol::{
    decode_payload, encode_message, error_code, ClipboardContent, ClipboardData, ClipboardFormat,
    ClipboardRequest, ErrorReply, FrameDecoder, Message, DEFAULT_CLIPBOARD_LIMIT,
};

/// How long a local client may take to send its request or read the answer.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent listens by default: `/run/vireo-agent/clipboard.sock` for root,
/// else under `XDG_RUNTIME_DIR` (or the temporary directory).
pub fn default_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/vireo-agent/clipboard.sock");
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!(
        "vireo-agent-{}-clipboard.sock",
        nix::unistd::geteuid()
    ))
}

/// Binds `path` (replacing a stale socket) and serves it from a thread.
pub fn serve(path: &Path, clipboard: Arc<GuestClipboard>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("vireo-clipboard-local".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let clipboard = Arc::clone(&clipboard);
                // One thread per client: a slow one never holds the others up.
                let _ = std::thread::Builder::new()
                    .name("vireo-clipboard-client".into())
                    .spawn(move || {
                        if let Err(e) = serve_client(stream, &clipboard) {
                            log(format_args!("clipboard: local client: {e}"));
                        }
                    });
            }
        })?;
    Ok(())
}

fn serve_client(mut stream: UnixStream, clipboard: &GuestClipboard) -> io::Result<()> {
    stream.set_read_timeout(Some(LOCAL_TIMEOUT))?;
    stream.set_write_timeout(Some(LOCAL_TIMEOUT))?;
    let (id, message) = read_message(&mut stream)?;
    let failed = |code, kind_of: &Message, text: String| {
        Message::Error(ErrorReply {
            code,
            in_reply_to_kind: kind_of.kind(),
            text,
        })
    };
    let reply = match message {
        Message::ClipboardData(data) => {
            let content = ClipboardContent::one(data.format, data.data);
            let kind_of = Message::ClipboardData(ClipboardData {
                serial: 0,
                format: data.format,
                data: Vec::new(),
            });
            match clipboard.set_from_local(content) {
                Ok(()) => Message::Pong(Vec::new()),
                Err(text) if text.contains("over the limit") => {
                    failed(error_code::TOO_LARGE, &kind_of, text)
                }
                Err(text) => failed(error_code::FAILED, &kind_of, text),
            }
        }
        Message::ClipboardRequest(request) => {
            let snapshot = clipboard.snapshot();
            let kind_of = Message::ClipboardRequest(request);
            match snapshot.data(request.format, clipboard.limit()) {
                Ok(data) => Message::ClipboardData(ClipboardData {
                    serial: 0,
                    format: request.format,
                    data: data.to_vec(),
                }),
                Err(LookupError::TooLarge(text)) => failed(error_code::TOO_LARGE, &kind_of, text),
                Err(LookupError::Absent) => failed(
                    error_code::FAILED,
                    &kind_of,
                    format!(
                        "the guest clipboard holds no {}",
                        format_name(request.format)
                    ),
                ),
            }
        }
        other => failed(
            error_code::UNEXPECTED,
            &other,
            "the local socket takes clipboard get and set only".into(),
        ),
    };
    write_message(&mut stream, id, &reply)
}

fn read_message(stream: &mut UnixStream) -> io::Result<(u32, Message)> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match decoder.next_frame() {
            Ok(Some(payload)) => {
                let env = decode_payload(&payload)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return Ok((env.id, env.message));
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        decoder.push(&buf[..n]);
    }
}

fn write_message(stream: &mut UnixStream, id: u32, message: &Message) -> io::Result<()> {
    let frame =
        encode_message(id, message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    stream.write_all(&frame)
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot reach the agent at {path} (is `vireo-agent run` running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the agent failed")]
    Io(#[from] io::Error),
    #[error("{text}")]
    Agent { code: u16, text: String },
    #[error("the agent answered with message kind {0:#06x}")]
    Unexpected(u16),
}

fn call(path: &Path, message: &Message) -> Result<Message, LocalError> {
    let mut stream = UnixStream::connect(path).map_err(|source| LocalError::Connect {
        path: path.into(),
        source,
    })?;
    stream.set_read_timeout(Some(LOCAL_TIMEOUT))?;
    write_message(&mut stream, 1, message)?;
    match read_message(&mut stream)?.1 {
        Message::Error(e) => Err(LocalError::Agent {
            code: e.code,
            text: e.text,
        }),
        other => Ok(other),
    }
}

/// `vireo-agent clipboard set`.
pub fn set(path: &Path, format: ClipboardFormat, data: Vec<u8>) -> Result<(), LocalError> {
    // Past the limit the frame could not even be sent: say why here.
    if data.len() > DEFAULT_CLIPBOARD_LIMIT {
        return Err(LocalError::Agent {
            code: error_code::TOO_LARGE,
            text: too_large_text(format, data.len(), DEFAULT_CLIPBOARD_LIMIT),
        });
    }
    let message = Message::ClipboardData(ClipboardData {
        serial: 0,
        format,
        data,
    });
    match call(path, &message)? {
        Message::Pong(_) => Ok(()),
        other => Err(LocalError::Unexpected(other.kind())),
    }
}

/// `vireo-agent clipboard get`.
pub fn get(path: &Path, format: ClipboardFormat) -> Result<Vec<u8>, LocalError> {
    let request = ClipboardRequest { serial: 0, format };
    match call(path, &Message::ClipboardRequest(request))? {
        Message::ClipboardData(data) if data.format == format => Ok(data.data),
        other => Err(LocalError::Unexpected(other.kind())),
    }
}
