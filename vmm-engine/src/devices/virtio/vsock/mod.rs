//! virtio-vsock (virtio 1.2, 5.10 "Socket Device"), hybrid: the device lives in the
//! engine and the host side is a Unix socket, as in Firecracker and Cloud Hypervisor
//! (no vhost-vsock, no root). Stream sockets only; other types get RST.
//!
//! - `packet`: the 44-byte header and tx/rx packets over descriptor chains.
//! - `connection`: one connection's state and credit (both directions).
//! - `muxer`: the host side: the listener at PATH (`CONNECT <port>\n`), `PATH_<port>`
//!   for guest-initiated connections, timeouts, caps.
//! - `worker`: the queues (rx 0, tx 1, event 2) and the epoll glue.
//! - `config`: `--vsock cid=N,socket=PATH` and the listener bound before KVM is opened.
//!
//! The host side keeps a `VsockHandle` (from `Vsock::handle`), which can send the
//! driver a transport reset event (after a restore, the connections are gone).

pub mod config;
pub mod connection;
pub mod muxer;
pub mod packet;
pub mod worker;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{kick_each, Worker};
use super::{
    ActivateError, ActiveQueue, DeviceState, Interrupt, SaveError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
pub use config::{VsockConfig, VsockConfigError, VsockListener};
use muxer::Muxer;
use worker::VsockWorker;

/// rx, tx and event queues.
const QUEUE_SIZES: &[u16] = &[256, 256, 64];
/// `struct virtio_vsock_config` (5.10.4): `le64 guest_cid`.
const CONFIG_GUEST_CID: usize = 0;
const CONFIG_SIZE: usize = 8;

/// Errors of the host-side API.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("the guest's vsock driver is not running")]
    NotActive,
    #[error("cannot signal the vsock device: {0}")]
    Signal(#[source] std::io::Error),
}

/// What the device and its handles share.
pub struct Shared {
    /// Written by the host to make the worker send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
    reset_request: EventFd,
    active: AtomicBool,
    /// Transport reset events the driver was given.
    resets_delivered: AtomicU64,
}

impl Shared {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Shared {
            reset_request: EventFd::new(libc::EFD_NONBLOCK)?,
            active: AtomicBool::new(false),
            resets_delivered: AtomicU64::new(0),
        }))
    }
}

/// The host side of a vsock device: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct VsockHandle {
    shared: Arc<Shared>,
}

impl VsockHandle {
    /// Tells the driver its connections are gone (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on
    /// the event queue), closing the host side of every connection. Delivered as soon
    /// as the driver has an event buffer posted.
    pub fn send_transport_reset(&self) -> Result<(), VsockError> {
        if !self.shared.active.load(Ordering::SeqCst) {
            return Err(VsockError::NotActive);
        }
        self.shared
            .reset_request
            .write(1)
            .map_err(VsockError::Signal)
    }

    /// How many transport reset events reached the driver.
    pub fn resets_delivered(&self) -> u64 {
        self.shared.resets_delivered.load(Ordering::SeqCst)
    }
}

/// The socket device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// The listening socket; each activation's worker gets a duplicate of it, so
    /// host clients queue in its backlog while the driver is not running.
    listener: UnixListener,
    shared: Arc<Shared>,
    worker: Option<Worker<VsockWorker>>,
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side is `listener` (bound at `uds_path`).
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> std::io::Result<Self> {
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            shared: Shared::new()?,
            worker: None,
        })
    }

    pub fn handle(&self) -> VsockHandle {
        VsockHandle {
            shared: self.shared.clone(),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        // No VIRTIO_VSOCK_F_SEQPACKET (stream only).
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *byte = if (CONFIG_GUEST_CID..CONFIG_SIZE).contains(&at) {
                config[at - CONFIG_GUEST_CID]
            } else {
                0
            };
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                needed: QUEUE_SIZES.len(),
            });
        }
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let muxer =
            Muxer::new(self.guest_cid, &self.uds_path, listener).map_err(ActivateError::Worker)?;
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), Some(ev)) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                got: 0,
                needed: QUEUE_SIZES.len(),
            });
        };
        let handler = VsockWorker {
            mem,
            interrupt,
            rxq: rx.queue,
            txq: tx.queue,
            evq: ev.queue,
            muxer,
            shared: self.shared.clone(),
            event_pending: false,
            scratch: Vec::new(),
            bad_packets: 0,
        };
        let notifiers = vec![rx.notify, tx.notify, ev.notify];
        self.worker =
            Some(Worker::spawn("virtio-vsock", notifiers, handler).map_err(ActivateError::Worker)?);
        self.shared.active.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        self.shared.active.store(false, Ordering::SeqCst);
        // Stopping the worker drops the muxer: every connection's socket closes.
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    /// Every packet is handled whole when its kick comes (tx), and rx and event buffers
    /// are popped only when there is something to put in them (an rx buffer popped for
    /// nothing is put back), so the device holds no buffer between kicks: the queue
    /// positions are the queues' whole state. Connections are not saved: their host
    /// ends are this process's sockets.
    fn save(&mut self) -> Result<DeviceState, SaveError> {
        self.shared.active.store(false, Ordering::SeqCst);
        let handler = super::worker::stop_for_save(&mut self.worker)?;
        let mut state = DeviceState::queues_only([
            (worker::RX_QUEUE, &handler.rxq),
            (worker::TX_QUEUE, &handler.txq),
            (worker::EVENT_QUEUE, &handler.evq),
        ]);
        state.device = serde_json::to_value(VsockState {
            guest_cid: self.guest_cid,
        })
        .map_err(|e| SaveError::Device(format!("virtio-vsock state: {e}")))?;
        Ok(state)
    }

    /// Activates, then sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio 1.2, 5.10.6.6):
    /// the guest's connections ended with the process that saved them, and the event
    /// makes the driver drop them and read the guest CID again. The event buffer the
    /// driver posted before the save is still available in the event queue (never
    /// popped, see `save`), so the event is delivered at once.
    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        state: &serde_json::Value,
    ) -> Result<(), ActivateError> {
        let saved = VsockState::deserialize(state)
            .map_err(|e| ActivateError::BadState(format!("virtio-vsock: {e}")))?;
        if saved.guest_cid != self.guest_cid {
            // Allowed: the driver reads the CID again after the reset event.
            tracing::info!(
                "virtio-vsock: guest CID {} on restore (was {})",
                self.guest_cid,
                saved.guest_cid
            );
        }
        kick_each(&queues).map_err(ActivateError::Worker)?;
        self.activate(mem, interrupt, queues, acked_features)?;
        self.shared
            .reset_request
            .write(1)
            .map_err(ActivateError::Worker)
    }
}

/// What a saved vsock device keeps besides its queues.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockState {
    /// The CID the guest knew when it was saved.
    guest_cid: u64,
}

#[cfg(test)]
mod tests {
    use super::packet::*;
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Address, Bytes, GuestAddress};

    const CID: u64 = 3;
    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    /// The driver's side of three queues in one guest memory, built with virtio-queue's
    /// mock: rx buffers are posted up front, tx packets are added one by one.
    struct Driver<'a> {
        mem: &'a GuestMemoryMmap,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        ev: MockSplitQueue<'a, GuestMemoryMmap>,
        tx_next: u16,
        tx_buf: u64,
        rx_seen: u16,
    }

    const RX_BUFS: u64 = 0x10_0000;
    const RX_BUF_LEN: u32 = 4096;
    const TX_BUFS: u64 = 0x20_0000;
    const EV_BUF: u64 = 0x30_0000;

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Self {
            Self::with_rx_buffers(mem, 8)
        }

        /// The driver with `rx_buffers` rx buffers posted (more come with `post_rx`).
        fn with_rx_buffers(mem: &'a GuestMemoryMmap, rx_buffers: u16) -> Self {
            let rx = MockSplitQueue::create(mem, GuestAddress(0), 16);
            let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
            let ev = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
            let descs: Vec<RawDescriptor> = (0..u64::from(rx_buffers))
                .map(|i| {
                    RawDescriptor::from(SplitDescriptor::new(
                        RX_BUFS + i * u64::from(RX_BUF_LEN),
                        RX_BUF_LEN,
                        WRITE,
                        0,
                    ))
                })
                .collect();
            if !descs.is_empty() {
                rx.add_desc_chains(&descs, 0).unwrap();
            }
            Driver {
                mem,
                rx,
                tx,
                ev,
                tx_next: 0,
                tx_buf: TX_BUFS,
                rx_seen: 0,
            }
        }

        fn queues(&self) -> Vec<Queue> {
            [&self.rx, &self.tx, &self.ev]
                .iter()
                .map(|m| {
                    let mut q: Queue = m.create_queue().unwrap();
                    q.set_ready(true);
                    q
                })
                .collect()
        }

        /// Adds a tx packet (header and payload in two descriptors, as virtio-drivers does).
        fn send(&mut self, header: Header, payload: &[u8]) {
            let hdr_addr = self.tx_buf;
            let data_addr = hdr_addr + HDR_LEN as u64;
            self.tx_buf += 0x1000;
            self.mem
                .write_slice(&header.to_bytes(), GuestAddress(hdr_addr))
                .unwrap();
            self.mem
                .write_slice(payload, GuestAddress(data_addr))
                .unwrap();
            let descs = [
                RawDescriptor::from(SplitDescriptor::new(
                    hdr_addr,
                    HDR_LEN as u32,
                    NEXT,
                    self.tx_next + 1,
                )),
                RawDescriptor::from(SplitDescriptor::new(data_addr, payload.len() as u32, 0, 0)),
            ];
            self.tx.add_desc_chains(&descs, self.tx_next).unwrap();
            self.tx_next += 2;
        }

        /// The rx packets the device published since the last call.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            let used_idx: u16 = self
                .mem
                .read_obj(self.rx.used_addr().unchecked_add(2))
                .unwrap();
            let mut out = Vec::new();
            while self.rx_seen != used_idx {
                let at = self
                    .rx
                    .used_addr()
                    .unchecked_add(4 + 8 * u64::from(self.rx_seen % 16));
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
                let addr = RX_BUFS + u64::from(id) * u64::from(RX_BUF_LEN);
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let h = Header::from_bytes(&raw);
                let mut payload = vec![0u8; len as usize - HDR_LEN];
                self.mem
                    .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                out.push((h, payload));
                self.rx_seen += 1;
            }
            out
        }

        /// Posts rx buffers `first..first + n` (descriptor i is buffer i).
        fn post_rx(&self, first: u16, n: u16) {
            let descs: Vec<RawDescriptor> = (first..first + n)
                .map(|i| {
                    RawDescriptor::from(SplitDescriptor::new(
                        RX_BUFS + u64::from(i) * u64::from(RX_BUF_LEN),
                        RX_BUF_LEN,
                        WRITE,
                        0,
                    ))
                })
                .collect();
            self.rx.add_desc_chains(&descs, first).unwrap();
        }

        fn tx_used(&self) -> u16 {
            self.mem
                .read_obj(self.tx.used_addr().unchecked_add(2))
                .unwrap()
        }

        fn post_event_buffer(&self) {
            let d = RawDescriptor::from(SplitDescriptor::new(EV_BUF, 8, WRITE, 0));
            self.ev.add_desc_chains(&[d], 0).unwrap();
        }
    }

    fn guest(op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: VMADDR_CID_HOST,
            src_port,
            dst_port,
            len: 0,
            type_: VIRTIO_VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("vireo-vsock-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn config_space_holds_the_cid_little_endian() {
        let dir = TempDir::new("cfg");
        let path = dir.0.join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let dev = Vsock::new(0x1_0000_0005, path, l).unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1_0000_0005);
        let mut hi = [0u8; 4];
        dev.read_config(4, &mut hi);
        assert_eq!(u32::from_le_bytes(hi), 1);
        let mut past = [0xffu8; 4];
        dev.read_config(8, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(dev.device_type(), 19);
        assert_eq!(
            dev.device_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
        );
    }

    /// Through the worker thread and the mock driver: a guest connects to a host
    /// listener at PATH_P, data goes both ways, a malformed packet is dropped, and a
    /// transport reset reaches the event queue and closes the host's socket.
    #[test]
    fn end_to_end_through_the_worker_with_a_transport_reset() {
        let dir = TempDir::new("e2e");
        let path = dir.0.join("v.sock");
        let host = UnixListener::bind(format!("{}_700", path.display())).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut driver = Driver::new(&mem);
        let mut dev = Vsock::new(CID, path.clone(), UnixListener::bind(&path).unwrap()).unwrap();
        let handle = dev.handle();
        assert!(matches!(
            handle.send_transport_reset(),
            Err(VsockError::NotActive)
        ));
        let interrupt = Arc::new(CountingInterrupt::default());
        let notifies: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        let kicks: Vec<EventFd> = notifies.iter().map(|e| e.try_clone().unwrap()).collect();
        let queues = driver
            .queues()
            .into_iter()
            .zip(notifies)
            .enumerate()
            .map(|(i, (queue, notify))| ActiveQueue {
                index: i as u16,
                queue,
                notify,
            })
            .collect();
        dev.activate(mem.clone(), interrupt.clone(), queues, VIRTIO_F_VERSION_1)
            .unwrap();

        // A header cut short (20 bytes): dropped, the queue goes on.
        let short = RawDescriptor::from(SplitDescriptor::new(TX_BUFS + 0x8_0000, 20, 0, 0));
        driver.tx.add_desc_chains(&[short], 0).unwrap();
        driver.tx_next = 1;
        driver.send(guest(VIRTIO_VSOCK_OP_REQUEST, 1025, 700), &[]);
        kicks[1].write(1).unwrap();
        let (mut peer, _) = host.accept().unwrap();
        let mut got = Vec::new();
        wait_until("RESPONSE", || {
            got.extend(driver.received());
            !got.is_empty()
        });
        assert_eq!(got[0].0.op, VIRTIO_VSOCK_OP_RESPONSE);
        assert!(interrupt.used_on(0) > 0);

        let mut rw = guest(VIRTIO_VSOCK_OP_RW, 1025, 700);
        rw.len = 4;
        driver.send(rw, b"ping");
        kicks[1].write(1).unwrap();
        let mut b = [0u8; 4];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        peer.write_all(b"pong").unwrap();
        let mut got = Vec::new();
        wait_until("RW", || {
            got.extend(driver.received());
            !got.is_empty()
        });
        assert_eq!(
            (got[0].0.op, got[0].1.as_slice()),
            (VIRTIO_VSOCK_OP_RW, &b"pong"[..])
        );

        // Transport reset: the event reaches the driver once it posts a buffer, and the
        // host side of the connection is closed.
        handle.send_transport_reset().unwrap();
        driver.post_event_buffer();
        kicks[2].write(1).unwrap();
        wait_until("the event", || handle.resets_delivered() == 1);
        let id: u32 = mem.read_obj(GuestAddress(EV_BUF)).unwrap();
        assert_eq!(id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(peer.read(&mut b).unwrap(), 0);

        dev.reset();
        assert!(matches!(
            handle.send_transport_reset(),
            Err(VsockError::NotActive)
        ));
        // The listener survives a reset, for the next activation.
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }

    fn activate(
        dev: &mut Vsock,
        driver: &Driver,
        mem: &GuestMemoryMmap,
        features: u64,
    ) -> (Arc<CountingInterrupt>, Vec<EventFd>) {
        let interrupt = Arc::new(CountingInterrupt::default());
        let notifies: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        let kicks: Vec<EventFd> = notifies.iter().map(|e| e.try_clone().unwrap()).collect();
        let queues = driver
            .queues()
            .into_iter()
            .zip(notifies)
            .enumerate()
            .map(|(i, (mut queue, notify))| {
                queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
                ActiveQueue {
                    index: i as u16,
                    queue,
                    notify,
                }
            })
            .collect();
        dev.activate(mem.clone(), interrupt.clone(), queues, features)
            .unwrap();
        (interrupt, kicks)
    }

    /// virtio-drivers waits for every tx buffer to come back before it polls rx: the
    /// device completes tx packets even when it has no rx buffer for the answers, keeps
    /// the answers, and, with EVENT_IDX, asks for a kick (avail_event) to send them
    /// once the driver posts buffers.
    #[test]
    fn tx_completes_without_rx_buffers_and_answers_wait_for_them() {
        let dir = TempDir::new("starved");
        let path = dir.0.join("v.sock");
        let _host = UnixListener::bind(format!("{}_701", path.display())).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut driver = Driver::with_rx_buffers(&mem, 0);
        let mut dev = Vsock::new(CID, path.clone(), UnixListener::bind(&path).unwrap()).unwrap();
        let (_interrupt, kicks) = activate(
            &mut dev,
            &driver,
            &mem,
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        );
        // A connection to a listener, and three to nobody: four answers, no rx buffer.
        driver.send(guest(VIRTIO_VSOCK_OP_REQUEST, 1, 701), &[]);
        for port in 2..5 {
            driver.send(guest(VIRTIO_VSOCK_OP_REQUEST, port, 9), &[]);
        }
        kicks[1].write(1).unwrap();
        wait_until("tx completions", || driver.tx_used() == 4);
        assert!(driver.received().is_empty());
        driver.post_rx(0, 2);
        kicks[0].write(1).unwrap();
        let mut got = Vec::new();
        wait_until("two answers", || {
            got.extend(driver.received());
            got.len() == 2
        });
        // Still two answers to send and no buffer: the device asks to be kicked at the
        // driver's next rx buffer (avail_event, after the used ring's 16 entries, = 2).
        let avail_event = || -> u16 {
            mem.read_obj(driver.rx.used_addr().unchecked_add(4 + 8 * 16))
                .unwrap()
        };
        wait_until("avail_event", || avail_event() == 2);
        driver.post_rx(2, 4);
        kicks[0].write(1).unwrap();
        wait_until("the other two", || {
            got.extend(driver.received());
            got.len() == 4
        });
        let ops: Vec<u16> = got.iter().map(|(h, _)| h.op).collect();
        assert_eq!(
            ops,
            [
                VIRTIO_VSOCK_OP_RESPONSE,
                VIRTIO_VSOCK_OP_RST,
                VIRTIO_VSOCK_OP_RST,
                VIRTIO_VSOCK_OP_RST
            ]
        );
        dev.reset();
    }

    /// The driver's queues, positioned where a save left them.
    fn positioned(driver: &Driver, saved: &DeviceState, features: u64) -> Vec<ActiveQueue> {
        driver
            .queues()
            .into_iter()
            .zip(&saved.queues)
            .map(|(mut queue, at)| {
                queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
                queue.set_next_avail(at.next_avail);
                queue.set_next_used(at.next_used);
                ActiveQueue {
                    index: at.index,
                    queue,
                    notify: EventFd::new(0).unwrap(),
                }
            })
            .collect()
    }

    /// A connection, a save (the host end is closed), the state through JSON, a new
    /// device restored: the transport reset reaches the event buffer the driver posted
    /// before the save, and a new connection works with every queue carrying on where
    /// it stood (no tx packet handled twice, rx answers in the next used entries).
    #[test]
    fn a_restored_device_sends_a_transport_reset_and_serves_new_connections() {
        let dir = TempDir::new("restore");
        let path = dir.0.join("v.sock");
        let host = UnixListener::bind(format!("{}_700", path.display())).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut driver = Driver::new(&mem);
        driver.post_event_buffer();
        let listener = UnixListener::bind(&path).unwrap();
        let mut dev = Vsock::new(CID, path.clone(), listener.try_clone().unwrap()).unwrap();
        let features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        let (_interrupt, kicks) = activate(&mut dev, &driver, &mem, features);
        driver.send(guest(VIRTIO_VSOCK_OP_REQUEST, 1025, 700), &[]);
        kicks[1].write(1).unwrap();
        let (mut peer, _) = host.accept().unwrap();
        let mut got = Vec::new();
        wait_until("RESPONSE", || {
            got.extend(driver.received());
            !got.is_empty()
        });

        let saved = dev.save().unwrap();
        assert!(matches!(
            dev.handle().send_transport_reset(),
            Err(VsockError::NotActive)
        ));
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(peer.read(&mut [0u8; 4]).unwrap(), 0, "host end closed");
        let saved: DeviceState =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        let at: Vec<(u16, u16)> = saved
            .queues
            .iter()
            .map(|q| (q.next_avail, q.next_used))
            .collect();
        assert_eq!(at, [(1, 1), (1, 1), (0, 0)]);
        drop(dev);

        let mut dev = Vsock::new(CID, path.clone(), listener).unwrap();
        let handle = dev.handle();
        let interrupt = Arc::new(CountingInterrupt::default());
        let queues = positioned(&driver, &saved, features);
        let kicks: Vec<EventFd> = queues
            .iter()
            .map(|q| q.notify.try_clone().unwrap())
            .collect();
        dev.restore(
            mem.clone(),
            interrupt.clone(),
            queues,
            features,
            &saved.device,
        )
        .unwrap();
        wait_until("the reset event", || handle.resets_delivered() == 1);
        let id: u32 = mem.read_obj(GuestAddress(EV_BUF)).unwrap();
        assert_eq!(id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
        assert_eq!(interrupt.used_on(usize::from(worker::EVENT_QUEUE)), 1);

        driver.send(guest(VIRTIO_VSOCK_OP_REQUEST, 1026, 700), &[]);
        kicks[1].write(1).unwrap();
        let (_peer, _) = host.accept().unwrap();
        let mut got = Vec::new();
        wait_until("the second RESPONSE", || {
            got.extend(driver.received());
            !got.is_empty()
        });
        assert_eq!(
            (got[0].0.op, got[0].0.dst_port),
            (VIRTIO_VSOCK_OP_RESPONSE, 1026)
        );
        assert_eq!(driver.tx_used(), 2);
        host.set_nonblocking(true).unwrap();
        assert!(host.accept().is_err(), "the first REQUEST was not replayed");
        dev.reset();
    }

    #[test]
    fn a_malformed_saved_state_is_an_error() {
        let dir = TempDir::new("bad-state");
        let path = dir.0.join("v.sock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let driver = Driver::new(&mem);
        let mut dev = Vsock::new(CID, path.clone(), UnixListener::bind(&path).unwrap()).unwrap();
        let empty = DeviceState {
            queues: (0..3)
                .map(|index| crate::devices::virtio::QueuePosition {
                    index,
                    next_avail: 0,
                    next_used: 0,
                })
                .collect(),
            device: serde_json::Value::Null,
        };
        for bad in [
            serde_json::Value::Null,
            serde_json::json!("cid"),
            serde_json::json!({"guest_cid": -3}),
            serde_json::json!({"guest_cid": 3, "connections": []}),
        ] {
            let queues = positioned(&driver, &empty, VIRTIO_F_VERSION_1);
            let result = dev.restore(
                mem.clone(),
                Arc::new(CountingInterrupt::default()),
                queues,
                VIRTIO_F_VERSION_1,
                &bad,
            );
            assert!(matches!(result, Err(ActivateError::BadState(_))), "{bad}");
            assert!(dev.worker.is_none());
        }
    }

    /// A host client whose CONNECT the guest never answers is closed after
    /// `muxer::CONNECT_TIMEOUT`, by the worker's timer.
    #[test]
    fn an_unanswered_connect_closes_the_host_client_in_time() {
        let dir = TempDir::new("connect-timeout");
        let path = dir.0.join("v.sock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut driver = Driver::new(&mem);
        let mut dev = Vsock::new(CID, path.clone(), UnixListener::bind(&path).unwrap()).unwrap();
        let (_interrupt, _kicks) = activate(&mut dev, &driver, &mem, VIRTIO_F_VERSION_1);
        let start = Instant::now();
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 77\n").unwrap();
        let mut got = Vec::new();
        wait_until("the REQUEST", || {
            got.extend(driver.received());
            !got.is_empty()
        });
        assert_eq!(
            (got[0].0.op, got[0].0.dst_port),
            (VIRTIO_VSOCK_OP_REQUEST, 77)
        );
        client
            .set_read_timeout(Some(muxer::CONNECT_TIMEOUT * 3))
            .unwrap();
        let mut b = [0u8; 8];
        assert_eq!(client.read(&mut b).unwrap(), 0, "closed, with no OK line");
        let waited = start.elapsed();
        assert!(
            waited >= muxer::CONNECT_TIMEOUT && waited < muxer::CONNECT_TIMEOUT * 2,
            "{waited:?}"
        );
        // The guest is told the request is void.
        wait_until("the RST", || {
            got.extend(driver.received());
            got.len() == 2
        });
        assert_eq!(got[1].0.op, VIRTIO_VSOCK_OP_RST);
        dev.reset();
    }
}
