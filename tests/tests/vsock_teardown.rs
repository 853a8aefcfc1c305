//! Ten boots with a vsock device in one process, through the library, each with guest
//! connections to a host server and a host client still connected when the guest powers
//! off: every boot closes the connections and the listener and removes the socket file,
//! and the process has the same fds and threads after the 10th boot as after the first.
//! Alone in its test binary so that no other test's fds or threads blur the count.

use std::io::Read;
use std::os::unix::net::UnixStream;

use vireo_e2e::in_process::{self, Holdings};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::report;
use vireo_e2e::vsock_host::{Mode, Server};
use vireo_vmm::boot::BootSource;
use vireo_vmm::devices::virtio::vsock::VsockConfig;
use vireo_vmm::{ExitReason, VmConfig};

const PORT: u32 = 1234;

#[test]
fn ten_vsock_boots_leak_nothing() {
    const TEST: &str = "vsock_teardown::ten_vsock_boots_leak_nothing";
    if !report::require_kvm(TEST) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vireo-vsock-teardown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    let config = VmConfig {
        memory: 128 << 20,
        vsock: Some(VsockConfig {
            cid: 3,
            socket: socket.clone(),
        }),
        ..VmConfig::new(BootSource {
                kernel: probe_guest_elf(),
                initrd: None,
                cmdline: format!(
                    "probe.run=vsock-echo probe.vsock_port={PORT} probe.vsock_conns=4 probe.vsock_mib=1"
                ),
            })
    };
    let boot = |i: usize| {
        let server = Server::start(&socket, PORT, Mode::Echo, false);
        // A host client that connects and waits, without a CONNECT line: the engine
        // must close it when the VM stops.
        let socket_for_client = socket.clone();
        let client = std::thread::spawn(move || {
            for _ in 0..2000 {
                if let Ok(mut s) = UnixStream::connect(&socket_for_client) {
                    let mut buf = [0u8; 1];
                    // EOF (0) or a reset: the engine let go of it.
                    return s.read(&mut buf).map_or(true, |n| n == 0);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            false
        });
        let (reason, text) = in_process::boot(&config);
        assert_eq!(reason, ExitReason::PowerOff, "boot {i}: {text}");
        assert!(text.contains("vsock_echo conns=4"), "boot {i}: {text}");
        assert!(text.contains(" ok=1 "), "boot {i}: {text}");
        assert!(!socket.exists(), "boot {i}: the socket file is left");
        assert!(
            client.join().unwrap(),
            "boot {i}: the host client was not closed"
        );
        drop(server);
    };
    boot(0);
    // This is the only test in its binary, so nothing else opens fds or starts threads.
    let first = Holdings::now();
    for i in 1..10 {
        boot(i);
    }
    assert_eq!(
        Holdings::now(),
        first,
        "fds, threads, children after 10 boots"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
