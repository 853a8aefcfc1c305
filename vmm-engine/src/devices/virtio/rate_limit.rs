//! I/O limits for a disk or a network card: two token buckets (bytes per second and
//! operations per second, each with a burst) that a device's worker asks before it
//! serves a request. When a bucket is short the request stays in its ring and the
//! limiter arms a timer fd (in the worker's epoll set) for the moment the bucket will
//! hold enough; the worker never sleeps or spins. The control socket's `set-limits`
//! changes the buckets while the worker runs and wakes it, so a raised limit applies at
//! once.
//!
//! A request passes once its bucket holds its cost or half the bucket's size, whichever
//! is less; what it takes beyond that leaves the bucket in debt. So any size gets
//! through, the long-run rate holds, and a timer that fires late (a loaded host) costs
//! nothing up to half a bucket's worth of time: the tokens keep accruing meanwhile
//! instead of spilling over a full bucket.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// A bucket's size when no burst is given: this long at the full rate. Short, so that a
/// limit holds over a few seconds of measurement too.
const DEFAULT_BURST: Duration = Duration::from_millis(100);

/// What the user asks of one device: `bw=20M,iops=1000` (with optional `bw_burst=`,
/// `iops_burst=`) on `--disk` and `--net`, or the same fields in `set-limits`. Absent
/// fields are unlimited. Bandwidth is bytes per second (K, M, G: powers of 1024).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bw: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bw_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_burst: Option<u64>,
}

/// A limit that cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{key}={value} is not a number (e.g. bw=20M, iops=1000)")]
    Number { key: &'static str, value: String },
    #[error("{0}=0 would stop the device: leave the key out for no limit")]
    Zero(&'static str),
    #[error("{0} is given without {1}")]
    BurstWithoutRate(&'static str, &'static str),
}

impl IoLimits {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.bw.is_none() && self.iops.is_none()
    }

    /// The keys `set` takes, for error messages.
    pub const KEYS: &'static str = "bw, bw_burst, iops, iops_burst";

    /// Takes `key=value` if `key` is one of ours; returns whether it was.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, LimitError> {
        let (slot, name, binary) = match key {
            "bw" => (&mut self.bw, "bw", true),
            "bw_burst" => (&mut self.bw_burst, "bw_burst", true),
            "iops" => (&mut self.iops, "iops", false),
            "iops_burst" => (&mut self.iops_burst, "iops_burst", false),
            _ => return Ok(false),
        };
        *slot = Some(parse_amount(name, value, binary)?);
        Ok(true)
    }

    /// Checks values a `vm.toml` or a control request could hold.
    pub fn validate(&self) -> Result<(), LimitError> {
        for (value, name) in [
            (self.bw, "bw"),
            (self.bw_burst, "bw_burst"),
            (self.iops, "iops"),
            (self.iops_burst, "iops_burst"),
        ] {
            if value == Some(0) {
                return Err(LimitError::Zero(name));
            }
        }
        if self.bw.is_none() && self.bw_burst.is_some() {
            return Err(LimitError::BurstWithoutRate("bw_burst", "bw"));
        }
        if self.iops.is_none() && self.iops_burst.is_some() {
            return Err(LimitError::BurstWithoutRate("iops_burst", "iops"));
        }
        Ok(())
    }
}

/// `1000`, `64K`, `20M`, `1G` (powers of 1024 where `binary`; a plain count otherwise).
fn parse_amount(key: &'static str, value: &str, binary: bool) -> Result<u64, LimitError> {
    let bad = || LimitError::Number {
        key,
        value: value.to_owned(),
    };
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'k' | b'K') if binary => (&value[..value.len() - 1], 10),
        Some(b'm' | b'M') if binary => (&value[..value.len() - 1], 20),
        Some(b'g' | b'G') if binary => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// One token bucket: `rate` tokens a second, holding at most `size`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    size: u64,
    /// Negative after a request larger than the bucket.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: Option<u64>, now: Instant) -> Self {
        let size =
            burst.unwrap_or_else(|| (rate as f64 * DEFAULT_BURST.as_secs_f64()).ceil() as u64);
        let size = size.max(1);
        TokenBucket {
            rate,
            size,
            tokens: size as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.size as f64);
    }

    /// How long until `cost` can be taken (zero: now): until the bucket holds the cost
    /// or half its size, whichever is less.
    pub fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let needed = cost.min(self.size.div_ceil(2)) as f64;
        if self.tokens >= needed {
            return Duration::ZERO;
        }
        // Rounded up to a whole microsecond so the timer does not fire a hair early.
        let secs = (needed - self.tokens) / self.rate as f64;
        Duration::from_micros((secs * 1e6).ceil() as u64 + 1)
    }

    /// Takes `cost` (after `wait_for` said zero).
    pub fn take(&mut self, cost: u64) {
        self.tokens -= cost as f64;
    }

    /// The same bucket under a new rate and size, keeping what it holds (no fresh
    /// burst from a change).
    fn retuned(&self, rate: u64, burst: Option<u64>, now: Instant) -> Self {
        let mut bucket = TokenBucket::new(rate, burst, now);
        let mut old = self.clone();
        old.refill(now);
        bucket.tokens = old.tokens.min(bucket.size as f64);
        bucket
    }
}

/// The buckets and the timer, behind one lock (the worker and the control thread).
struct State {
    bw: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    limits: IoLimits,
    timer: TimerFd,
    /// A request is waiting for the timer.
    throttled: bool,
}

/// A device's limiter, shared by its worker (admit, timer) and the control socket (set).
pub struct RateLimiter {
    state: Mutex<State>,
    timer_fd: RawFd,
}

impl RateLimiter {
    pub fn new(limits: IoLimits) -> std::io::Result<Self> {
        let timer = TimerFd::new()?;
        let timer_fd = timer.as_raw_fd();
        let now = Instant::now();
        Ok(RateLimiter {
            state: Mutex::new(State {
                bw: limits.bw.map(|r| TokenBucket::new(r, limits.bw_burst, now)),
                ops: limits
                    .iops
                    .map(|r| TokenBucket::new(r, limits.iops_burst, now)),
                limits,
                timer,
                throttled: false,
            }),
            timer_fd,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fd the worker waits on: readable when a throttled request may go.
    pub fn timer_fd(&self) -> RawFd {
        self.timer_fd
    }

    /// Whether a request of `bytes` may be served now; if so its cost is taken. If not,
    /// the timer is armed for when it may, and the caller leaves it in the ring.
    pub fn admit(&self, bytes: u64) -> bool {
        let mut state = self.lock();
        if state.bw.is_none() && state.ops.is_none() {
            return true;
        }
        let now = Instant::now();
        let wait_bw = state
            .bw
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(bytes, now));
        let wait_ops = state
            .ops
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(1, now));
        let wait = wait_bw.max(wait_ops);
        if wait.is_zero() {
            if let Some(b) = state.bw.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = state.ops.as_mut() {
                b.take(1);
            }
            return true;
        }
        state.throttled = true;
        if let Err(e) = state.timer.reset(wait, None) {
            // Without the timer nothing would wake the worker: let the request through.
            tracing::warn!("I/O limit: cannot arm the timer ({e}); not limiting");
            state.throttled = false;
            return true;
        }
        false
    }

    /// The timer fired: disarm it (which also makes the fd unreadable again).
    pub fn timer_fired(&self) {
        let mut state = self.lock();
        state.throttled = false;
        let _ = state.timer.clear();
    }

    /// The limits in force.
    pub fn limits(&self) -> IoLimits {
        self.lock().limits
    }

    /// New limits, from now on. A throttled worker is woken to try again under them.
    pub fn set(&self, limits: IoLimits) -> Result<(), LimitError> {
        limits.validate()?;
        let now = Instant::now();
        let mut state = self.lock();
        let retune = |old: &Option<TokenBucket>, rate: Option<u64>, burst| {
            rate.map(|r| match old {
                Some(b) => b.retuned(r, burst, now),
                None => TokenBucket::new(r, burst, now),
            })
        };
        state.bw = retune(&state.bw, limits.bw, limits.bw_burst);
        state.ops = retune(&state.ops, limits.iops, limits.iops_burst);
        state.limits = limits;
        if state.throttled {
            // Fires at once: the worker re-asks `admit` under the new buckets.
            if let Err(e) = state.timer.reset(Duration::from_nanos(1), None) {
                tracing::warn!("I/O limit: cannot wake the worker: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_serves_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, Some(100), t0);
        assert_eq!(b.wait_for(100, t0), Duration::ZERO);
        b.take(100);
        // Empty: 50 tokens (half the bucket) take 50 ms at 1000/s.
        let wait = b.wait_for(50, t0);
        assert!(wait >= ms(50) && wait <= ms(51), "{wait:?}");
        assert_eq!(b.wait_for(50, t0 + ms(50)), Duration::ZERO);
        b.take(50);
        // The bucket never holds more than its size, however long it rested.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.wait_for(100, later), Duration::ZERO);
        b.take(100);
        assert!(b.wait_for(1, later) > Duration::ZERO);
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_at_half_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, Some(100), t0);
        assert_eq!(b.wait_for(1000, t0), Duration::ZERO);
        b.take(1000);
        // 900 of debt plus half a bucket: 950 ms before the next big one.
        let wait = b.wait_for(1000, t0);
        assert!(wait >= ms(950) && wait <= ms(951), "{wait:?}");
        // A late timer loses nothing: served 30 ms late, the next one is still due at
        // 1950 ms, 1 s (1000 tokens) after the on-time moment.
        b.refill(t0 + ms(980));
        b.take(1000);
        let wait = b.wait_for(1000, t0 + ms(980));
        assert!(wait >= ms(970) && wait <= ms(971), "{wait:?}");
    }

    #[test]
    fn the_long_run_rate_is_the_limit() {
        // Requests of 64 KiB at 1 MiB/s as fast as the bucket allows, for 10 s of
        // simulated time: 10 MiB (plus the first burst) get through.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 20, None, t0);
        let mut now = t0;
        let mut served = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let wait = b.wait_for(64 << 10, now);
            if wait.is_zero() {
                b.take(64 << 10);
                served += 64 << 10;
            } else {
                now += wait;
            }
        }
        let burst = (1u64 << 20) / 10;
        let expected = 10 << 20;
        assert!(
            served >= expected && served <= expected + burst + (64 << 10),
            "{served}"
        );
    }

    #[test]
    fn a_retuned_bucket_keeps_its_level_not_a_fresh_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, Some(1000), t0);
        b.take(1000);
        let mut faster = b.retuned(1_000_000, Some(1_000_000), t0);
        assert!(faster.wait_for(1000, t0) > Duration::ZERO);
        assert_eq!(faster.wait_for(1000, t0 + ms(1)), Duration::ZERO);
    }

    #[test]
    fn parsing_and_checking() {
        let mut l = IoLimits::default();
        assert!(l.set("bw", "20M").unwrap());
        assert!(l.set("iops", "1000").unwrap());
        assert!(l.set("bw_burst", "64k").unwrap());
        assert!(!l.set("path", "x").unwrap());
        assert_eq!(l.bw, Some(20 << 20));
        assert_eq!(l.bw_burst, Some(64 << 10));
        assert_eq!(l.iops, Some(1000));
        assert!(l.validate().is_ok());
        assert!(matches!(
            l.set("iops", "1k"),
            Err(LimitError::Number { key: "iops", .. })
        ));
        assert!(l.set("bw", "99999999999G").is_err());
        let zero = IoLimits {
            bw: Some(0),
            ..IoLimits::default()
        };
        assert_eq!(zero.validate(), Err(LimitError::Zero("bw")));
        let lone = IoLimits {
            iops_burst: Some(5),
            ..IoLimits::default()
        };
        assert!(lone.validate().is_err());
        let json: IoLimits = serde_json::from_str(r#"{"bw": 1048576}"#).unwrap();
        assert_eq!(json.bw, Some(1 << 20));
    }

    /// Whether `fd` becomes readable within `timeout_ms`.
    pub(crate) fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
            .unwrap();
        let mut events = [EpollEvent::default(); 1];
        epoll.wait(timeout_ms, &mut events).unwrap() == 1
    }

    #[test]
    fn a_throttled_request_arms_the_timer_and_a_new_limit_wakes_it() {
        let limiter = RateLimiter::new(IoLimits {
            iops: Some(1),
            iops_burst: Some(1),
            ..IoLimits::default()
        })
        .unwrap();
        assert!(limiter.admit(4096));
        assert!(!limiter.admit(4096));
        // Armed for about a second: not readable yet.
        assert!(!readable(limiter.timer_fd(), 50));
        limiter
            .set(IoLimits {
                iops: Some(1_000_000),
                ..IoLimits::default()
            })
            .unwrap();
        assert!(readable(limiter.timer_fd(), 1000));
        limiter.timer_fired();
        assert!(!readable(limiter.timer_fd(), 0));
        // The old bucket's emptiness carried over, but at a million a second it refills
        // within a few microseconds.
        std::thread::sleep(ms(2));
        assert!(limiter.admit(4096));
        // No limits: everything passes, the timer stays quiet.
        limiter.set(IoLimits::default()).unwrap();
        for _ in 0..1000 {
            assert!(limiter.admit(1 << 20));
        }
        assert!(!readable(limiter.timer_fd(), 0));
    }

    #[test]
    fn the_timer_fires_when_the_bucket_has_refilled() {
        let limiter = RateLimiter::new(IoLimits {
            bw: Some(1 << 20),
            bw_burst: Some(64 << 10),
            ..IoLimits::default()
        })
        .unwrap();
        assert!(limiter.admit(64 << 10));
        let start = Instant::now();
        assert!(!limiter.admit(64 << 10));
        // Half the bucket, 32 KiB, at 1 MiB/s: 31.25 ms.
        assert!(readable(limiter.timer_fd(), 2000));
        let waited = start.elapsed();
        assert!(waited >= ms(31), "{waited:?}");
        limiter.timer_fired();
        assert!(limiter.admit(64 << 10));
    }
}
