//! Saving a running guest's CPU and irqchip state and restoring it into a fresh VM, on
//! the real KVM: the guest must carry on exactly where it was saved.
//!
//! The guest is a dozen instructions of 64-bit code that count in `ebx` (adding what an
//! `IN` from `PORT_STEP` returns) and in a memory word, and write both counts out on
//! every turn of the loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_msr_entry, kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE, KVM_MP_STATE_HALTED, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vireo_vmm::x86_64::snapshot::{
    complete_pending_io, msrs_to_save, FpuState, Msr, SnapshotError, VcpuState, VmState,
};
use vireo_vmm::x86_64::{cpuid, layout, regs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::signal::Killable;

const MEM_SIZE: usize = 1 << 20;
const CODE: u64 = 0x1_0000;
/// The memory copy of the count.
const COUNTER: u64 = 0x1_1000;
/// The guest reads its step from here...
const PORT_STEP: u16 = 0x11;
/// ...and writes its register count here, and its memory count to `PORT_MEM_COUNT`.
const PORT_REG_COUNT: u16 = 0x10;
const PORT_MEM_COUNT: u16 = 0x12;
/// How long a run may take before the test calls the guest stuck (its kernel-mode code
/// is interpreted on PVM, but a turn of the loop is still well under a millisecond).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// The guest, in long mode at CPL0 (entered as the 64-bit Linux protocol would be).
#[rustfmt::skip]
const GUEST: &[u8] = &[
    0x31, 0xdb,                               // xor ebx, ebx
    // loop:
    0xe4, PORT_STEP as u8,                    // in al, PORT_STEP
    0x0f, 0xb6, 0xc0,                         // movzx eax, al
    0x01, 0xc3,                               // add ebx, eax
    0xff, 0x04, 0x25, 0x00, 0x10, 0x01, 0x00, // inc dword [COUNTER]
    0x8b, 0x04, 0x25, 0x00, 0x10, 0x01, 0x00, // mov eax, [COUNTER]
    0xe7, PORT_MEM_COUNT as u8,               // out PORT_MEM_COUNT, eax
    0x89, 0xd8,                               // mov eax, ebx
    0xe7, PORT_REG_COUNT as u8,               // out PORT_REG_COUNT, eax
    0xeb, 0xe3,                               // jmp loop (-29)
];

fn kvm() -> Option<&'static Kvm> {
    static KVM: OnceLock<Option<Kvm>> = OnceLock::new();
    let kvm = KVM.get_or_init(|| Kvm::new().ok()).as_ref();
    if kvm.is_none() {
        eprintln!("*** SKIPPED x86 snapshot test: no /dev/kvm");
    }
    kvm
}

/// A one-vCPU VM set up as `vm::boot_once` does it: TSS and identity map, memory, then
/// the irqchip and PIT, then the vCPU with the engine's CPUID and common state.
struct TestVm {
    vm: VmFd,
    mem: GuestMemoryMmap,
    vcpu: VcpuFd,
}

impl TestVm {
    fn new(kvm: &Kvm) -> TestVm {
        let vm = kvm.create_vm().unwrap();
        vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .unwrap();
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let region = mem.iter().next().unwrap();
        let slot = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the mapping lives in `mem`, which the TestVm keeps as long as `vm`.
        unsafe { vm.set_user_memory_region(slot) }.unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let tsc_khz = vcpu.get_tsc_khz().ok();
        vcpu.set_cpuid2(&cpuid::for_vcpu(&supported, 0, 1, tsc_khz))
            .unwrap();
        regs::setup_common(&vcpu).unwrap();
        TestVm { vm, mem, vcpu }
    }

    /// A VM about to run the counting guest from its start.
    fn booted(kvm: &Kvm) -> TestVm {
        let t = TestVm::new(kvm);
        t.mem.write_slice(GUEST, GuestAddress(CODE)).unwrap();
        let entry = regs::EntryMode::Linux64 {
            entry: CODE,
            boot_params: 0,
        };
        regs::setup_boot_vcpu(&t.vcpu, &t.mem, entry).unwrap();
        t
    }

    /// A fresh VM with a copy of `saved`'s memory and the saved states put back.
    fn restored(kvm: &Kvm, image: &[u8], vm_state: &VmState, vcpu_state: &VcpuState) -> TestVm {
        let t = TestVm::new(kvm);
        t.mem.write_slice(image, GuestAddress(0)).unwrap();
        vm_state.restore(&t.vm).unwrap();
        vcpu_state.restore(&t.vcpu).unwrap();
        t
    }

    fn memory_image(&self) -> Vec<u8> {
        let mut image = vec![0; MEM_SIZE];
        self.mem.read_slice(&mut image, GuestAddress(0)).unwrap();
        image
    }
}

/// What the guest wrote, port by port.
#[derive(Debug, Default, PartialEq)]
struct Output {
    reg_counts: Vec<u32>,
    mem_counts: Vec<u32>,
}

/// When a run stops: after the guest has written its `n`th register count, or when it
/// asks for the `n`th step (answering that one with `answer`).
#[derive(Clone, Copy)]
enum StopAt {
    Outputs(usize),
    Step { n: usize, answer: u8 },
}

/// Runs the guest, answering each step with 1, until `stop`.
fn run(vcpu: &mut VcpuFd, stop: StopAt) -> Output {
    let mut out = Output::default();
    let mut steps = 0;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < RUN_LIMIT, "the guest is stuck: {out:?}");
        match vcpu.run() {
            Ok(VcpuExit::IoIn(PORT_STEP, data)) => {
                steps += 1;
                data[0] = 1;
                if let StopAt::Step { n, answer } = stop {
                    if steps == n {
                        data[0] = answer;
                        return out;
                    }
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let value = u32::from_le_bytes(data.try_into().unwrap());
                match port {
                    PORT_REG_COUNT => out.reg_counts.push(value),
                    PORT_MEM_COUNT => out.mem_counts.push(value),
                    _ => panic!("write to unexpected port {port:#x}"),
                }
                if matches!(stop, StopAt::Outputs(n) if out.reg_counts.len() == n) {
                    return out;
                }
            }
            Ok(other) => panic!("unexpected exit {other:?} after {out:?}"),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => panic!("KVM_RUN failed: {e}"),
        }
    }
}

fn no_more_io(exit: VcpuExit<'_>) {
    panic!("a plain IN/OUT needs no more I/O to complete, got {exit:?}");
}

/// Everything a snapshot of the test VM holds.
struct Snapshot {
    vcpu: VcpuState,
    vm: VmState,
    memory: Vec<u8>,
}

/// Runs a fresh guest until `stop` and saves it, the vCPU's part on the thread owning
/// its fd (as the engine's parked vCPU threads will), pending I/O completed first unless
/// `complete` is false.
fn run_and_save(kvm: &'static Kvm, stop: StopAt, complete: bool) -> (Output, Snapshot) {
    let TestVm { vm, mem, vcpu } = TestVm::booted(kvm);
    let owner = std::thread::spawn(move || {
        let mut vcpu = vcpu;
        let out = run(&mut vcpu, stop);
        if complete {
            complete_pending_io(&mut vcpu, no_more_io).unwrap();
        }
        let state = VcpuState::capture(&mut vcpu, &msrs_to_save(kvm)).unwrap();
        (out, state, vcpu)
    });
    let (out, vcpu_state, vcpu) = owner.join().unwrap();
    let source = TestVm { vm, mem, vcpu };
    let snapshot = Snapshot {
        vcpu: vcpu_state,
        vm: VmState::capture(&source.vm).unwrap(),
        memory: source.memory_image(),
    };
    (out, snapshot)
}

/// Restores `snapshot` (through JSON, as a saved file would) into a fresh VM and runs it
/// until it has written `n` more counts.
fn restore_and_run(kvm: &Kvm, snapshot: &Snapshot, n: usize) -> Output {
    let vcpu: VcpuState =
        serde_json::from_str(&serde_json::to_string(&snapshot.vcpu).unwrap()).unwrap();
    let vm: VmState = serde_json::from_str(&serde_json::to_string(&snapshot.vm).unwrap()).unwrap();
    let mut restored = TestVm::restored(kvm, &snapshot.memory, &vm, &vcpu);
    run(&mut restored.vcpu, StopAt::Outputs(n))
}

fn counts(range: std::ops::RangeInclusive<u32>) -> Output {
    Output {
        reg_counts: range.clone().collect(),
        mem_counts: range.collect(),
    }
}

#[test]
fn a_restored_guest_counts_on_from_where_it_was_saved() {
    let Some(kvm) = kvm() else { return };
    let (before, snapshot) = run_and_save(kvm, StopAt::Outputs(5), true);
    assert_eq!(before, counts(1..=5));
    let saved_counter = &snapshot.memory[COUNTER as usize..COUNTER as usize + 4];
    assert_eq!(saved_counter, 5u32.to_le_bytes());
    assert_eq!(restore_and_run(kvm, &snapshot, 5), counts(6..=10));
}

/// An `IN` answered just before the pause: its value reaches the guest only because the
/// pending I/O was completed; the guest, restored elsewhere, must have used it.
#[test]
fn an_in_answered_before_the_save_reaches_the_restored_guest() {
    let Some(kvm) = kvm() else { return };
    let stop = StopAt::Step { n: 6, answer: 100 };
    let (before, snapshot) = run_and_save(kvm, stop, true);
    assert_eq!(before, counts(1..=5));
    let after = restore_and_run(kvm, &snapshot, 2);
    assert_eq!(after.reg_counts, [105, 106]);
    assert_eq!(after.mem_counts, [6, 7]);
}

/// Why the capture caller must complete pending I/O: without it the saved `rip` is still
/// on the `IN`, so the restored guest asks again and the answer given before the save is
/// lost. (An `OUT` can be repeated the same way under hardware KVM, whose fast path only
/// moves `rip` past it on the next `KVM_RUN`; PVM emulates our guest's kernel-mode `OUT`,
/// which moves `rip` at once, so this host cannot show that half.)
#[test]
fn without_completing_pending_io_an_answered_in_is_asked_again() {
    let Some(kvm) = kvm() else { return };
    let stop = StopAt::Step { n: 6, answer: 100 };
    let (_, snapshot) = run_and_save(kvm, stop, false);
    assert_eq!(restore_and_run(kvm, &snapshot, 1).reg_counts, [6]);
}

#[test]
fn the_tsc_and_kvm_clock_msrs_are_saved_in_set_order() {
    let Some(kvm) = kvm() else { return };
    let msrs = msrs_to_save(kvm);
    eprintln!("MSRs saved on this host: {msrs:x?}");
    assert_eq!(msrs.first(), Some(&0x10), "MSR_IA32_TSC first");
    for must in [0x174, 0x277, 0xc000_0082, 0xc000_0102, 0x4b56_4d01, 0x2ff] {
        assert!(msrs.contains(&must), "MSR {must:#x} missing from {msrs:x?}");
    }
    if let Some(deadline) = msrs.iter().position(|&m| m == 0x6e0) {
        assert_eq!(deadline, msrs.len() - 1, "MSR_IA32_TSC_DEADLINE last");
    }
    let vm = TestVm::new(kvm);
    let mut vcpu = vm.vcpu;
    let state = VcpuState::capture(&mut vcpu, &msrs).unwrap();
    let saved: Vec<u32> = state.msrs.iter().map(|m| m.index).collect();
    eprintln!("MSRs KVM could read: {} of {}", saved.len(), msrs.len());
    assert!(saved.contains(&0x10) && saved.contains(&0x4b56_4d01));
}

#[test]
fn an_msr_the_vcpu_does_not_have_is_refused() {
    let Some(kvm) = kvm() else { return };
    let TestVm { vcpu, .. } = TestVm::booted(kvm);
    let mut vcpu = vcpu;
    let mut state = VcpuState::capture(&mut vcpu, &msrs_to_save(kvm)).unwrap();
    // In KVM's own paravirtual range, but no MSR of this (or any) KVM.
    state.msrs.push(Msr {
        index: 0x4b56_4dff,
        data: 1,
    });
    let target = TestVm::new(kvm);
    match state.restore(&target.vcpu) {
        Err(SnapshotError::MsrRefused { index, .. }) => assert_eq!(index, 0x4b56_4dff),
        other => panic!("expected the unknown MSR refused, got {other:?}"),
    }
    // More than one KVM_SET_MSRS takes: only a corrupt or foreign state holds that many.
    state.msrs = vec![state.msrs[0]; 300];
    match state.restore(&target.vcpu) {
        Err(SnapshotError::TooManyMsrs(300)) => {}
        other => panic!("expected 300 MSRs refused, got {other:?}"),
    }
}

#[test]
fn a_truncated_state_is_refused() {
    let Some(kvm) = kvm() else { return };
    let TestVm { vm, vcpu, .. } = TestVm::booted(kvm);
    let mut vcpu = vcpu;
    let state = VcpuState::capture(&mut vcpu, &msrs_to_save(kvm)).unwrap();

    let mut json = serde_json::to_value(&state).unwrap();
    json["sregs"].as_array_mut().unwrap().pop();
    let err = serde_json::from_value::<VcpuState>(json).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    let mut json = serde_json::to_value(VmState::capture(&vm).unwrap()).unwrap();
    json["ioapic"].as_array_mut().unwrap().truncate(100);
    assert!(serde_json::from_value::<VmState>(json).is_err());

    if let FpuState::Xsave(words) = &state.fpu {
        let mut short = state.clone();
        short.fpu = FpuState::Xsave(words[..words.len() - 1].to_vec());
        let target = TestVm::new(kvm);
        match short.restore(&target.vcpu) {
            Err(SnapshotError::Size { what, .. }) => assert_eq!(what, "XSAVE area"),
            other => panic!("expected the short XSAVE area refused, got {other:?}"),
        }
    }
}

#[test]
fn states_survive_a_json_round_trip() {
    let Some(kvm) = kvm() else { return };
    let t = TestVm::booted(kvm);
    let mut vcpu = t.vcpu;
    let vcpu_state = VcpuState::capture(&mut vcpu, &msrs_to_save(kvm)).unwrap();
    let vm_state = VmState::capture(&t.vm).unwrap();

    let json = serde_json::to_string(&vcpu_state).unwrap();
    let back: VcpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert_eq!(back.regs, vcpu_state.regs);
    assert_eq!(back.sregs, vcpu_state.sregs);
    assert_eq!(back.msrs, vcpu_state.msrs);
    assert_eq!(back.fpu, vcpu_state.fpu);

    let json = serde_json::to_string(&vm_state).unwrap();
    let back: VmState = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert_eq!(back.pit, vm_state.pit);
    assert_eq!(back.clock, vm_state.clock);
}

/// Where the SSE registers live in the XSAVE area (the legacy FXSAVE layout), and the
/// header's XSTATE_BV, whose FP and SSE bits say those parts are not in their init state.
const XSAVE_XMM0_WORD: usize = 160 / 4;
const XSAVE_XSTATE_BV_WORD: usize = 512 / 4;
const XSTATE_FP_SSE: u32 = 0b11;

/// XSAVE carries the SSE registers across. The pattern goes in with KVM_SET_XSAVE, as the
/// guest's own XSAVE would leave it (the guest cannot run FXSAVE/XRSTOR itself on PVM;
/// KVM_SET_FPU would not do: it leaves XSTATE_BV saying "init", so KVM's XSAVE view of
/// its registers is all zeros).
#[test]
fn vector_registers_are_restored() {
    let Some(kvm) = kvm() else { return };
    let source = TestVm::new(kvm);
    let xsave_size = source.vm.check_extension_int(Cap::Xsave2);
    eprintln!("KVM_CAP_XSAVE2: {xsave_size}");
    assert!(
        xsave_size <= 4096,
        "KVM_GET_XSAVE no longer holds the whole XSAVE state: use KVM_GET_XSAVE2"
    );
    let Ok(mut xsave) = source.vcpu.get_xsave() else {
        eprintln!("*** SKIPPED: KVM_GET_XSAVE is not supported here");
        return;
    };
    let xmm0 = *b"vireo snapshot!\0";
    let pattern: Vec<u32> = xmm0
        .chunks(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .collect();
    xsave.region[XSAVE_XMM0_WORD..XSAVE_XMM0_WORD + 4].copy_from_slice(&pattern);
    xsave.region[XSAVE_XSTATE_BV_WORD] |= XSTATE_FP_SSE;
    // SAFETY: KVM_CAP_XSAVE2 is at most 4096 (checked above), the size of `xsave`.
    unsafe { source.vcpu.set_xsave(&xsave) }.unwrap();
    let mut vcpu = source.vcpu;
    let state = VcpuState::capture(&mut vcpu, &[]).unwrap();
    assert!(matches!(state.fpu, FpuState::Xsave(_)));

    let target = TestVm::new(kvm);
    state.restore(&target.vcpu).unwrap();
    let restored = target.vcpu.get_xsave().unwrap();
    assert_eq!(
        restored.region[XSAVE_XMM0_WORD..XSAVE_XMM0_WORD + 4],
        pattern
    );
    let fpu = target.vcpu.get_fpu().unwrap();
    assert_eq!(fpu.xmm[0], xmm0);
}

/// `hlt` for ever: with the in-kernel LAPIC and interrupts off, KVM_RUN blocks until a
/// signal kicks the thread out.
const HALTING_GUEST: &[u8] = &[0xf4, 0xeb, 0xfd]; // hlt; jmp hlt

/// The engine's situation: a vCPU thread blocked in KVM_RUN, kicked out by the signal
/// `pause` sends, saves its own vCPU. A halted vCPU is saved halted and restored halted.
#[test]
fn a_kicked_vcpu_thread_saves_its_halted_vcpu() {
    let Some(kvm) = kvm() else { return };
    vireo_vmm::vcpu::install_kick_handler().unwrap();
    let t = TestVm::new(kvm);
    t.mem
        .write_slice(HALTING_GUEST, GuestAddress(CODE))
        .unwrap();
    let entry = regs::EntryMode::Linux64 {
        entry: CODE,
        boot_params: 0,
    };
    regs::setup_boot_vcpu(&t.vcpu, &t.mem, entry).unwrap();
    let save = Arc::new(AtomicBool::new(false));
    let owner = {
        let save = Arc::clone(&save);
        let mut vcpu = t.vcpu;
        std::thread::spawn(move || loop {
            match vcpu.run() {
                Err(e) if e.errno() == libc::EINTR => {}
                other => panic!("a halted vCPU left KVM_RUN with {other:?}"),
            }
            if save.load(Ordering::Acquire) {
                complete_pending_io(&mut vcpu, no_more_io).unwrap();
                return VcpuState::capture(&mut vcpu, &msrs_to_save(kvm)).unwrap();
            }
        })
    };
    // Let it halt, then kick until it answers (a kick before KVM_RUN is lost).
    std::thread::sleep(Duration::from_millis(50));
    save.store(true, Ordering::Release);
    while !owner.is_finished() {
        owner.kill(vireo_vmm::vcpu::kick_signal()).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let state = owner.join().unwrap();
    assert_eq!(state.mp_state.mp_state, KVM_MP_STATE_HALTED);
    assert_eq!(state.regs.rip, CODE + 1, "saved just past the hlt");

    let target = TestVm::new(kvm);
    state.restore(&target.vcpu).unwrap();
    assert_eq!(
        target.vcpu.get_mp_state().unwrap().mp_state,
        KVM_MP_STATE_HALTED
    );
    assert_eq!(target.vcpu.get_regs().unwrap().rip, CODE + 1);
}

/// Local APIC registers and the timer's TSC-deadline mode (Intel SDM vol. 3, 11.5.4).
const APIC_SPURIOUS: usize = 0xf0;
const APIC_SOFTWARE_ENABLE: u32 = 1 << 8;
const APIC_LVT_TIMER: usize = 0x320;
const APIC_TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

fn set_lapic_reg(lapic: &mut kvm_bindings::kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as _;
    }
}

fn read_msr(vcpu: &VcpuFd, index: u32) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1, "MSR {index:#x}");
    msrs.as_slice()[0].data
}

/// A LAPIC timer armed in TSC-deadline mode stays armed: KVM only takes the deadline
/// MSR once the LAPIC's timer is in that mode, so the LAPIC must be restored first.
#[test]
fn an_armed_tsc_deadline_timer_stays_armed() {
    let Some(kvm) = kvm() else { return };
    let msrs = msrs_to_save(kvm);
    if !msrs.contains(&MSR_IA32_TSC_DEADLINE) {
        eprintln!("*** SKIPPED: this KVM has no TSC-deadline timer");
        return;
    }
    let source = TestVm::new(kvm);
    let mut lapic = source.vcpu.get_lapic().unwrap();
    set_lapic_reg(&mut lapic, APIC_SPURIOUS, APIC_SOFTWARE_ENABLE | 0xff);
    set_lapic_reg(&mut lapic, APIC_LVT_TIMER, APIC_TIMER_TSC_DEADLINE | 0xec);
    source.vcpu.set_lapic(&lapic).unwrap();
    // An hour of TSC ticks away at any frequency KVM reports: it will not fire.
    let deadline = read_msr(&source.vcpu, MSR_IA32_TSC) + (1 << 50);
    let entry = kvm_msr_entry {
        index: MSR_IA32_TSC_DEADLINE,
        data: deadline,
        ..Default::default()
    };
    source
        .vcpu
        .set_msrs(&Msrs::from_entries(&[entry]).unwrap())
        .unwrap();
    let mut vcpu = source.vcpu;
    let state = VcpuState::capture(&mut vcpu, &msrs).unwrap();

    let target = TestVm::new(kvm);
    state.restore(&target.vcpu).unwrap();
    assert_eq!(read_msr(&target.vcpu, MSR_IA32_TSC_DEADLINE), deadline);
}

/// The KVM clock goes on from its saved value in the new VM, whatever flags it was saved
/// with, and the PIT's programming comes back.
fn realtime_ns() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since_epoch.as_nanos() as u64
}

#[test]
fn the_kvm_clock_and_pit_are_restored() {
    let Some(kvm) = kvm() else { return };
    let source = TestVm::new(kvm);
    // Move the source's clock far from a new VM's (which starts near 0).
    let mut clock = source.vm.get_clock().unwrap();
    clock.clock += 3_600_000_000_000;
    clock.flags = 0;
    source.vm.set_clock(&clock).unwrap();
    let mut pit = source.vm.get_pit2().unwrap();
    pit.channels[0].count = 0x1234;
    pit.channels[0].mode = 2;
    source.vm.set_pit2(&pit).unwrap();
    let mut state = VmState::capture(&source.vm).unwrap();
    // As a host with a stable TSC reports it (PVM's does not). Were KVM_CLOCK_REALTIME
    // passed on, KVM would add the hour since this `realtime` to the clock.
    state.clock.flags |= KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME;
    state.clock.realtime = realtime_ns() - 3_600_000_000_000;

    let target = TestVm::new(kvm);
    state.restore(&target.vm).unwrap();
    let now = target.vm.get_clock().unwrap().clock;
    let since_save = now.wrapping_sub(state.clock.clock);
    assert!(
        since_save < 1_000_000_000,
        "clock {now} ns, saved {} ns",
        state.clock.clock
    );
    let restored = target.vm.get_pit2().unwrap();
    assert_eq!(restored.channels[0].count, 0x1234);
    assert_eq!(restored.channels[0].mode, 2);
}
