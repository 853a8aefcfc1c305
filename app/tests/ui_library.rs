//! The library window under egui_kittest with a real library on disk and the real
//! backend thread: the empty library's one "New VM" button, the wizard making a VM that
//! then shows in the list (and on disk), broken configs and failed runs shown with their
//! reasons, and delete asking first (deleting the disk only when ticked); settings
//! checked beside each field and written; clone asking for a free name and copying the
//! disk; keyboard shortcuts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use vireo_app::host::{HostInfo, KvmKind};
use vireo_app::paths::Dirs;
use vireo_app::supervisor::Programs;
use vireo_app::ui::{Tab, VireoApp};
use vireo_app::vm_config::VmConfig;
use vireo_e2e::temp::TempDir;

mod common;
use common::retype;

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

/// A stopped VM named `name` with a 1 GiB disk, made on disk before the app starts.
fn vm_with_disk(base: &TempDir, id: &str, name: &str) -> PathBuf {
    let dir = vms(base).join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vm.toml"),
        format!("name = \"{name}\"\ncpus = 1\nmemory_mib = 256\n[os]\nkind = \"self-test\"\n[disk]\nsize_gib = 1\n[display]\nwidth = 640\nheight = 480\n"),
    )
    .unwrap();
    let disk = std::fs::File::create(dir.join("disk.img")).unwrap();
    disk.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    disk.write_all_at(b"the guest's data", 5 << 20).unwrap();
    dir
}

fn load(dir: &std::path::Path) -> VmConfig {
    VmConfig::load(&dir.join("vm.toml")).unwrap()
}

#[test]
fn settings_are_checked_beside_each_field_and_saved() {
    let base = TempDir::new("app-ui-settings");
    let dir = vm_with_disk(&base, "work", "Work");
    let mut harness = app(&base);
    harness.get_by_label("Settings").click();
    harness.run();
    harness.get_by_label("Settings of Work");
    let save_enabled =
        |h: &Harness<'static, VireoApp>| !h.get_by_label("Save").accesskit_node().is_disabled();
    assert!(save_enabled(&harness));

    retype(&mut harness, "Memory (MiB)", "99999");
    harness.get_by_label("99999 MiB is more memory than this host has (4096 MiB)");
    assert!(!save_enabled(&harness));
    retype(&mut harness, "Memory (MiB)", "lots");
    harness.get_by_label("memory must be a whole number");
    retype(&mut harness, "Memory (MiB)", "512");

    retype(&mut harness, "Disk size (GiB)", "0");
    harness.get_by_label("the disk can only grow: it is 1 GiB now");
    assert!(!save_enabled(&harness));
    retype(&mut harness, "Disk size (GiB)", "2");

    retype(&mut harness, "Display width", "100");
    harness.get_by_label("each side of the display must be 320 to 8192 pixels");
    retype(&mut harness, "Display width", "800");
    harness.get_by_label("Network").click();
    harness.run();
    assert!(save_enabled(&harness));
    // Nothing is written before Save.
    assert_eq!(load(&dir).memory_mib, 256);
    harness.get_by_label("Save").click();
    settle(&mut harness, "the settings to be saved", |app| {
        app.status() == Some(&Ok("Work: settings saved".to_owned()))
    });
    let saved = load(&dir);
    assert_eq!(
        (
            saved.memory_mib,
            saved.disk.unwrap().size_gib,
            saved.network
        ),
        (512, 2, true)
    );
    assert_eq!((saved.display.width, saved.display.height), (800, 480));
    assert_eq!(
        std::fs::metadata(dir.join("disk.img")).unwrap().len(),
        2 << 30
    );
    assert!(harness.query_by_label("Settings of Work").is_none());
}

#[test]
fn clone_asks_for_a_free_name_and_copies_the_disk() {
    let base = TempDir::new("app-ui-clone");
    let source = vm_with_disk(&base, "work", "Work");
    let mut harness = app(&base);
    harness.get_by_label("Clone").click();
    harness.run();
    harness.get_by_label("A copy of \"Work\", its disk included.");
    retype(&mut harness, "Name of the copy", "work");
    harness.get_by_label("a VM named \"work\" already exists: pick another name");
    assert!(harness
        .get_by_label("Make the copy")
        .accesskit_node()
        .is_disabled());
    retype(&mut harness, "Name of the copy", "Work 2");
    harness.get_by_label("Make the copy").click();
    settle(&mut harness, "the copy in the list", |app| {
        app.rows().len() == 2
    });
    let copy = vms(&base).join("work-2");
    let (a, b) = (load(&source), load(&copy));
    assert_eq!(b.name, "Work 2");
    assert_ne!(a.mac, b.mac);
    assert!(b.mac.is_some());
    let copied = std::fs::read(copy.join("disk.img")).unwrap();
    assert_eq!(copied.len(), 1 << 30);
    assert_eq!(&copied[5 << 20..(5 << 20) + 16], b"the guest's data");
    harness.get_by_label("Work 2");
}

#[test]
fn deleting_the_disk_is_an_explicit_choice() {
    let base = TempDir::new("app-ui-delete-disk");
    vm_with_disk(&base, "a", "Keeper");
    vm_with_disk(&base, "b", "Goner");
    let mut harness = app(&base);
    // Rows are sorted by name: Goner, then Keeper.
    harness.get_all_by_label("Delete").next().unwrap().click();
    harness.run();
    harness.get_by_label("Delete \"Goner\"?");
    harness.get_by_label("Its disk, if it has one, is kept in kept-disks/.");
    harness.get_by_label("Also delete its disk").click();
    harness.run();
    assert!(harness
        .query_by_label("Its disk, if it has one, is kept in kept-disks/.")
        .is_none());
    harness.get_by_label("Delete for good").click();
    settle(&mut harness, "Goner to go", |app| app.rows().len() == 1);
    assert!(!vms(&base).join("b").exists());
    assert!(!base.0.join("data/kept-disks").exists());

    harness.get_by_label("Delete").click();
    harness.run();
    harness.get_by_label("Delete \"Keeper\"?");
    // Unticked, as it always starts: the disk is kept.
    harness.get_by_label("Delete for good").click();
    settle(&mut harness, "Keeper to go", |app| app.rows().is_empty());
    let kept = base.0.join("data/kept-disks/a.img");
    let bytes = std::fs::read(&kept).unwrap();
    assert_eq!(&bytes[5 << 20..(5 << 20) + 16], b"the guest's data");
}

#[test]
fn keyboard_shortcuts_switch_views_and_open_the_wizard() {
    let base = TempDir::new("app-ui-keys");
    vm_with_disk(&base, "work", "Work");
    let mut harness = app(&base);
    let command = eframe::egui::Modifiers::COMMAND;
    harness.key_press_modifiers(command, eframe::egui::Key::Num2);
    harness.run();
    assert_eq!(harness.state().tab(), Tab::Activity);
    harness.get_by_label("No VM is running: start one to see its activity here.");
    harness.key_press_modifiers(command, eframe::egui::Key::Num1);
    harness.run();
    assert_eq!(harness.state().tab(), Tab::Library);
    harness.key_press_modifiers(command, eframe::egui::Key::N);
    harness.run();
    harness.get_by_label("Operating system");
}

#[test]
fn a_saved_vm_shows_saved_keeps_its_hardware_and_discard_asks_first() {
    let base = TempDir::new("app-ui-saved");
    let dir = vm_with_disk(&base, "work", "Work");
    let snap = dir.join("saved-state.snap");
    std::fs::write(&snap, b"the engine's snapshot").unwrap();
    // The last start tried to restore it and the engine refused, as the monitor and the
    // engine record it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        dir.join("last-exit.json"),
        format!(r#"{{"code":1,"signal":null,"ended_unix":{}}}"#, now + 1),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(
        dir.join("logs/console.log"),
        "vireo-vmm: the disk disk.img changed since the VM was saved\n\
         vireo monitor: engine ended: the engine could not start the VM\n",
    )
    .unwrap();
    let mut harness = app(&base);
    harness.get_by_label("saved");
    harness.get_by_label("Saved just now.");
    harness.get_by_label(
        "Its saved state cannot be restored: the disk disk.img changed since the VM was saved",
    );
    harness.get_by_label("Start");

    // Its hardware cannot change while saved; what its window does can.
    harness.get_by_label("Settings").click();
    harness.run();
    harness.get_by_label("When its window closes");
    let save_enabled =
        |h: &Harness<'static, VireoApp>| !h.get_by_label("Save").accesskit_node().is_disabled();
    assert!(save_enabled(&harness));
    retype(&mut harness, "Memory (MiB)", "512");
    harness.get_by_label_contains("the VM is saved: its CPUs, memory, disk, network and display");
    assert!(!save_enabled(&harness));
    harness.get_by_label("Cancel").click();
    harness.run();
    assert_eq!(load(&dir).memory_mib, 256);

    harness.get_by_label("Discard saved state").click();
    harness.run();
    harness.get_by_label("Discard the saved state of \"Work\"?");
    harness.get_by_label("Keep it").click();
    harness.run();
    assert!(snap.exists(), "kept when the user says so");
    harness.get_by_label("Discard saved state").click();
    harness.run();
    harness.get_by_label("Discard").click();
    settle(&mut harness, "the saved state to go", |app| {
        app.rows()[0].state == vireo_app::supervisor::VmState::Stopped
    });
    assert!(!snap.exists());
    harness.get_by_label("stopped");
    assert!(harness.query_by_label("Discard saved state").is_none());
    assert_eq!(
        harness.state().status(),
        Some(&Ok(
            "Work: saved state discarded: the next start boots afresh".to_owned()
        ))
    );
}
