//! `vireo`: with a command, the command line (`cli`); without, the app.

use clap::Parser;
use vireo_app::cli::{self, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(command) => cli::run(command),
        None => match vireo_app::ui::run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vireo: {e}");
                1
            }
        },
    };
    std::process::ExitCode::from(code as u8)
}
