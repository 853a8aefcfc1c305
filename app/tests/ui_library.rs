//! The library window under egui_kittest with a real library on disk and the real
//! backend thread: the empty library's one "New VM" button, the wizard making a VM that
//! then shows in the list (and on disk), broken configs and failed runs shown with their
//! reasons, and delete asking first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use vireo_app::host::{HostInfo, KvmKind};
use vireo_app::paths::Dirs;
use vireo_app::supervisor::Programs;
use vireo_app::ui::VireoApp;
use vireo_e2e::temp::TempDir;

fn host() -> HostInfo {
    HostInfo {
        cpus: 2,
        memory_mib: 4096,
        kvm: KvmKind::Pvm,
    }
}

fn app(base: &TempDir) -> Harness<'static, VireoApp> {
    let dirs = Dirs {
        data: base.0.join("data"),
        runtime: base.0.join("run"),
    };
    let mut harness = Harness::new_eframe(move |cc| {
        VireoApp::new(
            &cc.egui_ctx,
            dirs,
            Programs::beside("/nonexistent/vireo".into()),
            host(),
        )
    });
    harness.set_size(eframe::egui::vec2(800.0, 900.0));
    settle(&mut harness, "the library to load", |app| app.loaded());
    harness
}

/// Steps the UI until `done` holds (the backend answers on its own thread).
fn settle(harness: &mut Harness<'static, VireoApp>, what: &str, done: impl Fn(&VireoApp) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        harness.step();
        if done(harness.state()) {
            harness.step();
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn vms(base: &TempDir) -> PathBuf {
    base.0.join("data/vms")
}

fn retype(harness: &mut Harness<'static, VireoApp>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run();
    harness.key_press_modifiers(eframe::egui::Modifiers::COMMAND, eframe::egui::Key::A);
    harness.run();
    harness.get_by_label(label).type_text(text);
    harness.run();
}

#[test]
fn new_vm_from_an_empty_library() {
    let base = TempDir::new("app-ui-new");
    let mut harness = app(&base);
    harness.get_by_label("No VMs yet");
    harness.get_by_label("New VM").click();
    harness.run();
    harness.get_by_label("Operating system");
    harness.get_by_label("Start it now").click();
    harness.run();
    retype(&mut harness, "Name", "Desk");
    assert_eq!(
        harness
            .get_by_label("Start it now")
            .accesskit_node()
            .toggled(),
        Some(eframe::egui::accesskit::Toggled::False)
    );
    harness.get_by_label("Create").click();
    settle(&mut harness, "the new VM in the list", |app| {
        app.rows().len() == 1
    });
    harness.get_by_label("Virtual machines");
    harness.get_by_label("Desk");
    harness.get_by_label("Vireo self-test");
    harness.get_by_label("stopped");
    harness.get_by_label("Start");
    assert!(vms(&base).join("desk/vm.toml").is_file());
    assert_eq!(
        harness.state().status(),
        Some(&Ok("Desk created".to_owned()))
    );

    // The name is now taken in the wizard.
    harness.get_by_label("New VM").click();
    harness.run();
    retype(&mut harness, "Name", "desk");
    harness.get_by_label("a VM named \"desk\" already exists: pick another name");
    harness.get_by_label("Cancel").click();
    harness.run();
    harness.get_by_label("Virtual machines");
}

#[test]
fn broken_and_failed_vms_show_their_reasons() {
    let base = TempDir::new("app-ui-broken");
    let broken = vms(&base).join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("vm.toml"), "name = 3\n").unwrap();
    let failed = vms(&base).join("crashy");
    std::fs::create_dir_all(failed.join("logs")).unwrap();
    std::fs::write(
        failed.join("vm.toml"),
        "name = \"Crashy\"\ncpus = 1\nmemory_mib = 64\n[os]\nkind = \"self-test\"\n[display]\nwidth = 640\nheight = 480\n",
    )
    .unwrap();
    // What the monitor writes when the engine was killed, and the engine's log.
    std::fs::write(
        failed.join("last-exit.json"),
        r#"{"code":null,"signal":9,"ended_unix":1}"#,
    )
    .unwrap();
    std::fs::write(
        failed.join("logs/console.log"),
        "VIREO-PROBE boot\nvireo monitor: engine ended: killed\n",
    )
    .unwrap();

    let mut harness = app(&base);
    harness.get_by_label_contains("broken: ");
    harness.get_by_label_contains("is not a valid VM config");
    harness.get_by_label("failed: the engine was killed by signal 9 (SIGKILL)");
    harness
        .get_by_label("Why it stopped: the engine was killed by signal 9 (SIGKILL)")
        .click();
    harness.run();
    harness.get_by_label("VIREO-PROBE boot");
    // The broken VM has no actions: one Start button, the failed VM's.
    assert_eq!(harness.get_all_by_label("Start").count(), 1);
    assert_eq!(
        std::fs::read_to_string(broken.join("vm.toml")).unwrap(),
        "name = 3\n"
    );
}

#[test]
fn delete_asks_first() {
    let base = TempDir::new("app-ui-delete");
    let dir = vms(&base).join("old");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vm.toml"),
        "name = \"Old\"\ncpus = 1\nmemory_mib = 64\n[os]\nkind = \"self-test\"\n[display]\nwidth = 640\nheight = 480\n",
    )
    .unwrap();
    let mut harness = app(&base);
    harness.get_by_label("Delete").click();
    harness.run();
    harness.get_by_label("Delete \"Old\"?");
    harness.get_by_label("Keep it").click();
    harness.run();
    assert!(harness.query_by_label("Delete \"Old\"?").is_none());
    assert!(dir.exists());
    harness.get_by_label("Delete").click();
    harness.run();
    harness.get_by_label("Delete for good").click();
    settle(&mut harness, "the VM to go", |app| app.rows().is_empty());
    assert!(!dir.exists());
    harness.get_by_label("No VMs yet");
}
