//! Running `vireo-vmm`: the binary built once per test process in the profile the tests
//! were built with, a run with a deadline, and the probe guest's `VIREO-PROBE` lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::repo_root;

/// Builds `vireo-vmm` and `vireo-window` beside it (a no-op when up to date) and returns
/// the engine's path; `VIREO_VMM_BINARY` names an engine built already instead (to
/// compare two builds in one sitting, say: `VIREO_VMM_BINARY=/tmp/old-vireo-vmm cargo
/// bench ...`).
pub fn vmm_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("VIREO_VMM_BINARY") {
            return PathBuf::from(path);
        }
        let release = std::env::current_exe()
            .map(|p| p.components().any(|c| c.as_os_str() == "release"))
            .unwrap_or(false);
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "vireo-vmm", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(repo_root()).status().expect("cargo runs");
        assert!(status.success(), "building vireo-vmm failed");
        repo_root()
            .join("target")
            .join(if release { "release" } else { "debug" })
            .join("vireo-vmm")
    })
    .clone()
}

/// What a finished (or killed) run printed.
#[derive(Debug)]
pub struct Run {
    /// `None` if the run was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// All `VIREO-PROBE` lines.
    pub fn probe_lines(&self) -> Vec<ProbeLine> {
        self.stdout.lines().filter_map(ProbeLine::parse).collect()
    }

    /// The first probe line whose tag (first word) is `tag`.
    pub fn probe(&self, tag: &str) -> Option<ProbeLine> {
        self.probe_lines().into_iter().find(|l| l.tag == tag)
    }
}

/// Runs `vireo-vmm args...`, stdin closed, killing it after `deadline`.
pub fn run_vmm(args: &[&str], deadline: Duration) -> Run {
    run_command(Command::new(vmm_binary()).args(args), deadline)
}

/// Runs a command with stdin closed, collecting output, killing it after `deadline`.
pub fn run_command(cmd: &mut Command, deadline: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_until(&mut child, start + deadline);
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A guest that is still running, read line by line as it prints.
pub struct LiveGuest {
    pub child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    pub started: Instant,
    pub seen: Vec<String>,
}

impl LiveGuest {
    pub fn spawn(cmd: &mut Command) -> LiveGuest {
        LiveGuest::spawn_with_stdin(cmd.stdin(Stdio::null()))
    }

    /// As [`Self::spawn`] with the stdin `cmd` was given (a pipe: the guest's console
    /// input, taken from `child.stdin`).
    pub fn spawn_with_stdin(cmd: &mut Command) -> LiveGuest {
        LiveGuest::spawn_with_stderr(cmd, Stdio::inherit())
    }

    /// As [`Self::spawn_with_stdin`], the engine's log going to `stderr` (a file, to
    /// read what it said before it died).
    pub fn spawn_with_stderr(cmd: &mut Command, stderr: Stdio) -> LiveGuest {
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        LiveGuest {
            child,
            lines: rx,
            started,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns when it came, relative to the start.
    pub fn wait_for(&mut self, needle: &str, deadline: Duration) -> Option<Duration> {
        let end = self.started + deadline;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return Some(at - self.started);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Collects lines until the guest's process ends or `limit` passes (measured from
    /// now); returns its exit status if it ended.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            while let Ok((_, line)) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Some(status) = self.child.try_wait().expect("wait works") {
                self.read_to_end();
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes the lines the guest printed before its engine ended: the reader may not
    /// have passed them on yet when the exit is seen. Bounded, since a child of the
    /// engine (passt) may still hold the pipe open.
    fn read_to_end(&mut self) {
        let end = Instant::now() + Duration::from_secs(2);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((_, line)) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }

    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok((_, line)) = self.lines.try_recv() {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

/// A test that fails with its guest still running must not leave the engine behind: it
/// would spin on a core (and hold the test's output pipe open) long after the test.
impl Drop for LiveGuest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VIREO-PROBE <tag> key=value ...`
#[derive(Debug, Clone)]
pub struct ProbeLine {
    pub tag: String,
    pub fields: HashMap<String, String>,
}

impl ProbeLine {
    pub fn parse(line: &str) -> Option<ProbeLine> {
        let rest = line.trim_end().strip_prefix("VIREO-PROBE ")?;
        let mut words = rest.split_whitespace();
        let first = words.next()?;
        let mut fields = HashMap::new();
        let tag = match first.split_once('=') {
            Some((k, v)) => {
                fields.insert(k.to_owned(), v.trim_matches('"').to_owned());
                k.to_owned()
            }
            None => first.to_owned(),
        };
        for w in words {
            if let Some((k, v)) = w.split_once('=') {
                fields.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        Some(ProbeLine { tag, fields })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

/// What `vireo-vmm doctor` says, as a map.
pub fn doctor() -> HashMap<String, String> {
    let run = run_vmm(&["doctor"], Duration::from_secs(30));
    run.stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Whether the host can boot stock Linux kernels (hardware virtualization).
pub fn host_runs_linux() -> bool {
    doctor().get("runs_unmodified_kernels").map(String::as_str) == Some("yes")
}

/// Path as &str for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("paths here are UTF-8")
}

/// Connects to an engine's control socket, waiting up to `wait` for the engine to open
/// it (it does once the VM is built); answers may then take up to `answer`.
pub fn connect_control(
    path: &Path,
    wait: Duration,
    answer: Duration,
) -> vireo_vmm::control::client::Control {
    use vireo_vmm::control::client::Control;
    let end = Instant::now() + wait;
    let control = loop {
        match Control::connect(path) {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => panic!("control socket {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    control.set_timeout(Some(answer)).unwrap();
    control
}

/// The probe guest running its agent (so a vsock device worker runs): 2 vCPUs, 256 MiB,
/// the vsock at `dir`/v.sock, the control socket at `control`, the engine's log in
/// `dir`/engine.log (to read what it said before it died), `extra` arguments last.
/// Returns once the agent is ready.
pub fn spawn_probe_agent(dir: &Path, control: &Path, extra: &[&str]) -> LiveGuest {
    let log = std::fs::File::create(dir.join("engine.log")).unwrap();
    let mut cmd = Command::new(vmm_binary());
    cmd.args([
        "--kernel",
        s(&crate::probe_guest::probe_guest_elf()),
        "--cpus",
        "2",
        "--memory",
        "256M",
        "--vsock",
        &format!("cid=3,socket={}", dir.join("v.sock").display()),
        "--control-socket",
        s(control),
        "--cmdline",
        "probe.run=agent",
    ])
    .args(extra)
    .stdin(Stdio::null());
    let mut guest = LiveGuest::spawn_with_stderr(&mut cmd, Stdio::from(log));
    let ready = guest.wait_for("agent_ready", Duration::from_secs(60));
    assert!(ready.is_some(), "{:#?}", guest.seen);
    guest
}
