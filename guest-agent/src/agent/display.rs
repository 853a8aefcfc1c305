//! Seamless mouse and display: whether the guest drives an absolute tablet (so the host
//! pointer needs no capture), the guest's screen size, and resizing the session's screen.
//!
//! - Tablet: `/proc/bus/input/devices`, a device that reports `EV_ABS` with `ABS_X` and
//!   `ABS_Y`, bound to a handler, and that is neither a touchpad (`INPUT_PROP_POINTER`),
//!   a touchscreen (`INPUT_PROP_DIRECT`) nor a joystick (`js*` handler): the virtio
//!   tablet ("Vireo Virtio Tablet", "QEMU Virtio Tablet") or a USB tablet.
//! - Screen: the X session through `xrandr` when `DISPLAY` answers; else the fbdev
//!   console's `virtual_size`, else a connected DRM connector's preferred mode (sysfs).
//! - Resize: `xrandr --output O --mode WxH`, adding a CVT reduced-blanking mode first
//!   when the output does not list that size.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::protocol::{DisplayStatus, ScreenSize, ScreenSource};

const EV_ABS: u32 = 3;
const ABS_X: u32 = 0;
const ABS_Y: u32 = 1;
const INPUT_PROP_POINTER: u32 = 0;
const INPUT_PROP_DIRECT: u32 = 1;

/// Where the probe looks; tests point it at fixtures.
#[derive(Debug, Clone)]
pub struct DisplayProbe {
    pub input_devices: PathBuf,
    pub sysfs_class: PathBuf,
    /// Ask the X session (`xrandr`); off when `DISPLAY` is unset.
    pub x11: bool,
}

impl Default for DisplayProbe {
    fn default() -> Self {
        Self {
            input_devices: "/proc/bus/input/devices".into(),
            sysfs_class: "/sys/class".into(),
            x11: std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("no graphical session to resize (DISPLAY is not set)")]
    NoSession,
    #[error("cannot run xrandr")]
    Spawn(#[source] std::io::Error),
    #[error("xrandr {args}: {stderr}")]
    Xrandr { args: String, stderr: String },
    #[error("xrandr lists no connected output")]
    NoOutput,
    #[error("{0}x{1} is not a screen size (1..=16384 each way)")]
    BadSize(u32, u32),
    #[error("asked for {asked_w}x{asked_h}, the screen is {now_w}x{now_h} after xrandr")]
    NotApplied {
        asked_w: u32,
        asked_h: u32,
        now_w: u32,
        now_h: u32,
    },
}

impl DisplayProbe {
    pub fn status(&self) -> DisplayStatus {
        let tablet = std::fs::read_to_string(&self.input_devices)
            .ok()
            .and_then(|text| absolute_tablet(&text));
        let (screen, screen_source) = self.screen();
        DisplayStatus {
            absolute_pointer: tablet.is_some(),
            pointer_device: tablet,
            screen,
            screen_source,
            can_resize: self.x11 && screen_source == ScreenSource::X11,
        }
    }

    fn screen(&self) -> (Option<ScreenSize>, ScreenSource) {
        if self.x11 {
            if let Some(size) = xrandr_query().ok().and_then(|q| parse_xrandr(&q).current) {
                return (Some(size), ScreenSource::X11);
            }
        }
        let fb = self.sysfs_class.join("graphics/fb0/virtual_size");
        if let Some(size) = std::fs::read_to_string(fb)
            .ok()
            .and_then(|s| parse_fb_size(&s))
        {
            return (Some(size), ScreenSource::Framebuffer);
        }
        match drm_preferred_mode(&self.sysfs_class.join("drm")) {
            Some(size) => (Some(size), ScreenSource::Drm),
            None => (None, ScreenSource::None),
        }
    }

    /// Sets the X session's screen to `size`.
    pub fn resize(&self, size: ScreenSize) -> Result<(), DisplayError> {
        if !self.x11 {
            return Err(DisplayError::NoSession);
        }
        if !(1..=16384).contains(&size.width) || !(1..=16384).contains(&size.height) {
            return Err(DisplayError::BadSize(size.width, size.height));
        }
        let query = parse_xrandr(&xrandr_query()?);
        let output = query.output.ok_or(DisplayError::NoOutput)?;
        for args in resize_commands(&output, size) {
            xrandr(&args)?;
        }
        let now = parse_xrandr(&xrandr_query()?).current;
        match now {
            Some(now) if now == size => Ok(()),
            now => {
                let now = now.unwrap_or(ScreenSize {
                    width: 0,
                    height: 0,
                });
                Err(DisplayError::NotApplied {
                    asked_w: size.width,
                    asked_h: size.height,
                    now_w: now.width,
                    now_h: now.height,
                })
            }
        }
    }
}

/// The name of the first absolute tablet in `/proc/bus/input/devices` text.
pub fn absolute_tablet(devices: &str) -> Option<String> {
    devices
        .split("\n\n")
        .filter_map(InputDevice::parse)
        .find(InputDevice::is_absolute_tablet)
        .map(|d| d.name)
}

#[derive(Debug, Default)]
struct InputDevice {
    name: String,
    handlers: Vec<String>,
    ev: Vec<u64>,
    abs: Vec<u64>,
    prop: Vec<u64>,
}

impl InputDevice {
    fn parse(block: &str) -> Option<Self> {
        let mut device = Self::default();
        for line in block.lines() {
            let Some((tag, value)) = line.split_once(": ") else {
                continue;
            };
            match tag {
                "N" => {
                    let name = value.strip_prefix("Name=")?;
                    device.name = name.trim_matches('"').to_string();
                }
                "H" => {
                    let handlers = value.strip_prefix("Handlers=").unwrap_or("");
                    device.handlers = handlers.split_whitespace().map(String::from).collect();
                }
                "B" => {
                    let (key, bits) = value.split_once('=')?;
                    let bits = parse_bitmap(bits)?;
                    match key {
                        "EV" => device.ev = bits,
                        "ABS" => device.abs = bits,
                        "PROP" => device.prop = bits,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        (!device.name.is_empty()).then_some(device)
    }

    fn is_absolute_tablet(&self) -> bool {
        let bound = self
            .handlers
            .iter()
            .any(|h| h.starts_with("event") || h.starts_with("mouse"));
        let joystick = self.handlers.iter().any(|h| h.starts_with("js"));
        bound
            && !joystick
            && bit(&self.ev, EV_ABS)
            && bit(&self.abs, ABS_X)
            && bit(&self.abs, ABS_Y)
            && !bit(&self.prop, INPUT_PROP_POINTER)
            && !bit(&self.prop, INPUT_PROP_DIRECT)
    }
}

/// A kernel bitmap as `/proc/bus/input/devices` prints it: hex words, most significant
/// first. Only bits of the lowest word are ever asked for, whatever the word size.
fn parse_bitmap(text: &str) -> Option<Vec<u64>> {
    let mut words: Vec<u64> = text
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16).ok())
        .collect::<Option<_>>()?;
    words.reverse();
    Some(words)
}

fn bit(words: &[u64], n: u32) -> bool {
    words.first().is_some_and(|w| n < 32 && w & (1 << n) != 0)
}

/// `/sys/class/graphics/fb0/virtual_size`: "1280,800".
fn parse_fb_size(text: &str) -> Option<ScreenSize> {
    let (w, h) = text.trim().split_once(',')?;
    size(w.parse().ok()?, h.parse().ok()?)
}

fn size(width: u32, height: u32) -> Option<ScreenSize> {
    (width > 0 && height > 0).then_some(ScreenSize { width, height })
}

/// The first mode ("1280x800") of the first connected connector under `/sys/class/drm`.
fn drm_preferred_mode(drm: &Path) -> Option<ScreenSize> {
    let mut connectors: Vec<PathBuf> = std::fs::read_dir(drm)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("status").exists())
        .collect();
    connectors.sort();
    connectors.iter().find_map(|c| {
        let status = std::fs::read_to_string(c.join("status")).ok()?;
        if status.trim() != "connected" {
            return None;
        }
        let modes = std::fs::read_to_string(c.join("modes")).ok()?;
        parse_mode_name(modes.lines().next()?)
    })
}

/// "1280x800" (xrandr and DRM also write "1280x800i" or "1280x800_60.00").
fn parse_mode_name(name: &str) -> Option<ScreenSize> {
    let (w, rest) = name.trim().split_once('x')?;
    let h: String = rest.chars().take_while(char::is_ascii_digit).collect();
    size(w.parse().ok()?, h.parse().ok()?)
}

/// What `xrandr --current` says that matters here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct XrandrQuery {
    pub current: Option<ScreenSize>,
    pub output: Option<XrandrOutput>,
}

/// The output to resize: the primary connected one, else the first connected one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct XrandrOutput {
    pub name: String,
    pub modes: Vec<String>,
}

pub fn parse_xrandr(text: &str) -> XrandrQuery {
    let mut query = XrandrQuery::default();
    let mut outputs: Vec<(bool, XrandrOutput)> = Vec::new();
    let mut in_connected = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Screen ") {
            // "Screen 0: minimum 8 x 8, current 1280 x 800, maximum 32767 x 32767"
            query.current = rest.split(", ").find_map(|part| {
                let (w, h) = part.strip_prefix("current ")?.split_once(" x ")?;
                size(w.trim().parse().ok()?, h.trim().parse().ok()?)
            });
        } else if line.starts_with(char::is_whitespace) {
            if in_connected {
                if let (Some(mode), Some((_, output))) =
                    (line.split_whitespace().next(), outputs.last_mut())
                {
                    output.modes.push(mode.to_string());
                }
            }
        } else {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            in_connected = words.next() == Some("connected");
            if in_connected {
                let primary = words.next() == Some("primary");
                outputs.push((
                    primary,
                    XrandrOutput {
                        name: name.to_string(),
                        modes: Vec::new(),
                    },
                ));
            }
        }
    }
    let primary = outputs.iter().position(|(p, _)| *p).unwrap_or(0);
    if primary < outputs.len() {
        query.output = Some(outputs.swap_remove(primary).1);
    }
    query
}

/// The xrandr invocations that set `output` to `size`.
pub fn resize_commands(output: &XrandrOutput, size: ScreenSize) -> Vec<Vec<String>> {
    let exact = format!("{}x{}", size.width, size.height);
    let set = |mode: &str| {
        vec![
            "--output".to_string(),
            output.name.clone(),
            "--mode".into(),
            mode.to_string(),
        ]
    };
    if output.modes.contains(&exact) {
        return vec![set(&exact)];
    }
    let modeline = cvt_reduced_blanking(size.width, size.height);
    let name = format!("{exact}_vireo");
    let mut newmode = vec!["--newmode".to_string(), name.clone()];
    newmode.extend(modeline.split_whitespace().map(String::from));
    let mut commands = Vec::new();
    if !output.modes.contains(&name) {
        commands.push(newmode);
        commands.push(vec!["--addmode".into(), output.name.clone(), name.clone()]);
    }
    commands.push(set(&name));
    commands
}

/// A VESA CVT 1.1 reduced-blanking modeline at 60 Hz (what `cvt -r W H` prints, after the
/// name): "clock hdisp hsyncstart hsyncend htotal vdisp vsyncstart vsyncend vtotal flags".
pub fn cvt_reduced_blanking(width: u32, height: u32) -> String {
    const REFRESH: f64 = 60.0;
    const MIN_V_BLANK_US: f64 = 460.0;
    const H_BLANK: u32 = 160;
    const H_SYNC: u32 = 32;
    const H_FRONT_PORCH: u32 = 48;
    const V_FRONT_PORCH: u32 = 3;
    const MIN_V_BACK_PORCH: u32 = 6;
    const CLOCK_STEP_MHZ: f64 = 0.25;
    // CVT: the width is a multiple of the 8-pixel character cell.
    let h = width / 8 * 8;
    let v = height;
    let v_sync = match (width * 3 == height * 4, width * 9 == height * 16) {
        (true, _) => 4,
        (_, true) => 5,
        _ if width * 10 == height * 16 => 6,
        _ if width * 4 == height * 5 || width * 9 == height * 15 => 7,
        _ => 10,
    };
    let h_period_us = (1e6 / REFRESH - MIN_V_BLANK_US) / f64::from(v);
    let vbi_lines = (MIN_V_BLANK_US / h_period_us) as u32 + 1;
    let vbi_lines = vbi_lines.max(V_FRONT_PORCH + v_sync + MIN_V_BACK_PORCH);
    let v_total = v + vbi_lines;
    let h_total = h + H_BLANK;
    let clock = CLOCK_STEP_MHZ
        * ((REFRESH * f64::from(v_total) * f64::from(h_total) / 1e6) / CLOCK_STEP_MHZ).floor();
    let hs = h + H_FRONT_PORCH;
    let vs = v + V_FRONT_PORCH;
    format!(
        "{clock:.2} {h} {hs} {} {h_total} {v} {vs} {} {v_total} +hsync -vsync",
        hs + H_SYNC,
        vs + v_sync
    )
}

fn xrandr_query() -> Result<String, DisplayError> {
    xrandr(&["--current".to_string()])
}

fn xrandr(args: &[String]) -> Result<String, DisplayError> {
    let out = Command::new("xrandr")
        .args(args)
        .output()
        .map_err(DisplayError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DisplayError::Xrandr {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QEMU guest (Debian 12, 64-bit): keyboard, the virtio tablet, a PS/2 mouse.
    const QEMU_DEVICES: &str = r#"I: Bus=0019 Vendor=0000 Product=0001 Version=0000
N: Name="Power Button"
P: Phys=LNXPWRBN/button/input0
S: Sysfs=/devices/LNXSYSTM:00/LNXPWRBN:00/input/input0
U: Uniq=
H: Handlers=kbd event0
B: PROP=0
B: EV=3
B: KEY=10000000000000 0

I: Bus=0006 Vendor=0627 Product=0003 Version=0001
N: Name="QEMU Virtio Tablet"
P: Phys=virtio3/input0
S: Sysfs=/devices/pci0000:00/0000:00:05.0/virtio3/input/input5
U: Uniq=
H: Handlers=mouse1 event4
B: PROP=0
B: EV=f
B: KEY=70000 0 0 0 0
B: REL=900
B: ABS=3

I: Bus=0011 Vendor=0002 Product=0013 Version=0006
N: Name="VirtualPS/2 VMware VMMouse"
P: Phys=isa0060/serio1/input1
S: Sysfs=/devices/platform/i8042/serio1/input/input4
U: Uniq=
H: Handlers=mouse0 event3
B: PROP=0
B: EV=b
B: KEY=70000 0 0 0 0
B: ABS=3
"#;

    /// A laptop touchpad (absolute axes, but the pointer property) and a joystick.
    const NOT_TABLETS: &str = r#"I: Bus=0018 Vendor=06cb Product=7e7e Version=0100
N: Name="SYNA7DB5:01 06CB:7E7E Touchpad"
H: Handlers=mouse2 event9
B: PROP=5
B: EV=1b
B: ABS=2e0800000000003

I: Bus=0003 Vendor=045e Product=028e Version=0110
N: Name="Microsoft X-Box 360 pad"
H: Handlers=event20 js0
B: PROP=0
B: EV=20000b
B: ABS=3003f
"#;

    #[test]
    fn finds_the_virtio_tablet_and_not_touchpads_or_joysticks() {
        assert_eq!(
            absolute_tablet(QEMU_DEVICES).as_deref(),
            Some("QEMU Virtio Tablet")
        );
        assert_eq!(absolute_tablet(NOT_TABLETS), None);
        let ours = QEMU_DEVICES.replace("QEMU Virtio Tablet", "Vireo Virtio Tablet");
        assert_eq!(
            absolute_tablet(&ours).as_deref(),
            Some("Vireo Virtio Tablet")
        );
        // An unbound device (no handler) is not in use.
        let unbound = QEMU_DEVICES.replace("H: Handlers=mouse1 event4", "H: Handlers=");
        assert_eq!(
            absolute_tablet(&unbound).as_deref(),
            Some("VirtualPS/2 VMware VMMouse")
        );
        assert_eq!(absolute_tablet("garbage\n\nB: EV=zz\n"), None);
    }

    const XRANDR: &str = "Screen 0: minimum 320 x 200, current 1280 x 800, maximum 8192 x 8192
Virtual-1 connected primary 1280x800+0+0 0mm x 0mm
   1280x800      59.81*+
   1024x768      60.00  
   800x600       60.32    56.25  
Virtual-2 disconnected (normal left inverted right x axis y axis)
";

    #[test]
    fn parses_xrandr_and_plans_a_resize() {
        let q = parse_xrandr(XRANDR);
        assert_eq!(
            q.current,
            Some(ScreenSize {
                width: 1280,
                height: 800
            })
        );
        let output = q.output.unwrap();
        assert_eq!(output.name, "Virtual-1");
        assert_eq!(output.modes, ["1280x800", "1024x768", "800x600"]);
        let listed = resize_commands(
            &output,
            ScreenSize {
                width: 1024,
                height: 768,
            },
        );
        assert_eq!(listed, [["--output", "Virtual-1", "--mode", "1024x768"]]);
        let new = resize_commands(
            &output,
            ScreenSize {
                width: 1920,
                height: 1080,
            },
        );
        assert_eq!(new.len(), 3);
        assert_eq!(new[0][..2], ["--newmode", "1920x1080_vireo"]);
        assert_eq!(new[1], ["--addmode", "Virtual-1", "1920x1080_vireo"]);
        assert_eq!(new[2][3], "1920x1080_vireo");
    }

    #[test]
    fn cvt_matches_the_cvt_tool() {
        // `cvt -r 1920 1080` and `cvt -r 1280 800`.
        assert_eq!(
            cvt_reduced_blanking(1920, 1080),
            "138.50 1920 1968 2000 2080 1080 1083 1088 1111 +hsync -vsync"
        );
        assert_eq!(
            cvt_reduced_blanking(1280, 800),
            "71.00 1280 1328 1360 1440 800 803 809 823 +hsync -vsync"
        );
    }

    #[test]
    fn sysfs_sizes() {
        assert_eq!(
            parse_fb_size("1024,768\n"),
            Some(ScreenSize {
                width: 1024,
                height: 768
            })
        );
        assert_eq!(parse_fb_size("0,0"), None);
        assert_eq!(
            parse_mode_name("1280x800i"),
            Some(ScreenSize {
                width: 1280,
                height: 800
            })
        );
        let dir = std::env::temp_dir().join(format!("vireo-drm-{}", std::process::id()));
        let conn = dir.join("drm/card0-Virtual-1");
        std::fs::create_dir_all(&conn).unwrap();
        std::fs::write(conn.join("status"), "connected\n").unwrap();
        std::fs::write(conn.join("modes"), "1600x900\n1024x768\n").unwrap();
        let probe = DisplayProbe {
            input_devices: dir.join("none"),
            sysfs_class: dir.clone(),
            x11: false,
        };
        let status = probe.status();
        assert_eq!(status.screen_source, ScreenSource::Drm);
        assert_eq!(status.screen.map(|s| s.width), Some(1600));
        assert!(!status.absolute_pointer && !status.can_resize);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
