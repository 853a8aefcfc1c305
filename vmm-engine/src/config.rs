//! What a VM is made of, as the command line (and later vm.toml) describes it, and the
//! checks that turn bad values into messages naming what to fix.

use std::path::PathBuf;

use crate::boot::BootSource;
use crate::devices::virtio::block::config::DiskConfig;
use crate::devices::virtio::net::config::NetConfig;
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
    /// The virtio-net card, if the VM has one.
    pub net: Option<NetConfig>,
    /// Where to serve the control protocol (`control::protocol`), if anywhere.
    pub control_socket: Option<PathBuf>,
    /// The guest's screen and its keyboard and tablet; `None`: a headless VM.
    pub display: Option<DisplayConfig>,
    /// The virtio-vsock device and its host-side Unix socket, if any.
    pub vsock: Option<VsockConfig>,
    /// Start from this snapshot instead of booting (`--restore`).
    pub restore: Option<PathBuf>,
    /// Wait for a live migration from another engine here instead of booting.
    pub incoming: Option<crate::snapshot::migrate::Endpoint>,
    /// Start with the vCPUs paused (`--paused`): `resume` on the control socket runs them.
    pub start_paused: bool,
    /// CPU weight, limit and pinning (`--cpu-weight`, `--cpu-limit`, `--cpu-pin`).
    pub cpu: crate::resources::cpu::CpuConfig,
    /// Guest RAM offered to KSM (`--ksm`).
    pub ksm: bool,
    /// Who sets the balloon's target at start (`--balloon-policy`).
    pub balloon_policy: crate::devices::virtio::balloon::policy::BalloonPolicy,
}

impl VmConfig {
    /// A VM booting `boot` with the command line's defaults: 1 vCPU, 512 MiB, no disks,
    /// no network, vsock, display or control socket. Callers set what they need with
    /// struct update syntax (`VmConfig { vcpus: 2, ..VmConfig::new(boot) }`).
    pub fn new(boot: BootSource) -> Self {
        Self {
            boot,
            vcpus: 1,
            memory: 512 << 20,
            reboot: RebootPolicy::Exit,
            kvm_device: crate::doctor::DEFAULT_KVM_DEVICE.into(),
            disks: Vec::new(),
            net: None,
            control_socket: None,
            display: None,
            vsock: None,
            restore: None,
            start_paused: false,
            incoming: None,
            cpu: Default::default(),
            ksm: false,
            balloon_policy: Default::default(),
        }
    }
}

/// Screen sizes a display may start with.
pub const DISPLAY_MIN: u32 = 320;
pub const DISPLAY_MAX: u32 = 8192;

/// `--display WxH`: the size of the screen the guest is offered at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayConfig {
    pub width: u32,
    pub height: u32,
}

/// `--display WxH` or `--display none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayArg(pub Option<DisplayConfig>);

impl std::str::FromStr for DisplayArg {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if text == "none" {
            return Ok(DisplayArg(None));
        }
        let bad = || Error::BadDisplay(text.to_owned());
        let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
        let (width, height): (u32, u32) =
            (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
        if !(DISPLAY_MIN..=DISPLAY_MAX).contains(&width)
            || !(DISPLAY_MIN..=DISPLAY_MAX).contains(&height)
        {
            return Err(bad());
        }
        Ok(DisplayArg(Some(DisplayConfig { width, height })))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid memory size '{0}': use a number with an optional K, M, G or T suffix, e.g. 512M (a plain number means MiB)")]
    BadMemorySize(String),
    #[error("memory {given} MiB is too small: give the VM at least {} MiB", MIN_MEMORY >> 20)]
    MemoryTooSmall { given: u64 },
    #[error("memory {given} MiB is more than this host has ({host} MiB): give the VM less")]
    MemoryTooLarge { given: u64, host: u64 },
    #[error("invalid display '{0}': use WIDTHxHEIGHT, each {DISPLAY_MIN} to {DISPLAY_MAX} pixels (e.g. 1280x800), or none")]
    BadDisplay(String),
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
    fn display_sizes() {
        let size = |w, h| {
            Ok(DisplayArg(Some(DisplayConfig {
                width: w,
                height: h,
            })))
        };
        assert_eq!("1280x800".parse(), size(1280, 800));
        assert_eq!("1920X1080".parse(), size(1920, 1080));
        assert_eq!("none".parse(), Ok(DisplayArg(None)));
        for bad in [
            "",
            "1280",
            "x800",
            "1280x",
            "0x0",
            "100x100",
            "9000x600",
            "axb",
            "1280x800x2",
        ] {
            let err = bad.parse::<DisplayArg>().unwrap_err();
            assert!(err.to_string().contains("WIDTHxHEIGHT"), "{bad}: {err}");
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
