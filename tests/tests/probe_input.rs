//! virtio-input under `vireo-vmm`, read by the probe guest's third-party
//! `virtio-drivers` driver: the keyboard and the tablet describe themselves as a Linux
//! driver expects, and keys, pointer moves, buttons and the wheel sent through the
//! control socket arrive in the guest as the right evdev events, in order.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use vireo_e2e::engine::{s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;

/// A control-socket client that sends one request and reads its one answer.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn connect(path: &std::path::Path) -> Control {
        let stream = UnixStream::connect(path).expect("the control socket accepts connections");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Control {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn ask(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        self.reader.read_line(&mut answer).unwrap();
        answer
    }

    fn ok(&mut self, line: &str) {
        let answer = self.ask(line);
        assert_eq!(answer.trim(), r#"{"response":"ok"}"#, "{line}");
    }
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vireo-input-{name}-{}.sock", std::process::id()))
}

fn probe_lines(lines: &[String], tag: &str) -> Vec<ProbeLine> {
    lines
        .iter()
        .filter_map(|l| ProbeLine::parse(l))
        .filter(|p| p.tag == tag)
        .collect()
}

#[test]
fn keys_pointer_buttons_and_wheel_reach_the_guest() {
    const TEST: &str = "probe_input::keys_pointer_buttons_and_wheel_reach_the_guest";
    if !report::require_kvm(TEST) {
        return;
    }
    let socket = socket_path("events");
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "128M",
        "--display",
        "1280x800",
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=input",
    ]));
    assert!(
        guest
            .wait_for("VIREO-PROBE input_ready devices=2", Duration::from_secs(60))
            .is_some(),
        "the probe found both input devices"
    );
    let mut control = Control::connect(&socket);
    control.ok(r#"{"request":"input-key","code":30,"pressed":true}"#);
    control.ok(r#"{"request":"input-key","code":30,"pressed":false}"#);
    // The screen's last pixel is the tablet's last position; its middle is half way.
    control.ok(r#"{"request":"input-pointer","x":1279,"y":0}"#);
    control.ok(r#"{"request":"input-pointer","x":640,"y":400}"#);
    control.ok(r#"{"request":"input-button","button":"left","pressed":true}"#);
    control.ok(r#"{"request":"input-button","button":"left","pressed":false}"#);
    control.ok(r#"{"request":"input-scroll","dy":-1}"#);
    let refused = control.ask(r#"{"request":"input-key","code":272,"pressed":true}"#);
    assert!(
        refused.contains("cannot send"),
        "BTN_LEFT is not a key: {refused}"
    );
    control.ok(r#"{"request":"input-key","code":1,"pressed":true}"#);
    assert!(
        guest
            .wait_for("VIREO-PROBE POWEROFF", Duration::from_secs(60))
            .is_some(),
        "the probe saw Escape and powered off"
    );
    let lines = guest.kill();
    let all = lines.join("\n");

    let devices = probe_lines(&lines, "input_dev");
    assert_eq!(devices.len(), 2, "{all}");
    let keyboard = devices
        .iter()
        .find(|d| d.get("kind") == Some("keyboard"))
        .expect("a keyboard");
    assert!(
        all.contains(r#"name="Vireo Virtio Keyboard" serial="vireo-keyboard""#),
        "{all}"
    );
    assert_eq!(keyboard.u64("keys"), Some(248), "KEY_ESC..KEY_MICMUTE");
    assert_eq!(keyboard.u64("bustype"), Some(6), "BUS_VIRTUAL");
    assert_eq!(keyboard.u64("vendor"), Some(0x1af4));
    let tablet = devices
        .iter()
        .find(|d| d.get("kind") == Some("pointer"))
        .expect("a tablet");
    assert!(
        all.contains(r#"name="Vireo Virtio Tablet" serial="vireo-tablet""#),
        "{all}"
    );
    assert_eq!(tablet.u64("abs"), Some(2));
    assert_eq!(tablet.u64("abs_x_max"), Some(32767));
    assert_eq!(tablet.u64("rel"), Some(2), "both wheels");
    assert_eq!(tablet.u64("keys"), Some(5), "five buttons");

    let kbd = keyboard.u64("index").unwrap();
    let tab = tablet.u64("index").unwrap();
    let events: Vec<(u64, u64, u64, i64)> = probe_lines(&lines, "input_event")
        .iter()
        .map(|e| {
            (
                e.u64("dev").unwrap(),
                e.u64("type").unwrap(),
                e.u64("code").unwrap(),
                e.get("value").unwrap().parse().unwrap(),
            )
        })
        .collect();
    let expected = vec![
        (kbd, 1, 30, 1),
        (kbd, 1, 30, 0),
        (tab, 3, 0, 32767),
        (tab, 3, 1, 0),
        (tab, 3, 0, 640 * 32767 / 1279),
        (tab, 3, 1, 400 * 32767 / 799),
        (tab, 1, 0x110, 1),
        (tab, 1, 0x110, 0),
        (tab, 2, 8, 1),
        (kbd, 1, 1, 1),
    ];
    // Events of one device arrive in order; the probe polls the devices in turn.
    for dev in [kbd, tab] {
        let got: Vec<_> = events.iter().filter(|e| e.0 == dev).collect();
        let want: Vec<_> = expected.iter().filter(|e| e.0 == dev).collect();
        assert_eq!(got, want, "{all}");
    }
    let done = probe_lines(&lines, "input_done");
    assert_eq!(done.first().and_then(|d| d.u64("ok")), Some(1), "{all}");
}

#[test]
fn input_requests_without_a_display_say_how_to_get_one() {
    const TEST: &str = "probe_input::input_requests_without_a_display_say_how_to_get_one";
    if !report::require_kvm(TEST) {
        return;
    }
    let socket = socket_path("headless");
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--memory",
        "64M",
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=idle",
    ]));
    assert!(guest
        .wait_for("VIREO-PROBE IDLE", Duration::from_secs(60))
        .is_some());
    let mut control = Control::connect(&socket);
    let answer = control.ask(r#"{"request":"input-key","code":30,"pressed":true}"#);
    assert!(answer.contains("--display"), "{answer}");
    control.ok(r#"{"request":"power-off"}"#);
    assert!(guest.wait_exit(Duration::from_secs(30)).is_some());
}
