//! A private X server (Xvfb) for tests that open windows: started on a free display
//! number it picks itself (`-displayfd`), stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

    /// The X window whose title matches `name` (xdotool's regex), once it is mapped.
    pub fn find_window(&self, name: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let out = self
                .command("xdotool")
                .args(["search", "--onlyvisible", "--name", name])
                .output()
                .expect("xdotool runs (installers/setup-host.sh installs it)");
            if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().next() {
                return id.trim().to_owned();
            }
            assert!(Instant::now() < end, "no window named {name:?} appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
