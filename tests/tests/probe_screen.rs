//! The probe guest's self-test screen (`probe.run=selftest-screen`) under `vireo-vmm
//! --display`: drawn with `virtio-drivers`' gpu driver and kept live from its input
//! drivers. A screenshot shows the status swatch pixel for pixel and a title in the font
//! colour; typed keys come back on serial and change only the keys line's pixels; a
//! tablet move comes back in screen pixels and moves the hardware cursor a
//! `display-attach`ed client sees; Escape ends it with a summary and exit status 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use vireo_e2e::display::{field, DisplayClient};
use vireo_e2e::engine::{s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;

const BOOT: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(20);
const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// The swatch's colour when the gpu, a keyboard and a tablet all work (screen.rs).
const SWATCH_OK: u32 = 0x00c000;
/// evdev codes of V, I, R, E, O and Escape, and what the probe maps the letters to.
const TYPED: [(u64, &str); 5] = [(47, "v"), (23, "i"), (19, "r"), (18, "e"), (24, "o")];
const KEY_ESC: u64 = 1;

/// A running engine that is killed if a test fails before it ends: one left running
/// would keep the test's stderr open and spin a core. (`Child::kill` does nothing to a
/// child already waited for, so no other process is ever hit.)
struct Guest(LiveGuest);

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.0.child.try_wait() {
            let _ = self.0.child.kill();
            let _ = self.0.child.wait();
        }
    }
}

fn temp_path(name: &str, ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vireo-screen-{name}-{}.{ext}", std::process::id()))
}

/// Boots the self-test screen on a 1024x768 display and waits for `screen_ready`.
fn boot(name: &str) -> (Guest, DisplayClient) {
    let socket = temp_path(name, "sock");
    let elf = probe_guest_elf();
    let mut guest = Guest(LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--display",
        &format!("{WIDTH}x{HEIGHT}"),
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=selftest-screen",
    ])));
    assert!(
        guest.0.wait_for("VIREO-PROBE screen_ready", BOOT).is_some(),
        "the probe drew its self-test screen: {:#?}",
        guest.0.seen
    );
    let client = DisplayClient::connect(&socket, BOOT);
    (guest, client)
}

fn lines(guest: &Guest, tag: &str) -> Vec<ProbeLine> {
    guest
        .0
        .seen
        .iter()
        .filter_map(|l| ProbeLine::parse(l))
        .filter(|p| p.tag == tag)
        .collect()
}

fn line(guest: &Guest, tag: &str) -> ProbeLine {
    lines(guest, tag)
        .pop()
        .unwrap_or_else(|| panic!("no {tag} line in {:#?}", guest.0.seen))
}

/// A rectangle the probe reported in a `screen_region` line, with its colours.
#[derive(Clone, Copy, Debug)]
struct Region {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    rgb: u32,
    background: u32,
}

impl Region {
    fn contains(&self, x: u32, y: u32) -> bool {
        (self.x..self.x + self.w).contains(&x) && (self.y..self.y + self.h).contains(&y)
    }
}

fn regions(guest: &Guest) -> HashMap<String, Region> {
    lines(guest, "screen_region")
        .into_iter()
        .map(|l| {
            let n = |key: &str| l.u64(key).unwrap_or_else(|| panic!("no {key}")) as u32;
            let region = Region {
                x: n("x"),
                y: n("y"),
                w: n("width"),
                h: n("height"),
                rgb: n("rgb"),
                background: n("background"),
            };
            (l.get("name").expect("a name").to_owned(), region)
        })
        .collect()
}

/// An RGBA screenshot.
struct Shot {
    path: PathBuf,
    rgba: Vec<u8>,
}

impl Shot {
    fn rgb(&self, x: u32, y: u32) -> u32 {
        let at = ((y * WIDTH + x) * 4) as usize;
        let p = &self.rgba[at..at + 4];
        u32::from_be_bytes([0, p[0], p[1], p[2]])
    }

    /// Pixels of `region` in `rgb`.
    fn count(&self, region: &Region, rgb: u32) -> usize {
        (region.y..region.y + region.h)
            .flat_map(|y| (region.x..region.x + region.w).map(move |x| (x, y)))
            .filter(|&(x, y)| self.rgb(x, y) == rgb)
            .count()
    }
}

fn screenshot(client: &mut DisplayClient, name: &str) -> Shot {
    let path = temp_path(name, "png");
    let answer = client.ask(&format!(
        r#"{{"request":"screenshot","path":"{}"}}"#,
        path.display()
    ));
    assert_eq!(answer.json["response"], "screenshot", "{}", answer.json);
    let rgba = read_png(&path);
    Shot { path, rgba }
}

fn read_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("the screenshot exists"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    assert_eq!(info.color_type, png::ColorType::Rgba);
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    buf.truncate(info.buffer_size());
    buf
}

/// Presses and releases `code`.
fn key(client: &mut DisplayClient, code: u64) {
    for pressed in [true, false] {
        let answer = client.ask(&format!(
            r#"{{"request":"input-key","code":{code},"pressed":{pressed}}}"#
        ));
        assert_eq!(answer.json["response"], "ok", "{}", answer.json);
    }
}

/// Escape ends the screen: a `screen_done` line with `ok=1`, then power-off with exit
/// status 0. Returns the `screen_done` line.
fn escape(mut guest: Guest, client: &mut DisplayClient) -> ProbeLine {
    // A press only: the probe acts on it and may have reset its keyboard (so the engine
    // refuses input) before a release would arrive.
    let answer = client.ask(&format!(
        r#"{{"request":"input-key","code":{KEY_ESC},"pressed":true}}"#
    ));
    assert_eq!(answer.json["response"], "ok", "{}", answer.json);
    let status = guest.0.wait_exit(BOOT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "powered off after Escape: {:#?}",
        guest.0.seen
    );
    let done = line(&guest, "screen_done");
    assert_eq!(done.u64("ok"), Some(1), "{:#?}", guest.0.seen);
    assert!(guest.0.seen.iter().any(|l| l == "VIREO-PROBE POWEROFF"));
    done
}

#[test]
fn the_screen_lists_the_devices_with_an_exact_status_swatch_and_a_title() {
    const TEST: &str =
        "probe_screen::the_screen_lists_the_devices_with_an_exact_status_swatch_and_a_title";
    if !report::require_kvm(TEST) {
        return;
    }
    let (guest, mut client) = boot("ready");
    let ready = line(&guest, "screen_ready");
    assert_eq!(
        (ready.u64("width"), ready.u64("height")),
        (Some(u64::from(WIDTH)), Some(u64::from(HEIGHT)))
    );
    assert_eq!(ready.get("status"), Some("ok"));
    assert_eq!(ready.u64("failed"), Some(0));
    // --display gives the guest a gpu, a keyboard and a tablet; the probe opened each.
    let devices = lines(&guest, "screen_device");
    assert_eq!(ready.u64("devices"), Some(devices.len() as u64));
    for kind in ["gpu", "keyboard", "tablet"] {
        let device = devices
            .iter()
            .find(|d| d.get("kind") == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in {devices:?}"));
        assert_eq!(device.get("status"), Some("ok"), "{kind}");
    }

    let regions = regions(&guest);
    let shot = screenshot(&mut client, "ready");
    println!("self-test screen: {}", shot.path.display());
    let swatch = regions["swatch"];
    assert_eq!(swatch.rgb, SWATCH_OK, "the probe says all is well");
    assert_eq!(
        shot.count(&swatch, SWATCH_OK),
        (swatch.w * swatch.h) as usize,
        "every swatch pixel is exactly {SWATCH_OK:#08x}"
    );
    // The title is text: each 16-pixel cell of a printing character has pixels in the
    // font colour, and the rest of the region is the background.
    let title = regions["title"];
    let text = "Vireo probe guest \u{2014} self-test";
    assert_eq!(
        title.w,
        16 * text.chars().count() as u32,
        "2x 8-pixel glyphs"
    );
    for (i, c) in text.chars().enumerate() {
        let cell = Region {
            x: title.x + 16 * i as u32,
            w: 16,
            ..title
        };
        let ink = shot.count(&cell, title.rgb);
        if c == ' ' {
            assert_eq!(ink, 0, "a space is blank");
        } else {
            assert!(ink > 0, "cell {i} ({c:?}) has font pixels");
        }
        assert_eq!(
            ink + shot.count(&cell, title.background),
            256,
            "cell {i} is font colour on background"
        );
    }
    let done = escape(guest, &mut client);
    assert_eq!((done.u64("keys"), done.u64("moves")), (Some(0), Some(0)));
}

#[test]
fn typed_keys_come_back_and_only_the_keys_line_is_redrawn() {
    const TEST: &str = "probe_screen::typed_keys_come_back_and_only_the_keys_line_is_redrawn";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, mut client) = boot("keys");
    let regions = regions(&guest);
    let before = screenshot(&mut client, "keys-before");
    for (code, _) in TYPED {
        key(&mut client, code);
    }
    // Each screen_key line is printed after the flush that shows the key.
    for n in 1..=TYPED.len() {
        assert!(
            guest.0.wait_for("VIREO-PROBE screen_key", EVENT).is_some(),
            "key {n} came back: {:#?}",
            guest.0.seen
        );
    }
    let typed: Vec<(u64, String)> = lines(&guest, "screen_key")
        .iter()
        .map(|l| (l.u64("code").unwrap(), l.get("char").unwrap().to_owned()))
        .collect();
    let expected: Vec<(u64, String)> = TYPED.iter().map(|&(c, s)| (c, s.to_owned())).collect();
    assert_eq!(typed, expected);

    let after = screenshot(&mut client, "keys-after");
    println!("after typing: {}", after.path.display());
    // The clock ticks on its own; everything else must be as it was.
    let (keys, clock) = (regions["keys"], regions["clock"]);
    let mut in_keys = 0;
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            if before.rgb(x, y) == after.rgb(x, y) {
                continue;
            }
            assert!(
                keys.contains(x, y) || clock.contains(x, y),
                "pixel ({x},{y}) changed outside the keys and clock lines"
            );
            in_keys += usize::from(keys.contains(x, y));
        }
    }
    assert!(in_keys > 0, "the keys line shows the keys");
    assert_eq!(
        after.count(&keys, keys.rgb) + after.count(&keys, keys.background),
        (keys.w * keys.h) as usize,
        "the keys line is text on the background"
    );
    let _ = std::fs::remove_file(&before.path);
    let done = escape(guest, &mut client);
    assert_eq!(done.u64("keys"), Some(TYPED.len() as u64));
}

#[test]
fn a_tablet_move_comes_back_in_pixels_and_moves_the_hardware_cursor() {
    const TEST: &str =
        "probe_screen::a_tablet_move_comes_back_in_pixels_and_moves_the_hardware_cursor";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, mut client) = boot("pointer");
    let ready = line(&guest, "screen_ready");
    let hot = (ready.u64("cursor_hot_x"), ready.u64("cursor_hot_y"));
    let attach = client.ask(r#"{"request":"display-attach"}"#);
    assert_eq!(attach.json["response"], "display", "{}", attach.json);
    // Attaching replays the cursor the probe set up: its image, in the middle.
    let set = client.wait_event(EVENT, |e| e["event"] == "cursor");
    assert_eq!(
        (field(&set.json, "x"), field(&set.json, "y")),
        (u64::from(WIDTH / 2), u64::from(HEIGHT / 2))
    );
    let image = base64::engine::general_purpose::STANDARD
        .decode(set.json["image"].as_str().expect("the cursor's image"))
        .expect("base64");
    assert_eq!(image.len(), 64 * 64 * 4, "a 64x64 RGBA cursor");
    let alpha = |x: usize, y: usize| image[(y * 64 + x) * 4 + 3];
    let (hx, hy) = (hot.0.unwrap() as usize, hot.1.unwrap() as usize);
    assert_eq!(alpha(hx, hy), 0xff, "the hot spot is on the arrow");
    assert_eq!(alpha(63, 63), 0, "around the arrow is transparent");
    let answer = client.ask(r#"{"request":"input-pointer","x":500,"y":300}"#);
    assert_eq!(answer.json["response"], "ok", "{}", answer.json);
    assert!(
        guest
            .0
            .wait_for("VIREO-PROBE screen_pointer", EVENT)
            .is_some(),
        "{:#?}",
        guest.0.seen
    );
    let pointer = line(&guest, "screen_pointer");
    let (x, y) = (pointer.u64("x").unwrap(), pointer.u64("y").unwrap());
    // The engine scales pixels to 0..=32767 and the probe back: at most one off.
    assert!(x.abs_diff(500) <= 1 && y.abs_diff(300) <= 1, "({x},{y})");
    let near = |e: &serde_json::Value| {
        e["event"] == "cursor"
            && e["x"].as_u64().is_some_and(|x| x.abs_diff(500) <= 1)
            && e["y"].as_u64().is_some_and(|y| y.abs_diff(300) <= 1)
    };
    let cursor = client.wait_event(EVENT, near);
    assert_eq!(
        (
            Some(field(&cursor.json, "hot_x")),
            Some(field(&cursor.json, "hot_y"))
        ),
        hot,
        "the arrow's tip is the hot spot: {}",
        cursor.json
    );
    assert_eq!(cursor.json["visible"], true);
    assert_eq!(
        (field(&cursor.json, "x"), field(&cursor.json, "y")),
        (x, y),
        "the cursor is where the probe says the pointer is"
    );
    let done = escape(guest, &mut client);
    assert_eq!(done.u64("moves"), Some(1));
}

#[test]
fn escape_ends_the_screen_with_a_summary_and_exit_status_0() {
    const TEST: &str = "probe_screen::escape_ends_the_screen_with_a_summary_and_exit_status_0";
    if !report::require_kvm(TEST) {
        return;
    }
    let (mut guest, mut client) = boot("escape");
    key(&mut client, TYPED[0].0);
    assert!(guest.0.wait_for("VIREO-PROBE screen_key", EVENT).is_some());
    // The clock redraws once a second: wait for one tick so `redraws` counts it.
    std::thread::sleep(Duration::from_millis(1100));
    let done = escape(guest, &mut client);
    assert_eq!(done.u64("keys"), Some(1), "Escape itself is not counted");
    assert_eq!(done.u64("moves"), Some(0));
    let redraws = done.u64("redraws").unwrap();
    let flushes = done.u64("flushes").unwrap();
    assert!(redraws >= 2, "the keys line and at least one clock tick");
    // One whole-frame flush for the first screen, then at most one per redraw.
    assert!(
        flushes >= 2 && flushes <= redraws + 1,
        "{redraws} {flushes}"
    );
}
