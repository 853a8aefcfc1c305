//! The control socket of a running engine: JSON lines in, one response line per request
//! out, bad requests answered with an error (the connection stays usable), and
//! balloon requests answered, and `power-off` ending the VM.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_e2e::engine::{s, vmm_binary, LiveGuest};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;

#[test]
fn status_errors_and_power_off() {
    const TEST: &str = "control_socket::status_errors_and_power_off";
    if !report::require_kvm(TEST) {
        return;
    }
    let socket =
        std::env::temp_dir().join(format!("vireo-control-e2e-{}.sock", std::process::id()));
    let elf = probe_guest_elf();
    let mut guest = LiveGuest::spawn(Command::new(vmm_binary()).args([
        "--kernel",
        s(&elf),
        "--cpus",
        "2",
        "--memory",
        "96M",
        "--control-socket",
        s(&socket),
        "--cmdline",
        "probe.run=idle",
    ]));
    assert!(guest
        .wait_for("VIREO-PROBE IDLE", Duration::from_secs(60))
        .is_some());
    let stream = UnixStream::connect(&socket).expect("the control socket accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &str| {
        writer.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer
    };
    assert_eq!(
        ask(r#"{"request":"status"}"#).trim(),
        r#"{"response":"status","state":"running","vcpus":2,"memory_mib":96}"#
    );
    let bad = ask(r#"{"request":"warp-drive"}"#);
    assert!(
        bad.contains(r#""response":"error""#) && bad.contains("warp-drive"),
        "{bad}"
    );
    assert!(ask("{").contains(r#""response":"error""#));
    // The probe guest has no balloon driver: the target is kept for when one binds,
    // nothing is given back, and there are no statistics to report.
    assert_eq!(
        ask(r#"{"request":"balloon-set","target_mib":32}"#).trim(),
        r#"{"response":"balloon","target_mib":32,"actual_mib":0}"#
    );
    assert!(
        ask(r#"{"request":"balloon-set","target_mib":4096}"#).contains("more than the VM's 96 MiB")
    );
    assert!(ask(r#"{"request":"balloon-stats"}"#).contains("has not reported"));
    assert_eq!(
        ask(r#"{"request":"power-off"}"#).trim(),
        r#"{"response":"ok"}"#
    );
    let status = guest
        .wait_exit(Duration::from_secs(30))
        .expect("the engine ended");
    assert_eq!(status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "the engine removes its socket");
}
