//! The guest's memory statistics (virtio 1.2, 5.5.6.3 "Memory Statistics"): the driver
//! fills its statsq buffer with 10-byte entries `{ le16 tag; le64 val; }` (packed), one
//! per statistic it supports, in any order.

use serde::{Deserialize, Serialize};

/// Size of one `struct virtio_balloon_stat`: le16 tag + le64 val, packed.
pub const STAT_ENTRY_BYTES: usize = 10;
/// The most of a stats buffer the device reads. The spec defines 10 tags and Linux
/// sends 16 entries today; a guest posting megabytes gets the first 64 entries read.
pub const MAX_STATS_BYTES: usize = 64 * STAT_ENTRY_BYTES;

// Tags (virtio 1.2, 5.5.6.4 "Memory Statistics Tags"). virtio-bindings has no
// virtio_balloon module, hence the hand-written values.
/// Memory swapped in, in bytes.
pub const VIRTIO_BALLOON_S_SWAP_IN: u16 = 0;
/// Memory swapped out, in bytes.
pub const VIRTIO_BALLOON_S_SWAP_OUT: u16 = 1;
/// Major page faults.
pub const VIRTIO_BALLOON_S_MAJFLT: u16 = 2;
/// Minor page faults.
pub const VIRTIO_BALLOON_S_MINFLT: u16 = 3;
/// Memory not used for any purpose, in bytes.
pub const VIRTIO_BALLOON_S_MEMFREE: u16 = 4;
/// Total memory, in bytes.
pub const VIRTIO_BALLOON_S_MEMTOT: u16 = 5;
/// Memory available for new applications without swapping, in bytes.
pub const VIRTIO_BALLOON_S_AVAIL: u16 = 6;
/// Memory reclaimable without I/O (disk caches), in bytes.
pub const VIRTIO_BALLOON_S_CACHES: u16 = 7;
/// Successful hugetlb page allocations.
pub const VIRTIO_BALLOON_S_HTLB_PGALLOC: u16 = 8;
/// Failed hugetlb page allocations.
pub const VIRTIO_BALLOON_S_HTLB_PGFAIL: u16 = 9;

/// The last statistics the guest reported. A field is `None` when the guest did not
/// report that tag (every statistic is optional, 5.5.6.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Bytes swapped in.
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    pub swap_out: Option<u64>,
    /// Major page faults.
    pub major_faults: Option<u64>,
    /// Minor page faults.
    pub minor_faults: Option<u64>,
    /// Bytes not used for any purpose.
    pub free_memory: Option<u64>,
    /// Total bytes of memory the guest sees.
    pub total_memory: Option<u64>,
    /// Bytes available to new applications without swapping.
    pub available_memory: Option<u64>,
    /// Bytes reclaimable without I/O (disk caches).
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStats {
    /// Parses a stats buffer. Entries with tags the device does not know are ignored
    /// (a MUST of 5.5.6.3.2), so are the bytes of a truncated last entry; a tag given
    /// twice keeps its last value.
    pub fn parse(buf: &[u8]) -> Self {
        let mut stats = Self::default();
        for entry in buf.chunks_exact(STAT_ENTRY_BYTES) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut val = [0u8; 8];
            val.copy_from_slice(&entry[2..STAT_ENTRY_BYTES]);
            stats.set(tag, u64::from_le_bytes(val));
        }
        stats
    }

    fn set(&mut self, tag: u16, val: u64) {
        let field = match tag {
            VIRTIO_BALLOON_S_SWAP_IN => &mut self.swap_in,
            VIRTIO_BALLOON_S_SWAP_OUT => &mut self.swap_out,
            VIRTIO_BALLOON_S_MAJFLT => &mut self.major_faults,
            VIRTIO_BALLOON_S_MINFLT => &mut self.minor_faults,
            VIRTIO_BALLOON_S_MEMFREE => &mut self.free_memory,
            VIRTIO_BALLOON_S_MEMTOT => &mut self.total_memory,
            VIRTIO_BALLOON_S_AVAIL => &mut self.available_memory,
            VIRTIO_BALLOON_S_CACHES => &mut self.disk_caches,
            VIRTIO_BALLOON_S_HTLB_PGALLOC => &mut self.hugetlb_allocations,
            VIRTIO_BALLOON_S_HTLB_PGFAIL => &mut self.hugetlb_failures,
            _ => return,
        };
        *field = Some(val);
    }
}

/// Encodes one stats entry the way a driver does (for tests and the fuzz target).
pub fn encode_entry(tag: u16, val: u64) -> [u8; STAT_ENTRY_BYTES] {
    let mut entry = [0u8; STAT_ENTRY_BYTES];
    entry[..2].copy_from_slice(&tag.to_le_bytes());
    entry[2..].copy_from_slice(&val.to_le_bytes());
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(entries: &[(u16, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(t, v)| encode_entry(t, v))
            .collect()
    }

    #[test]
    fn a_full_buffer_fills_every_field() {
        let entries: Vec<(u16, u64)> = (0..10).map(|t| (t, 1000 + u64::from(t))).collect();
        let stats = BalloonStats::parse(&buffer(&entries));
        assert_eq!(
            stats,
            BalloonStats {
                swap_in: Some(1000),
                swap_out: Some(1001),
                major_faults: Some(1002),
                minor_faults: Some(1003),
                free_memory: Some(1004),
                total_memory: Some(1005),
                available_memory: Some(1006),
                disk_caches: Some(1007),
                hugetlb_allocations: Some(1008),
                hugetlb_failures: Some(1009),
            }
        );
    }

    #[test]
    fn a_partial_buffer_in_any_order_leaves_the_rest_none() {
        let stats = BalloonStats::parse(&buffer(&[
            (VIRTIO_BALLOON_S_MEMTOT, 1 << 30),
            (VIRTIO_BALLOON_S_MEMFREE, 1 << 20),
        ]));
        assert_eq!(stats.total_memory, Some(1 << 30));
        assert_eq!(stats.free_memory, Some(1 << 20));
        assert_eq!(stats.swap_in, None);
        assert_eq!(stats.hugetlb_failures, None);
    }

    #[test]
    fn unknown_tags_truncated_entries_and_garbage_are_ignored() {
        let mut buf = buffer(&[
            (0xffff, 7),
            (VIRTIO_BALLOON_S_AVAIL, 42),
            (10, 9), // a newer kernel's tag (OOM kills)
        ]);
        // Half an entry at the end.
        buf.extend_from_slice(&encode_entry(VIRTIO_BALLOON_S_CACHES, 5)[..7]);
        let stats = BalloonStats::parse(&buf);
        assert_eq!(
            stats,
            BalloonStats {
                available_memory: Some(42),
                ..Default::default()
            }
        );
        assert_eq!(BalloonStats::parse(&[]), BalloonStats::default());
        assert_eq!(BalloonStats::parse(&[0xab; 9]), BalloonStats::default());
        // Random bytes parse to something, never a panic.
        let garbage: Vec<u8> = (0..997u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let _ = BalloonStats::parse(&garbage);
    }

    #[test]
    fn a_repeated_tag_keeps_its_last_value() {
        let stats = BalloonStats::parse(&buffer(&[
            (VIRTIO_BALLOON_S_MAJFLT, 1),
            (VIRTIO_BALLOON_S_MAJFLT, 2),
        ]));
        assert_eq!(stats.major_faults, Some(2));
    }

    #[test]
    fn serializes_with_named_fields_and_nulls() {
        let stats = BalloonStats {
            free_memory: Some(4096),
            ..Default::default()
        };
        let json = serde_json::to_value(stats).unwrap();
        assert_eq!(json["free_memory"], 4096);
        assert!(json["swap_in"].is_null());
        let back: BalloonStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, stats);
    }
}
