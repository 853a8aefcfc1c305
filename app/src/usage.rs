//! What a running VM costs the host. The engine says it on its control socket
//! (`stats`): its CPU time and its vCPUs' (differenced into a share of one CPU between
//! two samples), its resident memory, what the balloon gave back and what KSM merged,
//! and the bytes and requests of its disks and network cards (differenced into rates).
//! An engine that does not answer `stats` is sampled from `/proc` instead: CPU time
//! from `/proc/PID/stat`, resident memory from `/proc/PID/statm`, the pid the one its
//! monitor wrote.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use vireo_vmm::devices::virtio::io_counters::IoCountersSnapshot as Counters;
use vireo_vmm::resources::VmUsage;

/// One VM's cost at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Percent of one host CPU since the previous sample (200 = two CPUs busy).
    pub cpu_percent: f32,
    /// The part of it the vCPUs spent (the guest's own work and its exits), when the
    /// engine reports it.
    pub guest_cpu_percent: Option<f32>,
    /// Resident memory of the engine process.
    pub rss_mib: u64,
    /// What the balloon gave back and KSM merged, when the engine reports it.
    pub memory: Option<MemoryShares>,
    /// Disk and network traffic, if the engine reports it.
    pub io: Option<IoRates>,
}

/// Guest memory the host does not pay for twice.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemoryShares {
    /// Given back to the host by the guest's balloon.
    pub balloon_mib: u64,
    /// Pages KSM merged with identical ones (this VM's or another's).
    pub ksm_merged_mib: u64,
}

impl Usage {
    /// What the library's row shows: CPU in steps of 5 % (so that a busy guest's jitter
    /// does not redraw the library every second) and resident MiB.
    pub fn glance(&self) -> (u32, u64) {
        let cpu = (self.cpu_percent.max(0.0) / 5.0).round() as u32 * 5;
        (cpu, self.rss_mib)
    }
}

/// Whether the rows showing `shown` may stay as they are for `now`: the same VMs, CPU
/// within 10 points and memory within 2 % (1 MiB at least). A guest spinning at 100 %
/// reads 97 or 101 from one second to the next; the library need not redraw for that.
pub fn glance_close(
    shown: &HashMap<String, (u32, u64)>,
    now: &HashMap<String, (u32, u64)>,
) -> bool {
    shown.len() == now.len()
        && now.iter().all(|(id, (cpu, rss))| {
            shown.get(id).is_some_and(|(old_cpu, old_rss)| {
                cpu.abs_diff(*old_cpu) < 10 && rss.abs_diff(*old_rss) <= (old_rss / 50).max(1)
            })
        })
}

/// Per second since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IoRates {
    pub disk_read: f64,
    pub disk_write: f64,
    pub net_rx: f64,
    pub net_tx: f64,
    /// Disk requests (reads and writes).
    pub disk_ops: f64,
    /// Network packets (received and sent).
    pub net_packets: f64,
}

/// Totals since the VM started: disk bytes read, disk bytes written, net bytes
/// received, net bytes sent, disk requests, net packets.
pub type IoTotals = [u64; 6];

/// The totals of a `stats` answer, all disks and cards summed.
pub fn io_totals(disks: &[Counters], nets: &[Counters]) -> IoTotals {
    let sum =
        |v: &[Counters], f: fn(&Counters) -> u64| v.iter().map(f).fold(0u64, u64::saturating_add);
    let requests = |c: &Counters| c.read_requests.saturating_add(c.write_requests);
    [
        sum(disks, |c| c.read_bytes),
        sum(disks, |c| c.write_bytes),
        sum(nets, |c| c.read_bytes),
        sum(nets, |c| c.write_bytes),
        sum(disks, requests),
        sum(nets, requests),
    ]
}

/// Turns CPU-time counters into rates; one per backend.
#[derive(Default)]
pub struct UsageSampler {
    /// pid → (CPU ticks, when read).
    last: HashMap<u32, (u64, Instant)>,
    /// VM id → (I/O totals, when read).
    last_io: HashMap<String, (IoTotals, Instant)>,
    /// VM id → (engine CPU ns, vCPU ns, when read).
    last_cpu: HashMap<String, (u64, u64, Instant)>,
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
            rss_mib: (rss_pages * page_size()) >> 20,
            ..Usage::default()
        })
    }

    /// The usage an engine's `stats` answer tells: CPU shares from its CPU times,
    /// memory from its counts, rates from its I/O totals. None for an engine too old to
    /// report CPU time (sample it from /proc with `sample`).
    pub fn from_stats(
        &mut self,
        vm: &str,
        usage: &VmUsage,
        disks: &[Counters],
        nets: &[Counters],
    ) -> Option<Usage> {
        if usage.cpu_ns == 0 {
            return None;
        }
        let now = Instant::now();
        let before = self
            .last_cpu
            .insert(vm.to_owned(), (usage.cpu_ns, usage.vcpu_ns, now));
        let (cpu_percent, guest_cpu_percent) = match before {
            Some((cpu, vcpu, at)) => {
                let ns = now.duration_since(at).as_nanos().max(1) as f64;
                let share = |delta: u64| (delta as f64 / ns * 100.0) as f32;
                // Each counter on its own: the vCPUs' time counts the running boot only
                // (a guest reboot starts it again at 0) and an engine started again
                // starts both; a counter that went back counts from 0.
                let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
                (
                    share(delta(usage.cpu_ns, cpu)),
                    share(delta(usage.vcpu_ns, vcpu)),
                )
            }
            None => (0.0, 0.0),
        };
        Some(Usage {
            cpu_percent,
            guest_cpu_percent: Some(guest_cpu_percent),
            rss_mib: usage.memory.resident_bytes >> 20,
            memory: Some(MemoryShares {
                balloon_mib: usage.balloon_bytes >> 20,
                ksm_merged_mib: usage.memory.ksm_merging_bytes >> 20,
            }),
            io: Some(self.io_rates(vm, io_totals(disks, nets))),
        })
    }

    /// Rates from the VM's new totals; zero the first time (and after its engine
    /// restarted, when the totals went back).
    pub fn io_rates(&mut self, vm: &str, totals: IoTotals) -> IoRates {
        let now = Instant::now();
        let before = self.last_io.insert(vm.to_owned(), (totals, now));
        let Some((old, at)) = before else {
            return IoRates::default();
        };
        let secs = now.duration_since(at).as_secs_f64();
        if secs <= 0.0 || totals.iter().zip(old).any(|(new, old)| *new < old) {
            return IoRates::default();
        }
        let rate = |i: usize| (totals[i] - old[i]) as f64 / secs;
        IoRates {
            disk_read: rate(0),
            disk_write: rate(1),
            net_rx: rate(2),
            net_tx: rate(3),
            disk_ops: rate(4),
            net_packets: rate(5),
        }
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
    fn jitter_does_not_count_as_a_change() {
        let at = |cpu, rss| HashMap::from([("vm".to_owned(), (cpu, rss))]);
        assert!(glance_close(&at(100, 200), &at(95, 203)));
        assert!(!glance_close(&at(100, 200), &at(85, 200)));
        assert!(!glance_close(&at(100, 200), &at(100, 210)));
        assert!(!glance_close(&HashMap::new(), &at(0, 1)));
    }

    #[test]
    fn io_rates_are_differences_over_time() {
        let mut sampler = UsageSampler::default();
        assert_eq!(sampler.io_rates("vm", [0; 6]), IoRates::default());
        std::thread::sleep(std::time::Duration::from_millis(100));
        let rates = sampler.io_rates("vm", [1 << 20, 0, 0, 4096, 256, 0]);
        assert!(
            rates.disk_read > 1e6 && rates.disk_read < 1.1e7,
            "{rates:?}"
        );
        assert_eq!(rates.disk_write, 0.0);
        assert!(rates.net_tx > 0.0);
        assert!(
            rates.disk_ops > 256.0 && rates.disk_ops < 2600.0,
            "{rates:?}"
        );
        // An engine that started again counts from zero: no negative rate.
        assert_eq!(sampler.io_rates("vm", [0; 6]), IoRates::default());
    }

    #[test]
    fn an_engines_stats_become_cpu_shares_memory_and_rates() {
        use vireo_vmm::resources::memory::MemoryUsage;
        let at = |cpu_ns, vcpu_ns, disk_bytes| {
            let usage = VmUsage {
                cpu_ns,
                vcpu_ns,
                balloon_bytes: 64 << 20,
                memory: MemoryUsage {
                    resident_bytes: 300 << 20,
                    ksm_merging_bytes: 20 << 20,
                    ksm_profit_bytes: 0,
                },
            };
            let disk = Counters {
                read_bytes: disk_bytes,
                read_requests: disk_bytes / 4096,
                ..Counters::default()
            };
            (usage, vec![disk])
        };
        let mut sampler = UsageSampler::default();
        let (usage, disks) = at(1_000_000_000, 500_000_000, 0);
        let first = sampler.from_stats("vm", &usage, &disks, &[]).unwrap();
        assert_eq!(
            (first.cpu_percent, first.guest_cpu_percent),
            (0.0, Some(0.0))
        );
        assert_eq!(first.rss_mib, 300);
        let shares = first.memory.unwrap();
        assert_eq!((shares.balloon_mib, shares.ksm_merged_mib), (64, 20));
        std::thread::sleep(std::time::Duration::from_millis(200));
        // 150 ms of CPU in ~200 ms, 100 ms of it on vCPUs: ~75 % and ~50 %.
        let (usage, disks) = at(1_150_000_000, 600_000_000, 4 << 20);
        let next = sampler.from_stats("vm", &usage, &disks, &[]).unwrap();
        assert!(
            next.cpu_percent > 15.0 && next.cpu_percent < 76.0,
            "{next:?}"
        );
        let guest = next.guest_cpu_percent.unwrap();
        assert!(
            guest > 10.0 && guest < 51.0 && guest < next.cpu_percent,
            "{next:?}"
        );
        assert!(next.io.unwrap().disk_ops > 0.0);
        // A guest reboot starts the vCPUs' time again: the engine's share goes on.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (usage, disks) = at(1_300_000_000, 10_000_000, 4 << 20);
        let rebooted = sampler.from_stats("vm", &usage, &disks, &[]).unwrap();
        assert!(rebooted.cpu_percent > 15.0, "{rebooted:?}");
        assert!(rebooted.guest_cpu_percent.unwrap() < 6.0, "{rebooted:?}");
        // An engine too old to report CPU time is sampled from /proc instead.
        let (old, _) = at(0, 0, 0);
        assert!(sampler.from_stats("old", &old, &[], &[]).is_none());
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
