//! The virtio-net tests (`probe.run=net-*`): `virtio-drivers`' raw net driver under
//! `smoltcp`, polled (no interrupts).
//!
//! - `net-dhcp`: a DHCP lease (passt's DHCP server); one `net_dhcp` line.
//! - `net-http`: the lease, then an HTTP/1.0 GET of `http://<gateway>:<net_port><net_path>`
//!   (passt hands connections to the gateway's address to the host's loopback); the body
//!   is hashed with the SHA-256 of `vireo-cpu-bench`; one `net_http` line.
//! - `net-bench`: the lease, then `net_mib` MiB sent over TCP to the gateway's
//!   `net_port` (a sink on the host); one `net_bench` line with the throughput.
//!
//! Every notify is an exit (~30 µs under PVM), so receive buffers stay posted (64 of
//! them, each holding a whole frame: the driver does not negotiate MRG_RXBUF), up to 32
//! frames are in flight on transmit (the crate's non-blocking API), and EVENT_IDX lets
//! the device ask for a kick only when it has run dry. The MTU defaults to the 65520
//! passt's DHCP announces, so a TCP segment is up to 64 KiB: few frames, few exits.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::Write;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::DeviceType;

use crate::arch;
use crate::pci::Pci;
use crate::probe;
use crate::virtio::{self, ProbeHal, ProbeTransport};

/// Ring size the probe uses (the device may offer more).
const QUEUE_SIZE: usize = 64;
/// Receive buffers posted at all times (one descriptor each).
const RX_BUFFERS: usize = QUEUE_SIZE;
/// Frames in flight on transmit.
const TX_SLOTS: usize = 32;
/// `virtio_net_hdr_v1` (VERSION_1).
const NET_HDR_LEN: usize = 12;
const ETH_HLEN: usize = 14;
/// No progress for this long: the test has failed.
const TIMEOUT_MS: u64 = 10_000;
/// TCP socket buffers: a window of a few 64 KiB segments.
const TCP_BUFFER: usize = 256 << 10;

/// What the `probe.net_*` words set.
#[derive(Clone, Copy, Debug)]
pub struct NetOptions<'a> {
    /// Host port of the HTTP server or the sink (through the gateway address).
    pub port: u16,
    /// The HTTP path, starting with '/'.
    pub path: &'a str,
    /// MiB sent by `net-bench`.
    pub mib: u64,
    /// IP MTU (the frame is 14 bytes more).
    pub mtu: usize,
}

impl Default for NetOptions<'_> {
    fn default() -> Self {
        Self {
            port: 8080,
            path: "/",
            mib: 64,
            mtu: 65520,
        }
    }
}

/// Which net test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetTest {
    Dhcp,
    Http,
    Bench,
}

type Raw = VirtIONetRaw<ProbeHal, ProbeTransport, QUEUE_SIZE>;

/// The driver and its buffers, shared by the device and its tokens.
struct Inner {
    raw: Raw,
    /// Receive buffer per descriptor token.
    rx: Vec<Option<Vec<u8>>>,
    /// Transmit buffers, their frame length, and the token of the slot in flight.
    tx: Vec<(Vec<u8>, usize, Option<u16>)>,
    frame_len: usize,
}

impl Inner {
    /// Takes back every transmitted frame the device has used.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(slot) = self.tx.iter_mut().find(|s| s.2 == Some(token)) else {
                break;
            };
            // SAFETY: the slice is the one given to `transmit_begin` for this token.
            let _ = unsafe { self.raw.transmit_complete(token, &slot.0[..slot.1]) };
            slot.2 = None;
        }
    }

    fn free_tx_slot(&mut self) -> Option<usize> {
        self.reclaim_tx();
        self.tx.iter().position(|s| s.2.is_none())
    }
}

/// smoltcp's view of the card.
struct ProbeNet {
    inner: RefCell<Inner>,
    mtu: usize,
}

struct RxToken<'a> {
    inner: &'a RefCell<Inner>,
    buf: Vec<u8>,
    len: usize,
}

struct TxToken<'a> {
    inner: &'a RefCell<Inner>,
    slot: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(mut self, f: F) -> R {
        let result = f(&self.buf[NET_HDR_LEN..NET_HDR_LEN + self.len]);
        // Post the buffer again at once: the device must never run dry.
        let mut inner = self.inner.borrow_mut();
        let buf = core::mem::take(&mut self.buf);
        post_rx(&mut inner, buf);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut inner = self.inner.borrow_mut();
        let total = NET_HDR_LEN + len.min(inner.frame_len);
        let inner = &mut *inner;
        let slot = &mut inner.tx[self.slot];
        let _ = inner.raw.fill_buffer_header(&mut slot.0);
        let result = f(&mut slot.0[NET_HDR_LEN..total]);
        slot.1 = total;
        // SAFETY: the slot's buffer is neither moved nor touched until `reclaim_tx`
        // sees its token used.
        match unsafe { inner.raw.transmit_begin(&slot.0[..total]) } {
            Ok(token) => slot.2 = Some(token),
            Err(_) => probe!("error net=transmit_begin"),
        }
        result
    }
}

fn post_rx(inner: &mut Inner, mut buf: Vec<u8>) {
    // SAFETY: the buffer is kept in `rx` under its token and not touched until the
    // device has used it.
    match unsafe { inner.raw.receive_begin(&mut buf) } {
        Ok(token) => {
            if let Some(place) = inner.rx.get_mut(usize::from(token)) {
                *place = Some(buf);
            }
        }
        Err(_) => probe!("error net=receive_begin"),
    }
}

impl Device for ProbeNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let mut inner = self.inner.borrow_mut();
        let slot = inner.free_tx_slot()?;
        let token = inner.raw.poll_receive()?;
        let mut buf = inner.rx.get_mut(usize::from(token))?.take()?;
        // SAFETY: `buf` is the buffer given to `receive_begin` for this token.
        let len = match unsafe { inner.raw.receive_complete(token, &mut buf) } {
            Ok((_, len)) => len,
            Err(_) => {
                post_rx(&mut inner, buf);
                return None;
            }
        };
        drop(inner);
        Some((
            RxToken {
                inner: &self.inner,
                buf,
                len,
            },
            TxToken {
                inner: &self.inner,
                slot,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        let slot = self.inner.borrow_mut().free_tx_slot()?;
        Some(TxToken {
            inner: &self.inner,
            slot,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETH_HLEN;
        caps
    }
}

/// A clock for smoltcp from the TSC.
struct Clock {
    ticks_per_us: u64,
}

impl Clock {
    fn new(tsc_khz: u64) -> Self {
        Self {
            ticks_per_us: (if tsc_khz == 0 { 3_000_000 } else { tsc_khz } / 1000).max(1),
        }
    }

    fn now_us(&self) -> u64 {
        arch::rdtsc() / self.ticks_per_us
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.now_us() as i64)
    }
}

/// The lease passt gave.
struct Lease {
    gateway: Ipv4Address,
}

/// Runs a net test on the first virtio-net device.
pub fn run(pci: &mut Pci, options: &NetOptions, tsc_khz: u64, test: NetTest) {
    let Some(function) = virtio::find(pci, DeviceType::Network, 0) else {
        probe!("error net=no_net_device");
        return;
    };
    let transport = match ProbeTransport::new(pci, &function, None) {
        Ok(t) => t,
        Err(e) => {
            probe!("error net={e}");
            return;
        }
    };
    let raw = match Raw::new(transport) {
        Ok(raw) => raw,
        Err(_) => {
            probe!("error net=virtio_net_init");
            return;
        }
    };
    let mtu = options.mtu.clamp(576, 65520);
    let frame_len = mtu + ETH_HLEN;
    let mac = raw.mac_address();
    let mut inner = Inner {
        raw,
        rx: (0..RX_BUFFERS).map(|_| None).collect(),
        tx: (0..TX_SLOTS)
            .map(|_| (vec![0u8; NET_HDR_LEN + frame_len], 0, None))
            .collect(),
        frame_len,
    };
    for _ in 0..RX_BUFFERS {
        post_rx(&mut inner, vec![0u8; NET_HDR_LEN + frame_len]);
    }
    probe!(
        "net_dev bdf={} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} queue_size={QUEUE_SIZE} mtu={mtu}",
        function.df,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let mut device = ProbeNet {
        inner: RefCell::new(inner),
        mtu,
    };
    let clock = Clock::new(tsc_khz);
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = arch::rdtsc();
    let mut iface = Interface::new(config, &mut device, clock.now());
    let mut sockets = SocketSet::new(Vec::new());

    let Some(lease) = dhcp(&mut iface, &mut device, &mut sockets, &clock) else {
        probe!("net_dhcp ok=0 error=timeout");
        return;
    };
    match test {
        NetTest::Dhcp => {}
        NetTest::Http => http_get(
            &mut iface,
            &mut device,
            &mut sockets,
            &clock,
            &lease,
            options,
        ),
        NetTest::Bench => bench(
            &mut iface,
            &mut device,
            &mut sockets,
            &clock,
            &lease,
            options,
        ),
    }
}

fn dhcp(
    iface: &mut Interface,
    device: &mut ProbeNet,
    sockets: &mut SocketSet,
    clock: &Clock,
) -> Option<Lease> {
    let handle = sockets.add(dhcpv4::Socket::new());
    let start = clock.now_us();
    loop {
        iface.poll(clock.now(), device, sockets);
        if let Some(dhcpv4::Event::Configured(config)) =
            sockets.get_mut::<dhcpv4::Socket>(handle).poll()
        {
            let address = IpCidr::Ipv4(config.address);
            iface.update_ip_addrs(|addrs| {
                addrs.clear();
                let _ = addrs.push(address);
            });
            let gateway = config.router?;
            let _ = iface.routes_mut().add_default_ipv4_route(gateway);
            let mut dns = alloc::string::String::new();
            for (i, server) in config.dns_servers.iter().enumerate() {
                let _ = write!(dns, "{}{server}", if i == 0 { "" } else { "," });
            }
            if dns.is_empty() {
                dns.push_str("none");
            }
            probe!(
                "net_dhcp ok=1 address={address} gateway={gateway} dns={dns} us={}",
                clock.now_us() - start
            );
            return Some(Lease { gateway });
        }
        if clock.now_us() - start > TIMEOUT_MS * 1000 {
            return None;
        }
    }
}

/// A connected TCP socket to the gateway's `port`, or None after the timeout.
fn connect(
    iface: &mut Interface,
    device: &mut ProbeNet,
    sockets: &mut SocketSet,
    clock: &Clock,
    lease: &Lease,
    port: u16,
) -> Option<smoltcp::iface::SocketHandle> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
    );
    // Acknowledge at once: smoltcp's default 10 ms delayed ACK throttles a sender
    // that waits for acknowledgements to open its window (passt does).
    socket.set_ack_delay(None);
    socket.set_nagle_enabled(false);
    let handle = sockets.add(socket);
    let local_port = 49152 + (arch::rdtsc() % 16384) as u16;
    if sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), (lease.gateway, port), local_port)
        .is_err()
    {
        probe!("error net=connect_refused_locally");
        return None;
    }
    let start = clock.now_us();
    loop {
        iface.poll(clock.now(), device, sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if socket.may_send() {
            return Some(handle);
        }
        if !socket.is_open() || clock.now_us() - start > TIMEOUT_MS * 1000 {
            probe!("error net=connect_failed state={}", socket.state());
            return None;
        }
    }
}

fn http_get(
    iface: &mut Interface,
    device: &mut ProbeNet,
    sockets: &mut SocketSet,
    clock: &Clock,
    lease: &Lease,
    options: &NetOptions,
) {
    let start = clock.now_us();
    let Some(handle) = connect(iface, device, sockets, clock, lease, options.port) else {
        probe!("net_http ok=0 error=connect");
        return;
    };
    let mut request = alloc::string::String::new();
    let _ = write!(
        request,
        "GET {} HTTP/1.0\r\nHost: {}:{}\r\nUser-Agent: vireo-probe\r\n\r\n",
        options.path, lease.gateway, options.port
    );
    let mut sent = 0;
    let mut response: Vec<u8> = Vec::with_capacity(8 << 20);
    let mut last_progress = clock.now_us();
    let mut timed_out = false;
    loop {
        iface.poll(clock.now(), device, sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        let mut progress = false;
        if sent < request.len() && socket.can_send() {
            if let Ok(n) = socket.send_slice(&request.as_bytes()[sent..]) {
                sent += n;
                progress |= n > 0;
            }
        }
        while socket.can_recv() {
            let got = socket.recv(|data| {
                response.extend_from_slice(data);
                (data.len(), data.len())
            });
            match got {
                Ok(n) if n > 0 => progress = true,
                _ => break,
            }
        }
        if !socket.may_recv() && sent == request.len() {
            // HTTP/1.0: the server closes after the body.
            socket.close();
            break;
        }
        let now = clock.now_us();
        if progress {
            last_progress = now;
        } else if now - last_progress > TIMEOUT_MS * 1000 {
            timed_out = true;
            socket.abort();
            break;
        }
    }
    let us = (clock.now_us() - start).max(1);
    // Let the FIN/ACK go out.
    for _ in 0..100 {
        iface.poll(clock.now(), device, sockets);
    }
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        probe!(
            "net_http ok=0 error={} received={}",
            if timed_out { "timeout" } else { "no_header" },
            response.len()
        );
        return;
    };
    let head = core::str::from_utf8(&response[..split]).unwrap_or("");
    let status: u32 = head
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_length: Option<usize> = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    let body = &response[split + 4..];
    let digest = vireo_cpu_bench::sha256(body);
    let hex = vireo_cpu_bench::to_hex(&digest);
    let complete = content_length.is_none_or(|len| len == body.len());
    probe!(
        "net_http ok={} status={status} bytes={} content_length={} digest={} mib_per_s={} us={us} timeout={}",
        u8::from(status == 200 && complete && !timed_out),
        body.len(),
        content_length.map_or(-1, |l| l as i64),
        core::str::from_utf8(&hex).unwrap_or_default(),
        mib_per_s(body.len() as u64, us),
        u8::from(timed_out),
    );
}

fn bench(
    iface: &mut Interface,
    device: &mut ProbeNet,
    sockets: &mut SocketSet,
    clock: &Clock,
    lease: &Lease,
    options: &NetOptions,
) {
    let Some(handle) = connect(iface, device, sockets, clock, lease, options.port) else {
        probe!("net_bench ok=0 error=connect");
        return;
    };
    let total = options.mib * vireo_cpu_bench::MIB;
    let mut chunk = vec![0u8; 64 << 10];
    vireo_cpu_bench::fill_pattern(&mut chunk, 0);
    let start = clock.now_us();
    let mut sent = 0u64;
    let mut last_progress = start;
    let mut last_queued = 0;
    let mut timed_out = false;
    loop {
        iface.poll(clock.now(), device, sockets);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        let mut progress = false;
        while sent < total && socket.can_send() {
            let want = (total - sent).min(chunk.len() as u64) as usize;
            match socket.send_slice(&chunk[..want]) {
                Ok(n) if n > 0 => {
                    sent += n as u64;
                    progress = true;
                }
                _ => break,
            }
        }
        // Done when every byte is acknowledged.
        if sent == total && socket.send_queue() == 0 {
            socket.close();
            break;
        }
        if !socket.is_open() {
            break;
        }
        let now = clock.now_us();
        let queued = socket.send_queue();
        if progress || queued < last_queued {
            last_progress = now;
        }
        last_queued = queued;
        if now - last_progress > TIMEOUT_MS * 1000 {
            timed_out = true;
            socket.abort();
            break;
        }
    }
    let us = (clock.now_us() - start).max(1);
    for _ in 0..1000 {
        iface.poll(clock.now(), device, sockets);
    }
    let acked = sent - sockets.get::<tcp::Socket>(handle).send_queue() as u64;
    probe!(
        "net_bench ok={} bytes={acked} mib_per_s={} us={us} mtu={} timeout={}",
        u8::from(acked == total && !timed_out),
        mib_per_s(acked, us),
        options.mtu,
        u8::from(timed_out),
    );
}

fn mib_per_s(bytes: u64, us: u64) -> u64 {
    bytes * 1_000_000 / us.max(1) / vireo_cpu_bench::MIB
}
