//! MSI-X (PCI Local Bus 3.0, 6.8.2): the capability, the vector table and the pending
//! bit array, with each vector delivered through its own irqfd + GSI route. A masked
//! vector (or function) holds its interrupt as a pending bit until it is unmasked.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::irq::{Error, GsiRouter, MsiMessage};

/// Capability ID and register layout.
pub const MSIX_CAP_ID: u8 = 0x11;
pub const MSIX_CAP_LEN: usize = 12;
/// Message control: bit 15 enable, bit 14 function mask, bits 10:0 table size - 1.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Each table entry: address low, address high, data, vector control (bit 0 = masked).
pub const TABLE_ENTRY_SIZE: u64 = 16;
const VECTOR_CONTROL_MASKED: u32 = 1;
/// "No vector" for virtio's queue/config vector registers.
pub const NO_VECTOR: u16 = 0xffff;

#[derive(Debug, Clone, Copy)]
struct Entry {
    msg: MsiMessage,
    control: u32,
}

/// What a snapshot keeps of a function's MSI-X state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    pub table: Vec<u8>,
    pub pending: Vec<bool>,
}

pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    irqfds: Vec<EventFd>,
    gsis: Vec<u32>,
    router: Arc<GsiRouter>,
}

impl Msix {
    /// `count` vectors, each with a GSI and an irqfd registered with KVM.
    pub fn new(count: u16, router: Arc<GsiRouter>) -> Result<Self, Error> {
        let mut irqfds = Vec::with_capacity(count as usize);
        let mut gsis = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let gsi = router.allocate()?;
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
                Error::Irqfd(kvm_ioctls::Error::new(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
            router.vm().register_irqfd(&fd, gsi).map_err(Error::Irqfd)?;
            irqfds.push(fd);
            gsis.push(gsi);
        }
        let masked = Entry {
            msg: MsiMessage::default(),
            control: VECTOR_CONTROL_MASKED,
        };
        Ok(Self {
            entries: vec![masked; count as usize],
            pending: vec![false; count as usize],
            enabled: false,
            function_masked: false,
            irqfds,
            gsis,
            router,
        })
    }

    pub fn vector_count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability body (ID, next, control, table and PBA offset/BIR) and its
    /// guest-writable mask: only the enable and function-mask bits are writable.
    pub fn capability(
        &self,
        bar_slot: u8,
        table_offset: u32,
        pba_offset: u32,
    ) -> ([u8; MSIX_CAP_LEN], [u8; MSIX_CAP_LEN]) {
        let mut body = [0u8; MSIX_CAP_LEN];
        body[0] = MSIX_CAP_ID;
        body[2..4].copy_from_slice(&(self.vector_count() - 1).to_le_bytes());
        body[4..8].copy_from_slice(&(table_offset | u32::from(bar_slot)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba_offset | u32::from(bar_slot)).to_le_bytes());
        let mut writable = [0u8; MSIX_CAP_LEN];
        writable[3] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, writable)
    }

    /// The guest wrote the capability's message control register.
    pub fn set_control(&mut self, control: u16) {
        let was_delivering = self.delivering();
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if !was_delivering && self.delivering() {
            for v in 0..self.entries.len() {
                self.deliver_if_pending(v);
            }
        }
    }

    fn delivering(&self) -> bool {
        self.enabled && !self.function_masked
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A guest read of the table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let mut bytes = [0u8; 16];
        let (index, within) = (
            (offset / TABLE_ENTRY_SIZE) as usize,
            (offset % TABLE_ENTRY_SIZE) as usize,
        );
        if let Some(e) = self.entries.get(index) {
            bytes[0..4].copy_from_slice(&e.msg.address_lo.to_le_bytes());
            bytes[4..8].copy_from_slice(&e.msg.address_hi.to_le_bytes());
            bytes[8..12].copy_from_slice(&e.msg.data.to_le_bytes());
            bytes[12..16].copy_from_slice(&e.control.to_le_bytes());
        }
        copy_out(&bytes, within, data);
    }

    /// A guest write to the table: a changed message updates its route; unmasking
    /// delivers what was held pending.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (index, within) = (
            (offset / TABLE_ENTRY_SIZE) as usize,
            (offset % TABLE_ENTRY_SIZE) as usize,
        );
        let Some(entry) = self.entries.get(index).copied() else {
            return;
        };
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&entry.msg.address_lo.to_le_bytes());
        bytes[4..8].copy_from_slice(&entry.msg.address_hi.to_le_bytes());
        bytes[8..12].copy_from_slice(&entry.msg.data.to_le_bytes());
        bytes[12..16].copy_from_slice(&entry.control.to_le_bytes());
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(within + i) {
                *slot = *b;
            }
        }
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let new = Entry {
            msg: MsiMessage {
                address_lo: word(0),
                address_hi: word(4),
                data: word(8),
            },
            control: word(12) & VECTOR_CONTROL_MASKED,
        };
        self.entries[index] = new;
        if new.msg != entry.msg {
            if let Err(e) = self.router.set_msi(self.gsis[index], new.msg) {
                tracing::warn!("msi-x vector {index}: {e}");
            }
        }
        if entry.control & VECTOR_CONTROL_MASKED != 0 && new.control & VECTOR_CONTROL_MASKED == 0 {
            self.deliver_if_pending(index);
        }
    }

    /// The table (16 bytes per vector, as the guest reads it) and the pending bits.
    pub fn save(&self) -> MsixState {
        let mut table = vec![0u8; self.entries.len() * TABLE_ENTRY_SIZE as usize];
        self.read_table(0, &mut table);
        MsixState {
            table,
            pending: self.pending.clone(),
        }
    }

    /// Puts a saved table back as the guest would write it (each message gets its route
    /// again) and the pending bits; the enable and mask bits come from the capability,
    /// which the caller restores with `set_control`.
    pub fn restore(&mut self, state: &MsixState) -> Result<(), String> {
        let count = self.entries.len();
        if state.table.len() != count * TABLE_ENTRY_SIZE as usize || state.pending.len() != count {
            return Err(format!(
                "MSI-X state for {} vectors where the function has {count}",
                state.pending.len()
            ));
        }
        for (i, entry) in state.table.chunks(TABLE_ENTRY_SIZE as usize).enumerate() {
            self.write_table(i as u64 * TABLE_ENTRY_SIZE, entry);
        }
        self.pending.clone_from(&state.pending);
        Ok(())
    }

    /// A guest read of the pending bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let mut words = vec![0u8; self.pending.len().div_ceil(64) * 8];
        for (v, _) in self.pending.iter().enumerate().filter(|(_, p)| **p) {
            words[v / 8] |= 1 << (v % 8);
        }
        copy_out(&words, offset as usize, data);
    }

    /// Raises vector `vector`, or holds it pending while it (or the function) is
    /// masked. Vectors out of range (a driver's bad vector number) are dropped.
    pub fn trigger(&mut self, vector: u16) {
        let v = vector as usize;
        if v >= self.entries.len() || !self.enabled {
            return;
        }
        if self.function_masked || self.entries[v].control & VECTOR_CONTROL_MASKED != 0 {
            self.pending[v] = true;
        } else {
            let _ = self.irqfds[v].write(1);
        }
    }

    fn deliver_if_pending(&mut self, v: usize) {
        if self.pending[v]
            && self.delivering()
            && self.entries[v].control & VECTOR_CONTROL_MASKED == 0
        {
            self.pending[v] = false;
            let _ = self.irqfds[v].write(1);
        }
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        for (fd, gsi) in self.irqfds.iter().zip(&self.gsis) {
            let _ = self.router.vm().unregister_irqfd(fd, *gsi);
        }
    }
}

/// Copies `src[at..]` into `dst`, zero-filling what lies beyond `src`.
fn copy_out(src: &[u8], at: usize, dst: &mut [u8]) {
    for (i, b) in dst.iter_mut().enumerate() {
        *b = src.get(at + i).copied().unwrap_or(0);
    }
}
