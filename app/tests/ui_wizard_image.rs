//! The New VM wizard builds the demo Linux image the VM needs with the real
//! `vireo-image` (its packages cached under target/, as the e2e tests' demo image), shows
//! its progress, and creates the VM when it is done; cancelling leaves nothing behind.
//! The host is declared to have hardware KVM, where the wizard offers the demo Linux
//! (on PVM it is disabled, which `wizard`'s own tests check); nothing here boots it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use vireo_app::host::{HostInfo, KvmKind};
use vireo_app::images::is_demo_image;
use vireo_app::supervisor::Programs;
use vireo_app::ui::wizard::{DemoImagePlan, OsChoice, Wizard, WizardOutcome};
use vireo_app::vm_config::OsSource;
use vireo_e2e::temp::TempDir;

mod common;
use common::until;

type State = (Wizard, Option<WizardOutcome>);

fn wizard(build_to: &Path) -> Harness<'static, State> {
    let host = HostInfo {
        cpus: 2,
        memory_mib: 4096,
        kvm: KvmKind::Hardware,
    };
    let plan = DemoImagePlan {
        present: false,
        builder: vireo_e2e::release_binary("vireo-installers", "vireo-image"),
        build_to: Some(build_to.to_owned()),
    };
    let state = (Wizard::new(host).with_demo_image(plan), None);
    let mut harness = Harness::new_ui_state(
        |ui, (wizard, outcome): &mut State| {
            if let Some(o) = wizard.ui(ui, &[]) {
                *outcome = Some(o);
            }
        },
        state,
    );
    harness.set_size(eframe::egui::vec2(600.0, 900.0));
    harness.run();
    harness.get_by_label("Name").focus();
    harness.run();
    harness.get_by_label("Name").type_text("Demo");
    harness.run();
    harness.get_by_label("Vireo demo Linux").click();
    harness.run();
    assert_eq!(harness.state().0.os, OsChoice::DemoLinux);
    harness.get_by_label_contains("Create first builds the demo Linux image");
    harness
}

fn side_dirs(images: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(images)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn create_builds_the_demo_image_with_progress_then_creates_the_vm() {
    let home = TempDir::new("wizard-image");
    let images = home.0.join("data/vireo/images");
    let build_to = images.join("demo-linux");
    let mut harness = wizard(&build_to);
    harness.get_by_label("Create").click();
    harness.run();
    harness.get_by_label("Building the Vireo demo Linux image");
    harness.get_by_label("Cancel build");
    // First builds download Debian's kernel package: minutes, not seconds.
    until(
        &mut harness,
        "the image build",
        Duration::from_secs(900),
        |h| h.state().1.is_some() || h.query_by_label_contains("failed").is_some(),
    );
    let Some(WizardOutcome::Create { config, start, .. }) = &harness.state().1 else {
        panic!("the build did not end in Create: {:?}", harness.state().1);
    };
    assert_eq!(config.os, OsSource::DemoLinux);
    assert_eq!(config.name, "Demo");
    assert!(start);
    assert!(is_demo_image(&build_to), "no image in {build_to:?}");
    assert_eq!(side_dirs(&images), std::slice::from_ref(&build_to));
    // The app's launcher finds it there (its own `Programs`, as `VireoApp` makes them).
    let programs = Programs::beside(env!("CARGO_BIN_EXE_vireo").into()).with_user_images(images);
    assert_eq!(programs.demo_image_home(), Some(build_to));
}

#[test]
fn cancelling_the_build_returns_to_the_form_and_leaves_nothing() {
    let home = TempDir::new("wizard-image-cancel");
    let images = home.0.join("data/vireo/images");
    let mut harness = wizard(&images.join("demo-linux"));
    harness.get_by_label("Create").click();
    harness.run();
    harness.get_by_label("Cancel build").click();
    harness.run();
    harness.get_by_label("The image build was cancelled.");
    assert!(harness.state().1.is_none());
    assert_eq!(side_dirs(&images), Vec::<PathBuf>::new());
    // The form is back, whole: Create may be tried again.
    harness.get_by_label("Create");
    assert_eq!(harness.state().0.name, "Demo");
}
