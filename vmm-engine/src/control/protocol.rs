//! The control protocol: one JSON object per line each way (as QEMU's QMP, simpler).
//! A client writes a `Request`; the engine answers each with exactly one `Response`, in
//! order. Unknown requests, unknown fields and malformed lines get an `error` response
//! naming what was wrong; the connection stays open.
//!
//! ```text
//! → {"request":"status"}
//! ← {"response":"status","state":"running","vcpus":2,"memory_mib":512}
//! → {"request":"balloon-set","target_mib":128}
//! ← {"response":"balloon","target_mib":128,"actual_mib":0}
//! ```
//!
//! A client that sends `display-attach` also gets pushed `Event` lines from then on,
//! tagged `event` instead of `response`. The attach answer and every `mode` event of an
//! enabled scanout carry the scanout's framebuffer, a memfd, as SCM_RIGHTS ancillary data
//! on the message holding the line's first byte:
//!
//! ```text
//! → {"request":"display-attach"}
//! ← {"response":"display","scanout":0,"enabled":true,"width":1280,"height":800,"stride":5120,"format":"B8G8R8A8"}   + fd
//! ← {"event":"damage","scanout":0,"x":0,"y":0,"width":1280,"height":800}
//! ← {"event":"cursor","scanout":0,"x":10,"y":20,"hot_x":0,"hot_y":0,"visible":true,"image":"<base64 RGBA>"}
//! ← {"event":"mode","scanout":0,"enabled":true,"width":1024,"height":768,"stride":4096,"format":"B8G8R8A8"}   + fd
//! ```

use serde::{Deserialize, Serialize};

use crate::devices::virtio::io_counters::IoCountersSnapshot;
use crate::devices::virtio::rate_limit::IoLimits;

/// Everything a client can ask. Later issues add to this closed set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The VM's state and size. (Variants without data are written `{}` so that
    /// `deny_unknown_fields` also rejects stray fields on them.)
    Status {},
    /// Sets the balloon's target: how much of the guest's RAM it should give back. The
    /// user takes over: the policy becomes `fixed`.
    BalloonSet { target_mib: u64 },
    /// Who sets the balloon's target: `fixed` (the user, `balloon-set`) or
    /// `give-back-idle` (the engine, from the guest's statistics).
    BalloonPolicy {
        policy: crate::devices::virtio::balloon::policy::BalloonPolicy,
    },
    /// The balloon's target and what the guest has given so far.
    BalloonGet {},
    /// The guest's memory statistics, as its balloon driver last reported them.
    BalloonStats {},
    /// Ends the VM at once, as pulling the plug (no guest shutdown).
    PowerOff {},
    /// Presses the ACPI power button: the guest shuts itself down (or not: it decides).
    Shutdown {},
    /// Resets the machine, as the reset button (the guest starts again when the engine
    /// restarts on reboot).
    Reset {},
    /// Stops the guest where it is (every vCPU out of the guest, its clock held); the
    /// answer comes once it has stopped.
    Pause {},
    /// Lets a paused guest run on.
    Resume {},
    /// Saves the VM's whole state to `path` (atomically) and stops it; restore with
    /// `vireo-vmm --restore PATH` and the same devices. On failure the VM runs on.
    Save { path: String },
    /// Moves the running VM to another engine started with `--incoming ENDPOINT` (and
    /// the same devices): `unix:PATH` or `tcp:HOST:PORT`. Answers once the destination
    /// runs the guest; this engine then stops. On failure the VM runs on here.
    Migrate { to: String },
    /// A key goes down or up on the keyboard (`code`: a Linux evdev key code, e.g. 30
    /// for A). Needs a display.
    InputKey { code: u16, pressed: bool },
    /// The tablet's pointer moves to (`x`, `y`), pixels of the guest's screen.
    InputPointer { x: u32, y: u32 },
    /// A pointer button goes down or up.
    InputButton {
        button: PointerButton,
        pressed: bool,
    },
    /// The wheels turn: `dy` notches down (negative: up), `dx` right.
    InputScroll {
        #[serde(default)]
        dx: i32,
        #[serde(default)]
        dy: i32,
    },
    /// Subscribes this connection to the display's events; answered with `display` and
    /// the framebuffer's memfd.
    DisplayAttach {},
    /// Writes what the guest's screen shows now to `path`, as PNG.
    Screenshot { path: String },
    /// The host's window has a new size: offer it to the guest as its display's mode.
    DisplayResize { width: u32, height: u32 },
    /// The disks' and network cards' traffic since the VM started (bytes and requests
    /// each way), in `--disk` order; the VM's CPU time and memory.
    Stats {},
    /// Replaces the I/O limits of disk `disk` (in `--disk` order) or network card `net`
    /// (0) at once: `limits` holds `bw`, `bw_burst` (bytes/s, bytes), `iops`,
    /// `iops_burst`; a key left out is unlimited. Answered with the limits in force.
    SetLimits {
        #[serde(default)]
        disk: Option<usize>,
        #[serde(default)]
        net: Option<usize>,
        limits: IoLimits,
    },
    /// Changes the VM's CPU weight (1-10000), limit (percent of one host CPU; 0 lifts
    /// it) or vCPU pinning (host CPUs; empty: anywhere); what is left out stays.
    /// Answered with the settings in force and the cgroup holding the VM.
    SetCpu {
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        pin: Option<Vec<usize>>,
    },
    /// Test only, refused unless the engine runs with `--test-sandbox`: a thread of
    /// kind `thread` (`vcpu`, `device`, `control`) makes a syscall outside its seccomp
    /// list, which must end the engine with a line naming the kind and the syscall.
    SeccompTrip { thread: String },
    /// Test only, refused unless the engine runs with `--test-sandbox`: a thread of kind
    /// `thread` tries to open `path` for reading; answered with the errno (0: opened),
    /// which shows what Landlock leaves that thread.
    SandboxProbe { thread: String, path: String },
}

/// The tablet's buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointerButton {
    Left,
    Right,
    Middle,
    Side,
    Extra,
}

/// The engine's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Status {
        state: String,
        vcpus: u8,
        memory_mib: u64,
    },
    Balloon {
        target_mib: u64,
        actual_mib: u64,
        #[serde(default)]
        policy: crate::devices::virtio::balloon::policy::BalloonPolicy,
    },
    BalloonStats {
        stats: serde_json::Value,
    },
    /// The screen, as `display-attach` answers (the memfd rides along when `enabled`).
    Display(ScreenMode),
    Screenshot {
        path: String,
        width: u32,
        height: u32,
    },
    /// For a disk, read is disk → guest; for a network card, read is received by the
    /// guest and write sent by it.
    Stats {
        disks: Vec<IoCountersSnapshot>,
        nets: Vec<IoCountersSnapshot>,
        /// CPU time and memory (resident, ballooned, merged by KSM).
        #[serde(default)]
        vm: crate::resources::VmUsage,
    },
    /// The VM's CPU settings now, and its cgroup (none without weight or limit).
    Cpu {
        config: crate::resources::cpu::CpuConfig,
        cgroup: Option<String>,
    },
    /// A device's I/O limits now.
    Limits {
        limits: IoLimits,
    },
    /// `sandbox-probe`'s answer: the open's errno (0: it opened).
    SandboxProbe {
        errno: i32,
    },
    Ok,
    Error {
        message: String,
    },
}

/// A scanout's mode as clients map it: `stride` bytes per row of `height` rows in the
/// memfd, each pixel 4 bytes in `format` (named by byte order: B8G8R8A8 is B, G, R, A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenMode {
    pub scanout: u32,
    /// Whether the guest shows anything; the other fields are 0 or empty when not.
    pub enabled: bool,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub format: String,
}

/// What the engine pushes to clients that subscribed (`display-attach`), unasked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The guest flushed this rectangle: the memfd holds its new pixels.
    Damage {
        scanout: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    /// The scanout's mode changed: unmap the old memfd, map the one sent with this line.
    Mode(ScreenMode),
    /// The guest's cursor: `x`, `y` is where its hot spot points on the scanout. `image`
    /// (64x64 RGBA, base64) is present when the image changed; `visible` false: hidden.
    Cursor {
        scanout: u32,
        x: i32,
        y: i32,
        hot_x: u32,
        hot_y: u32,
        visible: bool,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        image: Option<String>,
    },
}

/// One event line, newline included.
pub fn encode_event(event: &Event) -> String {
    let mut line = serde_json::to_string(event).unwrap_or_else(|e| {
        format!(r#"{{"event":"error","message":"cannot encode the event: {e}"}}"#)
    });
    line.push('\n');
    line
}

/// Parses one request line; a bad line becomes the error response to send back.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line).map_err(|e| Response::Error {
        message: format!("bad request: {e}"),
    })
}

/// One response line, newline included.
pub fn encode_response(response: &Response) -> String {
    let mut line = serde_json::to_string(response).unwrap_or_else(|e| {
        format!(r#"{{"response":"error","message":"cannot encode the response: {e}"}}"#)
    });
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_mistakes_are_named() {
        assert_eq!(
            parse_request(r#"{"request":"status"}"#),
            Ok(Request::Status {})
        );
        assert_eq!(
            parse_request(r#"{"request":"balloon-set","target_mib":64}"#),
            Ok(Request::BalloonSet { target_mib: 64 })
        );
        let err = |line: &str| match parse_request(line) {
            Err(Response::Error { message }) => message,
            other => panic!("{other:?}"),
        };
        assert!(err(r#"{"request":"reboot-the-moon"}"#).contains("unknown variant"));
        assert!(err(r#"{"request":"balloon-set"}"#).contains("target_mib"));
        assert!(err(r#"{"request":"status","extra":1}"#).contains("unknown field"));
        assert!(err("not json").contains("bad request"));
        assert_eq!(
            parse_request(r#"{"request":"input-button","button":"left","pressed":true}"#),
            Ok(Request::InputButton {
                button: PointerButton::Left,
                pressed: true
            })
        );
        assert_eq!(
            parse_request(r#"{"request":"input-scroll","dy":-2}"#),
            Ok(Request::InputScroll { dx: 0, dy: -2 })
        );
        assert!(
            err(r#"{"request":"input-button","button":"thumb","pressed":true}"#)
                .contains("unknown variant")
        );
        // Internally tagged enums lose the field name in serde's range errors.
        assert!(err(r#"{"request":"input-key","code":70000,"pressed":true}"#).contains("70000"));
    }

    #[test]
    fn display_requests_and_events_have_their_documented_shapes() {
        assert_eq!(
            parse_request(r#"{"request":"display-attach"}"#),
            Ok(Request::DisplayAttach {})
        );
        assert_eq!(
            parse_request(r#"{"request":"display-resize","width":1024,"height":768}"#),
            Ok(Request::DisplayResize {
                width: 1024,
                height: 768
            })
        );
        assert_eq!(
            parse_request(r#"{"request":"screenshot","path":"/tmp/s.png"}"#),
            Ok(Request::Screenshot {
                path: "/tmp/s.png".into()
            })
        );
        let mode = ScreenMode {
            scanout: 0,
            enabled: true,
            width: 2,
            height: 1,
            stride: 8,
            format: "B8G8R8A8".into(),
        };
        assert_eq!(
            encode_response(&Response::Display(mode.clone())),
            "{\"response\":\"display\",\"scanout\":0,\"enabled\":true,\"width\":2,\
             \"height\":1,\"stride\":8,\"format\":\"B8G8R8A8\"}\n"
        );
        assert!(encode_event(&Event::Mode(mode)).starts_with("{\"event\":\"mode\",\"scanout\":0,"));
        assert_eq!(
            encode_event(&Event::Damage {
                scanout: 0,
                x: 1,
                y: 2,
                width: 3,
                height: 4
            }),
            "{\"event\":\"damage\",\"scanout\":0,\"x\":1,\"y\":2,\"width\":3,\"height\":4}\n"
        );
        let moved = encode_event(&Event::Cursor {
            scanout: 0,
            x: -1,
            y: 5,
            hot_x: 0,
            hot_y: 0,
            visible: true,
            image: None,
        });
        assert!(!moved.contains("image"), "{moved}");
    }

    #[test]
    fn responses_are_one_line_each() {
        let line = encode_response(&Response::Balloon {
            target_mib: 1,
            actual_mib: 0,
            policy: Default::default(),
        });
        assert_eq!(
            line,
            "{\"response\":\"balloon\",\"target_mib\":1,\"actual_mib\":0,\"policy\":\"fixed\"}\n"
        );
    }
}
