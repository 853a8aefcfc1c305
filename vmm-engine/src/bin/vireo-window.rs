//! `vireo-window`: one VM's screen in a window, a client of its control socket.
//! `vireo-vmm --window` starts it; it can also attach to any running engine that serves
//! a control socket and has a display.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vireo_vmm::config::DisplayArg;
use vireo_vmm::window::WindowLoop;

#[derive(Parser, Debug)]
#[command(
    name = "vireo-window",
    version,
    about = "Show a running VM's screen in a window: keyboard and pointer go to the guest, closing the window powers it off"
)]
struct Cli {
    /// The VM's control socket (vireo-vmm --control-socket).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// The window's title.
    #[arg(long, default_value = "Vireo")]
    title: String,

    /// The window's size until the guest sets a mode.
    #[arg(long, value_name = "WxH", default_value = "1280x800")]
    size: DisplayArg,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are answers, not usage errors.
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let size = cli.size.0.map_or((1280, 800), |d| (d.width, d.height));
    match WindowLoop::new() {
        Ok(window) => {
            window.run(cli.socket, cli.title, size);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vireo-window: {e}");
            ExitCode::from(1)
        }
    }
}
