//! Who sets the balloon's target: the user (`Fixed`: `balloon-set`), or the engine
//! (`GiveBackIdle`): every few seconds it asks the guest for its memory statistics and
//! moves the target so that the guest keeps a reserve of available memory. A guest
//! with more idle memory than that gives the surplus back to the host (half of it per
//! round, so a guest whose use grows meets a balloon that is still deflating, not one
//! that just grabbed everything); a guest running short gets its deficit back at once.
//! Free page reporting (the device's reporting_vq) returns freed pages on top of this,
//! without any target.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BalloonHandle, BalloonStats};

/// How often the engine looks at the guest's statistics.
pub const PERIOD: Duration = Duration::from_secs(2);
/// How long one look waits for the guest's answer.
const STATS_WAIT: Duration = Duration::from_secs(1);
/// Changes smaller than this are not worth a round of inflating or deflating.
const MIN_STEP: u64 = 16 << 20;
/// The least a guest keeps available, whatever its size.
const MIN_RESERVE: u64 = 128 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalloonPolicy {
    /// The target is what the user last set (0: the guest keeps all its memory).
    #[default]
    Fixed,
    /// The engine gives idle guest memory back to the host.
    GiveBackIdle,
}

impl std::str::FromStr for BalloonPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fixed" => Ok(BalloonPolicy::Fixed),
            "give-back-idle" => Ok(BalloonPolicy::GiveBackIdle),
            other => Err(format!(
                "unknown balloon policy {other:?}: fixed or give-back-idle"
            )),
        }
    }
}

/// `GiveBackIdle`'s arithmetic for a guest of `ram` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleRule {
    ram: u64,
    /// What the guest keeps available: a quarter of its RAM, at least `MIN_RESERVE`.
    reserve: u64,
}

impl IdleRule {
    pub fn for_ram(ram: u64) -> IdleRule {
        IdleRule {
            ram,
            reserve: (ram / 4).max(MIN_RESERVE).min(ram),
        }
    }

    /// The next target (bytes in the balloon) given the guest's `stats` and the bytes
    /// in the balloon now; `None`: leave it. A guest that reports neither available
    /// nor free memory is left alone.
    pub fn next_target(&self, stats: &BalloonStats, balloon: u64) -> Option<u64> {
        let available = stats.available_memory.or(stats.free_memory)?;
        // Never more than the guest minus its reserve, whatever it claims.
        let ceiling = self.ram.saturating_sub(self.reserve);
        let target = if available > self.reserve {
            let surplus = available - self.reserve;
            if surplus < MIN_STEP {
                return None;
            }
            balloon.saturating_add(surplus / 2).min(ceiling)
        } else {
            let deficit = self.reserve - available;
            if deficit < MIN_STEP && balloon > 0 {
                return None;
            }
            balloon.saturating_sub(deficit)
        };
        (target != balloon).then_some(target)
    }
}

/// The thread that applies `GiveBackIdle` while it is the policy; under `Fixed` it sleeps
/// until the policy changes, so a VM that does not use it pays no wake-ups. It ends when
/// this is dropped.
pub struct Autopilot {
    enabled: Arc<AtomicBool>,
    /// Times the thread has woken (for tests: none while `Fixed`).
    wakes: Arc<AtomicU64>,
    // Each policy change wakes the thread; dropping the sender ends it.
    changed: Sender<()>,
}

impl Autopilot {
    /// Starts the thread for `handle`'s balloon in a guest of `ram` bytes, with `policy`
    /// in force.
    pub fn start(
        handle: BalloonHandle,
        ram: u64,
        policy: BalloonPolicy,
        period: Duration,
    ) -> std::io::Result<Autopilot> {
        let enabled = Arc::new(AtomicBool::new(policy == BalloonPolicy::GiveBackIdle));
        let (changed, changes) = mpsc::channel::<()>();
        let on = Arc::clone(&enabled);
        let wakes = Arc::new(AtomicU64::new(0));
        let woke = Arc::clone(&wakes);
        let rule = IdleRule::for_ram(ram);
        std::thread::Builder::new()
            .name("balloon-policy".into())
            .spawn(move || loop {
                woke.fetch_add(1, Ordering::Relaxed);
                if !on.load(Ordering::Acquire) {
                    match changes.recv() {
                        Ok(()) => continue,
                        Err(_) => return,
                    }
                }
                match changes.recv_timeout(period) {
                    // A change: look at the policy again before waiting on.
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if on.load(Ordering::Acquire) {
                    step(&handle, &rule);
                }
            })?;
        Ok(Autopilot {
            enabled,
            wakes,
            changed,
        })
    }

    pub fn policy(&self) -> BalloonPolicy {
        if self.enabled.load(Ordering::Acquire) {
            BalloonPolicy::GiveBackIdle
        } else {
            BalloonPolicy::Fixed
        }
    }

    /// How many times the thread has woken so far.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    pub fn set_policy(&self, policy: BalloonPolicy) {
        let was = self
            .enabled
            .swap(policy == BalloonPolicy::GiveBackIdle, Ordering::AcqRel);
        if was != (policy == BalloonPolicy::GiveBackIdle) {
            let _ = self.changed.send(());
        }
    }
}

/// One round: fresh statistics (a paused or driverless guest gives none: nothing to
/// do), then the target the rule says.
fn step(handle: &BalloonHandle, rule: &IdleRule) {
    let Ok(stats) = handle.refresh_stats(STATS_WAIT) else {
        return;
    };
    let balloon = handle.target_bytes();
    if let Some(target) = rule.next_target(&stats, balloon) {
        // Growing again before the guest has filled the last target would count the
        // memory it is still handing over as idle twice. Shrinking never waits.
        if target > balloon && balloon.saturating_sub(handle.actual_bytes()) > MIN_STEP {
            return;
        }
        tracing::debug!(
            "balloon: guest has {:?} MiB available; target {} -> {} MiB",
            stats
                .available_memory
                .or(stats.free_memory)
                .map(|b| b >> 20),
            balloon >> 20,
            target >> 20
        );
        if let Err(e) = handle.set_target_bytes(target) {
            tracing::warn!("balloon policy: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn available(bytes: u64) -> BalloonStats {
        BalloonStats {
            available_memory: Some(bytes),
            ..BalloonStats::default()
        }
    }

    #[test]
    fn an_idle_guest_gives_back_half_its_surplus_each_round() {
        let rule = IdleRule::for_ram(2 * GIB);
        // Reserve: 512 MiB. 1.5 GiB available: 1 GiB surplus, half of it now.
        assert_eq!(rule.next_target(&available(1536 * MIB), 0), Some(512 * MIB));
        // With 512 MiB in the balloon the guest has 1 GiB available: 256 more.
        assert_eq!(
            rule.next_target(&available(GIB), 512 * MIB),
            Some(768 * MIB)
        );
        // At the reserve (within a step) it stays.
        assert_eq!(rule.next_target(&available(520 * MIB), 1400 * MIB), None);
        // Never past RAM minus the reserve, however much the guest claims.
        assert_eq!(
            rule.next_target(&available(100 * GIB), 1400 * MIB),
            Some(1536 * MIB)
        );
    }

    #[test]
    fn a_guest_running_short_gets_its_deficit_back_at_once() {
        let rule = IdleRule::for_ram(2 * GIB);
        assert_eq!(
            rule.next_target(&available(100 * MIB), 1024 * MIB),
            Some(612 * MIB)
        );
        // Short by more than the balloon holds: all of it back.
        assert_eq!(rule.next_target(&available(0), 100 * MIB), Some(0));
        // An empty balloon has nothing to give.
        assert_eq!(rule.next_target(&available(0), 0), None);
    }

    #[test]
    fn free_memory_stands_in_for_available_and_silence_changes_nothing() {
        let rule = IdleRule::for_ram(GIB);
        let free = BalloonStats {
            free_memory: Some(768 * MIB),
            ..BalloonStats::default()
        };
        // Reserve 256 MiB; 512 surplus; half.
        assert_eq!(rule.next_target(&free, 0), Some(256 * MIB));
        assert_eq!(rule.next_target(&BalloonStats::default(), 0), None);
        // A tiny guest keeps the minimum reserve, and so gives nothing.
        let tiny = IdleRule::for_ram(100 * MIB);
        assert_eq!(tiny.next_target(&available(100 * MIB), 0), None);
    }

    #[test]
    fn policies_parse_by_name() {
        assert_eq!("fixed".parse(), Ok(BalloonPolicy::Fixed));
        assert_eq!("give-back-idle".parse(), Ok(BalloonPolicy::GiveBackIdle));
        let err = "auto".parse::<BalloonPolicy>().unwrap_err();
        assert!(err.contains("fixed or give-back-idle"), "{err}");
    }
}
