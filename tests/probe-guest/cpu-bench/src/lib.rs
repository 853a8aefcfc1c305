//! The CPU benchmark of the probe guest, shared with the host so that both run the same
//! code: SHA-256 over a deterministic, position-dependent byte pattern.
//!
//! The pattern at byte offset `o` depends only on `o`, so a stream of `N` bytes can be
//! produced and hashed in chunks of any size (a guest with 64 MiB of RAM cannot hold a
//! 256 MiB buffer) and still gives the same digest as hashing it in one piece. Only the
//! hashing is timed; producing the pattern is not.
//!
//! The disk pattern ([`fill_disk_pattern`], [`check_disk_pattern`]) is the same idea with
//! a seed: what the probe's block tests write to a virtio disk, so that the host can check
//! the image file with this very code.
#![no_std]

use sha2::{Digest, Sha256};

/// One mebibyte, the unit of the benchmark size.
pub const MIB: u64 = 1 << 20;

/// The pattern's 8-byte word number `index` (splitmix64: cheap, and no two words alike).
fn pattern_word(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern bytes that start at stream offset `offset`.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    let mut pos = offset;
    let mut rest = buf;
    // Leading bytes up to the next word boundary.
    while pos & 7 != 0 && !rest.is_empty() {
        rest[0] = pattern_word(pos / 8).to_le_bytes()[(pos % 8) as usize];
        rest = &mut rest[1..];
        pos += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        word.copy_from_slice(&pattern_word(pos / 8).to_le_bytes());
        pos += 8;
    }
    let tail = words.into_remainder();
    let last = pattern_word(pos / 8).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// Bytes per word of the disk pattern.
const WORD: u64 = 8;

/// The disk pattern's word number `index` for `seed`: the benchmark pattern shifted by
/// `seed << 40` words, so that two seeds never share a word at the same offset for disks
/// below 8 TiB (2^40 words). The probe's block tests write it; a host test checks an
/// image file with [`check_disk_pattern`].
fn disk_word(seed: u64, index: u64) -> u64 {
    pattern_word(index.wrapping_add(seed << 40))
}

/// Fills `buf` with the disk pattern for `seed` at byte offset `offset` of the disk.
/// Like [`fill_pattern`], the bytes depend only on the seed and the offset.
pub fn fill_disk_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut rest = buf;
    while !pos.is_multiple_of(WORD) && !rest.is_empty() {
        rest[0] = disk_word(seed, pos / WORD).to_le_bytes()[(pos % WORD) as usize];
        rest = &mut rest[1..];
        pos += 1;
    }
    let mut words = rest.chunks_exact_mut(WORD as usize);
    for word in &mut words {
        word.copy_from_slice(&disk_word(seed, pos / WORD).to_le_bytes());
        pos += WORD;
    }
    let tail = words.into_remainder();
    let last = disk_word(seed, pos / WORD).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// Checks `buf` against the disk pattern for `seed` at byte offset `offset`: `None` if it
/// matches, else the disk offset of the first byte that differs.
pub fn check_disk_pattern(seed: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    let mut expected = [0u8; 512];
    let mut done = 0;
    while done < buf.len() {
        let len = (buf.len() - done).min(expected.len());
        let at = offset + done as u64;
        fill_disk_pattern(seed, at, &mut expected[..len]);
        if expected[..len] != buf[done..done + len] {
            let bad = (0..len)
                .find(|&i| expected[i] != buf[done + i])
                .unwrap_or(0);
            return Some(at + bad as u64);
        }
        done += len;
    }
    None
}

/// SHA-256 of `data` (uses SHA-NI when the CPU has it, detected at run time).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// What [`hash_pattern`] measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchResult {
    /// SHA-256 of the whole pattern stream.
    pub digest: [u8; 32],
    /// Clock ticks spent hashing, summed over chunks; pattern generation excluded.
    pub hash_ticks: u64,
    /// Bytes hashed.
    pub bytes: u64,
}

/// Hashes the first `total` bytes of the pattern, using `buf` as the working buffer
/// (filled once if it is large enough, else refilled per chunk) and `clock` (a monotonic
/// counter such as the TSC) to time the hashing alone.
pub fn hash_pattern(total: u64, buf: &mut [u8], mut clock: impl FnMut() -> u64) -> BenchResult {
    assert!(!buf.is_empty() || total == 0, "hash_pattern needs a buffer");
    let mut hasher = Sha256::new();
    let mut hash_ticks = 0;
    let mut offset = 0;
    while offset < total {
        let len = (total - offset).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..len];
        fill_pattern(chunk, offset);
        let start = clock();
        hasher.update(&*chunk);
        hash_ticks += clock().wrapping_sub(start);
        offset += len as u64;
    }
    BenchResult {
        digest: hasher.finalize().into(),
        hash_ticks,
        bytes: total,
    }
}

/// Lower-case hex of a digest, without allocating.
pub fn to_hex(digest: &[u8; 32]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 64];
    for (i, byte) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

/// Throughput in MiB/s for `bytes` hashed in `ticks` of a clock running at `ticks_per_s`.
pub fn mib_per_s(bytes: u64, ticks: u64, ticks_per_s: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    ((u128::from(bytes) * u128::from(ticks_per_s)) / (u128::from(ticks) * u128::from(MIB))) as u64
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn sha256_known_answer() {
        let hex = to_hex(&sha256(b"abc"));
        assert_eq!(
            &hex[..],
            b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn fill_is_position_dependent_and_seekable() {
        let mut whole = vec![0u8; 100];
        fill_pattern(&mut whole, 0);
        let mut part = vec![0u8; 37];
        fill_pattern(&mut part, 13);
        assert_eq!(&whole[13..50], &part[..]);
        assert_ne!(&whole[..8], &whole[8..16]);
    }

    #[test]
    fn digest_does_not_depend_on_the_chunk_size() {
        let total = 3 * MIB + 5;
        let mut big = vec![0u8; total as usize];
        let mut small = vec![0u8; 4096 + 3];
        let a = hash_pattern(total, &mut big, || 0);
        let b = hash_pattern(total, &mut small, || 0);
        assert_eq!(a.digest, b.digest);
        fill_pattern(&mut big, 0);
        assert_eq!(a.digest, sha256(&big));
    }

    #[test]
    fn disk_pattern_is_seekable_and_seeded() {
        let mut whole = vec![0u8; 4096];
        fill_disk_pattern(7, 0, &mut whole);
        let mut part = vec![0u8; 1000];
        fill_disk_pattern(7, 1001, &mut part);
        assert_eq!(&whole[1001..2001], &part[..]);
        assert_eq!(check_disk_pattern(7, 0, &whole), None);
        assert_eq!(check_disk_pattern(7, 1001, &part), None);
        let mut other = vec![0u8; 4096];
        fill_disk_pattern(8, 0, &mut other);
        assert!(whole.chunks(8).zip(other.chunks(8)).all(|(a, b)| a != b));
        whole[3000] ^= 1;
        assert_eq!(check_disk_pattern(7, 0, &whole), Some(3000));
        assert_eq!(check_disk_pattern(8, 0, &whole), Some(0));
    }

    #[test]
    fn throughput() {
        assert_eq!(mib_per_s(2 * MIB, 1_000, 1_000), 2);
        assert_eq!(mib_per_s(MIB, 0, 1_000), 0);
    }
}
