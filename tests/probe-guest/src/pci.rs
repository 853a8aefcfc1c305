//! PCI bus 0 through ECAM, with the BARs assigned by the probe itself.
//!
//! There is no firmware: a VMM that boots PVH kernels directly (Vireo's engine, QEMU
//! microvm) leaves every BAR at 0, as Linux's `pci=realloc`-less boot on such machines
//! expects the kernel to assign them. So the probe enumerates bus 0 with
//! `virtio-drivers`' [`PciRoot`] over an [`MmioCam`], sizes every memory BAR, places it
//! naturally aligned in the host's 32-bit memory window (64-bit BARs too: the probe's
//! identity map ends at 4 GiB), and turns on memory decoding and bus mastering.
//!
//! Where things are: ECAM from the ACPI MCFG, else the DSDT's `_CBA` (QEMU 7.2 microvm
//! has no MCFG), `probe.ecam=` overriding both; the 32-bit window
//! from the DSDT's PCI host `_CRS` (`probe.pci_mmio32=FIRST-LAST` overrides; else the
//! window Vireo's engine and QEMU 7.2 microvm both use). Every ECAM or BAR access is an
//! MMIO exit, so the probe reads each register it needs once.

use alloc::vec::Vec;
use core::fmt;

use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, DeviceFunction, DeviceFunctionInfo, MemoryBarType, MmioCam, PciRoot,
};

use crate::acpi;
use crate::arch;
use crate::phys;
use crate::probe;

/// The 32-bit window when neither the command line nor the DSDT names one: Vireo's
/// engine and QEMU 7.2's microvm both put it here.
const DEFAULT_MMIO32: (u32, u32) = (0xC000_0000, 0xDFFF_FFFF);
/// Bytes of ECAM per bus (32 devices x 8 functions x 4 KiB).
const ECAM_BUS_SIZE: u64 = 1 << 20;
/// Capability ID of MSI-X.
const CAP_ID_MSIX: u8 = 0x11;
/// MSI-X message control (upper half of the capability's first dword): enable, function
/// mask.
const MSIX_ENABLE: u32 = 1 << 31;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
/// Bytes per MSI-X table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Where the probe looks for the host bridge's resources, from the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostOptions {
    pub ecam: Option<u64>,
    pub mmio32: Option<(u32, u32)>,
}

/// One BAR after assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Mem32 {
        address: u64,
        size: u64,
    },
    Mem64 {
        address: u64,
        size: u64,
    },
    /// I/O BARs are left unassigned (the probe uses MMIO only; port I/O traps twice).
    Io {
        address: u32,
        size: u32,
    },
}

impl Bar {
    /// The memory address of a memory BAR.
    pub fn memory(&self) -> Option<u64> {
        match *self {
            Bar::Mem32 { address, .. } | Bar::Mem64 { address, .. } => Some(address),
            Bar::Io { .. } => None,
        }
    }
}

/// A function found on bus 0.
#[derive(Clone, Debug)]
pub struct Function {
    pub df: DeviceFunction,
    pub info: DeviceFunctionInfo,
    pub bars: [Option<Bar>; 6],
    /// MSI-X table size (entries), if the function has the capability.
    pub msix_entries: Option<u16>,
}

impl fmt::Display for Function {
    /// The `pci` line's fields after `pci `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.info;
        write!(
            f,
            "bdf={:02x}:{:02x}.{} vendor={:#06x} device={:#06x} class={:#08x} revision={}",
            self.df.bus,
            self.df.device,
            self.df.function,
            info.vendor_id,
            info.device_id,
            u32::from(info.class) << 16 | u32::from(info.subclass) << 8 | u32::from(info.prog_if),
            info.revision,
        )?;
        for (index, bar) in self.bars.iter().enumerate() {
            match bar {
                Some(Bar::Mem32 { address, size }) => write!(
                    f,
                    " bar{index}={address:#x} bar{index}_size={size:#x} bar{index}_type=m32"
                )?,
                Some(Bar::Mem64 { address, size }) => write!(
                    f,
                    " bar{index}={address:#x} bar{index}_size={size:#x} bar{index}_type=m64"
                )?,
                Some(Bar::Io { address, size }) => write!(
                    f,
                    " bar{index}={address:#x} bar{index}_size={size:#x} bar{index}_type=io"
                )?,
                None => {}
            }
        }
        match self.msix_entries {
            Some(n) => write!(f, " msix_entries={n}"),
            None => f.write_str(" msix_entries=0"),
        }
    }
}

/// Bus 0, enumerated and assigned.
pub struct Pci {
    pub root: PciRoot<MmioCam<'static>>,
    pub ecam: u64,
    pub functions: Vec<Function>,
}

/// The ECAM and window the probe used, and where it learned them.
struct Host {
    ecam: u64,
    ecam_from: &'static str,
    bus_end: u8,
    mmio32: (u32, u32),
    mmio32_from: &'static str,
}

fn host(options: &HostOptions) -> Option<Host> {
    let platform = acpi::platform();
    let mcfg = platform.and_then(|a| a.mcfg);
    let (ecam, ecam_from, bus_end) = match (options.ecam, mcfg) {
        (Some(ecam), _) => (ecam, "cmdline", 255),
        (None, Some(m)) if m.segment == 0 && m.base != 0 => (m.base, "mcfg", m.bus_end),
        _ => match platform.and_then(|a| a.pci_cba) {
            Some(base) => (base, "dsdt_cba", 255),
            None => return None,
        },
    };
    let (mmio32, mmio32_from) = match (options.mmio32, platform.and_then(|a| a.pci_mmio32)) {
        (Some(w), _) => (w, "cmdline"),
        (None, Some(w)) => (w, "dsdt"),
        (None, None) => (DEFAULT_MMIO32, "default"),
    };
    Some(Host {
        ecam,
        ecam_from,
        bus_end,
        mmio32,
        mmio32_from,
    })
}

/// Enumerates bus 0, assigns the BARs and prints the `pci_host`, `pci` and `pci_count`
/// lines. `None` (after an error line) when there is no ECAM.
pub fn init(options: &HostOptions, tsc_khz: u64) -> Option<Pci> {
    let Some(host) = host(options) else {
        probe!("error pci=no_ecam");
        return None;
    };
    // Bus 0's 1 MiB must lie inside the identity map; the root reads only bus 0.
    if host.ecam + ECAM_BUS_SIZE > phys::MAPPED_END {
        probe!("error pci=ecam_unmapped ecam={:#x}", host.ecam);
        return None;
    }
    let start = arch::rdtsc();
    // SAFETY: the MCFG (or the user) says a 256 MiB ECAM region starts here; it is in the
    // identity map (bus 0 checked above; the root only touches bus 0) and is device
    // memory, never a Rust object. The probe's own raw accesses (`config_read`) go to
    // registers virtio-drivers does not cache.
    let cam = unsafe { MmioCam::new(host.ecam as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
    let found: Vec<_> = root.enumerate_bus(0).collect();
    let enumerated = arch::rdtsc();

    let mut next = u64::from(host.mmio32.0);
    let window_end = u64::from(host.mmio32.1) + 1;
    let mut functions = Vec::with_capacity(found.len());
    let mut error = None;
    for (df, info) in found {
        let mut bars = [None; 6];
        let mut index = 0;
        while index < 6 {
            let info = match root.bar_info(df, index) {
                Ok(info) => info,
                Err(_) => {
                    error = Some("bad_bar");
                    break;
                }
            };
            let width = if info.as_ref().is_some_and(BarInfo::takes_two_entries) {
                2
            } else {
                1
            };
            bars[usize::from(index)] = match info {
                Some(BarInfo::Memory {
                    address_type, size, ..
                }) if size != 0 => {
                    let address = next.next_multiple_of(size);
                    if address + size > window_end {
                        error = Some("window_full");
                        None
                    } else {
                        next = address + size;
                        if address_type == MemoryBarType::Width64 {
                            root.set_bar_64(df, index, address);
                            Some(Bar::Mem64 { address, size })
                        } else {
                            root.set_bar_32(df, index, address as u32);
                            Some(Bar::Mem32 { address, size })
                        }
                    }
                }
                Some(BarInfo::IO { address, size }) => Some(Bar::Io { address, size }),
                _ => None,
            };
            index += width;
        }
        if bars.iter().flatten().any(|b| b.memory().is_some()) {
            root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        }
        let msix_entries = root
            .capabilities(df)
            .find(|c| c.id == CAP_ID_MSIX)
            .map(|c| (c.private_header & 0x7FF) + 1);
        functions.push(Function {
            df,
            info,
            bars,
            msix_entries,
        });
    }
    let assigned = arch::rdtsc();

    let us = |ticks: u64| ticks * 1000 / tsc_khz.max(1);
    probe!(
        "pci_host ecam={:#x} ecam_from={} bus_end={} mmio32={:#x}-{:#x} mmio32_from={}",
        host.ecam,
        host.ecam_from,
        host.bus_end,
        host.mmio32.0,
        host.mmio32.1,
        host.mmio32_from
    );
    for function in &functions {
        probe!("pci {function}");
    }
    probe!(
        "pci_count={} enumerate_us={} assign_us={}",
        functions.len(),
        us(enumerated - start),
        us(assigned - enumerated)
    );
    if let Some(error) = error {
        probe!("error pci={error}");
    }
    Some(Pci {
        root,
        ecam: host.ecam,
        functions,
    })
}

impl Pci {
    /// ECAM address of a register of a function on bus 0.
    fn config_addr(&self, df: DeviceFunction, offset: u16) -> u64 {
        self.ecam
            + (u64::from(df.bus) << 20)
            + (u64::from(df.device) << 15)
            + (u64::from(df.function) << 12)
            + u64::from(offset)
    }

    /// Reads a configuration dword (for registers `PciRoot` has no accessor for).
    pub fn config_read(&self, df: DeviceFunction, offset: u16) -> u32 {
        phys::mmio_read(self.config_addr(df, offset), 32) as u32
    }

    /// Writes a configuration dword.
    pub fn config_write(&self, df: DeviceFunction, offset: u16, value: u32) {
        phys::mmio_write(self.config_addr(df, offset), 32, u64::from(value));
    }

    /// The function's MSI-X capability: where its table and PBA live.
    pub fn msix(&self, function: &Function) -> Option<Msix> {
        let cap = self
            .root
            .capabilities(function.df)
            .find(|c| c.id == CAP_ID_MSIX)?;
        let table = self.config_read(function.df, u16::from(cap.offset) + 4);
        let pba = self.config_read(function.df, u16::from(cap.offset) + 8);
        // Low 3 bits: the BAR index (BIR); the rest: the offset in that BAR.
        let in_bar = |reg: u32| {
            let bar = function.bars.get((reg & 7) as usize).copied().flatten()?;
            Some(bar.memory()? + u64::from(reg & !7))
        };
        Some(Msix {
            df: function.df,
            cap: cap.offset,
            entries: (cap.private_header & 0x7FF) + 1,
            table: in_bar(table)?,
            pba: in_bar(pba)?,
        })
    }
}

/// A function's MSI-X capability and the addresses of its table and pending-bit array.
#[derive(Clone, Copy, Debug)]
pub struct Msix {
    df: DeviceFunction,
    cap: u8,
    pub entries: u16,
    pub table: u64,
    pub pba: u64,
}

impl Msix {
    /// Sets or clears MSI-X enable in the message control register (and clears the
    /// function mask). The capability's first dword is written whole: ID and next pointer
    /// are read-only.
    pub fn set_enabled(&self, pci: &Pci, enabled: bool) {
        let offset = u16::from(self.cap);
        let mut value = pci.config_read(self.df, offset) & !MSIX_FUNCTION_MASK;
        if enabled {
            value |= MSIX_ENABLE;
        } else {
            value &= !MSIX_ENABLE;
        }
        pci.config_write(self.df, offset, value);
    }

    /// The message control register (bit 15 enable, bit 14 function mask).
    pub fn control(&self, pci: &Pci) -> u16 {
        (pci.config_read(self.df, u16::from(self.cap)) >> 16) as u16
    }

    /// Programs table entry `entry`: message address and data, masked or not.
    pub fn program(&self, entry: u16, address: u64, data: u32, masked: bool) {
        let at = self.table + u64::from(entry) * MSIX_ENTRY_SIZE;
        phys::mmio_write(at, 32, address & 0xFFFF_FFFF);
        phys::mmio_write(at + 4, 32, address >> 32);
        phys::mmio_write(at + 8, 32, u64::from(data));
        self.set_masked(entry, masked);
    }

    /// Sets or clears the entry's mask bit (vector control bit 0).
    pub fn set_masked(&self, entry: u16, masked: bool) {
        let at = self.table + u64::from(entry) * MSIX_ENTRY_SIZE + 12;
        phys::mmio_write(at, 32, u64::from(masked));
    }

    /// The entry's pending bit in the PBA.
    pub fn pending(&self, entry: u16) -> bool {
        // Dword access: the PCI spec allows dword and qword, and dword is what every
        // device model implements.
        let word = phys::mmio_read(self.pba + u64::from(entry / 32) * 4, 32);
        word >> (entry % 32) & 1 != 0
    }
}
