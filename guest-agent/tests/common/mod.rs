//! A real shared folder on this host: the `vireo-agent` binary listening on a Unix socket
//! with its FUSE mounts under a scratch directory, and the real host side
//! (`vireo-agent host share`) serving a scratch folder to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub const AGENT: &str = env!("CARGO_BIN_EXE_vireo-agent");
/// Everything in a share shows as owned by this guest user.
pub const OWNER: u32 = 4321;

/// The FUSE device must exist; otherwise says so loudly (and in the e2e record) and
/// returns false.
pub fn require_fuse(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        record(&format!("RAN shared_folders::{test}"));
        true
    } else {
        let why = "no /dev/fuse on this host";
        record(&format!("SKIPPED shared_folders::{test}: {why}"));
        eprintln!("\n*** SKIPPED shared_folders::{test}: {why} ***\n");
        false
    }
}

fn record(line: &str) {
    use std::io::Write;
    let path = std::env::var_os("VIREO_E2E_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-results.log"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-share-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent ("guest") side: `vireo-agent run` with mounts under `base`.
pub struct AgentProc {
    pub socket: PathBuf,
    pub base: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    pub fn start(dir: &Path, tag: &str) -> Self {
        let socket = dir.join(format!("agent-{tag}.sock"));
        let base = dir.join(format!("mnt-{tag}"));
        let mut agent = Self {
            socket,
            base,
            child: None,
        };
        agent.restart();
        agent
    }

    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(AGENT)
            .arg("run")
            .arg("--no-session-socket")
            .arg("--transport")
            .arg(format!("unix:{}", self.socket.display()))
            .arg("--share-base")
            .arg(&self.base)
            .arg(format!("--share-owner={OWNER}:{OWNER}"))
            // Never touch this host's clock or power.
            .arg("--fake-clock-offset-ms=0")
            .arg("--fake-power")
            .arg(self.base.with_extension("power"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(5), || self.socket.exists()),
            "the agent did not create its socket"
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn mount(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// SIGKILL: no chance to unmount (what a crash looks like).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: the agent unmounts and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let exited = wait_until(Duration::from_secs(5), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop();
        // Whatever is still mounted under the base (a test that failed midway).
        if let Ok(entries) = std::fs::read_dir(&self.base) {
            for e in entries.flatten() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The host side: `vireo-agent host --socket S share ...`, its JSON events on a channel.
pub struct HostProc {
    child: Child,
    pub events: Receiver<serde_json::Value>,
}

impl HostProc {
    pub fn start(socket: &Path, shares: &[String]) -> Self {
        let mut child = Command::new(AGENT)
            .arg("host")
            .arg("--socket")
            .arg(socket)
            .arg("share")
            .args(shares)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Self { child, events }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next "mounted" event and returns `name → path` (panics on an
    /// error for any share).
    pub fn wait_mounted(&self, timeout: Duration) -> Vec<(String, PathBuf)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .expect("no mounted event from the host side");
            if event["event"] == "mounted" {
                return event["shares"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        assert!(s.get("error").is_none(), "mount failed: {s}");
                        (
                            s["name"].as_str().unwrap().to_owned(),
                            PathBuf::from(s["path"].as_str().unwrap()),
                        )
                    })
                    .collect();
            }
        }
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One agent, one host side serving `shares` (`NAME=DIR[,ro]`), mounted.
pub struct Rig {
    pub agent: AgentProc,
    pub host: HostProc,
    pub scratch: Scratch,
}

impl Rig {
    /// Shares are given as `(name, read_only)`; each one's folder is `<scratch>/<name>`.
    pub fn start(test: &str, shares: &[(&str, bool)]) -> Self {
        let scratch = Scratch::new(test);
        let specs: Vec<String> = shares
            .iter()
            .map(|(name, ro)| {
                let dir = scratch.path(name);
                std::fs::create_dir_all(&dir).unwrap();
                format!("{name}={}{}", dir.display(), if *ro { ",ro" } else { "" })
            })
            .collect();
        let agent = AgentProc::start(&scratch.0, "a");
        let host = HostProc::start(&agent.socket, &specs);
        let mounted = host.wait_mounted(Duration::from_secs(10));
        assert_eq!(mounted.len(), shares.len());
        Self {
            agent,
            host,
            scratch,
        }
    }

    /// The host folder of share `name`.
    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.scratch.path(name)
    }

    /// Where the agent mounted share `name`.
    pub fn mount(&self, name: &str) -> PathBuf {
        self.agent.mount(name)
    }
}

/// Runs `script` with `sh -c`, in `dir`; returns (success, stdout, stderr).
pub fn sh(dir: &Path, script: &str) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `script` and panics with its output if it fails.
#[track_caller]
pub fn sh_ok(dir: &Path, script: &str) -> String {
    let (ok, out, err) = sh(dir, script);
    assert!(ok, "script failed: {script}\nstdout: {out}\nstderr: {err}");
    out
}

/// `sha256sum` of a file, read the way any program would.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
