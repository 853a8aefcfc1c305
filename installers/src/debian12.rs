//! The full Debian 12 guest: a qcow2 disk with Debian 12 (systemd, the distribution
//! kernel, DHCP on the virtio NIC, a serial login, the user's account, the Vireo agent
//! package installed and enabled), and the kernel and initrd beside it for the engine's
//! direct kernel boot with `root=/dev/vda`.
//!
//! How: `debootstrap` (minbase plus [`PACKAGES`]) from the host's configured Debian mirror
//! into a base root cached under the cache directory, keyed by its inputs; a copy of it is
//! configured from the host (`systemctl --root`, `useradd --root`, `dpkg --root`: no
//! chroot shell, no mounts), made into an ext4 filesystem with `mkfs.ext4 -d` (no loop
//! device) and converted with `qemu-img convert -O qcow2`. Needs root (debootstrap).

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{bzimage, elf};

pub const SUITE: &str = "bookworm";
/// What debootstrap adds to its minbase variant: the kernel (and with it
/// initramfs-tools), systemd as init with udev, networkd's resolver, a few tools a user
/// expects at a prompt, and fusermount for the agent's shared folders.
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "iputils-ping",
    "procps",
    "sudo",
    "less",
    "nano",
    "ca-certificates",
    "fuse3",
];
/// Bump when what [`build`] does to the base root changes (part of the cache key).
const BASE_RECIPE: u32 = 1;
/// The guest's root filesystem, as the engine's first `--disk` shows it.
pub const ROOT_DEVICE: &str = "/dev/vda";
pub const HOSTNAME: &str = "debian";

/// What the builder needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Receives `disk.qcow2`, `vmlinuz`, `vmlinux`, `initrd.img` and `cmdline`.
    pub out_dir: PathBuf,
    /// Downloaded packages and the debootstrapped base roots.
    pub cache_dir: PathBuf,
    /// The Debian mirror (see [`crate::mirror::host_mirror`]).
    pub mirror: String,
    pub user: String,
    pub password: String,
    /// The `vireo-agent` package to install in the guest.
    pub agent_deb: PathBuf,
    /// The disk's virtual size (the filesystem fills it).
    pub disk_gib: u64,
}

/// What [`build`] wrote.
#[derive(Debug, Clone)]
pub struct Image {
    pub disk: PathBuf,
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line the image boots with (`root=/dev/vda ...`).
    pub cmdline: String,
    /// The kernel release (`6.1.0-NN-amd64`).
    pub kernel_release: String,
    /// True if the debootstrapped base came from the cache.
    pub base_cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a valid user name for Debian: {0:?} (lower-case letters, digits, '-' and '_', starting with a letter, at most 32)")]
    BadUser(String),
    #[error("building a Debian 12 image needs root (debootstrap, files owned by the guest's users): run it with sudo")]
    NeedsRoot,
    #[error("the password is empty or has a line break")]
    BadPassword,
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("cannot run `{tool}` (Debian package {package}): {source}")]
    MissingTool {
        tool: String,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the root has no kernel in /boot")]
    NoKernel,
    #[error("cannot extract vmlinux from the image's kernel: {0}")]
    BzImage(#[from] bzimage::BzImageError),
    #[error("the image's vmlinux cannot be booted with PVH: {0}")]
    NotPvh(#[from] elf::ElfError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One progress report: how far along the whole build is (0-100) and the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub percent: u8,
    pub stage: &'static str,
    pub message: String,
}

impl Progress {
    /// The line the command line prints and the app parses:
    /// `progress <percent> <stage> <message>`.
    pub fn line(&self) -> String {
        format!("progress {} {} {}", self.percent, self.stage, self.message)
    }

    /// Parses a [`Self::line`]; `None` for other lines.
    pub fn parse(line: &str) -> Option<(u8, String, String)> {
        let rest = line.strip_prefix("progress ")?;
        let mut parts = rest.splitn(3, ' ');
        let percent = parts.next()?.parse::<u8>().ok().filter(|p| *p <= 100)?;
        let stage = parts.next()?.to_owned();
        Some((percent, stage, parts.next().unwrap_or("").to_owned()))
    }
}

/// Checks a user name the way Debian's adduser does by default.
pub fn check_user(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name != "root";
    if ok {
        Ok(())
    } else {
        Err(Error::BadUser(name.to_owned()))
    }
}

/// Checks the account before anything slow happens.
pub fn check_account(user: &str, password: &str) -> Result<(), Error> {
    check_user(user)?;
    if password.is_empty() || password.contains(['\n', '\r']) {
        return Err(Error::BadPassword);
    }
    Ok(())
}

/// The base root's cache key: everything debootstrap's result depends on.
pub fn base_key(mirror: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{BASE_RECIPE}\n{mirror}\n{SUITE}\nminbase\n{}",
        PACKAGES.join(",")
    ));
    hex(&h.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Builds the image into `options.out_dir`.
pub fn build(options: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Image, Error> {
    check_account(&options.user, &options.password)?;
    // /proc/self belongs to the effective user.
    if fs::metadata("/proc/self").is_ok_and(|m| m.uid() != 0) {
        return Err(Error::NeedsRoot);
    }
    let mut report = |percent: u8, stage: &'static str, message: String| {
        progress(Progress {
            percent,
            stage,
            message,
        })
    };
    fs::create_dir_all(&options.out_dir).map_err(io_err("cannot create", &options.out_dir))?;
    // useradd --root and dpkg --root take absolute paths only.
    let out =
        &fs::canonicalize(&options.out_dir).map_err(io_err("cannot find", &options.out_dir))?;
    fs::create_dir_all(&options.cache_dir).map_err(io_err("cannot create", &options.cache_dir))?;

    // 0-60: the base root.
    let base = options
        .cache_dir
        .join(format!("debian12-base-{}", base_key(&options.mirror)));
    let base_cached = base.is_dir();
    if base_cached {
        report(60, "base", format!("{} (cached)", base.display()));
    } else {
        debootstrap(options, &base, &mut report)?;
    }

    // 60-70: this image's root, configured.
    let root = out.join(format!(".root-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(root.clone());
    let _ = fs::remove_dir_all(&root);
    run(Command::new("cp").arg("-a").arg(&base).arg(&root))?;
    report(62, "configure", "copied the base root".into());
    configure(&root, options)?;
    report(
        70,
        "configure",
        format!("user {}, network, serial console, agent", options.user),
    );

    // 70-75: the kernel and initrd beside the disk.
    let (release, vmlinuz_src, initrd_src) = find_kernel(&root)?;
    let vmlinuz = out.join("vmlinuz");
    let initrd = out.join("initrd.img");
    let vmlinux = out.join("vmlinux");
    copy(&vmlinuz_src, &vmlinuz)?;
    copy(&initrd_src, &initrd)?;
    let image = fs::read(&vmlinuz).map_err(io_err("cannot read", &vmlinuz))?;
    let (elf_bytes, _) = bzimage::extract_vmlinux(&image)?;
    elf::pvh_entry(&elf_bytes)?;
    fs::write(&vmlinux, &elf_bytes).map_err(io_err("cannot write", &vmlinux))?;
    let cmdline = format!("root={ROOT_DEVICE} rw");
    fs::write(out.join("cmdline"), format!("{cmdline}\n")).map_err(io_err("cannot write", out))?;
    report(75, "kernel", format!("Linux {release}"));

    // 75-100: the disk.
    let raw = out.join(format!(".disk-{}.raw", std::process::id()));
    let _raw_cleanup = RemoveOnDrop(raw.clone());
    let size = format!("{}G", options.disk_gib);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "vireo-root", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg(&size))?;
    report(90, "filesystem", format!("ext4, {size}"));
    let disk = out.join("disk.qcow2");
    let partial = out.join("disk.qcow2.partial");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&partial))?;
    fs::rename(&partial, &disk).map_err(io_err("cannot write", &disk))?;
    report(100, "qcow2", disk.display().to_string());
    Ok(Image {
        disk,
        vmlinuz,
        vmlinux,
        initrd,
        cmdline,
        kernel_release: release,
        base_cached,
    })
}

/// Runs debootstrap into `<base>.partial`, reporting its progress from its output, and
/// renames the result into place once complete.
fn debootstrap(
    options: &Options,
    base: &Path,
    report: &mut dyn FnMut(u8, &'static str, String),
) -> Result<(), Error> {
    let debs = options.cache_dir.join("debian12-debs");
    fs::create_dir_all(&debs).map_err(io_err("cannot create", &debs))?;
    let partial = base.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    report(
        1,
        "debootstrap",
        format!("Debian 12 from {}", options.mirror),
    );
    let mut child = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&partial)
        .arg(&options.mirror)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::MissingTool {
            tool: "debootstrap".into(),
            package: "debootstrap",
            source,
        })?;
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let mut phase = DebootstrapPhase::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(percent) = phase.advance(&line) {
                report(
                    percent,
                    "debootstrap",
                    line.trim_start_matches("I: ").to_owned(),
                );
            }
        }
    }
    let status = child
        .wait()
        .map_err(io_err("cannot wait for debootstrap", &partial))?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        let log =
            fs::read_to_string(partial.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        return Err(Error::Command {
            command: "debootstrap".into(),
            detail: format!(
                "{status}\n{errors}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    fs::rename(&partial, base).map_err(io_err("cannot rename into place", base))?;
    report(60, "base", format!("{} (built)", base.display()));
    Ok(())
}

/// debootstrap's `I:` lines mapped onto 1-60 %: retrieving (the slow part when nothing
/// is cached) to 30, unpacking to 42, configuring to 59. Counts lines per phase against
/// the roughly 150 packages it installs.
#[derive(Debug, Default)]
struct DebootstrapPhase {
    seen: u32,
    phase: u8,
}

impl DebootstrapPhase {
    const PACKAGES: u32 = 150;

    fn advance(&mut self, line: &str) -> Option<u8> {
        let (phase, from, to) = if line.starts_with("I: Retrieving") {
            (1, 2, 30)
        } else if line.starts_with("I: Extracting") || line.starts_with("I: Unpacking") {
            (2, 30, 42)
        } else if line.starts_with("I: Configuring") {
            (3, 42, 59)
        } else if line.starts_with("I: Base system installed") {
            return Some(59);
        } else {
            return None;
        };
        if phase != self.phase {
            self.phase = phase;
            self.seen = 0;
        }
        self.seen += 1;
        let span = u32::from(to - from);
        let done = (self.seen * span / Self::PACKAGES).min(span);
        Some(from + done as u8)
    }
}

/// Configures the copied root for this VM, from the host.
fn configure(root: &Path, options: &Options) -> Result<(), Error> {
    let write = |rel: &str, text: &str| -> Result<(), Error> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        }
        fs::write(&path, text).map_err(io_err("cannot write", &path))
    };
    write("etc/hostname", &format!("{HOSTNAME}\n"))?;
    write(
        "etc/hosts",
        &format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    )?;
    write(
        "etc/fstab",
        &format!("{ROOT_DEVICE}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"),
    )?;
    write(
        "etc/apt/sources.list",
        &format!(
            "deb {m} {SUITE} main\ndeb {m} {SUITE}-updates main\n",
            m = options.mirror
        ),
    )?;
    // DHCP on the virtio NIC (by driver, whatever its name), through systemd-networkd;
    // systemd-resolved answers DNS (its package points /etc/resolv.conf at its stub).
    write(
        "etc/systemd/network/20-vireo-virtio.network",
        "[Match]\nDriver=virtio_net\n\n[Network]\nDHCP=yes\n",
    )?;
    // Every boot of a copy of this disk gets its own machine id.
    write("etc/machine-id", "")?;
    let _ = fs::remove_file(root.join("var/lib/dbus/machine-id"));
    let localtime = root.join("etc/localtime");
    let _ = fs::remove_file(&localtime);
    symlink("/usr/share/zoneinfo/Etc/UTC", &localtime)
        .map_err(io_err("cannot link", &localtime))?;
    write("etc/timezone", "Etc/UTC\n")?;

    run(Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args([
            "enable",
            "systemd-networkd.service",
            "systemd-resolved.service",
            "serial-getty@ttyS0.service",
        ]))?;

    // The user: in sudo (and the groups a desktop user has), with the password hashed
    // here (SHA-512 crypt); the password goes to openssl on stdin, never on a command line.
    let hash = sha512_crypt(&options.password)?;
    run(Command::new("useradd")
        .arg(format!("--root={}", root.display()))
        .args(["--create-home", "--shell", "/bin/bash", "--groups"])
        .arg("sudo,adm,users")
        .args(["--password", &hash])
        .arg(&options.user))?;

    // The agent package: its postinst enables vireo-agent.service (chrooted by dpkg).
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--install", "--force-not-root"])
        .arg(&options.agent_deb))?;

    // Downloaded packages are not part of the system.
    if let Ok(entries) = fs::read_dir(root.join("var/cache/apt/archives")) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// `openssl passwd -6 -stdin`: a SHA-512 crypt hash with a random salt.
fn sha512_crypt(password: &str) -> Result<String, Error> {
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::MissingTool {
            tool: "openssl".into(),
            package: "openssl",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .map_err(io_err("cannot write to", Path::new("openssl")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err("cannot run", Path::new("openssl")))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !hash.starts_with("$6$") {
        return Err(Error::Command {
            command: "openssl passwd -6".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(hash)
}

/// The newest `vmlinuz-<release>` in the root's /boot and its `initrd.img-<release>`.
fn find_kernel(root: &Path) -> Result<(String, PathBuf, PathBuf), Error> {
    let boot = root.join("boot");
    let mut releases: Vec<String> = fs::read_dir(&boot)
        .map_err(io_err("cannot read", &boot))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .filter(|release| boot.join(format!("initrd.img-{release}")).is_file())
        .collect();
    releases.sort();
    let release = releases.pop().ok_or(Error::NoKernel)?;
    let vmlinuz = boot.join(format!("vmlinuz-{release}"));
    let initrd = boot.join(format!("initrd.img-{release}"));
    Ok((release, vmlinuz, initrd))
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(io_err("cannot copy", from))
}

fn run(command: &mut Command) -> Result<(), Error> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.output().map_err(|source| Error::MissingTool {
        package: match program.as_str() {
            "mkfs.ext4" => "e2fsprogs",
            "qemu-img" => "qemu-utils",
            "useradd" => "passwd",
            "systemctl" => "systemd",
            _ => "coreutils",
        },
        tool: program.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .filter(|a| !a.starts_with("$6$"))
            .collect();
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// Removes a directory (or file) when dropped: the work root and the raw disk are never
/// left behind, whatever fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            let _ = fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_as_adduser_takes_them() {
        for good in ["alice", "a", "bob-2", "x_y"] {
            assert!(check_user(good).is_ok(), "{good}");
        }
        for bad in ["", "Alice", "1abc", "root", "a b", "a:b", &"a".repeat(33)] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_lines_round_trip() {
        let p = Progress {
            percent: 42,
            stage: "debootstrap",
            message: "Configuring libc6...".into(),
        };
        assert_eq!(
            Progress::parse(&p.line()),
            Some((42, "debootstrap".into(), "Configuring libc6...".into()))
        );
        assert_eq!(Progress::parse("progress 101 x y"), None);
        assert_eq!(Progress::parse("I: Retrieving x"), None);
    }

    #[test]
    fn debootstrap_progress_only_goes_forward_within_its_range() {
        let mut phase = DebootstrapPhase::default();
        let mut last = 0;
        for line in (0..200)
            .map(|_| "I: Retrieving p")
            .chain((0..200).map(|_| "I: Extracting p"))
            .chain((0..200).map(|_| "I: Configuring p"))
        {
            let p = phase.advance(line).unwrap();
            assert!(p >= last && (2..=59).contains(&p), "{p} after {last}");
            last = p;
        }
        assert_eq!(phase.advance("W: something"), None);
    }

    #[test]
    fn the_base_key_follows_the_mirror() {
        assert_ne!(base_key("http://a/debian"), base_key("http://b/debian"));
        assert_eq!(base_key("http://a/debian"), base_key("http://a/debian"));
    }
}
