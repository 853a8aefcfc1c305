//! The vsock worker: owns the three queues and the muxer. The tx queue is drained into
//! the muxer; rx buffers are filled from it only while it has something to send, and
//! when it has more than the guest gave buffers for, the device asks to be notified
//! when buffers come (EVENT_IDX's avail_event), so an idle connection costs no exits.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::connection::BUF_ALLOC;
use super::muxer::Muxer;
use super::packet::{self, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET};
use super::Shared;
use crate::devices::virtio::worker::{FdRegistry, WorkerHandler};
use crate::devices::virtio::{drain_queue, Interrupt};

/// Queue indexes (virtio 1.2, 5.10.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;

/// Bytes of `struct virtio_vsock_event` (a le32 id).
const EVENT_LEN: usize = 4;

pub struct VsockWorker {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    pub rxq: Queue,
    pub txq: Queue,
    pub evq: Queue,
    pub muxer: Muxer,
    pub shared: Arc<Shared>,
    /// A transport reset waits for an event buffer.
    pub event_pending: bool,
    /// Payload of the packet in hand (tx or rx).
    pub scratch: Vec<u8>,
    /// tx chains that were not packets (the guest's bugs).
    pub bad_packets: u64,
}

impl VsockWorker {
    /// Drains the tx queue into the muxer.
    pub fn process_tx(&mut self) -> Result<(), String> {
        let mem = self.mem.clone();
        let muxer = &mut self.muxer;
        let scratch = &mut self.scratch;
        let bad = &mut self.bad_packets;
        let notify = drain_queue(&mut self.txq, &mem, |chain| {
            match packet::read_tx(chain, &mem, BUF_ALLOC as usize, scratch) {
                Ok(header) => muxer.handle_tx(&header, scratch),
                Err(e) => {
                    *bad += 1;
                    tracing::debug!("virtio-vsock: dropped a tx packet: {e}");
                    // Its payload is lost: the connection cannot go on.
                    if let Some(header) = e.header() {
                        muxer.reject(header);
                    }
                }
            }
            // The device writes nothing into tx buffers.
            0
        })
        .map_err(|e| format!("virtio-vsock tx queue: {e}"))?;
        if notify {
            self.signal(TX_QUEUE)?;
        }
        Ok(())
    }

    /// Fills rx buffers while the muxer has packets for the guest.
    pub fn process_rx(&mut self) -> Result<(), String> {
        let mem = self.mem.clone();
        let err = |e: virtio_queue::Error| format!("virtio-vsock rx queue: {e}");
        let mut used = false;
        // Kicks are wanted only when the device waits for buffers (below).
        self.rxq.disable_notification(&mem).map_err(err)?;
        'fill: loop {
            while self.muxer.has_rx_work() {
                let Some(chain) = self.rxq.iter(&mem).map_err(err)?.next() else {
                    break;
                };
                let head = chain.head_index();
                let Some(room) = packet::rx_room(&chain, &mem) else {
                    // Too small for a header: the guest's bug; give it back empty.
                    self.bad_packets += 1;
                    self.rxq.add_used(&mem, head, 0).map_err(err)?;
                    used = true;
                    continue;
                };
                match self.muxer.next_rx(room, &mut self.scratch) {
                    Some(header) => {
                        let len = packet::write_rx(chain, &mem, &header, &self.scratch)
                            .unwrap_or_else(|e| {
                                tracing::debug!("virtio-vsock: rx buffer: {e}");
                                0
                            });
                        self.rxq.add_used(&mem, head, len).map_err(err)?;
                        used = true;
                    }
                    None => {
                        // Nothing after all (a socket had nothing to read): put it back.
                        self.rxq.go_to_previous_position();
                        break 'fill;
                    }
                }
            }
            if !self.muxer.has_rx_work() {
                break;
            }
            // Work but no buffers: ask for a kick when the driver adds some, and go on if
            // it did meanwhile.
            if !self.rxq.enable_notification(&mem).map_err(err)? {
                break;
            }
        }
        if used && self.rxq.needs_notification(&mem).map_err(err)? {
            self.signal(RX_QUEUE)?;
        }
        Ok(())
    }

    /// Puts a pending transport reset event in an event buffer, if the driver gave one.
    pub fn process_event(&mut self) -> Result<(), String> {
        if !self.event_pending {
            return Ok(());
        }
        let mem = self.mem.clone();
        let err = |e: virtio_queue::Error| format!("virtio-vsock event queue: {e}");
        while let Some(chain) = self.evq.iter(&mem).map_err(err)?.next() {
            let head = chain.head_index();
            let written = match chain.writer(&mem) {
                Ok(mut w) if w.available_bytes() >= EVENT_LEN => {
                    use std::io::Write;
                    w.write_all(&VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes())
                        .is_ok()
                }
                _ => false,
            };
            let len = if written { EVENT_LEN as u32 } else { 0 };
            self.evq.add_used(&mem, head, len).map_err(err)?;
            if written {
                self.event_pending = false;
                self.shared.resets_delivered.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if self.evq.needs_notification(&mem).map_err(err)? {
            self.signal(EVENT_QUEUE)?;
        }
        Ok(())
    }

    fn signal(&self, queue: u16) -> Result<(), String> {
        self.interrupt
            .signal_used_queue(queue)
            .map_err(|e| format!("virtio-vsock interrupt: {e}"))
    }
}

impl WorkerHandler for VsockWorker {
    fn queue_notified(&mut self, index: usize) -> Result<(), String> {
        match index as u16 {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => {
                self.process_tx()?;
                self.process_rx()
            }
            EVENT_QUEUE => self.process_event(),
            _ => Ok(()),
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.shared.reset_request.as_raw_fd()]
    }

    /// The host asked for a transport reset (`VsockHandle::send_transport_reset`).
    fn backend_ready(&mut self, _index: usize) -> Result<(), String> {
        let _ = self.shared.reset_request.read();
        // The driver forgets every connection on this event (5.10.6.7): so does the host.
        self.muxer.reset_connections();
        self.event_pending = true;
        self.process_event()
    }

    fn attach(&mut self, registry: FdRegistry) {
        if let Err(e) = self.muxer.attach(registry) {
            tracing::error!("virtio-vsock: cannot watch the host socket: {e}");
        }
    }

    fn registered_fd_ready(&mut self, token: u32, events: EventSet) -> Result<(), String> {
        self.muxer.fd_ready(token, events);
        self.process_rx()
    }
}
