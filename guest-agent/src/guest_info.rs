//! Guest information: what the host shows about a running Linux guest (OS, kernel,
//! hostname, uptime, memory, IP addresses).
//!
//! The text formats (`/etc/os-release`, `/proc/uptime`, `/proc/meminfo`) are parsed by pure
//! functions, tested on sample texts below; [`GuestInfo::gather`] reads the live system,
//! and [`GuestInfo::gather_from`] reads the files under another root (tests, chroots).

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The types live in the `no_std` protocol, which carries them to the host.
pub use crate::protocol::{GuestInfo, InterfaceAddress};

/// Memory figures from `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kib: u64,
    pub available_kib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestInfoError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("{what} failed")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

impl GuestInfo {
    /// Gathers the information of the running system.
    pub fn gather() -> Result<Self, GuestInfoError> {
        Self::gather_from(Path::new("/"))
    }

    /// Gathers the information with `/etc`, `/usr/lib` and `/proc` taken under `root`;
    /// kernel release, hostname and addresses come from the running kernel.
    pub fn gather_from(root: &Path) -> Result<Self, GuestInfoError> {
        let uts = nix::sys::utsname::uname().map_err(|source| GuestInfoError::Sys {
            what: "uname",
            source,
        })?;
        let kernel_release = uts.release().to_string_lossy().into_owned();

        let os_pretty_name = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .filter_map(|p| fs::read_to_string(root.join(p)).ok())
            .find_map(|text| parse_os_release(&text))
            .unwrap_or_else(|| format!("Linux {kernel_release}"));

        let hostname = nix::unistd::gethostname()
            .map_err(|source| GuestInfoError::Sys {
                what: "gethostname",
                source,
            })?
            .to_string_lossy()
            .into_owned();

        let uptime_ms = parse_uptime_ms(&read(&root.join("proc/uptime"))?)?;
        let mem = parse_meminfo(&read(&root.join("proc/meminfo"))?)?;

        Ok(GuestInfo {
            os_pretty_name,
            kernel_release,
            hostname,
            uptime_ms,
            mem_total_kib: mem.total_kib,
            mem_available_kib: mem.available_kib,
            addresses: interface_addresses()?,
        })
    }
}

fn read(path: &Path) -> Result<String, GuestInfoError> {
    fs::read_to_string(path).map_err(|source| GuestInfoError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The `PRETTY_NAME` of an os-release file (falling back to `NAME`), unquoted; `None` if
/// it has neither.
pub fn parse_os_release(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.trim().split_once('=')?;
            (k == key).then(|| unquote_shell_value(v.trim()))
        })
    };
    value("PRETTY_NAME")
        .or_else(|| value("NAME"))
        .filter(|v| !v.is_empty())
}

/// os-release values are shell-like: double quotes with backslash escapes, single quotes
/// without, or bare.
fn unquote_shell_value(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_owned();
    }
    let inner = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds since boot from `/proc/uptime` ("12345.67 23456.78").
pub fn parse_uptime_ms(text: &str) -> Result<u64, GuestInfoError> {
    let err = |detail: &str| GuestInfoError::Parse {
        what: "/proc/uptime",
        detail: detail.to_owned(),
    };
    let first = text.split_whitespace().next().ok_or_else(|| err("empty"))?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    let secs: u64 = secs.parse().map_err(|_| err(first))?;
    // Up to three fractional digits, right-padded: ".5" is 500 ms, ".05" is 50 ms.
    let frac_digits: String = frac.chars().take(3).collect();
    let millis = if frac_digits.is_empty() {
        0
    } else {
        if !frac_digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(first));
        }
        format!("{frac_digits:0<3}")
            .parse::<u64>()
            .map_err(|_| err(first))?
    };
    secs.checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or_else(|| err(first))
}

/// Total and available memory from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, GuestInfoError> {
    let field = |key: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let (k, rest) = line.split_once(':')?;
            if k.trim() != key {
                return None;
            }
            let mut words = rest.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            match words.next() {
                None | Some("kB") => Some(n),
                Some(_) => None,
            }
        })
    };
    let total_kib = field("MemTotal").ok_or_else(|| GuestInfoError::Parse {
        what: "/proc/meminfo",
        detail: "no MemTotal line".to_owned(),
    })?;
    let available_kib = field("MemAvailable").unwrap_or_else(|| {
        [field("MemFree"), field("Buffers"), field("Cached")]
            .into_iter()
            .flatten()
            .sum()
    });
    Ok(MemInfo {
        total_kib,
        available_kib,
    })
}

/// IPv4/IPv6 addresses of all non-loopback interfaces, from `getifaddrs`.
pub fn interface_addresses() -> Result<Vec<InterfaceAddress>, GuestInfoError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| GuestInfoError::Sys {
        what: "getifaddrs",
        source,
    })?;
    let mut out = Vec::new();
    for ifa in addrs {
        let Some(address) = ifa.address.as_ref().and_then(sockaddr_ip) else {
            continue;
        };
        if address.is_loopback() {
            continue;
        }
        let prefix_len = ifa
            .netmask
            .as_ref()
            .and_then(sockaddr_ip)
            .map(|mask| match mask {
                IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                IpAddr::V6(m) => u128::from(m).count_ones() as u8,
            });
        out.push(InterfaceAddress {
            interface: ifa.interface_name,
            address,
            prefix_len,
        });
    }
    Ok(out)
}

fn sockaddr_ip(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_OS_RELEASE: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
"#;

    const MEMINFO: &str = "MemTotal:        8041144 kB\n\
MemFree:         1234567 kB\n\
MemAvailable:    5678901 kB\n\
Buffers:          100000 kB\n\
Cached:          2000000 kB\n\
HugePages_Total:       0\n";

    #[test]
    fn os_release_pretty_name() {
        assert_eq!(
            parse_os_release(DEBIAN_OS_RELEASE).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn os_release_quoting_and_fallback() {
        assert_eq!(
            parse_os_release("NAME='Alpine Linux'\n").as_deref(),
            Some("Alpine Linux")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=\"say \\\"hi\\\"\"\n").as_deref(),
            Some("say \"hi\"")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=Bare\n").as_deref(),
            Some("Bare")
        );
        assert_eq!(parse_os_release("ID=x\n# PRETTY_NAME=no\n"), None);
        assert_eq!(parse_os_release("PRETTY_NAME=\"\"\n"), None);
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime_ms("12345.67 23456.78\n").unwrap(), 12_345_670);
        assert_eq!(parse_uptime_ms("0.05 0.00").unwrap(), 50);
        assert_eq!(parse_uptime_ms("7").unwrap(), 7000);
        assert!(parse_uptime_ms("").is_err());
        assert!(parse_uptime_ms("abc 1").is_err());
        assert!(parse_uptime_ms("1.x2 1").is_err());
        assert!(parse_uptime_ms("99999999999999999999.0").is_err());
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            parse_meminfo(MEMINFO).unwrap(),
            MemInfo {
                total_kib: 8_041_144,
                available_kib: 5_678_901
            }
        );
    }

    #[test]
    fn meminfo_without_memavailable_estimates_it() {
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available_kib, 420);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn gather_on_this_system() {
        let info = GuestInfo::gather().unwrap();
        assert!(!info.kernel_release.is_empty());
        assert!(!info.os_pretty_name.is_empty());
        assert!(info.mem_total_kib > 0);
        assert!(info.mem_available_kib <= info.mem_total_kib);
        assert!(info.uptime_ms > 0);
        assert!(info.addresses.iter().all(|a| !a.address.is_loopback()));
    }

    #[test]
    fn gather_without_os_release_names_the_kernel() {
        let root = std::env::temp_dir().join(format!("vireo-guest-info-{}", std::process::id()));
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(root.join("proc/uptime"), "3.25 1.00\n").unwrap();
        fs::write(root.join("proc/meminfo"), MEMINFO).unwrap();
        let info = GuestInfo::gather_from(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            info.os_pretty_name,
            format!("Linux {}", info.kernel_release)
        );
        assert_eq!(info.uptime_ms, 3250);
        assert_eq!(info.mem_total_kib, 8_041_144);
    }

    #[test]
    fn json_round_trip() {
        let info = GuestInfo {
            os_pretty_name: "Linux 6.1.0".into(),
            kernel_release: "6.1.0".into(),
            hostname: "vireo-demo".into(),
            uptime_ms: 1,
            mem_total_kib: 2,
            mem_available_kib: 1,
            addresses: vec![InterfaceAddress {
                interface: "eth0".into(),
                address: "10.0.2.15".parse().unwrap(),
                prefix_len: Some(24),
            }],
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains('\n'));
        assert_eq!(serde_json::from_str::<GuestInfo>(&json).unwrap(), info);
    }
}
