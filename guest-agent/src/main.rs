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
use vireo_guest_agent::agent::display::DisplayProbe;
use vireo_guest_agent::agent::power::{PowerControl, RecordingPower, SystemPower};
use vireo_guest_agent::agent::timesync::TimeSyncConfig;
use vireo_guest_agent::agent::transport::{AgentListener, ListenAddr};
use vireo_guest_agent::agent::{self, AgentServices};
use vireo_guest_agent::guest_info::GuestInfo;
use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
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
    /// Where the guest clipboard lives.
    #[arg(long, value_enum, default_value = "auto")]
    clipboard: ClipboardArg,
    /// The local socket of `vireo-agent clipboard get|set`.
    #[arg(long)]
    clipboard_socket: Option<PathBuf>,
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
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
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
    let services = AgentServices {
        clock,
        power,
        time_sync: TimeSyncConfig {
            interval: Duration::from_secs(args.time_sync_interval_secs.max(1)),
            ..TimeSyncConfig::default()
        },
        clipboard,
        display: DisplayProbe::default(),
    };
    let listener = AgentListener::bind(&args.transport)?;
    eprintln!("vireo-agent: listening on {}", args.transport);
    agent::run(&listener, &services)
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
    let client = AgentClient::connect(endpoint.clone(), config)
        .with_context(|| format!("connecting to the agent at {endpoint}"))?;
    let out = match args.call {
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
        HostCall::Clipboard(call) => return clipboard_cli::host(&client, call, timeout),
        HostCall::Display(call) => clipboard_cli::display(&client, call)?,
    };
    println!("{out}");
    Ok(())
}

// The vsock default above must match the protocol's constant.
const _: () = assert!(AGENT_VSOCK_PORT == 7000);
