//! A private X server (Xvfb) for tests that open windows: started on a free display
//! number it picks itself (`-displayfd`), stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Xvfb {
    child: Child,
    /// `:N`, for the `DISPLAY` of the programs under test.
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb with one `width`x`height` 24-bit screen. Panics with a hint if it is
    /// not installed (installers/setup-host.sh installs it).
    pub fn start(width: u32, height: u32) -> Xvfb {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-nolisten", "tcp", "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb runs (installers/setup-host.sh installs xvfb)");
        // Xvfb writes the display number once it accepts connections.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("Xvfb reports its display");
        let number = line.trim();
        assert!(
            !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()),
            "Xvfb did not start: {line:?}"
        );
        Xvfb {
            display: format!(":{number}"),
            child,
        }
    }

    /// A command that talks to this X server.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DISPLAY", &self.display)
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("XAUTHORITY");
        cmd
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
