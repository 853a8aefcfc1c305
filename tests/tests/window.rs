//! `vireo-vmm --window` on a real X server (Xvfb): the window shows what the probe guest
//! drew through virtio-gpu, pixel for pixel the same as the engine's own screenshot, and
//! keys typed into the window with `xdotool` reach the guest's virtio keyboard.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{s, vmm_binary, LiveGuest};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::xvfb::Xvfb;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 480;

fn ask(socket: &Path, line: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    answer
}

/// A PNG's pixels as RGB triples, row by row.
fn rgb_pixels(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("the PNG exists"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let data = &buf[..info.buffer_size()];
    let pixels = match info.color_type {
        png::ColorType::Rgba => data.chunks_exact(4).map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Rgb => data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(),
        // ImageMagick writes an all-grey image (a window not yet painted) as greyscale.
        png::ColorType::Grayscale => data.iter().map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => {
            data.chunks_exact(2).map(|p| [p[0], p[0], p[0]]).collect()
        }
        other => panic!("{}: unexpected color type {other:?}", path.display()),
    };
    (info.width, info.height, pixels)
}

#[test]
fn the_window_shows_the_guests_screen_and_types_into_it() {
    const TEST: &str = "window::the_window_shows_the_guests_screen_and_types_into_it";
    if !report::require_kvm(TEST) {
        return;
    }
    let x = Xvfb::start(1280, 1024);
    let dir = std::env::temp_dir().join(format!("vireo-window-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let elf = probe_guest_elf();
    let size = format!("{WIDTH}x{HEIGHT}");
    let mut guest = LiveGuest::spawn(x.command(s(&vmm_binary())).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--window",
        "--display",
        &size,
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=gpu-draw",
    ]));
    assert!(
        guest
            .wait_for("VIREO-PROBE IDLE", Duration::from_secs(60))
            .is_some(),
        "the probe drew its screen"
    );
    let window = x.find_window("Vireo", Duration::from_secs(30));

    // The engine's own screenshot is the reference.
    let reference = dir.join("engine.png");
    let answer = ask(
        &socket,
        &format!(r#"{{"request":"screenshot","path":"{}"}}"#, s(&reference)),
    );
    assert!(answer.contains(r#""response":"screenshot""#), "{answer}");
    let (rw, rh, want) = rgb_pixels(&reference);
    assert_eq!((rw, rh), (WIDTH, HEIGHT));

    // What X shows in the window, until it matches (the first frames may still be on
    // their way) or the time is up.
    let shown = dir.join("x-window.png");
    let end = Instant::now() + Duration::from_secs(20);
    let mismatched = loop {
        let status = x
            .command("import")
            .args(["-window", &window, &format!("PNG24:{}", s(&shown))])
            .status()
            .expect("ImageMagick's import runs (installers/setup-host.sh installs imagemagick)");
        assert!(status.success());
        let (w, h, got) = rgb_pixels(&shown);
        assert_eq!((w, h), (WIDTH, HEIGHT), "the window has the guest's size");
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if bad == 0 || Instant::now() > end {
            break bad;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        mismatched,
        0,
        "{mismatched} pixels differ between {} and {}",
        shown.display(),
        reference.display()
    );
    let _ = guest.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_typed_into_the_window_reach_the_guest() {
    const TEST: &str = "window::keys_typed_into_the_window_reach_the_guest";
    if !report::require_kvm(TEST) {
        return;
    }
    let x = Xvfb::start(1280, 1024);
    let elf = probe_guest_elf();
    // No --control-socket: the window uses a private one.
    let mut guest = LiveGuest::spawn(x.command(s(&vmm_binary())).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--window",
        "--cmdline",
        "probe.run=input",
    ]));
    assert!(
        guest
            .wait_for("VIREO-PROBE input_ready devices=2", Duration::from_secs(60))
            .is_some(),
        "the probe found the keyboard and the tablet"
    );
    let window = x.find_window("Vireo", Duration::from_secs(30));
    // No window manager under Xvfb: give the window the focus ourselves.
    let focus = x
        .command("xdotool")
        .args(["windowfocus", "--sync", &window])
        .status()
        .unwrap();
    assert!(focus.success());
    let typed = x
        .command("xdotool")
        .args([
            "key", "--window", &window, "--delay", "50", "a", "b", "Escape",
        ])
        .status()
        .unwrap();
    assert!(typed.success());
    assert!(
        guest
            .wait_for("VIREO-PROBE input_done", Duration::from_secs(30))
            .is_some(),
        "Escape reached the guest"
    );
    // The probe powers off after Escape: the engine ends, and its window with it.
    let status = guest.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "the engine exits 0");
    let lines = guest.kill().join("\n");
    // KEY_A (30) and KEY_B (48) down and up, then KEY_ESC (1) down, on the keyboard.
    for needle in [
        "type=1 code=30 value=1",
        "type=1 code=30 value=0",
        "type=1 code=48 value=1",
        "type=1 code=48 value=0",
        "type=1 code=1 value=1",
    ] {
        assert!(lines.contains(needle), "{needle} missing:\n{lines}");
    }
    assert!(
        lines.contains("input_done") && lines.contains("ok=1"),
        "{lines}"
    );
}

#[test]
fn closing_the_window_powers_the_vm_off() {
    const TEST: &str = "window::closing_the_window_powers_the_vm_off";
    if !report::require_kvm(TEST) {
        return;
    }
    let x = Xvfb::start(1280, 1024);
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(x.command(s(&vmm_binary())).args([
        "--kernel",
        s(&elf),
        "--memory",
        "64M",
        "--window",
        "--cmdline",
        "probe.run=idle",
    ]));
    assert!(guest
        .wait_for("VIREO-PROBE IDLE", Duration::from_secs(60))
        .is_some());
    let window = x.find_window("Vireo", Duration::from_secs(30));
    let closed = x
        .command("xdotool")
        .args(["windowclose", &window])
        .status()
        .unwrap();
    assert!(closed.success());
    let status = guest.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the engine powered the VM off and exited"
    );
}

#[test]
fn window_without_a_display_server_is_a_clear_error() {
    let elf = probe_guest_elf();
    let out = std::process::Command::new(vmm_binary())
        .args(["--kernel", s(&elf), "--window"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("X11 or Wayland session"), "{stderr}");
}
