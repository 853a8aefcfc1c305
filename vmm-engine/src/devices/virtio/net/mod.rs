//! virtio-net (virtio 1.2, 5.1 "Network Device"): one receive and one transmit queue,
//! a MAC address and a link status in the configuration space, frames to and from a
//! backend on the host: `passt` (user-mode networking, the default) or a TAP interface.
//!
//! Offered features: VERSION_1, EVENT_IDX, MAC, STATUS, MRG_RXBUF (a frame may span
//! several receive buffers), CSUM (the guest may leave a partial checksum, completed
//! here in software because passt wants complete frames) and GUEST_CSUM (frames from
//! passt are marked DATA_VALID: passt computed their checksums). No TSO/UFO: that would
//! need segmentation here.
//!
//! - `config`: the `--net` option.
//! - `backend`: what the worker needs of a backend; `passt`, `tap`: the two backends.
//! - `worker`: the queues ↔ backend loop, header handling, checksum completion.

pub mod backend;
pub mod config;
pub mod passt;
pub mod persist;
pub mod tap;
pub mod worker;

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use vm_memory::GuestMemoryMmap;

use super::io_counters::IoCounters;
use super::rate_limit::RateLimiter;
use super::worker::{kick_each, Worker};
use super::{
    ActivateError, ActiveQueue, DeviceState, Interrupt, SaveError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use backend::Backend;
pub use config::{MacAddr, NetBackendConfig, NetConfig, NetConfigError};
use persist::NetState;
use worker::{NetWorker, RX_QUEUE, TX_QUEUE};

/// Ring sizes: 256 buffers of receive room keep a burst from passt (which reads 64 KiB
/// at a time from the host's sockets) from stalling on the guest.
const QUEUE_SIZES: &[u16] = &[256, 256];

/// Offsets in `virtio_net_config`.
const CONFIG_MAC: usize = 0;
const CONFIG_STATUS: usize = 6;
const CONFIG_MAX_VIRTQUEUE_PAIRS: usize = 8;
const CONFIG_LEN: usize = 10;

/// Why the network card could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Passt(#[from] passt::PasstError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error(transparent)]
    Config(#[from] NetConfigError),
    #[error("cannot create the network card's I/O limit timer: {0}")]
    LimitTimer(#[source] std::io::Error),
}

/// Checks what can be checked about the backend before a VM is built (passt installed).
pub fn check_backend(config: &NetConfig) -> Result<(), NetError> {
    if config.backend == NetBackendConfig::Passt {
        passt::find_passt()?;
    }
    Ok(())
}

/// The network card.
pub struct Net {
    mac: MacAddr,
    /// The backend while no worker has it.
    backend: Option<Box<dyn Backend>>,
    worker: Option<Worker<NetWorker>>,
    /// Bytes and frames each way, across resets (the control socket's `stats`).
    counters: Arc<IoCounters>,
    /// The I/O limits (`bw=`, `iops=`), changeable through the control socket.
    limiter: Option<Arc<RateLimiter>>,
}

impl Net {
    /// Starts the backend (passt, or opens the TAP interface).
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        config.validate()?;
        let limiter = RateLimiter::new(config.limits).map_err(NetError::LimitTimer)?;
        let backend: Box<dyn Backend> = match &config.backend {
            NetBackendConfig::Passt => Box::new(passt::Passt::spawn()?),
            NetBackendConfig::Tap { name } => Box::new(tap::Tap::open(name)?),
        };
        let mut net = Self::with_backend(config.mac_or_default(), backend);
        net.limiter = Some(Arc::new(limiter));
        Ok(net)
    }

    /// A card on a given backend (tests, fuzzing).
    pub fn with_backend(mac: MacAddr, backend: Box<dyn Backend>) -> Self {
        Net {
            mac,
            backend: Some(backend),
            worker: None,
            counters: Arc::default(),
            limiter: None,
        }
    }

    /// The card's I/O limiter (none for a card made with `with_backend`).
    pub fn limiter(&self) -> Option<Arc<RateLimiter>> {
        self.limiter.clone()
    }

    /// The card's traffic counters: read = received by the guest, write = sent by it.
    pub fn counters(&self) -> Arc<IoCounters> {
        Arc::clone(&self.counters)
    }

    /// The configuration space's `status`: the link is always up (the backend is a
    /// process or a TAP device, with no carrier to lose).
    fn status(&self) -> u16 {
        VIRTIO_NET_S_LINK_UP as u16
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[CONFIG_MAC..CONFIG_MAC + 6].copy_from_slice(&self.mac.0);
        c[CONFIG_STATUS..CONFIG_STATUS + 2].copy_from_slice(&self.status().to_le_bytes());
        // Only meaningful with VIRTIO_NET_F_MQ, which is not offered; one pair.
        c[CONFIG_MAX_VIRTQUEUE_PAIRS..CONFIG_MAX_VIRTQUEUE_PAIRS + 2]
            .copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR (5.1.4.2): ignored.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::QueueCount { got, needed: 2 });
        };
        let backend = self.backend.take().ok_or_else(|| {
            ActivateError::Backend("the network backend is gone (its worker failed)".into())
        })?;
        let mut handler =
            NetWorker::new(mem, interrupt, rx.queue, tx.queue, backend, acked_features)
                .map_err(ActivateError::Worker)?
                .counting(self.counters());
        if let Some(limiter) = self.limiter() {
            handler = handler.limited(limiter);
        }
        // Worker queue indexes follow this order: 0 = receiveq, 1 = transmitq.
        let worker = Worker::spawn("virtio-net", vec![rx.notify, tx.notify], handler)
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Some(handler) = worker.stop() {
                tracing::debug!("virtio-net reset: {:?}", handler.counters);
                self.backend = Some(handler.into_backend());
            }
        }
    }

    /// Nothing is in flight between kicks (see `persist`). The backend goes back to
    /// the device, as on a reset; a restore happens on a new card with a backend of
    /// its own (a new passt: connections through the old one are gone, as after a NAT
    /// box reboots, and the guest's TCP retries).
    fn save(&mut self) -> Result<DeviceState, SaveError> {
        let handler = super::worker::stop_for_save(&mut self.worker)?;
        let queues = handler.positions().to_vec();
        self.backend = Some(handler.into_backend());
        let state = NetState {
            mac: self.mac,
            status: self.status(),
        };
        Ok(DeviceState {
            queues,
            device: serde_json::to_value(state)
                .map_err(|e| SaveError::Device(format!("virtio-net state: {e}")))?,
        })
    }

    /// Takes the saved MAC (the guest's frames carry it), then activates on this
    /// card's backend; receive buffers posted before the save take the new backend's
    /// first frames.
    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        state: &serde_json::Value,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let state = NetState::parse(state)
            .map_err(|e| ActivateError::BadState(format!("virtio-net: {e}")))?;
        self.mac = state.mac;
        kick_each(&queues).map_err(ActivateError::Worker)?;
        self.activate(mem, interrupt, queues, acked_features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use crate::devices::virtio::QueuePosition;
    use std::io::Read;
    use std::time::Duration;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn config_space_and_features() {
        let (passt, _peer) = passt::fake_passt();
        let mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let net = Net::with_backend(mac, Box::new(passt));
        let mut c = [0xffu8; 12];
        net.read_config(0, &mut c);
        assert_eq!(&c[..6], &mac.0);
        assert_eq!(
            u16::from_le_bytes([c[6], c[7]]),
            VIRTIO_NET_S_LINK_UP as u16
        );
        assert_eq!(&c[10..], &[0, 0], "beyond the config: zero");
        let mut one = [0u8; 2];
        net.read_config(6, &mut one);
        assert_eq!(one, [1, 0]);
        net.read_config(u64::MAX, &mut one);
        assert_eq!(one, [0, 0]);
        let f = net.device_features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & 1 << VIRTIO_NET_F_MRG_RXBUF, 0);
        // No segmentation offloads: they would need segmentation here.
        for bit in [
            virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_TSO4,
            virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_UFO,
            virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4,
        ] {
            assert_eq!(f & 1 << bit, 0);
        }
    }

    /// Through the device's own worker thread: activate, transmit one frame, see it at
    /// "passt", reset, activate again with the same backend.
    #[test]
    fn activate_transmit_reset_activate() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (passt, mut peer) = passt::fake_passt();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut net = Net::with_backend(MacAddr::for_this_process(), Box::new(passt));
        for round in 0..2u8 {
            let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
            let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
            let frame: Vec<u8> = (0..64).map(|i| i ^ round).collect();
            mem.write_slice(&[0u8; 12], GuestAddress(0x8000)).unwrap();
            mem.write_slice(&frame, GuestAddress(0x8000 + 12)).unwrap();
            txq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0x8000, 76, 0, 0))])
                .unwrap();
            let mut queues = Vec::new();
            let mut kicks = Vec::new();
            for (index, q) in [(RX_QUEUE, &rxq), (TX_QUEUE, &txq)] {
                let mut queue: Queue = q.create_queue().unwrap();
                queue.set_ready(true);
                let notify = EventFd::new(0).unwrap();
                kicks.push(notify.try_clone().unwrap());
                queues.push(ActiveQueue {
                    index,
                    queue,
                    notify,
                });
            }
            let interrupt = Arc::new(CountingInterrupt::default());
            net.activate(mem.clone(), interrupt, queues, net.device_features())
                .unwrap();
            kicks[1].write(1).unwrap();
            let mut got = [0u8; 4 + 64];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got[..4], &64u32.to_be_bytes());
            assert_eq!(&got[4..], &frame[..]);
            net.reset();
            assert!(net.backend.is_some(), "the backend survives a reset");
        }
    }

    type Mock<'m> = MockSplitQueue<'m, GuestMemoryMmap>;

    /// Queues over the driver's rings `rxq` and `txq`, positioned at `at` if given,
    /// and their kicks.
    fn net_queues(
        rxq: &Mock<'_>,
        txq: &Mock<'_>,
        at: Option<&[QueuePosition]>,
    ) -> (Vec<ActiveQueue>, Vec<EventFd>) {
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for (i, (index, mock)) in [(RX_QUEUE, rxq), (TX_QUEUE, txq)].into_iter().enumerate() {
            let mut queue: Queue = mock.create_queue().unwrap();
            if let Some(at) = at {
                queue.set_next_avail(at[i].next_avail);
                queue.set_next_used(at[i].next_used);
            }
            let notify = EventFd::new(0).unwrap();
            kicks.push(notify.try_clone().unwrap());
            queues.push(ActiveQueue {
                index,
                queue,
                notify,
            });
        }
        (queues, kicks)
    }

    /// A 2 KiB receive buffer at `addr`, descriptor `desc`.
    fn post_rx(rxq: &Mock<'_>, desc: u16, addr: u64) {
        let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        let d = RawDescriptor::from(SplitDescriptor::new(addr, 2048, write, 0));
        rxq.add_desc_chains(&[d], desc).unwrap();
    }

    /// `frame` behind an empty header at `addr`, descriptor `desc`.
    fn post_tx(mem: &GuestMemoryMmap, txq: &Mock<'_>, desc: u16, addr: u64, frame: &[u8]) {
        mem.write_slice(&[0u8; 12], GuestAddress(addr)).unwrap();
        mem.write_slice(frame, GuestAddress(addr + 12)).unwrap();
        let len = 12 + frame.len() as u32;
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0));
        txq.add_desc_chains(&[d], desc).unwrap();
    }

    fn read_frame(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        peer.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        peer.read_exact(&mut frame).unwrap();
        frame
    }

    fn send_frame(peer: &mut std::os::unix::net::UnixStream, frame: &[u8]) {
        use std::io::Write;
        peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
        peer.write_all(frame).unwrap();
    }

    fn wait_used(mock: &Mock<'_>, idx: u16) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while mock.used().idx().load() < idx {
            assert!(std::time::Instant::now() < deadline, "nothing used");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Frames both ways, a save with a receive buffer posted and unused, the state
    /// through JSON, a new card with a new backend (another MAC, as a new engine would
    /// pick) restored: it keeps the guest's MAC, the next frame from the network lands
    /// in the buffer posted before the save, and the next transmitted frame is the
    /// only one the new backend sees.
    #[test]
    fn a_restored_card_keeps_its_mac_and_rx_buffers_and_frames_flow_both_ways() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
        post_rx(&rxq, 0, 0x10000);
        post_rx(&rxq, 1, 0x11000);
        let (a, b, c, d) = ([0xa; 60], [0xb; 60], [0xc; 60], [0xd; 60]);
        post_tx(&mem, &txq, 0, 0x20000, &a);
        let (passt, mut peer) = passt::fake_passt();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mac = MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        let mut net = Net::with_backend(mac, Box::new(passt));
        let features = net.device_features();
        let (queues, kicks) = net_queues(&rxq, &txq, None);
        let interrupt = Arc::new(CountingInterrupt::default());
        net.activate(mem.clone(), interrupt, queues, features)
            .unwrap();
        kicks[1].write(1).unwrap();
        assert_eq!(read_frame(&mut peer), a);
        send_frame(&mut peer, &b);
        wait_used(&rxq, 1);
        let mut got = [0u8; 60];
        mem.read_slice(&mut got, GuestAddress(0x10000 + 12))
            .unwrap();
        assert_eq!(got, b);

        let saved = net.save().unwrap();
        assert!(net.backend.is_some(), "the backend went back to the card");
        let saved: DeviceState =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        assert_eq!(saved.device["mac"], "52:54:00:aa:bb:cc");
        drop((net, peer));

        let (passt, mut peer) = passt::fake_passt();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut net = Net::with_backend(MacAddr([0x52, 0x54, 0, 1, 2, 3]), Box::new(passt));
        let (queues, kicks) = net_queues(&rxq, &txq, Some(&saved.queues));
        let interrupt = Arc::new(CountingInterrupt::default());
        net.restore(mem.clone(), interrupt, queues, features, &saved.device)
            .unwrap();
        let mut config_mac = [0u8; 6];
        net.read_config(0, &mut config_mac);
        assert_eq!(config_mac, mac.0);

        send_frame(&mut peer, &c);
        wait_used(&rxq, 2);
        assert_eq!(rxq.used().ring().ref_at(1).unwrap().load().id(), 1);
        mem.read_slice(&mut got, GuestAddress(0x11000 + 12))
            .unwrap();
        assert_eq!(got, c);
        post_tx(&mem, &txq, 1, 0x21000, &d);
        kicks[1].write(1).unwrap();
        assert_eq!(read_frame(&mut peer), d, "frame A is not sent again");
        wait_used(&txq, 2);
        net.reset();
    }

    #[test]
    fn a_malformed_saved_state_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
        let (passt, _peer) = passt::fake_passt();
        let mut net = Net::with_backend(MacAddr::for_this_process(), Box::new(passt));
        for bad in [
            serde_json::Value::Null,
            serde_json::json!({"mac": "01:00:5e:00:00:01", "status": 1}),
            serde_json::json!({"mac": "52:54:00:00:00:01", "status": 0}),
            serde_json::json!({"mac": "52:54:00:00:00:01", "status": 1, "vlan": 3}),
            serde_json::json!({"mac": [82, 84, 0, 0, 0, 1], "status": 1}),
        ] {
            let (queues, _) = net_queues(&rxq, &txq, None);
            let result = net.restore(
                mem.clone(),
                Arc::new(CountingInterrupt::default()),
                queues,
                net.device_features(),
                &bad,
            );
            assert!(matches!(result, Err(ActivateError::BadState(_))), "{bad}");
            assert!(net.worker.is_none() && net.backend.is_some());
        }
    }

    #[test]
    fn activation_needs_both_queues() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (passt, _peer) = passt::fake_passt();
        let mut net = Net::with_backend(MacAddr::for_this_process(), Box::new(passt));
        let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let queue: Queue = q.create_queue().unwrap();
        let err = net
            .activate(
                mem.clone(),
                Arc::new(CountingInterrupt::default()),
                vec![ActiveQueue {
                    index: RX_QUEUE,
                    queue,
                    notify: EventFd::new(0).unwrap(),
                }],
                0,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount { got: 1, needed: 2 }
        ));
    }
}
