//! New VM → Debian 12 (full) in the real app (`VireoApp` with its backend thread and a
//! library on disk) with the real `vireo-image debian12` (root here, so run directly; the
//! debootstrapped base shares `target/vireo-image-cache` with `tests/src/debian12.rs`, so
//! only the first build on a machine debootstraps). One full build: the account typed,
//! Create, the progress shown, the VM in the library with its own qcow2 (`qemu-img
//! check`), kernel and initrd, then cloned through the library (a valid, independent
//! copy). A bad account builds nothing; Cancel leaves nothing behind. The host is
//! declared to have hardware KVM, where the wizard offers Debian 12 (on PVM it is
//! disabled, which `wizard`'s own tests check); nothing here boots it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use vireo_app::host::{HostInfo, KvmKind};
use vireo_app::paths::Dirs;
use vireo_app::supervisor::{Programs, RuntimeFiles};
use vireo_app::ui::VireoApp;
use vireo_app::vm_config::{OsSource, VmConfig};
use vireo_e2e::temp::TempDir;

mod common;
use common::{retype, until};

/// Builds need root (debootstrap): elsewhere these record a skip.
fn can_build(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    vireo_e2e::report::skipped(test, "building Debian 12 needs root (debootstrap)");
    false
}

/// One build at a time: two first builds would debootstrap into the same cache entry.
static BUILDS: Mutex<()> = Mutex::new(());

const PASSWORD: &str = "correct horse battery";

fn app(base: &TempDir) -> Harness<'static, VireoApp> {
    // The builder beside `vireo` in target/release, where the app looks for it.
    vireo_e2e::release_binary("vireo-installers", "vireo-image");
    let dirs = Dirs {
        data: base.0.join("data"),
        runtime: base.0.join("run"),
    };
    let host = HostInfo {
        cpus: 2,
        memory_mib: 4096,
        kvm: KvmKind::Hardware,
    };
    let programs = Programs::beside(env!("CARGO_BIN_EXE_vireo").into());
    let mut harness =
        Harness::new_eframe(move |cc| VireoApp::new(&cc.egui_ctx, dirs, programs, host));
    harness.set_size(eframe::egui::vec2(800.0, 1000.0));
    until(&mut harness, "the library", Duration::from_secs(10), |h| {
        h.state().loaded()
    });
    harness
}

fn vms(base: &TempDir) -> PathBuf {
    base.0.join("data/vms")
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The wizard open on Debian 12 with the VM named `name` and the account typed.
fn debian12_form(harness: &mut Harness<'static, VireoApp>, name: &str, user: &str) {
    harness.get_by_label("New VM").click();
    harness.run();
    retype(harness, "Name", name);
    harness.get_by_label("Debian 12 (full)").click();
    harness.run();
    harness.get_by_label_contains("Create builds Debian 12 for this VM");
    // Nothing boots here: the VM is only made.
    harness.get_by_label("Start it now").click();
    harness.run();
    retype(harness, "User name", user);
    retype(harness, "Password", PASSWORD);
    retype(harness, "Password again", PASSWORD);
}

fn create_enabled(harness: &Harness<'static, VireoApp>) -> bool {
    !harness
        .get_by_label("Create")
        .accesskit_node()
        .is_disabled()
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs")
}

fn check_clean(disk: &Path) {
    let out = qemu_img(&["check", disk.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "qemu-img check {disk:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The stage names of the builder's progress lines, as the wizard shows them.
const STAGES: [&str; 6] = [
    "debootstrap:",
    "base:",
    "configure:",
    "kernel:",
    "filesystem:",
    "qcow2:",
];

#[test]
fn the_wizard_builds_debian12_for_the_vm_and_the_library_clones_it() {
    const TEST: &str =
        "app::ui_wizard_debian12::the_wizard_builds_debian12_for_the_vm_and_the_library_clones_it";
    if !can_build(TEST) {
        return;
    }
    let _one = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let base = TempDir::new("wizard-debian12");
    let mut harness = app(&base);
    debian12_form(&mut harness, "Deb", "alice");
    assert!(create_enabled(&harness));
    let start = Instant::now();
    harness.get_by_label("Create").click();
    harness.run();
    harness.get_by_label("Building Debian 12 for this VM");
    harness.get_by_label("Cancel build");
    let seen = RefCell::new(Vec::new());
    until(
        &mut harness,
        "the Debian 12 build and the VM",
        Duration::from_secs(1800),
        |h| {
            for stage in STAGES {
                if h.query_by_label_contains(stage).is_some() && !seen.borrow().contains(&stage) {
                    seen.borrow_mut().push(stage);
                }
            }
            if let Some(failed) = h.query_by_label_contains("the image builder failed") {
                panic!("the build failed: {:?}", failed.accesskit_node().label());
            }
            h.state().rows().len() == 1
        },
    );
    let took = start.elapsed();
    println!(
        "wizard Debian 12 build, Create to the VM in the library: {:.1} s (stages seen: {:?})",
        took.as_secs_f64(),
        seen.borrow()
    );
    assert!(
        seen.borrow().len() >= 2,
        "the progress was not shown: {:?}",
        seen.borrow()
    );
    harness.run();
    harness.get_by_label("Deb");
    harness.get_by_label("Debian 12");

    // The VM's directory holds its own system, and nothing else was left in the library.
    let dir = vms(&base).join("deb");
    assert_eq!(entries(&vms(&base)), vec![dir.clone()]);
    let config = VmConfig::load(&dir.join("vm.toml")).unwrap();
    let OsSource::Debian12 {
        user,
        disk,
        kernel,
        initrd,
        cmdline,
    } = &config.os
    else {
        panic!("{:?}", config.os)
    };
    assert_eq!(user, "alice");
    assert_eq!(cmdline, "root=/dev/vda rw");
    assert!(config.network && config.mac.is_some());
    check_clean(&dir.join(disk));
    let info = qemu_img(&["info", "--output=json", dir.join(disk).to_str().unwrap()]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(info.contains("\"virtual-size\": 8589934592"), "{info}");
    for file in [kernel, initrd] {
        assert!(
            std::fs::metadata(dir.join(file)).unwrap().len() > 1 << 20,
            "{file:?}"
        );
    }
    // The launcher boots those files, the qcow2 as the first disk.
    let runtime = RuntimeFiles {
        dir: base.0.join("run/deb"),
    };
    let programs = Programs::beside(env!("CARGO_BIN_EXE_vireo").into());
    let args =
        vireo_app::supervisor::launch::engine_args(&config, &dir, &runtime, &programs).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("--kernel"), dir.join("vmlinuz").display().to_string());
    assert_eq!(
        after("--initrd"),
        dir.join("initrd.img").display().to_string()
    );
    assert_eq!(after("--cmdline"), "root=/dev/vda rw");
    assert_eq!(
        after("--disk"),
        format!("path={},format=qcow2", dir.join("disk.qcow2").display())
    );
    assert!(after("--net").starts_with("passt,mac=52:54:00:"));
    assert!(after("--vsock").starts_with("cid=3,socket="));

    // Clone: the copy has its own disk and kernel files, valid and apart.
    harness.get_by_label("Clone").click();
    harness.run();
    retype(&mut harness, "Name of the copy", "Deb 2");
    harness.get_by_label("Make the copy").click();
    until(&mut harness, "the copy", Duration::from_secs(300), |h| {
        h.state().rows().len() == 2
    });
    let copy = vms(&base).join("deb-2");
    let copied = VmConfig::load(&copy.join("vm.toml")).unwrap();
    assert_eq!(copied.os, config.os);
    assert_ne!(copied.mac, config.mac);
    let (disk, copy_disk) = (dir.join("disk.qcow2"), copy.join("disk.qcow2"));
    check_clean(&copy_disk);
    let same = qemu_img(&[
        "compare",
        disk.to_str().unwrap(),
        copy_disk.to_str().unwrap(),
    ]);
    assert!(
        same.status.success(),
        "the copy's disk differs from the original"
    );
    for file in ["vmlinuz", "initrd.img", "vmlinux", "cmdline"] {
        assert_eq!(md5(&dir.join(file)), md5(&copy.join(file)), "{file}");
    }
    let before = md5(&disk);
    let write = Command::new("qemu-io")
        .args(["-c", "write -P 0x5a 0 4M", copy_disk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(write.status.success(), "{write:?}");
    check_clean(&copy_disk);
    assert_eq!(md5(&disk), before, "writing the copy changed the original");
    let differs = qemu_img(&[
        "compare",
        disk.to_str().unwrap(),
        copy_disk.to_str().unwrap(),
    ]);
    assert_eq!(
        differs.status.code(),
        Some(1),
        "the write did not reach the copy"
    );
    vireo_e2e::report::ran(TEST);
}

#[test]
fn a_bad_account_shows_the_builders_message_and_builds_nothing() {
    let _one = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let base = TempDir::new("wizard-debian12-bad");
    let mut harness = app(&base);
    debian12_form(&mut harness, "Deb", "Alice Smith");
    harness.get_by_label_contains("not a valid user name for Debian: \"Alice Smith\"");
    assert!(!create_enabled(&harness));
    harness.get_by_label("Create").click();
    harness.run();
    assert!(harness
        .query_by_label("Building Debian 12 for this VM")
        .is_none());
    // Fixed name, passwords that differ.
    retype(&mut harness, "User name", "alice");
    retype(&mut harness, "Password again", "x");
    harness.get_by_label("the two passwords differ");
    assert!(!create_enabled(&harness));
    std::thread::sleep(Duration::from_millis(300));
    harness.run();
    assert_eq!(entries(&vms(&base)), Vec::<PathBuf>::new());
    assert!(harness.state().rows().is_empty());
}

#[test]
fn cancelling_the_debian12_build_leaves_nothing_behind() {
    const TEST: &str =
        "app::ui_wizard_debian12::cancelling_the_debian12_build_leaves_nothing_behind";
    if !can_build(TEST) {
        return;
    }
    let _one = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let base = TempDir::new("wizard-debian12-cancel");
    let mut harness = app(&base);
    debian12_form(&mut harness, "Deb", "alice");
    harness.get_by_label("Create").click();
    harness.run();
    // Cancel once the builder writes into the VM library: the base root being copied.
    until(
        &mut harness,
        "the build to configure",
        Duration::from_secs(1800),
        |h| {
            h.query_by_label_contains("configure:").is_some()
                || h.query_by_label_contains("kernel:").is_some()
        },
    );
    assert!(
        !entries(&vms(&base)).is_empty(),
        "the build writes beside the VMs"
    );
    harness.get_by_label("Cancel build").click();
    harness.run();
    harness.get_by_label("The image build was cancelled.");
    assert!(harness.state().rows().is_empty());
    assert_eq!(entries(&vms(&base)), Vec::<PathBuf>::new());
    // No process of the build is left (each named the library's path).
    let library = vms(&base).display().to_string();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = entries(Path::new("/proc"))
            .iter()
            .filter_map(|p| std::fs::read(p.join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&library))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "left running: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The form is back: Create may be tried again.
    assert!(create_enabled(&harness));
    vireo_e2e::report::ran(TEST);
}
