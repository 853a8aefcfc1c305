//! Vireo's Debian packages (`installers/build-debs.sh`): built, checked by lintian, and
//! the host package installed on this machine with apt-get, run from /usr/bin, and
//! removed again.
//!
//! Run alone with `cargo test --release -p vireo-e2e --test packaging -- --nocapture`.

use std::path::Path;
use std::process::Command;

use vireo_e2e::packaging::{build_deb, contents, control_field, exclusive, lintian};
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
    let _one_at_a_time = exclusive();
    let deb = build_deb("host");
    let files = contents(&deb);
    for wanted in [
        "/usr/bin/vireo".to_owned(),
        "/usr/bin/vireo-vmm".to_owned(),
        "/usr/bin/vireo-window".to_owned(),
        "/usr/bin/vireo-image".to_owned(),
        "/usr/lib/vireo/vireo-agent".to_owned(),
        "/usr/share/vireo/vireo-agent.deb".to_owned(),
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
    let _one_at_a_time = exclusive();
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

#[test]
fn agent_package_is_lintian_clean_and_its_unit_verifies() {
    const TEST: &str = "packaging::agent_package_is_lintian_clean_and_its_unit_verifies";
    let _one_at_a_time = exclusive();
    let deb = build_deb("agent");
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
    // No dependencies at all: the binary is static, so one package fits every release.
    assert_eq!(control_field(&deb, "Depends"), "");

    let root = TempDir::new("agent-deb");
    let (ok, text) = run(
        "dpkg-deb",
        &["-x", deb.to_str().unwrap(), root.0.to_str().unwrap()],
    );
    assert!(ok, "{text}");
    let agent = root.0.join("usr/bin/vireo-agent");
    vireo_installers::agent::check_static(&agent).expect("the packaged agent is static");
    let (ok, text) = run(agent.to_str().unwrap(), &["--version"]);
    assert!(ok && text.starts_with("vireo-agent "), "{text}");

    // systemd's own check of the unit. Outside a root with systemd in it the one thing
    // it may miss is the agent binary itself (the Debian 12 image test verifies the unit
    // inside a real root).
    let unit = root.0.join("lib/systemd/system/vireo-agent.service");
    let (_, text) = run(
        "systemd-analyze",
        &["verify", "--man=no", unit.to_str().unwrap()],
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("Command /usr/bin/vireo-agent is not executable"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {text}");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("ConditionPathExists=/dev/vsock"));
    assert!(unit_text.contains("WantedBy=multi-user.target"));

    // Harmless on this machine: the unit's own condition, run here, says "skip" unless
    // this machine is a VM with a virtio vsock device.
    let condition = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecCondition=/bin/sh -c "))
        .expect("the unit has its ExecCondition")
        .trim_matches('\'');
    let (runs_here, _) = run("/bin/sh", &["-c", condition]);
    let has_virtio_vsock = std::fs::read_dir("/sys/bus/virtio/devices")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            std::fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == "0x0013")
        });
    assert_eq!(runs_here, has_virtio_vsock);

    // The session part: started by every graphical session, shipped as a conffile, a
    // valid desktop entry, and harmless here (no virtio vsock: it exits at once).
    let autostart = "/etc/xdg/autostart/dev.vireo.Agent.desktop";
    assert!(contents(&deb).iter().any(|f| f == autostart));
    let control = TempDir::new("agent-control");
    let (ok, text) = run(
        "dpkg-deb",
        &["-e", deb.to_str().unwrap(), control.0.to_str().unwrap()],
    );
    assert!(ok, "{text}");
    let conffiles = std::fs::read_to_string(control.0.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles.lines().any(|l| l == autostart),
        "conffiles: {conffiles}"
    );
    let entry = root.0.join(autostart.trim_start_matches('/'));
    let entry_text = std::fs::read_to_string(&entry).unwrap();
    assert!(
        entry_text.contains("Exec=/usr/bin/vireo-agent session"),
        "{entry_text}"
    );
    // desktop-file-utils comes with setup-host.sh.
    let (ok, text) = run("desktop-file-validate", &[entry.to_str().unwrap()]);
    assert!(
        ok && text.trim().is_empty(),
        "desktop-file-validate: {text}"
    );
    if !has_virtio_vsock {
        let (ok, text) = run(agent.to_str().unwrap(), &["session"]);
        assert!(ok && text.contains("not a Vireo VM"), "{text}");
    }
    assert!(unit_text.contains("RuntimeDirectory=vireo-agent"));
    assert!(unit_text.contains("RuntimeDirectoryMode=0755"));

    let rule =
        std::fs::read_to_string(root.0.join("lib/udev/rules.d/60-vireo-agent.rules")).unwrap();
    assert!(
        rule.contains(r#"ENV{SYSTEMD_WANTS}+="vireo-agent.service""#),
        "{rule}"
    );
    report::ran(TEST);
}
