//! `vireo`: with a command, the command line (`cli`); without, the app.

use clap::Parser;
use vireo_app::cli::{self, Cli, CliCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(CliCommand::Open { vm }) => window(Some(vm)),
        Some(command) => cli::run(command),
        None => window(None),
    };
    std::process::ExitCode::from(code as u8)
}

/// The app's window (with `open`: and that VM's window).
fn window(open: Option<String>) -> i32 {
    match vireo_app::ui::run(open) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vireo: {e}");
            1
        }
    }
}
