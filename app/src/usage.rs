//! What a running VM costs the host, sampled from `/proc`: its engine's CPU time (user +
//! system, from `/proc/PID/stat`, as a share of one CPU between two samples) and
//! resident memory (`/proc/PID/statm`). The engine's pid is the one its monitor wrote.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// One VM's cost at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Percent of one host CPU since the previous sample (200 = two CPUs busy).
    pub cpu_percent: f32,
    /// Resident memory of the engine process.
    pub rss_mib: u64,
}

/// Turns CPU-time counters into rates; one per backend.
#[derive(Default)]
pub struct UsageSampler {
    /// pid → (CPU ticks, when read).
    last: HashMap<u32, (u64, Instant)>,
}

impl UsageSampler {
    /// Samples the engine whose pid is in `pid_file`; `None` if it cannot be read (the
    /// engine just ended). The first sample of a process has 0 % CPU.
    pub fn sample(&mut self, pid_file: &Path) -> Option<Usage> {
        let pid: u32 = std::fs::read_to_string(pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let ticks = cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        let rss_pages = rss_pages(&std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?)?;
        let now = Instant::now();
        let cpu_percent = match self.last.insert(pid, (ticks, now)) {
            Some((before, at)) if ticks >= before => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    ((ticks - before) as f64 / clock_ticks() / secs * 100.0) as f32
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        Some(Usage {
            cpu_percent,
            rss_mib: rss_pages * page_size() >> 20,
        })
    }

    /// Forgets processes not in `alive` (pids are reused).
    pub fn retain(&mut self, alive: &[u32]) {
        self.last.retain(|pid, _| alive.contains(pid));
    }
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself: fields are counted after the
/// last ')'.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The resident set (second field of `/proc/PID/statm`), in pages.
pub fn rss_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line =
            "4242 (vireo vmm) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_ticks(line), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(rss_pages("1000 256 10 1 0 50 0\n"), Some(256));
    }

    #[test]
    fn a_busy_process_shows_cpu_time() {
        let pid_file = std::env::temp_dir().join(format!("vireo-usage-{}", std::process::id()));
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        let mut sampler = UsageSampler::default();
        let first = sampler.sample(&pid_file).unwrap();
        assert_eq!(first.cpu_percent, 0.0);
        assert!(first.rss_mib > 0);
        let end = Instant::now() + std::time::Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let busy = sampler.sample(&pid_file).unwrap();
        assert!(busy.cpu_percent > 30.0, "{busy:?}");
        std::fs::remove_file(pid_file).unwrap();
    }
}
