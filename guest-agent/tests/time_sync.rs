//! Time sync end to end in one process: the agent's serve loop on a Unix socket with a
//! simulated clock, the host client answering its time queries with this host's real
//! clock. The real clock is never changed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vireo_guest_agent::agent::clipboard::{ClipboardMode, GuestClipboard};
use vireo_guest_agent::agent::clock::{Clock as _, SimulatedClock};
use vireo_guest_agent::agent::display::DisplayProbe;
use vireo_guest_agent::agent::power::RecordingPower;
use vireo_guest_agent::agent::timesync::TimeSyncConfig;
use vireo_guest_agent::agent::transport::{AgentListener, ListenAddr};
use vireo_guest_agent::agent::{self, AgentServices};
use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
use vireo_guest_agent::protocol::{TimeCorrection, DEFAULT_CLIPBOARD_LIMIT};

const MS: i64 = 1_000_000;
const HOUR_NS: i64 = 3_600_000 * MS;

fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "vireo-ts-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// The agent's socket file, removed when the test ends (the listening thread itself
/// lives as long as the test process).
struct AgentSocket(PathBuf);

impl AgentSocket {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.0.clone())
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the agent's accept loop in a thread.
fn start_agent(clock: Arc<SimulatedClock>, interval: Duration) -> AgentSocket {
    let path = socket_path();
    let listener = AgentListener::bind(&ListenAddr::Unix(path.clone())).unwrap();
    let services = AgentServices {
        clock,
        power: Arc::new(RecordingPower::default()),
        time_sync: TimeSyncConfig {
            interval,
            ..TimeSyncConfig::default()
        },
        shares: None,
        clipboard: Arc::new(
            GuestClipboard::start(ClipboardMode::Memory, DEFAULT_CLIPBOARD_LIMIT).unwrap(),
        ),
        display: DisplayProbe::default(),
    };
    std::thread::spawn(move || agent::run(&listener, &services));
    AgentSocket(path)
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

#[test]
fn clock_an_hour_wrong_is_stepped_within_2s_to_within_50ms() {
    for sign in [1, -1] {
        let clock = Arc::new(SimulatedClock::with_offset_ns(sign * HOUR_NS));
        let agent = start_agent(clock.clone(), Duration::from_secs(10));
        let start = Instant::now();
        let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
        let took = wait_until(Duration::from_secs(2), || clock.offset_ns().abs() < 50 * MS)
            .map(|_| start.elapsed());
        let took =
            took.unwrap_or_else(|| panic!("offset still {} ns after 2 s", clock.offset_ns()));
        assert_eq!(clock.steps(), 1);
        assert_eq!(clock.slews(), 0);
        eprintln!(
            "1 h {} corrected in {:?} from connect, residual {:+.3} ms",
            if sign > 0 { "ahead" } else { "behind" },
            took,
            clock.offset_ns() as f64 / 1e6
        );
        drop(client);
    }
}

#[test]
fn small_drift_is_slewed_not_stepped() {
    let clock = Arc::new(SimulatedClock::with_offset_ns(200 * MS));
    let agent = start_agent(clock.clone(), Duration::from_secs(10));
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    // The sync on connect slews.
    let took = wait_until(Duration::from_secs(2), || clock.slews() >= 1);
    assert!(took.is_some(), "no slew");
    assert_eq!(clock.steps(), 0);
    // The agent asked to slew the clock back by about 200 ms.
    let slew = clock.last_slew_ns();
    assert!((slew + 200 * MS).abs() < 20 * MS, "slew {slew}");
    // Too small to be worth anything now.
    let report = client.time_sync_now().unwrap();
    assert_eq!(report.correction, TimeCorrection::None, "{report:?}");
}

#[test]
fn long_round_trips_are_rejected() {
    let clock = Arc::new(SimulatedClock::with_offset_ns(HOUR_NS));
    let agent = start_agent(clock.clone(), Duration::from_secs(10));
    let config = ClientConfig {
        time_reply_delay: Duration::from_millis(150),
        ..ClientConfig::default()
    };
    let client = AgentClient::connect(agent.endpoint(), config).unwrap();
    let report = client.time_sync_now().unwrap();
    assert_eq!(report.correction, TimeCorrection::NoSample, "{report:?}");
    assert_eq!(report.rejected, report.samples);
    assert_eq!(report.samples, TimeSyncConfig::default().samples);
    assert_eq!(clock.steps() + clock.slews(), 0);
    assert!((clock.offset_ns() - HOUR_NS).abs() < MS);
}

#[test]
fn transport_reset_steps_at_once_even_a_small_offset() {
    let clock = Arc::new(SimulatedClock::with_offset_ns(0));
    let agent = start_agent(clock.clone(), Duration::from_secs(10));
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    assert_eq!(
        client.time_sync_now().unwrap().correction,
        TimeCorrection::None
    );
    drop(client);
    // The VM was "saved" and restored 300 ms later: the guest clock stood still.
    clock.step(-300 * MS).unwrap();
    let steps_before = clock.steps();
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    let took = wait_until(Duration::from_secs(2), || clock.steps() > steps_before);
    assert!(took.is_some(), "no step after the reset");
    assert!(clock.offset_ns().abs() < 50 * MS, "{}", clock.offset_ns());
    assert_eq!(clock.slews(), 0);
    drop(client);
}

#[test]
fn periodic_sync_catches_a_later_jump_without_being_asked() {
    let clock = Arc::new(SimulatedClock::with_offset_ns(0));
    let agent = start_agent(clock.clone(), Duration::from_millis(200));
    let client = AgentClient::connect(agent.endpoint(), ClientConfig::default()).unwrap();
    client.time_sync_now().unwrap();
    clock.step(5_000 * MS).unwrap();
    let took = wait_until(Duration::from_secs(2), || clock.offset_ns().abs() < 50 * MS);
    assert!(took.is_some(), "offset still {}", clock.offset_ns());
    drop(client);
}
