//! What a VM is made of, as the command line (and later vm.toml) describes it, and the
//! checks that turn bad values into messages naming what to fix.

use std::path::PathBuf;

use crate::boot::BootSource;
use crate::devices::virtio::block::config::DiskConfig;
use crate::devices::virtio::vsock::VsockConfig;

/// Guests smaller than this cannot hold a kernel, its initrd and page tables.
pub const MIN_MEMORY: u64 = 16 << 20;
/// MADT local-APIC entries carry 8-bit APIC IDs, and 0xff is the broadcast ID.
pub const MAX_VCPUS: u32 = 254;

/// What to do when the guest reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootPolicy {
    /// End the engine with the reboot exit code.
    #[default]
    Exit,
    /// Start the guest again from the same kernel.
    Restart,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub boot: BootSource,
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub reboot: RebootPolicy,
    pub kvm_device: PathBuf,
    /// virtio-blk disks, in the order the guest finds them.
    pub disks: Vec<DiskConfig>,
    /// Where to serve the control protocol (`control::protocol`), if anywhere.
    pub control_socket: Option<PathBuf>,
    /// The virtio-vsock device and its host-side Unix socket, if any.
    pub vsock: Option<VsockConfig>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid memory size '{0}': use a number with an optional K, M, G or T suffix, e.g. 512M (a plain number means MiB)")]
    BadMemorySize(String),
    #[error("memory {given} MiB is too small: give the VM at least {} MiB", MIN_MEMORY >> 20)]
    MemoryTooSmall { given: u64 },
    #[error("memory {given} MiB is more than this host has ({host} MiB): give the VM less")]
    MemoryTooLarge { given: u64, host: u64 },
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    #[error("--cpus {given} is more than this host and Vireo allow: use at most {limit}")]
    TooManyVcpus { given: u32, limit: u32 },
}

/// Parses "512M", "2G", "65536K", "1024" (MiB, as QEMU's -m does) into bytes.
pub fn parse_memory_size(text: &str) -> Result<u64, Error> {
    let bad = || Error::BadMemorySize(text.to_owned());
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        Some(_) => (t, 20),
        None => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Checks memory against our minimum and the host's RAM.
pub fn check_memory(bytes: u64, host_bytes: Option<u64>) -> Result<(), Error> {
    if bytes < MIN_MEMORY {
        return Err(Error::MemoryTooSmall { given: bytes >> 20 });
    }
    match host_bytes {
        Some(host) if bytes > host => Err(Error::MemoryTooLarge {
            given: bytes >> 20,
            host: host >> 20,
        }),
        _ => Ok(()),
    }
}

/// Checks a vCPU count against KVM's limit and ours.
pub fn check_vcpus(count: u32, kvm_max: u32) -> Result<u8, Error> {
    let limit = kvm_max.min(MAX_VCPUS);
    match count {
        0 => Err(Error::NoVcpus),
        n if n > limit => Err(Error::TooManyVcpus { given: n, limit }),
        n => Ok(n as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2G"), Ok(2 << 30));
        assert_eq!(parse_memory_size("1024"), Ok(1 << 30));
        assert_eq!(parse_memory_size("65536k"), Ok(64 << 20));
        assert_eq!(parse_memory_size("1T"), Ok(1 << 40));
        for bad in ["", "G", "12X", "-1M", "1.5G", "99999999999999G"] {
            assert!(parse_memory_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(
            check_memory(8 << 20, None),
            Err(Error::MemoryTooSmall { given: 8 })
        );
        assert_eq!(
            check_memory(4 << 30, Some(2 << 30)),
            Err(Error::MemoryTooLarge {
                given: 4096,
                host: 2048
            })
        );
        assert_eq!(check_memory(64 << 20, Some(2 << 30)), Ok(()));
        assert_eq!(check_vcpus(0, 255), Err(Error::NoVcpus));
        assert_eq!(
            check_vcpus(300, 1024),
            Err(Error::TooManyVcpus {
                given: 300,
                limit: 254
            })
        );
        assert_eq!(
            check_vcpus(4, 2),
            Err(Error::TooManyVcpus { given: 4, limit: 2 })
        );
        assert_eq!(check_vcpus(4, 255), Ok(4));
    }
}
