//! Just enough ELF64 reading to check what the image builder produces: that the
//! extracted `vmlinux` carries the PVH entry note, and that `vireo-agent` is static (no
//! `PT_INTERP`). Every offset is bounds-checked: the input is whatever a package held.

/// `e_ident` magic.
const ELFMAG: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
/// Offsets in the ELF64 file header.
const E_MACHINE: usize = 0x12;
const E_PHOFF: usize = 0x20;
const E_PHENTSIZE: usize = 0x36;
const E_PHNUM: usize = 0x38;
const ELF64_EHDR_LEN: usize = 0x40;
/// Offsets in an ELF64 program header.
const P_TYPE: usize = 0x00;
const P_OFFSET: usize = 0x08;
const P_FILESZ: usize = 0x20;
const ELF64_PHDR_LEN: usize = 0x38;

pub const PT_INTERP: u32 = 3;
pub const PT_NOTE: u32 = 4;

/// Xen's note type for the 32-bit physical entry point: the PVH boot entry
/// (xen/include/public/elfnote.h), under the note name "Xen".
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const XEN_NOTE_NAME: &[u8] = b"Xen";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a little-endian ELF64 file for x86-64")]
    NotX86_64,
    #[error("ELF structure out of bounds: {0}")]
    Truncated(&'static str),
    #[error("no PVH entry note (ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY, name \"Xen\")")]
    NoPvhNote,
}

/// A program header's type and file extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub offset: u64,
    pub filesz: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The program headers of a little-endian x86-64 ELF64 file.
pub fn program_headers(elf: &[u8]) -> Result<Vec<ProgramHeader>, ElfError> {
    if elf.get(..4) != Some(ELFMAG) {
        return Err(ElfError::NotElf);
    }
    if elf.len() < ELF64_EHDR_LEN
        || elf[EI_CLASS] != ELFCLASS64
        || elf[EI_DATA] != ELFDATA2LSB
        || u16_at(elf, E_MACHINE) != Some(EM_X86_64)
    {
        return Err(ElfError::NotX86_64);
    }
    let phoff = u64_at(elf, E_PHOFF).ok_or(ElfError::Truncated("e_phoff"))?;
    let phentsize = u16_at(elf, E_PHENTSIZE).ok_or(ElfError::Truncated("e_phentsize"))?;
    let phnum = u16_at(elf, E_PHNUM).ok_or(ElfError::Truncated("e_phnum"))?;
    if phnum > 0 && usize::from(phentsize) < ELF64_PHDR_LEN {
        return Err(ElfError::Truncated("e_phentsize"));
    }
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::Truncated("e_phoff"))?;
    (0..usize::from(phnum))
        .map(|i| {
            let base = phoff
                .checked_add(i * usize::from(phentsize))
                .ok_or(ElfError::Truncated("program header"))?;
            let read = || {
                Some(ProgramHeader {
                    p_type: u32_at(elf, base + P_TYPE)?,
                    offset: u64_at(elf, base + P_OFFSET)?,
                    filesz: u64_at(elf, base + P_FILESZ)?,
                })
            };
            read().ok_or(ElfError::Truncated("program header"))
        })
        .collect()
}

/// True if the file has a `PT_INTERP` segment, i.e. needs a dynamic loader.
pub fn has_interpreter(elf: &[u8]) -> Result<bool, ElfError> {
    Ok(program_headers(elf)?
        .iter()
        .any(|ph| ph.p_type == PT_INTERP))
}

/// The PVH entry point (physical address) from the `XEN_ELFNOTE_PHYS32_ENTRY` note.
pub fn pvh_entry(elf: &[u8]) -> Result<u64, ElfError> {
    for ph in program_headers(elf)?
        .into_iter()
        .filter(|ph| ph.p_type == PT_NOTE)
    {
        let start = usize::try_from(ph.offset).map_err(|_| ElfError::Truncated("PT_NOTE"))?;
        let len = usize::try_from(ph.filesz).map_err(|_| ElfError::Truncated("PT_NOTE"))?;
        let notes = start
            .checked_add(len)
            .and_then(|end| elf.get(start..end))
            .ok_or(ElfError::Truncated("PT_NOTE"))?;
        if let Some(entry) = find_pvh_note(notes)? {
            return Ok(entry);
        }
    }
    Err(ElfError::NoPvhNote)
}

/// Walks the notes of one `PT_NOTE` segment: namesz, descsz, type, then name and desc,
/// each padded to four bytes.
fn find_pvh_note(mut notes: &[u8]) -> Result<Option<u64>, ElfError> {
    let pad4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0).unwrap_or(0) as usize;
        let descsz = u32_at(notes, 4).unwrap_or(0) as usize;
        let n_type = u32_at(notes, 8).unwrap_or(0);
        let name_end = 12 + pad4(namesz).ok_or(ElfError::Truncated("note"))?;
        let desc_end = name_end
            .checked_add(pad4(descsz).ok_or(ElfError::Truncated("note"))?)
            .ok_or(ElfError::Truncated("note"))?;
        let name = notes
            .get(12..12 + namesz)
            .ok_or(ElfError::Truncated("note name"))?;
        let desc = notes
            .get(name_end..name_end + descsz)
            .ok_or(ElfError::Truncated("note desc"))?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        if name == XEN_NOTE_NAME && n_type == XEN_ELFNOTE_PHYS32_ENTRY {
            // Linux writes the entry with _ASM_PTR: 8 bytes on x86-64, 4 on i386.
            let entry = match descsz {
                4 => u32_at(desc, 0).map(u64::from),
                8 => u64_at(desc, 0),
                _ => None,
            };
            return entry.map(Some).ok_or(ElfError::Truncated("PVH note desc"));
        }
        notes = notes.get(desc_end..).unwrap_or(&[]);
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 with the given program headers (type, contents), contents laid
    /// out after the headers.
    pub(crate) fn synthetic_elf(segments: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut elf = vec![0u8; ELF64_EHDR_LEN];
        elf[..4].copy_from_slice(ELFMAG);
        elf[EI_CLASS] = ELFCLASS64;
        elf[EI_DATA] = ELFDATA2LSB;
        elf[E_MACHINE..E_MACHINE + 2].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[E_PHOFF..E_PHOFF + 8].copy_from_slice(&(ELF64_EHDR_LEN as u64).to_le_bytes());
        elf[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&(ELF64_PHDR_LEN as u16).to_le_bytes());
        elf[E_PHNUM..E_PHNUM + 2].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        let mut data_off = ELF64_EHDR_LEN + segments.len() * ELF64_PHDR_LEN;
        for (p_type, data) in segments {
            let mut ph = [0u8; ELF64_PHDR_LEN];
            ph[P_TYPE..P_TYPE + 4].copy_from_slice(&p_type.to_le_bytes());
            ph[P_OFFSET..P_OFFSET + 8].copy_from_slice(&(data_off as u64).to_le_bytes());
            ph[P_FILESZ..P_FILESZ + 8].copy_from_slice(&(data.len() as u64).to_le_bytes());
            elf.extend_from_slice(&ph);
            data_off += data.len();
        }
        for (_, data) in segments {
            elf.extend_from_slice(data);
        }
        elf
    }

    pub(crate) fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&n_type.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn finds_pvh_note_after_other_notes() {
        let mut notes = note(b"GNU", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen", 6, b"linux\0"));
        notes.extend(note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x1000_1234u64.to_le_bytes(),
        ));
        let elf = synthetic_elf(&[(1, vec![0; 16]), (PT_NOTE, notes)]);
        assert_eq!(pvh_entry(&elf), Ok(0x1000_1234));
        assert_eq!(has_interpreter(&elf), Ok(false));
    }

    #[test]
    fn four_byte_pvh_note() {
        let elf = synthetic_elf(&[(
            PT_NOTE,
            note(
                b"Xen",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &0x0100_0000u32.to_le_bytes(),
            ),
        )]);
        assert_eq!(pvh_entry(&elf), Ok(0x0100_0000));
    }

    #[test]
    fn missing_pvh_note() {
        let elf = synthetic_elf(&[(PT_NOTE, note(b"GNU", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 8]))]);
        assert_eq!(pvh_entry(&elf), Err(ElfError::NoPvhNote));
    }

    #[test]
    fn interpreter_detected() {
        let elf = synthetic_elf(&[(PT_INTERP, b"/lib64/ld-linux-x86-64.so.2\0".to_vec())]);
        assert_eq!(has_interpreter(&elf), Ok(true));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(pvh_entry(b"MZ\x90\0"), Err(ElfError::NotElf));
        assert_eq!(pvh_entry(b"\x7fELF"), Err(ElfError::NotX86_64));
        let mut elf = synthetic_elf(&[(PT_NOTE, note(b"Xen", 18, &[0; 8]))]);
        // Point the note segment past the end of the file.
        let ph = ELF64_EHDR_LEN + P_OFFSET;
        elf[ph..ph + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(pvh_entry(&elf), Err(ElfError::Truncated(_))));
        // A note whose sizes overrun its segment.
        let mut bad = note(b"Xen", 18, &[0; 8]);
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let elf = synthetic_elf(&[(PT_NOTE, bad)]);
        assert!(matches!(pvh_entry(&elf), Err(ElfError::Truncated(_))));
        for len in 0..ELF64_EHDR_LEN + ELF64_PHDR_LEN {
            let elf = synthetic_elf(&[(PT_NOTE, note(b"Xen", 18, &[0; 8]))]);
            let _ = pvh_entry(&elf[..len]);
        }
    }
}
