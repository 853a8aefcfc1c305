//! virtio-gpu under `vireo-vmm`, driven by the probe guest through the third-party
//! `virtio-drivers` driver: what the guest draws is what a screenshot and a
//! `display-attach`ed client's memfd hold, pixel for pixel; damage, cursor and mode
//! events reach the client; a host resize reaches the guest; malformed commands get
//! error responses and leave the device working.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use vireo_e2e::display::{field, probe_cursor_pixel, probe_pattern, DisplayClient};
use vireo_e2e::engine::{s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;

const BOOT: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(20);

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vireo-gpu-{name}-{}.sock", std::process::id()))
}

/// A running engine that is killed if a test fails before stopping it: one left
/// running would keep the test's stderr open and spin a core. (`Child::kill` does
/// nothing to a child already waited for, so no other process is ever hit.)
struct Guest(LiveGuest);

impl std::ops::Deref for Guest {
    type Target = LiveGuest;
    fn deref(&self) -> &LiveGuest {
        &self.0
    }
}

impl std::ops::DerefMut for Guest {
    fn deref_mut(&mut self) -> &mut LiveGuest {
        &mut self.0
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.0.child.try_wait() {
            let _ = self.0.child.kill();
            let _ = self.0.child.wait();
        }
    }
}

/// A probe guest with a `display` screen running `run`, and its control socket.
fn spawn(name: &str, display: &str, run: &str) -> (Guest, PathBuf) {
    let socket = socket_path(name);
    let elf = probe_guest_elf();
    let guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--display",
        display,
        "--control-socket",
        s(&socket),
        "--cmdline",
        &format!("probe.run={run}"),
    ]));
    (Guest(guest), socket)
}

fn probe_line(guest: &Guest, tag: &str) -> ProbeLine {
    guest
        .seen
        .iter()
        .filter_map(|l| ProbeLine::parse(l))
        .find(|p| p.tag == tag)
        .unwrap_or_else(|| panic!("no {tag} line in {:#?}", guest.seen))
}

/// Where `rgba` (width x height) differs from the probe's pattern: (count, first).
fn pattern_mismatches(rgba: &[u8], width: u32, height: u32) -> (usize, Option<(u32, u32)>) {
    let mut count = 0;
    let mut first = None;
    for y in 0..height {
        for x in 0..width {
            let at = ((y * width + x) * 4) as usize;
            if rgba[at..at + 4] != probe_pattern(x, y) {
                count += 1;
                first.get_or_insert((x, y));
            }
        }
    }
    (count, first)
}

fn read_png(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("the screenshot exists"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    assert_eq!(info.color_type, png::ColorType::Rgba);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn screenshot_matches_pattern(client: &mut DisplayClient, name: &str, width: u32, height: u32) {
    let path = std::env::temp_dir().join(format!("vireo-gpu-{name}-{}.png", std::process::id()));
    let answer = client.ask(&format!(
        r#"{{"request":"screenshot","path":"{}"}}"#,
        path.display()
    ));
    assert_eq!(answer.json["response"], "screenshot", "{}", answer.json);
    assert_eq!(
        (field(&answer.json, "width"), field(&answer.json, "height")),
        (u64::from(width), u64::from(height))
    );
    let (w, h, rgba) = read_png(&path);
    assert_eq!((w, h), (width, height));
    let (bad, first) = pattern_mismatches(&rgba, w, h);
    assert_eq!(
        bad, 0,
        "{bad} pixels differ from the pattern, first at {first:?}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_screenshot_after_gpu_draw_is_the_probes_pattern() {
    const TEST: &str = "probe_gpu::a_screenshot_after_gpu_draw_is_the_probes_pattern";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, socket) = spawn("draw", "1024x768", "gpu-draw");
    assert!(
        guest.wait_for("VIREO-PROBE gpu_ready", BOOT).is_some(),
        "the probe drew its screen: {:#?}",
        guest.seen
    );
    let ready = probe_line(&guest, "gpu_ready");
    assert_eq!(
        (ready.u64("width"), ready.u64("height")),
        (Some(1024), Some(768))
    );
    // The EDID says what the display info says.
    assert_eq!(ready.u64("edid_width"), Some(1024));
    let mut client = DisplayClient::connect(&socket, BOOT);
    screenshot_matches_pattern(&mut client, "draw", 1024, 768);
    // Landlock lets the engine write only beside its control socket (here in the temp
    // directory): elsewhere the screenshot is refused with where to ask instead.
    let outside =
        Path::new("/var/tmp").join(format!("vireo-gpu-outside-{}.png", std::process::id()));
    let answer = client.ask(&format!(
        r#"{{"request":"screenshot","path":"{}"}}"#,
        outside.display()
    ));
    assert_eq!(answer.json["response"], "error", "{}", answer.json);
    let message = answer.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Landlock") && message.contains(s(&std::env::temp_dir())),
        "{message}"
    );
    assert!(!outside.exists(), "the refused screenshot was written");
    let answer = client.ask(r#"{"request":"screenshot","path":"shot.png"}"#);
    assert_eq!(answer.json["response"], "error", "{}", answer.json);
    let message = answer.json["message"].as_str().unwrap_or_default();
    assert!(message.contains("absolute path"), "{message}");
    let answer = client.ask(r#"{"request":"power-off"}"#);
    assert_eq!(answer.json["response"], "ok");
    assert!(guest.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn damage_events_and_the_memfd_follow_the_guests_flush() {
    const TEST: &str = "probe_gpu::damage_events_and_the_memfd_follow_the_guests_flush";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, socket) = spawn("damage", "800x600", "gpu-draw");
    // Attached before the guest draws: the client sees the mode arrive, then damage.
    let mut client = DisplayClient::connect(&socket, BOOT);
    let attach = client.ask(r#"{"request":"display-attach"}"#);
    assert_eq!(attach.json["response"], "display", "{}", attach.json);
    let (mode, fd) = if attach.json["enabled"] == true {
        (attach.json.clone(), attach.fd)
    } else {
        assert!(attach.fd.is_none(), "no memfd for a disabled scanout");
        let mode = client.wait_event(BOOT, |e| e["event"] == "mode" && e["enabled"] == true);
        (mode.json, mode.fd)
    };
    let fd = fd.expect("the memfd came with the mode");
    assert_eq!((field(&mode, "width"), field(&mode, "height")), (800, 600));
    assert_eq!(field(&mode, "stride"), 800 * 4);
    assert_eq!(mode["format"], "B8G8R8A8");
    let damage = client.wait_event(EVENT, |e| e["event"] == "damage");
    assert_eq!(field(&damage.json, "scanout"), 0);
    assert_eq!(
        (field(&damage.json, "width"), field(&damage.json, "height")),
        (800, 600),
        "virtio-drivers flushes the whole screen"
    );
    assert!(guest.wait_for("VIREO-PROBE gpu_ready", BOOT).is_some());
    // The memfd holds the guest's pixels in its B8G8R8A8 order.
    let memfd = std::fs::File::from(fd);
    let mut bgra = vec![0u8; 800 * 600 * 4];
    memfd.read_exact_at(&mut bgra, 0).unwrap();
    let rgba: Vec<u8> = bgra
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0], p[3]])
        .collect();
    let (bad, first) = pattern_mismatches(&rgba, 800, 600);
    assert_eq!(bad, 0, "{bad} memfd pixels differ, first at {first:?}");
    // The client cannot shrink the framebuffer under the device.
    assert!(memfd.set_len(4096).is_err());
    client.ask(r#"{"request":"power-off"}"#);
    assert!(guest.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn cursor_events_follow_the_guests_cursor() {
    const TEST: &str = "probe_gpu::cursor_events_follow_the_guests_cursor";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, socket) = spawn("cursor", "640x480", "gpu-cursor");
    let mut client = DisplayClient::connect(&socket, BOOT);
    client.ask(r#"{"request":"display-attach"}"#);
    let set = client.wait_event(BOOT, |e| e["event"] == "cursor");
    let json = &set.json;
    assert_eq!((field(json, "x"), field(json, "y")), (100, 50), "{json}");
    assert_eq!((field(json, "hot_x"), field(json, "hot_y")), (3, 4));
    assert_eq!(json["visible"], true);
    let image = base64::engine::general_purpose::STANDARD
        .decode(
            json["image"]
                .as_str()
                .expect("the first cursor event has the image"),
        )
        .unwrap();
    let expected: Vec<u8> = (0..64)
        .flat_map(|y| (0..64).flat_map(move |x| probe_cursor_pixel(x, y)))
        .collect();
    assert_eq!(image, expected, "the cursor image, as RGBA");
    for (x, y) in [(200, 150), (300, 250)] {
        let moved = client.wait_event(EVENT, |e| e["event"] == "cursor");
        let json = &moved.json;
        assert_eq!((field(json, "x"), field(json, "y")), (x, y), "{json}");
        assert_eq!((field(json, "hot_x"), field(json, "hot_y")), (3, 4));
        assert!(json.get("image").is_none(), "a move sends no image");
    }
    assert!(guest
        .wait_for("VIREO-PROBE gpu_cursor_done", BOOT)
        .is_some());
    // A client attaching now hears where the cursor is, with its image.
    let mut late = DisplayClient::connect(&socket, BOOT);
    late.ask(r#"{"request":"display-attach"}"#);
    let now = late.wait_event(EVENT, |e| e["event"] == "cursor");
    assert_eq!((field(&now.json, "x"), field(&now.json, "y")), (300, 250));
    assert!(now.json["image"].is_string());
    client.ask(r#"{"request":"power-off"}"#);
    assert!(guest.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn display_resize_reaches_the_guest() {
    const TEST: &str = "probe_gpu::display_resize_reaches_the_guest";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, socket) = spawn("resize", "640x480", "gpu-resize");
    assert!(guest.wait_for("VIREO-PROBE gpu_ready", BOOT).is_some());
    let mut client = DisplayClient::connect(&socket, BOOT);
    let attach = client.ask(r#"{"request":"display-attach"}"#);
    assert_eq!(field(&attach.json, "width"), 640, "{}", attach.json);
    let answer = client.ask(r#"{"request":"display-resize","width":800,"height":600}"#);
    assert_eq!(answer.json["response"], "ok", "{}", answer.json);
    let refused = client.ask(r#"{"request":"display-resize","width":0,"height":600}"#);
    assert_eq!(refused.json["response"], "error");
    assert!(
        guest.wait_for("VIREO-PROBE gpu_mode", BOOT).is_some(),
        "the guest saw the new size: {:#?}",
        guest.seen
    );
    let mode_line = probe_line(&guest, "gpu_mode");
    assert_eq!(
        (mode_line.u64("width"), mode_line.u64("height")),
        (Some(800), Some(600))
    );
    assert_eq!(
        mode_line.u64("config_irq"),
        Some(1),
        "a configuration-change interrupt"
    );
    assert_eq!(mode_line.u64("flushed"), Some(1));
    // The client heard of the new mode, with a new memfd.
    let mode = client.wait_event(EVENT, |e| e["event"] == "mode" && e["width"] == 800);
    assert_eq!(field(&mode.json, "height"), 600);
    assert!(mode.fd.is_some(), "a fresh memfd for the new mode");
    screenshot_matches_pattern(&mut client, "resize", 800, 600);
    client.ask(r#"{"request":"power-off"}"#);
    assert!(guest.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn hostile_commands_get_errors_and_the_device_keeps_working() {
    const TEST: &str = "probe_gpu::hostile_commands_get_errors_and_the_device_keeps_working";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, _socket) = spawn("hostile", "640x480", "gpu-hostile");
    assert!(
        guest.wait_for("VIREO-PROBE POWEROFF", BOOT).is_some(),
        "{:#?}",
        guest.seen
    );
    let status = guest.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{:#?}", guest.seen);
    let cases: Vec<(String, u64)> = guest
        .seen
        .iter()
        .filter_map(|l| ProbeLine::parse(l))
        .filter(|p| p.tag == "gpu_hostile")
        .map(|p| (p.get("case").unwrap().to_owned(), p.u64("resp").unwrap()))
        .collect();
    const OK_NODATA: u64 = 0x1100;
    const ERR_UNSPEC: u64 = 0x1200;
    const ERR_INVALID_SCANOUT_ID: u64 = 0x1202;
    const ERR_INVALID_RESOURCE_ID: u64 = 0x1203;
    const ERR_INVALID_PARAMETER: u64 = 0x1205;
    let resp = |name: &str| {
        cases
            .iter()
            .find(|(case, _)| case == name)
            .unwrap_or_else(|| panic!("no case {name}: {cases:?}"))
            .1
    };
    assert_eq!(cases.len(), 12, "{cases:?}");
    for (case, code) in &cases {
        match case.as_str() {
            "create_ok" | "attach_ok" => assert_eq!(*code, OK_NODATA, "{case}"),
            _ => assert!(*code >= ERR_UNSPEC, "{case} got {code:#x}, not an error"),
        }
    }
    assert_eq!(resp("flush_unknown_resource"), ERR_INVALID_RESOURCE_ID);
    assert_eq!(resp("scanout_out_of_range"), ERR_INVALID_SCANOUT_ID);
    assert_eq!(resp("transfer_out_of_range"), ERR_INVALID_PARAMETER);
    let done = probe_line(&guest, "gpu_hostile_done");
    assert_eq!(
        done.u64("raw_flush_ok"),
        Some(1),
        "a normal frame works after"
    );
    assert_eq!(done.u64("display_info"), Some(0x1101), "OK_DISPLAY_INFO");
    assert_eq!(
        done.u64("driver_ok"),
        Some(1),
        "virtio-drivers works after a reset"
    );
}

#[test]
fn display_requests_without_a_display_are_clear_errors() {
    const TEST: &str = "probe_gpu::display_requests_without_a_display_are_clear_errors";
    if !report::require_kvm(TEST) {
        return;
    }
    let socket = socket_path("headless");
    let elf = probe_guest_elf();
    let mut guest = Guest(LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "64M",
        "--display",
        "none",
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=idle",
    ])));
    let mut client = DisplayClient::connect(&socket, BOOT);
    for request in [
        r#"{"request":"screenshot","path":"/tmp/never.png"}"#,
        r#"{"request":"display-attach"}"#,
        r#"{"request":"display-resize","width":800,"height":600}"#,
    ] {
        let answer = client.ask(request);
        assert_eq!(answer.json["response"], "error", "{request}");
        let message = answer.json["message"].as_str().unwrap();
        assert!(message.contains("--display WxH"), "{request}: {message}");
    }
    let bad = client.ask(r#"{"request":"screenshot"}"#);
    assert!(bad.json["message"].as_str().unwrap().contains("path"));
    client.ask(r#"{"request":"power-off"}"#);
    assert!(guest.wait_exit(Duration::from_secs(30)).is_some());
}
