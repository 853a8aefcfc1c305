//! Saving and restoring the x86 CPU and the in-kernel irqchip: everything KVM holds for
//! a VM that guest memory and our device models do not.
//!
//! Capturing a vCPU (in the thread that owns its fd, while the VM is paused):
//! 1. [`complete_pending_io`]: an `IN` or MMIO read handled in userspace only reaches the
//!    guest's registers on the next `KVM_RUN` (and under hardware virtualization `rip` only
//!    moves past an `OUT` then); without this step the restored guest would run the
//!    instruction again: ask its device a second time, or repeat the write.
//! 2. [`VcpuState::capture`] with the MSRs from [`msrs_to_save`].
//!
//! [`VmState::capture`] once, with every vCPU stopped.
//!
//! Restoring, into a new VM set up as the engine does (memory, in-kernel irqchip and PIT
//! created, each vCPU created with its CPUID set): [`VmState::restore`], then
//! [`VcpuState::restore`] for each vCPU, then run.
//!
//! The KVM structs are stored as their raw bytes (kvm-bindings' `repr(C)` layouts, which
//! are KVM's ABI); a saved struct of the wrong length is refused when it is read back.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Why saving or restoring CPU or irqchip state failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("KVM_{call} failed")]
    Kvm {
        call: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "KVM_SET_MSRS refused MSR {index:#x} (entry {entry} of {total}): this vCPU lacks it \
         or takes not its saved value (a state from another host or CPU model?)"
    )]
    MsrRefused {
        index: u32,
        entry: usize,
        total: usize,
    },
    #[error(
        "the saved {what} is {got} bytes where KVM's is {expected}: the state is truncated or \
         from an incompatible host"
    )]
    Size {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "this vCPU's XSAVE state is larger than KVM_GET_XSAVE's 4 KiB (AMX enabled with \
         arch_prctl?): saving it needs KVM_GET_XSAVE2"
    )]
    XsaveTooLarge(#[source] kvm_ioctls::Error),
    #[error(
        "the vCPU still had I/O to complete after {0} exits with immediate_exit set (a \
         string I/O instruction without end?)"
    )]
    IoNotCompleted(usize),
    #[error(
        "the state holds {0} MSRs, more than KVM_SET_MSRS takes at once ({max})",
        max = kvm_bindings::KVM_MAX_MSR_ENTRIES
    )]
    TooManyMsrs(usize),
}

fn kvm(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { call, source }
}

/// How many exits [`complete_pending_io`] serves before giving up: one string I/O
/// instruction is a handful (each exit carries up to a page), never thousands.
const MAX_COMPLETION_EXITS: usize = 4096;

/// Completes an I/O exit the vCPU thread has handled but KVM has not yet written back
/// (the `IN` result into `rax`, `rip` past the instruction): runs `KVM_RUN` with
/// `immediate_exit` set, which finishes the pending operation and returns `EINTR`
/// without entering the guest. Call it from the thread owning `fd`, after the last exit
/// was handled, before [`VcpuState::capture`].
///
/// A string instruction may need more I/O to finish (`rep insb` across a page): each
/// further exit goes to `on_exit`, which must handle it as the run loop would.
pub fn complete_pending_io(
    fd: &mut VcpuFd,
    mut on_exit: impl FnMut(VcpuExit<'_>),
) -> Result<(), SnapshotError> {
    for _ in 0..MAX_COMPLETION_EXITS {
        fd.set_kvm_immediate_exit(1);
        let result = fd.run().map(&mut on_exit);
        fd.set_kvm_immediate_exit(0);
        match result {
            Ok(()) => continue,
            Err(e) if e.errno() == libc::EINTR => return Ok(()),
            Err(e) => return Err(kvm("RUN (immediate_exit)")(e)),
        }
    }
    Err(SnapshotError::IoNotCompleted(MAX_COMPLETION_EXITS))
}

/// `(de)serialize_with` for KVM's plain structs: their bytes, and exactly as many back.
mod raw {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use zerocopy::{FromBytes, Immutable, IntoBytes};

    pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value.as_bytes())
    }

    pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        let bytes = Vec::<u8>::deserialize(deserializer)?;
        let expected = std::mem::size_of::<T>();
        T::read_from_bytes(&bytes).map_err(|_| {
            D::Error::custom(format!(
                "a saved {} is {} bytes where KVM's is {expected}: truncated or from an \
                 incompatible host",
                std::any::type_name::<T>(),
                bytes.len()
            ))
        })
    }
}

/// One MSR's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msr {
    pub index: u32,
    pub data: u64,
}

/// The FPU/SSE registers as `KVM_GET_FPU` has them: the fallback where KVM_GET_XSAVE is
/// missing (KVM without KVM_CAP_XSAVE). The same fields as `kvm_fpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuRegs {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuRegs {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuRegs> for kvm_fpu {
    fn from(f: &FpuRegs) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The floating-point and vector state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FpuState {
    /// KVM_GET_XSAVE's 4 KiB area (x87, SSE, AVX and whatever else XCR0 enables), as
    /// 32-bit words. Vireo never asks for AMX (`ARCH_REQ_XCOMP_GUEST_PERM`), so the
    /// guest's XSAVE state always fits: KVM_CAP_XSAVE2 reports 4096 for our VMs.
    Xsave(Vec<u32>),
    /// KVM_GET_FPU's x87 and SSE registers, on a KVM without XSAVE support.
    Fpu(Box<FpuRegs>),
}

/// Words in KVM_GET_XSAVE's area.
const XSAVE_WORDS: usize = std::mem::size_of::<kvm_xsave>() / 4;

/// KVM_GET_XSAVE, whose EINVAL means the vCPU's XSAVE state does not fit in 4 KiB.
fn get_xsave(fd: &VcpuFd) -> Result<kvm_xsave, SnapshotError> {
    fd.get_xsave().map_err(|e| match e.errno() {
        libc::EINVAL => SnapshotError::XsaveTooLarge(e),
        _ => SnapshotError::Kvm {
            call: "GET_XSAVE",
            source: e,
        },
    })
}

impl FpuState {
    fn capture(fd: &VcpuFd) -> Result<Self, SnapshotError> {
        match get_xsave(fd) {
            Ok(xsave) => Ok(Self::Xsave(xsave.region.to_vec())),
            Err(SnapshotError::Kvm { source, .. }) => {
                tracing::debug!("KVM_GET_XSAVE failed ({source}); saving KVM_GET_FPU's registers");
                let fpu = fd.get_fpu().map_err(kvm("GET_FPU"))?;
                Ok(Self::Fpu(Box::new(FpuRegs::from(&fpu))))
            }
            Err(e) => Err(e),
        }
    }

    /// Refuses an XSAVE area of the wrong size (a truncated or foreign state).
    fn check(&self) -> Result<(), SnapshotError> {
        match self {
            Self::Xsave(words) if words.len() != XSAVE_WORDS => Err(SnapshotError::Size {
                what: "XSAVE area",
                expected: XSAVE_WORDS * 4,
                got: words.len() * 4,
            }),
            _ => Ok(()),
        }
    }

    fn restore(&self, fd: &VcpuFd) -> Result<(), SnapshotError> {
        self.check()?;
        match self {
            Self::Xsave(words) => {
                // KVM_SET_XSAVE reads as many bytes as this vCPU's XSAVE state has; that
                // KVM_GET_XSAVE works on it proves this is no more than our 4 KiB.
                get_xsave(fd)?;
                let mut xsave = kvm_xsave::default();
                xsave.region.copy_from_slice(words);
                // SAFETY: `xsave` is 4 KiB, and KVM reads no more than that from it (the
                // KVM_GET_XSAVE above succeeded on the same vCPU).
                unsafe { fd.set_xsave(&xsave) }.map_err(kvm("SET_XSAVE"))
            }
            Self::Fpu(regs) => fd.set_fpu(&kvm_fpu::from(&**regs)).map_err(kvm("SET_FPU")),
        }
    }
}

/// MSR_IA32_TSC: the guest's time stamp counter.
const MSR_IA32_TSC: u32 = 0x10;
/// MSR_IA32_TSC_DEADLINE: the LAPIC timer's deadline, an absolute TSC value.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Everything KVM keeps for one vCPU. CPUID is not part of it: the restoring engine sets
/// it from its own setup code, as at boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    #[serde(with = "raw")]
    pub mp_state: kvm_mp_state,
    #[serde(with = "raw")]
    pub regs: kvm_regs,
    #[serde(with = "raw")]
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// XCR0 and friends; none (`nr_xcrs` 0) on a host without XSAVE.
    #[serde(with = "raw")]
    pub xcrs: kvm_xcrs,
    #[serde(with = "raw")]
    pub debug_regs: kvm_debugregs,
    #[serde(with = "raw")]
    pub lapic: kvm_lapic_state,
    /// In the order they are to be set: see [`msrs_to_save`].
    pub msrs: Vec<Msr>,
    #[serde(with = "raw")]
    pub vcpu_events: kvm_vcpu_events,
    /// The guest's TSC frequency, where KVM reports one.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// Reads the vCPU's state. The caller owns `fd`'s thread, has stopped every vCPU of
    /// the VM (vCPU events and the LAPIC change under a running sibling's IPIs) and has
    /// called [`complete_pending_io`] on this one first.
    ///
    /// The order follows KVM's side effects: KVM_GET_MP_STATE first (it delivers pending
    /// INIT/SIPI into the registers), KVM_GET_VCPU_EVENTS last.
    pub fn capture(fd: &mut VcpuFd, msrs: &[u32]) -> Result<VcpuState, SnapshotError> {
        let mp_state = fd.get_mp_state().map_err(kvm("GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(kvm("GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm("GET_SREGS"))?;
        let fpu = FpuState::capture(fd)?;
        let xcrs = capture_xcrs(fd)?;
        let debug_regs = fd.get_debug_regs().map_err(kvm("GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(kvm("GET_LAPIC"))?;
        let msrs = read_msrs(fd, msrs)?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let vcpu_events = fd.get_vcpu_events().map_err(kvm("GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            fpu,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Puts the state into `fd`, a vCPU whose CPUID is already set (KVM checks XCR0, EFER
    /// and the MSRs against it). The order, as Firecracker and Cloud Hypervisor keep it:
    /// - the TSC frequency before the TSC MSR, which is scaled by it;
    /// - KVM_SET_SREGS before KVM_SET_LAPIC (sregs carry the APIC base: the LAPIC must
    ///   be enabled and in the right mode first);
    /// - KVM_SET_LAPIC before KVM_SET_MSRS (KVM only takes the TSC deadline while the
    ///   LVT timer is in TSC-deadline mode);
    /// - KVM_SET_VCPU_EVENTS last: sregs (their interrupt bitmap) and the LAPIC carry
    ///   pending-interrupt state too; the events, captured last, are what must hold.
    ///
    /// A state that is malformed is refused before the vCPU is touched; one KVM refuses
    /// leaves the vCPU partly set, and the VM must then be thrown away.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), SnapshotError> {
        self.fpu.check()?;
        let msrs = msr_array(&self.msrs)?;
        self.restore_tsc_khz(fd);
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(kvm("SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(kvm("SET_SREGS"))?;
        self.fpu.restore(fd)?;
        if self.xcrs.nr_xcrs > 0 {
            fd.set_xcrs(&self.xcrs).map_err(kvm("SET_XCRS"))?;
        }
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm("SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(kvm("SET_LAPIC"))?;
        write_msrs(fd, &msrs)?;
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(kvm("SET_VCPU_EVENTS"))
    }

    /// A different frequency (another host) is set if KVM can scale the TSC; if it
    /// cannot, the guest still runs, but its TSC-based clocks drift until it
    /// recalibrates, so that is worth a warning rather than a refusal.
    fn restore_tsc_khz(&self, fd: &VcpuFd) {
        let Some(saved) = self.tsc_khz else { return };
        if fd.get_tsc_khz().ok() == Some(saved) {
            return;
        }
        if let Err(e) = fd.set_tsc_khz(saved) {
            tracing::warn!(
                "cannot set the guest TSC to its saved {saved} kHz ({e}): its clock will drift"
            );
        }
    }
}

/// The extended control registers; KVM has none to give (EINVAL) where the host CPU
/// lacks XSAVE, and then the guest has none either.
fn capture_xcrs(fd: &VcpuFd) -> Result<kvm_xcrs, SnapshotError> {
    match fd.get_xcrs() {
        Ok(xcrs) => Ok(xcrs),
        Err(e) if e.errno() == libc::EINVAL => {
            tracing::debug!("KVM_GET_XCRS failed ({e}): no XCRs saved");
            Ok(kvm_xcrs::default())
        }
        Err(e) => Err(kvm("GET_XCRS")(e)),
    }
}

/// Reads `indices`, skipping those KVM cannot read: KVM_GET_MSRS stops at the first MSR
/// it refuses and returns how many it read, so each refusal costs one more call.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<Msr>, SnapshotError> {
    let mut values = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let wanted: Vec<Msr> = rest.iter().map(|&index| Msr { index, data: 0 }).collect();
        let mut msrs = msr_array(&wanted)?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm("GET_MSRS"))?;
        values.extend(msrs.as_slice()[..read].iter().map(|e| Msr {
            index: e.index,
            data: e.data,
        }));
        if let Some(&refused) = rest.get(read) {
            tracing::debug!("KVM_GET_MSRS cannot read MSR {refused:#x}; it is not saved");
        }
        rest = rest.get(read + 1..).unwrap_or_default();
    }
    Ok(values)
}

/// Sets every saved MSR, in order; one KVM refuses makes the restore fail, since the
/// guest would otherwise run on with part of its state from the fresh vCPU.
fn write_msrs(fd: &VcpuFd, msrs: &Msrs) -> Result<(), SnapshotError> {
    let written = fd.set_msrs(msrs).map_err(kvm("SET_MSRS"))?;
    match msrs.as_slice().get(written) {
        None => Ok(()),
        Some(refused) => Err(SnapshotError::MsrRefused {
            index: refused.index,
            entry: written + 1,
            total: msrs.as_slice().len(),
        }),
    }
}

/// The MSRs as KVM_SET_MSRS takes them.
fn msr_array(values: &[Msr]) -> Result<Msrs, SnapshotError> {
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.index,
            data: m.data,
            ..Default::default()
        })
        .collect();
    // More than KVM_MAX_MSR_ENTRIES (256) cannot come from `msrs_to_save`, but a
    // deserialized state could hold anything.
    Msrs::from_entries(&entries).map_err(|_| SnapshotError::TooManyMsrs(entries.len()))
}

/// The MSRs that are guest state, as `(first, count)` ranges (the MTRRs apart, below).
/// Everything else in KVM's list is left out on purpose: the x2APIC registers and
/// IA32_APIC_BASE (the LAPIC state and sregs carry them), FS/GS base (sregs), performance
/// counters (a profiler's counts restart; nothing else reads them), the last-branch
/// records, the VMX/SVM capability MSRs and nested HSAVE (no nested virtualization),
/// Hyper-V's (Vireo's CPUID offers no Hyper-V interface), KVM's async PF
/// acknowledgement (a write-only doorbell), and what only the host sets up (microcode
/// revision, SMI count, power control).
const SAVED_MSR_RANGES: &[(u32, u32)] = &[
    (MSR_IA32_TSC, 1),
    (0x11, 2),        // MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME (kvm-clock, old numbers)
    (0x3a, 2),        // IA32_FEATURE_CONTROL, IA32_TSC_ADJUST
    (0x48, 1),        // IA32_SPEC_CTRL
    (0xce, 1),        // MSR_PLATFORM_INFO
    (0xe1, 1),        // IA32_UMWAIT_CONTROL
    (0x140, 1),       // MSR_MISC_FEATURES_ENABLES
    (0x174, 3),       // IA32_SYSENTER_CS/ESP/EIP
    (0x17a, 2),       // IA32_MCG_STATUS, IA32_MCG_CTL
    (0x1a0, 1),       // IA32_MISC_ENABLE
    (0x1c4, 2),       // IA32_XFD, IA32_XFD_ERR
    (0x1d9, 1),       // IA32_DEBUGCTL
    (0x277, 1),       // IA32_PAT
    (0xda0, 1),       // IA32_XSS
    (0xc000_0080, 1), // EFER (sregs too; setting it twice is harmless)
    (0xc000_0081, 4), // STAR, LSTAR, CSTAR, SFMASK
    (0xc000_0102, 2), // KERNEL_GS_BASE, TSC_AUX
    (0xc001_011f, 1), // AMD's VIRT_SPEC_CTRL (SSBD)
    // kvm-clock's wall clock and system time, async PF, steal time, PV EOI, poll
    // control, async PF interrupt vector.
    (0x4b56_4d00, 7),
    (MSR_IA32_TSC_DEADLINE, 1),
];

/// KVM always emulates the MTRRs but does not list them in KVM_GET_MSR_INDEX_LIST (PVM's
/// KVM neither). The guest reads and may write them, so they are guest state all the same.
const MTRR_MSRS: &[(u32, u32)] = &[
    (0x200, 16), // IA32_MTRR_PHYSBASE0..PHYSMASK7
    (0x250, 1),  // IA32_MTRR_FIX64K_00000
    (0x258, 2),  // IA32_MTRR_FIX16K_*
    (0x268, 8),  // IA32_MTRR_FIX4K_*
    (0x2ff, 1),  // IA32_MTRR_DEF_TYPE
];

fn in_ranges(ranges: &[(u32, u32)], msr: u32) -> bool {
    ranges
        .iter()
        .any(|&(first, count)| msr >= first && msr - first < count)
}

/// The MSRs a snapshot must hold on this host: KVM's list (what this KVM can get and
/// set) kept to the ones in `SAVED_MSR_RANGES`, plus the MTRRs. MSR_IA32_TSC comes first
/// and MSR_IA32_TSC_DEADLINE last, the order KVM_SET_MSRS needs: the deadline is an
/// absolute TSC value, compared with the TSC as already restored.
pub fn msrs_to_save(kvm: &Kvm) -> Vec<u32> {
    let listed = match kvm.get_msr_index_list() {
        Ok(list) => list.as_slice().to_vec(),
        Err(e) => {
            tracing::warn!("KVM_GET_MSR_INDEX_LIST failed ({e}): only the MTRRs are saved");
            Vec::new()
        }
    };
    let mut msrs: Vec<u32> = listed
        .into_iter()
        .filter(|&msr| in_ranges(SAVED_MSR_RANGES, msr))
        .collect();
    for msr in MTRR_MSRS
        .iter()
        .flat_map(|&(first, count)| first..first + count)
    {
        if !msrs.contains(&msr) {
            msrs.push(msr);
        }
    }
    msrs.sort_by_key(|&msr| match msr {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
    msrs
}

/// What KVM keeps for the whole VM: the PICs, the IOAPIC, the PIT and the KVM clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    #[serde(with = "raw")]
    pub pic_master: kvm_irqchip,
    #[serde(with = "raw")]
    pub pic_slave: kvm_irqchip,
    #[serde(with = "raw")]
    pub ioapic: kvm_irqchip,
    #[serde(with = "raw")]
    pub pit: kvm_pit_state2,
    #[serde(with = "raw")]
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    // kvm_irqchip is a union without Debug: show what identifies the state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm("GET_IRQCHIP"))?;
    Ok(chip)
}

impl VmState {
    /// Reads the irqchip, PIT and clock of `vm`, whose vCPUs are all stopped (no IPI or
    /// EOI changes the chips meanwhile). The KVM clock runs on while vCPUs are parked:
    /// read now, it includes the time the VM has been paused; `Pauser` holds the value
    /// from the moment of the pause, which the caller may put in `clock.clock` instead.
    pub fn capture(vm: &VmFd) -> Result<VmState, SnapshotError> {
        Ok(VmState {
            pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(kvm("GET_PIT2"))?,
            clock: vm.get_clock().map_err(kvm("GET_CLOCK"))?,
        })
    }

    /// Puts the state into `vm`, which has its in-kernel irqchip and PIT; call it before
    /// restoring the vCPUs. The KVM clock is set to its saved value: the guest sees no
    /// time pass while it was saved (its wall clock is put right by the agent's time
    /// sync, as after a pause). Only the value is set: KVM_CLOCK_TSC_STABLE and
    /// KVM_CLOCK_HOST_TSC are get-only, and KVM_CLOCK_REALTIME would ask KVM to add
    /// the host time elapsed since the capture.
    pub fn restore(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        // The chips before the PIT: a restored PIT may fire at once, into the chips'
        // restored state rather than a fresh one.
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(kvm("SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("SET_CLOCK"))
    }
}
