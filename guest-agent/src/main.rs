//! `vireo-agent`: the Vireo guest agent, run inside a Linux guest (`run`), plus the
//! host-side client for scripts and tests (`host`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
mod clipboard_cli;

use vireo_guest_agent::agent::clipboard::{local, ClipboardMode, GuestClipboard};
use vireo_guest_agent::agent::clock::{Clock, SimulatedClock, SystemClock};
use vireo_guest_agent::agent::desktop::{self, client::SessionEnd, peer::PeerRule};
use vireo_guest_agent::agent::display::DisplayProbe;
use vireo_guest_agent::agent::fs::{default_owner, ShareMounts, DEFAULT_MOUNT_BASE};
use vireo_guest_agent::agent::power::{PowerControl, RecordingPower, SystemPower};
use vireo_guest_agent::agent::timesync::TimeSyncConfig;
use vireo_guest_agent::agent::transport::{AgentListener, ListenAddr};
use vireo_guest_agent::agent::{self, AgentServices};
use vireo_guest_agent::guest_info::GuestInfo;
use vireo_guest_agent::host::{AgentClient, ClientConfig, ClientEvent, Endpoint, ShareConfig};
use vireo_guest_agent::protocol::{AGENT_VSOCK_PORT, DEFAULT_CLIPBOARD_LIMIT};

#[derive(Parser)]
#[command(name = "vireo-agent", version, about = "Vireo guest agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print OS, kernel, hostname, uptime, memory and IP addresses as one JSON line.
    Info,
    /// Serve the host: guest info, power, time sync (in a guest: on vsock).
    #[command(alias = "daemon")]
    Run(RunArgs),
    /// Talk to an agent from the host side; prints one JSON line.
    Host(HostArgs),
    /// The guest clipboard, through the running agent (the clipboard itself when the
    /// guest has no graphical session).
    Clipboard {
        /// The agent's local socket (default: /run/vireo-agent/clipboard.sock as root).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        call: clipboard_cli::ClipboardCall,
    },
    /// The desktop user's part, run inside the graphical session (DISPLAY): offers the
    /// session's clipboard to the system agent until the session ends.
    Session {
        /// The system agent's session socket (default /run/vireo-agent/session.sock,
        /// and then only in a VM with a virtio vsock device: elsewhere it exits at once).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClipboardArg {
    /// The X session in DISPLAY if one answers, else the agent's own copy.
    Auto,
    X11,
    Memory,
}

#[derive(clap::Args)]
struct RunArgs {
    /// `vsock` (port 7000), `vsock:PORT`, or `unix:PATH`.
    #[arg(long, default_value = "vsock")]
    transport: ListenAddr,
    /// Seconds between time syncs.
    #[arg(long, default_value_t = 10)]
    time_sync_interval_secs: u64,
    /// Tests: correct a simulated clock that starts this far off instead of the real one.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    fake_clock_offset_ms: Option<i64>,
    /// Tests: append power actions to this file instead of powering off.
    #[arg(long, hide = true)]
    fake_power: Option<PathBuf>,
    /// Where the host's shared folders are mounted (`<base>/<name>`).
    #[arg(long, default_value = DEFAULT_MOUNT_BASE)]
    share_base: PathBuf,
    /// `UID[:GID]` every file in a share shows as owned by (default: the first user
    /// with a uid from 1000, else root).
    #[arg(long)]
    share_owner: Option<String>,
    /// Do not offer shared folders.
    #[arg(long)]
    no_shares: bool,
    /// Where the guest clipboard lives.
    #[arg(long, value_enum, default_value = "auto")]
    clipboard: ClipboardArg,
    /// The local socket of `vireo-agent clipboard get|set`.
    #[arg(long)]
    clipboard_socket: Option<PathBuf>,
    /// Where desktop sessions' `vireo-agent session` connect.
    #[arg(long, default_value = desktop::DEFAULT_SOCKET)]
    session_socket: PathBuf,
    /// Do not listen for desktop sessions.
    #[arg(long)]
    no_session_socket: bool,
    /// Tests: logind's session directory (who may own the clipboard).
    #[arg(long, hide = true, default_value = desktop::peer::LOGIND_SESSIONS)]
    logind_sessions: PathBuf,
}

#[derive(clap::Args)]
struct HostArgs {
    /// The agent's Unix socket, or with --vsock-port the engine's vsock socket.
    #[arg(long)]
    socket: PathBuf,
    /// Reach the agent through the engine's hybrid vsock on this guest port.
    #[arg(long, num_args = 0..=1, default_missing_value = "7000")]
    vsock_port: Option<u32>,
    /// How long to wait for the connection and for the answer.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    call: HostCall,
}

#[derive(Subcommand)]
enum HostCall {
    /// The agent's hello: protocol version and capabilities.
    Hello,
    /// The guest's info.
    Info,
    /// Round trip of a ping.
    Ping,
    /// Graceful shutdown of the guest.
    Shutdown,
    /// Graceful reboot of the guest.
    Reboot,
    /// Sync the guest clock now and show what was done.
    Time,
    /// Export folders (`NAME=DIR` or `NAME=DIR,ro`) and serve them until killed,
    /// printing a JSON line per event (mounted, connected, disconnected).
    Share {
        #[arg(required = true)]
        shares: Vec<ShareConfig>,
    },
    /// The shared clipboard: get, set, watch.
    #[command(subcommand)]
    Clipboard(clipboard_cli::HostClipboardCall),
    /// The guest's pointer and screen: status, resize.
    #[command(subcommand)]
    Display(clipboard_cli::DisplayCall),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info => {
            let info = GuestInfo::gather().context("gathering guest info")?;
            println!("{}", serde_json::to_string(&info)?);
        }
        Command::Run(args) => run(args)?,
        Command::Host(args) => host(args)?,
        Command::Clipboard { socket, call } => clipboard_cli::guest(socket, call)?,
        Command::Session { socket } => session(socket)?,
    }
    Ok(())
}

/// `vireo-agent session`: until the session ends (status 0), or another session takes
/// over (status 0, said on stderr); no session at all is an error.
fn session(socket: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = match socket {
        Some(path) => path,
        None if desktop::has_virtio_vsock() => PathBuf::from(desktop::DEFAULT_SOCKET),
        None => {
            // Autostarted in every graphical session: on a machine that is no VM, bow out.
            eprintln!("vireo-agent session: no virtio vsock device: not a Vireo VM, exiting");
            return Ok(());
        }
    };
    let config = desktop::client::SessionConfig {
        socket,
        limit: DEFAULT_CLIPBOARD_LIMIT,
    };
    match desktop::client::run(&config).map_err(anyhow::Error::msg)? {
        SessionEnd::SessionOver => eprintln!("vireo-agent session: the session ended"),
        SessionEnd::StoodDown(why) => eprintln!("vireo-agent session: standing down: {why}"),
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let shares = if args.no_shares {
        None
    } else {
        let owner = match &args.share_owner {
            Some(spec) => parse_owner(spec)?,
            None => default_owner(),
        };
        Some(Arc::new(ShareMounts::new(args.share_base.clone(), owner)))
    };
    let clock: Arc<dyn Clock> = match args.fake_clock_offset_ms {
        Some(ms) => Arc::new(SimulatedClock::with_offset_ns(ms.saturating_mul(1_000_000))),
        None => Arc::new(SystemClock),
    };
    let power: Arc<dyn PowerControl> = match args.fake_power {
        Some(path) => Arc::new(RecordingPower::to_file(path)),
        None => Arc::new(SystemPower),
    };
    let mode = match args.clipboard {
        ClipboardArg::Auto => ClipboardMode::Auto,
        ClipboardArg::X11 => ClipboardMode::X11,
        ClipboardArg::Memory => ClipboardMode::Memory,
    };
    let clipboard = Arc::new(
        GuestClipboard::start(mode, DEFAULT_CLIPBOARD_LIMIT)
            .map_err(anyhow::Error::msg)
            .context("starting the clipboard")?,
    );
    let local_socket = args.clipboard_socket.unwrap_or_else(local::default_socket);
    // Without it the host still shares the clipboard; only the local command is lost.
    if let Err(err) = local::serve(&local_socket, Arc::clone(&clipboard)) {
        eprintln!(
            "vireo-agent: no `vireo-agent clipboard` socket at {}: {err}",
            local_socket.display()
        );
    }
    if !args.no_session_socket {
        let rule = PeerRule {
            sessions_dir: args.logind_sessions.clone(),
        };
        // Without it the guest's clipboard is the agent's own copy (or its DISPLAY).
        if let Err(err) = desktop::server::serve(&args.session_socket, Arc::clone(&clipboard), rule)
        {
            eprintln!(
                "vireo-agent: no desktop-session socket at {}: {err}",
                args.session_socket.display()
            );
        }
    }
    let services = AgentServices {
        clock,
        power,
        time_sync: TimeSyncConfig {
            interval: Duration::from_secs(args.time_sync_interval_secs.max(1)),
            ..TimeSyncConfig::default()
        },
        shares: shares.clone(),
        clipboard,
        display: DisplayProbe::default(),
    };
    let listener = AgentListener::bind(&args.transport)?;
    eprintln!("vireo-agent: listening on {}", args.transport);
    if let Some(shares) = shares {
        unmount_on_signal(shares)?;
    }
    agent::run(&listener, &services)
}

fn parse_owner(spec: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = spec.split_once(':').unwrap_or((spec, spec));
    Ok((
        uid.parse().context("--share-owner: bad uid")?,
        gid.parse().context("--share-owner: bad gid")?,
    ))
}

/// SIGTERM, SIGINT, SIGHUP: unmount the shares, then exit.
fn unmount_on_signal(shares: Arc<ShareMounts>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("vireo-agent-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("vireo-agent: signal {signal}: unmounting shares and exiting");
                shares.unmount_all();
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// `host share`: serve until killed; the client reconnects by itself.
fn serve_shares(
    endpoint: Endpoint,
    config: ClientConfig,
    shares: Vec<ShareConfig>,
) -> anyhow::Result<()> {
    let client = AgentClient::start_sharing(endpoint, config, shares)?;
    loop {
        let Ok(event) = client.events().recv() else {
            anyhow::bail!("the client stopped");
        };
        let line = match event {
            ClientEvent::Connected(hello) => {
                json!({ "event": "connected", "software": hello.software })
            }
            ClientEvent::Disconnected => json!({ "event": "disconnected" }),
            ClientEvent::SharesMounted(results) => {
                let shares: Vec<_> = results
                    .into_iter()
                    .map(|r| match r.result {
                        Ok(path) => json!({ "name": r.name, "path": path }),
                        Err(error) => json!({ "name": r.name, "error": error }),
                    })
                    .collect();
                json!({ "event": "mounted", "shares": shares })
            }
            ClientEvent::Message(_) | ClientEvent::Clipboard(_) => continue,
        };
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}

fn host(args: HostArgs) -> anyhow::Result<()> {
    let endpoint = match args.vsock_port {
        Some(port) => Endpoint::HybridVsock {
            path: args.socket,
            port,
        },
        None => Endpoint::Unix(args.socket),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let config = ClientConfig {
        call_timeout: timeout,
        connect_timeout: timeout,
        ..ClientConfig::default()
    };
    let call = match args.call {
        HostCall::Share { shares } => return serve_shares(endpoint, config, shares),
        call => call,
    };
    let client = AgentClient::connect(endpoint.clone(), config)
        .with_context(|| format!("connecting to the agent at {endpoint}"))?;
    let out = match call {
        HostCall::Hello => {
            let hello = client.wait_connected(timeout)?;
            json!({
                "protocol": format!("{}.{}", hello.major, hello.minor),
                "software": hello.software,
                "capabilities": hello.capabilities.names(),
            })
        }
        HostCall::Info => serde_json::to_value(client.info()?)?,
        HostCall::Ping => json!({ "round_trip_us": client.ping()?.as_micros() }),
        HostCall::Shutdown => {
            client.shutdown()?;
            json!({ "accepted": "shutdown" })
        }
        HostCall::Reboot => {
            client.reboot()?;
            json!({ "accepted": "reboot" })
        }
        HostCall::Time => serde_json::to_value(client.time_sync_now()?)?,
        // Served above, before connecting: it keeps running instead of answering once.
        HostCall::Share { .. } => return Ok(()),
        HostCall::Clipboard(call) => return clipboard_cli::host(&client, call, timeout),
        HostCall::Display(call) => clipboard_cli::display(&client, call)?,
    };
    println!("{out}");
    Ok(())
}

// The vsock default above must match the protocol's constant.
const _: () = assert!(AGENT_VSOCK_PORT == 7000);
