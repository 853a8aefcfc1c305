//! virtio-blk under `vireo-vmm`, driven by the probe guest's third-party `virtio-drivers`
//! over our virtio-pci transport: a pattern written in one boot is read back in the
//! next; qcow2 images pass `qemu-img check` and convert to raw with the pattern intact;
//! read-only disks refuse writes with the spec's status; two disks at once; MSI-X
//! delivery and masking; a `kill -9` in the middle of writes leaves a consistent qcow2;
//! a second engine cannot open a disk a running one holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vireo_e2e::engine::{run_vmm, s, vmm_binary, LiveGuest, ProbeLine, Run};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_vmm::exit::code;

const DEADLINE: Duration = Duration::from_secs(120);
const PATTERN_MIB: u64 = 64;

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (installers/setup-host.sh installs qemu-utils)")
}

fn make_image(dir: &Path, name: &str, format: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    let out = qemu_img(&["create", "-f", format, s(&path), &format!("{mib}M")]);
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Boots the probe with `disks` (each a `--disk` spec) running `cmdline`.
fn boot(disks: &[String], cmdline: &str) -> Run {
    let elf = probe_guest_elf();
    let mut args = vec![
        "--kernel".to_owned(),
        s(&elf).to_owned(),
        "--memory".into(),
        "256M".into(),
    ];
    for d in disks {
        args.push("--disk".into());
        args.push(d.clone());
    }
    args.push("--cmdline".into());
    args.push(cmdline.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_vmm(&args, DEADLINE)
}

fn probe_line(run: &Run, tag: &str) -> ProbeLine {
    assert_eq!(
        run.code(),
        Some(code::POWER_OFF),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    run.probe(tag)
        .unwrap_or_else(|| panic!("no {tag} line in:\n{}", run.stdout))
}

/// Checks the seeded pattern in a raw image file with the same code the guest used.
fn assert_pattern(raw: &Path, seed: u64, mib: u64) {
    let data = std::fs::read(raw).unwrap();
    let len = (mib << 20) as usize;
    assert!(data.len() >= len);
    assert_eq!(
        vireo_cpu_bench::check_disk_pattern(seed, 0, &data[..len]),
        None,
        "pattern in {}",
        raw.display()
    );
}

fn write_then_verify(image: &Path, format: &str, seed: u64) {
    let disk = format!("path={},format={format}", image.display());
    let cmd =
        |run: &str| format!("probe.run={run} probe.blk_mib={PATTERN_MIB} probe.blk_seed={seed}");
    let written = probe_line(
        &boot(std::slice::from_ref(&disk), &cmd("blk-write")),
        "blk_write",
    );
    assert_eq!(
        (written.get("ok"), written.get("flush_ok")),
        (Some("1"), Some("1")),
        "{written:?}"
    );
    // A second boot reads what the first wrote.
    let verified = probe_line(&boot(&[disk], &cmd("blk-verify")), "blk_verify");
    assert_eq!(verified.get("ok"), Some("1"), "{verified:?}");
}

#[test]
fn raw_disk_keeps_what_the_guest_wrote() {
    if !report::require_kvm("probe_blk::raw_disk_keeps_what_the_guest_wrote") {
        return;
    }
    let dir = TempDir::new("blk-raw");
    let image = make_image(&dir.0, "disk.raw", "raw", 128);
    write_then_verify(&image, "raw", 7);
    assert_pattern(&image, 7, PATTERN_MIB);
}

#[test]
fn qcow2_disk_interoperates_with_qemu_img() {
    if !report::require_kvm("probe_blk::qcow2_disk_interoperates_with_qemu_img") {
        return;
    }
    let dir = TempDir::new("blk-qcow2");
    let image = make_image(&dir.0, "disk.qcow2", "qcow2", 128);
    write_then_verify(&image, "qcow2", 21);
    let check = qemu_img(&["check", s(&image)]);
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let raw = dir.0.join("converted.raw");
    let convert = qemu_img(&["convert", "-O", "raw", s(&image), s(&raw)]);
    assert!(
        convert.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&convert.stderr)
    );
    assert_pattern(&raw, 21, PATTERN_MIB);
}

#[test]
fn read_only_disk_refuses_writes() {
    if !report::require_kvm("probe_blk::read_only_disk_refuses_writes") {
        return;
    }
    let dir = TempDir::new("blk-ro");
    let image = make_image(&dir.0, "ro.raw", "raw", 16);
    let before = std::fs::read(&image).unwrap();
    let run = boot(
        &[format!("path={},readonly=on,id=VIREO-RO", image.display())],
        "probe.run=blk-readonly",
    );
    let line = probe_line(&run, "blk_readonly");
    assert_eq!(line.get("status"), Some("ioerr"), "{line:?}");
    assert_eq!(
        (line.get("ro"), line.get("id")),
        (Some("1"), Some("VIREO-RO")),
        "{line:?}"
    );
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image is unchanged"
    );
}

#[test]
fn two_disks_at_once() {
    if !report::require_kvm("probe_blk::two_disks_at_once") {
        return;
    }
    let dir = TempDir::new("blk-two");
    let (a, b) = (
        make_image(&dir.0, "a.raw", "raw", 64),
        make_image(&dir.0, "b.qcow2", "qcow2", 64),
    );
    let run = boot(
        &[
            format!("path={}", a.display()),
            format!("path={},format=qcow2", b.display()),
        ],
        "probe.run=blk-two probe.blk_mib=32 probe.blk_seed=11",
    );
    let line = probe_line(&run, "blk_two");
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
    assert_pattern(&a, 11, 32);
    let raw_b = dir.0.join("b.raw");
    assert!(qemu_img(&["convert", "-O", "raw", s(&b), s(&raw_b)])
        .status
        .success());
    assert_pattern(&raw_b, 12, 32);
}

#[test]
fn msix_completions_raise_the_programmed_vector_and_masking_holds_them() {
    if !report::require_kvm(
        "probe_blk::msix_completions_raise_the_programmed_vector_and_masking_holds_them",
    ) {
        return;
    }
    let dir = TempDir::new("blk-msix");
    let image = make_image(&dir.0, "disk.raw", "raw", 16);
    let line = probe_line(
        &boot(&[format!("path={}", image.display())], "probe.run=blk-msix"),
        "blk_msix",
    );
    assert_eq!(
        line.get("interrupts"),
        line.get("requests"),
        "one interrupt per request: {line:?}"
    );
    assert_eq!(line.get("other_vectors"), Some("0"), "{line:?}");
    assert_eq!(
        line.get("masked_quiet"),
        Some("1"),
        "nothing while masked: {line:?}"
    );
    assert_eq!(
        line.get("masked_pending"),
        Some("1"),
        "pending bit set while masked: {line:?}"
    );
    assert_eq!(
        line.get("after_unmask"),
        Some("1"),
        "delivered once on unmask: {line:?}"
    );
    assert_eq!(line.get("ok"), Some("1"), "{line:?}");
}

#[test]
fn kill_9_during_writes_leaves_a_consistent_qcow2() {
    if !report::require_kvm("probe_blk::kill_9_during_writes_leaves_a_consistent_qcow2") {
        return;
    }
    let dir = TempDir::new("blk-kill");
    let image = make_image(&dir.0, "disk.qcow2", "qcow2", 512);
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "256M",
        "--disk",
        &format!("path={},format=qcow2", image.display()),
        "--cmdline",
        "probe.run=blk-write probe.blk_mib=384 probe.blk_seed=5",
    ]));
    assert!(
        guest.wait_for("VIREO-PROBE blk_dev", DEADLINE).is_some(),
        "the guest found its disk"
    );
    // Let clusters get allocated, then pull the plug.
    std::thread::sleep(Duration::from_millis(150));
    let seen = guest.kill();
    assert!(
        !seen.iter().any(|l| l.contains("blk_write ")),
        "killed before the writes finished"
    );
    let check = qemu_img(&["check", s(&image)]);
    let out = String::from_utf8_lossy(&check.stdout);
    // Exit 0: clean; 3: only leaked clusters (allocated, unused: harmless, `qemu-img check -r leaks`
    // reclaims them). 2 would be corruption.
    assert!(
        matches!(check.status.code(), Some(0) | Some(3)),
        "qemu-img check after kill -9 ({:?}):\n{out}",
        check.status
    );
    assert!(!out.contains("ERROR"), "{out}");
}

#[test]
fn a_running_vms_disk_is_locked() {
    if !report::require_kvm("probe_blk::a_running_vms_disk_is_locked") {
        return;
    }
    let dir = TempDir::new("blk-lock");
    let image = make_image(&dir.0, "disk.qcow2", "qcow2", 16);
    let disk = format!("path={},format=qcow2", image.display());
    let elf = probe_guest_elf();
    let mut first = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "64M",
        "--disk",
        &disk,
        "--cmdline",
        "probe.run=idle",
    ]));
    assert!(first.wait_for("VIREO-PROBE IDLE", DEADLINE).is_some());
    let second = boot(&[disk], "probe.run=poweroff");
    assert_eq!(second.code(), Some(code::ERROR), "{}", second.stderr);
    assert!(
        second.stderr.contains("lock"),
        "the message names the lock: {}",
        second.stderr
    );
    // QEMU honours the same lock.
    let qemu = qemu_img(&["info", s(&image)]);
    assert!(
        !qemu.status.success(),
        "qemu-img info on a locked image should fail"
    );
    first.kill();
    // Released when the engine is gone.
    assert!(qemu_img(&["info", s(&image)]).status.success());
}
