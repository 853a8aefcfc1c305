//! Vireo's Debian packages (`installers/build-debs.sh`): built, checked by lintian, and
//! the host package installed on this machine with apt-get, run from /usr/bin, and
//! removed again.
//!
//! Run alone with `cargo test --release -p vireo-e2e --test packaging -- --nocapture`.

use std::path::Path;
use std::process::Command;

use vireo_e2e::packaging::{build_deb, contents, control_field, lintian};
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;

/// The app's window id, which names the .desktop file and the icons.
const APP_ID: &str = vireo_app::ui::APP_ID;

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn apt_get(args: &[&str]) -> (bool, String) {
    let mut all = vec!["-o", "DPkg::Lock::Timeout=300", "-y", "-q"];
    all.extend_from_slice(args);
    run("apt-get", &all)
}

#[test]
fn host_package_is_lintian_clean_with_menu_entry_and_icons() {
    const TEST: &str = "packaging::host_package_is_lintian_clean_with_menu_entry_and_icons";
    let deb = build_deb("host");
    let files = contents(&deb);
    for wanted in [
        "/usr/bin/vireo".to_owned(),
        "/usr/bin/vireo-vmm".to_owned(),
        "/usr/bin/vireo-window".to_owned(),
        "/usr/bin/vireo-image".to_owned(),
        "/usr/lib/vireo/vireo-agent".to_owned(),
        format!("/usr/share/applications/{APP_ID}.desktop"),
        format!("/usr/share/icons/hicolor/48x48/apps/{APP_ID}.png"),
        format!("/usr/share/icons/hicolor/scalable/apps/{APP_ID}.svg"),
        "/usr/share/doc/vireo/README.Debian".to_owned(),
        "/usr/share/doc/vireo/copyright".to_owned(),
    ] {
        assert!(files.contains(&wanted), "{wanted} missing from {files:?}");
    }
    let depends = control_field(&deb, "Depends");
    for dep in ["passt", "libc6", "debootstrap", "qemu-utils", "kmod"] {
        assert!(
            depends.split(", ").any(|d| d.starts_with(dep)),
            "Depends lacks {dep}: {depends}"
        );
    }

    // The desktop entry as the desktop reads it, and the PNG really 48x48.
    let dir = TempDir::new("host-deb");
    let (ok, text) = run(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), dir.0.to_str().unwrap()],
    );
    assert!(ok, "{text}");
    let desktop = dir
        .0
        .join(format!("usr/share/applications/{APP_ID}.desktop"));
    let (ok, text) = run("desktop-file-validate", &[desktop.to_str().unwrap()]);
    assert!(
        ok && text.trim().is_empty(),
        "desktop-file-validate: {text}"
    );
    let entry = std::fs::read_to_string(&desktop).unwrap();
    assert!(entry.contains(&format!("Icon={APP_ID}\n")), "{entry}");
    assert!(
        entry.contains(&format!("StartupWMClass={APP_ID}\n")),
        "{entry}"
    );
    let png = std::fs::read(
        dir.0
            .join(format!("usr/share/icons/hicolor/48x48/apps/{APP_ID}.png")),
    )
    .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, at 16..24.
    assert_eq!(&png[16..24], &[0, 0, 0, 48, 0, 0, 0, 48]);

    let found = lintian(&deb);
    println!("lintian warnings ({}):", found.warnings.len());
    for w in &found.warnings {
        println!("  {w}");
    }
    assert!(
        found.errors.is_empty(),
        "lintian errors: {:#?}",
        found.errors
    );
    report::ran(TEST);
}

#[test]
fn host_package_installs_with_apt_and_runs_from_usr_bin() {
    const TEST: &str = "packaging::host_package_installs_with_apt_and_runs_from_usr_bin";
    if !nix::unistd::geteuid().is_root() {
        report::skipped(TEST, "apt-get install needs root");
        return;
    }
    if run("dpkg-query", &["-W", "-f=${Status}", "vireo"])
        .1
        .contains("install ok installed")
    {
        report::skipped(
            TEST,
            "a vireo package is installed on this machine already: not replacing it",
        );
        return;
    }
    let deb = build_deb("host");
    let (ok, text) = apt_get(&["install", "--no-install-recommends", deb.to_str().unwrap()]);
    // Whatever happens next, the machine is left as it was.
    let _remove = Remove;
    assert!(ok, "apt-get install {}: {text}", deb.display());

    for bin in ["vireo", "vireo-vmm", "vireo-image"] {
        let path = Path::new("/usr/bin").join(bin);
        let (ok, text) = run(path.to_str().unwrap(), &["--version"]);
        assert!(ok, "{} --version: {text}", path.display());
        assert!(
            text.starts_with(&format!("{bin} ")) && text.contains(env!("CARGO_PKG_VERSION")),
            "{} --version: {text}",
            path.display()
        );
    }
    // vireo-window prints its version but exits 2 for --version and --help (it treats
    // every clap "error" alike; vmm-engine/src/bin/vireo-window.rs): check the words.
    let (_, text) = run("/usr/bin/vireo-window", &["--version"]);
    assert!(
        text.starts_with("vireo-window "),
        "vireo-window --version: {text}"
    );

    // The installed image builder builds the demo Linux with the packaged static agent
    // (no workspace to build one from), from the test cache of Debian packages.
    let out = TempDir::new("installed-image");
    let cache = vireo_installers::default_cache_dir();
    let (ok, text) = run(
        "/usr/bin/vireo-image",
        &[
            "--out",
            out.0.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ],
    );
    assert!(ok, "installed vireo-image: {text}");
    assert!(
        text.contains("static agent /usr/lib/vireo/vireo-agent"),
        "{text}"
    );
    assert!(out.0.join("initramfs.img").is_file());
    report::ran(TEST);
}

/// Removes the vireo package when dropped.
struct Remove;

impl Drop for Remove {
    fn drop(&mut self) {
        let (ok, text) = apt_get(&["remove", "vireo"]);
        if !ok {
            eprintln!("apt-get remove vireo failed: {text}");
        }
    }
}
