//! The VM's memory as the host pays for it: guest RAM offered to KSM (`--ksm`), and
//! what the engine costs: resident memory, and the pages KSM merged, from /proc.

use std::fs;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Offers every page of guest RAM to KSM (MADV_MERGEABLE): identical pages, in this VM
/// or another, may then share one host page until written. Host KSM must run
/// (/sys/kernel/mm/ksm/run = 1) for anything to merge. Guest RAM then gets no huge
/// pages (the price of sharing).
pub fn offer_to_ksm(mem: &GuestMemoryMmap) -> std::io::Result<()> {
    for region in mem.iter() {
        let (addr, len) = (region.as_ptr(), region.len() as usize);
        // KSM merges small pages: transparent huge pages (which guest RAM otherwise
        // asks for) would have to be split first, and khugepaged would undo it.
        for advice in [libc::MADV_NOHUGEPAGE, libc::MADV_MERGEABLE] {
            // SAFETY: the range is one mapping of guest RAM that lives as long as
            // `mem`; the advice changes how the kernel backs it, never its contents.
            let r = unsafe { libc::madvise(addr.cast(), len, advice) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// What the VM costs the host's memory now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// The engine's resident set (guest RAM it touched, plus its own).
    pub resident_bytes: u64,
    /// Guest pages KSM has merged with others (this VM's or another's).
    pub ksm_merging_bytes: u64,
    /// What KSM saves for this process, less its own bookkeeping (the kernel's
    /// `ksm_process_profit`; may be negative while little is merged).
    pub ksm_profit_bytes: i64,
}

impl MemoryUsage {
    pub fn of_this_process() -> MemoryUsage {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let ksm = fs::read_to_string("/proc/self/ksm_stat").unwrap_or_default();
        let page = page_size();
        MemoryUsage {
            resident_bytes: field(&status, "VmRSS:").unwrap_or(0) as u64 * 1024,
            ksm_merging_bytes: field(&ksm, "ksm_merging_pages").unwrap_or(0) as u64 * page,
            ksm_profit_bytes: field(&ksm, "ksm_process_profit").unwrap_or(0),
        }
    }
}

/// The number after `key` on its line (`VmRSS:   1234 kB`, `ksm_merging_pages 5`).
fn field(text: &str, key: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn fields_of_proc_files() {
        let status = "Name:\tvireo-vmm\nVmRSS:\t  211748 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(field(status, "VmRSS:"), Some(211_748));
        let ksm = "ksm_rmap_items 10\nksm_merging_pages 51200\nksm_process_profit -640\n";
        assert_eq!(field(ksm, "ksm_merging_pages"), Some(51_200));
        assert_eq!(field(ksm, "ksm_process_profit"), Some(-640));
        assert_eq!(field(ksm, "absent"), None);
    }

    #[test]
    fn guest_ram_can_be_offered_and_usage_read() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        offer_to_ksm(&mem).unwrap();
        if let Ok(ksm) = fs::read_to_string("/proc/self/ksm_stat") {
            // The kernel now counts this process as using KSM.
            assert!(ksm.contains("ksm_mergeable: yes"), "{ksm}");
        }
        assert!(MemoryUsage::of_this_process().resident_bytes > 0);
    }
}
