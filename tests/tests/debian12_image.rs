//! The full Debian 12 guest (`vireo-image debian12`): built here (cached under
//! `target/` between runs), inspected offline without booting it (the disk's ext4 read
//! with debugfs), its kernel's early boot checked under `vireo-vmm` on any KVM host, and
//! where the host has hardware virtualization booted to a serial login with the
//! account, with the agent's hello reporting Debian 12, a host folder shared through the
//! agent read in the guest and the host's clipboard given by `vireo-agent clipboard get`.
//!
//! Run alone with `cargo test --release -p vireo-e2e --test debian12_image -- --nocapture`.
//! Needs root (debootstrap) and the mirror the host's apt uses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vireo_e2e::debian12::{debian12_image, PASSWORD, USER};
use vireo_e2e::engine::{s, vmm_binary, LiveGuest};
use vireo_e2e::temp::TempDir;
use vireo_e2e::{linux_early, report};

/// The disk's ext4 filesystem, read with debugfs from a raw copy (no mount, no loop
/// device).
struct Ext4 {
    raw: PathBuf,
    _dir: TempDir,
}

impl Ext4 {
    fn of_qcow2(disk: &Path) -> Ext4 {
        let dir = TempDir::new("debian12-raw");
        let raw = dir.0.join("disk.raw");
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw", s(disk), s(&raw)])
            .output()
            .expect("qemu-img runs");
        assert!(out.status.success(), "{out:?}");
        Ext4 { raw, _dir: dir }
    }

    fn debugfs(&self, request: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", request, s(&self.raw)])
            .output()
            .expect("debugfs runs (e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cat(&self, path: &str) -> String {
        self.debugfs(&format!("cat {path}"))
    }

    /// The target of a symbolic link (a short one: stored in the inode).
    fn link(&self, path: &str) -> Option<String> {
        let stat = self.debugfs(&format!("stat {path}"));
        stat.lines().find_map(|l| {
            l.trim()
                .strip_prefix("Fast link dest: ")
                .map(|t| t.trim_matches('"').to_owned())
        })
    }

    fn is_file(&self, path: &str) -> bool {
        self.debugfs(&format!("stat {path}"))
            .contains("Type: regular")
    }
}

#[test]
fn debian12_image_offline_has_kernel_user_agent_network_and_serial_login() {
    const TEST: &str =
        "debian12_image::debian12_image_offline_has_kernel_user_agent_network_and_serial_login";
    if !nix::unistd::geteuid().is_root() {
        report::skipped(TEST, "building the image needs root (debootstrap)");
        return;
    }
    let image = debian12_image();
    for file in [&image.vmlinuz, &image.initrd, &image.vmlinux] {
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1 << 20, "{} is {len} bytes", file.display());
    }
    assert_eq!(image.cmdline, "root=/dev/vda rw");

    let check = Command::new("qemu-img")
        .args(["check", s(&image.disk)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("No errors were found"),
        "qemu-img check: {text}"
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", s(&image.disk)])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 8u64 << 30);

    let fs = Ext4::of_qcow2(&image.disk);
    let os_release = fs.cat("/usr/lib/os-release");
    assert!(os_release.contains("VERSION_ID=\"12\""), "{os_release}");

    // The same kernel and initrd as in /boot (the image's own).
    let boot = fs.debugfs("ls -l /boot");
    assert!(boot.contains("vmlinuz-6.1."), "{boot}");
    assert!(boot.contains("initrd.img-6.1."), "{boot}");

    // The account: in passwd with a home and bash, its SHA-512 hash in shadow, which
    // is the password's (openssl recomputes it from the salt), and in sudo.
    let passwd = fs.cat("/etc/passwd");
    let entry = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{USER}:")))
        .unwrap_or_else(|| panic!("{USER} not in /etc/passwd:\n{passwd}"));
    assert!(
        entry.ends_with(&format!(":/home/{USER}:/bin/bash")),
        "{entry}"
    );
    let shadow = fs.cat("/etc/shadow");
    let hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{USER}:")))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("{USER} not in /etc/shadow"))
        .to_owned();
    let salt = hash
        .strip_prefix("$6$")
        .and_then(|r| r.split('$').next())
        .expect("a SHA-512 crypt hash");
    let again = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, PASSWORD])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), hash);
    let group = fs.cat("/etc/group");
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("sudo:") && l.split(':').nth(3) == Some(USER)),
        "{USER} not in sudo"
    );
    assert!(fs
        .debugfs(&format!("stat /home/{USER}"))
        .contains("Type: directory"));

    // The agent, installed by dpkg and enabled by its postinst.
    assert!(fs.is_file("/usr/bin/vireo-agent"));
    let status = fs.cat("/var/lib/dpkg/status");
    assert!(
        status.contains("Package: vireo-agent\nStatus: install ok installed"),
        "vireo-agent is not installed"
    );
    assert_eq!(
        fs.link("/etc/systemd/system/multi-user.target.wants/vireo-agent.service")
            .as_deref(),
        Some("/lib/systemd/system/vireo-agent.service")
    );

    // Networking: networkd with DHCP on the virtio NIC, resolved, resolv.conf its stub.
    let network = fs.cat("/etc/systemd/network/20-vireo-virtio.network");
    assert!(network.contains("Driver=virtio_net"), "{network}");
    assert!(network.contains("DHCP=yes"), "{network}");
    for (target, unit) in [
        ("multi-user", "systemd-networkd.service"),
        ("sysinit", "systemd-resolved.service"),
    ] {
        let wants = format!("/etc/systemd/system/{target}.target.wants/{unit}");
        assert_eq!(
            fs.link(&wants),
            Some(format!("/lib/systemd/system/{unit}")),
            "{unit} is not enabled"
        );
    }
    assert_eq!(
        fs.link("/etc/resolv.conf").as_deref(),
        Some("../run/systemd/resolve/stub-resolv.conf")
    );

    // A login on the serial console, the root filesystem in fstab, a fresh machine id.
    assert_eq!(
        fs.link("/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service")
            .as_deref(),
        Some("/lib/systemd/system/serial-getty@.service")
    );
    assert!(fs.cat("/etc/fstab").starts_with("/dev/vda\t/\text4"));
    assert_eq!(fs.cat("/etc/machine-id"), "");
    report::ran(TEST);
}

#[test]
fn debian12_kernel_early_boot() {
    const TEST: &str = "debian12_image::debian12_kernel_early_boot";
    if !nix::unistd::geteuid().is_root() {
        report::skipped(TEST, "building the image needs root (debootstrap)");
        return;
    }
    if !report::require_kvm(TEST) {
        return;
    }
    let image = debian12_image();
    // The same checks as for the demo Linux's kernel (the same kernel family), without
    // waiting for where PVM stops it: that is the demo Linux test's record.
    linux_early::check(&image.vmlinux, "Debian 12 image's vmlinux via PVH", false);
}

/// Boots the image (its own kernel and initrd, the disk as /dev/vda, passt, vsock) to
/// multi-user.target, logs in on the serial console with the account, asks the agent
/// for the guest's info over vsock, then checks a shared folder and the clipboard
/// through the agent against what the guest's shell sees.
#[test]
fn debian12_boots_to_a_serial_login_and_the_agent_says_debian_12() {
    use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
    use vireo_guest_agent::protocol::AGENT_VSOCK_PORT;
    const TEST: &str =
        "debian12_image::debian12_boots_to_a_serial_login_and_the_agent_says_debian_12";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let image = debian12_image();
    // The boot writes to the disk: boot a copy.
    let dir = TempDir::new("debian12-boot");
    let disk = dir.0.join("disk.qcow2");
    std::fs::copy(&image.disk, &disk).unwrap();
    let socket = dir.0.join("vsock.sock");
    let disk_arg = format!("path={}", disk.display());
    let vsock_arg = format!("cid=3,socket={}", s(&socket));
    let mut guest = LiveGuest::spawn_with_stdin(
        Command::new(vmm_binary())
            .args([
                "--kernel",
                s(&image.vmlinuz),
                "--initrd",
                s(&image.initrd),
                "--cmdline",
                &image.cmdline,
                "--disk",
                &disk_arg,
                "--net",
                "--vsock",
                &vsock_arg,
                "--cpus",
                "2",
                "--memory",
                "1G",
            ])
            .stdin(Stdio::piped()),
    );
    let mut console = guest.child.stdin.take().unwrap();
    let boot = Duration::from_secs(180);
    assert!(
        guest.wait_for("Multi-User System", boot).is_some(),
        "multi-user.target was not reached"
    );
    // getty prints its issue line, then `debian login: ` without a newline.
    assert!(guest.wait_for("ttyS0", boot).is_some(), "no serial getty");
    std::thread::sleep(Duration::from_secs(2));
    console.write_all(format!("{USER}\n").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    console
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    console
        .write_all(b"echo LOGGED-IN-AS-$(id -un)-ON-$(cat /etc/debian_version | cut -d. -f1)\n")
        .unwrap();
    assert!(
        guest
            .wait_for(
                &format!("LOGGED-IN-AS-{USER}-ON-12"),
                Duration::from_secs(30)
            )
            .is_some(),
        "the serial login with the account failed"
    );

    let client = AgentClient::start(
        Endpoint::HybridVsock {
            path: socket.clone(),
            port: AGENT_VSOCK_PORT,
        },
        ClientConfig::default(),
    );
    client
        .wait_connected(Duration::from_secs(60))
        .expect("the agent's hello on vsock port 7000");
    let info = client.info().expect("guest info");
    assert!(
        info.os_pretty_name.starts_with("Debian GNU/Linux 12"),
        "{info:?}"
    );
    assert_eq!(info.hostname, "debian");

    // The account may use sudo: its credentials cached for the root-only checks below
    // (the agent's clipboard socket is root's; the share is mounted by the agent).
    console
        .write_all(format!("echo '{PASSWORD}' | sudo -S -v\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    shared_folder_reaches_the_guest(&client, &mut guest, &mut console);
    host_clipboard_reaches_the_guest(&client, &mut guest, &mut console);
    drop(client);
    let _ = guest.kill();
}

/// Deadlines count from the guest's start (`LiveGuest::wait_for`): these come after the
/// boot's.
const LATER: Duration = Duration::from_secs(600);

/// A host folder exported through the agent is mounted in the guest, and a file
/// written on the host is read there (over the serial console).
fn shared_folder_reaches_the_guest(
    client: &vireo_guest_agent::host::AgentClient,
    guest: &mut LiveGuest,
    console: &mut impl Write,
) {
    use vireo_guest_agent::host::share::ShareConfig;
    let host_dir = TempDir::new("debian12-share");
    std::fs::write(host_dir.0.join("hello.txt"), "written-on-the-host-4242").unwrap();
    let mounted = client
        .add_share(ShareConfig {
            name: "hostdir".into(),
            path: host_dir.0.clone(),
            read_only: false,
        })
        .expect("the agent mounts the share")
        .expect("connected: the guest's mount point");
    assert_eq!(mounted, "/mnt/vireo/hostdir");
    console
        .write_all(b"echo SHARE-$(sudo cat /mnt/vireo/hostdir/hello.txt)-END\n")
        .unwrap();
    assert!(
        guest
            .wait_for("SHARE-written-on-the-host-4242-END", LATER)
            .is_some(),
        "the guest did not read the host's file through the share"
    );
}

/// Text set on the host's side of the agent is what `vireo-agent clipboard get` gives
/// in the guest (no X session there: the agent's own clipboard).
fn host_clipboard_reaches_the_guest(
    client: &vireo_guest_agent::host::AgentClient,
    guest: &mut LiveGuest,
    console: &mut impl Write,
) {
    use vireo_guest_agent::protocol::clipboard::ClipboardContent;
    let serial = client
        .clipboard_set(ClipboardContent::text("copied-on-the-host-77"))
        .expect("the host offers its clipboard");
    client
        .clipboard_wait_sent(serial, Duration::from_secs(30))
        .expect("the agent fetched the host's clipboard");
    console
        .write_all(b"echo CLIP-$(sudo vireo-agent clipboard get)-END\n")
        .unwrap();
    assert!(
        guest
            .wait_for("CLIP-copied-on-the-host-77-END", LATER)
            .is_some(),
        "the guest's clipboard is not the host's text"
    );
}

/// `vireo-image debian12` as the app runs it: the password on stdin (not in the
/// process's command line, which every user can read), `--owner` giving the whole
/// output to the user pkexec ran it for, and `--cancel-on-stdin-eof`: closing stdin
/// mid-build stops the builder and everything it started and removes the output.
#[test]
fn the_builder_as_the_app_runs_it_hides_the_password_gives_the_files_away_and_stops_on_eof() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    const TEST: &str = "debian12_image::the_builder_as_the_app_runs_it_hides_the_password_gives_the_files_away_and_stops_on_eof";
    const OWNER: u32 = 54321;
    if !nix::unistd::geteuid().is_root() {
        report::skipped(TEST, "building the image needs root (debootstrap)");
        return;
    }
    let builder = vireo_e2e::release_binary("vireo-installers", "vireo-image");
    let agent_deb = vireo_e2e::packaging::build_deb("agent");
    let dir = TempDir::new("debian12-builder");
    let start = |out: &Path| {
        let mut child = Command::new(&builder)
            .args(["debian12", "--out", s(out), "--user", "eve"])
            .args(["--password-stdin", "--cancel-on-stdin-eof", "--disk-gib=3"])
            .arg(format!("--owner={OWNER}:{OWNER}"))
            .args(["--agent-deb", s(&agent_deb)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("vireo-image runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"eve's secret\n").unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, stdin, lines.map_while(Result::ok))
    };

    // Whole: the files are the owner's, the password is in no command line.
    let out = dir.0.join("whole");
    let (mut child, stdin, lines) = start(&out);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("secret"));
    let printed: Vec<String> = lines.collect();
    assert!(child.wait().unwrap().success(), "{printed:#?}");
    drop(stdin);
    for file in [
        "",
        "disk.qcow2",
        "vmlinuz",
        "vmlinux",
        "initrd.img",
        "cmdline",
    ] {
        let meta = std::fs::metadata(out.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (OWNER, OWNER), "{file}");
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        5,
        "only the image is left"
    );

    // Cancelled while it configures the copied root: gone, with what it started.
    let out = dir.0.join("cancelled");
    let (mut child, stdin, mut lines) = start(&out);
    assert!(
        lines.any(|l| l.starts_with("progress 62 configure")),
        "no configure step"
    );
    assert!(out.is_dir());
    drop(stdin);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!out.exists(), "the cancelled build left {out:?}");
    let group = child.id();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .filter(|stat| {
            // Field 5 (after the parenthesised name) is the process group.
            let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            after.split(' ').nth(2) == Some(&group.to_string()) && !after.starts_with("Z ")
        })
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    report::ran(TEST);
}
