//! VMs run inside the test process through the library (not as a child engine), for the
//! tests that check that teardown leaves nothing behind: the process's own fds, threads
//! and children, counted before and after.

use std::sync::{Arc, Mutex};

use vireo_vmm::console::ConsoleInput;
use vireo_vmm::{Console, ExitReason, VmConfig};

/// What a process holds that a VM's teardown must give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    pub fds: usize,
    pub threads: usize,
    /// This process's children (zombies included), by their `Name:` line.
    pub children: Vec<String>,
}

impl Holdings {
    pub fn now() -> Holdings {
        Holdings {
            fds: count_entries("/proc/self/fd"),
            threads: count_entries("/proc/self/task"),
            children: children(),
        }
    }
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            (ppid == me).then(|| status.lines().next().unwrap_or("").to_owned())
        })
        .collect()
}

/// Boots `config` in this process until the guest stops; returns why, and what the guest
/// printed on its console.
pub fn boot(config: &VmConfig) -> (ExitReason, String) {
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let console = Console {
        output: output.clone(),
        input: ConsoleInput::None,
    };
    let reason = vireo_vmm::run(config, &console).expect("the VM starts");
    let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    (reason, text)
}
