//! End to end: build the Vireo demo Linux and boot it under QEMU with TCG (software
//! emulation; the KVM of this project's machines cannot run a stock kernel, see
//! DESIGN.md), once from the bzImage (Linux boot protocol) and once from the extracted
//! `vmlinux` (PVH entry note).
//!
//! Run alone with `cargo test --release -p vireo-installers --test tcg_boot`. Needs
//! `qemu-system-x86_64` (Debian: qemu-system-x86) and what the image builder needs
//! (apt-get, dpkg-deb, depmod from kmod). A boot takes a few seconds under TCG here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vireo_installers::{build_image, default_cache_dir, workspace_root, BuildOptions};

/// Generous: TCG boots this image in about 3 to 6 s on a 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const READY: &str = "VIREO-GUEST USERSPACE READY";

/// The image, built once for all tests in this file.
fn image_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out_dir = workspace_root().join("target/vireo-image-test");
        let start = Instant::now();
        let report = build_image(
            &BuildOptions {
                out_dir: out_dir.clone(),
                cache_dir: default_cache_dir(),
                workspace: workspace_root(),
            },
            &mut |p| println!("[{}/{}] {}", p.step, p.steps, p.message),
        )
        .expect("building the demo image");
        println!(
            "image built in {:.1} s (packages from cache: {})",
            start.elapsed().as_secs_f64(),
            report.from_cache
        );
        out_dir
    })
}

struct Boot {
    console: String,
    exited_ok: bool,
    elapsed: Duration,
}

/// Boots `kernel` with the demo initramfs and `vireo.run=<run>`, and returns the console.
fn boot(kernel: &str, run: &str, extra_args: &[&str]) -> Boot {
    let dir = image_dir();
    let qemu = "qemu-system-x86_64";
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "q35",
            "-m",
            "512",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        // No NIC: nothing leaves the machine.
        .args(["-nic", "none"])
        .args(extra_args)
        .arg("-kernel")
        .arg(dir.join(kernel))
        .arg("-initrd")
        .arg(dir.join("initramfs.img"))
        .arg("-append")
        .arg(format!("console=ttyS0 vireo.run={run}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {qemu} (apt-get install qemu-system-x86): {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = start.elapsed();
    let console = reader.join().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    println!("---- {kernel} console ----\n{console}\n---- stderr ----\n{stderr}");
    println!("{kernel}: QEMU TCG ran {:.1} s", elapsed.as_secs_f64());
    Boot {
        console,
        exited_ok: status.is_some_and(|s| s.success()),
        elapsed,
    }
}

/// Lines after the ready marker (what `vireo.run` printed), with line endings trimmed.
fn after_ready(console: &str) -> Vec<&str> {
    let at = console
        .find(READY)
        .unwrap_or_else(|| panic!("the guest never printed {READY:?}"));
    console[at + READY.len()..]
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect()
}

#[test]
fn bzimage_boots_runs_command_and_powers_off() {
    let boot = boot("vmlinuz", "nproc;cat+/proc/meminfo;date+-u+%2B%25Y", &[]);
    let lines = after_ready(&boot.console);
    assert!(lines.contains(&"2"), "nproc should print 2: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("MemTotal:") && l.ends_with("kB")),
        "no /proc/meminfo in {lines:?}"
    );
    // `date -u +%Y`: a four-digit year (the '+' and '%' came through the encoding).
    assert!(
        lines
            .iter()
            .any(|l| l.len() == 4 && l.starts_with("20") && l.bytes().all(|b| b.is_ascii_digit())),
        "no year from date in {lines:?}"
    );
    assert!(lines.contains(&"VIREO-RUN EXIT STATUS 0"), "{lines:?}");
    // The agent's one-line JSON came before the marker.
    assert!(
        boot.console.contains("\"hostname\":\"vireo-demo\""),
        "no vireo-agent info line"
    );
    assert!(boot.console.contains("reboot: Power down"), "no power-off");
    assert!(boot.exited_ok, "QEMU did not exit cleanly after power-off");
    assert!(
        !boot.console.contains("cannot load module"),
        "a module failed to load"
    );
    println!("TCG boot to power-off: {:.1} s", boot.elapsed.as_secs_f64());
}

#[test]
fn pvh_vmlinux_boots_and_virtio_drivers_bind() {
    let boot = boot(
        "vmlinux",
        "for+d+in+/sys/bus/virtio/devices/*;do+basename+$(readlink+$d/driver);done",
        &["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci"],
    );
    let lines = after_ready(&boot.console);
    assert!(lines.contains(&"virtio_rng"), "{lines:?}");
    assert!(lines.contains(&"virtio_balloon"), "{lines:?}");
    assert!(lines.contains(&"VIREO-RUN EXIT STATUS 0"), "{lines:?}");
    assert!(boot.exited_ok, "QEMU did not exit cleanly after power-off");
}

/// The demo guest honours the ACPI power button: QEMU's `system_powerdown` (q35's fixed
/// power button; Vireo's engine raises the same KEY_POWER through its GED), the kernel's
/// button driver, busybox acpid and the image's PWRF action, while a command still runs.
#[test]
fn power_button_shuts_the_demo_guest_down() {
    let dir = image_dir();
    let monitor = std::env::temp_dir().join(format!("vireo-tcg-mon-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&monitor);
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-m",
            "512",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-nic", "none"])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initramfs.img"))
        .args(["-append", "console=ttyS0 vireo.run=sleep+600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut console = String::new();
    let wait_for = |needle: &str, console: &mut String, limit: Duration| {
        let end = Instant::now() + limit;
        while !console.contains(needle) && Instant::now() < end {
            if let Ok(more) = rx.recv_timeout(Duration::from_millis(200)) {
                console.push_str(&more);
            }
        }
        console.contains(needle)
    };
    let ready = wait_for(READY, &mut console, BOOT_TIMEOUT);
    // Pressed again every few seconds, as a person would: a press that lands before
    // acpid has opened the input devices is lost. The monitor connection stays open:
    // QEMU drops what a client sent if it hangs up at once.
    let mut mon = ready.then(|| std::os::unix::net::UnixStream::connect(&monitor).unwrap());
    let mut presses = 0;
    let mut off = false;
    while let Some(mon) = mon.as_mut().filter(|_| !off && presses < 20) {
        std::io::Write::write_all(mon, b"system_powerdown\n").unwrap();
        presses += 1;
        off = wait_for("reboot: Power down", &mut console, Duration::from_secs(5));
    }
    println!("power button pressed {presses} time(s)");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&monitor);
    println!("---- console ----\n{console}");
    assert!(ready, "the guest never printed {READY:?}");
    assert!(
        console.contains("vireo-init: power button: powering off"),
        "acpid did not act on the power button"
    );
    assert!(off, "no power-off after the power button");
    assert!(
        !console.contains("VIREO-RUN EXIT STATUS"),
        "the command ended first"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "QEMU did not exit cleanly"
    );
}
