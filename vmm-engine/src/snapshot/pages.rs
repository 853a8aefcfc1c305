//! Which pages of guest memory hold anything, for save and migration: both skip zero
//! pages, and in anonymous guest memory they skip pages the guest never touched
//! without reading them (`mincore`), so an idle 2 GiB guest costs what it uses.

pub const PAGE: usize = 4096;

/// Whether `page` is all zero bytes. Folds with OR instead of stopping at the first
/// non-zero word: the compiler vectorises the fold, and a page that holds data is
/// usually non-zero in its first words anyway, which the 64-byte steps still catch.
pub fn is_zero(page: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u64; align_to only regroups the bytes.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    if head.iter().chain(tail).any(|&b| b != 0) {
        return false;
    }
    let mut lines = words.chunks_exact(8);
    for line in &mut lines {
        if line.iter().fold(0, |acc, &w| acc | w) != 0 {
            return false;
        }
    }
    lines.remainder().iter().all(|&w| w == 0)
}

/// Which pages of `bytes` (page-aligned) may hold data: with `anonymous` memory, only
/// the resident ones (a page never touched, or given back by the balloon, reads as zero
/// without being looked at); memory mapped from a snapshot file holds data the page
/// cache may not, so every page there.
pub fn may_hold_data(bytes: &[u8], anonymous: bool) -> std::io::Result<Vec<bool>> {
    if !anonymous {
        return Ok(vec![true; bytes.len().div_ceil(PAGE)]);
    }
    Ok(resident(bytes)?.iter().map(|r| r & 1 != 0).collect())
}

/// `mincore` of `bytes` (page-aligned): one byte per page, bit 0 set when resident.
fn resident(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut pages = vec![0u8; bytes.len().div_ceil(PAGE)];
    // SAFETY: `bytes` is a live, page-aligned mapping of `bytes.len()` bytes and
    // `pages` has one byte per page of it, as mincore(2) writes.
    let rc = unsafe {
        libc::mincore(
            bytes.as_ptr() as *mut libc::c_void,
            bytes.len(),
            pages.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

    #[test]
    fn untouched_anonymous_memory_is_not_resident_and_touched_is() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * PAGE)]).unwrap();
        mem.write_slice(&[1u8], GuestAddress(5 * PAGE as u64))
            .unwrap();
        let region = mem.iter().next().unwrap();
        assert_eq!(region.len() as usize, 64 * PAGE);
        // SAFETY: the region's own mapping, alive for the test.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), 64 * PAGE) };
        let pages = may_hold_data(bytes, true).unwrap();
        assert_eq!(pages.len(), 64);
        assert!(pages[5]);
        // Without THP backing the mapping, the untouched ones are absent.
        let absent = pages.iter().filter(|p| !**p).count();
        assert!(absent == 63 || absent == 0, "{absent}");
        assert!(may_hold_data(bytes, false).unwrap().iter().all(|p| *p));
    }

    #[test]
    fn any_non_zero_byte_makes_a_page_non_zero() {
        let mut page = vec![0u8; PAGE + 1];
        // Misaligned too: head and tail bytes count.
        for range in [0..PAGE, 1..PAGE + 1] {
            let slice = &mut page[range];
            assert!(is_zero(slice));
            for at in [0, 7, 8, 63, 64, 2047, PAGE - 1] {
                slice[at] = 1;
                assert!(!is_zero(slice), "{at}");
                slice[at] = 0;
            }
        }
    }
}
