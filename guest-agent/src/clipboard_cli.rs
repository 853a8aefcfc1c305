//! The clipboard and display commands of `vireo-agent`: in the guest
//! (`vireo-agent clipboard get|set`, through the running agent's local socket) and on the
//! host (`vireo-agent host ... clipboard get|set|watch`, `... display status|resize`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};
use vireo_guest_agent::agent::clipboard::local;
use vireo_guest_agent::host::{AgentClient, ClientEvent, ClipboardEvent};
use vireo_guest_agent::protocol::clipboard::format_name;
use vireo_guest_agent::protocol::{ClipboardContent, ClipboardFormat, Message};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Png,
}

impl From<Format> for ClipboardFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => ClipboardFormat::Text,
            Format::Png => ClipboardFormat::Png,
        }
    }
}

#[derive(Subcommand)]
pub enum ClipboardCall {
    /// Write the clipboard's content to stdout (or --output).
    Get {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Set the clipboard: TEXT, or the content of --file (stdin when neither is given).
    Set {
        text: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum HostClipboardCall {
    #[command(flatten)]
    Call(ClipboardCall),
    /// Print one JSON line per guest clipboard event for --seconds.
    Watch {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
pub enum DisplayCall {
    /// Absolute pointer in use, screen size.
    Status,
    /// Set the guest session's screen size (xrandr).
    Resize { width: u32, height: u32 },
}

fn content_of(text: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    Ok(match (text, file) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(file)) => {
            std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
        }
        (None, None) => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data)?;
            data
        }
        (Some(_), Some(_)) => bail!("give TEXT or --file, not both"),
    })
}

fn write_out(data: &[u8], output: Option<PathBuf>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
        }
        None => Ok(std::io::stdout().write_all(data)?),
    }
}

/// `vireo-agent clipboard ...` inside the guest.
pub fn guest(socket: Option<PathBuf>, call: ClipboardCall) -> anyhow::Result<()> {
    let socket = socket.unwrap_or_else(local::default_socket);
    match call {
        ClipboardCall::Get { format, output } => {
            let data = local::get(&socket, format.into())?;
            write_out(&data, output)
        }
        ClipboardCall::Set { text, file, format } => {
            Ok(local::set(&socket, format.into(), content_of(text, file)?)?)
        }
    }
}

/// `vireo-agent host ... clipboard ...`.
pub fn host(
    client: &AgentClient,
    call: HostClipboardCall,
    timeout: Duration,
) -> anyhow::Result<()> {
    match call {
        HostClipboardCall::Call(ClipboardCall::Get { format, output }) => {
            let data = client.clipboard_get(format.into())?;
            write_out(&data, output)
        }
        HostClipboardCall::Call(ClipboardCall::Set { text, file, format }) => {
            let content = ClipboardContent::one(format.into(), content_of(text, file)?);
            let serial = client.clipboard_set(content)?;
            // The agent fetches at once; leaving earlier would leave it nothing to fetch.
            client
                .clipboard_wait_sent(serial, timeout)
                .context("the agent did not fetch the data")?;
            println!("{}", json!({ "serial": serial }));
            Ok(())
        }
        HostClipboardCall::Watch { seconds } => watch(client, Duration::from_secs(seconds)),
    }
}

fn watch(client: &AgentClient, duration: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let Ok(event) = client.events().recv_timeout(left) else {
            continue;
        };
        let line: Value = match event {
            ClientEvent::Clipboard(ClipboardEvent::GuestGrab(grab)) => {
                let formats: Vec<_> = grab.formats.iter().map(|f| format_name(*f)).collect();
                json!({ "event": "guest-grab", "serial": grab.serial, "formats": formats })
            }
            ClientEvent::Clipboard(ClipboardEvent::GuestReleased) => {
                json!({ "event": "guest-release" })
            }
            ClientEvent::Clipboard(ClipboardEvent::HostDataSent { serial }) => {
                json!({ "event": "host-data-sent", "serial": serial })
            }
            ClientEvent::Connected(_) => json!({ "event": "connected" }),
            ClientEvent::Disconnected => json!({ "event": "disconnected" }),
            ClientEvent::Message(Message::DisplayStatus(s)) => {
                json!({ "event": "display", "status": display_json(&s) })
            }
            ClientEvent::Message(Message::ClipboardStatus(s)) => {
                json!({ "event": "clipboard-source", "source": source_name(s.source) })
            }
            ClientEvent::Message(m) => json!({ "event": "message", "kind": m.kind() }),
            ClientEvent::SharesMounted(_) => continue,
        };
        println!("{line}");
    }
}

/// Where the guest clipboard lives, for a JSON line.
fn source_name(source: vireo_guest_agent::protocol::ClipboardSource) -> String {
    use vireo_guest_agent::protocol::ClipboardSource;
    match source {
        ClipboardSource::AgentCopy => "agent-copy".into(),
        ClipboardSource::AgentDisplay => "agent-display".into(),
        ClipboardSource::UserSession { uid } => format!("session-uid-{uid}"),
    }
}

pub fn display_json(s: &vireo_guest_agent::protocol::DisplayStatus) -> Value {
    json!({
        "absolute_pointer": s.absolute_pointer,
        "pointer_device": s.pointer_device,
        "screen": s.screen.map(|z| json!({ "width": z.width, "height": z.height })),
        "screen_source": format!("{:?}", s.screen_source),
        "can_resize": s.can_resize,
    })
}

/// `vireo-agent host ... display ...`.
pub fn display(client: &AgentClient, call: DisplayCall) -> anyhow::Result<Value> {
    let status = match call {
        DisplayCall::Status => client.display_status()?,
        DisplayCall::Resize { width, height } => client.display_resize(width, height)?,
    };
    Ok(display_json(&status))
}
