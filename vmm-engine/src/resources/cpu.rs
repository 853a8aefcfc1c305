//! The VM's share of the host's CPUs, through the kernel's scheduler: a weight against
//! other VMs and a hard limit (CFS bandwidth) on the engine's cgroup, and the vCPU
//! threads pinned to host CPUs. One VM per engine process, so the engine's cgroup is the
//! VM's.
//!
//! Where the cgroup comes from:
//! - cgroup v2 (`cpu.weight`, `cpu.max`): the engine's own cgroup when it is alone in it
//!   (a delegated scope, as `systemd-run --user --scope -p Delegate=yes` makes), or a
//!   child the engine makes when it runs in the root cgroup;
//! - cgroup v1 (`cpu.shares`, `cpu.cfs_quota_us`): a child `vireo-vmm-PID` of the
//!   engine's cgroup in the `cpu` hierarchy, which the engine moves into and removes
//!   at exit;
//! - neither: asking for a weight or a limit is an error saying why; pinning needs no
//!   cgroup.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// CFS bandwidth period: the kernel's default, 100 ms.
const PERIOD_US: u64 = 100_000;
/// cgroup v2's weight range and default.
pub const WEIGHT_MIN: u32 = 1;
pub const WEIGHT_MAX: u32 = 10_000;
pub const WEIGHT_DEFAULT: u32 = 100;

/// What the user asks: `--cpu-weight`, `--cpu-limit`, `--cpu-pin`, or `set-cpu`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// Weight against other VMs, 1-10000 (100: as any process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// At most this many percent of one host CPU (150: one and a half). 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Host CPUs for the vCPUs: vCPU i runs on `pin[i % len]`. Empty: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    #[error("--cpu-weight {0} is outside 1-10000 (100 is a normal process's share)")]
    Weight(u32),
    #[error("--cpu-pin: \"{0}\" is not a CPU list like 0 or 0-3,6")]
    PinSyntax(String),
    #[error("--cpu-pin: host CPU {cpu} does not exist (this host has CPUs 0-{last})")]
    PinNoSuchCpu { cpu: usize, last: usize },
    #[error(
        "CPU weight and limit need a cgroup the engine may use, and {0}; run the engine \
         in a delegated cgroup v2 scope (systemd-run --user --scope -p Delegate=yes \
         vireo-vmm ...) or as root on a host with the cgroup v1 cpu controller"
    )]
    NoCgroup(String),
    #[error("cannot set {file}: {error}")]
    Write { file: PathBuf, error: String },
    #[error("cannot pin vCPU thread {tid}: {error}")]
    Pin { tid: i32, error: String },
}

impl CpuConfig {
    pub fn validate(&self) -> Result<(), CpuError> {
        if let Some(w) = self.weight {
            if !(WEIGHT_MIN..=WEIGHT_MAX).contains(&w) {
                return Err(CpuError::Weight(w));
            }
        }
        if let Some(pin) = &self.pin {
            let last = host_cpus().saturating_sub(1);
            if let Some(&cpu) = pin.iter().find(|&&c| c > last) {
                return Err(CpuError::PinNoSuchCpu { cpu, last });
            }
        }
        Ok(())
    }

    /// Whether anything needs a cgroup.
    fn needs_cgroup(&self) -> bool {
        self.weight.is_some() || self.limit.is_some_and(|l| l > 0)
    }
}

/// A host CPU list as the command line writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl std::str::FromStr for CpuList {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, CpuError> {
        parse_cpu_list(s).map(CpuList)
    }
}

/// Parses `0`, `0-3`, `0,2,4-5`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, CpuError> {
    let bad = || CpuError::PinSyntax(text.to_owned());
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let n = part.parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if lo > hi || hi - lo > 4096 {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    Ok(cpus)
}

fn host_cpus() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(
            // available_parallelism honours our own affinity; the host may have more.
            fs::read_to_string("/sys/devices/system/cpu/possible")
                .ok()
                .and_then(|s| parse_cpu_list(s.trim()).ok())
                .map_or(1, |l| l.len()),
        )
}

/// cgroup v1's `cpu.shares` for a v2-style weight: 100 is the default 1024.
pub fn shares_for_weight(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).max(2)
}

/// The CFS quota for `percent` of one CPU over `PERIOD_US`.
pub fn quota_for_limit(percent: u32) -> u64 {
    (u64::from(percent) * PERIOD_US / 100).max(1000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cgroup the engine runs in for its CPU settings.
#[derive(Debug)]
struct Cgroup {
    dir: PathBuf,
    version: Version,
    /// Made by us: moved out of and removed at exit.
    made: Option<PathBuf>,
}

/// Where a hierarchy is mounted, from /proc/self/mountinfo: (v2 mount, v1 cpu mount).
fn mounts(mountinfo: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut v2, mut v1) = (None, None);
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split(' ').nth(4).map(PathBuf::from);
        let mut r = right.split(' ');
        let (fstype, superopts) = (r.next(), r.nth(1).unwrap_or(""));
        match fstype {
            Some("cgroup2") => v2 = v2.or(mount),
            Some("cgroup") if superopts.split(',').any(|o| o == "cpu") => v1 = v1.or(mount),
            _ => {}
        }
    }
    (v2, v1)
}

/// Our cgroup paths from /proc/self/cgroup: (v2 path, v1 cpu path).
fn own_paths(proc_cgroup: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_owned());
        }
    }
    (v2, v1)
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn write(file: &Path, value: &str) -> Result<(), CpuError> {
    fs::write(file, value).map_err(|e| CpuError::Write {
        file: file.to_owned(),
        error: e.to_string(),
    })
}

impl Cgroup {
    /// Finds or makes the engine's cgroup, or says why there is none.
    fn open() -> Result<Cgroup, CpuError> {
        let read = |p| fs::read_to_string(p).unwrap_or_default();
        let (v2_mount, v1_mount) = mounts(&read("/proc/self/mountinfo"));
        let (v2_path, v1_path) = own_paths(&read("/proc/self/cgroup"));
        let mut why = Vec::new();
        if let (Some(mount), Some(path)) = (&v2_mount, &v2_path) {
            match Self::open_v2(mount, path) {
                Ok(c) => return Ok(c),
                Err(e) => why.push(e),
            }
        } else {
            why.push("there is no cgroup v2 hierarchy".to_owned());
        }
        if let (Some(mount), Some(path)) = (&v1_mount, &v1_path) {
            match Self::make_child(join(mount, path), Version::V1) {
                Ok(c) => return Ok(c),
                Err(e) => why.push(format!("cgroup v1: {e}")),
            }
        } else {
            why.push("no cgroup v1 cpu controller is mounted".to_owned());
        }
        Err(CpuError::NoCgroup(why.join("; ")))
    }

    fn open_v2(mount: &Path, path: &str) -> Result<Cgroup, String> {
        let own = join(mount, path);
        if path == "/" {
            // The root may hold processes and enable controllers for its children.
            let _ = fs::write(own.join("cgroup.subtree_control"), "+cpu");
            return Self::make_child(own, Version::V2).map_err(|e| format!("cgroup v2: {e}"));
        }
        let procs = fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
        if !own.join("cpu.weight").exists() {
            return Err(format!(
                "cgroup v2: the cpu controller is not enabled for {}",
                own.display()
            ));
        }
        if procs.lines().count() != 1 {
            return Err(format!(
                "cgroup v2: {} holds other processes too",
                own.display()
            ));
        }
        Ok(Cgroup {
            dir: own,
            version: Version::V2,
            made: None,
        })
    }

    /// A child `vireo-vmm-PID` of `parent`, with this process moved into it.
    fn make_child(parent: PathBuf, version: Version) -> Result<Cgroup, String> {
        remove_stale(&parent);
        let dir = parent.join(format!("vireo-vmm-{}", std::process::id()));
        fs::create_dir(&dir)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let weight_file = match version {
            Version::V1 => "cpu.shares",
            Version::V2 => "cpu.weight",
        };
        let moved = dir
            .join(weight_file)
            .exists()
            .then(|| fs::write(dir.join("cgroup.procs"), std::process::id().to_string()));
        match moved {
            Some(Ok(())) => Ok(Cgroup {
                dir: dir.clone(),
                version,
                made: Some(parent),
            }),
            other => {
                let _ = fs::remove_dir(&dir);
                Err(match other {
                    Some(Err(e)) => format!("cannot move into {}: {e}", dir.display()),
                    _ => format!("{} has no {weight_file}", dir.display()),
                })
            }
        }
    }

    fn set_weight(&self, weight: u32) -> Result<(), CpuError> {
        match self.version {
            Version::V1 => write(
                &self.dir.join("cpu.shares"),
                &shares_for_weight(weight).to_string(),
            ),
            Version::V2 => write(&self.dir.join("cpu.weight"), &weight.to_string()),
        }
    }

    /// `percent` of a CPU; 0 lifts the limit.
    fn set_limit(&self, percent: u32) -> Result<(), CpuError> {
        let quota = (percent > 0).then(|| quota_for_limit(percent));
        match self.version {
            Version::V1 => {
                write(&self.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                let q = quota.map_or("-1".to_owned(), |q| q.to_string());
                write(&self.dir.join("cpu.cfs_quota_us"), &q)
            }
            Version::V2 => {
                let q = quota.map_or("max".to_owned(), |q| q.to_string());
                write(&self.dir.join("cpu.max"), &format!("{q} {PERIOD_US}"))
            }
        }
    }
}

/// Removes the empty cgroups of engines that were killed before they could (a cgroup
/// with a live process in it cannot be removed, so a running engine's stays).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("vireo-vmm-"));
        if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(parent) = &self.made {
            // Every thread moves with the process; the emptied cgroup can go.
            let _ = fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
            if let Err(e) = fs::remove_dir(&self.dir) {
                tracing::warn!("cannot remove cgroup {}: {e}", self.dir.display());
            }
        }
    }
}

/// The VM's CPU settings in force, the cgroup they live in and the vCPU threads.
pub struct CpuControl {
    state: Mutex<State>,
}

struct State {
    config: CpuConfig,
    cgroup: Option<Cgroup>,
    /// Kernel thread ids of the running vCPUs, in vCPU order.
    vcpus: Vec<i32>,
}

/// The running VM's `CpuControl` (one VM at a time per process), for the vCPU start
/// and the control socket; replaced by each `start`, cleared when its guard drops.
static CONTROL: Mutex<Option<Arc<CpuControl>>> = Mutex::new(None);

fn current() -> std::sync::MutexGuard<'static, Option<Arc<CpuControl>>> {
    CONTROL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies `config` for this process's VM. The returned guard undoes it (leaves and
/// removes a cgroup the engine made) when dropped.
pub fn start(config: &CpuConfig) -> Result<CpuGuard, CpuError> {
    config.validate()?;
    let cgroup = if config.needs_cgroup() {
        Some(Cgroup::open()?)
    } else {
        None
    };
    let control = Arc::new(CpuControl {
        state: Mutex::new(State {
            config: CpuConfig::default(),
            cgroup,
            vcpus: Vec::new(),
        }),
    });
    control.set(config.clone())?;
    *current() = Some(control.clone());
    Ok(CpuGuard(control))
}

/// The process's control, once `start` has run.
pub fn control() -> Option<Arc<CpuControl>> {
    current().clone()
}

/// Holds the VM's CPU settings; dropping it leaves the cgroup the engine made.
pub struct CpuGuard(Arc<CpuControl>);

impl Drop for CpuGuard {
    fn drop(&mut self) {
        self.0.lock().cgroup.take();
        let mut current = current();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.0)) {
            *current = None;
        }
    }
}

/// The vCPU threads (re)started: pins them as configured. Each thread calls it with its
/// index, so the kernel's thread id is its own.
pub fn vcpu_started(index: usize) {
    let Some(control) = control() else {
        return;
    };
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    let mut state = control.lock();
    if state.vcpus.len() <= index {
        state.vcpus.resize(index + 1, 0);
    }
    state.vcpus[index] = tid;
    if let Some(pin) = &state.config.pin {
        if let Err(e) = pin_thread(tid, pin, index) {
            tracing::warn!("{e}");
        }
    }
}

fn pin_thread(tid: i32, pin: &[usize], index: usize) -> Result<(), CpuError> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    let cpus: Vec<usize> = if pin.is_empty() {
        (0..host_cpus()).collect()
    } else {
        vec![pin[index % pin.len()]]
    };
    for cpu in cpus {
        set.set(cpu).map_err(|e| CpuError::Pin {
            tid,
            error: e.to_string(),
        })?;
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set).map_err(|e| CpuError::Pin {
        tid,
        error: e.to_string(),
    })
}

impl CpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes what `change` names (weight, limit, pinning); the rest stays.
    pub fn set(&self, change: CpuConfig) -> Result<CpuConfig, CpuError> {
        change.validate()?;
        let mut state = self.lock();
        if change.needs_cgroup() && state.cgroup.is_none() {
            state.cgroup = Some(Cgroup::open()?);
        }
        if let Some(cgroup) = &state.cgroup {
            if let Some(w) = change.weight {
                cgroup.set_weight(w)?;
            }
            if let Some(l) = change.limit {
                cgroup.set_limit(l)?;
            }
        }
        if let Some(pin) = &change.pin {
            for (index, &tid) in state.vcpus.iter().enumerate() {
                pin_thread(tid, pin, index)?;
            }
        }
        let config = &mut state.config;
        config.weight = change.weight.or(config.weight);
        config.limit = change.limit.or(config.limit);
        config.pin = change.pin.or(config.pin.take());
        Ok(config.clone())
    }

    pub fn config(&self) -> CpuConfig {
        self.lock().config.clone()
    }

    /// Which cgroup holds the VM, for the user: "v1 /sys/fs/cgroup/cpu/vireo-vmm-42".
    pub fn cgroup(&self) -> Option<String> {
        self.lock()
            .cgroup
            .as_ref()
            .map(|c| format!("{:?} {}", c.version, c.dir.display()))
    }

    /// The vCPU threads' CPU time (user + system), in clock ticks' worth of ns.
    pub fn vcpu_time_ns(&self) -> u64 {
        let tids = self.lock().vcpus.clone();
        tids.iter().map(|&tid| thread_cpu_ns(tid)).sum()
    }
}

/// A thread's user + system time from /proc/self/task/TID/stat, in nanoseconds.
pub fn thread_cpu_ns(tid: i32) -> u64 {
    fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| stat_cpu_ticks(&s))
        .map_or(0, ticks_to_ns)
}

/// utime + stime (fields 14 and 15) of a /proc stat line; the name in parentheses may
/// hold spaces, so fields are counted after its closing parenthesis.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.saturating_mul(1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        for bad in ["", "a", "3-1", "1-", "0-99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_and_limits_in_kernel_units() {
        assert_eq!(shares_for_weight(100), 1024);
        assert_eq!(shares_for_weight(70), 716);
        assert_eq!(shares_for_weight(30), 307);
        assert_eq!(shares_for_weight(1), 10);
        assert_eq!(quota_for_limit(50), 50_000);
        assert_eq!(quota_for_limit(150), 150_000);
        assert!(CpuConfig {
            weight: Some(0),
            ..CpuConfig::default()
        }
        .validate()
        .is_err());
        assert!(CpuConfig {
            pin: Some(vec![100_000]),
            ..CpuConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn hierarchies_from_mountinfo_and_proc_cgroup() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let (v2, v1) = mounts(mountinfo);
        assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v1, Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        let (p2, p1) = own_paths("2:cpuacct:/\n1:cpu:/a/b\n0::/user.slice/x.scope\n");
        assert_eq!(p2.as_deref(), Some("/user.slice/x.scope"));
        assert_eq!(p1.as_deref(), Some("/a/b"));
        assert_eq!(
            join(Path::new("/sys/fs/cgroup/cpu"), "/a/b"),
            PathBuf::from("/sys/fs/cgroup/cpu/a/b")
        );
        // A v2-only host: cpu,cpuacct comounted on v1 counts as cpu too.
        let (_, v1) = mounts("31 30 0:27 / /c rw - cgroup cgroup rw,cpu,cpuacct");
        assert_eq!(v1, Some(PathBuf::from("/c")));
    }

    #[test]
    fn cpu_time_from_a_stat_line_with_spaces_in_the_name() {
        let stat = "42 (vcpu 0) R 1 1 1 0 -1 4194560 0 0 0 0 150 25 0 0 20 0 1 0 5 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(175));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        // This thread's own time is readable.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(thread_cpu_ns(tid) > 0);
    }
}
