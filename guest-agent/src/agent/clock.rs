//! The guest wall clock, behind a trait so that time sync is tested with a simulated
//! clock and only the guest binary touches the real one.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

pub use crate::util::system_now_ns;

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("clock_settime(CLOCK_REALTIME) failed")]
    Step(#[source] nix::Error),
    #[error("adjtimex(ADJ_OFFSET_SINGLESHOT) failed")]
    Slew(#[source] std::io::Error),
    #[error("reading CLOCK_REALTIME failed")]
    Read(#[source] nix::Error),
}

/// The clock time sync corrects.
pub trait Clock: Send + Sync {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    fn now_unix_ns(&self) -> i64;
    /// Moves the clock by `delta_ns` at once.
    fn step(&self, delta_ns: i64) -> Result<(), ClockError>;
    /// Asks for `delta_ns` to be absorbed gradually, replacing any slew in progress.
    fn slew(&self, delta_ns: i64) -> Result<(), ClockError>;
}

/// `CLOCK_REALTIME` of the running system. Needs `CAP_SYS_TIME`: only the guest binary
/// uses it, never a test.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ns(&self) -> i64 {
        system_now_ns()
    }

    fn step(&self, delta_ns: i64) -> Result<(), ClockError> {
        use nix::time::{clock_gettime, clock_settime, ClockId};
        // Read and set back to back, so the step is relative to "now" and not to a
        // reading taken before the round trip.
        let now = clock_gettime(ClockId::CLOCK_REALTIME).map_err(ClockError::Read)?;
        let target = timespec_ns(&now).saturating_add(delta_ns);
        let spec = nix::sys::time::TimeSpec::new(
            target.div_euclid(1_000_000_000),
            target.rem_euclid(1_000_000_000),
        );
        clock_settime(ClockId::CLOCK_REALTIME, spec).map_err(ClockError::Step)
    }

    fn slew(&self, delta_ns: i64) -> Result<(), ClockError> {
        // ADJ_OFFSET_SINGLESHOT is the adjtime(3) mode: the kernel absorbs the offset at
        // 500 ppm and needs no PLL state, unlike ADJ_OFFSET, which only works with STA_PLL
        // set and would fight an NTP daemon's settings. A new call replaces the old one.
        let tx = std::mem::MaybeUninit::<libc::timex>::zeroed();
        // SAFETY: an all-zero `timex` is a valid value (integers only), which `zeroed`
        // produced.
        let mut tx = unsafe { tx.assume_init() };
        tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
        tx.offset = (delta_ns / 1_000) as libc::c_long;
        // SAFETY: `tx` is a valid, exclusively borrowed `timex` for the call's duration.
        let rc = unsafe { libc::adjtimex(&mut tx) };
        if rc < 0 {
            return Err(ClockError::Slew(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn timespec_ns(ts: &nix::sys::time::TimeSpec) -> i64 {
    ts.tv_sec()
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec())
}

/// A clock that runs at the system clock's rate with an offset of its own: tests (and the
/// binary's hidden `--fake-clock-offset-ms`) correct it without touching the real clock.
/// A slew is applied at once, as if the kernel had already absorbed it; steps and slews
/// are counted so tests can tell them apart.
#[derive(Debug, Default)]
pub struct SimulatedClock {
    offset_ns: AtomicI64,
    steps: AtomicU32,
    slews: AtomicU32,
    last_slew_ns: AtomicI64,
}

impl SimulatedClock {
    pub fn with_offset_ns(offset_ns: i64) -> Self {
        Self {
            offset_ns: AtomicI64::new(offset_ns),
            ..Self::default()
        }
    }

    /// Guest time minus system time.
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns.load(Ordering::SeqCst)
    }

    pub fn steps(&self) -> u32 {
        self.steps.load(Ordering::SeqCst)
    }

    pub fn slews(&self) -> u32 {
        self.slews.load(Ordering::SeqCst)
    }

    pub fn last_slew_ns(&self) -> i64 {
        self.last_slew_ns.load(Ordering::SeqCst)
    }
}

impl Clock for SimulatedClock {
    fn now_unix_ns(&self) -> i64 {
        system_now_ns().saturating_add(self.offset_ns())
    }

    fn step(&self, delta_ns: i64) -> Result<(), ClockError> {
        self.offset_ns.fetch_add(delta_ns, Ordering::SeqCst);
        self.steps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn slew(&self, delta_ns: i64) -> Result<(), ClockError> {
        self.offset_ns.fetch_add(delta_ns, Ordering::SeqCst);
        self.last_slew_ns.store(delta_ns, Ordering::SeqCst);
        self.slews.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_clock_follows_the_system_clock_with_its_offset() {
        let clock = SimulatedClock::with_offset_ns(-3_600_000_000_000);
        let diff = clock.now_unix_ns() - system_now_ns();
        assert!((diff + 3_600_000_000_000).abs() < 50_000_000, "{diff}");
        clock.step(3_600_000_000_000).unwrap();
        clock.slew(-5).unwrap();
        assert_eq!(clock.offset_ns(), -5);
        assert_eq!((clock.steps(), clock.slews()), (1, 1));
        assert_eq!(clock.last_slew_ns(), -5);
    }
}
