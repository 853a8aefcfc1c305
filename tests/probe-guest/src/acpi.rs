//! ACPI discovery (RSDP → XSDT/RSDT → MADT, FADT, DSDT's `\_S5`) and power control.
//!
//! Only the facts the probe uses are extracted, at boot, before the heap may reuse any
//! memory: the number of enabled CPUs, the FADT's power registers, and for the PCI tests
//! the MCFG's ECAM and the PCI host's 32-bit memory window from the DSDT. Power-off and
//! reboot then work from anywhere, including the fault path at CPL0.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, port};
use crate::phys;
use crate::sync::Once;

/// Where the RSDP may be found when the loader does not say (ACPI: the BIOS read-only
/// area).
const RSDP_SCAN: core::ops::Range<u64> = 0xE0000..0x10_0000;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";

/// Size of the common header of every system description table.
const SDT_HEADER: u64 = 36;

/// Byte offsets in the RSDP.
mod rsdp {
    pub const REVISION: u64 = 15;
    pub const RSDT_ADDRESS: u64 = 16;
    pub const XSDT_ADDRESS: u64 = 24;
    /// Bytes covered by the ACPI 1.0 checksum.
    pub const V1_LENGTH: u64 = 20;
}

/// Byte offsets in the FADT (ACPI 6.x, table 5.9).
mod fadt {
    pub const DSDT: u64 = 40;
    pub const PM1A_CNT_BLK: u64 = 64;
    pub const FLAGS: u64 = 112;
    pub const RESET_REG: u64 = 116;
    pub const RESET_VALUE: u64 = 128;
    pub const X_DSDT: u64 = 140;
    pub const X_PM1A_CNT_BLK: u64 = 172;
    pub const SLEEP_CONTROL_REG: u64 = 244;
    pub const SLEEP_STATUS_REG: u64 = 256;
    /// FADT flag: RESET_REG is supported.
    pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
    /// FADT flag: hardware-reduced ACPI (no PM1 blocks; sleep through SLEEP_CONTROL_REG).
    pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// MADT: offset of the first interrupt controller structure, and the structure types
/// that describe CPUs.
const MADT_ENTRIES: u64 = 44;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_X2APIC: u8 = 9;
/// Local (x2)APIC flag: the processor is enabled.
const MADT_ENABLED: u32 = 1;

/// MCFG: offset of the first configuration space allocation (16 bytes each: base address,
/// segment group, start bus, end bus, reserved).
const MCFG_ENTRIES: u64 = 44;
const MCFG_ENTRY_LEN: u64 = 16;

/// S5 (soft off) sleep type used when the DSDT has no `\_S5` package.
const DEFAULT_S5_TYPE: u8 = 5;
/// SLEEP_CONTROL_REG: SLP_TYP at bits 2..=4, SLP_EN at bit 5.
const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
/// PM1 control: SLP_TYP at bits 10..=12, SLP_EN at bit 13.
const PM1_CNT_SLP_EN: u16 = 1 << 13;

/// Last resorts: QEMU's isa-debug-exit device and the i8042 reset line.
const DEBUG_EXIT_PORT: u16 = 0xF4;
const I8042_COMMAND: u16 = 0x64;
const I8042_PULSE_RESET: u8 = 0xFE;

/// GAS address space IDs.
const SPACE_SYSTEM_MEMORY: u8 = 0;
const SPACE_SYSTEM_IO: u8 = 1;

/// An ACPI Generic Address Structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gas {
    pub space: u8,
    pub bit_width: u8,
    pub access_size: u8,
    pub address: u64,
}

impl Gas {
    fn read(addr: u64) -> Self {
        Gas {
            space: phys::read_u8(addr),
            bit_width: phys::read_u8(addr + 1),
            access_size: phys::read_u8(addr + 3),
            address: phys::read_u64(addr + 4),
        }
    }

    fn is_present(&self) -> bool {
        self.address != 0 && matches!(self.space, SPACE_SYSTEM_MEMORY | SPACE_SYSTEM_IO)
    }

    /// Access width in bits: the register width, else the access size, else a byte.
    fn width(&self) -> u8 {
        match (self.bit_width, self.access_size) {
            (8 | 16 | 32 | 64, _) => self.bit_width,
            (_, 1..=4) => 8 << (self.access_size - 1),
            _ => 8,
        }
    }

    /// Writes `value` to the register, in whichever space it lives.
    fn write(&self, value: u64) {
        match self.space {
            SPACE_SYSTEM_MEMORY => phys::mmio_write(self.address, self.width(), value),
            SPACE_SYSTEM_IO => {
                let port = self.address as u16;
                match self.width() {
                    16 => port::outw(port, value as u16),
                    32 | 64 => port::outl(port, value as u32),
                    _ => port::outb(port, value as u8),
                }
            }
            _ => {}
        }
    }
}

impl fmt::Display for Gas {
    /// `io:0x600`, `mmio:0xfea00004` or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.space {
            _ if self.address == 0 => f.write_str("none"),
            SPACE_SYSTEM_IO => write!(f, "io:{:#x}", self.address),
            SPACE_SYSTEM_MEMORY => write!(f, "mmio:{:#x}", self.address),
            other => write!(f, "space{other}:{:#x}", self.address),
        }
    }
}

/// The first ECAM region of the MCFG.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mcfg {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// What the tables said.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acpi {
    pub rsdp: u64,
    /// The RSDP revision (0: ACPI 1.0 with an RSDT; 2: XSDT).
    pub revision: u8,
    /// Address of the XSDT, or of the RSDT when there is no XSDT.
    pub root: u64,
    pub madt: u64,
    pub fadt: u64,
    /// Every table visited had a correct checksum.
    pub checksums_ok: bool,
    /// Enabled Local APIC and Local x2APIC entries in the MADT.
    pub cpus: u32,
    pub hw_reduced: bool,
    pub sleep_control: Gas,
    pub sleep_status: Gas,
    pub reset: Option<(Gas, u8)>,
    /// PM1a control block I/O port (0: none).
    pub pm1a_cnt: u64,
    /// SLP_TYP for S5 from the DSDT's `\_S5` package (or [`DEFAULT_S5_TYPE`]).
    pub s5_type: u8,
    pub s5_from_dsdt: bool,
    /// The DSDT's address (0: none).
    pub dsdt: u64,
    pub mcfg: Option<Mcfg>,
    /// The PCI host's 32-bit memory window `(first, last)`: the largest DWordMemory
    /// descriptor in the DSDT outside the ECAM (see [`find_pci_mmio32`]).
    pub pci_mmio32: Option<(u32, u32)>,
    /// The PCI host's `_CBA` (ECAM base) in the DSDT: QEMU 7.2's microvm announces ECAM
    /// only there, with no MCFG.
    pub pci_cba: Option<u64>,
    /// The power button's event status port: the SystemIO `OperationRegion (GDST, …)` of
    /// the DSDT's Generic Event Device (see [`find_ged_port`]).
    pub ged_port: Option<u16>,
}

/// Why no ACPI tables could be used.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    NoRsdp,
    BadRootTable(u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoRsdp => f.write_str("no_rsdp"),
            Error::BadRootTable(addr) => write!(f, "bad_root_table@{addr:#x}"),
        }
    }
}

/// The tables found at boot, for power control from anywhere.
static PLATFORM: Once<Acpi> = Once::new();

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(phys::read_u8(addr + i))) == 0
}

fn signature(addr: u64) -> [u8; 4] {
    core::array::from_fn(|i| phys::read_u8(addr + i as u64))
}

/// The length of the table at `addr`, bounded so that a corrupt table cannot make the
/// probe walk off the mapped memory.
fn table_len(addr: u64) -> u64 {
    u64::from(phys::read_u32(addr + 4)).min(phys::MAPPED_END - addr)
}

fn find_rsdp(hint: u64) -> Option<u64> {
    let has_signature =
        |addr: u64| (0..8).all(|i| phys::read_u8(addr + i) == RSDP_SIGNATURE[i as usize]);
    if hint != 0 && has_signature(hint) {
        return Some(hint);
    }
    RSDP_SCAN.step_by(16).find(|&addr| has_signature(addr))
}

impl Acpi {
    /// Walks the tables from the RSDP at `rsdp_hint` (0: search the BIOS area).
    pub fn discover(rsdp_hint: u64) -> Result<Self, Error> {
        let rsdp = find_rsdp(rsdp_hint).ok_or(Error::NoRsdp)?;
        let revision = phys::read_u8(rsdp + rsdp::REVISION);
        let mut acpi = Acpi {
            rsdp,
            revision,
            checksums_ok: checksum_ok(rsdp, rsdp::V1_LENGTH),
            s5_type: DEFAULT_S5_TYPE,
            ..Acpi::default()
        };
        let xsdt = if revision >= 2 {
            phys::read_u64(rsdp + rsdp::XSDT_ADDRESS)
        } else {
            0
        };
        let (root, entry_size) = if xsdt != 0 {
            (xsdt, 8)
        } else {
            (u64::from(phys::read_u32(rsdp + rsdp::RSDT_ADDRESS)), 4)
        };
        if root == 0 || root >= phys::MAPPED_END {
            return Err(Error::BadRootTable(root));
        }
        acpi.root = root;
        let root_len = table_len(root);
        acpi.checksums_ok &= checksum_ok(root, root_len);
        let entries = root_len.saturating_sub(SDT_HEADER) / entry_size;
        for i in 0..entries {
            let slot = root + SDT_HEADER + i * entry_size;
            let table = if entry_size == 8 {
                phys::read_u64(slot)
            } else {
                u64::from(phys::read_u32(slot))
            };
            if table == 0 || table >= phys::MAPPED_END {
                continue;
            }
            match &signature(table) {
                b"APIC" => acpi.parse_madt(table),
                b"FACP" => acpi.parse_fadt(table),
                b"MCFG" => acpi.parse_mcfg(table),
                _ => {}
            }
        }
        if acpi.dsdt != 0 {
            acpi.pci_cba = find_cba(acpi.dsdt);
            acpi.ged_port = find_ged_port(acpi.dsdt);
            acpi.pci_mmio32 = find_pci_mmio32(acpi.dsdt, acpi.mcfg, acpi.pci_cba);
        }
        Ok(acpi)
    }

    fn parse_madt(&mut self, madt: u64) {
        self.madt = madt;
        let len = table_len(madt);
        self.checksums_ok &= checksum_ok(madt, len);
        let mut at = madt + MADT_ENTRIES;
        while at + 2 <= madt + len {
            let kind = phys::read_u8(at);
            let entry_len = u64::from(phys::read_u8(at + 1));
            if entry_len < 2 || at + entry_len > madt + len {
                break;
            }
            let flags = match kind {
                MADT_LOCAL_APIC if entry_len >= 8 => Some(phys::read_u32(at + 4)),
                MADT_LOCAL_X2APIC if entry_len >= 16 => Some(phys::read_u32(at + 8)),
                _ => None,
            };
            if flags.is_some_and(|f| f & MADT_ENABLED != 0) {
                self.cpus += 1;
            }
            at += entry_len;
        }
    }

    fn parse_mcfg(&mut self, mcfg: u64) {
        let len = table_len(mcfg);
        self.checksums_ok &= checksum_ok(mcfg, len);
        if MCFG_ENTRIES + MCFG_ENTRY_LEN <= len {
            let entry = mcfg + MCFG_ENTRIES;
            self.mcfg = Some(Mcfg {
                base: phys::read_u64(entry),
                segment: phys::read_u32(entry + 8) as u16,
                bus_start: phys::read_u8(entry + 10),
                bus_end: phys::read_u8(entry + 11),
            });
        }
    }

    fn parse_fadt(&mut self, fadt: u64) {
        self.fadt = fadt;
        let len = table_len(fadt);
        self.checksums_ok &= checksum_ok(fadt, len);
        let has = |offset: u64, size: u64| offset + size <= len;
        let flags = if has(fadt::FLAGS, 4) {
            phys::read_u32(fadt + fadt::FLAGS)
        } else {
            0
        };
        self.hw_reduced = flags & fadt::FLAG_HW_REDUCED_ACPI != 0;
        if has(fadt::SLEEP_STATUS_REG, 12) {
            self.sleep_control = Gas::read(fadt + fadt::SLEEP_CONTROL_REG);
            self.sleep_status = Gas::read(fadt + fadt::SLEEP_STATUS_REG);
        }
        if has(fadt::RESET_VALUE, 1) {
            let reg = Gas::read(fadt + fadt::RESET_REG);
            if reg.is_present() || flags & fadt::FLAG_RESET_REG_SUP != 0 {
                self.reset = Some((reg, phys::read_u8(fadt + fadt::RESET_VALUE)));
            }
        }
        let x_pm1a = if has(fadt::X_PM1A_CNT_BLK, 12) {
            Gas::read(fadt + fadt::X_PM1A_CNT_BLK)
        } else {
            Gas::default()
        };
        self.pm1a_cnt = if x_pm1a.space == SPACE_SYSTEM_IO && x_pm1a.address != 0 {
            x_pm1a.address
        } else if has(fadt::PM1A_CNT_BLK, 4) {
            u64::from(phys::read_u32(fadt + fadt::PM1A_CNT_BLK))
        } else {
            0
        };
        let x_dsdt = if has(fadt::X_DSDT, 8) {
            phys::read_u64(fadt + fadt::X_DSDT)
        } else {
            0
        };
        let dsdt = if x_dsdt != 0 {
            x_dsdt
        } else {
            u64::from(phys::read_u32(fadt + fadt::DSDT))
        };
        if dsdt != 0 && dsdt < phys::MAPPED_END && &signature(dsdt) == b"DSDT" {
            self.dsdt = dsdt;
            if let Some(typ) = find_s5_type(dsdt) {
                self.s5_type = typ;
                self.s5_from_dsdt = true;
            }
        }
    }

    /// Makes these tables the ones [`power_off`] and [`reboot`] use.
    pub fn install(self) {
        PLATFORM.set(self);
    }
}

/// Finds `Name (\_S5, Package () { typ, ... })` in the DSDT's AML and returns SLP_TYP
/// (the common shortcut: no AML interpreter).
fn find_s5_type(dsdt: u64) -> Option<u8> {
    const PACKAGE_OP: u8 = 0x12;
    const BYTE_PREFIX: u8 = 0x0A;
    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    let len = table_len(dsdt);
    let name_at = (SDT_HEADER..len.saturating_sub(4)).find(|&i| &signature(dsdt + i) == b"_S5_")?;
    let mut at = dsdt + name_at + 4;
    if phys::read_u8(at) != PACKAGE_OP {
        return None;
    }
    // PkgLength: bits 6-7 of the lead byte count the bytes that follow it.
    let pkg_len_bytes = 1 + u64::from(phys::read_u8(at + 1) >> 6);
    at += 1 + pkg_len_bytes + 1; // PackageOp, PkgLength, NumElements
    match phys::read_u8(at) {
        BYTE_PREFIX => Some(phys::read_u8(at + 1) & 7),
        ZERO_OP => Some(0),
        ONE_OP => Some(1),
        _ => None,
    }
}

/// Finds the PCI host's 32-bit memory window in the DSDT without an AML interpreter:
/// the `_CRS` resource templates are raw bytes in AML buffers, so this looks for DWord
/// Address Space descriptors (tag 0x87, length 0x17) of the memory type whose minimum,
/// maximum and length agree, skips the ECAM (QEMU reserves it in a `RES0` device), and
/// takes the largest. The command line can override it (`probe.pci_mmio32=`).
fn find_pci_mmio32(dsdt: u64, mcfg: Option<Mcfg>, cba: Option<u64>) -> Option<(u32, u32)> {
    const DWORD_ADDRESS: u8 = 0x87;
    const DWORD_ADDRESS_LEN: u64 = 0x17;
    const RESOURCE_MEMORY: u8 = 0;
    let len = table_len(dsdt);
    let mut best: Option<(u32, u32)> = None;
    let mut at = SDT_HEADER;
    while at + 3 + DWORD_ADDRESS_LEN <= len {
        let p = dsdt + at;
        at += 1;
        if phys::read_u8(p) != DWORD_ADDRESS
            || phys::read_u8(p + 1) != DWORD_ADDRESS_LEN as u8
            || phys::read_u8(p + 2) != 0
            || phys::read_u8(p + 3) != RESOURCE_MEMORY
        {
            continue;
        }
        // After tag, length (2) and type, general and type-specific flags: granularity,
        // minimum, maximum, translation offset, length, all 32-bit.
        let min = phys::read_u32(p + 10);
        let max = phys::read_u32(p + 14);
        let size = phys::read_u32(p + 22);
        if max <= min || max - min != size.wrapping_sub(1) {
            continue;
        }
        // ECAM: the MCFG's buses, else 256 buses from `_CBA`.
        let ecam = mcfg
            .map(|m| (m.base, m.base + ((u64::from(m.bus_end) + 1) << 20)))
            .or(cba.map(|base| (base, base + (256 << 20))));
        let in_ecam =
            ecam.is_some_and(|(base, end)| u64::from(min) < end && u64::from(max) >= base);
        if !in_ecam && best.is_none_or(|(lo, hi)| hi - lo < max - min) {
            best = Some((min, max));
        }
    }
    best
}

/// Finds the ECAM base in the DSDT: `Name (_CBA, n)` or QEMU's
/// `Method (_CBA) { Return (n) }`, n an AML integer constant.
fn find_cba(dsdt: u64) -> Option<u64> {
    const RETURN_OP: u8 = 0xA4;
    let len = table_len(dsdt);
    let name_at =
        (SDT_HEADER..len.saturating_sub(16)).find(|&i| &signature(dsdt + i) == b"_CBA")?;
    let mut at = dsdt + name_at + 4;
    // A method: its flags byte, then Return.
    if phys::read_u8(at + 1) == RETURN_OP {
        at += 2;
    }
    let (bytes, value_at) = match phys::read_u8(at) {
        0x0A => (1, at + 1),
        0x0B => (2, at + 1),
        0x0C => (4, at + 1),
        0x0E => (8, at + 1),
        _ => return None,
    };
    let value = (0..bytes).fold(0u64, |v, i| {
        v | u64::from(phys::read_u8(value_at + i)) << (8 * i)
    });
    (value != 0).then_some(value)
}

/// The status port of a Generic Event Device (`_HID "ACPI0013"`) whose events live in a
/// one-byte SystemIO region named GDST, as the Vireo engine's DSDT declares it: the AML
/// `OperationRegion (GDST, SystemIO, port, 1)` is ExtOpPrefix 0x5B, OpRegionOp 0x80, the
/// name, space 0x01, then the port as a byte or word constant. (QEMU's GED is in memory
/// space, and has no such region: no power button for the probe there.)
fn find_ged_port(dsdt: u64) -> Option<u16> {
    const GED_HID: &[u8] = b"ACPI0013";
    let len = table_len(dsdt);
    let matches_at = |at: u64, bytes: &[u8]| {
        bytes
            .iter()
            .enumerate()
            .all(|(i, b)| phys::read_u8(at + i as u64) == *b)
    };
    let body = SDT_HEADER..len.saturating_sub(16);
    body.clone().find(|&i| matches_at(dsdt + i, GED_HID))?;
    let region = body
        .clone()
        .find(|&i| matches_at(dsdt + i, &[0x5B, 0x80]) && matches_at(dsdt + i + 2, b"GDST\x01"))?;
    let at = dsdt + region + 7;
    match phys::read_u8(at) {
        0x0A => Some(u16::from(phys::read_u8(at + 1))),
        0x0B => Some(u16::from(phys::read_u8(at + 1)) | u16::from(phys::read_u8(at + 2)) << 8),
        _ => None,
    }
}

/// Whether the power button was pressed since the last look (reading the GED's status
/// clears it, as its `_EVT` method does). Looks at most every ~1 ms: each look is a
/// port read, so an exit to the VMM, and the callers' loops spin.
pub fn power_button_pressed() -> bool {
    const POWER_BUTTON: u8 = 1 << 0;
    const EVERY_TSC_TICKS: u64 = 2_000_000;
    static LAST_LOOK: AtomicU64 = AtomicU64::new(0);
    let now = arch::rdtsc();
    if now.wrapping_sub(LAST_LOOK.load(Ordering::Relaxed)) < EVERY_TSC_TICKS {
        return false;
    }
    LAST_LOOK.store(now, Ordering::Relaxed);
    platform()
        .and_then(|acpi| acpi.ged_port)
        .is_some_and(|p| port::inb(p) & POWER_BUTTON != 0)
}

/// The tables found at boot, if any.
pub fn platform() -> Option<&'static Acpi> {
    PLATFORM.get()
}

/// Gives the VMM time to act on a power request before trying the next method.
fn settle() {
    let start = arch::rdtsc();
    while arch::rdtsc().wrapping_sub(start) < 300_000_000 {
        core::hint::spin_loop();
    }
}

/// Powers the machine off: SLEEP_CONTROL_REG on hardware-reduced ACPI, else the PM1a
/// control block, else QEMU's debug-exit port, else a triple fault.
pub fn power_off() -> ! {
    if let Some(acpi) = platform() {
        if acpi.hw_reduced && acpi.sleep_control.is_present() {
            let value = (acpi.s5_type << 2) | SLEEP_CONTROL_SLP_EN;
            acpi.sleep_control.write(u64::from(value));
            settle();
        } else if acpi.pm1a_cnt != 0 {
            let value = (u16::from(acpi.s5_type) << 10) | PM1_CNT_SLP_EN;
            port::outw(acpi.pm1a_cnt as u16, value);
            settle();
        }
    }
    port::outb(DEBUG_EXIT_PORT, 0);
    settle();
    arch::triple_fault()
}

/// Resets the machine: the FADT's RESET_REG, else the i8042 reset line, else a triple
/// fault.
pub fn reboot() -> ! {
    if let Some((reg, value)) = platform().and_then(|acpi| acpi.reset) {
        if reg.is_present() {
            reg.write(u64::from(value));
            settle();
        }
    }
    reboot_by_i8042()
}

/// Resets the machine through the keyboard controller's reset line, as Linux's
/// `reboot=k` does; else a triple fault.
pub fn reboot_by_i8042() -> ! {
    port::outb(I8042_COMMAND, I8042_PULSE_RESET);
    settle();
    arch::triple_fault()
}
