//! What the user says about a disk: `--disk path=IMG[,format=raw|qcow2][,readonly=on][,id=NAME][,bw=20M][,iops=1000]`
//! on the command line, or the same fields in a VM's `vm.toml`.
//!
//! Values are checked here, before any file is opened, and every error names the part
//! of the option to fix. Whether the image really is in the given format is checked when
//! it is opened (`disk::Disk::open`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;

use crate::devices::virtio::rate_limit::{IoLimits, LimitError};

/// The longest `id=`: the device ID string of VIRTIO_BLK_T_GET_ID (virtio 1.2, 5.2.6).
pub const MAX_ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// The image format; detected from the file's first bytes when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// The guest sees a read-only disk (VIRTIO_BLK_F_RO) and the image is opened read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// The serial number the guest reads with VIRTIO_BLK_T_GET_ID (what Linux shows in
    /// /dev/disk/by-id/virtio-ID): printable ASCII, at most 20 bytes. When not given, a
    /// stable one is derived from the image's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// I/O limits: `bw=20M,iops=1000` (unlimited when not given).
    #[serde(default, skip_serializing_if = "IoLimits::is_unlimited")]
    pub limits: IoLimits,
}

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// The guest's sectors, byte for byte.
    Raw,
    /// QEMU's copy-on-write format, version 2 or 3.
    Qcow2,
}

impl DiskFormat {
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--disk` option or `[[disk]]` table that cannot be used as written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskConfigError {
    #[error("--disk needs path=IMAGE (e.g. --disk path=disk.qcow2)")]
    MissingPath,
    #[error("--disk: \"{0}\" is not KEY=VALUE (keys: path, format, readonly, id, {keys}; write a comma in a value as \",,\")", keys = IoLimits::KEYS)]
    NotKeyValue(String),
    #[error("--disk: unknown key \"{0}\" (keys: path, format, readonly, id, {keys})", keys = IoLimits::KEYS)]
    UnknownKey(String),
    #[error("--disk: {0}")]
    Limits(#[from] LimitError),
    #[error("--disk: {0}= is given twice")]
    Duplicate(&'static str),
    #[error("--disk: path= is empty")]
    EmptyPath,
    #[error("--disk: format={0} is not a known format (use format=raw or format=qcow2)")]
    Format(String),
    #[error("--disk: readonly={0} is not on or off")]
    ReadOnly(String),
    #[error("--disk: id=\"{0}\" is longer than {MAX_ID_LEN} bytes")]
    IdTooLong(String),
    #[error("--disk: id=\"{0}\" may only hold printable ASCII characters")]
    IdCharacters(String),
}

impl DiskConfig {
    /// Checks the values a `vm.toml` could hold too (the flag parser checks them as well).
    pub fn validate(&self) -> Result<(), DiskConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(DiskConfigError::EmptyPath);
        }
        self.limits.validate()?;
        if let Some(id) = &self.id {
            if id.len() > MAX_ID_LEN {
                return Err(DiskConfigError::IdTooLong(id.clone()));
            }
            // The guest gets these bytes verbatim; Linux prints them in sysfs and udev
            // builds a file name from them.
            if !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return Err(DiskConfigError::IdCharacters(id.clone()));
            }
        }
        Ok(())
    }
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    /// Parses the value of `--disk`: comma-separated `key=value` pairs, as QEMU's
    /// `-drive` takes them (including `,,` for a comma inside a value).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut path = None;
        let mut format = None;
        let mut readonly = None;
        let mut id = None;
        let mut limits = IoLimits::default();
        for item in split_options(s) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(DiskConfigError::NotKeyValue(item));
            };
            match key {
                "path" => set_once(&mut path, "path", PathBuf::from(value))?,
                "format" => {
                    let f = match value {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        other => return Err(DiskConfigError::Format(other.to_owned())),
                    };
                    set_once(&mut format, "format", f)?;
                }
                "readonly" => {
                    let ro = match value {
                        "on" => true,
                        "off" => false,
                        other => return Err(DiskConfigError::ReadOnly(other.to_owned())),
                    };
                    set_once(&mut readonly, "readonly", ro)?;
                }
                "id" => set_once(&mut id, "id", value.to_owned())?,
                other => {
                    if !limits.set(other, value)? {
                        return Err(DiskConfigError::UnknownKey(other.to_owned()));
                    }
                }
            }
        }
        let config = DiskConfig {
            path: path.ok_or(DiskConfigError::MissingPath)?,
            format,
            readonly: readonly.unwrap_or(false),
            id,
            limits,
        };
        config.validate()?;
        Ok(config)
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), DiskConfigError> {
    if slot.is_some() {
        return Err(DiskConfigError::Duplicate(key));
    }
    *slot = Some(value);
    Ok(())
}

/// Splits at single commas; `,,` stands for a literal comma. Empty items (a trailing
/// comma) are dropped.
pub(crate) fn split_options(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items.retain(|item| !item.is_empty());
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DiskConfig, DiskConfigError> {
        s.parse()
    }

    #[test]
    fn full_option() {
        let c = parse("path=/vms/a.qcow2,format=qcow2,readonly=on,id=root").unwrap();
        assert_eq!(
            c,
            DiskConfig {
                path: "/vms/a.qcow2".into(),
                format: Some(DiskFormat::Qcow2),
                readonly: true,
                id: Some("root".into()),
                limits: IoLimits::default(),
            }
        );
        let limited = parse("path=a,bw=20M,iops=1000,iops_burst=10").unwrap();
        assert_eq!(limited.limits.bw, Some(20 << 20));
        assert_eq!(limited.limits.iops, Some(1000));
        assert_eq!(limited.limits.iops_burst, Some(10));
        assert_eq!(
            parse("path=a,bw=0"),
            Err(DiskConfigError::Limits(LimitError::Zero("bw")))
        );
    }

    #[test]
    fn defaults_and_commas_in_paths() {
        let c = parse("path=/tmp/a,,b.img").unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/a,b.img"));
        assert_eq!(c.format, None);
        assert!(!c.readonly);
        assert_eq!(c.id, None);
        assert_eq!(
            parse("path=x,readonly=off,format=raw,").unwrap().format,
            Some(DiskFormat::Raw)
        );
    }

    #[test]
    fn errors_name_what_to_fix() {
        assert_eq!(parse("format=raw"), Err(DiskConfigError::MissingPath));
        assert_eq!(parse(""), Err(DiskConfigError::MissingPath));
        assert_eq!(
            parse("disk.img"),
            Err(DiskConfigError::NotKeyValue("disk.img".into()))
        );
        assert_eq!(
            parse("path=a,cache=none"),
            Err(DiskConfigError::UnknownKey("cache".into()))
        );
        assert_eq!(
            parse("path=a,path=b"),
            Err(DiskConfigError::Duplicate("path"))
        );
        assert_eq!(parse("path="), Err(DiskConfigError::EmptyPath));
        assert_eq!(
            parse("path=a,format=vmdk"),
            Err(DiskConfigError::Format("vmdk".into()))
        );
        assert_eq!(
            parse("path=a,readonly=yes"),
            Err(DiskConfigError::ReadOnly("yes".into()))
        );
        assert_eq!(
            parse("path=a,id=012345678901234567890"),
            Err(DiskConfigError::IdTooLong("012345678901234567890".into()))
        );
        assert_eq!(
            parse("path=a,id=b\tc"),
            Err(DiskConfigError::IdCharacters("b\tc".into()))
        );
        // The messages themselves name the flag and the fix.
        let msg = parse("path=a,format=vmdk").unwrap_err().to_string();
        assert!(msg.contains("format=raw or format=qcow2"), "{msg}");
    }

    #[test]
    fn serde_shape_for_vm_toml() {
        let c: DiskConfig =
            serde_json::from_str(r#"{"path": "a.qcow2", "format": "qcow2", "id": "x"}"#).unwrap();
        assert_eq!(c.format, Some(DiskFormat::Qcow2));
        assert!(!c.readonly);
        let err = serde_json::from_str::<DiskConfig>(r#"{"path": "a", "cache": "none"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `cache`"), "{err}");
        let back: DiskConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
