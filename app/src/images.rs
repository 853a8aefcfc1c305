//! Guest images the app builds: the Vireo demo Linux on first use, made by `vireo-image`
//! (`installers/`) into the user's data directory, and a full Debian 12 for one VM
//! (`vireo-image debian12`, root: run through pkexec for a user). The build runs as a
//! child process whose progress lines the wizard shows; cancelling it kills its whole
//! process group (or, for a root build the app may not signal, closes its stdin, on
//! which the builder stops itself) and leaves nothing half-built, because it writes into
//! a side directory that is renamed into place only when the builder succeeds.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use vireo_installers::debian12::Progress;

/// The files a demo Linux image directory holds (what `launch` boots).
pub const DEMO_FILES: [&str; 2] = ["vmlinuz", "initramfs.img"];

/// The files a Debian 12 build must have written (what `launch` boots and the VM's
/// config names).
pub const DEBIAN12_REQUIRED: [&str; 4] = ["disk.qcow2", "vmlinuz", "initrd.img", "cmdline"];

/// How many of the builder's last output lines a failure shows.
const KEPT_LINES: usize = 12;

/// Whether `dir` holds a whole demo Linux image.
pub fn is_demo_image(dir: &Path) -> bool {
    DEMO_FILES.iter().all(|f| dir.join(f).is_file())
}

/// Where a build stands.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildStatus {
    /// Step `step` of `steps` (0 of 0 before the first line), and what it does.
    Running {
        step: u32,
        steps: u32,
        message: String,
    },
    /// The image is whole in this directory.
    Finished(PathBuf),
    /// Why it failed, with the builder's last lines.
    Failed(String),
}

impl BuildStatus {
    /// Done so far, 0 to 1, for a progress bar.
    pub fn fraction(&self) -> f32 {
        match self {
            BuildStatus::Running { step, steps, .. } if *steps > 0 => {
                (*step as f32 / *steps as f32).clamp(0.0, 1.0)
            }
            BuildStatus::Running { .. } | BuildStatus::Failed(_) => 0.0,
            BuildStatus::Finished(_) => 1.0,
        }
    }
}

/// What the reader threads saw of the builder's output.
#[derive(Default)]
struct Output {
    step: u32,
    steps: u32,
    message: String,
    last: VecDeque<String>,
}

impl Output {
    fn take_line(&mut self, line: &str) {
        if let Some((step, steps, message)) = parse_step(line) {
            (self.step, self.steps, self.message) = (step, steps, message.to_owned());
        } else if let Some((percent, stage, message)) = Progress::parse(line) {
            (self.step, self.steps) = (percent.into(), 100);
            self.message = format!("{stage}: {message}");
        }
        if self.last.len() == KEPT_LINES {
            self.last.pop_front();
        }
        self.last.push_back(line.to_owned());
    }
}

/// Which image a build makes: what its directory must hold when the builder is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageKind {
    DemoLinux,
    Debian12,
}

impl ImageKind {
    fn files(self) -> &'static [&'static str] {
        match self {
            ImageKind::DemoLinux => &DEMO_FILES,
            ImageKind::Debian12 => &DEBIAN12_REQUIRED,
        }
    }

    fn is_whole(self, dir: &Path) -> bool {
        self.files().iter().all(|f| dir.join(f).is_file())
    }
}

/// A Debian 12 for one VM: the account, the disk size, and how to run the builder.
#[derive(Debug, Clone)]
pub struct Debian12Request {
    pub builder: PathBuf,
    pub user: String,
    pub password: String,
    pub disk_gib: u64,
    /// The builder's package and base-system cache (`None`: its default).
    pub cache: Option<PathBuf>,
}

/// How a Debian 12 build gets root: it is root already, or it asks through pkexec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Root,
    /// `pkexec`, with the files given back to this user and group.
    Pkexec {
        uid: u32,
        gid: u32,
    },
}

impl Privilege {
    pub fn of_this_process() -> Privilege {
        if nix::unistd::geteuid().is_root() {
            Privilege::Root
        } else {
            Privilege::Pkexec {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
            }
        }
    }
}

impl Debian12Request {
    /// The command line: the password goes on stdin (`/proc/PID/cmdline` is readable
    /// by every user), and stdin stays open so that closing it cancels the build.
    fn command(&self, out: &Path, privilege: Privilege) -> Command {
        // pkexec wants an absolute program path.
        let builder = std::path::absolute(&self.builder).unwrap_or(self.builder.clone());
        let mut command = match privilege {
            Privilege::Root => Command::new(&builder),
            Privilege::Pkexec { .. } => {
                let mut c = Command::new("pkexec");
                c.arg(&builder);
                c
            }
        };
        command
            .arg("debian12")
            .arg("--out")
            .arg(out)
            .args([
                "--user",
                &self.user,
                "--password-stdin",
                "--cancel-on-stdin-eof",
            ])
            .arg(format!("--disk-gib={}", self.disk_gib));
        if let Some(cache) = &self.cache {
            command.arg("--cache").arg(cache);
        }
        if let Privilege::Pkexec { uid, gid } = privilege {
            command.arg(format!("--owner={uid}:{gid}"));
        }
        command
    }
}

/// One `vireo-image` run into `out`.
pub struct ImageBuild {
    child: Option<Child>,
    /// A Debian 12 build's stdin, held open: closing it cancels the build.
    stdin: Option<ChildStdin>,
    /// The threads reading its output: joined once it exits, so its last lines are in.
    readers: Vec<std::thread::JoinHandle<()>>,
    kind: ImageKind,
    output: Arc<Mutex<Output>>,
    out: PathBuf,
    partial: PathBuf,
    finished: Option<BuildStatus>,
}

impl ImageBuild {
    /// Starts `builder --out <side dir>` for a demo Linux image that will live in
    /// `out`; `wake` is called on every line it prints (to repaint the window).
    pub fn start_demo(
        builder: &Path,
        out: &Path,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Result<ImageBuild, String> {
        let partial = prepare(out)?;
        let mut command = Command::new(builder);
        command.arg("--out").arg(&partial).stdin(Stdio::null());
        let build = ImageBuild::spawn(command, ImageKind::DemoLinux, out, partial, wake)
            .map_err(|e| missing_builder(builder, e))?;
        Ok(build)
    }

    /// Starts `vireo-image debian12` for one VM's image, to live in `out` (as root, or
    /// through pkexec as `privilege` says), and gives it the password on stdin.
    pub fn start_debian12(
        request: &Debian12Request,
        privilege: Privilege,
        out: &Path,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Result<ImageBuild, String> {
        let partial = prepare(out)?;
        let mut command = request.command(&partial, privilege);
        command.stdin(Stdio::piped());
        let program = match privilege {
            Privilege::Root => request.builder.clone(),
            Privilege::Pkexec { .. } => "pkexec".into(),
        };
        let mut build = ImageBuild::spawn(command, ImageKind::Debian12, out, partial, wake)
            .map_err(|e| missing_builder(&program, e))?;
        let mut stdin = build.child.as_mut().and_then(|c| c.stdin.take());
        if let Some(pipe) = &mut stdin {
            // A builder that died at once shows why through its output, not here.
            let _ = std::io::Write::write_all(pipe, format!("{}\n", request.password).as_bytes());
        }
        build.stdin = stdin;
        Ok(build)
    }

    /// Runs `command` in its own process group with its output read by two threads.
    fn spawn(
        mut command: Command,
        kind: ImageKind,
        out: &Path,
        partial: PathBuf,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<ImageBuild> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a cancel ends apt-get and cargo under it too.
            .process_group(0)
            .spawn()?;
        let output = Arc::new(Mutex::new(Output::default()));
        let wake = Arc::new(wake);
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        let mut readers = Vec::new();
        for stream in streams.into_iter().flatten() {
            let (output, wake) = (Arc::clone(&output), Arc::clone(&wake));
            let reader = std::thread::Builder::new()
                .name("image-build-output".into())
                .spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        lock(&output).take_line(&line);
                        wake();
                    }
                    wake();
                });
            readers.extend(reader.ok());
        }
        Ok(ImageBuild {
            child: Some(child),
            readers,
            stdin: None,
            kind,
            output,
            out: out.to_owned(),
            partial,
            finished: None,
        })
    }

    /// Where the build stands; once the builder has exited, the image is moved into
    /// place (or the side directory removed) and the answer stays.
    pub fn status(&mut self) -> BuildStatus {
        if let Some(done) = &self.finished {
            return done.clone();
        }
        let exited = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Ok(status),
            Some(Ok(None)) => {
                let out = lock(&self.output);
                return BuildStatus::Running {
                    step: out.step,
                    steps: out.steps,
                    message: out.message.clone(),
                };
            }
            Some(Err(e)) => Err(format!("lost the image builder: {e}")),
            None => Err("the build was cancelled".into()),
        };
        self.child = None;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let done = match exited {
            Ok(status) if status.success() => self.move_into_place(),
            Ok(status) => Err(format!(
                "the image builder failed ({status}):\n{}",
                self.last_lines()
            )),
            Err(why) => Err(why),
        };
        let done = match done {
            Ok(()) => BuildStatus::Finished(self.out.clone()),
            Err(why) => {
                let _ = std::fs::remove_dir_all(&self.partial);
                BuildStatus::Failed(why)
            }
        };
        self.finished = Some(done.clone());
        done
    }

    /// Stops the builder and everything it started, and removes what it wrote. A
    /// Debian 12 builder is asked first by closing its stdin (it stops its process
    /// group and removes its output itself: the only way into a root build under
    /// pkexec) and killed if it has not ended within [`STOP_WAIT`].
    pub fn cancel(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stdin.take().is_some() {
                wait_at_most(&mut child, STOP_WAIT);
            }
            // The group's id is the child's pid (`process_group(0)`).
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.partial);
        self.finished = Some(BuildStatus::Failed("the build was cancelled".into()));
    }

    fn move_into_place(&self) -> Result<(), String> {
        if !self.kind.is_whole(&self.partial) {
            return Err(format!(
                "the image builder ended without writing {} into {}:\n{}",
                self.kind.files().join(" and "),
                self.partial.display(),
                self.last_lines()
            ));
        }
        // A demo image another build finished meanwhile is as good: keep it.
        if self.kind == ImageKind::DemoLinux && is_demo_image(&self.out) {
            let _ = std::fs::remove_dir_all(&self.partial);
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&self.out);
        std::fs::rename(&self.partial, &self.out)
            .map_err(|e| format!("cannot move the image to {}: {e}", self.out.display()))
    }

    fn last_lines(&self) -> String {
        let out = lock(&self.output);
        out.last.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for ImageBuild {
    /// A wizard closed mid-build takes its build with it.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.cancel();
        }
    }
}

/// How long a cancelled Debian 12 build may take to stop itself and clean up.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for `child` to exit, up to `limit`.
fn wait_at_most(child: &mut Child, limit: std::time::Duration) {
    let end = std::time::Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Makes `out`'s parent and clears the side directory a build the app did not see
/// finish (killed, or crashed) left; returns the side directory.
fn prepare(out: &Path) -> Result<PathBuf, String> {
    let partial = side_dir(out);
    let _ = std::fs::remove_dir_all(&partial);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    Ok(partial)
}

fn missing_builder(program: &Path, e: std::io::Error) -> String {
    format!(
        "cannot run the image builder {}: {e} (install the vireo package, or build it with \
         `cargo build --release -p vireo-installers`)",
        program.display()
    )
}

/// `.NAME.partial` beside `out`.
fn side_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    out.with_file_name(format!(".{name}.partial"))
}

/// `[3/8] message`, as `vireo-image` reports each step.
fn parse_step(line: &str) -> Option<(u32, u32, &str)> {
    let rest = line.strip_prefix('[')?;
    let (counts, message) = rest.split_once("] ")?;
    let (step, steps) = counts.split_once('/')?;
    let (step, steps) = (step.parse().ok()?, steps.parse().ok()?);
    (step <= steps).then_some((step, steps, message))
}

fn lock(output: &Mutex<Output>) -> std::sync::MutexGuard<'_, Output> {
    output.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn step_lines_parse_and_others_do_not() {
        assert_eq!(parse_step("[3/8] busybox"), Some((3, 8, "busybox")));
        assert_eq!(
            parse_step("[8/8] /x/initramfs.img (4475 KiB)").unwrap().0,
            8
        );
        for other in [
            "vireo-image: wrote",
            "[9/8] too far",
            "[a/8] x",
            "[3/8]",
            "",
        ] {
            assert_eq!(parse_step(other), None, "{other}");
        }
    }

    #[test]
    fn debian12_progress_lines_move_the_bar() {
        let mut out = Output::default();
        out.take_line("vireo-image: Debian 12 from http://deb.debian.org/debian");
        assert_eq!((out.step, out.steps), (0, 0));
        out.take_line("progress 42 debootstrap Configuring libc6...");
        assert_eq!((out.step, out.steps), (42, 100));
        assert_eq!(out.message, "debootstrap: Configuring libc6...");
        out.take_line("progress 250 bogus line");
        assert_eq!(out.step, 42);
    }

    #[test]
    fn through_pkexec_the_builder_gets_the_user_and_never_the_password() {
        let request = Debian12Request {
            builder: "/usr/bin/vireo-image".into(),
            user: "alice".into(),
            password: "hunter2-secret".into(),
            disk_gib: 12,
            cache: None,
        };
        let pkexec = Privilege::Pkexec {
            uid: 1000,
            gid: 1001,
        };
        let command = request.command(Path::new("/vms/.x.partial"), pkexec);
        assert_eq!(command.get_program(), "pkexec");
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "/usr/bin/vireo-image",
                "debian12",
                "--out",
                "/vms/.x.partial",
                "--user",
                "alice",
                "--password-stdin",
                "--cancel-on-stdin-eof",
                "--disk-gib=12",
                "--owner=1000:1001"
            ]
        );
        let root = request.command(Path::new("/o"), Privilege::Root);
        assert_eq!(root.get_program(), "/usr/bin/vireo-image");
        assert!(!root
            .get_args()
            .any(|a| a.to_string_lossy().contains("hunter2")));
    }

    /// A stand-in builder records its arguments and what came on stdin: the password
    /// arrives there, and a whole image is moved into place.
    #[test]
    fn a_debian12_build_gets_the_password_on_stdin_and_lands_whole() {
        let dir = temp("debian12");
        let builder = script(
            &dir,
            &format!(
                "out=$3; mkdir -p \"$out\"; echo \"$@\" > {0}/args; read pw; echo \"$pw\" > {0}/pw\n\
                 for f in disk.qcow2 vmlinuz vmlinux initrd.img; do echo x > \"$out/$f\"; done\n\
                 echo 'root=/dev/vda rw' > \"$out/cmdline\"; echo 'progress 100 qcow2 done'",
                dir.display()
            ),
        );
        let request = Debian12Request {
            builder,
            user: "alice".into(),
            password: "pa ss".into(),
            disk_gib: 4,
            cache: None,
        };
        let out = dir.join("vms/.debian12-1");
        let mut build = start_busy_retried(|| {
            ImageBuild::start_debian12(&request, Privilege::Root, &out, || {})
        })
        .unwrap();
        assert_eq!(wait(&mut build), BuildStatus::Finished(out.clone()));
        assert_eq!(std::fs::read_to_string(dir.join("pw")).unwrap(), "pa ss\n");
        let args = std::fs::read_to_string(dir.join("args")).unwrap();
        assert!(
            args.contains("--user alice") && !args.contains("pa ss"),
            "{args}"
        );
        assert!(DEBIAN12_REQUIRED.iter().all(|f| out.join(f).is_file()));
        assert!(!side_dir(&out).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("builder");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// `start` again while the script it runs is "busy": another test's fork can hold a
    /// copy of the fd that wrote it until that child execs, and exec then fails with
    /// ETXTBSY (CI saw it).
    fn start_busy_retried(
        start: impl Fn() -> Result<ImageBuild, String>,
    ) -> Result<ImageBuild, String> {
        for _ in 0..100 {
            match start() {
                Err(why) if why.contains("Text file busy") => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other,
            }
        }
        start()
    }

    fn wait(build: &mut ImageBuild) -> BuildStatus {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let status = build.status();
            if !matches!(status, BuildStatus::Running { .. }) {
                return status;
            }
            assert!(Instant::now() < end, "the build never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The real builder is driven by the wizard's test (`app/tests/ui_wizard_image.rs`);
    /// these pin down what the app does with a builder that fails or writes nothing.
    #[test]
    fn a_failing_builder_says_why_and_leaves_nothing() {
        let dir = temp("fail");
        let builder = script(
            &dir,
            "mkdir -p \"$2\"; echo '[1/8] downloading'; echo 'apt-get: no route to host' >&2; exit 3",
        );
        let out = dir.join("images/demo-linux");
        let mut build =
            start_busy_retried(|| ImageBuild::start_demo(&builder, &out, || {})).unwrap();
        match wait(&mut build) {
            BuildStatus::Failed(why) => {
                assert!(why.contains("exit status: 3"), "{why}");
                assert!(why.contains("no route to host"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!out.exists() && !side_dir(&out).exists());

        let empty = script(&dir, "mkdir -p \"$2\"; echo '[8/8] done'");
        let mut build = start_busy_retried(|| ImageBuild::start_demo(&empty, &out, || {})).unwrap();
        match wait(&mut build) {
            BuildStatus::Failed(why) => assert!(why.contains("without writing"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!out.exists());
        match ImageBuild::start_demo(&dir.join("missing"), &out, || {}) {
            Err(why) => assert!(why.contains("cargo build --release -p vireo-installers")),
            Ok(_) => panic!("a missing builder started"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cancel_kills_the_builder_and_what_it_started() {
        let dir = temp("cancel");
        let pids = dir.join("pids");
        // The builder starts a grandchild, as vireo-image starts apt-get.
        let builder = script(
            &dir,
            &format!(
                "mkdir -p \"$2\"; sleep 60 & echo $! > {0}; echo $$ >> {0}; echo '[1/8] x'; wait",
                pids.display()
            ),
        );
        let out = dir.join("demo-linux");
        let mut build =
            start_busy_retried(|| ImageBuild::start_demo(&builder, &out, || {})).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while build.status().fraction() == 0.0 {
            assert!(Instant::now() < end, "no progress line");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(build.status().fraction(), 1.0 / 8.0);
        build.cancel();
        assert_eq!(
            build.status(),
            BuildStatus::Failed("the build was cancelled".into())
        );
        for pid in std::fs::read_to_string(&pids).unwrap().lines() {
            let end = Instant::now() + Duration::from_secs(5);
            // Gone, or a zombie its (killed) parent left for init to reap.
            while std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
            {
                assert!(Instant::now() < end, "process {pid} outlived the cancel");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert!(!out.exists() && !side_dir(&out).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
