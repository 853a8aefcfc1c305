//! `vireo-agent`: the Vireo guest agent, run inside a Linux guest.

use anyhow::Context;
use clap::{Parser, Subcommand};
use vireo_guest_agent::guest_info::GuestInfo;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info => {
            let info = GuestInfo::gather().context("gathering guest info")?;
            println!("{}", serde_json::to_string(&info)?);
        }
    }
    Ok(())
}
