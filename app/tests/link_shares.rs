//! A folder shared while the guest runs, through the app's guest link, into a real FUSE
//! mount: the real `vireo-agent` (its guest side, run on this host over a Unix socket,
//! as the agent's own tests do) behind a stand-in for the engine's hybrid vsock socket
//! (it answers `CONNECT 7000` with `OK` and passes the bytes on). The link serves the
//! drop folder from the start; `add_share` then mounts one more folder at once, and what
//! either side writes the other reads.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vireo_app::guest_link::{AgentStatus, Feature, GuestLink, LinkSpec};
use vireo_app::vm_config::LinkSettings;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_e2e::xvfb::Xvfb;
use vireo_guest_agent::host::ShareConfig;
use vireo_guest_agent::protocol::ClipboardSource;

const TEST: &str = "app::link_shares::a_folder_shared_while_running_is_mounted_at_once";
const SESSION_TEST: &str =
    "app::link_shares::the_clipboard_status_follows_the_guests_desktop_session";

/// The agent binary, built beside `vireo` by the workspace's build.
fn agent_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vireo"))
        .parent()
        .unwrap()
        .join("vireo-agent");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace (`cargo build --workspace --release`)",
        path.display()
    );
    path
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: the agent unmounts its shares as it ends.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real agent's guest side on this host, with its own clipboard and session
/// sockets in `dir` and no X display; returns it and the hybrid vsock socket before it.
fn start_agent(dir: &TempDir, extra: &[&std::ffi::OsStr]) -> (Agent, PathBuf) {
    let agent_socket = dir.0.join("agent.sock");
    let agent = Agent(
        Command::new(agent_binary())
            .arg("run")
            .arg("--transport")
            .arg(format!("unix:{}", agent_socket.display()))
            .arg("--clipboard-socket")
            .arg(dir.0.join("clipboard.sock"))
            .arg("--session-socket")
            .arg(dir.0.join("session.sock"))
            .args(extra)
            // Never touch this host's clock or power.
            .arg("--fake-clock-offset-ms=0")
            .arg("--fake-power")
            .arg(dir.0.join("power"))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !agent_socket.exists() {
        assert!(Instant::now() < end, "the agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let vsock = dir.0.join("vsock.sock");
    hybrid_vsock(&vsock, agent_socket);
    (agent, vsock)
}

/// Statuses from `statuses` until one passes `done` (panics after `limit`).
fn until_status(
    statuses: &mpsc::Receiver<AgentStatus>,
    what: &str,
    limit: Duration,
    done: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let s = statuses
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no status with {what} within {limit:?}"));
        if done(&s) {
            return s;
        }
    }
}

/// The engine's side of hybrid vsock, for one port: every connection to `path` that
/// asks for `CONNECT <port>` is joined to the agent's socket.
fn hybrid_vsock(path: &Path, agent: PathBuf) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for host in listener.incoming().map_while(Result::ok) {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(host.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || !line.starts_with("CONNECT ") {
                    return;
                }
                let Ok(guest) = UnixStream::connect(&agent) else {
                    return;
                };
                let mut answer = host.try_clone().unwrap();
                if answer.write_all(b"OK 1024\n").is_err() {
                    return;
                }
                let (mut to_guest, mut from_guest) = (guest.try_clone().unwrap(), guest);
                let mut to_host = host;
                std::thread::spawn(move || std::io::copy(&mut reader, &mut to_guest));
                let _ = std::io::copy(&mut from_guest, &mut to_host);
            });
        }
    });
}

#[test]
fn a_folder_shared_while_running_is_mounted_at_once() {
    if !Path::new("/dev/fuse").exists() {
        report::skipped(TEST, "no /dev/fuse on this host");
        return;
    }
    report::ran(TEST);
    let dir = TempDir::new("app-link-shares");
    let mounts = dir.0.join("mnt");
    let uid = nix::unistd::getuid();
    let (_agent, vsock) = start_agent(
        &dir,
        &[
            "--share-base".as_ref(),
            mounts.as_os_str(),
            format!("--share-owner={uid}:{uid}").as_ref(),
        ],
    );

    let vm_dir = dir.0.join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let (statuses, status) = mpsc::channel();
    let link = GuestLink::start(
        LinkSpec {
            vm_id: "shares".into(),
            vsock,
            vm_dir: vm_dir.clone(),
            settings: LinkSettings::default(),
        },
        move |s| {
            let _ = statuses.send(s.clone());
        },
    );
    // The drop folder is served from the start.
    until_status(&status, "folders working", Duration::from_secs(30), |s| {
        s.folders == Feature::Working
    });
    // (The status says the agent offers folders; its mount follows the hello.)
    std::fs::write(vm_dir.join("shared/dropped.txt"), "dropped").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        match std::fs::read_to_string(mounts.join("vireo/dropped.txt")) {
            Ok(text) => break text,
            Err(e) if Instant::now() > end => panic!("the drop folder is not mounted: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(dropped, "dropped");

    // One more folder while it runs: mounted at once.
    let docs = dir.0.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("notes.txt"), "from the host").unwrap();
    let mounted = link
        .add_share(ShareConfig {
            name: "docs".into(),
            path: docs.clone(),
            read_only: false,
        })
        .expect("the guest mounts the new share");
    assert_eq!(mounted.map(PathBuf::from), Some(mounts.join("docs")));
    assert_eq!(
        std::fs::read_to_string(mounts.join("docs/notes.txt")).unwrap(),
        "from the host"
    );
    std::fs::write(mounts.join("docs/reply.txt"), "from the guest").unwrap();
    assert_eq!(
        std::fs::read_to_string(docs.join("reply.txt")).unwrap(),
        "from the guest"
    );
    // The same name again is refused with a reason.
    let again = link.add_share(ShareConfig {
        name: "docs".into(),
        path: docs,
        read_only: true,
    });
    assert!(again.is_err_and(|why| why.contains("already shared")));
    drop(link);
}

/// The toolbar's clipboard says where guest copies land: the agent's own copy while no
/// desktop session runs `vireo-agent session`, the session once one does (here on a
/// private X server), and the agent's copy again when it ends.
#[test]
fn the_clipboard_status_follows_the_guests_desktop_session() {
    report::ran(SESSION_TEST);
    // The link bridges the host clipboard of DISPLAY: a private X server of its own (the
    // other test here does not mind having one too).
    let host_x = Xvfb::start(320, 240);
    std::env::set_var("DISPLAY", &host_x.display);
    let dir = TempDir::new("app-link-session");
    let (_agent, vsock) = start_agent(&dir, &["--no-shares".as_ref()]);
    let vm_dir = dir.0.join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let (statuses, status) = mpsc::channel();
    let link = GuestLink::start(
        LinkSpec {
            vm_id: "session".into(),
            vsock,
            vm_dir,
            settings: LinkSettings::default(),
        },
        move |s| {
            let _ = statuses.send(s.clone());
        },
    );
    let limit = Duration::from_secs(30);
    let copy = until_status(&status, "the agent's copy", limit, |s| {
        s.clipboard == Feature::Working && s.clipboard_source == Some(ClipboardSource::AgentCopy)
    });
    assert!(copy.clipboard_detail().contains("vireo-agent session"));

    let guest_x = Xvfb::start(320, 240);
    let session = Agent(
        Command::new(agent_binary())
            .arg("session")
            .arg("--socket")
            .arg(dir.0.join("session.sock"))
            .env("DISPLAY", &guest_x.display)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let uid = nix::unistd::getuid().as_raw();
    let bridged = until_status(&status, "the desktop session", limit, |s| {
        s.clipboard_source == Some(ClipboardSource::UserSession { uid })
    });
    assert!(
        bridged
            .clipboard_detail()
            .contains(&format!("desktop session of guest user {uid}")),
        "{}",
        bridged.clipboard_detail()
    );
    drop(session);
    until_status(&status, "the agent's copy again", limit, |s| {
        s.clipboard_source == Some(ClipboardSource::AgentCopy)
    });
    drop(link);
}
