//! The real `vireo` app on a private X server with the probe guest's self-test screen,
//! whose agent speaks the agent protocol over the engine's vsock: the app's guest link
//! reports the agent's features (clipboard and time working, no shared folders or
//! tablet report in the probe), text copied on the host's X11 clipboard (`xclip`) reaches
//! the guest (the probe logs its SHA-256), and a line the guest copies (Enter on the
//! self-test screen copies the typed line) is on the host clipboard, without being
//! offered back to the guest.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::engine::vmm_binary;
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_e2e::xvfb::Xvfb;

const TEST: &str = "app::app_link::the_clipboard_crosses_both_ways_through_the_app";

struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    dir: TempDir,
    vmm: PathBuf,
    probe: PathBuf,
}

impl Env {
    fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("XDG_DATA_HOME", self.dir.0.join("data"))
            .env("XDG_RUNTIME_DIR", self.dir.0.join("run"))
            .env("VIREO_VMM", &self.vmm)
            .env("VIREO_PROBE_GUEST", &self.probe)
    }

    fn vireo(&self, args: &[&str]) -> std::process::Output {
        let out = self
            .apply(&mut Command::new(env!("CARGO_BIN_EXE_vireo")))
            .args(args)
            .output()
            .expect("vireo runs");
        assert!(out.status.success(), "vireo {args:?}: {out:?}");
        out
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("data/vireo/vms/link/logs/console.log"))
            .unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self
            .apply(&mut Command::new(env!("CARGO_BIN_EXE_vireo")))
            .args(["stop", "link"])
            .output();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The host's CLIPBOARD, as `xclip -o` reads it (empty when nobody owns it).
fn host_clipboard(x: &Xvfb) -> String {
    let out = x
        .command("xclip")
        .args(["-o", "-selection", "clipboard"])
        .output()
        .expect("xclip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xdotool(x: &Xvfb, args: &[&str]) {
    let status = x
        .command("xdotool")
        .args(args)
        .status()
        .expect("xdotool runs");
    assert!(status.success(), "xdotool {args:?}");
}

/// Host grabs the probe saw (`agent_clipboard_grab` lines).
fn host_grabs(console: &str) -> usize {
    console.matches("VIREO-PROBE agent_clipboard_grab ").count()
}

#[test]
fn the_clipboard_crosses_both_ways_through_the_app() {
    if !report::require_kvm(TEST) {
        return;
    }
    let env = Env {
        dir: TempDir::new("app-link"),
        vmm: vmm_binary(),
        probe: probe_guest_elf(),
    };
    env.vireo(&["create", "link", "--memory", "128M", "--start"]);
    wait_for("the self-test screen", Duration::from_secs(60), || {
        env.console().contains("VIREO-PROBE screen_ready")
    });
    let x = Xvfb::start(1600, 1200);
    let err = env.dir.0.join("app.err");
    let read_err = || std::fs::read_to_string(&err).unwrap_or_default();
    // The app's first X connection to a fresh Xvfb sometimes fails (see app_window.rs):
    // started again then.
    let mut app = None;
    for _ in 0..3 {
        let mut child = App(env
            .apply(&mut x.command(env!("CARGO_BIN_EXE_vireo")))
            .args(["open", "link"])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("the app starts"));
        std::thread::sleep(Duration::from_secs(2));
        match child.0.try_wait() {
            Ok(Some(_)) if read_err().contains("Failed to open connection to X server") => {}
            Ok(Some(status)) => panic!("the app ended ({status}): {}", read_err()),
            _ => {
                app = Some(child);
                break;
            }
        }
    }
    let _app = app.expect("the app connects to the X server");
    let window = x.find_window("^link ", Duration::from_secs(60));

    // The link reports the probe agent's features (the toolbar shows the same status).
    let started = Instant::now();
    wait_for("the agent's status", Duration::from_secs(30), || {
        read_err().contains(
            "vireo: link: agent: clipboard working, folders not installed, time working, \
             mouse not installed",
        )
    });
    eprintln!(
        "app link: agent status after {} ms",
        started.elapsed().as_millis()
    );

    // Host → guest: a copy on the host X clipboard lands in the guest's agent.
    let text = "copied on the host: Vireo ✓";
    let mut xclip = x
        .command("xclip")
        .args(["-i", "-selection", "clipboard"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("xclip runs");
    {
        use std::io::Write;
        xclip
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    // xclip forks a child that owns the selection; the parent ends.
    xclip.wait().unwrap();
    let copied = Instant::now();
    let want = format!("sha256={}", sha256(text.as_bytes()));
    wait_for(
        "the host's copy in the guest",
        Duration::from_secs(20),
        || {
            env.console()
                .lines()
                .any(|l| l.contains("agent_clipboard_in ") && l.contains(&want))
        },
    );
    eprintln!(
        "app link: host copy in the guest after {} ms",
        copied.elapsed().as_millis()
    );

    // Guest → host: the self-test screen copies the typed line on Enter.
    let grabs_before = host_grabs(&env.console());
    xdotool(&x, &["windowfocus", "--sync", &window]);
    xdotool(
        &x,
        &["type", "--window", &window, "--delay", "80", "vireo link"],
    );
    xdotool(&x, &["key", "--window", &window, "Return"]);
    let typed = Instant::now();
    wait_for(
        "the guest's copy on the host",
        Duration::from_secs(20),
        || host_clipboard(&x) == "vireo link",
    );
    eprintln!(
        "app link: guest copy on the host after {} ms",
        typed.elapsed().as_millis()
    );
    assert!(
        read_err().contains("vireo: link: clipboard: guest → host: text, 10 bytes"),
        "{}",
        read_err()
    );
    // No echo: what the app wrote for the guest is not offered back to it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        host_grabs(&env.console()),
        grabs_before,
        "the app offered the guest's own copy back:\n{}",
        env.console()
    );
    // And the guest's copy stays on the host.
    assert_eq!(host_clipboard(&x), "vireo link");
}
