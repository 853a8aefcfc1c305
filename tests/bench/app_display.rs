//! The desktop app's VM window against `vireo-vmm --window` (the engine's own plain
//! window, `pixels`/wgpu) on the same guest, same machine, same run, both on a private
//! Xvfb: the probe guest flushing full 1920x1080 frames as fast as it can
//! (`gpu-bench`), a blinking cursor's damage, 8x16 pixels, flushed as fast as it can
//! (`gpu-blink`), and the same screen static (`gpu-draw`). For each: the guest's frame
//! rate, and the CPU the window process spends (per second, and per guest frame).
//! The app uploads each flushed rectangle (here the whole frame) to its texture once.
//!
//! Then idle: the static screen with the app's library open (its thumbnail of the VM
//! live) against no app at all and against the VM window open: the app's CPU and the
//! engine's, the engine without its vCPU threads (the probe guest spins in its idle
//! loop, which is the guest's time, not the engine's).
//!
//! Last, latency: the guest toggles the 8x16 cursor cell every 50 ms
//! (`probe.gpu_period_ms`), at 1024x768 so the window shows it 1:1; the bench, attached
//! to the engine's display as a client like the app, timestamps each flush's damage
//! event, and reads the window's pixels from the X server (GetImage of the cell's
//! corner, every millisecond) to timestamp when each change is on the screen: flush ->
//! on screen, for the app's VM window and for `vireo-vmm --window`.
//!
//! `cargo bench -p vireo-e2e --bench app_display` (VIREO_BENCH_SECS=N per run, default 5).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::engine::{s, vmm_binary, LiveGuest, ProbeLine};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::temp::TempDir;
use vireo_e2e::xvfb::Xvfb;

const SCREEN: &str = "1920x1080";

fn secs() -> u64 {
    std::env::var("VIREO_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn vireo_binary() -> PathBuf {
    vireo_e2e::release_binary("vireo-app", "vireo")
}

/// CPU seconds (user + system, all threads) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) as f64 / ticks
}

/// The child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let ppid: u32 = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && &stat[open + 1..close] == name).then_some(pid)
    })
}

fn window_visible(x: &Xvfb, name: &str) -> bool {
    let out = x
        .command("xdotool")
        .args(["search", "--onlyvisible", "--name", name])
        .output()
        .expect("xdotool runs");
    !out.stdout.is_empty()
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One measurement: the window process's CPU over `secs()` while the guest runs.
struct Sample {
    cpu_percent: f64,
    guest_fps: Option<f64>,
}

fn measure(pid: u32) -> f64 {
    let before = cpu_seconds(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs()));
    (cpu_seconds(pid) - before) / start.elapsed().as_secs_f64() * 100.0
}

fn fps(lines: &str) -> Option<f64> {
    let line = lines
        .lines()
        .filter_map(ProbeLine::parse)
        .find(|l| l.tag == "gpu_bench")?;
    Some(line.u64("fps_x100")? as f64 / 100.0)
}

/// The guest runs `secs() + 10` seconds of `run` so that the window is up well before
/// the measurement and the guest still flushes after it.
fn cmdline(run: &str) -> String {
    format!("probe.run={run} probe.gpu_secs={}", secs() + 10)
}

/// `vireo-vmm --window`: measures its `vireo-window` child.
fn engine_window(x: &Xvfb, probe: &Path, run: &str) -> Sample {
    let mut guest = LiveGuest::spawn(x.command(s(&vmm_binary())).args([
        "--kernel",
        s(probe),
        "--memory",
        "256M",
        "--window",
        "--display",
        SCREEN,
        "--cmdline",
        &cmdline(run),
    ]));
    let engine = guest.child.id();
    let mut window = None;
    let mut ended = false;
    wait("vireo-window", Duration::from_secs(60), || {
        // The engine drops a window that falls behind; the VM then ends.
        ended = matches!(guest.child.try_wait(), Ok(Some(_)));
        window = child_named(engine, "vireo-window");
        ended || (window.is_some() && window_visible(x, "Vireo"))
    });
    if ended {
        return Sample {
            cpu_percent: f64::NAN,
            guest_fps: None,
        };
    }
    std::thread::sleep(Duration::from_secs(2));
    let window = window.unwrap();
    let mut cpu_percent = measure(window);
    // The engine drops a display client that falls 1024 events behind; its window
    // then closes and the VM powers off: no figure, said so in the table.
    if !Path::new(&format!("/proc/{window}")).exists() {
        cpu_percent = f64::NAN;
    }
    let guest_fps = if run != "gpu-draw" && !cpu_percent.is_nan() {
        guest.wait_for("VIREO-PROBE gpu_bench", Duration::from_secs(60));
        fps(&guest.seen.join("\n"))
    } else {
        None
    };
    let _ = guest.kill();
    Sample {
        cpu_percent,
        guest_fps,
    }
}

/// A VM made and started with the `vireo` CLI in a home of its own, for the app's rows.
/// It outlives the app by design, so it is powered off when this is dropped (a panic
/// would otherwise leave a spinning guest behind for the rest of the run).
struct AppVm {
    home: TempDir,
    name: &'static str,
    probe: PathBuf,
}

impl AppVm {
    fn start(name: &'static str, probe: &Path, display: &str, cmdline: &str) -> AppVm {
        let vm = AppVm {
            home: TempDir::new(&format!("bench-app-{name}")),
            name,
            probe: probe.to_owned(),
        };
        let out = vm
            .with_env(&mut Command::new(vireo_binary()))
            .args(["create", name, "--os", "kernel", "--kernel", s(probe)])
            .args(["--memory", "256M", "--display", display])
            .args(["--cmdline", cmdline, "--start"])
            .output()
            .expect("vireo runs");
        assert!(out.status.success(), "{out:?}");
        vm
    }

    /// `cmd` with this home's directories and programs.
    fn with_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("XDG_DATA_HOME", self.home.0.join("data"))
            .env("XDG_RUNTIME_DIR", self.home.0.join("run"))
            .env("VIREO_VMM", vmm_binary())
            .env("VIREO_PROBE_GUEST", &self.probe)
    }

    fn runtime(&self, file: &str) -> PathBuf {
        self.home.0.join("run/vireo").join(self.name).join(file)
    }

    fn log(&self) -> PathBuf {
        self.home
            .0
            .join(format!("data/vireo/vms/{}/logs/console.log", self.name))
    }

    /// The app (`vireo ARGS`) on `x`, once a window titled `title` shows. A fresh
    /// Xvfb's first client sometimes cannot connect (see app/tests/app_window.rs):
    /// three tries.
    fn open_app(&self, x: &Xvfb, args: &[&str], title: &str) -> Option<Child> {
        for _ in 0..3 {
            let mut child = self
                .with_env(&mut x.command(s(&vireo_binary())))
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .expect("the app");
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end && !window_visible(x, title) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if window_visible(x, title) {
                return Some(child);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }
}

impl Drop for AppVm {
    fn drop(&mut self) {
        let _ = self
            .with_env(&mut Command::new(vireo_binary()))
            .args(["stop", self.name])
            .output();
    }
}

/// The app: a VM made and started with the CLI, its window opened with `vireo open`.
fn app_window(x: &Xvfb, probe: &Path, run: &str) -> Sample {
    let vm = AppVm::start("bench", probe, SCREEN, &cmdline(run));
    let mut app = vm
        .open_app(x, &["open", "bench"], "^bench ")
        .expect("the app's VM window appeared");
    std::thread::sleep(Duration::from_secs(2));
    let cpu_percent = measure(app.id());
    let log = vm.log();
    let guest_fps = if run != "gpu-draw" {
        // A row without the guest's figure says so rather than ending the whole bench
        // (seen once under load with the 8x16 blink: the line never came).
        let end = Instant::now() + Duration::from_secs(60);
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        while !read().contains("gpu_bench") && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        let figure = fps(&read());
        if figure.is_none() {
            let text = read();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            eprintln!(
                "app_display: no gpu_bench line from the guest ({run}); its console ends: {tail:?}"
            );
        }
        figure
    } else {
        None
    };
    let _ = app.kill();
    let _ = app.wait();
    Sample {
        cpu_percent,
        guest_fps,
    }
}

/// CPU seconds of process `pid`'s threads whose names do not start with `skip`.
fn cpu_seconds_without(pid: u32, skip: &str) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if stat[open + 1..close].starts_with(skip) {
            continue;
        }
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += field(11) + field(12);
    }
    total as f64 / ticks
}

/// What is open beside the idle VM.
#[derive(Clone, Copy, PartialEq)]
enum Idle {
    NoApp,
    Library,
    VmWindow,
}

/// A static screen (`gpu-draw`) for `secs()`: the app's CPU and the engine's without
/// its vCPU threads, as percent of one CPU.
fn idle(x: &Xvfb, probe: &Path, open: Idle) -> (Option<f64>, f64) {
    let vm = AppVm::start("idle", probe, SCREEN, "probe.run=gpu-draw");
    let engine: u32 = std::fs::read_to_string(vm.runtime("engine.pid"))
        .expect("the engine's pid")
        .trim()
        .parse()
        .unwrap();
    let (args, title): (&[&str], &str) = match open {
        Idle::NoApp => (&[], ""),
        Idle::Library => (&[], "^Vireo$"),
        Idle::VmWindow => (&["open", "idle"], "^idle "),
    };
    let app = (open != Idle::NoApp).then(|| {
        vm.open_app(x, args, title)
            .expect("the app's window appeared")
    });
    // The window settles and the library's first thumbnail is drawn.
    std::thread::sleep(Duration::from_secs(3));
    let app_before = app.as_ref().map(|a| cpu_seconds(a.id()));
    let engine_before = cpu_seconds_without(engine, "vcpu");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs()));
    let elapsed = start.elapsed().as_secs_f64();
    let app_cpu = app
        .as_ref()
        .zip(app_before)
        .map(|(a, before)| (cpu_seconds(a.id()) - before) / elapsed * 100.0);
    let engine_cpu = (cpu_seconds_without(engine, "vcpu") - engine_before) / elapsed * 100.0;
    if let Some(mut a) = app {
        let _ = a.kill();
        let _ = a.wait();
    }
    (app_cpu, engine_cpu)
}

fn idle_rows(x: &Xvfb, probe: &Path) {
    println!();
    println!(
        "idle: a static {SCREEN} screen, {} s per measurement",
        secs()
    );
    println!(
        "{:<40} {:>10} {:>26} {:>8}",
        "open", "app CPU", "engine CPU (no vCPU thr.)", "total"
    );
    for (label, open) in [
        ("nothing (baseline)", Idle::NoApp),
        ("library, thumbnail live", Idle::Library),
        ("VM window", Idle::VmWindow),
    ] {
        let (app, engine) = idle(x, probe, open);
        println!(
            "{:<40} {:>10} {:>25.2}% {:>7.2}%",
            label,
            app.map_or("-".to_owned(), |a| format!("{a:.2}%")),
            engine,
            app.unwrap_or(0.0) + engine
        );
    }
}

/// The latency guest's screen: small enough to be shown 1:1 in either window.
const LATENCY_SCREEN: &str = "1024x768";
/// The guest toggles the cell this often.
const LATENCY_PERIOD_MS: u64 = 50;

/// Flush -> on screen for the window titled `title` showing the VM behind `control`:
/// the damage events' arrival (as a display client) against the pixels' change on
/// the X server. Returns the latencies in ms.
fn flush_to_screen(x: &Xvfb, control: &Path, title: &str) -> Vec<f64> {
    use vireo_vmm::control::client::{DisplayClient, DisplayMessage};
    use vireo_vmm::control::protocol::Event;
    use x11rb::protocol::xproto::{ConnectionExt, ImageFormat};

    let id = x.find_window(title, Duration::from_secs(30));
    // With no window manager every window opens at (0, 0): the app's library can cover
    // the VM window, and X reads an obscured window as whatever covers it. Moved clear
    // of it and raised, the VM window's own pixels are read.
    for args in [
        &["windowmove", &id, "960", "0"][..],
        &["windowraise", &id][..],
    ] {
        let _ = x.command("xdotool").args(args).output();
    }
    std::thread::sleep(Duration::from_millis(500));
    let window: u32 = id.parse().expect("an X window id");
    let (flushes_tx, flushes) = std::sync::mpsc::channel();
    let (mut display, _mode) = DisplayClient::attach(control).expect("the engine's display");
    std::thread::spawn(move || {
        while let Ok(message) = display.next_message() {
            if let DisplayMessage::Event(Event::Damage { .. }) = message {
                if flushes_tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        }
    });
    let (conn, _) = x11rb::connect(Some(&x.display)).expect("the X server");
    // The cell is at (96, 96), 8x16: its top-left 8x8 corner.
    let grab = || {
        conn.get_image(ImageFormat::Z_PIXMAP, window, 96, 96, 8, 8, !0)
            .ok()
            .and_then(|c| c.reply().ok())
            .map(|r| r.data)
    };
    let mut last = grab();
    let mut changes = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs());
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
        let now = grab();
        if now.is_some() && now != last {
            changes.push(Instant::now());
            last = now;
        }
    }
    let flushes: Vec<Instant> = flushes.try_iter().collect();
    // Each change on the screen belongs to the newest flush before it (flushes are
    // 50 ms apart); a flush is counted once.
    let mut used = None;
    let mut latencies = Vec::new();
    for change in changes {
        let Some(flush) = flushes.iter().rev().find(|f| **f <= change) else {
            continue;
        };
        if used == Some(*flush) {
            continue;
        }
        used = Some(*flush);
        latencies.push((change - *flush).as_secs_f64() * 1e3);
    }
    latencies
}

fn latency_cmdline() -> String {
    format!(
        "probe.run=gpu-blink probe.gpu_period_ms={LATENCY_PERIOD_MS} probe.gpu_secs={}",
        secs() + 30
    )
}

/// The app's VM window on the blinking guest.
fn app_latency(x: &Xvfb, probe: &Path) -> Vec<f64> {
    let vm = AppVm::start("lat", probe, LATENCY_SCREEN, &latency_cmdline());
    let mut app = vm
        .open_app(x, &["open", "lat"], "^lat ")
        .expect("the app's VM window appeared");
    let latencies = flush_to_screen(x, &vm.runtime("control.sock"), "^lat ");
    let _ = app.kill();
    let _ = app.wait();
    latencies
}

/// `vireo-vmm --window` on the blinking guest.
fn engine_latency(x: &Xvfb, probe: &Path) -> Vec<f64> {
    let dir = TempDir::new("bench-engine-latency");
    let control = dir.0.join("control.sock");
    let cmdline = latency_cmdline();
    let mut guest = LiveGuest::spawn(x.command(s(&vmm_binary())).args([
        "--kernel",
        s(probe),
        "--memory",
        "256M",
        "--display",
        LATENCY_SCREEN,
        "--window",
        "--control-socket",
        s(&control),
        "--cmdline",
        &cmdline,
    ]));
    assert!(
        guest
            .wait_for("gpu_ready", Duration::from_secs(60))
            .is_some(),
        "the latency guest did not start"
    );
    let latencies = flush_to_screen(x, &control, "Vireo");
    guest.kill();
    latencies
}

/// Median, 95th percentile and worst of `ms`.
fn spread(mut ms: Vec<f64>) -> String {
    if ms.is_empty() {
        return "no change seen on the screen".into();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.1} ms, p95 {:.1} ms, worst {:.1} ms ({} flushes)",
        at(0.5),
        at(0.95),
        ms[ms.len() - 1],
        ms.len()
    )
}

fn latency_rows(x: &Xvfb, probe: &Path) {
    println!();
    println!(
        "flush -> on screen, {LATENCY_SCREEN}, 8x16 cell toggled every {LATENCY_PERIOD_MS} ms, {} s (goal: 16 ms)",
        secs()
    );
    println!("  {:<22} {}", "vireo (app)", spread(app_latency(x, probe)));
    println!(
        "  {:<22} {}",
        "vireo-vmm --window",
        spread(engine_latency(x, probe))
    );
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        println!("app_display: skipped, no /dev/kvm");
        return;
    }
    let probe = probe_guest_elf();
    vireo_binary();
    let x = Xvfb::start(2000, 1300);
    let rows = [
        ("full-frame 1080p flushes", "gpu-bench"),
        ("8x16 blink (cursor-sized)", "gpu-blink"),
        ("static screen", "gpu-draw"),
    ];
    println!("app_display: {SCREEN}, {} s per measurement", secs());
    println!(
        "{:<26} {:<22} {:>10} {:>12} {:>16}",
        "guest", "window", "guest fps", "window CPU", "CPU ms / frame"
    );
    for (label, run) in rows {
        for (who, sample) in [
            ("vireo-vmm --window", engine_window(&x, &probe, run)),
            ("vireo (app)", app_window(&x, &probe, run)),
        ] {
            let per_frame = sample
                .guest_fps
                .filter(|f| *f > 0.0)
                .map_or("-".to_owned(), |f| {
                    format!("{:.2}", sample.cpu_percent * 10.0 / f)
                });
            if sample.cpu_percent.is_nan() {
                println!("{label:<26} {who:<22} window closed: too slow for the damage events");
                continue;
            }
            println!(
                "{:<26} {:<22} {:>10} {:>11.1}% {:>16}",
                label,
                who,
                sample
                    .guest_fps
                    .map_or("-".to_owned(), |f| format!("{f:.1}")),
                sample.cpu_percent,
                per_frame
            );
        }
    }
    idle_rows(&x, &probe);
    latency_rows(&x, &probe);
}
