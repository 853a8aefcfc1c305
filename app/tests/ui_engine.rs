//! The app's windows against a real engine running the probe guest's self-test screen:
//! the library re-attaches to a VM started before it (by the CLI) and powers it off;
//! the VM window maps the engine's framebuffer, uploads the screen once and afterwards
//! only what the guest flushes: the self-test redraws its clock once a second and
//! flushes the whole frame for it (virtio-drivers' `flush`), so a hundred UI frames
//! upload a few screens, not a hundred. (That rectangles are cut to the screen is a unit
//! test in `display_view`; no guest here flushes less than a whole frame.) The library
//! shows a running VM's thumbnail and its cost, and the Activity tab its graphs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use vireo_app::host::HostInfo;
use vireo_app::paths::Dirs;
use vireo_app::supervisor::{Programs, VmState};
use vireo_app::ui::display_view::DisplayView;
use vireo_app::ui::VireoApp;
use vireo_e2e::engine::vmm_binary;
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;

mod common;
use common::until;

struct Home {
    dir: TempDir,
    vmm: PathBuf,
    probe: PathBuf,
}

impl Home {
    fn new(name: &str) -> Home {
        let home = Home {
            dir: TempDir::new(name),
            vmm: vmm_binary(),
            probe: probe_guest_elf(),
        };
        // The app in this process finds them beside the `vireo` binary, as built here.
        let exe_dir = Path::new(env!("CARGO_BIN_EXE_vireo"))
            .parent()
            .unwrap()
            .to_owned();
        assert_eq!(home.vmm, exe_dir.join("vireo-vmm"));
        assert_eq!(
            home.probe,
            exe_dir
                .join("../probe-guest/x86_64-unknown-linux-gnu/release/vireo-probe-guest")
                .canonicalize()
                .unwrap()
        );
        home
    }

    fn dirs(&self) -> Dirs {
        Dirs {
            data: self.dir.0.join("data/vireo"),
            runtime: self.dir.0.join("run/vireo"),
        }
    }

    /// The app over this home's library, in a 900x700 window.
    fn app(&self) -> Harness<'static, VireoApp> {
        let dirs = self.dirs();
        let app = env!("CARGO_BIN_EXE_vireo");
        let mut harness = Harness::new_eframe(move |cc| {
            VireoApp::new(
                &cc.egui_ctx,
                dirs,
                Programs::beside(app.into()),
                HostInfo::detect(),
            )
        });
        harness.set_size(eframe::egui::vec2(900.0, 700.0));
        harness
    }

    fn vireo(&self, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
            .args(args)
            .env("XDG_DATA_HOME", self.dir.0.join("data"))
            .env("XDG_RUNTIME_DIR", self.dir.0.join("run"))
            .env("VIREO_VMM", &self.vmm)
            .env("VIREO_PROBE_GUEST", &self.probe)
            .output()
            .expect("vireo runs");
        assert!(out.status.success(), "vireo {args:?}: {out:?}");
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .0
                .join(format!("data/vireo/vms/{id}/logs/console.log")),
        )
        .unwrap_or_default()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_vireo"))
            .args(["stop", "screen"])
            .env("XDG_DATA_HOME", self.dir.0.join("data"))
            .env("XDG_RUNTIME_DIR", self.dir.0.join("run"))
            .output();
    }
}

/// Steps the app until its first row's VM runs.
fn until_running(harness: &mut Harness<'static, VireoApp>, limit: Duration) {
    until(harness, "the running VM", limit, |h| {
        h.state()
            .rows()
            .first()
            .is_some_and(|r| r.state.is_running())
    });
}

#[test]
fn the_library_reattaches_pauses_resumes_and_powers_off() {
    if !report::require_kvm("app::ui_engine::the_library_reattaches_pauses_resumes_and_powers_off")
    {
        return;
    }
    let home = Home::new("app-ui-reattach");
    home.vireo(&["create", "screen", "--memory", "128M", "--start"]);
    let mut harness = home.app();
    until(
        &mut harness,
        "the running VM",
        Duration::from_secs(10),
        |h| {
            h.state()
                .rows()
                .first()
                .is_some_and(|r| matches!(r.state, VmState::Running { status: Ok(_) }))
        },
    );
    harness.step();
    harness.get_by_label("running");
    harness.get_by_label("Open display");
    // Pause, and the row offers Resume; resume, and it offers Pause again.
    harness.get_by_label("Pause").click();
    until(
        &mut harness,
        "the VM to pause",
        Duration::from_secs(20),
        |h| {
            h.state()
                .rows()
                .first()
                .is_some_and(|r| r.state.is_paused())
        },
    );
    harness.step();
    harness.get_by_label("paused");
    harness.get_by_label("Resume").click();
    until(
        &mut harness,
        "the VM to resume",
        Duration::from_secs(20),
        |h| {
            h.state()
                .rows()
                .first()
                .is_some_and(|r| r.state.word() == "running")
        },
    );
    harness.step();
    harness.get_by_label("Pause");
    harness.get_by_label("Power off").click();
    until(
        &mut harness,
        "the VM to stop",
        Duration::from_secs(20),
        |h| {
            h.state()
                .rows()
                .first()
                .is_some_and(|r| r.state == VmState::Stopped)
        },
    );
    harness.step();
    harness.get_by_label("stopped");
    assert_eq!(
        harness.state().status(),
        Some(&Ok("screen: power off: done".to_owned()))
    );
}

#[test]
fn the_vm_window_uploads_only_what_the_guest_flushed() {
    if !report::require_kvm("app::ui_engine::the_vm_window_uploads_only_what_the_guest_flushed") {
        return;
    }
    let home = Home::new("app-ui-display");
    home.vireo(&["create", "screen", "--memory", "128M", "--start"]);
    let end = Instant::now() + Duration::from_secs(60);
    while !home.log("screen").contains("VIREO-PROBE screen_ready") {
        assert!(
            Instant::now() < end,
            "no self-test screen: {}",
            home.log("screen")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let socket = home.dirs().runtime.join("screen/control.sock");
    let view = DisplayView::open("screen".into(), "screen".into(), socket, || {});
    let mut harness = Harness::new_ui_state(
        |ui, view: &mut DisplayView| {
            view.pump(ui.ctx());
            view.ui(ui);
        },
        view,
    );
    harness.set_size(eframe::egui::vec2(1024.0, 768.0));
    until(&mut harness, "the screen", Duration::from_secs(10), |h| {
        h.state().screen_size().is_some()
    });
    assert_eq!(harness.state().screen_size(), Some((1024, 768)));
    let full = 1024 * 768 * 4;
    let first = harness.state().uploaded_bytes;
    assert!(first >= full, "the whole screen was uploaded once: {first}");
    // Three seconds of a ticking clock, the UI drawing frames all the while.
    let end = Instant::now() + Duration::from_secs(3);
    let mut frames = 0;
    while Instant::now() < end {
        harness.step();
        frames += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let since = harness.state().uploaded_bytes - first;
    let screens = since as f64 / full as f64;
    eprintln!("display: {frames} UI frames in 3 s uploaded {screens:.1} screens after the first");
    assert!(frames >= 50, "the UI drew {frames} frames");
    assert!(since > 0, "the clock's flushes were uploaded");
    assert!(
        screens <= 5.0,
        "{screens:.1} screens uploaded in 3 s of a 1 Hz clock"
    );
}

#[test]
fn the_window_size_becomes_the_guests_display_mode() {
    if !report::require_kvm("app::ui_engine::the_window_size_becomes_the_guests_display_mode") {
        return;
    }
    let home = Home::new("app-ui-resize");
    // The probe's gpu-resize switches to the first other size the host offers.
    let probe = home.probe.to_str().unwrap().to_owned();
    home.vireo(&[
        "create",
        "screen",
        "--os",
        "kernel",
        "--kernel",
        &probe,
        "--cmdline",
        "probe.run=gpu-resize",
        "--memory",
        "128M",
        "--display",
        "1024x768",
        "--start",
    ]);
    let end = Instant::now() + Duration::from_secs(60);
    while !home.log("screen").contains("VIREO-PROBE gpu_ready") {
        assert!(Instant::now() < end, "no gpu_ready: {}", home.log("screen"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let socket = home.dirs().runtime.join("screen/control.sock");
    let view = DisplayView::open("screen".into(), "screen".into(), socket, || {});
    let mut harness = Harness::new_ui_state(
        |ui, view: &mut DisplayView| {
            view.pump(ui.ctx());
            view.ui(ui);
        },
        view,
    );
    // A window smaller than the guest's screen: after it settles, the guest gets its size.
    harness.set_size(eframe::egui::vec2(800.0, 600.0));
    until(
        &mut harness,
        "the first mode",
        Duration::from_secs(10),
        |h| h.state().screen_size().is_some(),
    );
    until(&mut harness, "the new mode", Duration::from_secs(30), |h| {
        h.state().screen_size().is_some_and(|s| s != (1024, 768))
    });
    let (w, h) = harness.state().screen_size().unwrap();
    assert!(
        (780..=800).contains(&w) && (580..=600).contains(&h),
        "{w}x{h}"
    );
    let log = home.log("screen");
    assert!(
        log.contains(&format!("VIREO-PROBE gpu_mode width={w} height={h}")),
        "{log}"
    );
}

#[test]
fn a_running_vm_shows_a_thumbnail_and_its_activity() {
    if !report::require_kvm("app::ui_engine::a_running_vm_shows_a_thumbnail_and_its_activity") {
        return;
    }
    let home = Home::new("app-ui-activity");
    home.vireo(&[
        "create",
        "screen",
        "--memory",
        "128M",
        "--disk-gib",
        "1",
        "--start",
    ]);
    let mut harness = home.app();
    until(
        &mut harness,
        "the thumbnail",
        Duration::from_secs(20),
        |h| h.state().thumbnails().contains_key("screen"),
    );
    // 1024x768 scaled to 160 wide.
    assert_eq!(harness.state().thumbnails()["screen"].size(), [160, 120]);
    harness.step();
    harness.get_by_label("screen of screen");
    until(
        &mut harness,
        "three usage samples",
        Duration::from_secs(20),
        |h| {
            h.state()
                .activity()
                .history("screen")
                .is_some_and(|s| s.len() >= 3)
        },
    );
    let activity = harness.state().activity();
    let history = activity.history("screen").unwrap();
    let latest = *history.latest().unwrap();
    // The engine maps the guest's 128 MiB lazily; it holds some of it, never far more.
    assert!(latest.rss_mib > 0 && latest.rss_mib < 512, "{latest:?}");
    assert!(
        latest.cpu_percent >= 0.0 && latest.cpu_percent < 250.0,
        "{latest:?}"
    );
    assert!(latest.io.is_some(), "the engine answers stats: {latest:?}");
    // CPU and memory come from the engine's own stats: its vCPUs' share and what the
    // balloon and KSM hold (nothing yet) are known.
    let guest = latest.guest_cpu_percent.expect("the vCPUs' CPU time");
    assert!(
        guest >= 0.0 && guest <= latest.cpu_percent + 1.0,
        "{latest:?}"
    );
    assert_eq!(latest.memory.map(|m| m.balloon_mib), Some(0), "{latest:?}");
    let cpu = history.series(|u| f64::from(u.cpu_percent));
    assert!(cpu.windows(2).all(|w| w[1][0] > w[0][0]), "{cpu:?}");
    drop(activity);
    // The row's at-a-glance line.
    harness.step();
    let glance = harness.get_by_label_contains("of 128 MiB");
    assert!(
        glance
            .accesskit_node()
            .value()
            .is_some_and(|v| v.starts_with("CPU ") && v.contains(" % · memory ")),
        "{glance:?}"
    );
    harness.key_press_modifiers(eframe::egui::Modifiers::COMMAND, eframe::egui::Key::Num2);
    harness.run_steps(2);
    for title in [
        "CPU %",
        "Memory (MiB)",
        "Disk (KiB/s)",
        "Network (KiB/s)",
        "Operations (/s)",
    ] {
        harness.get_by_label(title);
    }
}

#[test]
fn the_library_saves_restores_and_saves_on_quit() {
    const TEST: &str = "app::ui_engine::the_library_saves_restores_and_saves_on_quit";
    if !report::require_kvm(TEST) {
        return;
    }
    let home = Home::new("app-ui-save");
    home.vireo(&["create", "screen", "--memory", "128M"]);
    home.vireo(&["set", "screen", "--on-close", "save"]);
    home.vireo(&["start", "screen"]);
    let snap = home.dirs().data.join("vms/screen/saved-state.snap");
    let mut harness = home.app();
    let state = |h: &mut Harness<'_, VireoApp>| {
        h.state()
            .rows()
            .first()
            .map(|r| r.state.word())
            .unwrap_or_default()
    };
    let agent_up = |h: &mut Harness<'_, VireoApp>| {
        h.state()
            .agent_status("screen")
            .is_some_and(|s| s.connected)
    };
    let limit = Duration::from_secs(60);
    until(&mut harness, "the running VM", limit, |h| {
        state(h) == "running"
    });
    until(&mut harness, "the guest's agent", limit, agent_up);

    // Save from the library: the row says saved and offers Start and Discard.
    harness.get_by_label("Save").click();
    until(&mut harness, "the VM to be saved", limit, |h| {
        state(h) == "saved"
    });
    harness.step();
    assert!(snap.is_file());
    harness.get_by_label("saved");
    harness.get_by_label("Discard saved state");
    assert_eq!(
        harness.state().status(),
        Some(&Ok("screen: save: done".to_owned()))
    );

    // Start restores it; the snapshot is consumed and the agent link comes back.
    harness.get_by_label("Start").click();
    until(&mut harness, "the restored VM", limit, |h| {
        state(h) == "running"
    });
    assert_eq!(
        harness.state().status(),
        Some(&Ok("screen restored".to_owned()))
    );
    assert!(!snap.exists(), "the restored snapshot is removed");
    until(&mut harness, "the agent after the restore", limit, agent_up);
    assert!(
        !home.log("screen").contains("screen_ready"),
        "the guest ran on, it did not boot again: {}",
        home.log("screen")
    );

    // The VM window's Screenshot: a new PNG of the screen in the VM's folder.
    assert!(harness
        .state()
        .displays()
        .iter()
        .any(|d| d.vm_id == "screen"));
    harness.get_by_label("Screenshot").click();
    until(&mut harness, "the screenshot", limit, |h| {
        h.state().status().is_some_and(|s| match s {
            Ok(text) | Err(text) => text.contains("screenshot"),
        })
    });
    let status = harness.state().status().cloned();
    assert!(
        status
            .as_ref()
            .is_some_and(|s| s.as_ref().is_ok_and(|t| t.contains("screenshot saved to"))),
        "{status:?}"
    );
    let shots: Vec<_> = std::fs::read_dir(home.dir.0.join("data/vireo/vms/screen/screenshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(shots.len(), 1, "{shots:?}");
    let png = std::fs::read(&shots[0]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (1024, 768));

    // Closing its window saves it (its choice); Start restores it again.
    harness.state_mut().close_display("screen");
    until(&mut harness, "the save on close", limit, |h| {
        state(h) == "saved"
    });
    assert!(harness.state().displays().is_empty());
    assert!(snap.is_file());
    harness.get_by_label("Start").click();
    until(&mut harness, "the VM restored again", limit, |h| {
        state(h) == "running" && !snap.exists()
    });

    // A save before quitting that fails (a directory where the file goes) is shown, the
    // VM runs on, and the next quit goes through.
    std::fs::create_dir(&snap).unwrap();
    assert!(!harness.state_mut().quit_requested());
    until(
        &mut harness,
        "the failed save before quitting",
        limit,
        |h| !h.state().saving_before_quit(),
    );
    let shown = harness.state().status().cloned();
    assert!(
        shown.as_ref().is_some_and(|s| s
            .as_ref()
            .is_err_and(|e| e.contains("the VM did not save") && e.contains("quit again"))),
        "{shown:?}"
    );
    assert!(harness.state_mut().quit_requested());
    assert_eq!(state(&mut harness), "running");
    std::fs::remove_dir(&snap).unwrap();
    drop(harness);

    // Quitting the app saves a VM whose choice is "save", and only then may it close.
    let mut harness = home.app();
    until(&mut harness, "the running VM again", limit, |h| {
        state(h) == "running"
    });
    assert!(!harness.state_mut().quit_requested());
    assert!(harness.state().saving_before_quit());
    harness.step();
    harness.get_by_label("Saving 1 VM(s) before quitting…");
    until(&mut harness, "the save before quitting", limit, |h| {
        !h.state().saving_before_quit()
    });
    assert_eq!(
        harness.state().status(),
        Some(&Ok("saved 1 VM(s)".to_owned()))
    );
    assert!(harness.state_mut().quit_requested());
    assert!(snap.is_file());
    until(&mut harness, "the saved row", limit, |h| {
        state(h) == "saved"
    });
}

/// A guest that ignores the power button (and has no agent): Shut down waits, then the
/// app asks; "Keep waiting" asks again after the wait, "Power off" ends it.
#[test]
fn a_guest_that_does_not_shut_down_gets_the_user_asked() {
    if !report::require_kvm("app::ui_engine::a_guest_that_does_not_shut_down_gets_the_user_asked") {
        return;
    }
    // The backend reads it when the shutdown is asked, in this process.
    std::env::set_var("VIREO_SHUTDOWN_WAIT_SECS", "2");
    let home = Home::new("app-ui-shutdown-wait");
    let probe = home.probe.display().to_string();
    home.vireo(&[
        "create",
        "deaf",
        "--os",
        "kernel",
        "--kernel",
        &probe,
        "--cmdline",
        "probe.run=idle",
        "--memory",
        "128M",
        "--start",
    ]);
    let mut harness = home.app();
    fn running(h: &mut Harness<'_, VireoApp>) -> bool {
        h.state()
            .rows()
            .first()
            .is_some_and(|r| matches!(r.state, VmState::Running { status: Ok(_) }))
    }
    until(
        &mut harness,
        "the running VM",
        Duration::from_secs(20),
        running,
    );
    harness.step();
    harness.get_by_label("Shut down").click();
    fn asked(h: &mut Harness<'_, VireoApp>) -> bool {
        h.query_by_label("Keep waiting").is_some()
    }
    until(&mut harness, "the question", Duration::from_secs(20), asked);
    assert!(running(&mut harness), "the deaf guest stopped by itself");
    harness.get_by_label("Keep waiting").click();
    // The click lands in the next frame; the one after shows no question.
    harness.step();
    harness.step();
    assert!(harness.query_by_label("Keep waiting").is_none());
    until(
        &mut harness,
        "the question again",
        Duration::from_secs(20),
        asked,
    );
    harness.get_by_label("Power it off").click();
    until(
        &mut harness,
        "the VM to stop",
        Duration::from_secs(20),
        |h| {
            h.state()
                .rows()
                .first()
                .is_some_and(|r| r.state == VmState::Stopped)
        },
    );
    harness.step();
    harness.step();
    assert!(harness.query_by_label("Keep waiting").is_none());
}

#[test]
fn a_vm_on_a_replaced_engine_offers_the_move_and_moves() {
    const TEST: &str = "app::ui_engine::a_vm_on_a_replaced_engine_offers_the_move_and_moves";
    if !report::require_kvm(TEST) {
        return;
    }
    let mut home = Home::new("app-ui-upgrade");
    let installed = home.dir.0.join("bin/vireo-vmm");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(vmm_binary(), &installed).unwrap();
    home.vmm = installed.clone();
    home.vireo(&["create", "screen", "--memory", "128M", "--start"]);
    let pid_file = home.dir.0.join("run/vireo/screen/engine.pid");
    let old_pid = std::fs::read_to_string(&pid_file).unwrap();
    // A Vireo upgrade replaces the engine's file under the running VM.
    let staged = home.dir.0.join("bin/vireo-vmm.new");
    std::fs::copy(vmm_binary(), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();

    let mut harness = home.app();
    until(
        &mut harness,
        "the running VM marked as on the old engine",
        Duration::from_secs(10),
        |h| h.state().rows().first().is_some_and(|r| r.engine_outdated),
    );
    harness.step();
    harness.get_by_label("Vireo was updated: this VM still runs on the old engine.");
    harness.get_by_label("Move to the new engine").click();
    until(
        &mut harness,
        "the VM on the new engine",
        Duration::from_secs(60),
        |h| {
            h.state()
                .rows()
                .first()
                .is_some_and(|r| r.state.is_running() && !r.engine_outdated)
        },
    );
    harness.step();
    assert!(harness.query_by_label("Move to the new engine").is_none());
    assert_eq!(
        harness.state().status(),
        Some(&Ok("screen: moved to the new engine".to_owned()))
    );
    let new_pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", new_pid.trim())).unwrap(),
        installed
    );
}

#[test]
fn the_shared_folders_dialog_adds_and_removes_a_share() {
    const TEST: &str = "app::ui_engine::the_shared_folders_dialog_adds_and_removes_a_share";
    if !report::require_kvm(TEST) {
        return;
    }
    let home = Home::new("app-ui-shares");
    home.vireo(&["create", "screen", "--memory", "128M", "--start"]);
    let docs = home.dir.0.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let config_path = home.dir.0.join("data/vireo/vms/screen/vm.toml");
    let mut harness = home.app();
    let limit = Duration::from_secs(30);
    until_running(&mut harness, limit);
    harness.step();
    harness.get_by_label("Open display").click();
    until(&mut harness, "the VM window", limit, |h| {
        !h.state().displays().is_empty()
    });
    harness.step();
    harness.get_by_label("Shared folders").click();
    // A window sizes itself in its first frame and shows in the next.
    harness.step();
    harness.step();
    harness.get_by_label("No other folders are shared.");

    // What the folder picker hands back: the share is saved and offered to the guest,
    // whose agent (the probe's, once connected) has no shared folders: the status says so.
    until(&mut harness, "the guest's agent", limit, |h| {
        h.state().displays().iter().any(|d| d.agent.connected)
    });
    harness
        .state_mut()
        .display_mut("screen")
        .unwrap()
        .share_folder(docs.clone(), true);
    until(&mut harness, "the share's outcome", limit, |h| {
        h.state().status().is_some_and(|s| {
            s.as_ref()
                .err()
                .is_some_and(|e| e.contains("does not serve shared folders"))
        })
    });
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        config.contains("name = \"docs\"") && config.contains("read_only = true"),
        "{config}"
    );
    harness.step();
    harness.get_by_label("/mnt/vireo/docs");
    harness.get_by_label("read-only");

    // The same folder name again is refused, and nothing changes.
    harness
        .state_mut()
        .display_mut("screen")
        .unwrap()
        .share_folder(docs.clone(), false);
    until(&mut harness, "the refusal", limit, |h| {
        h.state().status().is_some_and(|s| {
            s.as_ref()
                .err()
                .is_some_and(|e| e.contains("exists already"))
        })
    });
    harness.get_by_label("Remove docs").click();
    until(&mut harness, "the removal", limit, |h| {
        h.state()
            .status()
            .is_some_and(|s| s.as_ref().is_ok_and(|t| t.contains("share docs removed")))
    });
    assert!(!std::fs::read_to_string(&config_path)
        .unwrap()
        .contains("docs"));
    harness.step();
    harness.get_by_label("No other folders are shared.");
}

/// The CPU settings the engine has in force, and the cgroup file that holds the limit.
fn cpu_in_force(home: &Home) -> (vireo_vmm::resources::cpu::CpuConfig, Option<String>) {
    let socket = home.dir.0.join("run/vireo/screen/control.sock");
    let mut control = vireo_e2e::engine::connect_control(
        &socket,
        Duration::from_secs(10),
        Duration::from_secs(10),
    );
    let request = vireo_vmm::control::protocol::Request::SetCpu {
        weight: None,
        limit: None,
        pin: None,
    };
    match control.ask(&request).unwrap() {
        vireo_vmm::control::protocol::Response::Cpu { config, cgroup } => (config, cgroup),
        other => panic!("{other:?}"),
    }
}

/// The CFS quota of the cgroup `set-cpu` named ("V1 /sys/fs/cgroup/cpu/vireo-vmm-42"
/// or "V2 ..."), in microseconds per 100 ms period; `None`: no limit.
fn cfs_quota_us(cgroup: &str) -> Option<u64> {
    let (version, dir) = cgroup.split_once(' ').unwrap();
    let dir = Path::new(dir);
    let text = if version == "V1" {
        std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap()
    } else {
        std::fs::read_to_string(dir.join("cpu.max")).unwrap()
    };
    text.split_whitespace().next().unwrap().parse().ok()
}

#[test]
fn resources_changed_in_the_library_reach_the_running_engine() {
    const TEST: &str = "app::ui_engine::resources_changed_in_the_library_reach_the_running_engine";
    if !report::require_kvm(TEST) {
        return;
    }
    let home = Home::new("app-ui-resources");
    home.vireo(&[
        "create",
        "screen",
        "--memory",
        "128M",
        "--cpu-limit",
        "50",
        "--start",
    ]);
    let (config, cgroup) = cpu_in_force(&home);
    assert_eq!(config.limit, Some(50));
    let cgroup = cgroup.expect("a limited VM has a cgroup");
    assert_eq!(cfs_quota_us(&cgroup), Some(50_000));

    let mut harness = home.app();
    let limit = Duration::from_secs(30);
    until_running(&mut harness, limit);
    harness.step();
    harness.get_by_label("Resources").click();
    until(&mut harness, "the Resources dialog", limit, |h| {
        h.query_by_label_contains("takes effect at once").is_some()
    });
    for (label, text) in [("CPU limit (%)", "30"), ("CPU weight", "300")] {
        harness.get_by_label(label).focus();
        harness.step();
        harness.key_press_modifiers(eframe::egui::Modifiers::COMMAND, eframe::egui::Key::A);
        harness.step();
        harness.get_by_label(label).type_text(text);
        harness.step();
    }
    harness
        .get_by_label("Give idle memory back to the host")
        .click();
    harness.step();
    harness.get_by_label("Apply").click();
    until(&mut harness, "the change applied", limit, |h| {
        h.state().status().is_some_and(|s| {
            s.as_ref()
                .is_ok_and(|t| t.contains("applied to the running VM"))
        })
    });
    let (config, cgroup) = cpu_in_force(&home);
    assert_eq!((config.weight, config.limit), (Some(300), Some(30)));
    let socket = home.dir.0.join("run/vireo/screen/control.sock");
    let balloon = vireo_e2e::engine::connect_control(
        &socket,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .ask(&vireo_vmm::control::protocol::Request::BalloonGet {})
    .unwrap();
    assert!(
        matches!(
            balloon,
            vireo_vmm::control::protocol::Response::Balloon {
                policy: vireo_vmm::devices::virtio::balloon::policy::BalloonPolicy::GiveBackIdle,
                ..
            }
        ),
        "{balloon:?}"
    );
    assert_eq!(cfs_quota_us(&cgroup.unwrap()), Some(30_000));
    let saved = std::fs::read_to_string(home.dir.0.join("data/vireo/vms/screen/vm.toml")).unwrap();
    assert!(
        saved.contains("[resources]")
            && saved.contains("cpu_weight = 300")
            && saved.contains("cpu_limit_percent = 30")
            && saved.contains("give_back_idle_memory = true"),
        "{saved}"
    );
    home.vireo(&["stop", "screen"]);
}
