//! The real `vireo-agent` on a private Xvfb (its clipboard through arboard and XFixes),
//! against the real host client, with `xclip` as the other program in the "guest"
//! session: Unicode text and a PNG both ways, 10 MiB, over the limit, no echo loop; and
//! the display status and resize through xrandr. Skips loudly when Xvfb or xclip is
//! missing (installers/setup-host.sh installs them).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vireo_guest_agent::host::ClipboardEvent;
use vireo_guest_agent::host::{AgentClient, ClientConfig, ClientError, ClientEvent, Endpoint};
use vireo_guest_agent::protocol::{
    ClipboardContent, ClipboardFormat, ScreenSource, DEFAULT_CLIPBOARD_LIMIT,
};

const AGENT: &str = env!("CARGO_BIN_EXE_vireo-agent");

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A private X server, the agent on it, and a scratch directory.
struct Session {
    xvfb: Child,
    display: String,
    agent: Child,
    dir: PathBuf,
}

/// Appends `RAN clipboard_x11::<test>` or `SKIPPED ...` to the end-to-end record that
/// `.ci/run` checks (the format of `vireo-e2e`'s `report`, which this crate cannot depend
/// on: `vireo-e2e` depends on it).
fn record(line: &str) {
    let path = std::env::var_os("VIREO_E2E_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/e2e-results.log"
            ))
        });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line: the test threads append at once.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

impl Session {
    fn start(test: &str) -> Option<Self> {
        if !have("Xvfb") || !have("xclip") || !have("xrandr") {
            let why = "Xvfb, xclip or xrandr missing: run installers/setup-host.sh";
            eprintln!("*** SKIPPED clipboard_x11::{test}: {why}");
            record(&format!("SKIPPED clipboard_x11::{test}: {why}"));
            return None;
        }
        record(&format!("RAN clipboard_x11::{test}"));
        let mut xvfb = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "1280x800x24",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(xvfb.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let display = format!(":{}", line.trim());
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-clip-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = Command::new(AGENT)
            .args(["run", "--clipboard", "x11", "--fake-clock-offset-ms=0"])
            // The agent's own DISPLAY is what these test: no desktop sessions.
            .arg("--no-session-socket")
            // One time sync on connect, none during the tests' quiet windows.
            .args(["--time-sync-interval-secs", "3600"])
            .arg(format!(
                "--transport=unix:{}",
                dir.join("agent.sock").display()
            ))
            .arg("--clipboard-socket")
            .arg(dir.join("clipboard.sock"))
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY")
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let session = Self {
            xvfb,
            display,
            agent,
            dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            session.dir.join("agent.sock").exists()
        });
        let log = std::fs::read_to_string(session.dir.join("agent.log")).unwrap_or_default();
        assert!(up, "the agent did not start: {log}");
        Some(session)
    }

    /// What the agent logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn client(&self) -> AgentClient {
        let endpoint = Endpoint::Unix(self.dir.join("agent.sock"));
        AgentClient::connect(endpoint, ClientConfig::default()).unwrap()
    }

    fn xclip(&self) -> Command {
        let mut cmd = Command::new("xclip");
        cmd.env("DISPLAY", &self.display)
            .args(["-selection", "clipboard"]);
        cmd
    }

    /// `xclip -o -t TARGET`: what another X program pasting gets.
    fn paste(&self, target: &str) -> Option<Vec<u8>> {
        let out = self.xclip().args(["-o", "-t", target]).output().unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// `xclip -i -t TARGET`: another X program copying. xclip forks a child that owns
    /// the selection until the next owner takes it.
    fn copy(&self, target: &str, data: &[u8]) {
        let mut child = self
            .xclip()
            .args(["-i", "-t", target])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The next guest grab among the client's events.
fn next_guest_grab(client: &AgentClient, timeout: Duration) -> Option<Vec<ClipboardFormat>> {
    let deadline = Instant::now() + timeout;
    while let Ok(event) = client
        .events()
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let ClientEvent::Clipboard(ClipboardEvent::GuestGrab(grab)) = event {
            return Some(grab.formats);
        }
    }
    None
}

/// Clipboard messages the agent sent unprompted during `window`.
fn clipboard_events_during(client: &AgentClient, window: Duration) -> Vec<ClipboardEvent> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(event) = client
        .events()
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let ClientEvent::Clipboard(e) = event {
            seen.push(e);
        }
    }
    seen
}

fn test_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([x as u8, y as u8, (x ^ y) as u8, 255])
    });
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

fn pixels(png: &[u8]) -> image::RgbaImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .unwrap()
        .into_rgba8()
}

#[test]
fn unicode_text_both_ways() {
    let Some(s) = Session::start("unicode_text_both_ways") else {
        return;
    };
    let client = s.client();
    let text = "Grüße, 世界! 🦀 — ñ";
    let serial = client.clipboard_set(ClipboardContent::text(text)).unwrap();
    client
        .clipboard_wait_sent(serial, Duration::from_secs(5))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || s
        .paste("UTF8_STRING")
        .is_some_and(|p| p == text.as_bytes())));

    let back = "aus dem Gast: ÆØÅ ✓";
    s.copy("UTF8_STRING", back.as_bytes());
    assert_eq!(
        next_guest_grab(&client, Duration::from_secs(5)),
        Some(vec![ClipboardFormat::Text])
    );
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        back.as_bytes()
    );
}

#[test]
fn latin1_string_from_an_old_program_arrives_as_utf8() {
    let Some(s) = Session::start("latin1_string_from_an_old_program_arrives_as_utf8") else {
        return;
    };
    let client = s.client();
    // Only the ICCCM's STRING target (ISO 8859-1), as old X programs offer.
    s.copy("STRING", b"caf\xe9 cr\xe8me");
    assert_eq!(
        next_guest_grab(&client, Duration::from_secs(10)),
        Some(vec![ClipboardFormat::Text]),
        "{}",
        s.log()
    );
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        "café crème".as_bytes()
    );
}

#[test]
fn png_image_both_ways() {
    let Some(s) = Session::start("png_image_both_ways") else {
        return;
    };
    let client = s.client();
    let png = test_png(64, 48);
    let serial = client
        .clipboard_set(ClipboardContent::png(png.clone()))
        .unwrap();
    client
        .clipboard_wait_sent(serial, Duration::from_secs(5))
        .unwrap();
    let mut pasted = None;
    assert!(wait_until(Duration::from_secs(5), || {
        pasted = s.paste("image/png");
        pasted.is_some()
    }));
    // The guest re-encodes: same pixels, not necessarily the same bytes.
    assert_eq!(pixels(&pasted.unwrap()), pixels(&png));

    let other = test_png(17, 5);
    s.copy("image/png", &other);
    let formats = next_guest_grab(&client, Duration::from_secs(5)).unwrap();
    assert!(formats.contains(&ClipboardFormat::Png), "{formats:?}");
    let got = client.clipboard_get(ClipboardFormat::Png).unwrap();
    assert_eq!(pixels(&got), pixels(&other));
}

#[test]
fn ten_mib_both_ways() {
    let Some(s) = Session::start("ten_mib_both_ways") else {
        return;
    };
    let client = s.client();
    let big: String = (0..10 * 1024 * 1024 / 16)
        .map(|i| format!("{i:015x}\n"))
        .collect();
    assert_eq!(big.len(), 10 * 1024 * 1024);
    let serial = client
        .clipboard_set(ClipboardContent::text(big.clone()))
        .unwrap();
    client
        .clipboard_wait_sent(serial, Duration::from_secs(10))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || s
        .paste("UTF8_STRING")
        .is_some_and(|p| p == big.as_bytes())));

    let reversed: String = big.lines().rev().map(|l| format!("{l}\n")).collect();
    s.copy("UTF8_STRING", reversed.as_bytes());
    assert!(next_guest_grab(&client, Duration::from_secs(10)).is_some());
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        reversed.as_bytes()
    );
}

#[test]
fn over_the_limit_is_a_clear_error_both_ways() {
    let Some(s) = Session::start("over_the_limit_is_a_clear_error_both_ways") else {
        return;
    };
    let client = s.client();
    let over = vec![b'x'; DEFAULT_CLIPBOARD_LIMIT + 1];
    let err = client
        .clipboard_set(ClipboardContent::one(ClipboardFormat::Text, over.clone()))
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    assert!(
        err.to_string()
            .contains("over the limit of 67108864 bytes (64 MiB)"),
        "{err}"
    );

    // The guest copies more than the limit: the host hears of it, and fetching says why.
    s.copy("UTF8_STRING", &over);
    assert!(
        next_guest_grab(&client, Duration::from_secs(20)).is_some(),
        "{}",
        s.log()
    );
    let err = client.clipboard_get(ClipboardFormat::Text).unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    assert!(
        err.to_string()
            .contains("clipboard text of 67108865 bytes is over the limit"),
        "{err}"
    );
}

#[test]
fn no_echo_loop() {
    let Some(s) = Session::start("no_echo_loop") else {
        return;
    };
    let client = s.client();
    // Let the connection settle: the agent's account of its clipboard, its display
    // status and the time sync on connect.
    clipboard_events_during(&client, Duration::from_millis(500));

    // Host → guest: the agent asks for the data once, then is silent for 2 s (its own
    // write to the X clipboard is not taken for a guest copy).
    let before = client.messages_received();
    let serial = client
        .clipboard_set(ClipboardContent::text("ping"))
        .unwrap();
    let events = clipboard_events_during(&client, Duration::from_secs(2));
    assert_eq!(events, [ClipboardEvent::HostDataSent { serial }]);
    assert_eq!(client.messages_received() - before, 1, "only the request");
    assert_eq!(s.paste("UTF8_STRING").as_deref(), Some(&b"ping"[..]));

    // Guest → host: one grab, one answer to our fetch, then 2 s of silence.
    let before = client.messages_received();
    s.copy("UTF8_STRING", b"pong");
    assert!(next_guest_grab(&client, Duration::from_secs(5)).is_some());
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        b"pong"
    );
    assert_eq!(clipboard_events_during(&client, Duration::from_secs(2)), []);
    assert_eq!(
        client.messages_received() - before,
        2,
        "only the grab and the data"
    );
}

#[test]
fn guest_cli_sets_the_session_clipboard_and_reads_it() {
    let Some(s) = Session::start("guest_cli_sets_the_session_clipboard_and_reads_it") else {
        return;
    };
    let socket = s.dir.join("clipboard.sock");
    let set = Command::new(AGENT)
        .args(["clipboard", "--socket"])
        .arg(&socket)
        .args(["set", "från vireo-agent clipboard"])
        .status()
        .unwrap();
    assert!(set.success());
    // The agent owns it: the content outlives the command.
    assert_eq!(
        s.paste("UTF8_STRING").as_deref(),
        Some("från vireo-agent clipboard".as_bytes())
    );
    s.copy("UTF8_STRING", b"xclip wrote this");
    assert!(wait_until(Duration::from_secs(5), || {
        let out = Command::new(AGENT)
            .args(["clipboard", "--socket"])
            .arg(&socket)
            .arg("get")
            .output()
            .unwrap();
        out.stdout == b"xclip wrote this"
    }));
}

#[test]
fn display_status_and_resize_through_xrandr() {
    let Some(s) = Session::start("display_status_and_resize_through_xrandr") else {
        return;
    };
    let client = s.client();
    let status = client.display_status().unwrap();
    assert_eq!(status.screen_source, ScreenSource::X11);
    assert_eq!(
        status.screen.map(|z| (z.width, z.height)),
        Some((1280, 800))
    );
    assert!(status.can_resize);
    // This host has no virtio tablet; /proc/bus/input/devices is read all the same.
    let after = client.display_resize(1024, 768).unwrap();
    assert_eq!(after.screen.map(|z| (z.width, z.height)), Some((1024, 768)));
    let out = Command::new("xrandr")
        .env("DISPLAY", &s.display)
        .arg("--current")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("current 1024 x 768"), "{text}");
    let err = client.display_resize(0, 768).unwrap_err();
    assert!(err.to_string().contains("not a screen size"), "{err}");
}
