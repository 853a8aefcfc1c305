//! A VM from start to stop: KVM VM with the in-kernel irqchip and PIT, guest memory,
//! ACPI tables, the kernel, the legacy devices, one thread per vCPU; then wait for the
//! first `ExitReason` and tear everything down, leaving no thread or fd behind.

use std::os::unix::thread::JoinHandleExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{self, DisplayConfig, RebootPolicy, VmConfig};
use crate::console::ConsoleInput;
use crate::control::protocol::{PointerButton, Request, Response};
use crate::control::{self, ControlServer};
use crate::devices::acpi_pm::{self, AcpiPmDevice, PowerButton};
use crate::devices::cmos::{self, Cmos};
use crate::devices::i8042::{self, I8042};
use crate::devices::serial::{ConsoleSink, SerialDevice, COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN};
use crate::devices::virtio::balloon::policy::{self as balloon_policy, Autopilot, BalloonPolicy};
use crate::devices::virtio::balloon::{Balloon, BalloonHandle};
use crate::devices::virtio::block::{Block, BlockError, Disk};
use crate::devices::virtio::gpu::{Gpu, GpuError, GpuHandle};
use crate::devices::virtio::input::event::{self as evdev, InputEvent, InputKind};
use crate::devices::virtio::input::{Input, InputHandle};
use crate::devices::virtio::io_counters::IoCounters;
use crate::devices::virtio::net::{self, Net, NetError};
use crate::devices::virtio::quiesce::DeviceGate;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockConfigError, VsockListener};
use crate::devices::virtio::VirtioDevice;
use crate::devices::{lock, PioBus};
use crate::doctor::{self, KvmOpenError};
use crate::exit::{ExitReason, ExitSender};
use crate::pause::{PauseError, Pauser};
use crate::pci::irq::GsiRouter;
use crate::pci::root::{PciConfigPorts, PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};
use crate::pci::virtio_pci::VirtioPciDevice;
use crate::pci::PciMmio;
use crate::resources::Resources;
use crate::snapshot::{self, migrate, DiskStamp, Hardware, LegacyState, MachineState};
use crate::socket_path::Live;
use crate::x86_64::snapshot::{self as cpu_state, VcpuState, VmState};
use crate::x86_64::{cpuid, layout, regs};
use crate::{acpi, boot, console, vcpu};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kvm(#[from] KvmOpenError),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    #[error(transparent)]
    VcpuSetup(#[from] regs::Error),
    #[error("KVM refused to {what}: {source}")]
    KvmSetup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {size} MiB of guest memory: {detail}")]
    GuestMemory { size: u64, detail: String },
    #[error(transparent)]
    Cpu(#[from] crate::resources::cpu::CpuError),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot set up a PCI device: {0}")]
    Pci(#[source] crate::pci::virtio_pci::Error),
    #[error("too many devices for PCI bus 0 or its MMIO window")]
    PciFull,
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error(transparent)]
    Vsock(#[from] VsockConfigError),
    #[error("cannot set up the vsock device: {0}")]
    VsockDevice(#[source] std::io::Error),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    #[error("cannot restore {path}: {why}")]
    Restore { path: String, why: String },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::KvmSetup { what, source }
}

/// Where the guest's console goes and where its input comes from.
pub struct Console {
    pub output: ConsoleSink,
    pub input: ConsoleInput,
}

/// Runs the VM until it stops for good (power-off, crash, the user; a reboot too unless
/// the policy restarts it) and says why.
pub fn run(config: &VmConfig, console: &Console) -> Result<ExitReason, Error> {
    // The user's own mistakes first, so they hear about them on any host.
    config::check_memory(config.memory, doctor::host_memory_bytes())?;
    config::check_vcpus(u32::from(config.vcpus), config::MAX_VCPUS)?;
    boot::detect_format(&config.boot.kernel)?;
    if let Some(initrd) = &config.boot.initrd {
        std::fs::File::open(initrd).map_err(|source| boot::Error::InitrdUnreadable {
            path: initrd.clone(),
            source,
        })?;
    }
    if let Some(net) = &config.net {
        net::check_backend(net)?;
    }
    // Bound once for every boot; dropping it at the end removes the socket file.
    let vsock = match &config.vsock {
        Some(v) => {
            // The flag parser checked it; a config built otherwise may not have been.
            v.validate()?;
            // A destination on this host takes the source's socket over (`socket_path`).
            let live = if config.incoming.is_some() {
                Live::TakeOver
            } else {
                Live::Refuse
            };
            Some(VsockListener::bind_with(&v.socket, live)?)
        }
        None => None,
    };
    // Listening before anything else, so the source can be told to start at once.
    let incoming = match &config.incoming {
        Some(endpoint) => Some(endpoint.listen().map_err(|e| Error::Restore {
            path: format!("{endpoint:?}"),
            why: format!("cannot listen for the migration: {e}"),
        })?),
        None => None,
    };
    let kvm = doctor::open_kvm(&config.kvm_device)?;
    config::check_vcpus(u32::from(config.vcpus), kvm.get_max_vcpus() as u32)?;
    // Until the VM ends: a cgroup the engine made is left and removed with this.
    let _cpu = crate::resources::cpu::start(&config.cpu)?;
    vcpu::install_kick_handler().map_err(Error::Thread)?;
    let mut origin = match (&config.restore, &incoming) {
        (Some(path), _) => Origin::File(path),
        (None, Some(listener)) => Origin::Incoming(listener),
        (None, None) => Origin::Boot,
    };
    loop {
        let reason = boot_once(&kvm, config, console, vsock.as_ref(), origin)?;
        if reason != ExitReason::Reboot || config.reboot != RebootPolicy::Restart {
            return Ok(reason);
        }
        tracing::info!("guest rebooted: starting it again");
        // A rebooted guest starts afresh, whatever it was restored from.
        origin = Origin::Boot;
    }
}

/// Where a run's guest comes from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Boot,
    File(&'a Path),
    Incoming(&'a migrate::Incoming),
}

/// One boot of the guest (or one run from a snapshot), from a fresh VM to its teardown.
fn boot_once(
    kvm: &Kvm,
    config: &VmConfig,
    console: &Console,
    vsock: Option<&VsockListener>,
    origin: Origin<'_>,
) -> Result<ExitReason, Error> {
    // A snapshot that cannot be used is refused before anything is built.
    let snapshot = match origin {
        Origin::File(path) => {
            let snapshot = snapshot::file::read(path)?;
            snapshot.state.check_fits(config)?;
            Some(snapshot)
        }
        _ => None,
    };
    let vm = Arc::new(create_vm(kvm)?);
    // Guest memory before the irqchip: on PVM the first memory slot added after the
    // irqchip waits 5-12 ms (a grace period), before it costs 0.1 ms.
    let mem = match &snapshot {
        Some(s) => snapshot::map_memory(s, config.memory)?,
        None => allocate_memory(config.memory)?,
    };
    register_memory(&vm, &mem, false)?;
    if config.ksm {
        crate::resources::memory::offer_to_ksm(&mem).map_err(|e| Error::GuestMemory {
            size: config.memory >> 20,
            detail: format!("cannot offer it to KSM: {e}"),
        })?;
    }
    create_irqchip(&vm)?;
    tracing::debug!("VM created");
    // A migration's memory and state arrive before the devices are built: the source
    // lets go of the disk images only once it has stopped the guest.
    let mut incoming = None;
    let state = match (origin, snapshot) {
        (Origin::Incoming(listener), _) => {
            let (stream, state) = receive_migration(listener, &mem, config)?;
            incoming = Some(stream);
            Some(state)
        }
        (_, Some(snapshot)) => Some(snapshot.state),
        _ => None,
    };
    let entry = match &state {
        Some(_) => None,
        None => {
            acpi::create_tables(&mem, config.vcpus)?;
            Some(boot::load(&mem, config.memory, &config.boot)?)
        }
    };
    tracing::debug!("kernel loaded");

    let (exit_tx, exit_rx) = ExitSender::channel();
    let (mut pio, legacy) = legacy_devices(&vm, config, console, &exit_tx)?;
    let (pci, mut handles) = pci_devices(&vm, &mem, config, vsock)?;
    let images = std::mem::take(&mut handles.images);
    pio.insert(
        PCI_CONFIG_PORT,
        PCI_CONFIG_PORT_LEN,
        Arc::new(Mutex::new(PciConfigPorts::new(pci.0.clone()))),
    );
    let pio = Arc::new(pio);
    let pauser = Arc::new(Pauser::with_devices(DeviceGate::process()));
    let saves = Arc::new(SaveReplies::default());
    tracing::debug!("devices created");

    let fds = create_vcpus(kvm, &vm, &mem, config.vcpus, entry)?;
    if let Some(state) = &state {
        let from = match origin {
            Origin::File(path) => path.display().to_string(),
            _ => "the migration".to_string(),
        };
        let restored = restore_machine(state, &vm, &fds, &legacy, &pci);
        if let (Err(why), Some(stream)) = (&restored, incoming.as_mut()) {
            migrate::answer(&mut **stream, &Err(why.clone()));
        }
        restored.map_err(|why| Error::Restore {
            path: from.clone(),
            why,
        })?;
        tracing::info!("restored from {from}");
    }
    // The control socket opens once the machine is whole: a request (a screenshot, a
    // key) must not reach a device before its restored state is in.
    let _control = match &config.control_socket {
        Some(path) => Some(ControlServer::start_with(
            path,
            match origin {
                Origin::Incoming(_) => Live::TakeOver,
                _ => Live::Refuse,
            },
            Arc::new(VmControl::new(
                config,
                exit_tx.clone(),
                handles,
                (Arc::clone(&vm), Arc::clone(&pauser), legacy.button.clone()),
                Arc::clone(&saves),
            )),
        )?),
        None => None,
    };
    tracing::debug!("vCPUs created");
    let mut machine = Machine {
        kvm,
        config,
        vm,
        mem,
        pio,
        pci,
        legacy,
        pauser,
        exit: exit_tx.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        threads: Vec::new(),
        held_clock: None,
        images,
    };
    let migrated_paused = incoming.is_some() && state.as_ref().is_some_and(|s| s.paused);
    machine.start_vcpus(fds, config.start_paused || migrated_paused)?;
    if let Some(mut stream) = incoming {
        // Host programs reach the guest here from now on (a no-op unless the source,
        // on this host, still held the vsock socket's path).
        if let Some(Err(e)) = vsock.map(VsockListener::claim) {
            tracing::warn!("cannot move the vsock socket over the source's: {e}");
        }
        migrate::answer(&mut *stream, &Ok(()));
    }
    tracing::debug!("vCPUs started");
    let input = console::spawn_input(
        &console.input,
        machine.legacy.serial.clone(),
        exit_tx.clone(),
    );
    drop(exit_tx);

    // Every vCPU thread holds a sender, so this returns when something ends the VM.
    let reason = loop {
        let reason = exit_rx
            .recv()
            .unwrap_or_else(|_| ExitReason::Crash("every vCPU stopped".into()));
        let (result, done) = match reason {
            ExitReason::SaveRequested(path) => (machine.save(&path), ExitReason::Saved(path)),
            ExitReason::MigrateRequested(to) => (machine.migrate(&to), ExitReason::Migrated(to)),
            other => break other,
        };
        let finished = result.is_ok();
        saves.answer(result);
        if finished {
            break done;
        }
    };
    saves.close();
    tracing::debug!("stopping: {reason}");
    machine.stop_vcpus();
    tracing::debug!("vCPUs stopped");
    if let Some(input) = input {
        input.stop();
    }
    Ok(reason)
}

/// A built VM and what runs it: what a save reads, and what carries on if it fails.
struct Machine<'a> {
    kvm: &'a Kvm,
    config: &'a VmConfig,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    pio: Arc<PioBus>,
    pci: PciMmio,
    legacy: Legacy,
    pauser: Arc<Pauser>,
    exit: ExitSender,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<VcpuFd>>,
    /// The KVM clock at the pause a save began with.
    held_clock: Option<kvm_bindings::kvm_clock_data>,
    /// The disks' images, whose locks a migration hands over.
    images: Vec<Arc<Mutex<Disk>>>,
}

impl Machine<'_> {
    /// Starts a thread per vCPU, parked from the start if `paused`.
    fn start_vcpus(&mut self, fds: Vec<VcpuFd>, paused: bool) -> Result<(), Error> {
        self.stop = Arc::new(AtomicBool::new(false));
        self.pauser.reopen(&self.vm, paused);
        self.threads = spawn_vcpus(
            fds,
            &self.pio,
            &self.pci,
            &self.exit,
            (&self.stop, &self.pauser),
        )?;
        self.pauser
            .set_threads(self.threads.iter().map(|t| t.as_pthread_t()).collect());
        Ok(())
    }

    /// Ends every vCPU thread (a paused one without running again) and returns the fds.
    fn stop_vcpus(&mut self) -> Vec<Option<VcpuFd>> {
        // The flag first: a parked thread that `close` wakes must not enter the guest.
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.pauser.close();
        vcpu::stop_all(std::mem::take(&mut self.threads), &self.stop)
    }

    /// Saves the whole machine to `path` and leaves it stopped; if anything fails, the
    /// VM carries on where it was (paused if it was paused before).
    fn save(&mut self, path: &Path) -> Result<(), String> {
        let stopped = self.stop_and_capture()?;
        let anonymous = self.config.restore.is_none();
        match snapshot::file::write(path, &stopped.state, &self.mem, anonymous) {
            Ok(()) => {
                tracing::info!("saved to {}", path.display());
                Ok(())
            }
            Err(e) => self.carry_on(stopped, e.to_string()),
        }
    }

    /// Pauses the guest (if it runs), ends the vCPU threads and captures everything but
    /// memory; the devices' workers stop too. If the capture fails the VM runs on.
    fn stop_and_capture(&mut self) -> Result<Stopped, String> {
        let was_paused = self.pauser.is_paused();
        if !was_paused {
            self.pauser.pause(&self.vm).map_err(|e| e.to_string())?;
        }
        self.held_clock = self.pauser.held_clock();
        let fds = self.stop_vcpus();
        let Some(mut fds) = fds.into_iter().collect::<Option<Vec<VcpuFd>>>() else {
            // A vCPU thread died: its exit reason is on the way; nothing to resume.
            return Err("a vCPU thread had ended; the VM is stopping".into());
        };
        match self.capture(&mut fds) {
            Ok(state) => Ok(Stopped {
                fds,
                state,
                was_paused,
            }),
            Err(why) => {
                tracing::warn!("the VM carries on here: {why}");
                self.restart_vcpus(fds, was_paused);
                Err(why)
            }
        }
    }

    /// Moves the VM to the engine listening at `to` (`--incoming`): memory while the
    /// guest runs, then the rest with it stopped. Returns once the destination runs the
    /// guest; on any failure the VM runs on here.
    fn migrate(&mut self, to: &str) -> Result<(), String> {
        let endpoint: migrate::Endpoint = to.parse()?;
        let started = std::time::Instant::now();
        // Memory mapped from a snapshot file is not zero where it is not resident.
        let anonymous = self.config.restore.is_none();
        let mut sender = migrate::Sender::start(&endpoint, &self.mem, anonymous)
            .map_err(|e| format!("cannot reach the destination {to}: {e}"))?;
        self.log_dirty(true)?;
        let precopy = self.precopy(&mut sender);
        if let Err(why) = precopy {
            let _ = self.log_dirty(false);
            return Err(why);
        }
        let stopped_at = std::time::Instant::now();
        let mut stopped = match self.stop_and_capture() {
            Ok(stopped) => stopped,
            Err(why) => {
                let _ = self.log_dirty(false);
                return Err(why);
            }
        };
        stopped.state.paused = stopped.was_paused;
        for image in &self.images {
            lock(image).release_lock();
        }
        let finished = self.stop_and_copy(sender, &stopped.state);
        match finished {
            Ok(bytes) => {
                tracing::info!(
                    "migrated to {to}: {} MiB sent in {:?}, guest stopped for {:?}",
                    bytes >> 20,
                    started.elapsed(),
                    stopped_at.elapsed()
                );
                Ok(())
            }
            Err(why) => {
                for image in &self.images {
                    if let Err(e) = lock(image).take_lock_again() {
                        tracing::error!("after a failed migration: {e}");
                    }
                }
                let _ = self.log_dirty(false);
                self.carry_on(stopped, why)
            }
        }
    }

    /// Pre-copy: everything once, then what the guest dirtied, round after round,
    /// until little is left.
    fn precopy(&self, sender: &mut migrate::Sender) -> Result<(), String> {
        let io = |e: std::io::Error| format!("the migration stream broke: {e}");
        let mut sent = sender.send_all().map_err(io)?;
        let mut round = 1;
        loop {
            let dirty = sender.send_dirty(&self.dirty_bitmaps()?).map_err(io)?;
            tracing::debug!("migration round {round}: {dirty} dirty pages ({sent} before)");
            if migrate::converged(round, dirty) {
                return Ok(());
            }
            sent = dirty;
            round += 1;
        }
    }

    /// With the guest stopped: the last dirty pages, the pages devices wrote, the state.
    fn stop_and_copy(
        &self,
        mut sender: migrate::Sender,
        state: &MachineState,
    ) -> Result<u64, String> {
        let io = |e: std::io::Error| format!("the migration stream broke: {e}");
        sender.send_dirty(&self.dirty_bitmaps()?).map_err(io)?;
        sender.send_changed().map_err(io)?;
        sender.finish(state)
    }

    /// Turns KVM's dirty-page log on or off for every memory slot.
    fn log_dirty(&self, on: bool) -> Result<(), String> {
        register_memory(&self.vm, &self.mem, on).map_err(|e| e.to_string())
    }

    /// Each slot's dirty bitmap since the last call (KVM clears it as it reports).
    fn dirty_bitmaps(&self) -> Result<Vec<Vec<u64>>, String> {
        self.mem
            .iter()
            .enumerate()
            .map(|(slot, region)| {
                self.vm
                    .get_dirty_log(slot as u32, region.len() as usize)
                    .map_err(|e| format!("KVM cannot report dirty pages: {e}"))
            })
            .collect()
    }

    /// Everything but memory, with the vCPUs stopped; the devices' workers stop too.
    fn capture(&self, fds: &mut [VcpuFd]) -> Result<MachineState, String> {
        let msrs = cpu_state::msrs_to_save(self.kvm);
        let ctx = vcpu::VcpuContext {
            pio: self.pio.clone(),
            mmio: self.pci.clone(),
            exit: self.exit.clone(),
            stop: self.stop.clone(),
            pauser: self.pauser.clone(),
        };
        let mut vcpus = Vec::with_capacity(fds.len());
        for (index, fd) in fds.iter_mut().enumerate() {
            vcpu::complete_pending_io(fd, &ctx).map_err(|e| format!("vCPU {index}: {e}"))?;
            vcpus.push(VcpuState::capture(fd, &msrs).map_err(|e| format!("vCPU {index}: {e}"))?);
        }
        let mut vm = VmState::capture(&self.vm).map_err(|e| e.to_string())?;
        // The clock of the moment the guest stopped, not of now.
        if let Some(held) = self.held_clock {
            vm.clock.clock = held.clock;
        }
        let bus = lock(&self.pci.0).save().map_err(|e| e.to_string())?;
        let disks = self
            .config
            .disks
            .iter()
            .map(|d| DiskStamp::of(&d.path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot read a disk's size and time: {e}"));
        let disks = match disks {
            Ok(d) => d,
            Err(why) => {
                // The devices stopped: start them again before giving up.
                let _ = lock(&self.pci.0).restore(&bus);
                return Err(why);
            }
        };
        let state = MachineState {
            hardware: Hardware::of(self.config),
            disks,
            vcpus,
            vm,
            legacy: LegacyState {
                serial: lock(&self.legacy.serial).save(),
                cmos: lock(&self.legacy.cmos).save(),
            },
            bus,
            saved_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            // The caller knows; a save runs the guest when it is restored.
            paused: false,
        };
        Ok(state)
    }

    /// A save or migration failed after the capture: restart the devices it stopped
    /// and the vCPUs, and report why.
    fn carry_on(&mut self, stopped: Stopped, why: String) -> Result<(), String> {
        tracing::warn!("the VM carries on here: {why}");
        if let Err(e) = lock(&self.pci.0).restore(&stopped.state.bus) {
            self.exit.send(ExitReason::Crash(format!(
                "after a failed save the devices did not restart: {e}"
            )));
        }
        // The guest's clock stood still meanwhile.
        if let Err(e) = stopped.state.vm.restore(&self.vm) {
            tracing::warn!("after a failed save: {e}");
        }
        self.restart_vcpus(stopped.fds, stopped.was_paused);
        Err(why)
    }

    fn restart_vcpus(&mut self, fds: Vec<VcpuFd>, paused: bool) {
        if let Err(e) = self.start_vcpus(fds, paused) {
            self.exit.send(ExitReason::Crash(format!(
                "after a failed save the vCPUs did not restart: {e}"
            )));
        }
    }
}

/// A guest stopped for a save or a migration: its vCPUs and everything but memory.
struct Stopped {
    fds: Vec<VcpuFd>,
    state: MachineState,
    was_paused: bool,
}

/// Puts a snapshot's state into a VM built from the same configuration, before any
/// vCPU runs.
fn restore_machine(
    state: &MachineState,
    vm: &VmFd,
    fds: &[VcpuFd],
    legacy: &Legacy,
    pci: &PciMmio,
) -> Result<(), String> {
    state.vm.restore(vm).map_err(|e| e.to_string())?;
    for (index, (fd, saved)) in fds.iter().zip(&state.vcpus).enumerate() {
        saved
            .restore(fd)
            .map_err(|e| format!("vCPU {index}: {e}"))?;
    }
    lock(&legacy.serial).restore(&state.legacy.serial)?;
    lock(&legacy.cmos).restore(&state.legacy.cmos)?;
    lock(&pci.0).restore(&state.bus)
}

/// Answers from the VM's owner thread to `save` requests on the control socket.
#[derive(Default)]
struct SaveReplies {
    /// The one save under way, and whether the VM has stopped listening.
    waiting: Mutex<(Option<SaveReply>, bool)>,
}

type SaveReply = std::sync::mpsc::Sender<Result<(), String>>;

/// How long a `save` request waits for the file to be written.
const SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl SaveReplies {
    /// Asks the owner to save to `path` and waits for the outcome.
    /// Asks the owner for `what` (a save or a migration) and waits for the outcome.
    fn request(&self, exit: &ExitSender, what: ExitReason) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut waiting = lock(&self.waiting);
            if waiting.1 {
                return Err("the VM is stopping".into());
            }
            if waiting.0.is_some() {
                return Err("a save is already under way".into());
            }
            waiting.0 = Some(tx);
        }
        exit.send(what);
        let outcome = rx
            .recv_timeout(SAVE_WAIT)
            .unwrap_or_else(|_| Err("the VM ended before the save finished".into()));
        lock(&self.waiting).0.take();
        outcome
    }

    fn answer(&self, outcome: Result<(), String>) {
        if let Some(tx) = lock(&self.waiting).0.take() {
            let _ = tx.send(outcome);
        }
    }

    /// The VM is ending: a save asked for now is refused, one under way is told.
    fn close(&self) {
        let mut waiting = lock(&self.waiting);
        waiting.1 = true;
        if let Some(tx) = waiting.0.take() {
            let _ = tx.send(Err("the VM stopped before it could be saved".into()));
        }
    }
}

/// The PC's legacy devices on the port bus: COM1, the i8042, the CMOS RTC and the ACPI
/// power-management registers (with the power button's GED).
/// The legacy devices the VM's owner keeps a hand on.
struct Legacy {
    serial: Arc<Mutex<SerialDevice>>,
    cmos: Arc<Mutex<Cmos>>,
    button: PowerButton,
}

fn legacy_devices(
    vm: &VmFd,
    config: &VmConfig,
    console: &Console,
    exit: &ExitSender,
) -> Result<(PioBus, Legacy), Error> {
    let ged_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&ged_irq, acpi_pm::GED_IRQ)
        .map_err(kvm_err("route the power button's interrupt"))?;
    let button = PowerButton::new(ged_irq);
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("route the serial interrupt"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        console.output.clone(),
    )));
    let mut pio = PioBus::default();
    pio.insert(COM1_PORT, SERIAL_PORT_LEN, serial.clone());
    pio.insert(
        i8042::I8042_PORT,
        i8042::I8042_PORT_LEN,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    );
    let cmos = Arc::new(Mutex::new(Cmos::new(config.memory)));
    pio.insert(cmos::CMOS_PORT, cmos::CMOS_PORT_LEN, cmos.clone());
    pio.insert(
        acpi_pm::SLEEP_CONTROL_PORT,
        acpi_pm::PORT_RANGE_LEN,
        Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone(), button.clone()))),
    );
    Ok((
        pio,
        Legacy {
            serial,
            cmos,
            button,
        },
    ))
}

/// The host sides of the devices the control socket drives.
struct DeviceHandles {
    balloon: BalloonHandle,
    /// The keyboard and the tablet, with a display.
    input: Option<(InputHandle, InputHandle)>,
    /// The GPU, with a display.
    gpu: Option<GpuHandle>,
    /// Traffic counters of the disks and network cards, in command-line order.
    disks: Vec<Arc<IoCounters>>,
    nets: Vec<Arc<IoCounters>>,
    /// The disks' open images (a migration hands their locks over).
    images: Vec<Arc<Mutex<Disk>>>,
    /// The devices' I/O limiters.
    resources: Resources,
}

/// PCI bus 0 with its virtio devices, each behind the virtio-pci transport.
fn pci_devices(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    vsock: Option<&VsockListener>,
) -> Result<(PciMmio, DeviceHandles), Error> {
    let router = Arc::new(GsiRouter::new(vm.clone()));
    let mut root = PciRoot::new(layout::PCI_MMIO_WINDOW_START, layout::PCI_MMIO_WINDOW_END);
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let (mut disks, mut nets, mut images) = (Vec::new(), Vec::new(), Vec::new());
    let mut resources = Resources::default();
    for disk in &config.disks {
        let block = Block::new(disk)?;
        images.push(block.disk());
        disks.push(block.counters());
        resources.disks.extend(block.limiter());
        devices.push(Box::new(block));
    }
    if let Some(net) = &config.net {
        let card = Net::new(net)?;
        nets.push(card.counters());
        resources.nets.extend(card.limiter());
        devices.push(Box::new(card));
    }
    devices.push(Box::new(Rng::new()));
    let balloon = Balloon::new(0).map_err(Error::EventFd)?;
    let balloon_handle = balloon.handle();
    devices.push(Box::new(balloon));
    let mut input = None;
    let mut gpu = None;
    if let Some(display) = config.display {
        // The GPU first, so the guest's first display is function 0 of the lot.
        let device = Gpu::new(display.width, display.height)?;
        gpu = Some(device.handle());
        devices.push(Box::new(device));
        let keyboard = Input::new(InputKind::Keyboard).map_err(Error::EventFd)?;
        let tablet = Input::new(InputKind::Tablet).map_err(Error::EventFd)?;
        input = Some((keyboard.handle(), tablet.handle()));
        devices.push(Box::new(keyboard));
        devices.push(Box::new(tablet));
    }
    if let (Some(v), Some(listener)) = (&config.vsock, vsock) {
        let socket = listener.try_clone().map_err(Error::VsockDevice)?;
        let device = Vsock::new(v.cid, v.socket.clone(), socket).map_err(Error::VsockDevice)?;
        devices.push(Box::new(device));
    }
    for device in devices {
        let pci = VirtioPciDevice::new(device, mem.clone(), router.clone()).map_err(Error::Pci)?;
        root.add(Arc::new(Mutex::new(pci))).ok_or(Error::PciFull)?;
    }
    let handles = DeviceHandles {
        balloon: balloon_handle,
        input,
        gpu,
        disks,
        nets,
        images,
        resources,
    };
    Ok((PciMmio(Arc::new(Mutex::new(root))), handles))
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("set the identity map address"))?;
    Ok(vm)
}

/// The in-kernel LAPICs, IOAPIC and PIC, and the PIT.
fn create_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    // The PIT keeps port 0x61 (speaker) in the kernel too, so it never exits to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))
}

/// Anonymous, MAP_NORESERVE guest RAM: untouched pages cost nothing.
fn allocate_memory(size: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory {
        size: size >> 20,
        detail: e.to_string(),
    })
}

/// The incoming side of a live migration: the source's guest memory into `mem`, then
/// its machine state, checked against this VM; the source hears why if it does not fit.
fn receive_migration(
    listener: &migrate::Incoming,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<(Box<dyn migrate::Stream>, MachineState), Error> {
    let fail = |why: String| Error::Restore {
        path: "the migration".into(),
        why,
    };
    let mut stream = listener
        .accept()
        .map_err(|e| fail(format!("cannot accept the source: {e}")))?;
    let received = migrate::receive(&mut *stream, mem).and_then(|state| {
        state.check_fits(config).map_err(|e| match e {
            // A snapshot file's advice (discard it) does not fit a migration.
            snapshot::Error::Mismatch(what) => format!(
                "the VM does not fit this engine: {what}; start the destination with the \
                 source's hardware"
            ),
            other => other.to_string(),
        })?;
        Ok(state)
    });
    match received {
        Ok(state) => Ok((stream, state)),
        Err(why) => {
            migrate::answer(&mut *stream, &Err(why.clone()));
            Err(fail(why))
        }
    }
}

/// Registers guest RAM with KVM, one slot per range, with KVM's dirty-page log when
/// `log_dirty` (a live migration's pre-copy) and without it otherwise.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, log_dirty: bool) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: if log_dirty {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // Transparent huge pages, as QEMU asks for too: fewer TLB misses for the guest
        // (its SHA-256 runs ~45% faster over a 256 MiB buffer here) and fewer faults.
        // Advice only: where THP is off this changes nothing.
        // SAFETY: madvise on a mapping we own, over exactly its length; MADV_HUGEPAGE does
        // not change the contents or validity of the memory.
        let _ = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`,
        // which the caller keeps alive for as long as the VM (and its vCPUs) run.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

/// Creates and configures every vCPU before any runs, so the guest's INIT/SIPI always
/// finds its application processors.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    count: u8,
    entry: Option<regs::EntryMode>,
) -> Result<Vec<VcpuFd>, Error> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its CPUID"))?;
    (0..count)
        .map(|index| setup_vcpu(vm, mem, &supported, index, count, entry))
        .collect()
}

/// Starts a thread per vCPU; if one cannot start, stops those that did.
fn spawn_vcpus(
    fds: Vec<VcpuFd>,
    pio: &Arc<PioBus>,
    mmio: &PciMmio,
    exit: &ExitSender,
    (stop, pauser): (&Arc<AtomicBool>, &Arc<Pauser>),
) -> Result<Vec<JoinHandle<VcpuFd>>, Error> {
    let mut threads = Vec::with_capacity(fds.len());
    for (index, fd) in fds.into_iter().enumerate() {
        let ctx = vcpu::VcpuContext {
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit.clone(),
            stop: stop.clone(),
            pauser: pauser.clone(),
        };
        match vcpu::spawn(index as u8, fd, ctx) {
            Ok(t) => threads.push(t),
            Err(e) => {
                vcpu::stop_all(threads, stop);
                return Err(Error::Thread(e));
            }
        }
    }
    Ok(threads)
}

fn setup_vcpu(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    supported: &kvm_bindings::CpuId,
    index: u8,
    count: u8,
    entry: Option<regs::EntryMode>,
) -> Result<VcpuFd, Error> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm_err("create a vCPU"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    fd.set_cpuid2(&cpuid::for_vcpu(supported, index, count, tsc_khz))
        .map_err(kvm_err("set the CPUID"))?;
    regs::setup_common(&fd)?;
    // A restored vCPU gets its registers from the snapshot instead.
    if let (0, Some(entry)) = (index, entry) {
        regs::setup_boot_vcpu(&fd, mem, entry)?;
    }
    Ok(fd)
}

/// The VM as the control socket sees it.
struct VmControl {
    vcpus: u8,
    memory: u64,
    exit: ExitSender,
    balloon: BalloonHandle,
    /// Sets the balloon's target when the policy is give-back-idle (`None`: its
    /// thread could not start, said in the log; the policy stays fixed).
    balloon_policy: Option<Autopilot>,
    input: Option<(InputHandle, InputHandle)>,
    display: Option<DisplayConfig>,
    gpu: Option<GpuHandle>,
    vm: Arc<VmFd>,
    pauser: Arc<Pauser>,
    button: PowerButton,
    saves: Arc<SaveReplies>,
    disks: Vec<Arc<IoCounters>>,
    nets: Vec<Arc<IoCounters>>,
    resources: Resources,
}

/// How long a `balloon-stats` request waits for the guest's driver to report.
const BALLOON_STATS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl VmControl {
    fn new(
        config: &VmConfig,
        exit: ExitSender,
        handles: DeviceHandles,
        (vm, pauser, button): (Arc<VmFd>, Arc<Pauser>, PowerButton),
        saves: Arc<SaveReplies>,
    ) -> Self {
        Self {
            vm,
            pauser,
            button,
            saves,
            vcpus: config.vcpus,
            memory: config.memory,
            exit,
            balloon_policy: Autopilot::start(
                handles.balloon.clone(),
                config.memory,
                config.balloon_policy,
                balloon_policy::PERIOD,
            )
            .map_err(|e| tracing::warn!("no balloon policy thread: {e}"))
            .ok(),
            balloon: handles.balloon,
            input: handles.input,
            display: config.display,
            gpu: handles.gpu,
            disks: handles.disks,
            nets: handles.nets,
            resources: handles.resources,
        }
    }

    /// Sends one group of events to the keyboard (`false`) or the tablet (`true`).
    fn input(&self, tablet: bool, events: &[InputEvent]) -> Response {
        let Some((keyboard, pointer)) = &self.input else {
            return Response::Error {
                message:
                    "this VM has no display, so no keyboard or tablet: start it with --display WxH"
                        .into(),
            };
        };
        let device = if tablet { pointer } else { keyboard };
        match device.send(events) {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error {
                message: format!("{}: {e}", device.kind_name()),
            },
        }
    }

    /// Scales a screen position into the tablet's 0..=ABS_MAX range: the screen is what
    /// the guest shows now, else the size it was offered.
    fn tablet_position(&self, x: u32, y: u32) -> (u32, u32) {
        let scale = |v: u32, size: u32| {
            let last = u64::from(size.max(2) - 1);
            (u64::from(v).min(last) * u64::from(evdev::ABS_MAX) / last) as u32
        };
        let shown = self.gpu.as_ref().and_then(GpuHandle::scanout_size);
        match shown.or(self.display.map(|d| (d.width, d.height))) {
            Some((width, height)) => (scale(x, width), scale(y, height)),
            None => (0, 0),
        }
    }

    /// `screenshot`, `display-resize` and (without a display) `display-attach`; the
    /// control server answers `display-attach` itself when there is a display.
    fn display_request(&self, request: Request) -> Response {
        let Some(gpu) = &self.gpu else {
            return Response::Error {
                message: "this VM has no display: start it with --display WxH".into(),
            };
        };
        let result = match request {
            Request::Screenshot { path } => {
                if !std::path::Path::new(&path).is_absolute() {
                    return Response::Error {
                        message: format!(
                            "screenshot needs an absolute path (the engine's working directory is not yours): {path}"
                        ),
                    };
                }
                if let Err(message) = writable(std::path::Path::new(&path)) {
                    return Response::Error { message };
                }
                gpu.screenshot(std::path::Path::new(&path))
                    .map(|(width, height)| Response::Screenshot {
                        path,
                        width,
                        height,
                    })
            }
            Request::DisplayResize { width, height } => {
                gpu.resize(width, height).map(|()| Response::Ok)
            }
            _ => Ok(Response::Error {
                message: "display-attach is answered by the control socket itself".into(),
            }),
        };
        result.unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
    }

    fn input_request(&self, request: Request) -> Response {
        match request {
            Request::InputKey { code, pressed } => self.input(
                false,
                &[InputEvent::new(evdev::EV_KEY, code, u32::from(pressed))],
            ),
            Request::InputPointer { x, y } => {
                let (x, y) = self.tablet_position(x, y);
                self.input(
                    true,
                    &[
                        InputEvent::new(evdev::EV_ABS, evdev::ABS_X, x),
                        InputEvent::new(evdev::EV_ABS, evdev::ABS_Y, y),
                    ],
                )
            }
            Request::InputButton { button, pressed } => {
                let code = match button {
                    PointerButton::Left => evdev::BTN_LEFT,
                    PointerButton::Right => evdev::BTN_RIGHT,
                    PointerButton::Middle => evdev::BTN_MIDDLE,
                    PointerButton::Side => evdev::BTN_SIDE,
                    PointerButton::Extra => evdev::BTN_EXTRA,
                };
                self.input(
                    true,
                    &[InputEvent::new(evdev::EV_KEY, code, u32::from(pressed))],
                )
            }
            Request::InputScroll { dx, dy } => {
                // evdev's wheel counts up as positive; the request counts down.
                let mut events = Vec::new();
                if dy != 0 {
                    events.push(InputEvent::new(
                        evdev::EV_REL,
                        evdev::REL_WHEEL,
                        dy.wrapping_neg() as u32,
                    ));
                }
                if dx != 0 {
                    events.push(InputEvent::new(evdev::EV_REL, evdev::REL_HWHEEL, dx as u32));
                }
                if events.is_empty() {
                    return Response::Ok;
                }
                self.input(true, &events)
            }
            _ => Response::Error {
                message: "not an input request".into(),
            },
        }
    }

    /// Arms the test-only trip of `thread`'s kind and wakes those threads: the control
    /// thread trips here, vCPUs and device workers at their next turn, which a pause and
    /// resume makes at once (it stops the vCPUs and parks every worker).
    fn seccomp_trip(&self, thread: &str) -> Result<(), String> {
        use crate::sandbox::{self, ThreadKind};
        let kind = ThreadKind::from_name(thread).ok_or_else(|| {
            format!("seccomp_trip: no thread kind {thread:?} (vcpu, device, control, console)")
        })?;
        sandbox::arm_trip(kind)?;
        self.wake_to_trip_point(kind).map_err(|e| e.to_string())
    }

    /// Brings the threads of `kind` to their trip point: the control thread (this one)
    /// at once, vCPUs and workers through a pause and resume, which stops every vCPU and
    /// parks every worker (a paused VM stays as it is).
    fn wake_to_trip_point(&self, kind: crate::sandbox::ThreadKind) -> Result<(), PauseError> {
        use crate::sandbox::{self, ThreadKind};
        sandbox::trip_point(ThreadKind::Control);
        if matches!(kind, ThreadKind::Vcpu | ThreadKind::Device) && !self.pauser.is_paused() {
            self.pauser.pause(&self.vm)?;
            self.pauser.resume(&self.vm)?;
        }
        Ok(())
    }

    /// Has a thread of `thread`'s kind try to open `path` (test only) and answers with
    /// the errno; vCPUs and workers are woken as for `seccomp_trip`.
    fn sandbox_probe(&self, thread: &str, path: &str) -> Response {
        use crate::sandbox::{self, ThreadKind};
        let Some(kind) = ThreadKind::from_name(thread) else {
            return Response::Error {
                message: format!(
                    "sandbox_probe: no thread kind {thread:?} (vcpu, device, control)"
                ),
            };
        };
        if let Err(message) = sandbox::arm_probe(kind, std::path::Path::new(path)) {
            return Response::Error { message };
        }
        // A worker answers as it wakes for the pause's hold. One still parked from the
        // last pause when this one begins stays parked through it (it has not run in
        // between, so it is rightly counted) and passes no probe point: wake them again
        // until one answers.
        let mut answer = None;
        for _ in 0..20 {
            if let Err(e) = self.wake_to_trip_point(kind) {
                sandbox::disarm_probe();
                return Response::Error {
                    message: e.to_string(),
                };
            }
            answer = sandbox::probe_answer(Duration::from_millis(250));
            if answer.is_some() {
                break;
            }
        }
        sandbox::disarm_probe();
        match answer {
            Some(errno) => Response::SandboxProbe { errno },
            None => Response::Error {
                message: format!(
                    "no {thread} thread reached its probe point within 5 s{}",
                    if self.pauser.is_paused() {
                        " (the VM is paused)"
                    } else {
                        ""
                    }
                ),
            },
        }
    }

    fn balloon_state(&self) -> Response {
        Response::Balloon {
            target_mib: self.balloon.target_bytes() >> 20,
            actual_mib: self.balloon.actual_bytes() >> 20,
            policy: self
                .balloon_policy
                .as_ref()
                .map_or(BalloonPolicy::Fixed, Autopilot::policy),
        }
    }
}

/// `ok`, or the error's message.
fn done(result: Result<(), impl std::fmt::Display>) -> Response {
    match result {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

impl control::Handler for VmControl {
    fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status {} => Response::Status {
                state: if self.pauser.is_paused() {
                    "paused"
                } else {
                    "running"
                }
                .into(),
                vcpus: self.vcpus,
                memory_mib: self.memory >> 20,
            },
            Request::PowerOff {} => {
                self.exit.send(ExitReason::Stopped);
                Response::Ok
            }
            Request::Shutdown {} => {
                if self.pauser.is_paused() {
                    return Response::Error {
                        message: "the VM is paused: resume it so the guest can shut down".into(),
                    };
                }
                done(self.button.press())
            }
            Request::Reset {} => {
                self.exit.send(ExitReason::Reboot);
                Response::Ok
            }
            Request::Pause {} => done(self.pauser.pause(&self.vm)),
            Request::Resume {} => done(self.pauser.resume(&self.vm)),
            Request::SeccompTrip { thread } => done(self.seccomp_trip(&thread)),
            Request::SandboxProbe { thread, path } => self.sandbox_probe(&thread, &path),
            Request::Save { path } => {
                let path = std::path::PathBuf::from(path);
                if !path.is_absolute() {
                    return Response::Error {
                        message: format!(
                            "save needs an absolute path (the engine's working directory is not yours): {}",
                            path.display()
                        ),
                    };
                }
                done(
                    self.saves
                        .request(&self.exit, ExitReason::SaveRequested(path)),
                )
            }
            Request::Migrate { to } => {
                if let Err(e) = to.parse::<migrate::Endpoint>() {
                    return Response::Error { message: e };
                }
                done(
                    self.saves
                        .request(&self.exit, ExitReason::MigrateRequested(to)),
                )
            }
            Request::BalloonSet { target_mib } => {
                if target_mib > self.memory >> 20 {
                    return Response::Error {
                        message: format!(
                            "balloon target {target_mib} MiB is more than the VM's {} MiB",
                            self.memory >> 20
                        ),
                    };
                }
                if let Some(pilot) = &self.balloon_policy {
                    pilot.set_policy(BalloonPolicy::Fixed);
                }
                match self.balloon.set_target_bytes(target_mib << 20) {
                    Ok(()) => self.balloon_state(),
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::BalloonGet {} => self.balloon_state(),
            Request::BalloonPolicy { policy } => match &self.balloon_policy {
                Some(pilot) => {
                    pilot.set_policy(policy);
                    self.balloon_state()
                }
                None => Response::Error {
                    message: "the balloon policy thread did not start (see the log)".into(),
                },
            },
            request @ (Request::InputKey { .. }
            | Request::InputPointer { .. }
            | Request::InputButton { .. }
            | Request::InputScroll { .. }) => self.input_request(request),
            request @ (Request::DisplayAttach {}
            | Request::Screenshot { .. }
            | Request::DisplayResize { .. }) => self.display_request(request),
            request @ (Request::SetLimits { .. } | Request::SetCpu { .. }) => {
                self.resources.handle(request)
            }
            Request::Stats {} => Response::Stats {
                disks: self.disks.iter().map(|c| c.snapshot()).collect(),
                nets: self.nets.iter().map(|c| c.snapshot()).collect(),
                vm: crate::resources::VmUsage::now(self.balloon.actual_bytes()),
            },
            Request::BalloonStats {} => {
                // Fresh statistics if the driver answers in time, else its last report.
                let stats = self
                    .balloon
                    .refresh_stats(BALLOON_STATS_WAIT)
                    .ok()
                    .or_else(|| self.balloon.stats());
                match stats.map(serde_json::to_value) {
                    Some(Ok(stats)) => Response::BalloonStats { stats },
                    _ => Response::Error {
                        message: "the guest's balloon driver has not reported statistics".into(),
                    },
                }
            }
        }
    }

    fn events(&self) -> Option<Arc<control::events::EventHub>> {
        self.gpu.as_ref().map(GpuHandle::events)
    }
}

/// Whether the control thread may write `path`: where Landlock confines it, only
/// beneath its runtime directory (the control socket's), which the message names so the
/// client knows where to ask instead.
fn writable(path: &Path) -> Result<(), String> {
    let Some(dirs) = crate::sandbox::writable_dirs() else {
        return Ok(());
    };
    if crate::sandbox::landlock::is_beneath(path, dirs) {
        return Ok(());
    }
    let places = if dirs.is_empty() {
        "nowhere (it has no --control-socket directory)".to_string()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{}: this engine writes files only beneath {places} (Landlock confines it to its \
         control socket's directory): ask for a path there and move the file, or start \
         the engine with --no-landlock",
        path.display()
    ))
}
