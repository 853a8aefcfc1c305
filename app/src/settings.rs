//! Changing a stopped VM: its settings (CPUs, memory, disk size, network, display size)
//! checked against the host and the VM as it is, and written atomically to `vm.toml`.
//! A disk only grows (shrinking would cut off the guest's data). The file is read again
//! just before it is replaced: if it changed or broke since the dialog opened, nothing is
//! written. A saved VM keeps its hardware (CPUs, memory, disk, network, display): its
//! saved state would no longer fit.

use crate::host::HostInfo;
use crate::library::{Error as LibraryError, VmEntry};
use crate::vm_config::{self, DiskConfig, DisplaySize, OnClose, VmConfig, WindowSettings};

/// Smallest and largest display side: what the engine's `--display` takes.
pub use vireo_vmm::config::{DISPLAY_MAX, DISPLAY_MIN};
/// Largest disk the settings offer, in GiB.
pub const MAX_DISK_GIB: u64 = 16 * 1024;

/// What the settings dialog edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub cpus: u8,
    pub memory_mib: u64,
    /// `None`: no disk.
    pub disk_gib: Option<u64>,
    pub network: bool,
    pub display: DisplaySize,
    /// What closing its window does (`[window] on_close`).
    pub on_close: OnClose,
}

impl Settings {
    pub fn of(config: &VmConfig) -> Settings {
        Settings {
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            disk_gib: config.disk.map(|d| d.size_gib),
            network: config.network,
            display: config.display,
            on_close: config.window.on_close,
        }
    }

    /// Whether these differ from `config` in what the engine's snapshot must match.
    pub fn changes_hardware(&self, config: &VmConfig) -> bool {
        let hardware = |s: &Settings| (s.cpus, s.memory_mib, s.disk_gib, s.network, s.display);
        hardware(self) != hardware(&Settings::of(config))
    }

    /// `config` with these settings.
    pub fn applied_to(&self, config: &VmConfig) -> VmConfig {
        VmConfig {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk: self.disk_gib.map(|size_gib| DiskConfig { size_gib }),
            network: self.network,
            display: self.display,
            window: WindowSettings {
                on_close: self.on_close,
            },
            ..config.clone()
        }
    }
}

/// One thing wrong with new settings, phrased as what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Config(#[from] vm_config::Problem),
    #[error("the disk can only grow: it is {current} GiB now")]
    DiskShrinks { current: u64 },
    #[error("the disk can be at most {MAX_DISK_GIB} GiB")]
    DiskTooLarge,
    #[error("a VM with a disk keeps it: delete the VM to drop its disk")]
    DiskRemoved,
    #[error(
        "a Debian 12 VM's disk is its own system disk (disk.qcow2, made with the VM): \
         it takes no second disk here"
    )]
    SystemDisk,
    #[error("each side of the display must be {DISPLAY_MIN} to {DISPLAY_MAX} pixels")]
    DisplaySize,
    #[error(
        "the VM is saved: its CPUs, memory, disk, network and display stay as they are \
         until you start it or discard its saved state"
    )]
    Saved,
}

/// Which part of the dialog a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Cpus,
    Memory,
    Disk,
    Display,
    Other,
}

impl Problem {
    pub fn field(&self) -> Field {
        match self {
            Problem::Config(p) => match p.field() {
                vm_config::Field::Cpus => Field::Cpus,
                vm_config::Field::Memory => Field::Memory,
                vm_config::Field::Disk => Field::Disk,
                _ => Field::Other,
            },
            Problem::DiskShrinks { .. }
            | Problem::DiskTooLarge
            | Problem::DiskRemoved
            | Problem::SystemDisk => Field::Disk,
            Problem::DisplaySize => Field::Display,
            Problem::Saved => Field::Other,
        }
    }
}

/// Everything wrong with changing `current` to `new` on `host`; `saved`: the VM has a
/// saved state. Only the settings are checked: the name and OS are not the dialog's (a
/// kernel that went missing is reported by Start, not here).
pub fn check(current: &VmConfig, new: &Settings, host: &HostInfo, saved: bool) -> Vec<Problem> {
    let candidate = new.applied_to(current);
    let mut problems: Vec<Problem> = vm_config::check(&candidate, host, &[])
        .into_iter()
        .filter(|p| {
            matches!(
                p.field(),
                vm_config::Field::Cpus | vm_config::Field::Memory | vm_config::Field::Disk
            )
        })
        .map(Problem::from)
        .collect();
    match (current.disk, new.disk_gib) {
        (Some(_), None) => problems.push(Problem::DiskRemoved),
        (Some(old), Some(size)) if size < old.size_gib => problems.push(Problem::DiskShrinks {
            current: old.size_gib,
        }),
        _ => {}
    }
    if current.disk.is_none()
        && new.disk_gib.is_some()
        && matches!(current.os, vm_config::OsSource::Debian12 { .. })
    {
        problems.push(Problem::SystemDisk);
    }
    if new.disk_gib.is_some_and(|size| size > MAX_DISK_GIB) {
        problems.push(Problem::DiskTooLarge);
    }
    let DisplaySize { width, height } = new.display;
    if ![width, height]
        .iter()
        .all(|side| (DISPLAY_MIN..=DISPLAY_MAX).contains(side))
    {
        problems.push(Problem::DisplaySize);
    }
    if saved && new.changes_hardware(current) {
        problems.push(Problem::Saved);
    }
    problems
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("{}", join(.0))]
    Invalid(Vec<Problem>),
    #[error("{0} changed on disk since it was read: look at it again before changing it")]
    Changed(std::path::PathBuf),
    #[error("cannot grow the disk {path}: {source}")]
    Disk {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Save(#[from] vm_config::SaveError),
    #[error("cannot make a MAC address (reading /dev/urandom): {0}")]
    Mac(#[source] std::io::Error),
}

fn join(problems: &[Problem]) -> String {
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// Checks `new` and writes it to the (stopped: the caller checked) VM's `vm.toml`,
/// growing or making its disk first. Returns the config written.
pub fn apply(entry: &VmEntry, new: &Settings, host: &HostInfo) -> Result<VmConfig, ApplyError> {
    let current = entry.config()?;
    // The file itself, not what a list said a moment ago: a save may just have landed.
    let saved = entry.snapshot_path().exists();
    let problems = check(current, new, host, saved);
    if !problems.is_empty() {
        return Err(ApplyError::Invalid(problems));
    }
    // Read again: a file edited or broken since the entry was listed is not ours to
    // overwrite.
    let path = entry.config_path();
    match VmConfig::load(&path) {
        Ok(on_disk) if on_disk == *current => {}
        _ => return Err(ApplyError::Changed(path)),
    }
    let mut updated = new.applied_to(current);
    if updated.network && updated.mac.is_none() {
        // A card of its own, as `create` gives one.
        updated.mac = Some(vm_config::fresh_mac().map_err(ApplyError::Mac)?);
    }
    if let Some(size) = new.disk_gib {
        grow_disk(&entry.disk_path(), size << 30)?;
    }
    updated.save(&path)?;
    Ok(updated)
}

/// Makes the (sparse) disk at least `bytes` long; never shortens it.
fn grow_disk(path: &std::path::Path, bytes: u64) -> Result<(), ApplyError> {
    let disk_err = |source| ApplyError::Disk {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(disk_err)?;
    if file.metadata().map_err(disk_err)?.len() < bytes {
        file.set_len(bytes).map_err(disk_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::KvmKind;
    use crate::library::Library;
    use crate::paths::Dirs;
    use crate::vm_config::OsSource;

    fn host() -> HostInfo {
        HostInfo {
            cpus: 2,
            memory_mib: 4096,
            kvm: KvmKind::Pvm,
        }
    }

    fn config() -> VmConfig {
        VmConfig {
            name: "Work".into(),
            os: OsSource::SelfTest,
            cpus: 1,
            memory_mib: 256,
            disk: Some(DiskConfig { size_gib: 2 }),
            network: false,
            display: DisplaySize::default(),
            mac: None,
            link: Default::default(),
            window: Default::default(),
            resources: Default::default(),
        }
    }

    #[test]
    fn a_debian12_vm_takes_no_second_disk_and_keeps_its_own() {
        let current = VmConfig {
            os: OsSource::debian12("alice", "root=/dev/vda rw"),
            disk: None,
            network: true,
            ..config()
        };
        let mut new = Settings::of(&current);
        assert_eq!(check(&current, &new, &host_hw(), false), vec![]);
        new.memory_mib = 2048;
        assert_eq!(check(&current, &new, &host_hw(), false), vec![]);
        assert_eq!(new.applied_to(&current).os, current.os);
        new.disk_gib = Some(4);
        assert_eq!(
            check(&current, &new, &host_hw(), false),
            vec![Problem::SystemDisk]
        );
    }

    fn host_hw() -> HostInfo {
        HostInfo {
            kvm: KvmKind::Hardware,
            ..host()
        }
    }

    #[test]
    fn problems_name_the_field() {
        let current = config();
        let ok = Settings {
            cpus: 2,
            memory_mib: 1024,
            disk_gib: Some(4),
            network: true,
            display: DisplaySize {
                width: 1920,
                height: 1080,
            },
            on_close: OnClose::KeepRunning,
        };
        assert_eq!(check(&current, &ok, &host(), false), vec![]);
        let bad = Settings {
            cpus: 3,
            memory_mib: 9000,
            disk_gib: Some(1),
            display: DisplaySize {
                width: 100,
                height: 1080,
            },
            ..ok
        };
        let fields: Vec<Field> = check(&current, &bad, &host(), false)
            .iter()
            .map(Problem::field)
            .collect();
        assert_eq!(
            fields,
            [Field::Cpus, Field::Memory, Field::Disk, Field::Display]
        );
        let dropped = Settings {
            disk_gib: None,
            ..ok
        };
        assert_eq!(
            check(&current, &dropped, &host(), false),
            vec![Problem::DiskRemoved]
        );
    }

    #[test]
    fn apply_grows_the_disk_and_refuses_a_changed_file() {
        let base = std::env::temp_dir().join(format!("vireo-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let lib = Library::new(&Dirs {
            data: base.join("data"),
            runtime: base.join("run"),
        });
        let entry = lib.create(&config()).unwrap();
        let new = Settings {
            disk_gib: Some(3),
            memory_mib: 512,
            ..Settings::of(&config())
        };
        let written = apply(&entry, &new, &host()).unwrap();
        assert_eq!(VmConfig::load(&entry.config_path()).unwrap(), written);
        assert_eq!(written.memory_mib, 512);
        assert_eq!(std::fs::metadata(entry.disk_path()).unwrap().len(), 3 << 30);
        assert_eq!(written.mac, None, "no network, no MAC");
        let with_net = apply(
            &lib.find(&entry.id).unwrap(),
            &Settings {
                network: true,
                ..new
            },
            &host(),
        )
        .unwrap();
        assert!(with_net.mac.unwrap().starts_with("52:54:00:"));
        // `entry` still holds the old config: the file on disk differs now.
        let err = apply(&entry, &new, &host()).unwrap_err();
        assert!(matches!(err, ApplyError::Changed(_)), "{err}");
        // A broken file is never rewritten.
        std::fs::write(entry.config_path(), "cpus = [").unwrap();
        let broken = lib.find(&entry.id).unwrap();
        assert!(apply(&broken, &new, &host()).is_err());
        assert_eq!(
            std::fs::read_to_string(entry.config_path()).unwrap(),
            "cpus = ["
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_saved_vm_keeps_its_hardware_but_not_its_window_choice() {
        let base =
            std::env::temp_dir().join(format!("vireo-settings-saved-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let lib = Library::new(&Dirs {
            data: base.join("data"),
            runtime: base.join("run"),
        });
        let entry = lib.create(&config()).unwrap();
        std::fs::write(entry.snapshot_path(), b"a saved state").unwrap();
        let before = std::fs::read_to_string(entry.config_path()).unwrap();
        for change in [
            Settings {
                cpus: 2,
                ..Settings::of(&config())
            },
            Settings {
                memory_mib: 512,
                ..Settings::of(&config())
            },
            Settings {
                disk_gib: Some(3),
                ..Settings::of(&config())
            },
            Settings {
                network: true,
                ..Settings::of(&config())
            },
            Settings {
                display: DisplaySize {
                    width: 800,
                    height: 600,
                },
                ..Settings::of(&config())
            },
        ] {
            let err = apply(&entry, &change, &host()).unwrap_err().to_string();
            assert!(err.contains("start it or discard its saved state"), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(entry.config_path()).unwrap(),
            before
        );
        assert_eq!(std::fs::metadata(entry.disk_path()).unwrap().len(), 2 << 30);
        let written = apply(
            &entry,
            &Settings {
                on_close: OnClose::Save,
                ..Settings::of(&config())
            },
            &host(),
        )
        .unwrap();
        assert_eq!(written.window.on_close, OnClose::Save);
        std::fs::remove_dir_all(base).unwrap();
    }
}
