//! Real Linux under `vireo-vmm`.
//!
//! - Early boot, on any KVM host: Debian's `vmlinux` through PVH with 3 vCPUs and 1 GiB.
//!   On PVM the kernel is interpreted and stops where PVM cannot go on (FXSAVE/XRSTOR),
//!   but its own log shows what it made of our boot parameters: the banner, the command
//!   line, the memory map, the ACPI tables (and no ACPI errors), the vCPU count.
//! - Full boot of the demo image (bzImage and vmlinux) where the host has hardware
//!   virtualization: `nproc`, `MemTotal` and `date` as asked. Elsewhere: a loud skip.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vireo_e2e::demo_linux::{demo_image, vmlinux};
use vireo_e2e::engine::{run_vmm, s, vmm_binary, LiveGuest};
use vireo_e2e::{linux_early, report};

#[test]
fn linux_early_boot_through_pvh() {
    const TEST: &str = "linux_boot::linux_early_boot_through_pvh";
    if !report::require_kvm(TEST) {
        return;
    }
    linux_early::check(&vmlinux(), "vmlinux via PVH", true);
}

fn host_unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `nproc; grep MemTotal /proc/meminfo; date -u +%s` in the /init's `vireo.run` encoding.
const RUN: &str = "vireo.run=nproc;+grep+MemTotal+/proc/meminfo;+date+-u+%2B%25s";

#[test]
fn demo_linux_boots_to_userspace_with_both_kernel_formats() {
    const TEST: &str = "linux_boot::demo_linux_boots_to_userspace_with_both_kernel_formats";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let image = demo_image();
    for kernel in [&image.vmlinuz, &image.vmlinux] {
        let run = run_vmm(
            &[
                "--kernel",
                s(kernel),
                "--initrd",
                s(&image.initramfs),
                "--cpus",
                "2",
                "--memory",
                "512M",
                "--cmdline",
                RUN,
            ],
            Duration::from_secs(120),
        );
        let out = &run.stdout;
        assert_eq!(
            run.code(),
            Some(0),
            "{}: powered off; console:\n{out}\n{}",
            kernel.display(),
            run.stderr
        );
        assert!(out.contains("VIREO-GUEST USERSPACE READY"), "{out}");
        assert!(out.contains("VIREO-RUN EXIT STATUS 0"), "{out}");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert!(lines.contains(&"2"), "nproc says 2: {out}");
        let mem_kib: u64 = lines
            .iter()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("MemTotal line");
        assert!(
            (400 << 10..=512 << 10).contains(&mem_kib),
            "MemTotal {mem_kib} kB for a 512 MiB VM"
        );
        let guest_time: u64 = lines
            .iter()
            .filter_map(|l| l.parse::<u64>().ok())
            .find(|&n| n > 1_000_000_000)
            .expect("date line");
        assert!(
            guest_time.abs_diff(host_unix_time()) < 300,
            "the guest's date is the host's"
        );
    }
}

/// Runs one command line's worth of `vireo.run` in the demo image with `extra` engine
/// arguments; returns the console output after checking the guest powered off cleanly.
fn run_demo(run: &str, extra: &[&str]) -> String {
    let image = demo_image();
    let mut args = vec![
        "--kernel",
        s(&image.vmlinuz),
        "--initrd",
        s(&image.initramfs),
        "--memory",
        "512M",
    ];
    args.extend_from_slice(extra);
    let cmdline = format!("vireo.run={run}");
    args.extend_from_slice(&["--cmdline", &cmdline]);
    let out = run_vmm(&args, Duration::from_secs(120));
    assert_eq!(
        out.code(),
        Some(0),
        "console:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("VIREO-RUN EXIT STATUS 0"),
        "{}",
        out.stdout
    );
    out.stdout
}

/// mkfs, mount, write, sync in one boot; mount and read back in the next; the kernel's
/// own virtio_blk finds the disk with no command-line hints.
#[test]
fn demo_linux_formats_writes_and_rereads_a_virtio_disk() {
    const TEST: &str = "linux_boot::demo_linux_formats_writes_and_rereads_a_virtio_disk";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    for format in ["raw", "qcow2"] {
        let image =
            std::env::temp_dir().join(format!("vireo-linux-disk-{}.{format}", std::process::id()));
        let made = Command::new("qemu-img")
            .args(["create", "-f", format, s(&image), "64M"])
            .output()
            .unwrap();
        assert!(made.status.success());
        let disk = format!("path={},format={format}", image.display());
        let first = run_demo(
            "mke2fs+-q+/dev/vda+%26%26+mount+/dev/vda+/mnt+%26%26+echo+vireo-disk-ok+>+/mnt/f+%26%26+sync+%26%26+umount+/mnt",
            &["--disk", &disk],
        );
        assert!(!first.contains("No such"), "{first}");
        let second = run_demo(
            "mount+/dev/vda+/mnt+%26%26+cat+/mnt/f+%26%26+dmesg",
            &["--disk", &disk],
        );
        // The kernel's own PCI enumeration: our host bridge and the disk with its BAR,
        // MSI-X in use, and no resource the kernel could not claim.
        assert!(second.contains("pci 0000:00:01.0: [1af4:1042]"), "{second}");
        // Linux 6.1 prints "reg 0x10: [mem ...]", newer kernels "BAR 0 [mem ...]".
        assert!(
            second.lines().any(|l| l.contains("pci 0000:00:01.0:")
                && l.contains("[mem 0xc0000000-0xc0007fff 64bit")),
            "{second}"
        );
        assert!(
            !second.contains("can't claim") && !second.contains("conflict"),
            "{second}"
        );
        assert!(
            second.contains(
                "PCI: MMCONFIG for domain 0000 [bus 00-00] at [mem 0xe0000000-0xe00fffff]"
            ),
            "{second}"
        );
        assert!(
            second.lines().any(|l| l.trim() == "vireo-disk-ok"),
            "{second}"
        );
        if format == "qcow2" {
            assert!(Command::new("qemu-img")
                .args(["check", s(&image)])
                .status()
                .unwrap()
                .success());
        }
        let _ = std::fs::remove_file(&image);
    }
}

/// The guest's hardware RNG is virtio-rng and gives bytes.
#[test]
fn demo_linux_reads_hwrng() {
    const TEST: &str = "linux_boot::demo_linux_reads_hwrng";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let out = run_demo(
        "cat+/sys/devices/virtual/misc/hw_random/rng_current;+head+-c+4096+/dev/hwrng+|+wc+-c",
        &[],
    );
    assert!(out.contains("virtio_rng"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "4096"), "{out}");
}

/// The engine's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The demo Linux with `--memory memory`, `extra` flags and a control socket, running
/// `run` (a `vireo.run=` value), and that socket spoken a line at a time.
fn demo_with_control(memory: &str, extra: &[&str], run: &str) -> (LiveGuest, ControlLines) {
    let image = demo_image();
    let socket = std::env::temp_dir().join(format!(
        "vireo-linux-{}-{}.sock",
        std::process::id(),
        run.len()
    ));
    let mut args = vec![
        "--kernel",
        s(&image.vmlinuz),
        "--initrd",
        s(&image.initramfs),
        "--memory",
        memory,
        "--control-socket",
        s(&socket),
        "--cmdline",
        run,
    ];
    args.extend_from_slice(extra);
    let guest = LiveGuest::spawn(Command::new(vmm_binary()).args(&args));
    (guest, ControlLines(socket))
}

/// A control socket, asked one JSON line at a time as a script would.
struct ControlLines(std::path::PathBuf);

impl ControlLines {
    fn ask(&self, line: &str) -> String {
        use std::io::{BufRead, BufReader};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.0).unwrap();
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        answer
    }
}

/// The guest touches 300 MiB and frees it; inflating the balloon through the control
/// socket gives that memory back to the host (the engine's RSS falls).
#[test]
fn demo_linux_balloon_returns_memory_to_the_host() {
    const TEST: &str = "linux_boot::demo_linux_balloon_returns_memory_to_the_host";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let (mut guest, control) = demo_with_control(
        "512M",
        &[],
        "vireo.run=dd+if=/dev/zero+of=/dev/null+bs=300M+count=1+%26%26+echo+TOUCHED+%26%26+sleep+60",
    );
    assert!(
        guest
            .wait_for("TOUCHED", Duration::from_secs(120))
            .is_some(),
        "the guest touched its memory"
    );
    let before = rss_kib(guest.child.id());
    let ask = |line: &str| control.ask(line);
    assert!(ask(r#"{"request":"balloon-set","target_mib":384}"#).contains(r#""target_mib":384"#));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = ask(r#"{"request":"balloon-get"}"#);
        if state.contains(r#""actual_mib":384"#) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never inflated: {state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = rss_kib(guest.child.id());
    let stats = ask(r#"{"request":"balloon-stats"}"#);
    guest.kill();
    assert!(
        after + 200 * 1024 < before,
        "RSS {before} kB -> {after} kB after inflating 384 MiB"
    );
    assert!(stats.contains("total_memory"), "{stats}");
}

/// With `--balloon-policy give-back-idle`, an idle guest's memory goes back to the host
/// by itself: the engine reads the guest's statistics and inflates the balloon.
#[test]
fn demo_linux_gives_idle_memory_back_by_itself() {
    const TEST: &str = "linux_boot::demo_linux_gives_idle_memory_back_by_itself";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let (mut guest, control) = demo_with_control(
        "512M",
        &["--balloon-policy", "give-back-idle"],
        "vireo.run=echo+IDLE+%26%26+sleep+120",
    );
    assert!(guest.wait_for("IDLE", Duration::from_secs(120)).is_some());
    let ask = |line: &str| control.ask(line);
    // An idle 512 MiB guest has far more than its 128 MiB reserve available.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let given = loop {
        let state: serde_json::Value =
            serde_json::from_str(&ask(r#"{"request":"balloon-get"}"#)).unwrap();
        assert_eq!(state["policy"], "give-back-idle", "{state}");
        let actual = state["actual_mib"].as_u64().unwrap();
        if actual >= 128 {
            break actual;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle guest gave nothing back: {state}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    guest.kill();
    eprintln!("idle 512 MiB guest gave back {given} MiB by itself");
}

/// With a display, the stock kernel's `virtio_input` finds the keyboard and the tablet,
/// and the input core classifies them from what their configuration space announces: a
/// keyboard (the `kbd` handler) and an absolute pointer with both axes.
#[test]
fn demo_linux_classifies_the_keyboard_and_tablet() {
    const TEST: &str = "linux_boot::demo_linux_classifies_the_keyboard_and_tablet";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let out = run_demo("cat+/proc/bus/input/devices", &["--display", "1280x800"]);
    let device = |name: &str| -> String {
        out.split("\n\n")
            .find(|block| block.contains(&format!("N: Name=\"{name}\"")))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
            .to_owned()
    };
    let keyboard = device("Vireo Virtio Keyboard");
    assert!(
        keyboard.contains("I: Bus=0006 Vendor=1af4 Product=0001"),
        "{keyboard}"
    );
    assert!(keyboard.contains("kbd"), "{keyboard}");
    let tablet = device("Vireo Virtio Tablet");
    assert!(tablet.contains("B: ABS=3"), "ABS_X and ABS_Y: {tablet}");
    assert!(tablet.contains("B: KEY=1f0000"), "five buttons: {tablet}");
}

/// The demo Linux's own virtio_net with passt: /init gets a DHCP lease with udhcpc, and
/// `wget` fetches a file from a server this test runs on 127.0.0.1, through the
/// gateway address (which passt maps to the host's loopback).
#[test]
fn demo_linux_gets_a_lease_and_fetches_a_file_through_passt() {
    const TEST: &str = "linux_boot::demo_linux_gets_a_lease_and_fetches_a_file_through_passt";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::Read;
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let body = "vireo-net-ok\n";
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        String::from_utf8_lossy(&request).into_owned()
    });
    // The gateway is the default route's; wget prints the body.
    let run =
        format!("gw=$(ip+route+|+awk+'/default/{{print+$3}}');+wget+-q+-O+-+http://$gw:{port}/f");
    let out = run_demo(&run, &["--net"]);
    assert!(out.contains("vireo-init: eth0"), "a lease: {out}");
    assert!(out.lines().any(|l| l.trim() == "vireo-net-ok"), "{out}");
    assert!(server.join().unwrap().starts_with("GET /f "));
}

/// The demo Linux's `vireo-agent` serves the host over real virtio-vsock: through the
/// engine's hybrid socket (`CONNECT 7000`) the host client gets the hello and the
/// guest's info, a ping, and a time sync.
#[test]
fn demo_linux_agent_answers_over_vsock() {
    use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
    use vireo_guest_agent::protocol::AGENT_VSOCK_PORT;
    const TEST: &str = "linux_boot::demo_linux_agent_answers_over_vsock";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let image = demo_image();
    let socket =
        std::env::temp_dir().join(format!("vireo-agent-vsock-{}.sock", std::process::id()));
    let spec = format!("cid=3,socket={}", s(&socket));
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&image.vmlinuz),
        "--initrd",
        s(&image.initramfs),
        "--memory",
        "512M",
        "--vsock",
        &spec,
        "--cmdline",
        "vireo.run=sleep+60",
    ]));
    assert!(
        guest
            .wait_for("VIREO-GUEST USERSPACE READY", Duration::from_secs(120))
            .is_some(),
        "the demo Linux reached userspace"
    );
    let client = AgentClient::start(
        Endpoint::HybridVsock {
            path: socket.clone(),
            port: AGENT_VSOCK_PORT,
        },
        ClientConfig::default(),
    );
    let hello = client
        .wait_connected(Duration::from_secs(30))
        .expect("the agent answers on vsock port 7000");
    assert!(
        hello
            .capabilities
            .contains(vireo_guest_agent::protocol::Capabilities::INFO),
        "{hello:?}"
    );
    let info = client.info().expect("guest info");
    assert_eq!(info.hostname, "vireo-demo", "{info:?}");
    assert!(client.ping().is_ok());
    assert!(client.time_sync_now().is_ok());
    drop(client);
    let _ = guest.kill();
}

/// fbcon on the stock kernel's `virtio_gpu`: the kernel's console shows on the screen (a
/// screenshot that is not blank), and keys typed on the virtio keyboard through the
/// control socket reach the console's tty.
#[test]
fn demo_linux_fbcon_on_virtio_gpu_takes_typed_keys() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    const TEST: &str = "linux_boot::demo_linux_fbcon_on_virtio_gpu_takes_typed_keys";
    if !report::require_hardware_kvm(TEST) {
        return;
    }
    let image = demo_image();
    let dir = std::env::temp_dir().join(format!("vireo-fbcon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&image.vmlinuz),
        "--initrd",
        s(&image.initramfs),
        "--memory",
        "512M",
        "--display",
        "1024x768",
        "--control-socket",
        s(&socket),
        "--cmdline",
        "vireo.run=dmesg+|+grep+-i+-e+virtio_gpu+-e+fb0;+echo+TYPE-NOW;+read+line+</dev/tty1;+echo+GOT:$line",
    ]));
    assert!(
        guest
            .wait_for("TYPE-NOW", Duration::from_secs(120))
            .is_some(),
        "the demo Linux reached its command"
    );
    let ask = |line: &str| {
        let mut stream = UnixStream::connect(&socket).expect("control socket");
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        answer
    };
    // "vireo" and Enter: KEY_V, KEY_I, KEY_R, KEY_E, KEY_O, KEY_ENTER.
    for code in [47, 23, 19, 18, 24, 28] {
        for pressed in [true, false] {
            let answer = ask(&format!(
                r#"{{"request":"input-key","code":{code},"pressed":{pressed}}}"#
            ));
            assert!(answer.contains(r#""response":"ok""#), "{answer}");
        }
    }
    assert!(
        guest
            .wait_for("GOT:vireo", Duration::from_secs(30))
            .is_some(),
        "the typed line reached tty1: {:#?}",
        guest.seen
    );
    let shot = dir.join("fbcon.png");
    let answer = ask(&format!(
        r#"{{"request":"screenshot","path":"{}"}}"#,
        s(&shot)
    ));
    assert!(answer.contains(r#""response":"screenshot""#), "{answer}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let lit = buf[..info.buffer_size()]
        .chunks_exact(4)
        .filter(|p| p[0] > 64 || p[1] > 64 || p[2] > 64)
        .count();
    assert!(
        lit > 1000,
        "the console's text is on the screen ({lit} lit pixels)"
    );
    let console = guest.seen.join("\n");
    assert!(
        console.contains("virtio_gpu") || console.contains("fb0"),
        "{console}"
    );
    let _ = guest.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
