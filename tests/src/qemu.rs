//! QEMU as the side-by-side reference VMM for the probe guest.
//!
//! `-M microvm` boots a PVH ELF with no firmware (qboot hands over in milliseconds) and
//! describes the machine in ACPI (hardware-reduced, power and reset through its GED
//! registers), the same kind of machine Vireo's engine builds; `pcie=on` adds the ECAM
//! host bridge the device tests use.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};

/// The QEMU binary the tests run.
pub const QEMU: &str = "qemu-system-x86_64";

/// Whether QEMU can be run here with KVM: the binary answers and `/dev/kvm` opens.
pub fn qemu_available() -> bool {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let qemu = Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success());
    kvm && qemu
}

/// A command that boots the probe guest `elf` under QEMU microvm with KVM, with
/// `cmdline` as its kernel command line, `cpus` vCPUs and `mem_mib` MiB of RAM. The
/// guest's serial console is QEMU's stdout; QEMU exits when the guest powers off or
/// resets (`-no-reboot`). stdin is null so that QEMU leaves the terminal alone; the
/// caller decides about stdout/stderr.
pub fn qemu_probe_command(elf: &Path, cmdline: &str, cpus: u32, mem_mib: u64) -> Command {
    let mut command = Command::new(QEMU);
    command
        .arg("-enable-kvm")
        // arch-capabilities is not accepted by this host's KVM (PVM) for `-cpu host`.
        .args(["-cpu", "host,-arch-capabilities"])
        .args(["-M", "microvm,pcie=on"])
        .arg("-m")
        .arg(format!("{mem_mib}M"))
        .arg("-smp")
        .arg(cpus.to_string())
        .args([
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(elf)
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null());
    command
}

/// A raw or qcow2 disk image for [`virtio_blk_args`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// The QEMU arguments that attach `image` as the `index`-th virtio-blk disk, a modern-only
/// PCI function (`disable-legacy=on`: device ID 0x1042 and no I/O BAR, as Vireo's engine
/// has it). `serial` is what the device answers to GET_ID.
pub fn virtio_blk_args(
    index: u32,
    image: &Path,
    format: DiskFormat,
    readonly: bool,
    serial: Option<&str>,
) -> Vec<String> {
    let format = match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    let mut drive = format!(
        "file={},if=none,id=d{index},format={format}",
        image.display()
    );
    if readonly {
        drive.push_str(",readonly=on");
    }
    let mut device = format!("virtio-blk-pci,drive=d{index},disable-legacy=on");
    if let Some(serial) = serial {
        device.push_str(",serial=");
        device.push_str(serial);
    }
    vec!["-drive".into(), drive, "-device".into(), device]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let command = qemu_probe_command(Path::new("/p.elf"), "probe.run=poweroff", 4, 2048);
        let args: Vec<_> = command.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-enable-kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-M",
                "microvm,pcie=on",
                "-m",
                "2048M",
                "-smp",
                "4",
                "-nodefaults",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
                "/p.elf",
                "-append",
                "probe.run=poweroff",
            ]
        );
    }

    #[test]
    fn virtio_blk() {
        let args = virtio_blk_args(1, Path::new("/d.img"), DiskFormat::Raw, true, Some("RO"));
        assert_eq!(
            args,
            [
                "-drive",
                "file=/d.img,if=none,id=d1,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=d1,disable-legacy=on,serial=RO",
            ]
        );
        let args = virtio_blk_args(0, Path::new("/q.qcow2"), DiskFormat::Qcow2, false, None);
        assert_eq!(args[1], "file=/q.qcow2,if=none,id=d0,format=qcow2");
        assert_eq!(args[3], "virtio-blk-pci,drive=d0,disable-legacy=on");
    }
}
