//! The virtio-vsock tests (`probe.run=vsock-*`), driven by `virtio-drivers`' socket
//! driver (`VirtIOSocket` + `VsockConnectionManager`) over PCI, polled (no interrupts).
//!
//! Every send is one tx packet the driver notifies and waits for (an exit, ~30 µs under
//! PVM), so data goes in large chunks (`probe.vsock_chunk_kib`, within the credit the
//! device gives); rx buffers are `RX_BUFFER` bytes, eight of them, recycled by the
//! driver as it polls. Data is `vireo-cpu-bench`'s seeded pattern (a function of seed
//! and offset), checked on the way back, so the host can check it with the same code.

use alloc::vec;
use alloc::vec::Vec;

use vireo_cpu_bench::{check_disk_pattern, fill_disk_pattern, MIB};
use virtio_drivers::device::socket::{
    DisconnectReason, SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType,
    VMADDR_CID_HOST,
};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::Error;

use crate::arch;
use crate::pci::Pci;
use crate::probe;
use crate::virtio::{self, ProbeHal, ProbeTransport};

/// Bytes of each rx buffer (the most one packet from the device carries, header included).
const RX_BUFFER: usize = 64 << 10;
/// The receive buffer per connection the probe advertises (`buf_alloc`).
const CONN_BUFFER: u32 = 256 << 10;
/// A CREDIT_UPDATE goes to the device after consuming this much.
const CREDIT_UPDATE_AFTER: usize = (CONN_BUFFER / 2) as usize;
/// No progress for this long is a hang.
const TIMEOUT_MS: u64 = 10_000;
/// First local port of the probe's connections.
const FIRST_LOCAL_PORT: u32 = 40_000;

pub(crate) type Manager = VsockConnectionManager<ProbeHal, ProbeTransport, RX_BUFFER>;

/// What the `probe.vsock_*` words set.
#[derive(Clone, Copy, Debug)]
pub struct VsockOptions {
    /// The host port the guest connects to, or the guest port it listens on.
    pub port: u32,
    /// Connections at once (`vsock-echo`), or connections served (`vsock-serve`).
    pub conns: usize,
    /// MiB each connection sends.
    pub mib: u64,
    /// Connect/close cycles.
    pub cycles: u64,
    /// MiB each way in the benchmark.
    pub bench_mib: u64,
    /// 64-byte round trips in the benchmark.
    pub pings: usize,
    /// Bytes per send.
    pub chunk_kib: u64,
    pub seed: u64,
}

impl Default for VsockOptions {
    fn default() -> Self {
        Self {
            port: 1234,
            conns: 16,
            mib: 8,
            cycles: 1000,
            bench_mib: 256,
            pings: 2000,
            chunk_kib: 128,
            seed: 1,
        }
    }
}

/// The vsock commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    Echo,
    Serve,
    CloseEarly,
    Cycles,
    Refused,
    Bench,
}

/// The probe's socket: the connection manager and a clock for timeouts.
pub(crate) struct Sock {
    pub(crate) mgr: Manager,
    pub(crate) tsc_khz: u64,
}

/// Why a wait ended badly.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Timeout,
    Reset,
    Shutdown,
    Driver(Error),
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Shutdown => "shutdown",
            Failure::Driver(Error::SocketDeviceError(_)) => "socket_error",
            Failure::Driver(e) => crate::blk::error_name(e),
        }
    }
}

fn host(port: u32) -> VsockAddr {
    VsockAddr {
        cid: VMADDR_CID_HOST,
        port,
    }
}

pub(crate) fn insufficient(e: &Error) -> bool {
    matches!(
        e,
        Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)
    )
}

impl Sock {
    pub(crate) fn open(pci: &mut Pci, tsc_khz: u64) -> Option<Sock> {
        let Some(function) = virtio::find(pci, DeviceType::Socket, 0) else {
            probe!("error vsock=no_vsock_device");
            return None;
        };
        let transport = match ProbeTransport::new(pci, &function, None) {
            Ok(t) => t,
            Err(e) => {
                probe!("error vsock={e}");
                return None;
            }
        };
        let driver = match VirtIOSocket::<ProbeHal, ProbeTransport, RX_BUFFER>::new(transport) {
            Ok(d) => d,
            Err(_) => {
                probe!("error vsock=virtio_vsock_init");
                return None;
            }
        };
        probe!(
            "vsock_dev bdf={} guest_cid={}",
            function.df,
            driver.guest_cid()
        );
        Some(Sock {
            mgr: VsockConnectionManager::new_with_capacity(driver, CONN_BUFFER),
            tsc_khz,
        })
    }

    fn timeout_ticks(&self) -> u64 {
        TIMEOUT_MS * self.tsc_khz.max(1_000_000)
    }

    /// Connects to host port `port` from `local`; waits for the answer.
    fn connect(&mut self, port: u32, local: u32) -> Result<(), Failure> {
        self.mgr
            .connect(host(port), local)
            .map_err(Failure::Driver)?;
        let start = arch::rdtsc();
        loop {
            match self.mgr.poll().map_err(Failure::Driver)? {
                Some(e) if e.destination.port == local && e.source == host(port) => {
                    match e.event_type {
                        VsockEventType::Connected => return Ok(()),
                        VsockEventType::Disconnected { .. } => {
                            // The manager keeps a refused connection: forget it.
                            let _ = self.mgr.force_close(host(port), local);
                            return Err(Failure::Reset);
                        }
                        _ => {}
                    }
                }
                Some(_) => {}
                None => {
                    if arch::rdtsc() - start > self.timeout_ticks() {
                        let _ = self.mgr.force_close(host(port), local);
                        return Err(Failure::Timeout);
                    }
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// Shuts a connection down and waits for the device's RST.
    fn close(&mut self, port: u32, local: u32) -> Result<(), Failure> {
        self.mgr
            .shutdown(host(port), local)
            .map_err(Failure::Driver)?;
        let start = arch::rdtsc();
        loop {
            match self.mgr.poll().map_err(Failure::Driver)? {
                Some(e) if e.destination.port == local => {
                    if let VsockEventType::Disconnected { .. } = e.event_type {
                        // The manager forgets it once its buffer is empty.
                        let _ = self.mgr.force_close(host(port), local);
                        return Ok(());
                    }
                }
                Some(_) => {}
                None => {
                    if arch::rdtsc() - start > self.timeout_ticks() {
                        let _ = self.mgr.force_close(host(port), local);
                        return Err(Failure::Timeout);
                    }
                }
            }
        }
    }
}

/// One stream being sent (the pattern) and read back (checked).
struct Stream {
    peer: VsockAddr,
    local: u32,
    seed: u64,
    total: u64,
    sent: u64,
    received: u64,
    unacked: usize,
    first_bad: Option<u64>,
    failure: Option<Failure>,
}

impl Stream {
    fn done(&self) -> bool {
        self.failure.is_some() || self.received >= self.total
    }
}

/// Reads what connection `s` has buffered into `buf`, checks it against the pattern and
/// gives the device credit back as it goes.
fn drain_checked(mgr: &mut Manager, s: &mut Stream, buf: &mut [u8]) {
    loop {
        let n = match mgr.recv(s.peer, s.local, buf) {
            Ok(n) => n,
            Err(e) => {
                s.failure.get_or_insert(Failure::Driver(e));
                return;
            }
        };
        if n == 0 {
            return;
        }
        if let Some(bad) = check_disk_pattern(s.seed, s.received, &buf[..n]) {
            s.first_bad.get_or_insert(bad);
        }
        s.received += n as u64;
        s.unacked += n;
        if s.unacked >= CREDIT_UPDATE_AFTER {
            let _ = mgr.update_credit(s.peer, s.local);
            s.unacked = 0;
        }
    }
}

/// Sends and reads back every stream at once; returns the TSC ticks it took.
fn pump_streams(sock: &mut Sock, streams: &mut [Stream], chunk: usize) -> u64 {
    let mut out = vec![0u8; chunk];
    let mut inb = vec![0u8; RX_BUFFER];
    let start = arch::rdtsc();
    let mut last_progress = start;
    while !streams.iter().all(Stream::done) {
        let mut progress = false;
        for s in streams.iter_mut().filter(|s| !s.done() && s.sent < s.total) {
            let n = chunk.min((s.total - s.sent) as usize);
            fill_disk_pattern(s.seed, s.sent, &mut out[..n]);
            match sock.mgr.send(s.peer, s.local, &out[..n]) {
                Ok(()) => {
                    s.sent += n as u64;
                    progress = true;
                }
                Err(e) if insufficient(&e) => {}
                Err(e) => s.failure = Some(Failure::Driver(e)),
            }
        }
        // Everything the device has put in the rx queue.
        loop {
            let event = match sock.mgr.poll() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(_) => continue,
            };
            progress = true;
            let Some(s) = streams
                .iter_mut()
                .find(|s| s.local == event.destination.port && s.peer == event.source)
            else {
                continue;
            };
            match event.event_type {
                VsockEventType::Received { .. } => drain_checked(&mut sock.mgr, s, &mut inb),
                VsockEventType::Disconnected { reason } if !s.done() => {
                    drain_checked(&mut sock.mgr, s, &mut inb);
                    if !s.done() {
                        s.failure = Some(match reason {
                            DisconnectReason::Reset => Failure::Reset,
                            DisconnectReason::Shutdown => Failure::Shutdown,
                        });
                    }
                }
                _ => {}
            }
        }
        let now = arch::rdtsc();
        if progress {
            last_progress = now;
        } else if now - last_progress > sock.timeout_ticks() {
            for s in streams.iter_mut().filter(|s| !s.done()) {
                s.failure = Some(Failure::Timeout);
            }
        }
    }
    arch::rdtsc() - start
}

fn chunk_len(options: &VsockOptions) -> usize {
    (options.chunk_kib.clamp(1, u64::from(CONN_BUFFER) / 1024) * 1024) as usize
}

fn mib_s(bytes: u64, ticks: u64, tsc_khz: u64) -> u64 {
    vireo_cpu_bench::mib_per_s(bytes, ticks, tsc_khz * 1000)
}

fn us(ticks: u64, tsc_khz: u64) -> u64 {
    ticks * 1000 / tsc_khz.max(1)
}

/// `probe.run=vsock-echo`: `conns` connections to host port `port` at once, each sending
/// `mib` MiB of the pattern (seed + index) and checking the echo.
fn echo(sock: &mut Sock, options: &VsockOptions) {
    let total = options.mib * MIB;
    let mut streams = Vec::new();
    let mut connect_failures = 0;
    for i in 0..options.conns.max(1) {
        let local = FIRST_LOCAL_PORT + i as u32;
        match sock.connect(options.port, local) {
            Ok(()) => streams.push(Stream {
                peer: host(options.port),
                local,
                seed: options.seed + i as u64,
                total,
                sent: 0,
                received: 0,
                unacked: 0,
                first_bad: None,
                failure: None,
            }),
            Err(f) => {
                connect_failures += 1;
                probe!("error vsock_echo=connect_{} index={i}", f.name());
            }
        }
    }
    let ticks = pump_streams(sock, &mut streams, chunk_len(options));
    let mut closed = 0;
    for s in &streams {
        if sock.close(options.port, s.local).is_ok() {
            closed += 1;
        }
    }
    let bad = streams.iter().filter(|s| s.first_bad.is_some()).count();
    let failed = streams.iter().filter(|s| s.failure.is_some()).count();
    let bytes: u64 = streams.iter().map(|s| s.received).sum();
    let ok = connect_failures == 0
        && bad == 0
        && failed == 0
        && closed == streams.len()
        && bytes == total * options.conns.max(1) as u64;
    let failure = streams
        .iter()
        .find_map(|s| s.failure)
        .map_or("none", Failure::name);
    probe!(
        "vsock_echo conns={} bytes={} ok={} bad={} failed={} failure={} closed={} us={} mib_per_s={} chunk={}",
        streams.len(),
        bytes,
        u8::from(ok),
        bad,
        failed,
        failure,
        closed,
        us(ticks, sock.tsc_khz),
        mib_s(bytes, ticks, sock.tsc_khz),
        chunk_len(options),
    );
}

/// `probe.run=vsock-serve`: listens on guest port `port` and echoes every connection
/// until `conns` of them have ended (the host closes, or disconnects mid-stream).
fn serve(sock: &mut Sock, options: &VsockOptions) {
    sock.mgr.listen(options.port);
    probe!("vsock_serve listening port={}", options.port);
    let mut inb = vec![0u8; RX_BUFFER];
    // Bytes received but not yet sent back, per live connection.
    let mut live: Vec<(VsockAddr, Vec<u8>, u64)> = Vec::new();
    let mut ended = 0;
    let mut total = 0u64;
    while ended < options.conns.max(1) {
        // Echo what is pending, as far as the host's credit allows.
        for (peer, pending, _) in live.iter_mut() {
            if pending.is_empty() {
                continue;
            }
            let n = pending.len().min(chunk_len(options));
            match sock.mgr.send(*peer, options.port, &pending[..n]) {
                Ok(()) => {
                    pending.drain(..n);
                }
                Err(e) if insufficient(&e) => {}
                Err(_) => pending.clear(),
            }
        }
        let event = match sock.mgr.poll() {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(_) => continue,
        };
        if event.destination.port != options.port {
            continue;
        }
        let peer = event.source;
        match event.event_type {
            VsockEventType::ConnectionRequest => {
                live.push((peer, Vec::new(), 0));
            }
            VsockEventType::Received { .. } => {
                if let Some((_, pending, bytes)) = live.iter_mut().find(|(p, ..)| *p == peer) {
                    while let Ok(n) = sock.mgr.recv(peer, options.port, &mut inb) {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&inb[..n]);
                        *bytes += n as u64;
                    }
                    let _ = sock.mgr.update_credit(peer, options.port);
                }
            }
            VsockEventType::Disconnected { reason } => {
                if let Some(at) = live.iter().position(|(p, ..)| *p == peer) {
                    let (_, _, bytes) = live.swap_remove(at);
                    // A peer's SHUTDOWN leaves the connection to us to reset.
                    let _ = sock.mgr.force_close(peer, options.port);
                    total += bytes;
                    ended += 1;
                    probe!(
                        "vsock_serve_conn peer_port={} bytes={} reason={}",
                        peer.port,
                        bytes,
                        match reason {
                            DisconnectReason::Reset => "reset",
                            DisconnectReason::Shutdown => "shutdown",
                        }
                    );
                }
            }
            _ => {}
        }
    }
    probe!("vsock_serve done conns={ended} bytes={total} ok=1");
}

/// `probe.run=vsock-close-early`: sends half of `mib` MiB, then shuts down mid-stream
/// without reading the echo; then one more connection echoes 64 KiB, to show that the
/// device is still fine.
fn close_early(sock: &mut Sock, options: &VsockOptions) {
    let local = FIRST_LOCAL_PORT;
    let half = (options.mib * MIB / 2).max(1);
    let mut sent = 0u64;
    let mut out = vec![0u8; chunk_len(options)];
    let mut result = sock.connect(options.port, local);
    let start = arch::rdtsc();
    while result.is_ok() && sent < half {
        let n = out.len().min((half - sent) as usize);
        fill_disk_pattern(options.seed, sent, &mut out[..n]);
        match sock.mgr.send(host(options.port), local, &out[..n]) {
            Ok(()) => sent += n as u64,
            Err(e) if insufficient(&e) => {
                // Credit comes back as the host reads, and the host reads only while
                // its echo gets through: drop what is echoed, and say so (the device
                // learns the probe's fwd_cnt only from its packets).
                while let Ok(Some(_)) = sock.mgr.poll() {}
                let mut sink = [0u8; 4096];
                let mut dropped = 0;
                while let Ok(n) = sock.mgr.recv(host(options.port), local, &mut sink) {
                    if n == 0 {
                        break;
                    }
                    dropped += n;
                }
                if dropped > 0 {
                    let _ = sock.mgr.update_credit(host(options.port), local);
                }
                if arch::rdtsc() - start > sock.timeout_ticks() {
                    result = Err(Failure::Timeout);
                }
            }
            Err(e) => result = Err(Failure::Driver(e)),
        }
    }
    let closed = result
        .and_then(|()| sock.close(options.port, local))
        .is_ok();
    let mut after = Stream {
        peer: host(options.port),
        local: local + 1,
        seed: options.seed + 1,
        total: 64 << 10,
        sent: 0,
        received: 0,
        unacked: 0,
        first_bad: None,
        failure: None,
    };
    let after_ok = sock.connect(options.port, after.local).is_ok() && {
        pump_streams(sock, core::slice::from_mut(&mut after), chunk_len(options));
        after.failure.is_none()
            && after.first_bad.is_none()
            && sock.close(options.port, after.local).is_ok()
    };
    probe!(
        "vsock_close_early sent={sent} closed={} after_ok={} ok={}",
        u8::from(closed),
        u8::from(after_ok),
        u8::from(closed && after_ok && sent == half)
    );
}

/// `probe.run=vsock-cycles`: one warm-up cycle, a pause (the host counts the engine's
/// fds), `cycles` connect/close cycles to host port `port`, then `IDLE` for ever.
fn cycles(sock: &mut Sock, options: &VsockOptions) -> ! {
    let one = |sock: &mut Sock, i: u64| -> Result<(), Failure> {
        let local = FIRST_LOCAL_PORT + (i % 20_000) as u32;
        sock.connect(options.port, local)?;
        sock.close(options.port, local)
    };
    let warm = one(sock, 0).is_ok();
    probe!("vsock_cycles_warm ok={}", u8::from(warm));
    let pause_end = arch::rdtsc() + 2000 * sock.tsc_khz.max(1_000_000);
    while arch::rdtsc() < pause_end {
        let _ = sock.mgr.poll();
    }
    let start = arch::rdtsc();
    let mut failed = 0;
    let mut first_failure = "none";
    for i in 1..=options.cycles {
        if let Err(f) = one(sock, i) {
            failed += 1;
            if first_failure == "none" {
                first_failure = f.name();
            }
        }
    }
    let ticks = arch::rdtsc() - start;
    probe!(
        "vsock_cycles cycles={} failed={failed} failure={first_failure} us={} per_cycle_us={} ok={}",
        options.cycles,
        us(ticks, sock.tsc_khz),
        us(ticks, sock.tsc_khz) / options.cycles.max(1),
        u8::from(warm && failed == 0),
    );
    // The host counts the engine's fds now that every connection is closed; the device
    // stays in use (dropping the driver would reset it).
    probe!("IDLE");
    loop {
        let _ = sock.mgr.poll();
    }
}

/// `probe.run=vsock-refused`: a connection to host port `port`, where nobody listens.
fn refused(sock: &mut Sock, options: &VsockOptions) {
    let result = sock.connect(options.port, FIRST_LOCAL_PORT);
    let (reset, name) = match result {
        Ok(()) => (false, "connected"),
        Err(f) => (matches!(f, Failure::Reset), f.name()),
    };
    probe!(
        "vsock_refused port={} result={name} reset={} ok={}",
        options.port,
        u8::from(reset),
        u8::from(reset)
    );
}

/// `probe.run=vsock-bench`: `bench_mib` MiB guest→host (to a sink at `port`, which
/// answers one byte when it has it all), host→guest (from a source at `port + 1`), then
/// `pings` 64-byte round trips (an echo at `port + 2`).
fn bench(sock: &mut Sock, options: &VsockOptions) {
    let bytes = options.bench_mib * MIB;
    let chunk = chunk_len(options);
    let khz = sock.tsc_khz;
    // Guest → host.
    let mut g2h_ticks = 0;
    let mut ok = sock.connect(options.port, FIRST_LOCAL_PORT).is_ok();
    if ok {
        let out = vec![0x5au8; chunk];
        let start = arch::rdtsc();
        let mut sent = 0u64;
        let mut acked = false;
        let mut last = start;
        while !acked && ok {
            if sent < bytes {
                let n = chunk.min((bytes - sent) as usize);
                match sock
                    .mgr
                    .send(host(options.port), FIRST_LOCAL_PORT, &out[..n])
                {
                    Ok(()) => {
                        sent += n as u64;
                        last = arch::rdtsc();
                    }
                    Err(e) if insufficient(&e) => {}
                    Err(_) => ok = false,
                }
            }
            if sent < bytes {
                // Credit updates: take everything the device put in the rx queue.
                while let Ok(Some(_)) = sock.mgr.poll() {}
            } else if let Ok(Some(e)) = sock.mgr.poll() {
                acked = matches!(e.event_type, VsockEventType::Received { .. });
            }
            if arch::rdtsc() - last > sock.timeout_ticks() {
                ok = false;
            }
        }
        g2h_ticks = arch::rdtsc() - start;
        ok &= sock.close(options.port, FIRST_LOCAL_PORT).is_ok();
    }
    // Host → guest.
    let mut h2g_ticks = 0;
    let local = FIRST_LOCAL_PORT + 1;
    if ok && sock.connect(options.port + 1, local).is_ok() {
        let mut s = Stream {
            peer: host(options.port + 1),
            local,
            seed: 0,
            total: bytes,
            sent: bytes,
            received: 0,
            unacked: 0,
            first_bad: None,
            failure: None,
        };
        let mut inb = vec![0u8; RX_BUFFER];
        let start = arch::rdtsc();
        let mut last = start;
        while s.received < bytes && s.failure.is_none() {
            match sock.mgr.poll() {
                Ok(Some(e)) if matches!(e.event_type, VsockEventType::Received { .. }) => {
                    let before = s.received;
                    // The source sends zeros: count, do not check.
                    while let Ok(n) = sock.mgr.recv(s.peer, s.local, &mut inb) {
                        if n == 0 {
                            break;
                        }
                        s.received += n as u64;
                        s.unacked += n;
                    }
                    if s.unacked >= CREDIT_UPDATE_AFTER {
                        let _ = sock.mgr.update_credit(s.peer, s.local);
                        s.unacked = 0;
                    }
                    if s.received > before {
                        last = arch::rdtsc();
                    }
                }
                Ok(Some(e)) if matches!(e.event_type, VsockEventType::Disconnected { .. }) => {
                    s.failure = Some(Failure::Reset)
                }
                _ => {
                    if arch::rdtsc() - last > sock.timeout_ticks() {
                        s.failure = Some(Failure::Timeout);
                    }
                }
            }
        }
        h2g_ticks = arch::rdtsc() - start;
        ok &= s.failure.is_none();
        let _ = sock.close(options.port + 1, local);
    } else {
        ok = false;
    }
    // 64-byte round trips.
    let local = FIRST_LOCAL_PORT + 2;
    let mut rtts: Vec<u64> = Vec::with_capacity(options.pings);
    if ok && sock.connect(options.port + 2, local).is_ok() {
        let ping = [0xa5u8; 64];
        let mut inb = [0u8; 64];
        for _ in 0..options.pings {
            let start = arch::rdtsc();
            if sock.mgr.send(host(options.port + 2), local, &ping).is_err() {
                ok = false;
                break;
            }
            let mut got = 0;
            while got < 64 {
                match sock.mgr.poll() {
                    Ok(Some(_)) => {
                        while let Ok(n) = sock.mgr.recv(host(options.port + 2), local, &mut inb) {
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                    }
                    _ => {
                        if arch::rdtsc() - start > sock.timeout_ticks() {
                            break;
                        }
                    }
                }
            }
            if got < 64 {
                ok = false;
                break;
            }
            rtts.push(arch::rdtsc() - start);
            // The echo's credit: tell the host once in a while (64 bytes at a time).
            if rtts.len().is_multiple_of(1024) {
                let _ = sock.mgr.update_credit(host(options.port + 2), local);
            }
        }
        let _ = sock.close(options.port + 2, local);
    } else {
        ok = false;
    }
    rtts.sort_unstable();
    let pct = |p: usize| -> u64 {
        if rtts.is_empty() {
            0
        } else {
            let t = rtts[(rtts.len() - 1) * p / 100];
            t * 1_000_000 / khz.max(1) // ns
        }
    };
    probe!(
        "vsock_bench bytes={bytes} chunk={chunk} g2h_mib_s={} h2g_mib_s={} rtt_p50_ns={} rtt_p99_ns={} pings={} ok={}",
        mib_s(bytes, g2h_ticks, khz),
        mib_s(bytes, h2g_ticks, khz),
        pct(50),
        pct(99),
        rtts.len(),
        u8::from(ok && rtts.len() == options.pings),
    );
}

/// Runs vsock test `test` on the enumerated bus.
pub fn run(test: Test, pci: &mut Pci, options: &VsockOptions, tsc_khz: u64) {
    let Some(mut sock) = Sock::open(pci, tsc_khz) else {
        return;
    };
    match test {
        Test::Echo => echo(&mut sock, options),
        Test::Serve => serve(&mut sock, options),
        Test::CloseEarly => close_early(&mut sock, options),
        Test::Cycles => cycles(&mut sock, options),
        Test::Refused => refused(&mut sock, options),
        Test::Bench => bench(&mut sock, options),
    }
}
