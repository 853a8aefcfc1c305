//! A VM's `vm.toml`: what the VM is made of, in a file a person can read and edit. It is
//! written atomically (temp file, fsync, rename, fsync of the directory) so a crash
//! leaves the old or the new file, never half of one; a file that cannot be read is
//! reported with the reason and left exactly as it is.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::HostInfo;
use crate::resources::Resources;

/// The file name inside a VM's directory.
pub const FILE_NAME: &str = "vm.toml";
/// The name of a VM's disk file inside its directory.
pub const DISK_FILE: &str = "disk.img";
/// A saved VM's state (the engine's snapshot file) inside its directory: while it
/// exists the VM is saved and its next start restores it.
pub const SNAPSHOT_FILE: &str = "saved-state.snap";
/// Longest VM name: it is shown in lists and window titles.
pub const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: String,
    pub os: OsSource,
    pub cpus: u8,
    pub memory_mib: u64,
    /// A raw disk image in the VM's directory (`disk.img`), made sparse at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskConfig>,
    /// User-mode networking (passt).
    #[serde(default)]
    pub network: bool,
    pub display: DisplaySize,
    // --- Identity (clone, settings: issue 7 item 1). Defaulted so older vm.toml load. ---
    /// The network card's MAC address (`52:54:00:..`); a clone gets a fresh one. `None`:
    /// the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    // ---- Guest link (clipboard bridge, shared folders): the `link` branch's block. ----
    /// How the guest agent is bridged to the host: clipboard direction, shared folders.
    /// Absent from older files: the defaults.
    #[serde(default, skip_serializing_if = "LinkSettings::is_default")]
    pub link: LinkSettings,
    /// What the app does with the running VM when its window closes or the app quits
    /// (`[window]`; absent from older files: keep it running).
    #[serde(default, skip_serializing_if = "WindowSettings::is_default")]
    pub window: WindowSettings,
    /// Its share of the host: CPU weight and limit, disk and network caps
    /// (`[resources]`; absent from older files: none).
    #[serde(default, skip_serializing_if = "Resources::is_default")]
    pub resources: Resources,
}

/// `[window]` in vm.toml.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    #[serde(default)]
    pub on_close: OnClose,
}

impl WindowSettings {
    pub fn is_default(&self) -> bool {
        *self == WindowSettings::default()
    }
}

/// What closing a VM's window (or quitting the app) does to the running VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OnClose {
    /// It runs on (it is in the library).
    #[default]
    KeepRunning,
    /// Its state is saved; the next start restores it.
    Save,
}

impl OnClose {
    pub const ALL: [OnClose; 2] = [OnClose::KeepRunning, OnClose::Save];

    pub fn label(self) -> &'static str {
        match self {
            OnClose::KeepRunning => "keep it running",
            OnClose::Save => "save its state",
        }
    }
}

// ---- Guest link settings (the `link` branch): kept together to keep merges easy. ----

/// What crosses between host and guest through the guest agent (`[link]` in vm.toml).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    #[serde(default)]
    pub clipboard: ClipboardDirection,
    /// Host folders served to the guest besides the drop folder (share `vireo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_folders: Vec<SharedFolder>,
}

impl LinkSettings {
    pub fn is_default(&self) -> bool {
        *self == LinkSettings::default()
    }
}

/// Which way copies cross.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClipboardDirection {
    #[default]
    Both,
    HostToGuest,
    GuestToHost,
    Off,
}

impl ClipboardDirection {
    pub const ALL: [ClipboardDirection; 4] = [
        ClipboardDirection::Both,
        ClipboardDirection::HostToGuest,
        ClipboardDirection::GuestToHost,
        ClipboardDirection::Off,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ClipboardDirection::Both => "both ways",
            ClipboardDirection::HostToGuest => "host to guest only",
            ClipboardDirection::GuestToHost => "guest to host only",
            ClipboardDirection::Off => "off",
        }
    }

    pub fn host_to_guest(self) -> bool {
        matches!(
            self,
            ClipboardDirection::Both | ClipboardDirection::HostToGuest
        )
    }

    pub fn guest_to_host(self) -> bool {
        matches!(
            self,
            ClipboardDirection::Both | ClipboardDirection::GuestToHost
        )
    }
}

/// A host folder the guest mounts at `/mnt/vireo/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFolder {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl SharedFolder {
    /// A share for `path` named after its last component (made a plain name: letters,
    /// digits, `-`, `_`, `.`; `folder` if nothing is left).
    pub fn for_path(path: PathBuf, read_only: bool) -> SharedFolder {
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut name: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        name = name.trim_start_matches('.').chars().take(64).collect();
        if name.is_empty() {
            name = "folder".into();
        }
        SharedFolder {
            name,
            path,
            read_only,
        }
    }
}

/// Why `folder` cannot be added beside `existing` (the drop folder's share is `vireo`),
/// in words for the user.
pub fn check_new_share(folder: &SharedFolder, existing: &[SharedFolder]) -> Result<(), String> {
    let plain = !folder.name.is_empty()
        && folder.name.len() <= 64
        && !folder.name.starts_with('.')
        && folder
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !plain {
        return Err(format!(
            "the share name {:?} must be letters, digits, '-', '_' or '.' (up to 64)",
            folder.name
        ));
    }
    if folder.name == crate::guest_link::DROP_SHARE
        || existing.iter().any(|f| f.name == folder.name)
    {
        return Err(format!("a share named {:?} exists already", folder.name));
    }
    if !folder.path.is_dir() {
        return Err(format!("{} is not a folder", folder.path.display()));
    }
    Ok(())
}

/// A fresh locally administered MAC address in QEMU's 52:54:00 range, for a new or
/// cloned VM (two VMs on one bridge must not share one).
pub fn fresh_mac() -> std::io::Result<String> {
    let mut bytes = [0u8; 3];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2]
    ))
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OsSource {
    /// The probe guest's self-test screen: runs on any KVM host, PVM included.
    SelfTest,
    /// A Linux kernel (bzImage or PVH vmlinux) and an optional initrd.
    Kernel {
        kernel: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        cmdline: String,
    },
    /// The Vireo demo Linux built by `vireo-image`: needs hardware KVM.
    DemoLinux,
    /// A full Debian 12 the wizard built with `vireo-image debian12` for this VM: its
    /// own disk (qcow2, the root filesystem), the kernel and initrd it boots with, and
    /// the account made in it. Paths are relative to the VM's directory (where
    /// [`DEBIAN12_FILES`] are): a clone or a moved library keeps working. Needs hardware
    /// KVM.
    Debian12 {
        user: String,
        disk: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
}

/// What `vireo-image debian12` writes, all kept in the VM's directory: the disk, the
/// kernel (bzImage, booted) and its PVH vmlinux, the initrd and the command line.
pub const DEBIAN12_FILES: [&str; 5] = ["disk.qcow2", "vmlinuz", "vmlinux", "initrd.img", "cmdline"];

impl OsSource {
    /// The `vm.toml` entry for a Debian 12 image built into the VM's directory, whose
    /// `cmdline` file says how it boots.
    pub fn debian12(user: &str, cmdline: &str) -> OsSource {
        OsSource::Debian12 {
            user: user.to_owned(),
            disk: DEBIAN12_FILES[0].into(),
            kernel: DEBIAN12_FILES[1].into(),
            initrd: DEBIAN12_FILES[3].into(),
            cmdline: cmdline.trim().to_owned(),
        }
    }

    /// The files of the VM's directory that are its operating system (a clone copies
    /// them, a delete that keeps the disk keeps them), relative to that directory.
    pub fn own_files(&self) -> Vec<PathBuf> {
        match self {
            OsSource::Debian12 {
                disk,
                kernel,
                initrd,
                ..
            } => {
                let mut files = vec![disk.clone(), kernel.clone(), initrd.clone()];
                // The builder's other outputs, kept beside them.
                let others: Vec<PathBuf> = DEBIAN12_FILES
                    .iter()
                    .map(PathBuf::from)
                    .filter(|f| !files.contains(f))
                    .collect();
                files.extend(others);
                files
            }
            _ => Vec::new(),
        }
    }

    /// What the library shows in its OS column.
    pub fn label(&self) -> String {
        match self {
            OsSource::SelfTest => "Vireo self-test".into(),
            OsSource::Kernel { kernel, .. } => format!(
                "Linux kernel ({})",
                kernel
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            OsSource::DemoLinux => "Vireo demo Linux".into(),
            OsSource::Debian12 { .. } => "Debian 12".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub size_gib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

impl Default for DisplaySize {
    fn default() -> Self {
        DisplaySize {
            width: 1024,
            height: 768,
        }
    }
}

/// Why a `vm.toml` could not be used; the library shows it as the VM's "broken" reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid VM config: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct SaveError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl VmConfig {
    /// Whether the engine gets a disk: the raw `disk.img`, or a Debian 12's own.
    pub fn has_disk(&self) -> bool {
        self.disk.is_some() || matches!(self.os, OsSource::Debian12 { .. })
    }

    pub fn load(path: &Path) -> Result<VmConfig, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| LoadError::Parse {
            path: path.to_owned(),
            // toml's message spans several lines (the line, a caret); keep it whole.
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Writes the config to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), SaveError> {
        let text = toml::to_string_pretty(self).map_err(|e| SaveError {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        write_atomically(path, text.as_bytes()).map_err(|source| SaveError {
            path: path.to_owned(),
            source,
        })
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory: after
/// a crash `path` holds the old bytes or the new ones.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or(std::io::ErrorKind::InvalidInput)?;
    let name = path.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// One thing wrong with a VM the user is about to create, phrased as what to fix. The
/// wizard shows each beside its field; the CLI prints them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("give the VM a name")]
    NameEmpty,
    #[error("a VM named \"{0}\" already exists: pick another name")]
    NameTaken(String),
    #[error("the name is too long: at most {MAX_NAME} characters")]
    NameTooLong,
    #[error("the name cannot contain control characters or '/'")]
    NameBadCharacter,
    #[error("at least 1 CPU")]
    NoCpus,
    #[error("{given} CPUs is more than this host's {host}")]
    TooManyCpus { given: u32, host: u32 },
    #[error("at least {min} MiB of memory")]
    TooLittleMemory { min: u64 },
    #[error("{given} MiB is more memory than this host has ({host} MiB)")]
    TooMuchMemory { given: u64, host: u64 },
    #[error("the kernel file {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("choose a kernel file")]
    KernelNotChosen,
    #[error("the initrd file {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("{0}")]
    OsUnavailable(String),
    #[error("a disk needs at least 1 GiB")]
    DiskTooSmall,
    #[error(transparent)]
    Resources(#[from] crate::resources::Problem),
}

impl Problem {
    /// Which part of the form the problem belongs to.
    pub fn field(&self) -> Field {
        match self {
            Problem::NameEmpty
            | Problem::NameTaken(_)
            | Problem::NameTooLong
            | Problem::NameBadCharacter => Field::Name,
            Problem::NoCpus | Problem::TooManyCpus { .. } => Field::Cpus,
            Problem::TooLittleMemory { .. } | Problem::TooMuchMemory { .. } => Field::Memory,
            Problem::KernelMissing(_) | Problem::KernelNotChosen => Field::Kernel,
            Problem::InitrdMissing(_) => Field::Initrd,
            Problem::OsUnavailable(_) => Field::Os,
            Problem::DiskTooSmall => Field::Disk,
            Problem::Resources(_) => Field::Resources,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Os,
    Kernel,
    Initrd,
    Cpus,
    Memory,
    Disk,
    Resources,
}

/// Smallest guest RAM the app offers (the engine's own floor is lower; no real guest
/// fits in less).
pub const MIN_MEMORY_MIB: u64 = 64;

/// Everything wrong with `config` on `host`, given the names already in the library.
pub fn check(config: &VmConfig, host: &HostInfo, taken: &[String]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let name = config.name.trim();
    if name.is_empty() {
        problems.push(Problem::NameEmpty);
    } else if name.chars().count() > MAX_NAME {
        problems.push(Problem::NameTooLong);
    } else if name.chars().any(|c| c.is_control() || c == '/') {
        problems.push(Problem::NameBadCharacter);
    } else if taken.iter().any(|t| t.trim().eq_ignore_ascii_case(name)) {
        problems.push(Problem::NameTaken(name.to_owned()));
    }
    match config.os {
        OsSource::SelfTest => {}
        OsSource::DemoLinux | OsSource::Debian12 { .. } => {
            if let Err(why) = host.runs_stock_linux() {
                problems.push(Problem::OsUnavailable(why));
            }
        }
        OsSource::Kernel {
            ref kernel,
            ref initrd,
            ..
        } => {
            if kernel.as_os_str().is_empty() {
                problems.push(Problem::KernelNotChosen);
            } else if !kernel.is_file() {
                problems.push(Problem::KernelMissing(kernel.clone()));
            }
            if let Some(initrd) = initrd.as_ref().filter(|p| !p.as_os_str().is_empty()) {
                if !initrd.is_file() {
                    problems.push(Problem::InitrdMissing(initrd.clone()));
                }
            }
        }
    }
    if config.cpus == 0 {
        problems.push(Problem::NoCpus);
    } else if u32::from(config.cpus) > host.cpus {
        problems.push(Problem::TooManyCpus {
            given: config.cpus.into(),
            host: host.cpus,
        });
    }
    if config.memory_mib < MIN_MEMORY_MIB {
        problems.push(Problem::TooLittleMemory {
            min: MIN_MEMORY_MIB,
        });
    } else if config.memory_mib > host.memory_mib {
        problems.push(Problem::TooMuchMemory {
            given: config.memory_mib,
            host: host.memory_mib,
        });
    }
    if config.disk.is_some_and(|d| d.size_gib == 0) {
        problems.push(Problem::DiskTooSmall);
    }
    problems.extend(
        config
            .resources
            .check(host.cpus)
            .into_iter()
            .map(Problem::from),
    );
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_picked_folder_gets_a_plain_share_name_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("vireo-share-name-{}", std::process::id()));
        let photos = dir.join("My Photos (2024)");
        std::fs::create_dir_all(&photos).unwrap();
        let share = SharedFolder::for_path(photos.clone(), true);
        assert_eq!(share.name, "My-Photos--2024-");
        assert!(share.read_only);
        assert_eq!(SharedFolder::for_path("/".into(), false).name, "folder");
        assert_eq!(
            SharedFolder::for_path(dir.join(".hidden"), false).name,
            "hidden"
        );
        check_new_share(&share, &[]).unwrap();
        let taken = check_new_share(&share, std::slice::from_ref(&share)).unwrap_err();
        assert!(taken.contains("exists already"), "{taken}");
        let drop_share = SharedFolder {
            name: "vireo".into(),
            ..share.clone()
        };
        assert!(check_new_share(&drop_share, &[]).is_err());
        let path_name = SharedFolder {
            name: "../etc".into(),
            ..share.clone()
        };
        assert!(check_new_share(&path_name, &[])
            .unwrap_err()
            .contains("letters"));
        let missing = SharedFolder::for_path(dir.join("gone"), false);
        assert!(check_new_share(&missing, &[])
            .unwrap_err()
            .contains("not a folder"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;
    use crate::host::KvmKind;

    fn host() -> HostInfo {
        HostInfo {
            cpus: 2,
            memory_mib: 4096,
            kvm: KvmKind::Pvm,
        }
    }

    fn self_test(name: &str) -> VmConfig {
        VmConfig {
            name: name.into(),
            os: OsSource::SelfTest,
            cpus: 1,
            memory_mib: 256,
            disk: None,
            network: false,
            display: DisplaySize::default(),
            link: LinkSettings::default(),
            window: WindowSettings::default(),
            resources: Default::default(),
            mac: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saved_configs_load_back_and_read_as_toml() {
        let dir = temp("roundtrip");
        let path = dir.join(FILE_NAME);
        let config = VmConfig {
            os: OsSource::Kernel {
                kernel: "/boot/vmlinuz".into(),
                initrd: Some("/boot/initrd.img".into()),
                cmdline: "quiet".into(),
            },
            disk: Some(DiskConfig { size_gib: 8 }),
            network: true,
            ..self_test("Work")
        };
        config.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("name = \"Work\""), "{text}");
        assert!(text.contains("kind = \"kernel\""), "{text}");
        assert_eq!(VmConfig::load(&path).unwrap(), config);
        // Only vm.toml is left: the temp file was renamed over it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn link_settings_default_when_absent_and_round_trip() {
        let dir = temp("link");
        let path = dir.join(FILE_NAME);
        // A file written before the `[link]` table existed still loads, with defaults.
        let old = self_test("Old");
        old.save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("[link]"));
        assert_eq!(VmConfig::load(&path).unwrap().link, LinkSettings::default());
        let new = VmConfig {
            link: LinkSettings {
                clipboard: ClipboardDirection::GuestToHost,
                shared_folders: vec![SharedFolder {
                    name: "music".into(),
                    path: "/home/me/Music".into(),
                    read_only: true,
                }],
            },
            ..self_test("New")
        };
        new.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("clipboard = \"guest-to-host\""), "{text}");
        assert_eq!(VmConfig::load(&path).unwrap(), new);
        std::fs::write(&path, text.replace("clipboard", "clipbored")).unwrap();
        assert!(
            VmConfig::load(&path).is_err(),
            "unknown link keys are refused"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn window_on_close_defaults_to_keep_running_and_round_trips() {
        let dir = temp("window");
        let path = dir.join(FILE_NAME);
        let old = self_test("Old");
        old.save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("[window]"));
        assert_eq!(
            VmConfig::load(&path).unwrap().window.on_close,
            OnClose::KeepRunning
        );
        let saving = VmConfig {
            window: WindowSettings {
                on_close: OnClose::Save,
            },
            ..self_test("Saving")
        };
        saving.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[window]\non_close = \"save\""), "{text}");
        assert_eq!(VmConfig::load(&path).unwrap(), saving);
        std::fs::write(&path, text.replace("\"save\"", "\"hibernate\"")).unwrap();
        assert!(
            VmConfig::load(&path).is_err(),
            "unknown choices are refused"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unreadable_configs_name_the_reason() {
        let dir = temp("broken");
        let path = dir.join(FILE_NAME);
        std::fs::write(&path, "name = \"x\"\ncpus = \"many\"\n").unwrap();
        let err = VmConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("not a valid VM config") && err.contains("cpus"),
            "{err}"
        );
        std::fs::write(&path, "name = \"x\"\nos = { kind = \"self-test\" }\ncpus = 1\nmemory_mib = 64\ncolour = 3\n[display]\nwidth = 1\nheight = 1\n").unwrap();
        let err = VmConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let err = VmConfig::load(&dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn problems_name_what_to_fix() {
        let h = host();
        assert_eq!(check(&self_test("ok"), &h, &[]), vec![]);
        assert_eq!(check(&self_test("  "), &h, &[]), vec![Problem::NameEmpty]);
        assert_eq!(
            check(&self_test("Work"), &h, &["work".into()]),
            vec![Problem::NameTaken("Work".into())]
        );
        assert_eq!(
            check(&self_test("a/b"), &h, &[]),
            vec![Problem::NameBadCharacter]
        );
        let big = VmConfig {
            memory_mib: 8192,
            cpus: 3,
            ..self_test("big")
        };
        assert_eq!(
            check(&big, &h, &[]),
            vec![
                Problem::TooManyCpus { given: 3, host: 2 },
                Problem::TooMuchMemory {
                    given: 8192,
                    host: 4096
                }
            ]
        );
        let kernel = VmConfig {
            os: OsSource::Kernel {
                kernel: "/nonexistent/vmlinuz".into(),
                initrd: Some("/nonexistent/initrd".into()),
                cmdline: String::new(),
            },
            ..self_test("k")
        };
        let problems = check(&kernel, &h, &[]);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].field(), Field::Kernel);
        assert!(problems[1].to_string().contains("/nonexistent/initrd"));
        let demo = VmConfig {
            os: OsSource::DemoLinux,
            ..self_test("demo")
        };
        let problems = check(&demo, &h, &[]);
        assert!(
            matches!(&problems[..], [Problem::OsUnavailable(why)] if why.contains("PVM")),
            "{problems:?}"
        );
    }
}
