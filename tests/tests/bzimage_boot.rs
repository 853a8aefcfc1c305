//! The bzImage path (Linux 64-bit boot protocol) on any KVM host. A stock bzImage spends
//! minutes decompressing itself in kernel mode, which PVM interprets, so this test boots
//! a minimal bzImage of its own: a real setup header (what linux-loader and the engine
//! read) and a 64-bit entry at load + 0x200 that prints what it finds in `boot_params`
//! (the e820 entry count and the command line at `cmd_line_ptr`) and powers off through
//! the FADT's sleep-control port. So the long-mode entry state, `rsi`, the identity map,
//! the zero page and the command line are all checked against what the engine built.

use std::time::Duration;

use vireo_e2e::engine::{run_vmm, s};
use vireo_e2e::report;
use vireo_vmm::boot::DEFAULT_CMDLINE;
use vireo_vmm::exit::code;
use vireo_vmm::x86_64::layout;

/// The 64-bit entry, assembled from:
/// ```text
///   mov %rsi, %rbx              ; boot_params
///   mov $0x3f8, %dx             ; COM1
///   lea msg(%rip), %rsi
///   mov $23, %ecx
///   rep outsb                   ; "BZIMAGE64 e820_entries="
///   movzbl 0x1e8(%rbx), %eax    ; boot_params.e820_entries
///   add $'0', %al ; out %al, %dx
///   mov $' ', %al ; out %al, %dx
///   mov 0x228(%rbx), %esi       ; boot_params.hdr.cmd_line_ptr
/// 1: lodsb ; test %al, %al ; jz 2f ; out %al, %dx ; jmp 1b
/// 2: mov $'\n', %al ; out %al, %dx
///   mov $0x600, %dx ; mov $0x34, %al ; out %al, %dx    ; SLP_TYP=5 | SLP_EN
/// 3: hlt ; jmp 3b
/// msg: .ascii "BZIMAGE64 e820_entries="
/// ```
const ENTRY64: &[u8] = &[
    0x48, 0x89, 0xf3, 0x66, 0xba, 0xf8, 0x03, 0x48, 0x8d, 0x35, 0x2f, 0x00, 0x00, 0x00, 0xb9, 0x17,
    0x00, 0x00, 0x00, 0xf3, 0x6e, 0x0f, 0xb6, 0x83, 0xe8, 0x01, 0x00, 0x00, 0x04, 0x30, 0xee, 0xb0,
    0x20, 0xee, 0x8b, 0xb3, 0x28, 0x02, 0x00, 0x00, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8,
    0xb0, 0x0a, 0xee, 0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd, b'B', b'Z', b'I',
    b'M', b'A', b'G', b'E', b'6', b'4', b' ', b'e', b'8', b'2', b'0', b'_', b'e', b'n', b't', b'r',
    b'i', b'e', b's', b'=',
];

/// A bzImage: boot sector + one setup sector holding the header, then the protected-mode
/// code (loaded at 1 MiB) with the 64-bit entry at offset 0x200.
fn tiny_bzimage() -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut image = vec![0u8; setup_len + 0x200 + ENTRY64.len()];
    let mut put = |off: usize, bytes: &[u8]| image[off..off + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[SETUP_SECTS]);
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes()); // boot protocol 2.15
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2048u32.to_le_bytes()); // cmdline_size
    put(setup_len + 0x200, ENTRY64);
    image
}

#[test]
fn bzimage_64bit_entry_sees_boot_params_and_cmdline() {
    const TEST: &str = "bzimage_boot::bzimage_64bit_entry_sees_boot_params_and_cmdline";
    if !report::require_kvm(TEST) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vireo-bz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("tiny.bzImage");
    std::fs::write(&kernel, tiny_bzimage()).unwrap();
    for memory in ["64M", "4G"] {
        let run = run_vmm(
            &[
                "--kernel",
                s(&kernel),
                "--memory",
                memory,
                "--cmdline",
                "vireo.test=bz",
            ],
            Duration::from_secs(60),
        );
        assert_eq!(
            run.code(),
            Some(code::POWER_OFF),
            "{}\n{}",
            run.stdout,
            run.stderr
        );
        let bytes = vireo_vmm::config::parse_memory_size(memory).unwrap();
        let entries = layout::memory_map(bytes).len();
        let expected = format!("BZIMAGE64 e820_entries={entries} {DEFAULT_CMDLINE} vireo.test=bz");
        assert_eq!(run.stdout.trim_end(), expected);
    }
    let _ = std::fs::remove_dir_all(dir);
}
