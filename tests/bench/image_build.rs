//! Image build benchmark: the full Debian 12 guest (`vireo_installers::debian12`) built
//! from scratch into a fresh cache (debootstrap runs; the downloaded .debs are shared
//! with the tests' cache, so this measures building, not the network), timed per stage
//! from its progress reports, then again as the New VM wizard runs `vireo-image debian12`
//! (the base now cached); against the Vireo demo Linux's build in the same run and the
//! 5-minute goal. Prints one table.
//!
//! Where the host has hardware virtualization, also the boot of the built image to
//! multi-user.target under `vireo-vmm` and under QEMU (q35, KVM, the same kernel, initrd
//! and a copy of the same disk), and to the agent's hello under `vireo-vmm`, same run.
//!
//! `cargo bench -p vireo-e2e --bench image_build`. Needs root (debootstrap).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::engine::{host_runs_linux, s, vmm_binary, LiveGuest};
use vireo_e2e::qemu::{virtio_blk_args, DiskFormat, QEMU};

use vireo_e2e::debian12::{DISK_GIB, PASSWORD, USER};
use vireo_e2e::packaging::build_deb;
use vireo_e2e::repo_root;
use vireo_e2e::temp::TempDir;
use vireo_installers::{build_image, debian12, default_cache_dir, mirror, BuildOptions};

const GOAL: Duration = Duration::from_secs(300);

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("image_build: skipped: debootstrap needs root");
        return;
    }
    let agent_deb = build_deb("agent");

    // The baseline: the demo Linux from its package cache (what the tests reuse).
    let demo_out = TempDir::new("bench-demo-image");
    let start = Instant::now();
    build_image(
        &BuildOptions {
            out_dir: demo_out.0.clone(),
            cache_dir: default_cache_dir(),
            workspace: repo_root(),
        },
        &mut |_| {},
    )
    .expect("the demo image builds");
    let demo = start.elapsed();

    // Debian 12 into a fresh cache whose .debs are the tests' (downloaded once).
    let cache = TempDir::new("bench-debian12-cache");
    let shared_debs = default_cache_dir().join("debian12-debs");
    std::fs::create_dir_all(&shared_debs).unwrap();
    std::os::unix::fs::symlink(&shared_debs, cache.0.join("debian12-debs")).unwrap();
    let out = TempDir::new("bench-debian12-image");
    let mut stages: Vec<(&'static str, Duration)> = Vec::new();
    let mut last_stage = "";
    let start = Instant::now();
    let image = debian12::build(
        &debian12::Options {
            out_dir: out.0.clone(),
            cache_dir: cache.0.clone(),
            mirror: mirror::host_mirror(debian12::SUITE),
            user: USER.into(),
            password: PASSWORD.into(),
            agent_deb: agent_deb.clone(),
            disk_gib: DISK_GIB,
        },
        &mut |p| {
            // Each stage's time: from the previous stage's last report to its own last.
            if p.stage != last_stage {
                last_stage = p.stage;
                stages.push((p.stage, start.elapsed()));
            } else if let Some(last) = stages.last_mut() {
                last.1 = start.elapsed();
            }
        },
    )
    .expect("the Debian 12 image builds");
    let total = start.elapsed();
    assert!(!image.base_cached, "the cache was fresh");
    let disk_mib = std::fs::metadata(&image.disk).unwrap().len() >> 20;
    let wizard = wizard_build(&cache.0, &agent_deb);

    println!();
    println!(
        "| image build (this machine)                 | seconds | vs demo Linux | vs 5-min goal |"
    );
    println!(
        "|--------------------------------------------|--------:|--------------:|--------------:|"
    );
    let row = |name: &str, d: Duration| {
        println!(
            "| {name:<42} | {:>7.1} | {:>12.1}x | {:>12.0}% |",
            d.as_secs_f64(),
            d.as_secs_f64() / demo.as_secs_f64(),
            100.0 * d.as_secs_f64() / GOAL.as_secs_f64()
        );
    };
    row("demo Linux (kernel + initramfs, cached)", demo);
    let mut previous = Duration::ZERO;
    for (stage, until) in &stages {
        row(&format!("  Debian 12 stage: {stage}"), *until - previous);
        previous = *until;
    }
    row(&format!("Debian 12 total ({disk_mib} MiB qcow2)"), total);
    row(
        "Debian 12 with the base cached (est.)",
        total - stages[0].1.min(total),
    );
    row("Debian 12 as the wizard builds it (cached)", wizard);
    println!();
    boot_times(&image);
}

/// `vireo-image debian12` run as the New VM wizard runs it (the password on stdin, kept
/// open for a cancel; the base system cached by the build before): the time from
/// Create to the image a VM is made from.
fn wizard_build(cache: &Path, agent_deb: &Path) -> Duration {
    use std::io::Write;
    let builder = vireo_e2e::release_binary("vireo-installers", "vireo-image");
    let out = TempDir::new("bench-debian12-wizard");
    let start = Instant::now();
    let mut child = Command::new(builder)
        .args(["debian12", "--out", s(&out.0.join("vm")), "--user", USER])
        .args(["--password-stdin", "--cancel-on-stdin-eof"])
        .arg(format!("--disk-gib={DISK_GIB}"))
        .args(["--cache", s(cache), "--agent-deb", s(agent_deb)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("vireo-image runs");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{PASSWORD}").unwrap();
    assert!(child.wait().unwrap().success(), "the wizard's build failed");
    drop(stdin);
    start.elapsed()
}

/// Where the guest says multi-user.target is reached (systemd's status line on ttyS0).
const MULTI_USER: &str = "Multi-User System";
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// multi-user.target under vireo-vmm and QEMU, and the agent's hello under vireo-vmm.
fn boot_times(image: &debian12::Image) {
    use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
    use vireo_guest_agent::protocol::AGENT_VSOCK_PORT;
    if !(Path::new("/dev/kvm").exists() && host_runs_linux()) {
        println!("image_build: boot times skipped: PVM host (a stock kernel needs hardware virtualization)");
        return;
    }
    let dir = TempDir::new("bench-debian12-boot");
    let disk = dir.0.join("disk.qcow2");

    std::fs::copy(&image.disk, &disk).unwrap();
    let socket = dir.0.join("vsock.sock");
    let disk_arg = format!("path={},format=qcow2", disk.display());
    let vsock_arg = format!("cid=3,socket={}", s(&socket));
    let mut vireo = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&image.vmlinuz),
        "--initrd",
        s(&image.initrd),
        "--cmdline",
        &image.cmdline,
        "--disk",
        &disk_arg,
        "--vsock",
        &vsock_arg,
        "--cpus",
        "2",
        "--memory",
        "1G",
    ]));
    let client = AgentClient::start(
        Endpoint::HybridVsock {
            path: socket.clone(),
            port: AGENT_VSOCK_PORT,
        },
        ClientConfig::default(),
    );
    let vireo_multi_user = vireo.wait_for(MULTI_USER, BOOT_LIMIT);
    let vireo_hello = client
        .wait_connected(BOOT_LIMIT)
        .ok()
        .map(|_| vireo.started.elapsed());
    drop(client);
    let _ = vireo.kill();

    // QEMU on a fresh copy of the same disk.
    std::fs::copy(&image.disk, &disk).unwrap();
    let mut qemu = Command::new(QEMU);
    qemu.args([
        "-enable-kvm",
        "-cpu",
        "host",
        "-M",
        "q35",
        "-smp",
        "2",
        "-m",
        "1G",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&image.vmlinuz)
    .arg("-initrd")
    .arg(&image.initrd)
    .arg("-append")
    .arg(format!("console=ttyS0 panic=1 {}", image.cmdline))
    .args(virtio_blk_args(0, &disk, DiskFormat::Qcow2, false, None))
    .stdin(Stdio::null());
    let mut qemu = LiveGuest::spawn(&mut qemu);
    let qemu_multi_user = qemu.wait_for(MULTI_USER, BOOT_LIMIT);
    let _ = qemu.kill();

    let secs =
        |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
    println!("| Debian 12 boot (2 vCPUs, 1 GiB)  | vireo-vmm s | QEMU q35 s |");
    println!("|----------------------------------|------------:|-----------:|");
    println!(
        "| to multi-user.target             | {:>11} | {:>10} |",
        secs(vireo_multi_user),
        secs(qemu_multi_user)
    );
    println!(
        "| to the agent's hello             | {:>11} | {:>10} |",
        secs(vireo_hello),
        "n/a"
    );
    println!();
}
