//! Page helpers shared by save and migration: which pages of guest memory may hold
//! data, and whether a page is all zero.

pub const PAGE: usize = 4096;

/// Is every byte of `page` zero (compared a word at a time).
pub fn is_zero(page: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u64; align_to only regroups the bytes.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && words
            .chunks(8)
            .all(|c| c.iter().fold(0, |a, &w| a | w) == 0)
        && tail.iter().all(|&b| b == 0)
}

/// Which pages of `bytes` (page-aligned) are resident (`mincore`): in anonymous guest
/// memory a page never touched is not, and reads as zero without being looked at.
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

/// Which pages of a region may hold data: all of them unless memory is anonymous.
pub fn may_hold_data(bytes: &[u8], anonymous: bool) -> std::io::Result<Vec<bool>> {
    if !anonymous {
        return Ok(vec![true; bytes.len() / PAGE]);
    }
    Ok(resident(bytes)?.iter().map(|r| r & 1 != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn untouched_anonymous_memory_is_not_resident_and_touched_is() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * PAGE)]).unwrap();
        mem.write_slice(&[1u8], GuestAddress(5 * PAGE as u64))
            .unwrap();
        let region = mem.iter().next().unwrap();
        // SAFETY: the region's own mapping, alive for the test.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), 64 * PAGE) };
        let pages = resident(bytes).unwrap();
        assert_eq!(pages.len(), 64);
        assert!(pages[5] & 1 != 0);
        // Without THP backing the mapping, the untouched ones are absent.
        let absent = pages.iter().filter(|p| *p & 1 == 0).count();
        assert!(absent == 63 || absent == 0, "{absent}");
    }

    #[test]
    fn zero_pages() {
        let mut page = vec![0u8; PAGE + 3];
        assert!(is_zero(&page[1..PAGE + 1]));
        for i in [0, 1, 500, PAGE + 2] {
            page[i] = 1;
            assert!(!is_zero(&page), "{i}");
            page[i] = 0;
        }
    }
}
