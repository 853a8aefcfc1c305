//! The ACPI tables a guest finds through the RSDP: XSDT, FADT (hardware-reduced, with
//! the sleep-control and reset registers of `devices::acpi_pm`), MADT (one local APIC per
//! vCPU and the IOAPIC) and a DSDT with the `_S5` sleep state and the serial port.
//!
//! Hardware-reduced ACPI, as Firecracker and Cloud Hypervisor use: no PM1 blocks, SCI or
//! GPEs to emulate; power-off and reset are one-byte writes the engine turns into exits.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::acpi_pm::{
    GED_IRQ, GED_POWER_BUTTON, GED_STATUS_PORT, RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE,
    SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use crate::devices::serial::{COM1_IRQ, COM1_PORT};
use crate::pci::root::{PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};
use crate::x86_64::layout::{
    ACPI_TABLES_END, ACPI_TABLES_START, IOAPIC_START, LAPIC_START, PCI_ECAM_SIZE, PCI_ECAM_START,
    PCI_MMIO_WINDOW_END, PCI_MMIO_WINDOW_START, RSDP_START,
};

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_TABLE_ID: [u8; 8] = *b"VIREOVMM";
const OEM_REVISION: u32 = 1;
/// FADT IAPC_BOOT_ARCH bit 2: no VGA. The 8042 bit stays clear so the guest does not
/// probe for a PS/2 keyboard; our i8042 only implements the reset line.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ACPI tables need {needed:#x} bytes but only {available:#x} are reserved for them")]
    TooLarge { needed: u64, available: u64 },
    #[error("writing ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes every table for a VM with `vcpus` vCPUs and returns the RSDP's address.
pub fn create_tables(mem: &GuestMemoryMmap, vcpus: u8) -> Result<GuestAddress, Error> {
    let mut writer = TableWriter {
        mem,
        next: ACPI_TABLES_START,
    };
    let dsdt = writer.write(&dsdt())?;
    let fadt = writer.write(&fadt(dsdt))?;
    let madt = writer.write(&madt(vcpus))?;
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, last_bus());
    let mcfg = writer.write(&mcfg)?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    xsdt.add_entry(mcfg);
    let xsdt = writer.write(&xsdt)?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(RSDP_START))?;
    Ok(GuestAddress(RSDP_START))
}

/// Lays tables out one after the other, 16-byte aligned.
struct TableWriter<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl TableWriter<'_> {
    fn write(&mut self, table: &dyn Aml) -> Result<u64, Error> {
        let mut bytes = Vec::new();
        table.to_aml_bytes(&mut bytes);
        let addr = self.next;
        let end = addr + bytes.len() as u64;
        if end > ACPI_TABLES_END {
            return Err(Error::TooLarge {
                needed: end - ACPI_TABLES_START,
                available: ACPI_TABLES_END - ACPI_TABLES_START,
            });
        }
        self.mem.write_slice(&bytes, GuestAddress(addr))?;
        self.next = (end + 15) & !15;
        Ok(addr)
    }
}

fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // \_S5: the sleep type value the guest writes to SLEEP_CONTROL_REG to power off.
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut dsdt);
    // COM1, so the OS's serial driver finds it by ACPI enumeration, not by probing.
    let hid = aml::EISAName::new("PNP0501");
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let crs = aml::ResourceTemplate::new(vec![&irq, &io]);
    let uid: u8 = 0;
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CRS".into(), &crs),
    );
    let com1 = aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]);
    com1.to_aml_bytes(&mut dsdt);
    dsdt.append_slice(&pci_host_bridge());
    dsdt.append_slice(&power_button());
    dsdt
}

/// `\_SB_.PWRB` (the power button, PNP0C0C) and `\_SB_.GED_` (a Generic Event Device,
/// ACPI0013): the GED's interrupt runs `_EVT`, which reads the event status (reading
/// clears it) and notifies the button with 0x80, "pressed" (ACPI 6.5 §4.8.2.2.1.3).
fn power_button() -> Vec<u8> {
    let mut aml = Vec::new();
    let (pnp0c0c, zero) = (aml::EISAName::new("PNP0C0C"), 0u8);
    let (hid, uid) = (
        aml::Name::new("_HID".into(), &pnp0c0c),
        aml::Name::new("_UID".into(), &zero),
    );
    aml::Device::new("_SB_.PWRB".into(), vec![&hid, &uid]).to_aml_bytes(&mut aml);

    let ged_hid = "ACPI0013";
    let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &ged_hid),
        aml::Name::new("_UID".into(), &zero),
        aml::Name::new("_CRS".into(), &crs),
    );
    let (port, len) = (GED_STATUS_PORT, 1u8);
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &port, &len);
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let (status, gdat) = (aml::Local(0), aml::Path::new("GDAT"));
    let read = aml::Store::new(&status, &gdat);
    let pressed = aml::And::new(&aml::ZERO, &status, &GED_POWER_BUTTON);
    let (button, notify_pressed) = (aml::Path::new("\\_SB_.PWRB"), 0x80u8);
    let notify = aml::Notify::new(&button, &notify_pressed);
    let when_pressed = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &when_pressed]);
    aml::Device::new(
        "_SB_.GED_".into(),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    )
    .to_aml_bytes(&mut aml);
    aml
}

/// The last bus number ECAM covers (1 MiB per bus).
fn last_bus() -> u8 {
    (PCI_ECAM_SIZE / (1 << 20) - 1) as u8
}

/// `\_SB_.PCI0`: the PCI Express host bridge, its bus range, the config ports and the
/// MMIO window BARs live in; and a motherboard resource claiming ECAM, which OSes look
/// for before they trust MCFG. Returns the encoded AML.
fn pci_host_bridge() -> Vec<u8> {
    let bus_end = u16::from(last_bus());
    let buses = aml::AddressSpace::new_bus_number(0u16, bus_end);
    let ports = aml::IO::new(
        PCI_CONFIG_PORT,
        PCI_CONFIG_PORT,
        1,
        PCI_CONFIG_PORT_LEN as u8,
    );
    let window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_WINDOW_START as u32,
        (PCI_MMIO_WINDOW_END - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&buses, &ports, &window]);
    let (hid, cid) = (aml::EISAName::new("PNP0A08"), aml::EISAName::new("PNP0A03"));
    let zero: u8 = 0;
    let (n_hid, n_cid, n_uid, n_seg, n_bbn, n_crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_UID".into(), &zero),
        aml::Name::new("_SEG".into(), &zero),
        aml::Name::new("_BBN".into(), &zero),
        aml::Name::new("_CRS".into(), &crs),
    );
    let pci0 = aml::Device::new(
        "_SB_.PCI0".into(),
        vec![&n_hid, &n_cid, &n_uid, &n_seg, &n_bbn, &n_crs],
    );

    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let res_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let (res_hid, res_uid): (aml::EISAName, u8) = (aml::EISAName::new("PNP0C02"), 1);
    let (r_hid, r_uid, r_crs) = (
        aml::Name::new("_HID".into(), &res_hid),
        aml::Name::new("_UID".into(), &res_uid),
        aml::Name::new("_CRS".into(), &res_crs),
    );
    let motherboard = aml::Device::new("_SB_.MRES".into(), vec![&r_hid, &r_uid, &r_crs]);
    let mut out = Vec::new();
    pci0.to_aml_bytes(&mut out);
    motherboard.to_aml_bytes(&mut out);
    out
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.reset_reg = io_register(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIREOVMM").into();
    fadt.finalize()
}

fn madt(vcpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    madt
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Address;

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    /// The DSDT through ACPICA's own disassembler (`iasl`, from acpica-tools, which
    /// installers/setup-host.sh installs): it parses, and the power button's GED reads
    /// the status port and notifies the button.
    #[test]
    fn acpica_disassembles_the_dsdt_with_its_power_button() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!(
                "*** SKIPPED acpica_disassembles_the_dsdt: no iasl (run installers/setup-host.sh)"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("vireo-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut table = dsdt();
        table.update_checksum();
        std::fs::write(dir.join("dsdt.dat"), table.as_slice()).unwrap();
        let out = std::process::Command::new("iasl")
            .current_dir(&dir)
            .args(["-d", "dsdt.dat"])
            .output()
            .unwrap();
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Without iasl's comments, on one line.
        let squashed: String = dsl
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .map(|l| match (l.find("/*"), l.find("*/")) {
                (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b + 2..]),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for needle in [
            "Device (_SB.PWRB) { Name (_HID, EisaId (\"PNP0C0C\") )",
            "Device (_SB.GED) { Name (_HID, \"ACPI0013\" )",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
            "OperationRegion (GDST, SystemIO, 0x0603, One)",
            "Method (_EVT, 1, Serialized) { Local0 = GDAT If ((Local0 & One)) \
             { Notify (\\_SB.PWRB, 0x80) } }",
        ] {
            assert!(squashed.contains(needle), "no {needle:?} in\n{dsl}");
        }
    }

    /// Walks the tables as a guest would: RSDP → XSDT → FADT/MADT → DSDT.
    #[test]
    fn guest_can_walk_the_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp_addr = create_tables(&mem, 3).unwrap();
        let rsdp = read(&mem, rsdp_addr.raw_value(), 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt_len = u32_at(&read(&mem, xsdt_addr, 8), 4) as usize;
        let xsdt = read(&mem, xsdt_addr, xsdt_len);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let tables: Vec<(Vec<u8>, u64)> = (36..xsdt_len)
            .step_by(8)
            .map(|off| {
                let addr = u64_at(&xsdt, off);
                let len = u32_at(&read(&mem, addr, 8), 4) as usize;
                (read(&mem, addr, len), addr)
            })
            .collect();
        let find = |sig: &[u8]| {
            tables
                .iter()
                .find(|(t, _)| &t[..4] == sig)
                .unwrap()
                .0
                .clone()
        };
        let fadt = find(b"FACP");
        assert!(checksum_ok(&fadt));
        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "hardware-reduced");
        // SLEEP_CONTROL_REG is the GAS at offset 244: SystemIO, our port.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(&fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        // RESET_REG at 116, RESET_VALUE at 128.
        assert_eq!(u64_at(&fadt, 120), u64::from(RESET_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
        let madt = find(b"APIC");
        assert!(checksum_ok(&madt));
        let lapics = madt[44..]
            .chunks(8)
            .filter(|s| s[0] == 0 && s[1] == 8)
            .count();
        assert_eq!(lapics, 3);
        let dsdt_addr = u64_at(&fadt, 140);
        let dsdt_len = u32_at(&read(&mem, dsdt_addr, 8), 4) as usize;
        let dsdt = read(&mem, dsdt_addr, dsdt_len);
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        let mcfg = find(b"MCFG");
        assert!(checksum_ok(&mcfg));
        // One allocation: base address at 44, segment, start and end bus.
        assert_eq!(u64_at(&mcfg, 44), PCI_ECAM_START);
        assert_eq!((mcfg[54], mcfg[55]), (0, 0));
    }
}
