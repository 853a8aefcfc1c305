//! What the user says about the VM's network card: `--net [passt|tap=NAME][,mac=MAC]` on
//! the command line (`--net` alone means passt), or the same fields in a VM's `vm.toml`.
//!
//! Values are checked here, before anything is opened or started; every error names the
//! part of the option to fix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::devices::virtio::rate_limit::{IoLimits, LimitError};

/// The longest interface name Linux takes (`IFNAMSIZ` minus the terminating NUL).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The VM's network card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Where the guest's frames go.
    #[serde(default)]
    pub backend: NetBackendConfig,
    /// The card's MAC address; a locally administered one is made up when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// I/O limits on both directions together: `bw=10M,iops=5000` (frames per second).
    #[serde(default, skip_serializing_if = "IoLimits::is_unlimited")]
    pub limits: IoLimits,
}

/// Where the guest's frames go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum NetBackendConfig {
    /// User-mode networking: a `passt` child process per VM, no privileges needed.
    #[default]
    Passt,
    /// An existing or new TAP interface of this name (needs CAP_NET_ADMIN).
    Tap { name: String },
}

/// An Ethernet address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address for this process: QEMU's `52:54:00` prefix
    /// and the low bytes of the pid, so that VMs started side by side differ.
    pub fn for_this_process() -> Self {
        let pid = std::process::id().to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, pid[1], pid[2], pid[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::Mac(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        // Bit 0 of the first octet marks group (multicast) addresses: a card cannot
        // have one as its own.
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetConfigError::MacNotUnicast(s.to_owned()));
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `--net` option that cannot be used as written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    #[error("--net: \"{0}\" is not a backend or KEY=VALUE (use passt, tap=NAME, mac=MAC)")]
    NotKeyValue(String),
    #[error("--net: unknown key \"{0}\" (use passt, tap=NAME, mac=MAC, {keys})", keys = IoLimits::KEYS)]
    UnknownKey(String),
    #[error("--net: {0}")]
    Limits(#[from] LimitError),
    #[error("--net: two backends given: use either passt or tap=NAME")]
    TwoBackends,
    #[error("--net: mac= is given twice")]
    DuplicateMac,
    #[error("--net: tap= needs an interface name (e.g. tap=tap0)")]
    EmptyTapName,
    #[error("--net: tap={0} is longer than {MAX_IFNAME_LEN} bytes")]
    TapNameTooLong(String),
    #[error("--net: tap={0} may only hold letters, digits, '-', '_' and '.'")]
    TapNameCharacters(String),
    #[error("--net: mac={0} is not six hex bytes like 52:54:00:12:34:56")]
    Mac(String),
    #[error("--net: mac={0} is a multicast or zero address: the first byte must be even (e.g. 52:54:00:12:34:56)")]
    MacNotUnicast(String),
}

impl NetConfig {
    /// Checks the values a `vm.toml` could hold too (the flag parser checks them as well).
    pub fn validate(&self) -> Result<(), NetConfigError> {
        self.limits.validate()?;
        if let NetBackendConfig::Tap { name } = &self.backend {
            if name.is_empty() {
                return Err(NetConfigError::EmptyTapName);
            }
            if name.len() > MAX_IFNAME_LEN {
                return Err(NetConfigError::TapNameTooLong(name.clone()));
            }
            // What `ip link` accepts, minus '/' and whitespace, which the kernel refuses.
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(NetConfigError::TapNameCharacters(name.clone()));
            }
        }
        Ok(())
    }

    /// The MAC address the guest sees.
    pub fn mac_or_default(&self) -> MacAddr {
        self.mac.unwrap_or_else(MacAddr::for_this_process)
    }
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    /// Parses the value of `--net`: comma-separated items, `passt`, `tap=NAME`, `mac=MAC`.
    /// An empty value (the bare flag) is passt with a made-up MAC.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut backend = None;
        let mut mac = None;
        let mut limits = IoLimits::default();
        for item in s.split(',').filter(|item| !item.is_empty()) {
            let parsed = match item.split_once('=') {
                None if item == "passt" => Some(NetBackendConfig::Passt),
                None => return Err(NetConfigError::NotKeyValue(item.to_owned())),
                Some(("tap", name)) => Some(NetBackendConfig::Tap {
                    name: name.to_owned(),
                }),
                Some(("mac", value)) => {
                    if mac.replace(value.parse()?).is_some() {
                        return Err(NetConfigError::DuplicateMac);
                    }
                    None
                }
                Some((key, value)) => {
                    if !limits.set(key, value)? {
                        return Err(NetConfigError::UnknownKey(key.to_owned()));
                    }
                    None
                }
            };
            if let Some(b) = parsed {
                if backend.replace(b).is_some() {
                    return Err(NetConfigError::TwoBackends);
                }
            }
        }
        let config = NetConfig {
            backend: backend.unwrap_or_default(),
            mac,
            limits,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, NetConfigError> {
        s.parse()
    }

    #[test]
    fn backends_and_mac() {
        assert_eq!(
            parse("").unwrap(),
            NetConfig {
                backend: NetBackendConfig::Passt,
                mac: None,
                limits: IoLimits::default(),
            }
        );
        let limited = parse("passt,bw=10M,iops=5000").unwrap();
        assert_eq!(limited.limits.bw, Some(10 << 20));
        assert_eq!(limited.limits.iops, Some(5000));
        assert_eq!(parse("passt").unwrap().backend, NetBackendConfig::Passt);
        let c = parse("tap=tap0,mac=52:54:00:AB:cd:01").unwrap();
        assert_eq!(
            c.backend,
            NetBackendConfig::Tap {
                name: "tap0".into()
            }
        );
        assert_eq!(c.mac, Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(c.mac.unwrap().to_string(), "52:54:00:ab:cd:01");
        // mac alone: passt.
        assert_eq!(
            parse("mac=02:00:00:00:00:01").unwrap().backend,
            NetBackendConfig::Passt
        );
    }

    #[test]
    fn the_default_mac_is_local_unicast() {
        let m = MacAddr::for_this_process();
        assert_eq!(m.0[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(
            parse("passt").unwrap().mac_or_default(),
            MacAddr::for_this_process()
        );
    }

    #[test]
    fn errors_name_what_to_fix() {
        assert_eq!(
            parse("slirp"),
            Err(NetConfigError::NotKeyValue("slirp".into()))
        );
        assert_eq!(
            parse("bridge=br0"),
            Err(NetConfigError::UnknownKey("bridge".into()))
        );
        assert_eq!(parse("passt,tap=t0"), Err(NetConfigError::TwoBackends));
        assert_eq!(
            parse("mac=52:54:00:00:00:01,mac=52:54:00:00:00:02"),
            Err(NetConfigError::DuplicateMac)
        );
        assert_eq!(parse("tap="), Err(NetConfigError::EmptyTapName));
        assert_eq!(
            parse("tap=abcdefghijklmnop"),
            Err(NetConfigError::TapNameTooLong("abcdefghijklmnop".into()))
        );
        assert_eq!(
            parse("tap=a/b"),
            Err(NetConfigError::TapNameCharacters("a/b".into()))
        );
        for bad in [
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "52:54:0g:00:00:01",
            "5254.0000.0001",
            "52:54:00:00:00:1",
        ] {
            assert_eq!(
                parse(&format!("mac={bad}")),
                Err(NetConfigError::Mac(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse("mac=01:00:5e:00:00:01"),
            Err(NetConfigError::MacNotUnicast("01:00:5e:00:00:01".into()))
        );
        assert_eq!(
            parse("mac=00:00:00:00:00:00"),
            Err(NetConfigError::MacNotUnicast("00:00:00:00:00:00".into()))
        );
        let msg = parse("bridge=br0").unwrap_err().to_string();
        assert!(
            msg.starts_with("--net:") && msg.contains("tap=NAME"),
            "{msg}"
        );
    }

    #[test]
    fn serde_shape_for_vm_toml() {
        let c: NetConfig = serde_json::from_str(
            r#"{"backend": {"tap": {"name": "tap1"}}, "mac": "52:54:00:00:00:09"}"#,
        )
        .unwrap();
        assert_eq!(c.mac, Some(MacAddr([0x52, 0x54, 0, 0, 0, 9])));
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let passt: NetConfig = serde_json::from_str(r#"{"backend": "passt"}"#).unwrap();
        assert_eq!(passt.backend, NetBackendConfig::Passt);
        assert!(serde_json::from_str::<NetConfig>(r#"{"mac": "ff:ff:ff:ff:ff:ff"}"#).is_err());
        assert!(serde_json::from_str::<NetConfig>(r#"{"vlan": 3}"#).is_err());
    }
}
