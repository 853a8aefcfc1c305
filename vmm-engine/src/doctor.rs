//! What this host's KVM is and what it can run: `vireo-vmm doctor`, and the checks the
//! engine makes before it creates a VM.
//!
//! The flavour matters: with hardware virtualization (VT-x, AMD-V) any stock kernel
//! boots; with PVM (the `kvm_pvm` module, software virtualization) guest user mode runs
//! natively but guest kernel mode is interpreted, so an unmodified Linux cannot boot in
//! reasonable time while CPL3-bound guests such as the probe guest run fine.

use std::fmt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Where KVM lives unless the caller says otherwise.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Intel VT-x (`kvm_intel`).
    IntelVtx,
    /// AMD-V (`kvm_amd`).
    AmdV,
    /// PVM software virtualization (`kvm_pvm`).
    Pvm,
    /// A KVM we cannot name (no vendor module found in /sys/module).
    Unknown,
}

impl KvmFlavour {
    /// Which flavour this host's loaded modules say it is.
    pub fn detect() -> Self {
        Self::from_modules(|m| Path::new("/sys/module").join(m).exists())
    }

    fn from_modules(loaded: impl Fn(&str) -> bool) -> Self {
        if loaded("kvm_pvm") {
            KvmFlavour::Pvm
        } else if loaded("kvm_intel") {
            KvmFlavour::IntelVtx
        } else if loaded("kvm_amd") {
            KvmFlavour::AmdV
        } else {
            KvmFlavour::Unknown
        }
    }

    /// Whether a stock Linux kernel boots in usable time.
    pub fn runs_unmodified_kernels(self) -> bool {
        matches!(self, KvmFlavour::IntelVtx | KvmFlavour::AmdV)
    }

    /// The word tests and the app match on.
    pub fn name(self) -> &'static str {
        match self {
            KvmFlavour::IntelVtx => "hardware-vtx",
            KvmFlavour::AmdV => "hardware-amdv",
            KvmFlavour::Pvm => "pvm",
            KvmFlavour::Unknown => "unknown",
        }
    }
}

/// Why KVM could not be opened, phrased as what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KvmOpenError {
    #[error("{0} does not exist: enable virtualization (VT-x/AMD-V) in the firmware settings and load the kvm_intel or kvm_amd module")]
    Missing(String),
    #[error("no permission to open {0}: add your user to the kvm group (sudo usermod -aG kvm $USER), then log in again")]
    PermissionDenied(String),
    #[error("cannot open {path}: {source}")]
    Other {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} speaks KVM API version {1}, but version 12 is needed")]
    WrongApiVersion(String, i32),
}

/// Opens KVM at `device`, with errors that say how to fix them.
pub fn open_kvm(device: &Path) -> Result<Kvm, KvmOpenError> {
    let shown = device.display().to_string();
    let c_path = std::ffi::CString::new(device.as_os_str().as_encoded_bytes())
        .map_err(|_| KvmOpenError::Missing(shown.clone()))?;
    let kvm = Kvm::new_with_path(c_path).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmOpenError::Missing(shown.clone()),
        libc::EACCES | libc::EPERM => KvmOpenError::PermissionDenied(shown.clone()),
        errno => KvmOpenError::Other {
            path: shown.clone(),
            source: std::io::Error::from_raw_os_error(errno),
        },
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmOpenError::WrongApiVersion(shown, version));
    }
    Ok(kvm)
}

/// The capabilities the engine uses, each with whether this KVM has it.
const CAPABILITIES: &[(&str, Cap)] = &[
    ("irqchip", Cap::Irqchip),
    ("irqfd", Cap::Irqfd),
    ("ioeventfd", Cap::Ioeventfd),
    ("irq_routing", Cap::IrqRouting),
    ("msi", Cap::SignalMsi),
    ("pit2", Cap::Pit2),
    ("immediate_exit", Cap::ImmediateExit),
    ("dirty_log_ring", Cap::DirtyLogRing),
    ("tsc_control", Cap::TscControl),
    ("kvmclock_ctrl", Cap::KvmclockCtrl),
];

/// The doctor's findings, one `key: value` line each.
pub struct Report {
    pub lines: Vec<(String, String)>,
    /// Whether the engine can run VMs at all on this host.
    pub usable: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.lines {
            writeln!(f, "{k}: {v}")?;
        }
        Ok(())
    }
}

/// Examines `device` and the host.
pub fn examine(device: &Path) -> Report {
    let mut lines = vec![("kvm_device".to_owned(), device.display().to_string())];
    let mut push = |k: &str, v: String| lines.push((k.to_owned(), v));
    let flavour = KvmFlavour::detect();
    let usable = match open_kvm(device) {
        Ok(kvm) => {
            push("kvm_access", "ok".into());
            push("kvm_api_version", kvm.get_api_version().to_string());
            push("kvm_flavour", flavour.name().into());
            push("max_vcpus", kvm.get_max_vcpus().to_string());
            push("recommended_vcpus", kvm.get_nr_vcpus().to_string());
            for (name, cap) in CAPABILITIES {
                push(
                    &format!("cap_{name}"),
                    if kvm.check_extension(*cap) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                );
            }
            true
        }
        Err(e) => {
            push("kvm_access", format!("error: {e}"));
            push("kvm_flavour", flavour.name().into());
            false
        }
    };
    push(
        "host_memory_mib",
        (host_memory_bytes().unwrap_or(0) >> 20).to_string(),
    );
    push("runs_probe_guest", if usable { "yes" } else { "no" }.into());
    push(
        "seccomp",
        if crate::sandbox::seccomp::kernel_supports() {
            "yes"
        } else {
            "no"
        }
        .into(),
    );
    push(
        "landlock",
        match crate::sandbox::landlock::kernel_abi() {
            0 => "no (the engine's threads keep their file access)".into(),
            abi => format!("yes (ABI {abi})"),
        },
    );
    let unmodified = usable && flavour.runs_unmodified_kernels();
    push(
        "runs_unmodified_kernels",
        if unmodified { "yes" } else { "no" }.into(),
    );
    let verdict = match (usable, flavour) {
        (false, _) => "KVM is not usable: fix the kvm_access line above".to_owned(),
        (true, KvmFlavour::Pvm) => {
            "PVM software virtualization: the probe guest runs; stock Linux kernels are interpreted in kernel mode (~1000x slower) and do not finish booting".to_owned()
        }
        (true, KvmFlavour::Unknown) => "KVM works; its flavour is unknown, so stock kernels may or may not boot".to_owned(),
        (true, _) => "hardware virtualization: stock Linux kernels and the probe guest run".to_owned(),
    };
    push("summary", verdict);
    Report { lines, usable }
}

/// Total host RAM from /proc/meminfo.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&meminfo)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_from_modules() {
        assert_eq!(
            KvmFlavour::from_modules(|m| m == "kvm_pvm" || m == "kvm_intel"),
            KvmFlavour::Pvm
        );
        assert_eq!(
            KvmFlavour::from_modules(|m| m == "kvm_amd"),
            KvmFlavour::AmdV
        );
        assert!(!KvmFlavour::Pvm.runs_unmodified_kernels());
        assert!(KvmFlavour::IntelVtx.runs_unmodified_kernels());
    }

    #[test]
    fn missing_device_says_what_to_do() {
        let err = open_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, KvmOpenError::Missing(_)));
        assert!(err.to_string().contains("enable virtualization"));
    }

    #[test]
    fn meminfo_parsing() {
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 << 10)
        );
        assert_eq!(parse_mem_total("nothing"), None);
    }
}
