//! The app (in this process, driven with egui_kittest) with a real engine running the
//! probe guest's self-test screen, on a private X server for the host clipboard: the
//! guest link comes up for the running VM and the VM window's toolbar shows the probe
//! agent's features; files and a folder dropped through the app's drop hook land in the
//! VM's shared folder, nested folders kept and names in use left alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use vireo_app::guest_link::Feature;
use vireo_app::host::HostInfo;
use vireo_app::paths::Dirs;
use vireo_app::supervisor::Programs;
use vireo_app::ui::display_view::{DisplayView, ViewRequest};
use vireo_app::ui::VireoApp;
use vireo_app::vm_config::ClipboardDirection;
use vireo_e2e::engine::vmm_binary;
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_e2e::xvfb::Xvfb;

mod common;
use common::until;

const TEST: &str = "app::ui_link::the_toolbar_shows_the_agent_and_drops_land_in_the_shared_folder";

struct Home {
    dir: TempDir,
    vmm: PathBuf,
    probe: PathBuf,
}

impl Home {
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

    fn vm_dir(&self) -> PathBuf {
        self.dir.0.join("data/vireo/vms/drop")
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_vireo"))
            .args(["stop", "drop"])
            .env("XDG_DATA_HOME", self.dir.0.join("data"))
            .env("XDG_RUNTIME_DIR", self.dir.0.join("run"))
            .output();
    }
}

/// A file as a desktop drop hands it to egui.
#[derive(Debug)]
struct DroppedPath(PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_toolbar_shows_the_agent_and_drops_land_in_the_shared_folder() {
    if !report::require_kvm(TEST) {
        return;
    }
    // The links open the host clipboard of DISPLAY: this test's own X server. This is
    // the only test in this binary, so nothing else reads the environment meanwhile.
    let x = Xvfb::start(640, 480);
    std::env::set_var("DISPLAY", &x.display);
    std::env::remove_var("WAYLAND_DISPLAY");
    let home = Home {
        dir: TempDir::new("app-ui-link"),
        vmm: vmm_binary(),
        probe: probe_guest_elf(),
    };
    home.vireo(&["create", "drop", "--memory", "128M", "--start"]);
    let dirs = Dirs {
        data: home.dir.0.join("data/vireo"),
        runtime: home.dir.0.join("run/vireo"),
    };
    let app = env!("CARGO_BIN_EXE_vireo");
    let mut harness = Harness::new_eframe(move |cc| {
        VireoApp::new(
            &cc.egui_ctx,
            dirs,
            Programs::beside(app.into()),
            HostInfo::detect(),
        )
    });
    harness.set_size(egui::vec2(900.0, 700.0));

    // The link comes up with the running VM: the probe agent offers clipboard and time.
    until(&mut harness, "the agent", Duration::from_secs(60), |h| {
        h.state()
            .agent_status("drop")
            .is_some_and(|s| s.connected && s.clipboard == Feature::Working)
    });
    let status = harness.state().agent_status("drop").unwrap().clone();
    assert_eq!(status.time, Feature::Working);
    assert_eq!(
        status.folders,
        Feature::NotInstalled,
        "the probe has no FUSE"
    );
    assert_eq!(status.mouse, Feature::NotInstalled);
    assert!(!status.absolute_pointer);
    // The drop folder is made when the link starts (the agent mounts it at once).
    assert!(home.vm_dir().join("shared").is_dir());

    // The VM window (toolbar and screen) says the same, feature by feature.
    let socket = home.dir.0.join("run/vireo/drop/control.sock");
    let mut view = DisplayView::open("drop".into(), "drop".into(), socket, || {});
    view.agent = status;
    let mut window = Harness::new_ui_state(
        |ui, view: &mut DisplayView| {
            view.pump(ui.ctx());
            egui::Panel::bottom("toolbar")
                .exact_size(36.0)
                .show(ui, |ui| view.toolbar(ui));
            egui::CentralPanel::default()
                .frame(egui::Frame::NONE)
                .show(ui, |ui| view.ui(ui));
        },
        view,
    );
    window.set_size(egui::vec2(1400.0, 804.0));
    until(&mut window, "the screen", Duration::from_secs(20), |h| {
        h.state().screen_size().is_some()
    });
    window.get_by_label("Clipboard ok");
    window.get_by_label("Time ok");
    window.get_by_label("Folders n/a");
    window.get_by_label("Mouse n/a");
    // The clipboard's menu sets its direction: a request the app passes on.
    window.get_by_label("Clipboard ok").click();
    window.run();
    window.get_by_label("guest to host only").click();
    window.run();
    assert_eq!(
        window.state_mut().take_requests(),
        vec![ViewRequest::Clipboard(ClipboardDirection::GuestToHost)]
    );

    // The probe's agent does not report the tablet in use: a click on the screen
    // captures the pointer, with the hint; Right Ctrl releases it (and is not the
    // guest's).
    let click = |h: &mut Harness<'_, DisplayView>| {
        let pos = egui::pos2(300.0, 200.0);
        h.hover_at(pos);
        for pressed in [true, false] {
            h.event(egui::Event::PointerButton {
                pos,
                button: egui::PointerButton::Primary,
                pressed,
                modifiers: egui::Modifiers::NONE,
            });
            h.step();
        }
        h.run();
    };
    assert!(!window.state().captured());
    click(&mut window);
    assert!(window.state().captured(), "a click captures the pointer");
    window.get_by_label("Press Right Ctrl to release the pointer");
    window.key_press(egui::Key::ControlRight);
    window.run();
    assert!(!window.state().captured(), "Right Ctrl releases it");
    assert!(window
        .query_by_label("Press Right Ctrl to release the pointer")
        .is_none());
    // An agent that says the guest drives the tablet: no capture (seamless mouse).
    window.state_mut().agent.absolute_pointer = true;
    window.state_mut().agent.mouse = Feature::Working;
    click(&mut window);
    assert!(!window.state().captured(), "seamless: no capture");
    window.get_by_label("Mouse ok");

    // A file dropped on the window (egui's dropped files) becomes the window's request.
    let dropped = home.dir.0.join("dropped on the window.txt");
    write(&dropped, b"from the file manager");
    window
        .input_mut()
        .dropped_files
        .push(Arc::new(DroppedPath(dropped.clone())));
    window.step();
    assert_eq!(
        window.state_mut().take_requests(),
        vec![ViewRequest::Drop(vec![dropped.clone()])]
    );
    drop(window);

    // Drops: a file whose name is taken and a folder with a nested tree and a large file.
    let src = home.dir.0.join("to-drop");
    write(&src.join("notes.txt"), b"dropped notes");
    write(&src.join("album/2026/cover.txt"), b"cover");
    let big: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    write(&src.join("album/big.bin"), &big);
    let shared = home.vm_dir().join("shared");
    write(&shared.join("notes.txt"), b"already there");
    harness.state_mut().drop_files(
        "drop",
        vec![src.join("notes.txt"), src.join("album"), dropped],
    );
    until(&mut harness, "the copy", Duration::from_secs(60), |h| {
        h.state()
            .drop_state("drop")
            .is_some_and(|d| d.finished.is_some())
    });
    let finished = harness.state().drop_state("drop").unwrap().clone();
    let done = finished.finished.unwrap().expect("the copy worked");
    assert!(done.contains("shared/notes (1).txt"), "{done}");
    assert_eq!(
        std::fs::read(shared.join("notes.txt")).unwrap(),
        b"already there"
    );
    assert_eq!(
        std::fs::read(shared.join("notes (1).txt")).unwrap(),
        b"dropped notes"
    );
    assert_eq!(
        std::fs::read(shared.join("album/2026/cover.txt")).unwrap(),
        b"cover"
    );
    assert!(std::fs::read(shared.join("album/big.bin")).unwrap() == big);
    assert_eq!(
        std::fs::read(shared.join("dropped on the window.txt")).unwrap(),
        b"from the file manager"
    );
    assert_eq!(finished.progress.files_done, 4);
    assert_eq!(finished.progress.bytes_done, big.len() as u64 + 13 + 5 + 21);
    drop(x);
}
