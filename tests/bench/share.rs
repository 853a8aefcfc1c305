//! Shared-folder benchmark over the Unix transport on this host: the real `vireo-agent`
//! mounts a share through FUSE, the real host side (`vireo-agent host share`) serves it,
//! and the same 1 GiB file is read and written through the mount and directly, in the
//! same run. Also `stat` of 10,000 files through the mount (cold: names the guest never
//! looked up) against the same `stat`s directly, and `ls -l` of 10,000 other files
//! (listing, then a `stat` of each: the listing brings the attributes along).
//!
//! Reads are measured three ways. Cold: the file dropped from the host's page cache
//! and from the mount's (`posix_fadvise(DONTNEED)` on both paths), so both sides read
//! the disk. Over the channel: the file in the host's page cache, the mount's cache
//! dropped, so every byte crosses the channel (the mount's whole overhead is on show).
//! Re-read: the same file read again at once, as a guest re-reading a file does: the
//! mount keeps its cache of a file unchanged since its last open, so this is served in
//! the "guest" (here: this host's page cache under the mount), and directly from the
//! host's page cache.
//!
//! Goals (issue 6): sequential read through the mount ≥ 50 % of direct; stat of 10k
//! files ≤ 1 s. Each figure is the median of VIREO_BENCH_RUNS rounds (default 3).
//!
//! `cargo bench -p vireo-e2e --bench share` (VIREO_BENCH_MIB=N file size, default 1024;
//! needs `/dev/fuse` and root to mount).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_e2e::env_u64;

const CHUNK: usize = 1 << 20;
const FILES: usize = 10_000;

fn agent_binary() -> PathBuf {
    vireo_e2e::release_binary("vireo-guest-agent", "vireo-agent")
}

/// The agent and the host side, killed on drop (the agent unmounts on SIGTERM).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

fn mount(dir: &Path, share: &Path) -> (Procs, PathBuf) {
    let socket = dir.join("agent.sock");
    let base = dir.join("mnt");
    let agent = Command::new(agent_binary())
        .args(["run", "--fake-clock-offset-ms=0", "--transport"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--share-base")
        .arg(&base)
        .arg("--fake-power")
        .arg(dir.join("power"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut procs = Procs(vec![agent]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut host = Command::new(agent_binary())
        .arg("host")
        .arg("--socket")
        .arg(&socket)
        .arg("share")
        .arg(format!("bench={}", share.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    procs.0.push(host);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("host side ended").unwrap();
        if line.contains("\"mounted\"") {
            assert!(!line.contains("error"), "{line}");
            break;
        }
    }
    (procs, base.join("bench"))
}

fn drop_cache(path: &Path) {
    let f = File::open(path).unwrap();
    // SAFETY: plain calls on a descriptor we own.
    unsafe {
        libc::fdatasync(f.as_raw_fd());
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// MiB/s reading `path` start to end in 1 MiB reads.
fn read_mib_s(path: &Path) -> f64 {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// MiB/s writing `mib` MiB to a new file `path` in 1 MiB writes (closed, not synced:
/// both sides leave the data in the host's page cache).
fn write_mib_s(path: &Path, mib: u64) -> f64 {
    let _ = std::fs::remove_file(path);
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
    let start = Instant::now();
    let mut f = File::create(path).unwrap();
    for _ in 0..mib {
        f.write_all(&buf).unwrap();
    }
    drop(f);
    let rate = mib as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    rate
}

/// Seconds to `stat` every file of `dir` (names known in advance, as `ls -l` would
/// have them from readdir).
fn stat_secs(dir: &Path) -> f64 {
    let start = Instant::now();
    for i in 0..FILES {
        std::fs::symlink_metadata(dir.join(format!("f{i:05}"))).unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// Seconds to list `dir` and `stat` every entry, as `ls -l` does (cold, like above).
fn list_secs(dir: &Path) -> f64 {
    let start = Instant::now();
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::symlink_metadata(entry.unwrap().path()).unwrap();
        n += 1;
    }
    assert_eq!(n, FILES);
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("\n*** SKIPPED share bench: no /dev/fuse on this host ***\n");
        return;
    }
    let mib = env_u64("VIREO_BENCH_MIB", 1024);
    let runs = env_u64("VIREO_BENCH_RUNS", 3).max(1) as usize;
    let dir = std::env::temp_dir().join(format!("vireo-share-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let big = share.join("big");
    {
        let buf: Vec<u8> = (0..CHUNK).map(|i| (i * 13 + 1) as u8).collect();
        let mut f = File::create(&big).unwrap();
        for _ in 0..mib {
            f.write_all(&buf).unwrap();
        }
    }
    // Directories of 10,000 files per round, so every round's stats are cold.
    for r in 0..runs {
        for name in [format!("many{r}"), format!("list{r}")] {
            let d = share.join(name);
            std::fs::create_dir(&d).unwrap();
            for i in 0..FILES {
                File::create(d.join(format!("f{i:05}"))).unwrap();
            }
        }
    }
    let (procs, m) = mount(&dir, &share);

    let (mut cold, mut channel, mut again, mut write, mut stat, mut list) = (
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
    );
    for r in 0..runs {
        for (i, base) in [&m, &share].into_iter().enumerate() {
            let file = base.join("big");
            drop_cache(&big);
            drop_cache(&file);
            cold[i].push(read_mib_s(&file));
            read_mib_s(&big);
            if i == 0 {
                drop_cache(&file);
            }
            channel[i].push(read_mib_s(&file));
            again[i].push(read_mib_s(&file));
            write[i].push(write_mib_s(&base.join("written"), mib));
            stat[i].push(stat_secs(&base.join(format!("many{r}"))));
            list[i].push(list_secs(&base.join(format!("list{r}"))));
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "shared folder, Unix transport: {mib} MiB file, {FILES} files, median of {runs} rounds"
    );
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "", "through FUSE", "direct", "FUSE/direct"
    );
    let row = |name: &str, v: &[Vec<f64>; 2]| {
        let (ours, direct) = (median(v[0].clone()), median(v[1].clone()));
        println!(
            "{name:<34} {ours:>14.1} {direct:>14.1} {:>10.2}",
            ours / direct
        );
        (ours, direct)
    };
    let (cold_ours, cold_direct) = row("seq read, cold (MiB/s)", &cold);
    let (channel_ours, channel_direct) = row("seq read, host-cached (MiB/s)", &channel);
    let (again_ours, again_direct) = row("seq read, re-read (MiB/s)", &again);
    row("seq write (MiB/s)", &write);
    let (stat_ours, _) = row("stat of 10,000 files (s)", &stat);
    let (list_ours, _) = row("ls -l of 10,000 files (s)", &list);
    println!();
    println!(
        "goal: seq read ≥ 50 % of direct: cold {:.0} %, host-cached {:.0} %, re-read {:.0} %; stat of 10k files ≤ 1 s: {:.3} s {} (ls -l {:.3} s)",
        cold_ours / cold_direct * 100.0,
        channel_ours / channel_direct * 100.0,
        again_ours / again_direct * 100.0,
        stat_ours,
        if stat_ours <= 1.0 { "(met)" } else { "(missed)" },
        list_ours
    );
}
