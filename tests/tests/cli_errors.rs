//! Bad input from a user: every mistake ends the engine with a non-zero status and one
//! line that names what to fix, never a panic or a backtrace.

use std::time::Duration;

use vireo_e2e::engine::{run_vmm, s, Run};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;

const DEADLINE: Duration = Duration::from_secs(30);

/// Asserts the run failed with `code` and said exactly one line containing `hint`.
fn assert_one_line_error(run: &Run, code: i32, hint: &str) {
    assert_eq!(
        run.code(),
        Some(code),
        "exit status; stderr: {}",
        run.stderr
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {:?}", run.stderr);
    assert!(lines[0].starts_with("vireo-vmm: "), "{}", lines[0]);
    assert!(
        lines[0].contains(hint),
        "{:?} should mention {hint:?}",
        lines[0]
    );
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("backtrace"));
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn unknown_flag() {
    let run = run_vmm(&["--kernel", "k", "--frobnicate"], DEADLINE);
    assert_one_line_error(&run, 2, "--frobnicate");
}

#[test]
fn kernel_missing_or_not_a_kernel() {
    let run = run_vmm(&["--kernel", "/nonexistent/vmlinuz"], DEADLINE);
    assert_one_line_error(&run, 1, "cannot read kernel /nonexistent/vmlinuz");

    let dir = temp_dir("notkernel");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a kernel\n").unwrap();
    let run = run_vmm(&["--kernel", s(&text)], DEADLINE);
    assert_one_line_error(&run, 1, "is not a kernel");

    // An ELF, but a program rather than a kernel.
    let run = run_vmm(&["--kernel", "/bin/true"], DEADLINE);
    assert_one_line_error(&run, 1, "is an ELF file but not a kernel");

    // A fixed-address x86-64 executable, but with no PVH entry note.
    let no_note = dir.join("no-note.elf");
    std::fs::write(&no_note, elf_without_pvh_note()).unwrap();
    let run = run_vmm(&["--kernel", s(&no_note)], DEADLINE);
    assert_one_line_error(&run, 1, "no PVH entry note");
    let _ = std::fs::remove_dir_all(dir);
}

/// The smallest ELF64 executable: one PT_LOAD of its own 4 KiB at 1 MiB, entry there.
fn elf_without_pvh_note() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let mut elf = vec![0u8; 4096];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    let put = |elf: &mut Vec<u8>, off: usize, bytes: &[u8]| {
        elf[off..off + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut elf, 16, &2u16.to_le_bytes()); // e_type: ET_EXEC
    put(&mut elf, 18, &62u16.to_le_bytes()); // e_machine: x86-64
    put(&mut elf, 20, &1u32.to_le_bytes()); // e_version
    put(&mut elf, 24, &LOAD.to_le_bytes()); // e_entry
    put(&mut elf, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut elf, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut elf, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut elf, 56, &1u16.to_le_bytes()); // e_phnum
    put(&mut elf, 64, &1u32.to_le_bytes()); // p_type: PT_LOAD
    put(&mut elf, 68, &5u32.to_le_bytes()); // p_flags: R+X
    put(&mut elf, 80, &LOAD.to_le_bytes()); // p_vaddr
    put(&mut elf, 88, &LOAD.to_le_bytes()); // p_paddr
    put(&mut elf, 96, &4096u64.to_le_bytes()); // p_filesz
    put(&mut elf, 104, &4096u64.to_le_bytes()); // p_memsz
    put(&mut elf, 112, &4096u64.to_le_bytes()); // p_align
    elf
}

#[test]
fn initrd_missing() {
    let elf = probe_guest_elf();
    let run = run_vmm(
        &["--kernel", s(&elf), "--initrd", "/nonexistent/initrd.img"],
        DEADLINE,
    );
    assert_one_line_error(&run, 1, "cannot read initrd /nonexistent/initrd.img");
}

#[test]
fn bad_display_size() {
    let elf = probe_guest_elf();
    for bad in ["huge", "100x100", "1280x"] {
        let run = run_vmm(&["--kernel", s(&elf), "--display", bad], DEADLINE);
        assert_one_line_error(&run, 2, "WIDTHxHEIGHT");
    }
}

#[test]
fn memory_and_cpu_limits() {
    let elf = probe_guest_elf();
    let k = s(&elf);
    assert_one_line_error(
        &run_vmm(&["--kernel", k, "--memory", "8M"], DEADLINE),
        1,
        "at least 16 MiB",
    );
    assert_one_line_error(
        &run_vmm(&["--kernel", k, "--memory", "64T"], DEADLINE),
        1,
        "more than this host has",
    );
    assert_one_line_error(
        &run_vmm(&["--kernel", k, "--memory", "lots"], DEADLINE),
        1,
        "e.g. 512M",
    );
    assert_one_line_error(
        &run_vmm(&["--kernel", k, "--cpus", "0"], DEADLINE),
        1,
        "at least one vCPU",
    );
    assert_one_line_error(
        &run_vmm(&["--kernel", k, "--cpus", "100000"], DEADLINE),
        1,
        "use at most",
    );
}

#[test]
fn no_kvm_device() {
    let elf = probe_guest_elf();
    let run = run_vmm(
        &["--kernel", s(&elf), "--kvm-device", "/nonexistent/kvm"],
        DEADLINE,
    );
    assert_one_line_error(&run, 1, "enable virtualization");
}

/// A user outside the kvm group: run the engine as `nobody` against a root-only copy of
/// the KVM device node.
#[test]
fn no_permission_on_kvm() {
    const TEST: &str = "cli_errors::no_permission_on_kvm";
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        report::skipped(
            TEST,
            "needs root to create a device node and drop to another user",
        );
        return;
    }
    let elf = probe_guest_elf();
    let dir = temp_dir("perm");
    let node = dir.join("kvm");
    let _ = std::fs::remove_file(&node);
    // KVM's device is char 10:232; a 0600 root-owned node stands for a host's /dev/kvm.
    let made = std::process::Command::new("mknod")
        .args(["-m", "600", s(&node), "c", "10", "232"])
        .status()
        .unwrap();
    assert!(made.success());
    let elf_copy = dir.join("probe.elf");
    std::fs::copy(&elf, &elf_copy).unwrap();
    std::process::Command::new("chmod")
        .args(["-R", "a+rX", s(&dir)])
        .status()
        .unwrap();
    std::process::Command::new("chmod")
        .args(["600", s(&node)])
        .status()
        .unwrap();
    let bin = vireo_e2e::engine::vmm_binary();
    let bin_copy = dir.join("vireo-vmm");
    std::fs::copy(&bin, &bin_copy).unwrap();
    let run = vireo_e2e::engine::run_command(
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                s(&bin_copy),
            ])
            .args(["--kernel", s(&elf_copy), "--kvm-device", s(&node)]),
        DEADLINE,
    );
    assert_one_line_error(&run, 1, "kvm group");
    report::ran(TEST);
    let _ = std::fs::remove_dir_all(dir);
}
