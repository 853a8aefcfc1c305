//! The VM lifecycle through the control socket, with the probe guest serving the agent
//! protocol over virtio-vsock. Pause and resume: while paused the guest answers nothing
//! (its vCPUs are out of the guest) and its device workers are parked, after resume it
//! answers again with its clock right, and a paused VM still powers off. Shutdown: the ACPI power button (a Generic Event Device the probe finds
//! in the DSDT), which the guest answers by powering itself off. Reset.

use std::time::{Duration, Instant};

use vireo_e2e::engine::{spawn_probe_agent, LiveGuest};
use vireo_e2e::report;
use vireo_e2e::temp::TempDir;
use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
use vireo_guest_agent::protocol::AGENT_VSOCK_PORT;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};
use vireo_vmm::exit::code;

fn state(control: &mut Control) -> String {
    match control.ask(&Request::Status {}).unwrap() {
        Response::Status { state, .. } => state,
        other => panic!("{other:?}"),
    }
}

fn error_of(response: Response) -> String {
    match response {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The probe's agent behind `dir`'s v.sock, with a control socket at control.sock.
fn spawn_agent(dir: &TempDir) -> LiveGuest {
    spawn_probe_agent(&dir.0, &dir.0.join("control.sock"), &[])
}

/// `poll(2)`: where a device worker waits while the VM is paused (`epoll_wait` is its
/// ordinary wait), as /proc/PID/task/TID/syscall shows.
const SYS_POLL: u64 = 7;

/// The syscall each of the engine's device worker threads is blocked in (None: running).
fn device_workers(pid: u32) -> Vec<(String, Option<u64>)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let name = name.trim().to_string();
            if !(name.starts_with("virtio-") || name == "vireo-blk") {
                return None;
            }
            let syscall = std::fs::read_to_string(dir.join("syscall")).ok()?;
            let number = syscall.split_whitespace().next()?.parse().ok();
            Some((name, number))
        })
        .collect()
}

/// Waits up to 2 s for every device worker to be (`true`) or not be in `poll`.
fn workers_parked(pid: u32, parked: bool) -> Vec<(String, Option<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let workers = device_workers(pid);
        let settled = workers
            .iter()
            .all(|(_, call)| (*call == Some(SYS_POLL)) == parked);
        if settled || Instant::now() > deadline {
            return workers;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn control(dir: &TempDir) -> Control {
    let control = Control::connect(&dir.0.join("control.sock")).unwrap();
    control.set_timeout(Some(Duration::from_secs(20))).unwrap();
    control
}

#[test]
fn a_paused_guest_runs_nothing_and_resumes_where_it_was() {
    if !report::require_kvm("lifecycle::a_paused_guest_runs_nothing_and_resumes_where_it_was") {
        return;
    }
    let dir = TempDir::new("pause");
    let mut guest = spawn_agent(&dir);
    let config = ClientConfig {
        call_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let endpoint = Endpoint::HybridVsock {
        path: dir.0.join("v.sock"),
        port: AGENT_VSOCK_PORT,
    };
    let client = AgentClient::connect(endpoint, config).expect("the probe agent answers");
    client.ping().expect("a running guest answers");

    let mut control = control(&dir);
    assert_eq!(state(&mut control), "running");
    assert!(error_of(control.ask(&Request::Resume {}).unwrap()).contains("not paused"));

    let asked = Instant::now();
    assert_eq!(control.ask(&Request::Pause {}).unwrap(), Response::Ok);
    let pause_latency = asked.elapsed();
    assert_eq!(state(&mut control), "paused");
    assert!(error_of(control.ask(&Request::Pause {}).unwrap()).contains("already paused"));
    // The engine still accepts the host's connection and passes the request on, but no
    // vCPU runs the guest's side: no answer within the call's 2 s.
    assert!(client.ping().is_err(), "a paused guest answered");
    eprintln!("pause took {pause_latency:?}");
    // The devices are quiesced: every worker (vsock's at least, which the agent uses)
    // waits for the release, not for work.
    let pid = guest.child.id();
    let workers = workers_parked(pid, true);
    assert!(
        workers.iter().any(|(name, _)| name == "virtio-vsock"),
        "{workers:?}"
    );
    assert!(
        workers.iter().all(|(_, call)| *call == Some(SYS_POLL)),
        "device workers not parked while paused: {workers:?}"
    );
    // Long enough that a clock counting the pause as lost time would be seen off.
    std::thread::sleep(Duration::from_secs(1));

    assert_eq!(control.ask(&Request::Resume {}).unwrap(), Response::Ok);
    assert_eq!(state(&mut control), "running");
    let resumed = Instant::now();
    let answered = loop {
        match client.ping() {
            Ok(_) => break true,
            Err(_) if resumed.elapsed() < Duration::from_secs(20) => continue,
            Err(_) => break false,
        }
    };
    assert!(answered, "the resumed guest does not answer");
    let workers = workers_parked(pid, false);
    assert!(
        workers.iter().all(|(_, call)| *call != Some(SYS_POLL)),
        "device workers still parked after resume: {workers:?}"
    );
    // What the app does after a resume: the agent syncs its clock, and it is right.
    let report = client.time_sync_now().expect("the agent syncs its clock");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    eprintln!("time sync after resume: {report:?}");
    assert!(
        (host_now - report.guest_unix_ns).abs() < 1_000_000_000,
        "the guest's clock is {} ms off after the resume",
        (host_now - report.guest_unix_ns) / 1_000_000
    );

    // Paused again, and powered off as it is: the parked vCPUs wake to stop.
    assert_eq!(control.ask(&Request::Pause {}).unwrap(), Response::Ok);
    assert_eq!(control.ask(&Request::PowerOff {}).unwrap(), Response::Ok);
    assert!(
        guest.wait_exit(Duration::from_secs(10)).is_some(),
        "a paused VM did not power off"
    );
}

#[test]
fn shutdown_presses_the_power_button_and_the_guest_powers_off() {
    if !report::require_kvm("lifecycle::shutdown_presses_the_power_button_and_the_guest_powers_off")
    {
        return;
    }
    let dir = TempDir::new("shutdown");
    let mut guest = spawn_agent(&dir);
    // The probe found the GED's status port in the DSDT.
    assert!(
        guest.seen.iter().any(|l| l.contains("ged_port=0x603")),
        "{:#?}",
        guest.seen
    );
    let mut control = control(&dir);
    // Not while paused: the guest could not act on it.
    assert_eq!(control.ask(&Request::Pause {}).unwrap(), Response::Ok);
    assert!(error_of(control.ask(&Request::Shutdown {}).unwrap()).contains("resume it"));
    assert_eq!(control.ask(&Request::Resume {}).unwrap(), Response::Ok);

    assert_eq!(control.ask(&Request::Shutdown {}).unwrap(), Response::Ok);
    let status = guest.wait_exit(Duration::from_secs(20));
    assert!(
        guest
            .seen
            .iter()
            .any(|l| l.contains("VIREO-PROBE power_button")),
        "{:#?}",
        guest.seen
    );
    // The guest's own ACPI power-off, not the engine pulling the plug.
    assert_eq!(status.and_then(|s| s.code()), Some(code::POWER_OFF));
}

#[test]
fn reset_ends_the_boot_as_a_reboot() {
    if !report::require_kvm("lifecycle::reset_ends_the_boot_as_a_reboot") {
        return;
    }
    let dir = TempDir::new("reset");
    let mut guest = spawn_agent(&dir);
    assert_eq!(control(&dir).ask(&Request::Reset {}).unwrap(), Response::Ok);
    let status = guest.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(code::REBOOT));
}
