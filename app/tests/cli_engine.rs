//! The `vireo` command line against the real engine and the probe guest: a self-test VM
//! is created, started (its engine outlives each `vireo` process, so every later command
//! re-attaches from scratch), listed as running with what its engine reports, refused
//! a second start, pause and resume, screenshotted,
//! powered off, started again and shut down through the power button; an engine killed under it shows up as failed with the reason and its
//! log; broken configs are listed and left alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vireo_e2e::engine::vmm_binary;
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;

struct Home {
    dir: TempDir,
    vmm: PathBuf,
    probe: PathBuf,
}

impl Home {
    fn new(name: &str) -> Home {
        Home {
            dir: TempDir::new(name),
            vmm: vmm_binary(),
            probe: probe_guest_elf(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    fn vireo(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vireo"))
            .args(args)
            .env("XDG_DATA_HOME", self.data())
            .env("XDG_RUNTIME_DIR", self.dir.0.join("run"))
            .env("VIREO_VMM", &self.vmm)
            .env("VIREO_PROBE_GUEST", &self.probe)
            .output()
            .expect("vireo runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.vireo(args);
        assert!(
            out.status.success(),
            "vireo {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.vireo(args);
        assert_eq!(out.status.code(), Some(1), "vireo {args:?}: {out:?}");
        String::from_utf8(out.stderr).expect("UTF-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("--json prints JSON")
    }

    fn state(&self, vm: &str) -> String {
        self.json(&["info", vm, "--json"])["state"]
            .as_str()
            .expect("a state")
            .to_owned()
    }
}

/// Powers the VM off if a test fails with it running: an engine left behind would spin.
struct PowerOffOnDrop<'a>(&'a Home, &'a str);

impl Drop for PowerOffOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.vireo(&["stop", self.1]);
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn self_test_vm_lifecycle_through_the_cli() {
    if !report::require_kvm("app::cli_engine::self_test_vm_lifecycle_through_the_cli") {
        return;
    }
    let home = Home::new("app-cli-life");
    assert_eq!(home.json(&["list", "--json"]), Value::Array(vec![]));
    let made = home.json(&["create", "Self Test", "--memory", "128M", "--json"]);
    assert_eq!(made["id"], "self-test");
    let taken = home.fails(&["create", "self test"]);
    assert!(taken.contains("already exists"), "{taken}");
    let listed = home.json(&["list", "--json"]);
    assert_eq!(listed[0]["name"], "Self Test");
    assert_eq!(listed[0]["os"], "Vireo self-test");
    assert_eq!(listed[0]["state"], "stopped");

    home.ok(&["start", "Self Test"]);
    let _guard = PowerOffOnDrop(&home, "self-test");
    let info = home.json(&["info", "self-test", "--json"]);
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["engine"]["memory_mib"], 128, "{info}");
    assert_eq!(info["engine"]["vcpus"], 1, "{info}");
    let again = home.fails(&["start", "self-test"]);
    assert!(again.contains("already running"), "{again}");
    home.ok(&["pause", "self-test"]);
    assert_eq!(home.state("self-test"), "paused");
    let err = home.fails(&["pause", "self-test"]);
    assert!(err.contains("already paused"), "{err}");
    home.ok(&["resume", "self-test"]);
    assert_eq!(home.state("self-test"), "running");
    let err = home.fails(&["resume", "self-test"]);
    assert!(err.contains("not paused"), "{err}");
    let err = home.fails(&["delete", "self-test"]);
    assert!(err.contains("power it off first"), "{err}");
    assert_eq!(home.state("self-test"), "running");

    // The probe draws its screen once it has booted; the screenshot is the engine's.
    let log = home.data().join("vireo/vms/self-test/logs/console.log");
    wait_for("the self-test screen", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("VIREO-PROBE screen_ready"))
    });
    let png = home.dir.0.join("shot.png");
    let shot = home.json(&["screenshot", "self-test", png.to_str().unwrap(), "--json"]);
    assert_eq!(
        (shot["width"].as_u64(), shot["height"].as_u64()),
        (Some(1024), Some(768))
    );
    assert!(png_size(&png) == (1024, 768));

    home.ok(&["stop", "self-test"]);
    assert_eq!(home.state("self-test"), "stopped");

    // A graceful stop: the power button, which the probe answers by powering off.
    home.ok(&["start", "self-test"]);
    wait_for(
        "the self-test screen again",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.matches("VIREO-PROBE screen_ready").count() >= 1)
        },
    );
    let stopped = home.json(&["stop", "self-test", "--graceful", "--json"]);
    assert_eq!(stopped["result"], "shut down", "{stopped}");
    assert_eq!(home.state("self-test"), "stopped");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("VIREO-PROBE power_button"));
    home.ok(&["delete", "self-test", "--delete-disk"]);
    assert_eq!(home.json(&["list", "--json"]), Value::Array(vec![]));
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let info = decoder.read_info().expect("a PNG").info().clone();
    (info.width, info.height)
}

/// A PNG's pixels.
fn png_pixels(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("PNG pixels");
    buf.truncate(frame.buffer_size());
    buf
}

/// The share of bytes two equal-sized images have in common.
fn same_share(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Waits for the probe's agent on the VM's vsock socket and has it answer a ping.
fn agent_answers(home: &Home, vm: &str) {
    use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
    let endpoint = Endpoint::HybridVsock {
        path: home.dir.0.join("run/vireo").join(vm).join("vsock.sock"),
        port: vireo_guest_agent::protocol::AGENT_VSOCK_PORT,
    };
    let client = AgentClient::start(endpoint, ClientConfig::default());
    client
        .wait_connected(Duration::from_secs(60))
        .expect("the guest's agent connects");
    client.ping().expect("the guest's agent answers a ping");
}

#[test]
fn save_then_start_restores_and_a_refused_restore_can_be_discarded() {
    const TEST: &str =
        "app::cli_engine::save_then_start_restores_and_a_refused_restore_can_be_discarded";
    if !report::require_kvm(TEST) {
        return;
    }
    let home = Home::new("app-cli-save");
    home.ok(&["create", "keeper", "--memory", "128M", "--disk-gib", "1"]);
    let vm_dir = home.data().join("vireo/vms/keeper");
    let snap = vm_dir.join("saved-state.snap");
    let log = vm_dir.join("logs/console.log");
    let engine_pid = home.dir.0.join("run/vireo/keeper/engine.pid");
    home.ok(&["start", "keeper"]);
    let _guard = PowerOffOnDrop(&home, "keeper");
    wait_for("the self-test screen", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("VIREO-PROBE screen_ready"))
    });
    agent_answers(&home, "keeper");
    let before = home.dir.0.join("before.png");
    home.ok(&["screenshot", "keeper", before.to_str().unwrap()]);
    let pid = std::fs::read_to_string(&engine_pid).unwrap();

    // A save that fails (a directory where the file goes): the message, and the VM runs on.
    std::fs::create_dir(&snap).unwrap();
    let err = home.fails(&["save", "keeper"]);
    assert!(
        err.contains("the VM did not save") && err.contains("it runs on"),
        "{err}"
    );
    assert_eq!(home.state("keeper"), "running");
    std::fs::remove_dir(&snap).unwrap();

    // Save: the engine writes the machine and ends; the VM is saved.
    let saved = home.json(&["save", "keeper", "--json"]);
    assert_eq!(saved["result"], "saved", "{saved}");
    assert!(snap.is_file(), "the snapshot is written");
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the engine is gone"
    );
    let info = home.json(&["info", "keeper", "--json"]);
    assert_eq!(info["state"], "saved", "{info}");
    assert!(info["saved_unix"].as_u64().unwrap() > 0, "{info}");
    assert_eq!(home.json(&["list", "--json"])[0]["state"], "saved");
    let text = home.ok(&["list"]);
    assert!(text.contains("saved"), "{text}");
    // Its hardware is fixed while saved; what its window does is not.
    let err = home.fails(&["set", "keeper", "--cpus", "2"]);
    assert!(err.contains("start it or discard its saved state"), "{err}");
    let set = home.json(&["set", "keeper", "--on-close", "save", "--json"]);
    assert_eq!(set["config"]["window"]["on_close"], "save", "{set}");
    // A clone of a saved VM boots afresh: no saved state comes with it.
    home.ok(&["clone", "keeper", "fresh copy"]);
    assert!(!home
        .data()
        .join("vireo/vms/fresh-copy/saved-state.snap")
        .exists());
    assert_eq!(home.state("fresh-copy"), "stopped");

    // Start restores it: no new boot, the same screen, the agent answers again, and the
    // snapshot is consumed.
    let restored = home.json(&["start", "keeper", "--json"]);
    assert_eq!(restored["result"], "restored", "{restored}");
    assert!(!snap.exists(), "a restored snapshot is removed");
    assert_eq!(home.state("keeper"), "running");
    agent_answers(&home, "keeper");
    let after = home.dir.0.join("after.png");
    home.ok(&["screenshot", "keeper", after.to_str().unwrap()]);
    let same = same_share(&png_pixels(&before), &png_pixels(&after));
    assert!(
        same > 0.95,
        "the restored screen differs: {same:.3} in common"
    );
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        !console.contains("screen_ready"),
        "the guest booted again instead of running on: {console}"
    );
    home.ok(&["stop", "keeper"]);
    assert_eq!(home.state("keeper"), "stopped");

    // A restore the engine refuses: the disk changed since the save.
    home.ok(&["start", "keeper"]);
    home.ok(&["save", "keeper"]);
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(vm_dir.join("disk.img"))
        .unwrap();
    disk.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(disk);
    let snap_bytes = std::fs::read(&snap).unwrap();
    let err = home.fails(&["start", "keeper"]);
    assert!(err.contains("the saved state cannot be restored"), "{err}");
    assert!(err.contains("disk"), "the engine's reason: {err}");
    assert_eq!(
        std::fs::read(&snap).unwrap(),
        snap_bytes,
        "never deleted on a failure"
    );
    let info = home.json(&["info", "keeper", "--json"]);
    assert_eq!(info["state"], "saved", "{info}");
    assert!(
        info["restore_refused"].as_str().unwrap().contains("disk"),
        "{info}"
    );
    // Discard: the next start boots afresh.
    let discarded = home.json(&["discard", "keeper", "--json"]);
    assert_eq!(discarded["result"], "saved state discarded");
    assert!(!snap.exists());
    let err = home.fails(&["discard", "keeper"]);
    assert!(err.contains("no saved state"), "{err}");
    assert_eq!(home.state("keeper"), "stopped");
    home.ok(&["start", "keeper"]);
    wait_for("a fresh boot", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("VIREO-PROBE screen_ready"))
    });
    home.ok(&["stop", "keeper"]);
    // A damaged snapshot is refused too, and deleting the VM takes its saved state.
    home.ok(&["start", "keeper"]);
    home.ok(&["save", "keeper"]);
    // A byte of the machine state (JSON after the 4 KiB header; guest memory has no
    // checksum by design).
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[4096 + 16] ^= 0x20;
    std::fs::write(&snap, &bytes).unwrap();
    let err = home.fails(&["start", "keeper"]);
    assert!(err.contains("the saved state cannot be restored"), "{err}");
    assert_eq!(home.state("keeper"), "saved");
    home.ok(&["delete", "keeper", "--delete-disk"]);
    assert!(!vm_dir.exists());
}

#[test]
fn an_engine_that_dies_shows_why_and_its_log() {
    if !report::require_kvm("app::cli_engine::an_engine_that_dies_shows_why_and_its_log") {
        return;
    }
    let home = Home::new("app-cli-died");
    home.ok(&["create", "doomed", "--memory", "64M"]);
    home.ok(&["start", "doomed"]);
    let _guard = PowerOffOnDrop(&home, "doomed");
    let pid_file = home.dir.0.join("run/vireo/doomed/engine.pid");
    wait_for("the engine's pid", Duration::from_secs(10), || {
        pid_file.exists()
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SIGKILL: the engine gets no chance to say anything; the monitor sees it go.
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Between the kill and the monitor's exit record the engine is "unresponsive".
    wait_for("the VM to stop", Duration::from_secs(10), || {
        !["running", "unresponsive"].contains(&home.state("doomed").as_str())
    });
    let info = home.json(&["info", "doomed", "--json"]);
    assert_eq!(info["state"], "failed", "{info}");
    let reason = info["last_exit"]["reason"].as_str().unwrap();
    assert!(reason.contains("killed by signal 9 (SIGKILL)"), "{reason}");
    let tail = info["log_tail"].as_array().unwrap();
    assert!(
        tail.iter()
            .any(|l| l.as_str().unwrap().contains("engine ended")),
        "{tail:?}"
    );
    // It starts again, and a clean power-off clears the failure.
    home.ok(&["start", "doomed"]);
    home.ok(&["stop", "doomed"]);
    assert_eq!(home.state("doomed"), "stopped");
}

#[test]
fn start_errors_and_broken_configs() {
    let home = Home::new("app-cli-errors");
    let vms = home.data().join("vireo/vms");
    std::fs::create_dir_all(vms.join("mangled")).unwrap();
    let garbage = "name = \"mangled\"\ncpus = -1\n";
    std::fs::write(vms.join("mangled/vm.toml"), garbage).unwrap();
    let listed = home.json(&["list", "--json"]);
    assert_eq!(listed[0]["state"], "broken");
    assert!(listed[0]["broken"]
        .as_str()
        .unwrap()
        .contains("not a valid VM config"));
    let err = home.fails(&["start", "mangled"]);
    assert!(err.contains("fix or remove"), "{err}");
    let err = home.fails(&["delete", "mangled"]);
    assert!(err.contains("fix or remove"), "{err}");
    assert_eq!(
        std::fs::read_to_string(vms.join("mangled/vm.toml")).unwrap(),
        garbage
    );

    let err = home.fails(&["create", "big", "--memory", "100T"]);
    assert!(err.contains("more memory than this host has"), "{err}");
    let err = home.fails(&[
        "create",
        "k",
        "--os",
        "kernel",
        "--kernel",
        "/nonexistent/bzImage",
    ]);
    assert!(err.contains("/nonexistent/bzImage does not exist"), "{err}");
    // A kernel that vanished after creation: start names it, nothing is left running.
    let kernel = home.dir.0.join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    home.ok(&[
        "create",
        "gone",
        "--os",
        "kernel",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    std::fs::remove_file(&kernel).unwrap();
    let err = home.fails(&["start", "gone"]);
    assert!(err.contains("vmlinuz does not exist"), "{err}");
    // A file the engine cannot boot: its own message comes back from the log.
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let err = home.fails(&["start", "gone"]);
    assert!(err.contains("the engine could not start the VM"), "{err}");
    assert!(err.contains("vireo-vmm:"), "{err}");
    assert_eq!(home.state("gone"), "failed");
}

#[test]
fn clone_and_set_refuse_a_running_vm_and_change_a_stopped_one() {
    if !report::require_kvm(
        "app::cli_engine::clone_and_set_refuse_a_running_vm_and_change_a_stopped_one",
    ) {
        return;
    }
    let home = Home::new("app-cli-clone-set");
    home.ok(&[
        "create",
        "base",
        "--memory",
        "128M",
        "--disk-gib",
        "1",
        "--start",
    ]);
    let _guard = PowerOffOnDrop(&home, "base");
    let err = home.fails(&["clone", "base", "copy"]);
    assert!(err.contains("power it off first"), "{err}");
    let err = home.fails(&["set", "base", "--cpus", "1"]);
    assert!(err.contains("power it off first"), "{err}");
    home.ok(&["stop", "base"]);

    let cloned = home.json(&["clone", "base", "Copy", "--json"]);
    assert_eq!(cloned["id"], "copy", "{cloned}");
    assert_eq!(cloned["result"], "cloned");
    let err = home.fails(&["clone", "base", "copy"]);
    assert!(err.contains("already exists"), "{err}");
    let disk = home.data().join("vireo/vms/copy/disk.img");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);

    let set = home.json(&[
        "set",
        "copy",
        "--memory",
        "256M",
        "--disk-gib",
        "2",
        "--net",
        "true",
        "--json",
    ]);
    assert_eq!(set["config"]["memory_mib"], 256, "{set}");
    assert_eq!(set["config"]["disk"]["size_gib"], 2, "{set}");
    assert_eq!(set["config"]["network"], true, "{set}");
    assert!(set["config"]["mac"]
        .as_str()
        .unwrap()
        .starts_with("52:54:00:"));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2 << 30);
    let err = home.fails(&["set", "copy", "--disk-gib", "1"]);
    assert!(err.contains("can only grow"), "{err}");
    let err = home.fails(&["set", "copy", "--memory", "100T"]);
    assert!(err.contains("more memory than this host has"), "{err}");
    // The copy starts, with its own network card, beside nothing else.
    home.ok(&["start", "copy"]);
    let _copy = PowerOffOnDrop(&home, "copy");
    assert_eq!(home.state("copy"), "running");
    home.ok(&["stop", "copy"]);
}

/// A Vireo upgrade under a running VM: the engine binary it runs is replaced, `info`
/// says so, and `vireo upgrade` moves the VM to the new binary without stopping it
/// (the monitor starts the new engine and migrates the VM there): same screen, the agent
/// answers again, the guest did not boot again, and the VM powers off as usual.
#[test]
fn an_upgrade_moves_the_running_vm_to_the_new_engine() {
    const TEST: &str = "app::cli_engine::an_upgrade_moves_the_running_vm_to_the_new_engine";
    if !report::require_kvm(TEST) {
        return;
    }
    let mut home = Home::new("app-cli-upgrade");
    let installed = home.dir.0.join("bin/vireo-vmm");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(vmm_binary(), &installed).unwrap();
    home.vmm = installed.clone();
    home.ok(&["create", "mover", "--memory", "128M", "--disk-gib", "1"]);
    let log = home.data().join("vireo/vms/mover/logs/console.log");
    let engine_pid = home.dir.0.join("run/vireo/mover/engine.pid");
    home.ok(&["start", "mover"]);
    let _guard = PowerOffOnDrop(&home, "mover");
    wait_for("the self-test screen", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("VIREO-PROBE screen_ready"))
    });
    agent_answers(&home, "mover");
    assert_eq!(
        home.json(&["info", "mover", "--json"])["engine_outdated"],
        false
    );
    let old_pid = std::fs::read_to_string(&engine_pid).unwrap();

    // The upgrade puts a new file in place, as dpkg does (write beside, rename over).
    let staged = home.dir.0.join("bin/vireo-vmm.dpkg-new");
    std::fs::copy(vmm_binary(), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    assert_eq!(
        home.json(&["info", "mover", "--json"])["engine_outdated"],
        true
    );
    let before = home.dir.0.join("before.png");
    home.ok(&["screenshot", "mover", before.to_str().unwrap()]);

    let asked = Instant::now();
    let moved = home.json(&["upgrade", "mover", "--json"]);
    eprintln!("vireo upgrade took {:?}", asked.elapsed());
    assert_eq!(moved["result"], "moved to the installed engine", "{moved}");
    let new_pid = std::fs::read_to_string(&engine_pid).unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(!Path::new(&format!("/proc/{}", old_pid.trim())).exists());
    let info = home.json(&["info", "mover", "--json"]);
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["engine_outdated"], false, "{info}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", new_pid.trim())).unwrap();
    assert_eq!(exe, installed);

    let asked = Instant::now();
    agent_answers(&home, "mover");
    eprintln!("the agent answered {:?} after the move", asked.elapsed());
    let after = home.dir.0.join("after.png");
    home.ok(&["screenshot", "mover", after.to_str().unwrap()]);
    let same = same_share(&png_pixels(&before), &png_pixels(&after));
    assert!(
        same > 0.95,
        "the screen changed in the move: {same:.3} in common"
    );
    let console = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        console.matches("screen_ready").count(),
        1,
        "the guest booted again instead of moving: {console}"
    );
    assert!(console.contains("the VM moved"), "{console}");
    home.ok(&["stop", "mover"]);
    assert_eq!(home.state("mover"), "stopped");

    // Nothing to move to: the monitor gives up and the VM runs on where it is.
    home.ok(&["start", "mover"]);
    std::fs::remove_file(&installed).unwrap();
    let asked = Instant::now();
    let err = home.fails(&["upgrade", "mover"]);
    eprintln!("a failed upgrade answered in {:?}", asked.elapsed());
    assert!(err.contains("did not move"), "{err}");
    assert_eq!(home.state("mover"), "running");
    std::fs::copy(vmm_binary(), &installed).unwrap();
}
