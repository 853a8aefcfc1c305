//! What this host offers VMs: CPUs, memory, and which KVM (the engine's `doctor`
//! decides; the app asks the same code).

use std::path::Path;

use vireo_vmm::doctor::{self, KvmFlavour};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// VT-x or AMD-V: any stock kernel boots.
    Hardware,
    /// PVM software virtualization: the self-test runs, stock kernels do not boot.
    Pvm,
    /// KVM opens but its flavour is unknown.
    Unknown,
    /// KVM cannot be opened; the text says how to fix it.
    Unusable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// CPUs a VM may have at most (this host's online CPUs).
    pub cpus: u32,
    /// RAM a VM may have at most.
    pub memory_mib: u64,
    pub kvm: KvmKind,
}

impl HostInfo {
    /// Asks the host (reads /proc/meminfo, opens /dev/kvm once).
    pub fn detect() -> HostInfo {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory_mib = doctor::host_memory_bytes().unwrap_or(0) >> 20;
        let kvm = match doctor::open_kvm(Path::new(doctor::DEFAULT_KVM_DEVICE)) {
            Err(e) => KvmKind::Unusable(e.to_string()),
            Ok(_) => match KvmFlavour::detect() {
                KvmFlavour::IntelVtx | KvmFlavour::AmdV => KvmKind::Hardware,
                KvmFlavour::Pvm => KvmKind::Pvm,
                KvmFlavour::Unknown => KvmKind::Unknown,
            },
        };
        HostInfo {
            cpus,
            memory_mib,
            kvm,
        }
    }

    /// Whether a stock Linux (the demo Linux, a distribution kernel) boots here, and if
    /// not, why, in words for the wizard.
    pub fn runs_stock_linux(&self) -> Result<(), String> {
        match &self.kvm {
            KvmKind::Hardware | KvmKind::Unknown => Ok(()),
            KvmKind::Pvm => Err(
                "needs hardware virtualization (VT-x/AMD-V): this host's KVM is PVM, \
                 where a stock Linux kernel runs interpreted and does not finish booting"
                    .into(),
            ),
            KvmKind::Unusable(why) => Err(format!("KVM is not usable: {why}")),
        }
    }

    /// A sensible default memory size for a new VM: a quarter of the host, between 256
    /// MiB and 2 GiB.
    pub fn recommended_memory_mib(&self) -> u64 {
        (self.memory_mib / 4)
            .clamp(256, 2048)
            .min(self.memory_mib.max(64))
    }
}
