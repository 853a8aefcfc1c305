//! Landlock rulesets, one per thread kind: what files (and TCP ports) a thread may
//! still reach once it serves the guest or a client.
//!
//! Everything a VM needs from the file system is opened by the main thread before the
//! guest runs (disk images, kernel, sockets, /dev/kvm), and Landlock checks an access
//! when a path is resolved, not when an fd already open is used. So the threads the
//! guest talks to (vCPUs, device workers, the console) keep no file access at all and
//! no TCP; the control thread keeps reading /proc and /sys, the cgroup tree (live CPU
//! settings) and its own runtime directory (the control socket's, where screenshots are
//! written). The main thread stays unconfined for the reasons `sandbox` gives for
//! seccomp.
//!
//! The rules are written for Landlock ABI 6 (file system, TCP, abstract sockets): a
//! right a later kernel adds stays allowed rather than breaking a thread that needs it,
//! and an older kernel enforces what it knows (best effort).

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, BitFlags, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

use super::ThreadKind;

/// The ABI the rules are written for.
const ABI_RULES: ABI = ABI::V6;

/// Where the control thread may still go.
const CONTROL_READS: &[&str] = &["/proc", "/sys"];
/// Where cgroups usually live, beside the mounts /proc/self/mountinfo names.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The Landlock ABI this kernel offers (0 where it has none or has it disabled).
pub fn kernel_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag the kernel reads no attribute (null, size 0) and
    // returns the ABI number or an error.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    abi.max(0)
}

/// Confines the calling thread to what threads of `kind` need; `runtime_dirs` are the
/// directories the control thread may write in.
pub(super) fn apply(kind: ThreadKind, runtime_dirs: &[PathBuf]) -> Result<Enforced, String> {
    let status = restrict(kind, runtime_dirs).map_err(|e| e.to_string())?;
    Ok(match status {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partly,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}

/// How much of a thread's ruleset the kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    /// An older kernel: the rights it knows.
    Partly,
    /// No Landlock in this kernel.
    Not,
}

fn restrict(kind: ThreadKind, runtime_dirs: &[PathBuf]) -> Result<RulesetStatus, RulesetError> {
    let fs = AccessFs::from_all(ABI_RULES);
    let ruleset = Ruleset::default()
        .handle_access(fs)?
        .handle_access(AccessNet::from_all(ABI_RULES))?
        .scope(Scope::AbstractUnixSocket)?
        .create()?;
    let ruleset = match kind {
        ThreadKind::Vcpu | ThreadKind::Device | ThreadKind::Console => ruleset,
        ThreadKind::Control => ruleset
            .add_rules(path_beneath_rules(
                existing(CONTROL_READS.iter().map(Path::new)),
                AccessFs::from_read(ABI_RULES),
            ))?
            .add_rules(path_beneath_rules(cgroup_mounts(), cgroup_access()))?
            .add_rules(path_beneath_rules(
                existing(runtime_dirs.iter().map(PathBuf::as_path)),
                fs & !AccessFs::Execute,
            ))?,
    };
    Ok(ruleset.restrict_self()?.ruleset)
}

/// Reading and writing the cgroup interface files (written with `O_TRUNC`, as
/// `fs::write` opens them), and making or removing the VM's own cgroup (a CPU limit set
/// on a running VM creates it).
fn cgroup_access() -> BitFlags<AccessFs> {
    AccessFs::from_read(ABI_RULES)
        | AccessFs::WriteFile
        | AccessFs::Truncate
        | AccessFs::MakeDir
        | AccessFs::RemoveDir
}

/// The cgroup (v1 and v2) mount points, as `resources::cpu` finds its hierarchy, and
/// the usual root: the VM's cgroup is beneath one of them.
fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts = cgroup_mount_points(&mountinfo);
    mounts.push(PathBuf::from(CGROUP_ROOT));
    mounts.retain(|p| p.exists());
    mounts
}

/// The mount points of `cgroup` and `cgroup2` file systems in a mountinfo text (field 5
/// is the mount point; the file system type follows the ` - ` separator).
fn cgroup_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            let fs_type = fs.split_ascii_whitespace().next()?;
            let mount_point = fields.split_ascii_whitespace().nth(4)?;
            matches!(fs_type, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// The paths that exist: a rule for a missing one fails (the host has no cgroup v2
/// mount, say), and a thread is not denied what is not there anyway.
fn existing<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<&'a Path> {
    paths.into_iter().filter(|p| p.exists()).collect()
}

/// Whether `path` lies beneath one of `dirs`, compared lexically (`..` taken back, no
/// link followed: a confined thread may not read links, and the kernel enforces the
/// rules anyway; this only picks the clearer message). `dirs` are given both as named
/// and as resolved (`with_resolved`), so either spelling of a path matches.
pub fn is_beneath(path: &Path, dirs: &[PathBuf]) -> bool {
    let path = lexical(path);
    dirs.iter().any(|d| path.starts_with(d))
}

/// `dirs` as given and as the kernel resolves them (for `is_beneath`); call before the
/// thread confines itself.
pub fn with_resolved(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = dirs.iter().map(|d| lexical(d)).collect();
    all.extend(dirs.iter().filter_map(|d| d.canonicalize().ok()));
    all.dedup();
    all
}

fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_beneath_its_directory_and_not_beneath_a_sibling() {
        let dir = std::env::temp_dir().join(format!("vireo-ll-{}", std::process::id()));
        let sibling = dir.with_extension("sibling");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(&sibling).unwrap();
        let dirs = with_resolved(std::slice::from_ref(&dir));
        assert!(is_beneath(&dir.join("shot.png"), &dirs));
        assert!(is_beneath(&dir.join("sub/shot.png"), &dirs));
        assert!(is_beneath(&dir.join("sub/../shot.png"), &dirs));
        assert!(!is_beneath(&dir.join("../outside.png"), &dirs));
        assert!(!is_beneath(&sibling.join("shot.png"), &dirs));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&sibling).unwrap();
    }

    /// Opens `path` for reading on a new thread confined as `kind`; the errno (0: it
    /// opened). Landlock binds the thread only, so the test process stays free.
    fn open_as(kind: ThreadKind, runtime: &Path, path: &Path) -> i32 {
        let runtime = vec![runtime.to_path_buf()];
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            apply(kind, &runtime).unwrap();
            match std::fs::File::open(&path) {
                Ok(_) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        })
        .join()
        .unwrap()
    }

    #[test]
    fn guest_facing_threads_open_nothing_and_the_control_thread_only_its_places() {
        if kernel_abi() < 1 {
            eprintln!("SKIPPED: this kernel has no Landlock");
            return;
        }
        let base = std::env::temp_dir().join(format!("vireo-ll-apply-{}", std::process::id()));
        let runtime = base.join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        let inside = runtime.join("inside");
        let outside = base.join("outside");
        std::fs::write(&inside, b"x").unwrap();
        std::fs::write(&outside, b"x").unwrap();
        for kind in [ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Console] {
            for path in [&inside, &outside, Path::new("/proc/self/stat")] {
                assert_eq!(
                    open_as(kind, &runtime, path),
                    libc::EACCES,
                    "{kind:?} {path:?}"
                );
            }
        }
        let control = ThreadKind::Control;
        assert_eq!(open_as(control, &runtime, &inside), 0);
        assert_eq!(open_as(control, &runtime, Path::new("/proc/self/stat")), 0);
        assert_eq!(open_as(control, &runtime, &outside), libc::EACCES);
        assert_eq!(
            open_as(control, &runtime, Path::new("/etc/hostname")),
            libc::EACCES
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn cgroup_mounts_are_read_from_mountinfo() {
        let mountinfo = "\
22 28 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw shared:10 - cgroup cgroup rw,cpu
40 28 0:35 / /run/cg2 rw shared:20 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup_mount_points(mountinfo),
            [
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/run/cg2")
            ]
        );
        assert!(cgroup_mount_points("garbage\n - \n").is_empty());
    }

    /// A CPU limit set while the VM runs is written by the control thread into the
    /// VM's cgroup (cgroup v1 here: `/sys/fs/cgroup/cpu` is a mount of its own).
    #[test]
    fn the_control_thread_writes_its_cgroup() {
        let cpu = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup"]
            .map(Path::new)
            .into_iter()
            .find(|d| d.join("cgroup.procs").exists());
        let Some(cpu) = cpu.filter(|_| kernel_abi() >= 1) else {
            eprintln!("SKIPPED: no cgroup tree or no Landlock");
            return;
        };
        let group = cpu.join(format!("vireo-ll-{}", std::process::id()));
        if std::fs::create_dir(&group).is_err() {
            eprintln!("SKIPPED: cannot make a cgroup here (not root?)");
            return;
        }
        let file = ["cpu.cfs_period_us", "cpu.max"]
            .map(|f| group.join(f))
            .into_iter()
            .find(|f| f.exists())
            .unwrap();
        let value = std::fs::read_to_string(&file).unwrap();
        let written = std::thread::spawn(move || {
            apply(ThreadKind::Control, &[]).unwrap();
            std::fs::write(&file, value.trim())
        })
        .join()
        .unwrap();
        let _ = std::fs::remove_dir(&group);
        written.unwrap();
    }
}
