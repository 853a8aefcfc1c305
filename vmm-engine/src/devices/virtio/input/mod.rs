//! virtio-input (virtio 1.2, 5.8 "Input Device"): a keyboard and an absolute tablet, so
//! the host's pointer enters and leaves the guest's window with no capture.
//!
//! The host side (`InputHandle`, used by the control socket and the window) queues
//! groups of evdev events, each ended by `SYN_REPORT`; the worker hands them to the
//! driver one event per buffer of the event queue, and reads the keyboard LEDs the
//! driver reports on the status queue. Events the guest is not ready for wait in a
//! bounded backlog; past it, a group is refused whole, never cut in half.

pub mod config;
pub mod event;
pub mod persist;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ids::VIRTIO_ID_INPUT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{kick_each, Worker, WorkerHandler};
use super::{
    ActivateError, ActiveQueue, DeviceState, Interrupt, SaveError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use config::InputConfig;
use event::{InputEvent, InputKind, InputProfile, EV_LED};
use persist::InputState;

/// eventq and statusq (5.8.2).
const QUEUE_SIZES: &[u16] = &[64, 64];
const EVENTQ: u16 = 0;
const STATUSQ: u16 = 1;
/// Events waiting for the driver at most: seconds of typing, far more than a guest that
/// reads its input ever lets pile up.
pub const MAX_BACKLOG: usize = 4096;
/// Events in one group at most.
pub const MAX_GROUP: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("the guest's input driver is not running")]
    NotReady,
    #[error("the guest is not reading its input: {0} events are waiting")]
    Backlog(usize),
    #[error("the {device} cannot send event type {kind} code {code}")]
    Unsupported {
        device: &'static str,
        kind: u16,
        code: u16,
    },
    #[error("an input group holds 1 to {MAX_GROUP} events")]
    GroupSize,
    #[error("cannot wake the input device: {0}")]
    Wake(String),
}

/// What the host side and the worker share.
struct Shared {
    profile: InputProfile,
    pending: Mutex<Pending>,
    /// Written when events are queued: the worker's backend fd.
    wake: EventFd,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<InputEvent>,
    /// Whether a driver runs the device (events before that are refused).
    active: bool,
    /// The keyboard LEDs the guest last set, bit n = LED n.
    leds: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The host side of one input device: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct InputHandle {
    shared: Arc<Shared>,
}

impl InputHandle {
    /// Queues `events` and the `SYN_REPORT` that ends them, for the guest to read.
    pub fn send(&self, events: &[InputEvent]) -> Result<(), InputError> {
        if events.is_empty() || events.len() > MAX_GROUP {
            return Err(InputError::GroupSize);
        }
        let profile = &self.shared.profile;
        if let Some(bad) = events.iter().find(|e| !profile.supports(e.kind, e.code)) {
            return Err(InputError::Unsupported {
                device: profile.name,
                kind: bad.kind,
                code: bad.code,
            });
        }
        {
            let mut pending = self.shared.lock();
            if !pending.active {
                return Err(InputError::NotReady);
            }
            if pending.events.len() + events.len() + 1 > MAX_BACKLOG {
                return Err(InputError::Backlog(pending.events.len()));
            }
            pending.events.extend(events.iter().copied());
            pending.events.push_back(InputEvent::syn());
        }
        self.shared
            .wake
            .write(1)
            .map_err(|e| InputError::Wake(e.to_string()))
    }

    /// The keyboard LEDs as the guest last set them (bit 0 NumLock, 1 CapsLock, 2
    /// ScrollLock).
    pub fn leds(&self) -> u32 {
        self.shared.lock().leds
    }

    /// Events waiting for the driver's buffers.
    pub fn backlog(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// Whether a driver runs the device.
    pub fn is_active(&self) -> bool {
        self.shared.lock().active
    }

    pub fn kind_name(&self) -> &'static str {
        self.shared.profile.name
    }
}

/// The worker's side: both queues. Public so that the fuzz target drives it directly,
/// without the worker thread.
pub struct InputQueues {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    eventq: Queue,
    statusq: Queue,
    shared: Arc<Shared>,
}

impl InputQueues {
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        eventq: Queue,
        statusq: Queue,
        device: &InputHandle,
    ) -> Self {
        // From now on a driver runs the device: the host may send it events.
        {
            let mut pending = device.shared.lock();
            pending.active = true;
            pending.events.clear();
        }
        Self {
            mem,
            interrupt,
            eventq,
            statusq,
            shared: device.shared.clone(),
        }
    }

    /// Moves waiting events into the driver's buffers, one each (5.8.6.1), until either
    /// runs out.
    pub fn deliver(&mut self) -> Result<(), String> {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut pending = self.shared.lock();
        while let Some(&event) = pending.events.front() {
            let chain = self
                .eventq
                .iter(&mem)
                .map_err(|e| format!("virtio-input eventq: {e}"))?
                .next();
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = write_event(chain, &mem, event);
            if len != 0 {
                pending.events.pop_front();
            }
            self.eventq
                .add_used(&mem, head, len)
                .map_err(|e| format!("virtio-input eventq: {e}"))?;
            used_any = true;
        }
        drop(pending);
        // Ask to be kicked when the driver adds buffers (EVENT_IDX's avail_event).
        self.eventq
            .enable_notification(&mem)
            .map_err(|e| format!("virtio-input eventq: {e}"))?;
        if used_any
            && self
                .eventq
                .needs_notification(&mem)
                .map_err(|e| format!("virtio-input eventq: {e}"))?
        {
            self.interrupt
                .signal_used_queue(EVENTQ)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads the events the driver sends (LED changes) and gives the buffers back.
    pub fn read_status(&mut self) -> Result<(), String> {
        let mem = self.mem.clone();
        let shared = self.shared.clone();
        let notify = super::drain_queue(&mut self.statusq, &mem, |chain| {
            for event in read_events(chain, &mem) {
                if event.kind == EV_LED && event.code < 32 {
                    let mut pending = shared.lock();
                    if event.value != 0 {
                        pending.leds |= 1 << event.code;
                    } else {
                        pending.leds &= !(1 << event.code);
                    }
                }
            }
            0
        })
        .map_err(|e| format!("virtio-input statusq: {e}"))?;
        if notify {
            self.interrupt
                .signal_used_queue(STATUSQ)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Writes `event` into the chain's first writable buffer; returns the bytes written (0
/// if the driver gave a buffer too small or outside guest memory: that buffer is
/// returned empty and the event waits for the next).
fn write_event(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    event: InputEvent,
) -> u32 {
    let Some(desc) = chain.writable().next() else {
        return 0;
    };
    if (desc.len() as usize) < InputEvent::SIZE
        || mem.write_slice(&event.to_le_bytes(), desc.addr()).is_err()
    {
        return 0;
    }
    InputEvent::SIZE as u32
}

/// The whole events in the chain's readable buffers (a bounded number: a chain has at
/// most a queue's worth of descriptors).
fn read_events(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> Vec<InputEvent> {
    let mut events = Vec::new();
    for desc in chain.readable() {
        let count = (desc.len() as usize / InputEvent::SIZE).min(MAX_GROUP);
        for i in 0..count {
            let mut bytes = [0u8; InputEvent::SIZE];
            let addr =
                vm_memory::GuestAddress(desc.addr().0.wrapping_add((i * InputEvent::SIZE) as u64));
            if mem.read_slice(&mut bytes, addr).is_err() {
                return events;
            }
            events.push(InputEvent::from_le_bytes(bytes));
        }
    }
    events
}

impl WorkerHandler for InputQueues {
    fn queue_notified(&mut self, index: usize) -> Result<(), String> {
        match index as u16 {
            EVENTQ => self.deliver(),
            _ => self.read_status(),
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.shared.wake.as_raw_fd()]
    }

    fn backend_ready(&mut self, _index: usize) -> Result<(), String> {
        let _ = self.shared.wake.read();
        self.deliver()
    }
}

/// One input device: the keyboard or the tablet.
pub struct Input {
    config: InputConfig,
    shared: Arc<Shared>,
    worker: Option<Worker<InputQueues>>,
}

impl Input {
    pub fn new(kind: InputKind) -> std::io::Result<Self> {
        let profile = InputProfile::for_kind(kind);
        Ok(Self {
            config: InputConfig::new(profile.clone()),
            shared: Arc::new(Shared {
                profile,
                pending: Mutex::default(),
                wake: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
            worker: None,
        })
    }

    pub fn handle(&self) -> InputHandle {
        InputHandle {
            shared: self.shared.clone(),
        }
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let [eventq, statusq] = super::exact_queues::<2>(queues)?;
        let handler = InputQueues::new(mem, interrupt, eventq.queue, statusq.queue, &self.handle());
        let worker = Worker::spawn("virtio-input", vec![eventq.notify, statusq.notify], handler);
        match worker {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => {
                self.shared.lock().active = false;
                Err(ActivateError::Worker(e))
            }
        }
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        let mut pending = self.shared.lock();
        pending.active = false;
        pending.events.clear();
        pending.leds = 0;
    }

    fn save(&mut self) -> Result<DeviceState, SaveError> {
        let handler = super::worker::stop_for_save(&mut self.worker)?;
        let mut pending = self.shared.lock();
        pending.active = false;
        let mut question = [0u8; 2];
        self.config.read(0, &mut question);
        let state = InputState {
            select: question[0],
            subsel: question[1],
            leds: pending.leds,
            events: pending
                .events
                .drain(..)
                .map(|e| (e.kind, e.code, e.value))
                .collect(),
        };
        let mut saved =
            DeviceState::queues_only([(EVENTQ, &handler.eventq), (STATUSQ, &handler.statusq)]);
        saved.device = serde_json::to_value(state)
            .map_err(|e| SaveError::Device(format!("virtio-input state: {e}")))?;
        Ok(saved)
    }

    /// Activates, then puts back what the save kept; the waiting events go to the
    /// driver's buffers at once (those it posted before the save are still available).
    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        state: &serde_json::Value,
    ) -> Result<(), ActivateError> {
        let state = InputState::parse(state, &self.shared.profile)
            .map_err(|e| ActivateError::BadState(format!("virtio-input: {e}")))?;
        kick_each(&queues).map_err(ActivateError::Worker)?;
        self.activate(mem, interrupt, queues, acked_features)?;
        self.config.write(0, &[state.select, state.subsel]);
        {
            let mut pending = self.shared.lock();
            pending.leds = state.leds;
            pending.events.extend(state.events());
        }
        self.shared.wake.write(1).map_err(ActivateError::Worker)
    }
}

#[cfg(test)]
mod tests {
    use super::event::*;
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_input::virtio_input_config_select_VIRTIO_INPUT_CFG_EV_BITS as CFG_EV_BITS;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// A driver that posted `buffers` event buffers of `len` bytes at 0x10000 + 16 i.
    fn eventq_with_buffers(
        mem: &GuestMemoryMmap,
        buffers: u16,
        len: u32,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
        let mock = MockSplitQueue::new(mem, 64);
        for i in 0..buffers {
            let desc = RawDescriptor::from(SplitDescriptor::new(
                0x10000 + 16 * u64::from(i),
                len,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
            mock.add_desc_chains(&[desc], i).unwrap();
        }
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_ready(true);
        (mock, queue)
    }

    fn used_len(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<'_, GuestMemoryMmap>,
        slot: u64,
    ) -> u32 {
        mem.read_obj(GuestAddress(mock.used_addr().0 + 8 + 8 * slot))
            .unwrap()
    }

    fn used_idx(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
        mem.read_obj(GuestAddress(mock.used_addr().0 + 2)).unwrap()
    }

    fn event_at(mem: &GuestMemoryMmap, i: u64) -> InputEvent {
        let mut bytes = [0u8; 8];
        mem.read_slice(&mut bytes, GuestAddress(0x10000 + 16 * i))
            .unwrap();
        InputEvent::from_le_bytes(bytes)
    }

    fn queues(
        mem: &GuestMemoryMmap,
        eventq: Queue,
        shared: Arc<Shared>,
    ) -> (InputQueues, Arc<CountingInterrupt>) {
        let status_mock = MockSplitQueue::create(mem, GuestAddress(0x40000), 16);
        let mut statusq: Queue = status_mock.create_queue().unwrap();
        statusq.set_ready(true);
        let interrupt = Arc::new(CountingInterrupt::default());
        let q = InputQueues {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            eventq,
            statusq,
            shared,
        };
        (q, interrupt)
    }

    #[test]
    fn a_key_press_reaches_the_driver_with_its_syn() {
        let mem = memory();
        let (mock, eventq) = eventq_with_buffers(&mem, 4, 8);
        let device = Input::new(InputKind::Keyboard).unwrap();
        let handle = device.handle();
        assert_eq!(
            handle.send(&[InputEvent::new(EV_KEY, 30, 1)]),
            Err(InputError::NotReady),
            "no driver yet"
        );
        device.shared.lock().active = true;
        let (mut q, interrupt) = queues(&mem, eventq, device.shared.clone());
        handle.send(&[InputEvent::new(EV_KEY, 30, 1)]).unwrap();
        q.backend_ready(0).unwrap();
        assert_eq!(used_idx(&mem, &mock), 2);
        assert_eq!(used_len(&mem, &mock, 0), 8);
        assert_eq!(event_at(&mem, 0), InputEvent::new(EV_KEY, 30, 1));
        assert_eq!(event_at(&mem, 1), InputEvent::syn());
        assert_eq!(interrupt.used(), 1);
    }

    #[test]
    fn events_wait_for_buffers_and_the_backlog_is_bounded() {
        let mem = memory();
        let (mock, eventq) = eventq_with_buffers(&mem, 1, 8);
        let device = Input::new(InputKind::Tablet).unwrap();
        device.shared.lock().active = true;
        let handle = device.handle();
        let (mut q, _) = queues(&mem, eventq, device.shared.clone());
        handle
            .send(&[
                InputEvent::new(EV_ABS, ABS_X, 100),
                InputEvent::new(EV_ABS, ABS_Y, 200),
            ])
            .unwrap();
        q.deliver().unwrap();
        assert_eq!(used_idx(&mem, &mock), 1, "one buffer, one event");
        assert_eq!(device.shared.lock().events.len(), 2, "the rest waits");

        let group = [InputEvent::new(EV_REL, REL_WHEEL, 1); 63];
        let mut refused = None;
        for _ in 0..MAX_BACKLOG {
            if let Err(e) = handle.send(&group) {
                refused = Some(e);
                break;
            }
        }
        assert!(matches!(refused, Some(InputError::Backlog(_))));
        assert!(device.shared.lock().events.len() <= MAX_BACKLOG);
        assert_eq!(
            device.shared.lock().events.back(),
            Some(&InputEvent::syn()),
            "no half group"
        );
    }

    #[test]
    fn the_host_cannot_send_what_the_device_did_not_announce() {
        let device = Input::new(InputKind::Keyboard).unwrap();
        device.shared.lock().active = true;
        let handle = device.handle();
        assert!(matches!(
            handle.send(&[InputEvent::new(EV_ABS, ABS_X, 1)]),
            Err(InputError::Unsupported { .. })
        ));
        assert_eq!(handle.send(&[]), Err(InputError::GroupSize));
    }

    #[test]
    fn short_or_wild_buffers_are_returned_empty_and_the_event_waits() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, 64);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                0x10000,
                4,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0xfff_0000,
                8,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
            RawDescriptor::from(SplitDescriptor::new(0x10010, 8, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(
                0x10020,
                8,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        for (i, d) in descs.iter().enumerate() {
            mock.add_desc_chains(&[*d], i as u16).unwrap();
        }
        let mut eventq: Queue = mock.create_queue().unwrap();
        eventq.set_ready(true);
        let device = Input::new(InputKind::Keyboard).unwrap();
        device.shared.lock().active = true;
        let (mut q, _) = queues(&mem, eventq, device.shared.clone());
        device
            .handle()
            .send(&[InputEvent::new(EV_KEY, 2, 1)])
            .unwrap();
        q.deliver().unwrap();
        assert_eq!(used_idx(&mem, &mock), 4);
        assert_eq!(
            (0..3).map(|s| used_len(&mem, &mock, s)).collect::<Vec<_>>(),
            [0, 0, 0]
        );
        assert_eq!(used_len(&mem, &mock, 3), 8);
        let mut bytes = [0u8; 8];
        mem.read_slice(&mut bytes, GuestAddress(0x10020)).unwrap();
        assert_eq!(
            InputEvent::from_le_bytes(bytes),
            InputEvent::new(EV_KEY, 2, 1)
        );
        assert_eq!(device.shared.lock().events.len(), 1, "SYN still waits");
    }

    #[test]
    fn the_guest_sets_the_keyboard_leds_on_the_status_queue() {
        let mem = memory();
        let (_mock, eventq) = eventq_with_buffers(&mem, 1, 8);
        let device = Input::new(InputKind::Keyboard).unwrap();
        let (mut q, _) = queues(&mem, eventq, device.shared.clone());
        // Its own status queue, away from the one `queues` made.
        let status_mock = MockSplitQueue::create(&mem, GuestAddress(0x50000), 16);
        let leds = [
            InputEvent::new(EV_LED, LED_CAPSL, 1),
            InputEvent::new(EV_LED, LED_NUML, 1),
            InputEvent::new(EV_LED, LED_NUML, 0),
            InputEvent::syn(),
        ];
        for (i, e) in leds.iter().enumerate() {
            mem.write_slice(&e.to_le_bytes(), GuestAddress(0x20000 + 8 * i as u64))
                .unwrap();
        }
        let desc = RawDescriptor::from(SplitDescriptor::new(0x20000, 32, 0, 0));
        status_mock.add_desc_chains(&[desc], 0).unwrap();
        let mut statusq: Queue = status_mock.create_queue().unwrap();
        statusq.set_ready(true);
        q.statusq = statusq;
        q.queue_notified(1).unwrap();
        assert_eq!(device.handle().leds(), 1 << LED_CAPSL);
    }

    #[test]
    fn activate_serves_kicks_and_reset_forgets_the_driver() {
        let mem = memory();
        let (mock, eventq) = eventq_with_buffers(&mem, 8, 8);
        let status_mock = MockSplitQueue::create(&mem, GuestAddress(0x40000), 16);
        let mut statusq: Queue = status_mock.create_queue().unwrap();
        statusq.set_ready(true);
        let mut device = Input::new(InputKind::Tablet).unwrap();
        let handle = device.handle();
        let interrupt = Arc::new(CountingInterrupt::default());
        let queues = vec![
            ActiveQueue {
                index: 0,
                queue: eventq,
                notify: EventFd::new(0).unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: statusq,
                notify: EventFd::new(0).unwrap(),
            },
        ];
        device
            .activate(mem.clone(), interrupt.clone(), queues, VIRTIO_F_VERSION_1)
            .unwrap();
        handle
            .send(&[InputEvent::new(EV_KEY, BTN_LEFT, 1)])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while used_idx(&mem, &mock) < 2 {
            assert!(Instant::now() < deadline, "the worker did not deliver");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(event_at(&mem, 0), InputEvent::new(EV_KEY, BTN_LEFT, 1));
        device.reset();
        assert!(!handle.is_active());
        assert_eq!(
            handle.send(&[InputEvent::new(EV_KEY, BTN_LEFT, 0)]),
            Err(InputError::NotReady)
        );
    }

    /// A new keyboard restored from `saved` over the driver's two queues (the event
    /// queue `mock`, the status queue at 0x40000), each where the save left it.
    fn restored(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<'_, GuestMemoryMmap>,
        saved: &DeviceState,
    ) -> (Input, EventFd, Arc<CountingInterrupt>) {
        let saved: DeviceState =
            serde_json::from_str(&serde_json::to_string(saved).unwrap()).unwrap();
        let status_mock = MockSplitQueue::create(mem, GuestAddress(0x40000), 16);
        let queues = [mock, &status_mock]
            .into_iter()
            .zip(&saved.queues)
            .map(|(m, at)| {
                let mut queue: Queue = m.create_queue().unwrap();
                queue.set_ready(true);
                queue.set_next_avail(at.next_avail);
                queue.set_next_used(at.next_used);
                ActiveQueue {
                    index: at.index,
                    queue,
                    notify: EventFd::new(0).unwrap(),
                }
            })
            .collect::<Vec<_>>();
        let kick = queues[0].notify.try_clone().unwrap();
        let mut device = Input::new(InputKind::Keyboard).unwrap();
        let interrupt = Arc::new(CountingInterrupt::default());
        device
            .restore(
                mem.clone(),
                interrupt.clone(),
                queues,
                VIRTIO_F_VERSION_1,
                &saved.device,
            )
            .unwrap();
        (device, kick, interrupt)
    }

    fn wait_used(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while used_idx(mem, mock) < idx {
            assert!(Instant::now() < deadline, "the worker did not deliver");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Buffers the driver posted before a save take events after the restore; events
    /// waiting for buffers at a save reach the driver after the restore; the LEDs and
    /// the configuration space's question are the same; nothing is delivered twice.
    #[test]
    fn a_restored_keyboard_keeps_its_buffers_events_leds_and_question() {
        let mem = memory();
        let (mock, eventq) = eventq_with_buffers(&mem, 4, 8);
        let status_mock = MockSplitQueue::create(&mem, GuestAddress(0x40000), 16);
        let mut statusq: Queue = status_mock.create_queue().unwrap();
        statusq.set_ready(true);
        let mut device = Input::new(InputKind::Keyboard).unwrap();
        let queues = vec![
            ActiveQueue {
                index: 0,
                queue: eventq,
                notify: EventFd::new(0).unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: statusq,
                notify: EventFd::new(0).unwrap(),
            },
        ];
        let interrupt = Arc::new(CountingInterrupt::default());
        device
            .activate(mem.clone(), interrupt, queues, VIRTIO_F_VERSION_1)
            .unwrap();
        device
            .handle()
            .send(&[InputEvent::new(EV_KEY, 30, 1)])
            .unwrap();
        wait_used(&mem, &mock, 2);
        device.write_config(0, &[CFG_EV_BITS as u8, EV_KEY as u8]);
        device.shared.lock().leds = 1 << LED_CAPSL;

        // Two buffers posted and not yet used.
        let saved = device.save().unwrap();
        assert!(!device.handle().is_active());
        let (mut device, _kick, _) = restored(&mem, &mock, &saved);
        let handle = device.handle();
        assert_eq!(handle.leds(), 1 << LED_CAPSL);
        let mut question = [0u8; 3];
        device.read_config(0, &mut question);
        assert_eq!(question[..2], [CFG_EV_BITS as u8, EV_KEY as u8]);
        assert_ne!(question[2], 0, "the answer's size");
        handle.send(&[InputEvent::new(EV_KEY, 30, 0)]).unwrap();
        wait_used(&mem, &mock, 4);
        assert_eq!(event_at(&mem, 0), InputEvent::new(EV_KEY, 30, 1));
        assert_eq!(event_at(&mem, 2), InputEvent::new(EV_KEY, 30, 0));
        assert_eq!(event_at(&mem, 3), InputEvent::syn());

        // No buffer left: a group waits, is saved, and is delivered after the restore
        // once the driver posts buffers.
        handle.send(&[InputEvent::new(EV_KEY, 48, 1)]).unwrap();
        let saved = device.save().unwrap();
        let (mut device, kick, interrupt) = restored(&mem, &mock, &saved);
        assert_eq!(device.handle().backlog(), 2);
        for i in 4..6 {
            let desc = RawDescriptor::from(SplitDescriptor::new(
                0x10000 + 16 * u64::from(i),
                8,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
            mock.add_desc_chains(&[desc], i).unwrap();
        }
        kick.write(1).unwrap();
        wait_used(&mem, &mock, 6);
        assert_eq!(event_at(&mem, 4), InputEvent::new(EV_KEY, 48, 1));
        assert_eq!(event_at(&mem, 5), InputEvent::syn());
        assert_eq!(used_idx(&mem, &mock), 6);
        assert_eq!(device.handle().backlog(), 0);
        assert!(interrupt.used_on(0) > 0);
        device.reset();
    }

    #[test]
    fn a_malformed_saved_state_is_an_error() {
        let mem = memory();
        let syn = [EV_SYN, SYN_REPORT, 0];
        for bad in [
            serde_json::Value::Null,
            serde_json::json!({"select": 1, "subsel": 0, "leds": 0}),
            serde_json::json!({"select": 300, "subsel": 0, "leds": 0, "events": []}),
            // A relative axis the keyboard never announced.
            serde_json::json!({"select": 0, "subsel": 0, "leds": 0,
                "events": [[EV_REL, 0, 1], syn]}),
            // A group cut in half.
            serde_json::json!({"select": 0, "subsel": 0, "leds": 0,
                "events": [[EV_KEY, 30, 1]]}),
            serde_json::json!({"select": 0, "subsel": 0, "leds": 0,
                "events": vec![syn; MAX_BACKLOG + 1]}),
        ] {
            let (_mock, eventq) = eventq_with_buffers(&mem, 1, 8);
            let (_, statusq) = eventq_with_buffers(&mem, 0, 8);
            let queues = vec![
                ActiveQueue {
                    index: 0,
                    queue: eventq,
                    notify: EventFd::new(0).unwrap(),
                },
                ActiveQueue {
                    index: 1,
                    queue: statusq,
                    notify: EventFd::new(0).unwrap(),
                },
            ];
            let mut device = Input::new(InputKind::Keyboard).unwrap();
            let result = device.restore(
                mem.clone(),
                Arc::new(CountingInterrupt::default()),
                queues,
                VIRTIO_F_VERSION_1,
                &bad,
            );
            assert!(matches!(result, Err(ActivateError::BadState(_))), "{bad}");
            assert!(!device.handle().is_active());
        }
    }

    #[test]
    fn the_wrong_number_of_queues_is_refused() {
        let mem = memory();
        let (_mock, eventq) = eventq_with_buffers(&mem, 1, 8);
        let mut device = Input::new(InputKind::Keyboard).unwrap();
        let queues = vec![ActiveQueue {
            index: 0,
            queue: eventq,
            notify: EventFd::new(0).unwrap(),
        }];
        assert!(matches!(
            device.activate(mem, Arc::new(CountingInterrupt::default()), queues, 0),
            Err(ActivateError::QueueCount { got: 1, needed: 2 })
        ));
        assert!(!device.handle().is_active());
    }
}
