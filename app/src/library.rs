//! The VM library: one directory per VM under `$XDG_DATA_HOME/vireo/vms/`, named by the
//! VM's id (a slug of its name), holding `vm.toml`, its disk and its logs. Listing never
//! fails because of one VM: a directory whose config cannot be read is an entry with
//! the reason, and nothing here ever rewrites or deletes such a directory.

use std::path::{Path, PathBuf};

use crate::paths::Dirs;
use crate::vm_config::{self, VmConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the VM library {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no VM named or with id \"{0}\" (see vireo list)")]
    NotFound(String),
    #[error("the config of VM {id} cannot be read ({reason}): fix or remove {dir} by hand")]
    Broken {
        id: String,
        reason: String,
        dir: PathBuf,
    },
    #[error("cannot create the VM's files in {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Save(#[from] vm_config::SaveError),
    #[error("{0}")]
    Name(vm_config::Problem),
    #[error("cannot make a MAC address (reading /dev/urandom): {0}")]
    Mac(#[source] std::io::Error),
    #[error("cannot delete {path}: {source}")]
    Delete {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One VM directory.
#[derive(Debug, Clone)]
pub struct VmEntry {
    pub id: String,
    pub dir: PathBuf,
    /// The config, or why it cannot be read (the entry is "broken").
    pub config: Result<VmConfig, String>,
}

impl VmEntry {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(vm_config::FILE_NAME)
    }

    /// The config, or the broken-entry error naming the reason.
    pub fn config(&self) -> Result<&VmConfig, Error> {
        self.config.as_ref().map_err(|reason| Error::Broken {
            id: self.id.clone(),
            reason: reason.clone(),
            dir: self.dir.clone(),
        })
    }

    /// The name to show: the config's, or the directory's for a broken entry.
    pub fn name(&self) -> &str {
        match &self.config {
            Ok(c) => &c.name,
            Err(_) => &self.id,
        }
    }

    pub fn disk_path(&self) -> PathBuf {
        self.dir.join(vm_config::DISK_FILE)
    }

    /// The saved state (`vm_config::SNAPSHOT_FILE`), absolute: the engine is told it.
    /// While it exists the VM is saved; a clone does not copy it, a delete removes it.
    pub fn snapshot_path(&self) -> PathBuf {
        let path = self.dir.join(vm_config::SNAPSHOT_FILE);
        std::path::absolute(&path).unwrap_or(path)
    }

    /// The engine's console and messages of the last run.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("logs").join("console.log")
    }

    /// How the last run ended (`supervisor::LastExit`, written by the monitor).
    pub fn last_exit_path(&self) -> PathBuf {
        self.dir.join("last-exit.json")
    }
}

#[derive(Debug, Clone)]
pub struct Library {
    root: PathBuf,
    kept_disks: PathBuf,
}

/// What happens to a deleted VM's disk: deleting user data is explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChoice {
    Delete,
    /// Moved to `$XDG_DATA_HOME/vireo/kept-disks/<id>.img`.
    Keep,
}

impl Library {
    pub fn new(dirs: &Dirs) -> Library {
        Library {
            root: dirs.vms(),
            kept_disks: dirs.kept_disks(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every VM directory, sorted by name. A missing library is an empty one.
    pub fn list(&self) -> Result<Vec<VmEntry>, Error> {
        let read = match std::fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::List {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut entries: Vec<VmEntry> = read
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let id = e.file_name().to_str()?.to_owned();
                // Hidden directories are ours in the making (see `create`).
                (!id.starts_with('.')).then(|| self.entry(id))
            })
            .collect();
        entries.sort_by_key(|e| e.name().to_lowercase());
        Ok(entries)
    }

    fn entry(&self, id: String) -> VmEntry {
        let dir = self.root.join(&id);
        let config = VmConfig::load(&dir.join(vm_config::FILE_NAME)).map_err(|e| e.to_string());
        VmEntry { id, dir, config }
    }

    /// The VM whose id or name (case-insensitive) is `key`.
    pub fn find(&self, key: &str) -> Result<VmEntry, Error> {
        let entries = self.list()?;
        let by_id = entries.iter().position(|e| e.id == key);
        let by_name = || {
            entries.iter().position(|e| {
                e.config
                    .as_ref()
                    .is_ok_and(|c| c.name.eq_ignore_ascii_case(key))
            })
        };
        match by_id.or_else(by_name) {
            Some(i) => Ok(entries.into_iter().nth(i).expect("index from position")),
            None => Err(Error::NotFound(key.to_owned())),
        }
    }

    /// The names in use (for the "name taken" check).
    pub fn names(&self) -> Vec<String> {
        self.list()
            .unwrap_or_default()
            .iter()
            .map(|e| e.name().to_owned())
            .collect()
    }

    /// Makes the VM's directory, its disk (sparse) and its `vm.toml`. A VM with a
    /// network card gets a MAC address of its own.
    pub fn create(&self, config: &VmConfig) -> Result<VmEntry, Error> {
        let mut config = config.clone();
        if config.network && config.mac.is_none() {
            config.mac = Some(fresh_mac()?);
        }
        self.build(&config, |staging| {
            if let Some(disk) = config.disk {
                let path = staging.join(vm_config::DISK_FILE);
                let file = std::fs::File::create(&path).map_err(create_err(&path))?;
                file.set_len(disk.size_gib << 30)
                    .map_err(create_err(&path))?;
            }
            Ok(())
        })
    }

    /// Makes a VM whose operating system was built into `image` (a Debian 12 the wizard
    /// built for it): the image's files are moved into the VM's directory, then `image`
    /// is removed, whether or not the VM could be made.
    pub fn create_with_image(&self, config: &VmConfig, image: &Path) -> Result<VmEntry, Error> {
        let mut config = config.clone();
        if config.network && config.mac.is_none() {
            config.mac = Some(fresh_mac()?);
        }
        let result = self.build(&config, |staging| {
            for file in config.os.own_files() {
                let (from, to) = (image.join(&file), staging.join(&file));
                if from.exists() {
                    move_file(&from, &to).map_err(create_err(&to))?;
                }
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(image);
        result
    }

    /// A copy of the (stopped: the caller checked) VM `source` named `name`: its disk
    /// copied (sharing blocks where the filesystem can, holes kept), a fresh MAC address.
    /// A saved VM's state is not copied: the copy boots afresh from the disk as it is.
    pub fn clone_vm(&self, source: &VmEntry, name: &str) -> Result<VmEntry, Error> {
        let mut config = source.config()?.clone();
        config.name = name.trim().to_owned();
        let taken = self.names();
        let host_free = crate::host::HostInfo {
            cpus: u32::MAX,
            memory_mib: u64::MAX,
            kvm: crate::host::KvmKind::Unknown,
        };
        if let Some(problem) = vm_config::check(&config, &host_free, &taken)
            .into_iter()
            .find(|p| p.field() == vm_config::Field::Name)
        {
            return Err(Error::Name(problem));
        }
        config.mac = Some(fresh_mac()?);
        let disk = source.disk_path();
        // A Debian 12's own disk and kernel files, each copied under its name: the
        // clone's config names its own copies.
        let own_files = config.os.own_files();
        localize(&mut config.os);
        self.build(&config, |staging| {
            if config.disk.is_some() && disk.exists() {
                let target = staging.join(vm_config::DISK_FILE);
                copy_sparse(&disk, &target).map_err(create_err(&target))?;
            }
            for file in own_files {
                let from = source.dir.join(&file);
                let Some(name) = file.file_name() else {
                    continue;
                };
                if from.exists() {
                    let target = staging.join(name);
                    copy_sparse(&from, &target).map_err(create_err(&target))?;
                }
            }
            Ok(())
        })
    }

    /// Builds a VM directory under a hidden name (`fill` adds its disk) and renames it
    /// into place, so a half-made VM never shows.
    fn build(
        &self,
        config: &VmConfig,
        fill: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<VmEntry, Error> {
        std::fs::create_dir_all(&self.root).map_err(create_err(&self.root))?;
        let id = self.free_id(&slug(&config.name));
        let staging = self.root.join(format!(".new-{id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = (|| {
            std::fs::create_dir_all(staging.join("logs")).map_err(create_err(&staging))?;
            fill(&staging)?;
            config.save(&staging.join(vm_config::FILE_NAME))?;
            let dir = self.root.join(&id);
            std::fs::rename(&staging, &dir).map_err(create_err(&dir))?;
            Ok(self.entry(id.clone()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// `base`, or `base-2`, `base-3`... whichever has no directory yet.
    fn free_id(&self, base: &str) -> String {
        (1..)
            .map(|n| {
                if n == 1 {
                    base.to_owned()
                } else {
                    format!("{base}-{n}")
                }
            })
            .find(|id| !self.root.join(id).exists())
            .expect("some suffix is free")
    }

    /// Deletes a VM's directory (the caller checked it is not running). A broken entry
    /// is refused: its files are the user's to look at. Returns where a kept disk went.
    pub fn delete(&self, entry: &VmEntry, disk: DiskChoice) -> Result<Option<PathBuf>, Error> {
        entry.config()?;
        let mut kept = None;
        let disk_path = entry.disk_path();
        if disk == DiskChoice::Keep && disk_path.exists() {
            std::fs::create_dir_all(&self.kept_disks).map_err(|source| Error::Delete {
                path: self.kept_disks.clone(),
                source,
            })?;
            let target = self
                .kept_disks
                .join(format!("{}.img", self.free_kept_name(&entry.id)));
            std::fs::rename(&disk_path, &target).map_err(|source| Error::Delete {
                path: disk_path.clone(),
                source,
            })?;
            kept = Some(target);
        }
        let own_files = entry.config()?.os.own_files();
        if disk == DiskChoice::Keep && !own_files.is_empty() {
            kept = Some(self.keep_own_files(entry, &own_files)?);
        }
        std::fs::remove_dir_all(&entry.dir).map_err(|source| Error::Delete {
            path: entry.dir.clone(),
            source,
        })?;
        Ok(kept)
    }

    /// Moves a Debian 12's disk and kernel files into `kept-disks/<id>/`.
    fn keep_own_files(&self, entry: &VmEntry, files: &[PathBuf]) -> Result<PathBuf, Error> {
        let target = self.kept_disks.join(self.free_kept_name(&entry.id));
        let delete_err = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Delete { path, source }
        };
        std::fs::create_dir_all(&target).map_err(delete_err(&target))?;
        for file in files {
            let from = entry.dir.join(file);
            if let (true, Some(name)) = (from.exists(), file.file_name()) {
                move_file(&from, &target.join(name)).map_err(delete_err(&from))?;
            }
        }
        Ok(target)
    }

    fn free_kept_name(&self, id: &str) -> String {
        (1..)
            .map(|n| {
                if n == 1 {
                    id.to_owned()
                } else {
                    format!("{id}-{n}")
                }
            })
            .find(|name| {
                !self.kept_disks.join(format!("{name}.img")).exists()
                    && !self.kept_disks.join(name).exists()
            })
            .expect("some suffix is free")
    }
}

fn create_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Create { path, source }
}

fn fresh_mac() -> Result<String, Error> {
    vm_config::fresh_mac().map_err(Error::Mac)
}

/// Makes a Debian 12's file paths plain names in the VM's own directory (where a clone
/// copies them).
fn localize(os: &mut vm_config::OsSource) {
    if let vm_config::OsSource::Debian12 {
        disk,
        kernel,
        initrd,
        ..
    } = os
    {
        for path in [disk, kernel, initrd] {
            if let Some(name) = path.file_name() {
                *path = PathBuf::from(name);
            }
        }
    }
}

/// Renames `from` to `to`, or copies and removes it across filesystems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            copy_sparse(from, to)?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

/// Copies `from` to a new file `to` of the same length, data extent by data extent
/// (SEEK_DATA/SEEK_HOLE), each with `copy_file_range`: holes stay holes, and on
/// filesystems that can (btrfs, XFS) the kernel shares the blocks instead of copying.
pub fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::unistd::{lseek, Whence};
    let source = std::fs::File::open(from)?;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let len = i64::try_from(source.metadata()?.len()).map_err(std::io::Error::other)?;
    target.set_len(len as u64)?;
    let mut offset = 0i64;
    while offset < len {
        let data = match lseek(&source, offset, Whence::SeekData) {
            Ok(d) => d,
            // No data after `offset`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(&source, data, Whence::SeekHole)?.min(len);
        let (mut from_off, mut to_off) = (data, data);
        while from_off < hole {
            let chunk = usize::try_from(hole - from_off)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let n = nix::fcntl::copy_file_range(
                &source,
                Some(&mut from_off),
                &target,
                Some(&mut to_off),
                chunk,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        offset = hole;
    }
    target.sync_all()
}

/// A directory name from a VM name: lowercase ASCII letters, digits and dashes.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    if out.is_empty() {
        "vm".into()
    } else {
        out.chars().take(40).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_config::{DiskConfig, DisplaySize, OsSource};

    fn library(name: &str) -> (Library, PathBuf) {
        let base = std::env::temp_dir().join(format!("vireo-lib-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = Dirs {
            data: base.join("data"),
            runtime: base.join("run"),
        };
        (Library::new(&dirs), base)
    }

    fn config(name: &str) -> VmConfig {
        VmConfig {
            name: name.into(),
            os: OsSource::SelfTest,
            cpus: 1,
            memory_mib: 128,
            disk: None,
            network: false,
            display: DisplaySize::default(),
            link: Default::default(),
            window: Default::default(),
            resources: Default::default(),
            mac: None,
        }
    }

    fn run(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    }

    /// What `vireo-image debian12` leaves: a real qcow2 with a pattern written at 0,
    /// and stand-ins for the kernel files (the wizard's test builds the real thing).
    fn built_image(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let disk = dir.join("disk.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"],
        );
        run(
            "qemu-io",
            &["-c", "write -P 0xab 0 1M", disk.to_str().unwrap()],
        );
        for (file, text) in [
            ("vmlinuz", "bzImage"),
            ("vmlinux", "elf"),
            ("initrd.img", "cpio"),
            ("cmdline", "root=/dev/vda rw\n"),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
    }

    #[test]
    fn a_debian12_vm_gets_its_image_and_clones_copy_it_whole_and_apart() {
        let (lib, base) = library("debian12");
        let image = lib.root().join(".debian12-test");
        built_image(&image);
        let config = VmConfig {
            os: OsSource::debian12("alice", "root=/dev/vda rw"),
            network: true,
            ..config("Deb")
        };
        let vm = lib.create_with_image(&config, &image).unwrap();
        assert!(
            !image.exists(),
            "the built image's directory is emptied and removed"
        );
        assert_eq!(lib.list().unwrap().len(), 1);
        assert_eq!(vm.config().unwrap().os.label(), "Debian 12");
        for file in vm_config::DEBIAN12_FILES {
            assert!(vm.dir.join(file).is_file(), "{file} in {:?}", vm.dir);
        }

        let copy = lib.clone_vm(&vm, "Deb copy").unwrap();
        assert_eq!(copy.config().unwrap().os, vm.config().unwrap().os);
        let (disk, copy_disk) = (vm.dir.join("disk.qcow2"), copy.dir.join("disk.qcow2"));
        run("qemu-img", &["check", copy_disk.to_str().unwrap()]);
        run(
            "qemu-io",
            &["-c", "read -P 0xab 0 1M", copy_disk.to_str().unwrap()],
        );
        // Apart: a write to the copy leaves the original as it was.
        run(
            "qemu-io",
            &["-c", "write -P 0xcd 0 1M", copy_disk.to_str().unwrap()],
        );
        run(
            "qemu-io",
            &["-c", "read -P 0xab 0 1M", disk.to_str().unwrap()],
        );
        assert_eq!(std::fs::read(copy.dir.join("initrd.img")).unwrap(), b"cpio");

        // Kept: the system disk and its kernel files go to kept-disks/<id>/.
        let kept = lib.delete(&vm, DiskChoice::Keep).unwrap().unwrap();
        assert!(!vm.dir.exists());
        run(
            "qemu-img",
            &["check", kept.join("disk.qcow2").to_str().unwrap()],
        );
        assert!(kept.join("vmlinuz").is_file() && kept.join("initrd.img").is_file());
        assert_eq!(lib.delete(&copy, DiskChoice::Delete).unwrap(), None);
        assert!(!copy.dir.exists());
        let kept_entries = std::fs::read_dir(kept.parent().unwrap()).unwrap().count();
        assert_eq!(
            kept_entries, 1,
            "deleting the copy's disk keeps nothing of it"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("My Work VM!"), "my-work-vm");
        assert_eq!(slug("  Ünïcode  "), "n-code");
        assert_eq!(slug("///"), "vm");
    }

    #[test]
    fn create_list_find_delete() {
        let (lib, base) = library("cycle");
        assert!(lib.list().unwrap().is_empty());
        let a = lib.create(&config("Zed")).unwrap();
        let b = lib
            .create(&VmConfig {
                disk: Some(DiskConfig { size_gib: 2 }),
                ..config("alpha")
            })
            .unwrap();
        // Same slug, another id.
        let c = lib.create(&config("ZED ")).unwrap();
        assert_eq!((a.id.as_str(), c.id.as_str()), ("zed", "zed-2"));
        let names: Vec<_> = lib
            .list()
            .unwrap()
            .iter()
            .map(|e| e.name().to_owned())
            .collect();
        assert_eq!(names, ["alpha", "Zed", "ZED "]);
        assert_eq!(std::fs::metadata(b.disk_path()).unwrap().len(), 2 << 30);
        assert_eq!(lib.find("ALPHA").unwrap().id, "alpha");
        assert_eq!(lib.find("zed-2").unwrap().id, "zed-2");
        assert!(matches!(lib.find("nope"), Err(Error::NotFound(_))));

        std::fs::write(b.snapshot_path(), b"saved state").unwrap();
        let kept = lib.delete(&b, DiskChoice::Keep).unwrap().unwrap();
        assert!(
            !b.snapshot_path().exists(),
            "the saved state goes with the VM"
        );
        assert_eq!(std::fs::metadata(&kept).unwrap().len(), 2 << 30);
        assert!(!b.dir.exists());
        assert_eq!(lib.delete(&a, DiskChoice::Delete).unwrap(), None);
        assert_eq!(lib.list().unwrap().len(), 1);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn clones_copy_the_disk_sparsely_with_a_fresh_mac() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let (lib, base) = library("clone");
        let source = lib
            .create(&VmConfig {
                disk: Some(DiskConfig { size_gib: 1 }),
                network: true,
                ..config("Source")
            })
            .unwrap();
        let mut disk = std::fs::OpenOptions::new()
            .write(true)
            .open(source.disk_path())
            .unwrap();
        disk.seek(SeekFrom::Start(300 << 20)).unwrap();
        disk.write_all(b"guest data").unwrap();
        drop(disk);
        // A saved source: the copy boots afresh, without its saved state.
        std::fs::write(source.snapshot_path(), b"saved state").unwrap();
        let err = lib.clone_vm(&source, "source").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let copy = lib.clone_vm(&source, "Copy").unwrap();
        let (a, b) = (
            source.config().unwrap().clone(),
            copy.config().unwrap().clone(),
        );
        assert_eq!(b.name, "Copy");
        assert!(!copy.snapshot_path().exists());
        assert!(source.snapshot_path().is_absolute());
        assert!(a.mac.is_some() && b.mac.is_some() && a.mac != b.mac);
        assert_eq!(
            VmConfig {
                name: a.name.clone(),
                mac: a.mac.clone(),
                ..b.clone()
            },
            a
        );
        let bytes = std::fs::read(copy.disk_path()).unwrap();
        assert_eq!(bytes.len(), 1 << 30);
        assert_eq!(&bytes[300 << 20..(300 << 20) + 10], b"guest data");
        // The hole stayed a hole: far less than the 1 GiB is allocated.
        let blocks = std::fs::metadata(copy.disk_path()).unwrap().blocks();
        assert!(blocks * 512 < 16 << 20, "{blocks} blocks allocated");
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn broken_configs_are_listed_with_their_reason_and_left_alone() {
        let (lib, base) = library("broken");
        lib.create(&config("good")).unwrap();
        let dir = lib.root().join("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = "name = [unterminated\n";
        std::fs::write(dir.join(vm_config::FILE_NAME), garbage).unwrap();
        let empty = lib.root().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let entries = lib.list().unwrap();
        assert_eq!(entries.len(), 3);
        let bad = entries.iter().find(|e| e.id == "bad").unwrap();
        assert!(bad
            .config
            .as_ref()
            .unwrap_err()
            .contains("not a valid VM config"));
        let none = entries.iter().find(|e| e.id == "empty").unwrap();
        assert!(none.config.as_ref().unwrap_err().contains("cannot read"));
        let err = lib.delete(bad, DiskChoice::Delete).unwrap_err();
        assert!(err.to_string().contains("by hand"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join(vm_config::FILE_NAME)).unwrap(),
            garbage
        );
        std::fs::remove_dir_all(base).unwrap();
    }
}
