//! The desktop-session split for real: the `vireo-agent` binary as the system agent (no
//! `DISPLAY`, its clipboard its own copy, the host on a Unix socket, the session socket
//! in a scratch directory), the real `vireo-agent session` on a private Xvfb as user
//! `nobody` (`setpriv`; as ourselves where we are not root), a stand-in logind session
//! directory naming who is at the screen, `xclip` as the other program in the session,
//! and the real host client library.
//!
//! Skips loudly when Xvfb or xclip is missing (installers/setup-host.sh installs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vireo_guest_agent::host::{AgentClient, ClientConfig, ClientEvent, ClipboardEvent, Endpoint};
use vireo_guest_agent::protocol::{
    encode_message, ClipboardContent, ClipboardFormat, ClipboardGrab, ClipboardSource, Hello,
    Message, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};

const AGENT: &str = env!("CARGO_BIN_EXE_vireo-agent");
/// The desktop user: `nobody` when we can become it.
const NOBODY: u32 = 65534;

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Appends `RAN desktop_session::<test>` or `SKIPPED ...` to the end-to-end record.
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
        let _ = f.write_all(format!("{line}\n").as_bytes());
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
    cond()
}

/// A private X server, the system agent, the session part(s), a scratch directory.
struct Desk {
    xvfb: Child,
    display: String,
    agent: Option<Child>,
    sessions: Vec<Child>,
    dir: PathBuf,
    /// The uid the session part runs as.
    uid: u32,
}

impl Desk {
    fn start(test: &str) -> Option<Self> {
        if !have("Xvfb") || !have("xclip") {
            let why = "Xvfb or xclip missing: run installers/setup-host.sh";
            eprintln!("*** SKIPPED desktop_session::{test}: {why}");
            record(&format!("SKIPPED desktop_session::{test}: {why}"));
            return None;
        }
        record(&format!("RAN desktop_session::{test}"));
        let mut xvfb = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "640x480x24",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(xvfb.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-desk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logind")).unwrap();
        // The session user must reach its socket beneath this directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = if we_are_root() { NOBODY } else { own_uid() };
        let mut desk = Self {
            xvfb,
            display: format!(":{}", line.trim()),
            agent: None,
            sessions: Vec::new(),
            dir,
            uid,
        };
        // logind says: this user is at the screen.
        desk.logind_session(true);
        desk.start_agent();
        Some(desk)
    }

    /// Writes logind's file for the user's graphical session, active or not.
    fn logind_session(&self, active: bool) {
        let text = format!(
            "UID={}\nUSER=desk\nACTIVE={}\nTYPE=x11\n",
            self.uid, active as u8
        );
        std::fs::write(self.dir.join("logind/2"), text).unwrap();
    }

    fn host_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn session_socket(&self) -> PathBuf {
        self.dir.join("run/session.sock")
    }

    fn start_agent(&mut self) {
        let _ = std::fs::remove_file(self.host_socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let agent = Command::new(AGENT)
            .args(["run", "--clipboard", "memory", "--no-shares"])
            .args([
                "--fake-clock-offset-ms=0",
                "--time-sync-interval-secs",
                "3600",
            ])
            .arg("--fake-power")
            .arg(self.dir.join("power"))
            .arg(format!("--transport=unix:{}", self.host_socket().display()))
            .arg("--clipboard-socket")
            .arg(self.dir.join("clipboard.sock"))
            .arg("--session-socket")
            .arg(self.session_socket())
            .arg("--logind-sessions")
            .arg(self.dir.join("logind"))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(agent);
        assert!(
            wait_until(Duration::from_secs(10), || self.host_socket().exists()),
            "the agent did not start: {}",
            self.log("agent.log")
        );
    }

    /// SIGKILL, as a crash would.
    fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// `vireo-agent session` as the desktop user, inside the X session.
    fn start_session(&mut self) -> usize {
        let n = self.sessions.len();
        let log = std::fs::File::create(self.dir.join(format!("session-{n}.log"))).unwrap();
        let mut cmd = if self.uid == own_uid() {
            Command::new(AGENT)
        } else {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.uid))
                .args(["--clear-groups", AGENT]);
            c
        };
        let child = cmd
            .arg("session")
            .arg("--socket")
            .arg(self.session_socket())
            .env("DISPLAY", &self.display)
            .env_remove("WAYLAND_DISPLAY")
            .stderr(log)
            .spawn()
            .unwrap();
        self.sessions.push(child);
        n
    }

    fn kill_session(&mut self, n: usize) {
        let _ = self.sessions[n].kill();
        let _ = self.sessions[n].wait();
    }

    /// The session part's exit status, once it has exited within `timeout`.
    fn session_exit(&mut self, n: usize, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.sessions[n].try_wait().unwrap();
            status.is_some()
        });
        status
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut all = format!("agent:\n{}", self.log("agent.log"));
        for n in 0..self.sessions.len() {
            all += &format!("session {n}:\n{}", self.log(&format!("session-{n}.log")));
        }
        all
    }

    fn client(&self) -> AgentClient {
        // A loaded machine (CI builds beside us) can hold a fresh agent's hello up.
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        };
        AgentClient::connect(Endpoint::Unix(self.host_socket()), config)
            .unwrap_or_else(|e| panic!("{e}: {}", self.logs()))
    }

    fn xclip(&self) -> Command {
        let mut cmd = Command::new("xclip");
        cmd.env("DISPLAY", &self.display)
            .args(["-selection", "clipboard"]);
        cmd
    }

    fn paste(&self, target: &str) -> Option<Vec<u8>> {
        let out = self.xclip().args(["-o", "-t", target]).output().unwrap();
        out.status.success().then_some(out.stdout)
    }

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

    /// `vireo-agent clipboard ...` against the system agent's local socket.
    fn guest_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(AGENT)
            .arg("clipboard")
            .arg("--socket")
            .arg(self.dir.join("clipboard.sock"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Desk {
    fn drop(&mut self) {
        for n in 0..self.sessions.len() {
            self.kill_session(n);
        }
        self.kill_agent();
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn own_uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

fn we_are_root() -> bool {
    own_uid() == 0
}

/// Waits for the agent to say its clipboard lives in `want`; other events are dropped.
fn wait_source(client: &AgentClient, want: ClipboardSource, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while let Ok(event) = client
        .events()
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let ClientEvent::Message(Message::ClipboardStatus(s)) = event {
            if s.source == want {
                return true;
            }
        }
    }
    false
}

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

/// Host set → readable with `xclip -o` in the session, within `timeout`.
fn host_sets_and_session_pastes(desk: &Desk, client: &AgentClient, text: &str) -> bool {
    let serial = client.clipboard_set(ClipboardContent::text(text)).unwrap();
    client
        .clipboard_wait_sent(serial, Duration::from_secs(5))
        .unwrap();
    wait_until(Duration::from_secs(5), || {
        desk.paste("UTF8_STRING")
            .is_some_and(|p| p == text.as_bytes())
    })
}

fn connected_session(test: &str) -> Option<(Desk, AgentClient)> {
    let mut desk = Desk::start(test)?;
    let client = desk.client();
    assert!(wait_source(
        &client,
        ClipboardSource::AgentCopy,
        Duration::from_secs(5)
    ));
    desk.start_session();
    let session = ClipboardSource::UserSession { uid: desk.uid };
    assert!(
        wait_source(&client, session, Duration::from_secs(10)),
        "{}",
        desk.logs()
    );
    Some((desk, client))
}

#[test]
fn session_bridges_unicode_text_and_png_both_ways() {
    let Some((desk, client)) = connected_session("session_bridges_unicode_text_and_png_both_ways")
    else {
        return;
    };
    let text = "Grüße aus dem Host, 世界! 🦀";
    assert!(
        host_sets_and_session_pastes(&desk, &client, text),
        "{}",
        desk.logs()
    );

    let back = "aus der Sitzung: ÆØÅ ✓";
    desk.copy("UTF8_STRING", back.as_bytes());
    assert_eq!(
        next_guest_grab(&client, Duration::from_secs(5)),
        Some(vec![ClipboardFormat::Text]),
        "{}",
        desk.logs()
    );
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        back.as_bytes()
    );

    let png = test_png(64, 48);
    let serial = client
        .clipboard_set(ClipboardContent::png(png.clone()))
        .unwrap();
    client
        .clipboard_wait_sent(serial, Duration::from_secs(5))
        .unwrap();
    let mut pasted = None;
    assert!(wait_until(Duration::from_secs(5), || {
        pasted = desk.paste("image/png");
        pasted.is_some()
    }));
    assert_eq!(pixels(&pasted.unwrap()), pixels(&png));

    let other = test_png(17, 5);
    desk.copy("image/png", &other);
    let formats = next_guest_grab(&client, Duration::from_secs(5)).unwrap();
    assert!(formats.contains(&ClipboardFormat::Png), "{formats:?}");
    let got = client.clipboard_get(ClipboardFormat::Png).unwrap();
    assert_eq!(pixels(&got), pixels(&other));
}

#[test]
fn no_echo_loop_through_the_session() {
    let Some((desk, client)) = connected_session("no_echo_loop_through_the_session") else {
        return;
    };
    clipboard_events_during(&client, Duration::from_millis(500));

    // Host → session: one request for the data, then 2 s of silence.
    let before = client.messages_received();
    let serial = client
        .clipboard_set(ClipboardContent::text("ping"))
        .unwrap();
    let events = clipboard_events_during(&client, Duration::from_secs(2));
    assert_eq!(events, [ClipboardEvent::HostDataSent { serial }]);
    assert_eq!(client.messages_received() - before, 1, "only the request");
    assert_eq!(desk.paste("UTF8_STRING").as_deref(), Some(&b"ping"[..]));

    // Session → host: one grab, one answer to our fetch, then 2 s of silence.
    let before = client.messages_received();
    desk.copy("UTF8_STRING", b"pong");
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
fn session_gone_falls_back_to_the_agent_and_comes_back() {
    let Some((mut desk, client)) =
        connected_session("session_gone_falls_back_to_the_agent_and_comes_back")
    else {
        return;
    };
    assert!(host_sets_and_session_pastes(&desk, &client, "before"));
    desk.kill_session(0);
    assert!(
        wait_source(&client, ClipboardSource::AgentCopy, Duration::from_secs(5)),
        "{}",
        desk.logs()
    );
    // The agent's own copy kept the last content, and is the clipboard now.
    let got = desk.guest_cli(&["get"]);
    assert_eq!(got.stdout, b"before", "{}", desk.logs());
    assert!(desk.guest_cli(&["set", "while away"]).status.success());
    assert!(next_guest_grab(&client, Duration::from_secs(5)).is_some());
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        b"while away"
    );

    // Back: the session (whose X clipboard is empty: its owner died) takes the agent's copy.
    desk.start_session();
    let session = ClipboardSource::UserSession { uid: desk.uid };
    assert!(wait_source(&client, session, Duration::from_secs(10)));
    assert!(wait_until(Duration::from_secs(5), || desk
        .paste("UTF8_STRING")
        .is_some_and(|p| p == b"while away")));
    assert!(host_sets_and_session_pastes(
        &desk,
        &client,
        "bridged again"
    ));
}

#[test]
fn session_follows_an_agent_restart() {
    let Some((mut desk, _client)) = connected_session("session_follows_an_agent_restart") else {
        return;
    };
    desk.kill_agent();
    desk.start_agent();
    let client = desk.client();
    let session = ClipboardSource::UserSession { uid: desk.uid };
    assert!(
        wait_source(&client, session, Duration::from_secs(10)),
        "{}",
        desk.logs()
    );
    assert!(host_sets_and_session_pastes(
        &desk,
        &client,
        "after the restart"
    ));
    desk.copy("UTF8_STRING", b"copied after");
    assert!(next_guest_grab(&client, Duration::from_secs(5)).is_some());
    assert_eq!(
        client.clipboard_get(ClipboardFormat::Text).unwrap(),
        b"copied after"
    );
}

#[test]
fn newest_session_wins_and_the_older_stands_down() {
    let Some((mut desk, client)) =
        connected_session("newest_session_wins_and_the_older_stands_down")
    else {
        return;
    };
    desk.start_session();
    let status = desk.session_exit(0, Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{}", desk.logs());
    assert!(desk.log("session-0.log").contains("standing down"));
    // The newer one serves.
    assert!(host_sets_and_session_pastes(&desk, &client, "second"));
    assert!(desk.sessions[1].try_wait().unwrap().is_none());
}

#[test]
fn session_ends_with_its_x_server() {
    let Some((mut desk, client)) = connected_session("session_ends_with_its_x_server") else {
        return;
    };
    let _ = desk.xvfb.kill();
    let _ = desk.xvfb.wait();
    let status = desk.session_exit(0, Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{}", desk.logs());
    assert!(desk.log("session-0.log").contains("the session ended"));
    assert!(wait_source(
        &client,
        ClipboardSource::AgentCopy,
        Duration::from_secs(5)
    ));
}

#[test]
fn user_without_an_active_session_is_refused() {
    let Some(mut desk) = Desk::start("user_without_an_active_session_is_refused") else {
        return;
    };
    // The session user is never root (nobody, or ourselves when we are not root), so
    // logind's word decides.
    desk.logind_session(false);
    let client = desk.client();
    desk.start_session();
    let status = desk.session_exit(0, Duration::from_secs(5));
    let logs = desk.logs();
    assert!(status.is_some(), "{logs}");
    assert!(logs.contains("owns no active graphical session"), "{logs}");
    let session = ClipboardSource::UserSession { uid: desk.uid };
    assert!(!wait_source(&client, session, Duration::from_millis(500)));
}

/// Connects to the session socket as a client of our own making (we are root or the
/// session user, both accepted) and says hello.
fn raw_session(desk: &Desk) -> UnixStream {
    let mut stream = UnixStream::connect(desk.session_socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let hello = Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        capabilities: Default::default(),
        software: "hostile".into(),
    };
    stream
        .write_all(&encode_message(1, &Message::Hello(hello)).unwrap())
        .unwrap();
    stream
}

/// Reads until the agent hangs up; true when it did within the timeout.
fn hung_up(stream: &mut UnixStream) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn hostile_session_client_is_disconnected_and_the_agent_goes_on() {
    let Some((desk, client)) =
        connected_session("hostile_session_client_is_disconnected_and_the_agent_goes_on")
    else {
        return;
    };
    // Connections that never say hello: past 16 of them the next is turned away at once.
    let silent: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(desk.session_socket()).unwrap())
        .collect();
    let mut extra = UnixStream::connect(desk.session_socket()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(hung_up(&mut extra), "{}", desk.logs());
    drop(silent);
    assert!(wait_until(Duration::from_secs(5), || desk
        .log("agent.log")
        .contains("too many connections owe a hello")));

    // Garbage instead of a hello.
    let mut garbage = UnixStream::connect(desk.session_socket()).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage.write_all(&[7u8; 300]).unwrap();
    assert!(hung_up(&mut garbage));

    // A frame announcing 4 GiB: refused on its header, nothing allocated.
    let mut huge = raw_session(&desk);
    huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
    huge.write_all(&[0u8; 1024]).unwrap();
    assert!(hung_up(&mut huge));

    // A well-framed message it may not send (the host's info request).
    let mut wrong = raw_session(&desk);
    wrong
        .write_all(&encode_message(5, &Message::InfoRequest).unwrap())
        .unwrap();
    assert!(hung_up(&mut wrong));

    // A grab whose data never comes, then a frame cut short: the agent gives the liar
    // up (this client took over as the newest: the real session stood down).
    let mut liar = raw_session(&desk);
    let grab = Message::ClipboardGrab(ClipboardGrab {
        serial: 1,
        formats: vec![ClipboardFormat::Text, ClipboardFormat::Png],
    });
    liar.write_all(&encode_message(0, &grab).unwrap()).unwrap();
    liar.write_all(&[0xff, 0xff, 0x00]).unwrap();
    drop(liar);

    // The agent still serves the host, its own copy the clipboard again.
    assert!(
        wait_source(&client, ClipboardSource::AgentCopy, Duration::from_secs(15)),
        "{}",
        desk.logs()
    );
    let serial = client
        .clipboard_set(ClipboardContent::text("still here"))
        .unwrap();
    client
        .clipboard_wait_sent(serial, Duration::from_secs(5))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || desk
        .guest_cli(&["get"])
        .stdout
        == b"still here"));
    assert!(client.ping().is_ok());
}

#[test]
fn a_second_agent_leaves_a_live_session_socket_alone() {
    let Some((desk, client)) =
        connected_session("a_second_agent_leaves_a_live_session_socket_alone")
    else {
        return;
    };
    let second = Command::new(AGENT)
        .args(["run", "--clipboard", "memory", "--no-shares"])
        .args(["--fake-clock-offset-ms=0", "--fake-power"])
        .arg(desk.dir.join("power2"))
        .arg(format!(
            "--transport=unix:{}",
            desk.dir.join("agent2.sock").display()
        ))
        .arg("--clipboard-socket")
        .arg(desk.dir.join("clipboard2.sock"))
        .arg("--session-socket")
        .arg(desk.session_socket())
        .env_remove("DISPLAY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut second = Killed(second);
    let mut stderr = BufReader::new(second.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("another agent serves desktop sessions"),
        "{line}"
    );
    drop(second);
    // The first agent's session still bridges.
    assert!(host_sets_and_session_pastes(
        &desk,
        &client,
        "still the first"
    ));
}
