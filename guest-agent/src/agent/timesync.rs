//! Time sync logic, free of I/O: NTP-style samples over the agent connection, the best
//! one picked, and the decision to step, slew or leave the clock alone.
//!
//! A sample: the agent notes its clock `t0`, asks the host for its time, notes `t1` when
//! the answer arrives. Assuming the answer was taken halfway through the round trip, the
//! guest is behind by `offset = host − (t0 + t1) / 2`, with an error of at most half the
//! round trip; so samples with a long round trip are rejected and the shortest one wins.

use std::time::{Duration, Instant};

use crate::protocol::TimeCorrection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSyncConfig {
    /// Time between the end of one round and the start of the next.
    pub interval: Duration,
    /// Samples per round.
    pub samples: u8,
    /// Longer round trips are rejected: the offset's error bound is half of it.
    pub max_round_trip: Duration,
    /// Offsets this big or bigger are stepped; smaller ones slewed.
    pub step_threshold_ns: i64,
    /// Offsets below this are left alone (not worth an adjtimex call).
    pub slew_min_ns: i64,
    /// A query unanswered this long counts as a rejected sample.
    pub sample_timeout: Duration,
}

impl Default for TimeSyncConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            samples: 4,
            max_round_trip: Duration::from_millis(100),
            step_threshold_ns: 1_000_000_000,
            slew_min_ns: 1_000_000,
            sample_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Host time minus guest time.
    pub offset_ns: i64,
    pub round_trip: Duration,
}

impl Sample {
    /// `t0_ns`/`t1_ns`: guest clock when the query left and when the answer came;
    /// `round_trip`: the same interval measured on the monotonic clock, which a step
    /// cannot disturb.
    pub fn new(t0_ns: i64, host_ns: i64, t1_ns: i64, round_trip: Duration) -> Self {
        let midpoint = (i128::from(t0_ns) + i128::from(t1_ns)) / 2;
        let offset = (i128::from(host_ns) - midpoint).clamp(i64::MIN.into(), i64::MAX.into());
        Self {
            offset_ns: offset as i64,
            round_trip,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    id: u32,
    sent: Instant,
    t0_ns: i64,
}

/// One round of samples.
#[derive(Debug)]
pub struct SyncRound {
    /// Step whatever the offset: the first sync after a restore, when the guest clock is
    /// known to have stood still.
    pub force_step: bool,
    best: Option<Sample>,
    taken: u8,
    rejected: u8,
    in_flight: Option<InFlight>,
}

/// The outcome of a round: what to do to the clock, and with which sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub correction: TimeCorrection,
    pub best: Option<Sample>,
    pub taken: u8,
    pub rejected: u8,
}

impl SyncRound {
    pub fn new(force_step: bool) -> Self {
        Self {
            force_step,
            best: None,
            taken: 0,
            rejected: 0,
            in_flight: None,
        }
    }

    /// Whether the next query should go out now.
    pub fn wants_query(&self, config: &TimeSyncConfig) -> bool {
        self.in_flight.is_none() && self.taken < config.samples
    }

    pub fn is_done(&self, config: &TimeSyncConfig) -> bool {
        self.in_flight.is_none() && self.taken >= config.samples
    }

    pub fn query_sent(&mut self, id: u32, sent: Instant, t0_ns: i64) {
        self.in_flight = Some(InFlight { id, sent, t0_ns });
    }

    /// The id of the query waiting for its answer.
    pub fn in_flight_id(&self) -> Option<u32> {
        self.in_flight.map(|f| f.id)
    }

    /// Records the host's answer to query `id`; false if `id` is not the query in flight
    /// (a late answer to a timed-out query, ignored).
    pub fn reply(
        &mut self,
        config: &TimeSyncConfig,
        id: u32,
        host_ns: i64,
        t1_ns: i64,
        now: Instant,
    ) -> bool {
        let Some(flight) = self.in_flight.filter(|f| f.id == id) else {
            return false;
        };
        self.in_flight = None;
        self.taken += 1;
        let sample = Sample::new(flight.t0_ns, host_ns, t1_ns, now - flight.sent);
        if sample.round_trip > config.max_round_trip {
            self.rejected += 1;
        } else if self.best.is_none_or(|b| sample.round_trip < b.round_trip) {
            self.best = Some(sample);
        }
        true
    }

    /// Gives up on a query unanswered for too long.
    pub fn tick(&mut self, config: &TimeSyncConfig, now: Instant) {
        if let Some(flight) = self.in_flight {
            if now - flight.sent >= config.sample_timeout {
                self.in_flight = None;
                self.taken += 1;
                self.rejected += 1;
            }
        }
    }

    /// When [`tick`](Self::tick) must run next to time out the query in flight.
    pub fn deadline(&self, config: &TimeSyncConfig) -> Option<Instant> {
        self.in_flight.map(|f| f.sent + config.sample_timeout)
    }

    pub fn decide(&self, config: &TimeSyncConfig) -> Decision {
        let correction = match self.best {
            None => TimeCorrection::NoSample,
            // Below the slew minimum nothing is worth doing, even after a restore: a step
            // of a few microseconds would only make the clock jump for nothing.
            Some(s) if s.offset_ns.unsigned_abs() < config.slew_min_ns.unsigned_abs() => {
                TimeCorrection::None
            }
            Some(s)
                if self.force_step
                    || s.offset_ns.unsigned_abs() >= config.step_threshold_ns.unsigned_abs() =>
            {
                TimeCorrection::Stepped
            }
            Some(_) => TimeCorrection::Slewed,
        };
        Decision {
            correction,
            best: self.best,
            taken: self.taken,
            rejected: self.rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn offset_is_host_minus_midpoint() {
        let s = Sample::new(
            1_000 * MS,
            5_000 * MS,
            1_010 * MS,
            Duration::from_millis(10),
        );
        assert_eq!(s.offset_ns, 3_995 * MS);
        let s = Sample::new(i64::MAX - 1, i64::MIN, i64::MAX, Duration::ZERO);
        assert_eq!(s.offset_ns, i64::MIN);
    }

    fn run(round: &mut SyncRound, cfg: &TimeSyncConfig, rtts_ms: &[u64], offset_ms: i64) {
        let start = Instant::now();
        for (i, rtt) in rtts_ms.iter().enumerate() {
            assert!(round.wants_query(cfg));
            let sent = start + Duration::from_secs(i as u64);
            round.query_sent(i as u32 + 1, sent, 0);
            let rtt_ns = *rtt as i64 * MS;
            assert!(round.reply(
                cfg,
                i as u32 + 1,
                offset_ms * MS + rtt_ns / 2,
                rtt_ns,
                sent + Duration::from_millis(*rtt)
            ));
        }
    }

    #[test]
    fn big_offset_is_stepped_with_the_shortest_round_trip() {
        let cfg = TimeSyncConfig::default();
        let mut round = SyncRound::new(false);
        run(&mut round, &cfg, &[40, 3, 500, 20], 3_600_000);
        assert!(round.is_done(&cfg));
        let d = round.decide(&cfg);
        assert_eq!(d.correction, TimeCorrection::Stepped);
        assert_eq!(d.best.unwrap().round_trip, Duration::from_millis(3));
        assert_eq!(d.best.unwrap().offset_ns, 3_600_000 * MS);
        assert_eq!((d.taken, d.rejected), (4, 1));
    }

    #[test]
    fn small_offset_is_slewed_tiny_one_left_alone_restore_steps() {
        let cfg = TimeSyncConfig::default();
        let mut round = SyncRound::new(false);
        run(&mut round, &cfg, &[1, 1, 1, 1], 200);
        assert_eq!(round.decide(&cfg).correction, TimeCorrection::Slewed);

        let mut round = SyncRound::new(false);
        run(&mut round, &cfg, &[1, 1, 1, 1], 0);
        assert_eq!(round.decide(&cfg).correction, TimeCorrection::None);

        let mut round = SyncRound::new(true);
        run(&mut round, &cfg, &[1, 1, 1, 1], 200);
        assert_eq!(round.decide(&cfg).correction, TimeCorrection::Stepped);
    }

    #[test]
    fn long_round_trips_give_no_sample() {
        let cfg = TimeSyncConfig::default();
        let mut round = SyncRound::new(false);
        run(&mut round, &cfg, &[150, 101, 900, 200], 3_600_000);
        let d = round.decide(&cfg);
        assert_eq!(d.correction, TimeCorrection::NoSample);
        assert_eq!(d.rejected, 4);
    }

    #[test]
    fn unanswered_query_times_out_and_late_answer_is_ignored() {
        let cfg = TimeSyncConfig::default();
        let mut round = SyncRound::new(false);
        let t = Instant::now();
        round.query_sent(9, t, 0);
        round.tick(&cfg, t + Duration::from_millis(500));
        assert_eq!(round.in_flight_id(), Some(9));
        assert_eq!(round.deadline(&cfg), Some(t + cfg.sample_timeout));
        round.tick(&cfg, t + cfg.sample_timeout);
        assert_eq!(round.in_flight_id(), None);
        assert!(!round.reply(&cfg, 9, 0, 0, t + Duration::from_secs(2)));
        assert_eq!(round.decide(&cfg).rejected, 1);
    }
}
