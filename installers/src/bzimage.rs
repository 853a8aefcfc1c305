//! Extracting the uncompressed `vmlinux` from a bzImage, like the kernel's own
//! `scripts/extract-vmlinux`, but by reading the boot protocol's setup header instead of
//! scanning for magic numbers (Documentation/arch/x86/boot.rst).
//!
//! A bzImage is the real-mode setup (`setup_sects` + 1 sectors of 512 bytes) followed by
//! the protected-mode part, which holds the compressed `vmlinux` at `payload_offset` for
//! `payload_length` bytes (boot protocol 2.08+). The kernel build appends the
//! uncompressed size as a little-endian u32 to the payload; we check it.

use std::io::Read;

/// Offsets in the bzImage, from the start of the file (the setup header is at 0x1f1).
const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

const BOOT_FLAG_VALUE: u16 = 0xaa55;
const HDRS: &[u8; 4] = b"HdrS";
/// The first boot protocol version with `payload_offset`/`payload_length`.
const MIN_VERSION: u16 = 0x0208;
const SECTOR: usize = 512;
/// No vmlinux comes near this; a larger output is a corrupt or hostile payload.
const MAX_VMLINUX: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Lzma,
    Zstd,
    Bzip2,
    Lzo,
    Lz4,
}

impl Compression {
    /// Recognizes the compressor from the payload's first bytes (the magics the kernel's
    /// `scripts/extract-vmlinux` looks for).
    pub fn detect(payload: &[u8]) -> Option<Self> {
        const MAGICS: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (b"BZh", Compression::Bzip2),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|&(_, c)| c)
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    #[error("not a bzImage: {0}")]
    NotBzImage(&'static str),
    #[error("boot protocol {major}.{minor:02} is older than 2.08, which has no payload fields")]
    OldProtocol { major: u8, minor: u8 },
    #[error("payload (offset {offset}, length {length}) lies outside the {file_len}-byte file")]
    PayloadOutOfBounds {
        offset: usize,
        length: usize,
        file_len: usize,
    },
    #[error("unknown payload compression (first bytes {0:02x?})")]
    UnknownCompression(Vec<u8>),
    #[error("{0}-compressed kernels are not supported (gzip, xz, lzma and zstd are)")]
    UnsupportedCompression(Compression),
    #[error("decompressing the {compression} payload")]
    Decompress {
        compression: Compression,
        #[source]
        source: std::io::Error,
    },
    #[error("decompressed vmlinux is {actual} bytes, the payload trailer says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
}

/// What the setup header says about the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    /// Boot protocol version, e.g. 0x020f.
    pub version: u16,
    /// Offset of the payload from the start of the protected-mode code.
    pub payload_offset: u32,
    pub payload_length: u32,
}

impl SetupHeader {
    pub fn parse(image: &[u8]) -> Result<Self, BzImageError> {
        let u16_at = |off: usize| {
            image
                .get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |off: usize| {
            image
                .get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if image.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(HDRS) {
            return Err(BzImageError::NotBzImage("no \"HdrS\" setup header magic"));
        }
        if u16_at(BOOT_FLAG) != Some(BOOT_FLAG_VALUE) {
            return Err(BzImageError::NotBzImage("no 0xAA55 boot flag"));
        }
        let version = u16_at(VERSION).ok_or(BzImageError::NotBzImage("truncated header"))?;
        if version < MIN_VERSION {
            return Err(BzImageError::OldProtocol {
                major: (version >> 8) as u8,
                minor: version as u8,
            });
        }
        let truncated = BzImageError::NotBzImage("truncated setup header");
        let payload_offset = u32_at(PAYLOAD_OFFSET).ok_or(truncated)?;
        let payload_length =
            u32_at(PAYLOAD_LENGTH).ok_or(BzImageError::NotBzImage("truncated setup header"))?;
        Ok(SetupHeader {
            // "If this field is 0, the real value is 4."
            setup_sects: match image[SETUP_SECTS] {
                0 => 4,
                n => n,
            },
            version,
            payload_offset,
            payload_length,
        })
    }

    /// Byte range of the compressed payload in the file.
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        let start = (usize::from(self.setup_sects) + 1) * SECTOR + self.payload_offset as usize;
        start..start + self.payload_length as usize
    }
}

/// The compressed payload of a bzImage and its compression.
pub fn payload(image: &[u8]) -> Result<(&[u8], Compression), BzImageError> {
    let header = SetupHeader::parse(image)?;
    let range = header.payload_range();
    let payload = image
        .get(range.clone())
        .ok_or(BzImageError::PayloadOutOfBounds {
            offset: range.start,
            length: range.len(),
            file_len: image.len(),
        })?;
    let compression = Compression::detect(payload).ok_or_else(|| {
        BzImageError::UnknownCompression(payload.iter().take(6).copied().collect())
    })?;
    Ok((payload, compression))
}

fn read_all(reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(MAX_VMLINUX).read_to_end(&mut out)?;
    Ok(out)
}

/// Runs a liblzma decoder over `input` until its stream ends. Unlike xz2's `Read`
/// adapters, this ignores what follows the stream (the kernel's size trailer).
fn xz_decompress(mut stream: xz2::stream::Stream, input: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len().saturating_mul(4));
    let mut rest = input;
    loop {
        if out.len() == out.capacity() {
            if out.len() as u64 >= MAX_VMLINUX {
                return Err(std::io::Error::other(
                    "decompressed kernel larger than 1 GiB",
                ));
            }
            out.reserve(1 << 20);
        }
        let (in_before, out_before) = (stream.total_in(), out.len());
        let status = stream.process_vec(rest, &mut out, xz2::stream::Action::Finish)?;
        let consumed = (stream.total_in() - in_before) as usize;
        rest = &rest[consumed..];
        if status == xz2::stream::Status::StreamEnd {
            return Ok(out);
        }
        if consumed == 0 && out.len() == out_before {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated compressed stream",
            ));
        }
    }
}

/// The uncompressed kernel (`vmlinux`, an ELF) inside a bzImage.
pub fn extract_vmlinux(image: &[u8]) -> Result<(Vec<u8>, Compression), BzImageError> {
    let (payload, compression) = payload(image)?;
    let decompress_err = |source| BzImageError::Decompress {
        compression,
        source,
    };
    // Each decoder stops at the end of its stream, before the appended size.
    let out = match compression {
        Compression::Gzip => read_all(flate2::read::GzDecoder::new(payload)),
        Compression::Xz => xz2::stream::Stream::new_stream_decoder(MAX_VMLINUX, 0)
            .map_err(std::io::Error::from)
            .and_then(|stream| xz_decompress(stream, payload)),
        Compression::Lzma => xz2::stream::Stream::new_lzma_decoder(MAX_VMLINUX)
            .map_err(std::io::Error::from)
            .and_then(|stream| xz_decompress(stream, payload)),
        Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(payload)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
            .and_then(read_all),
        other => return Err(BzImageError::UnsupportedCompression(other)),
    }
    .map_err(decompress_err)?;
    if let Some(trailer) = payload.len().checked_sub(4).map(|at| &payload[at..]) {
        let expected = u64::from(u32::from_le_bytes([
            trailer[0], trailer[1], trailer[2], trailer[3],
        ]));
        if expected != out.len() as u64 {
            return Err(BzImageError::SizeMismatch {
                expected,
                actual: out.len() as u64,
            });
        }
    }
    Ok((out, compression))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A synthetic bzImage: `setup_sects` sectors of setup after the boot sector, then
    /// `pad` bytes of "decompressor", then the payload with the size trailer.
    fn synthetic(setup_sects: u8, pad: usize, compressed: &[u8], plain_len: usize) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { setup_sects };
        let mut image = vec![0u8; (usize::from(sects) + 1) * SECTOR + pad];
        image[SETUP_SECTS] = setup_sects;
        image[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG_VALUE.to_le_bytes());
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(HDRS);
        image[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        let length = compressed.len() as u32 + 4;
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&(pad as u32).to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(compressed);
        image.extend_from_slice(&(plain_len as u32).to_le_bytes());
        // Trailing bytes after the payload (the decompressor's .bss image, padding).
        image.extend_from_slice(&[0xcc; 100]);
        image
    }

    fn fake_vmlinux() -> Vec<u8> {
        let mut elf = crate::elf::tests::synthetic_elf(&[(
            crate::elf::PT_NOTE,
            crate::elf::tests::note(b"Xen", crate::elf::XEN_ELFNOTE_PHYS32_ENTRY, &[0; 8]),
        )]);
        elf.extend((0..50_000u32).map(|i| (i % 251) as u8));
        elf
    }

    #[test]
    fn parses_setup_header() {
        let image = synthetic(27, 0x2c0, b"\x1f\x8bxx", 10);
        let h = SetupHeader::parse(&image).unwrap();
        assert_eq!(
            h,
            SetupHeader {
                setup_sects: 27,
                version: 0x020f,
                payload_offset: 0x2c0,
                payload_length: 8
            }
        );
        assert_eq!(h.payload_range(), 28 * 512 + 0x2c0..28 * 512 + 0x2c0 + 8);
        assert_eq!(payload(&image).unwrap().1, Compression::Gzip);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let image = synthetic(0, 16, b"\xfd7zXZ\0", 1);
        assert_eq!(SetupHeader::parse(&image).unwrap().setup_sects, 4);
        assert_eq!(payload(&image).unwrap().1, Compression::Xz);
    }

    #[test]
    fn rejects_non_bzimages() {
        assert!(matches!(
            SetupHeader::parse(&[0; 100]),
            Err(BzImageError::NotBzImage(_))
        ));
        let mut image = synthetic(4, 0, b"\x1f\x8b", 1);
        image[VERSION..VERSION + 2].copy_from_slice(&0x0204u16.to_le_bytes());
        assert!(matches!(
            SetupHeader::parse(&image),
            Err(BzImageError::OldProtocol { major: 2, minor: 4 })
        ));
        let mut image = synthetic(4, 0, b"\x1f\x8b", 1);
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            payload(&image),
            Err(BzImageError::PayloadOutOfBounds { .. })
        ));
        let image = synthetic(4, 0, b"\0\0\0\0", 1);
        assert!(matches!(
            payload(&image),
            Err(BzImageError::UnknownCompression(_))
        ));
        let image = synthetic(4, 0, b"BZh9", 1);
        assert!(matches!(
            extract_vmlinux(&image),
            Err(BzImageError::UnsupportedCompression(Compression::Bzip2))
        ));
    }

    #[test]
    fn extracts_gzip_payload() {
        let plain = fake_vmlinux();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let image = synthetic(30, 0x300, &gz.finish().unwrap(), plain.len());
        let (out, c) = extract_vmlinux(&image).unwrap();
        assert_eq!(c, Compression::Gzip);
        assert_eq!(out, plain);
        assert!(crate::elf::pvh_entry(&out).is_ok());
    }

    #[test]
    fn extracts_xz_payload_with_x86_filter() {
        // Like the kernel's scripts/xz_wrap.sh: the x86 BCJ filter, then LZMA2.
        let plain = fake_vmlinux();
        let mut filters = xz2::stream::Filters::new();
        filters.x86();
        filters.lzma2(&xz2::stream::LzmaOptions::new_preset(6).unwrap());
        let stream =
            xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).unwrap();
        let mut xz = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        xz.write_all(&plain).unwrap();
        let image = synthetic(39, 0x2cc, &xz.finish().unwrap(), plain.len());
        let (out, c) = extract_vmlinux(&image).unwrap();
        assert_eq!(c, Compression::Xz);
        assert_eq!(out, plain);
    }

    #[test]
    fn extracts_zstd_payload() {
        let plain = fake_vmlinux();
        let zst = ruzstd::encoding::compress_to_vec(
            plain.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let image = synthetic(31, 0x10, &zst, plain.len());
        let (out, c) = extract_vmlinux(&image).unwrap();
        assert_eq!(c, Compression::Zstd);
        assert_eq!(out, plain);
    }

    #[test]
    fn size_trailer_is_checked() {
        let plain = fake_vmlinux();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let image = synthetic(30, 0, &gz.finish().unwrap(), plain.len() + 1);
        assert!(matches!(
            extract_vmlinux(&image),
            Err(BzImageError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn corrupt_payload_is_an_error() {
        let image = synthetic(30, 0, b"\xfd7zXZ\0garbage-garbage", 1000);
        assert!(matches!(
            extract_vmlinux(&image),
            Err(BzImageError::Decompress {
                compression: Compression::Xz,
                ..
            })
        ));
    }
}
