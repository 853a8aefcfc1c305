//! virtio-gpu (virtio 1.2, 5.7 "GPU Device"), 2D: the `virtio-gpu` crate's state machine
//! behind the engine's device contract. One worker serves controlq and cursorq; the
//! guest's pixels land in memfd framebuffers (`memfd`) and its flushes, mode changes and
//! cursor become events on the control socket (`display`). The host side (`GpuHandle`)
//! takes screenshots and offers the guest a new display size. A saved GPU is the
//! crate's `GpuState` (pixels included) beside its two queue positions; restoring it
//! recreates the framebuffers, and clients hear the mode and damage as after a
//! SET_SCANOUT.

pub mod display;
pub mod memfd;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use virtio_gpu::{GpuConfig, GpuState, ScanoutConfig, CONTROLQ, CURSORQ, QUEUE_SIZES};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::poll::Poller;
use super::worker::{Worker, WorkerHandler};
use super::{
    drain_queue, exact_queues, ActivateError, ActiveQueue, DeviceState, Interrupt, QueuePosition,
    SaveError, VirtioDevice,
};
use crate::control::events::EventHub;
use display::HubDisplay;

/// The only scanout the engine configures: the VM's one display.
pub const SCANOUT: u32 = 0;

/// How long the worker keeps looking at the control queue after serving it, at most:
/// drivers send TRANSFER_TO_HOST_2D and RESOURCE_FLUSH back to back, each after the
/// previous answer, and going to sleep in between would cost a wake-up and the guest a
/// notify exit each (see `poll`, which also shortens the window when looking does not
/// pay).
const CONTROLQ_POLL: Duration = Duration::from_micros(50);

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot set up the GPU: {0}")]
    Config(#[from] virtio_gpu::ConfigError),
    #[error("cannot set up the GPU's event hub: {0}")]
    Hub(#[source] std::io::Error),
    #[error("the guest shows nothing on its screen yet")]
    NoScanout,
    #[error("cannot write the screenshot {path}: {detail}")]
    Screenshot { path: String, detail: String },
    #[error(transparent)]
    Resize(#[from] virtio_gpu::ResizeError),
    #[error("cannot interrupt the guest: {0}")]
    Interrupt(#[source] std::io::Error),
}

/// What the device, its worker and its host side share.
struct Shared {
    gpu: Mutex<virtio_gpu::Gpu>,
    /// The transport's interrupt while a driver runs the device (for config changes).
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    hub: Arc<EventHub>,
}

impl Shared {
    fn gpu(&self) -> MutexGuard<'_, virtio_gpu::Gpu> {
        // The device checks every command before changing state: a panic elsewhere
        // cannot leave it half-updated.
        self.gpu.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The host side of the GPU: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct GpuHandle {
    shared: Arc<Shared>,
}

/// An RGBA copy of the screen.
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl GpuHandle {
    /// The display events' hub (for the control socket).
    pub fn events(&self) -> Arc<EventHub> {
        self.shared.hub.clone()
    }

    /// The size of what the guest shows, if anything.
    pub fn scanout_size(&self) -> Option<(u32, u32)> {
        let mode = self.shared.gpu().scanout_mode(SCANOUT)?;
        Some((mode.width, mode.height))
    }

    /// The screen now, converted to RGBA (the device is held only for the copy).
    pub fn capture(&self) -> Result<Screenshot, GpuError> {
        let gpu = self.shared.gpu();
        let (Some(mode), Some(fb)) = (gpu.scanout_mode(SCANOUT), gpu.framebuffer(SCANOUT)) else {
            return Err(GpuError::NoScanout);
        };
        let (width, height, stride) = (mode.width as usize, mode.height as usize, fb.stride());
        let mut rgba = Vec::with_capacity(width * height * 4);
        for row in fb.pixels().chunks(stride as usize).take(height) {
            for pixel in row[..width * 4].chunks_exact(4) {
                let pixel = [pixel[0], pixel[1], pixel[2], pixel[3]];
                rgba.extend_from_slice(&mode.format.to_rgba(pixel));
            }
        }
        Ok(Screenshot {
            width: mode.width,
            height: mode.height,
            rgba,
        })
    }

    /// Writes the screen to `path` as an RGBA PNG; returns its size.
    pub fn screenshot(&self, path: &Path) -> Result<(u32, u32), GpuError> {
        let shot = self.capture()?;
        let fail = |detail: String| GpuError::Screenshot {
            path: path.display().to_string(),
            detail,
        };
        let file = std::fs::File::create(path).map_err(|e| fail(e.to_string()))?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), shot.width, shot.height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        // Screenshots are for tests and bug reports: quick beats small.
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().map_err(|e| fail(e.to_string()))?;
        writer
            .write_image_data(&shot.rgba)
            .map_err(|e| fail(e.to_string()))?;
        writer.finish().map_err(|e| fail(e.to_string()))?;
        Ok((shot.width, shot.height))
    }

    /// Offers the guest a `width`x`height` display (the host window was resized),
    /// raising the configuration-change interrupt when that changes anything.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), GpuError> {
        let changed = self.shared.gpu().set_display_size(SCANOUT, width, height)?;
        let interrupt = self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (true, Some(interrupt)) = (changed, interrupt) {
            interrupt
                .signal_config_change()
                .map_err(GpuError::Interrupt)?;
        }
        Ok(())
    }
}

/// The worker's side: both queues.
pub struct GpuQueues {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    controlq: Queue,
    cursorq: Queue,
    shared: Arc<Shared>,
    controlq_poller: Poller,
}

impl GpuQueues {
    /// Serves queue `index` (CONTROLQ or CURSORQ) until it has been empty for a while.
    fn serve(&mut self, index: u16) -> Result<(), String> {
        if index == CONTROLQ {
            self.controlq_poller.woken();
        }
        loop {
            self.drain(index)?;
            if index != CONTROLQ {
                return Ok(());
            }
            let more = self
                .controlq_poller
                .poll(&mut self.controlq, &self.mem)
                .map_err(|e| format!("virtio-gpu controlq: {e}"))?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Serves every chain waiting on queue `index`.
    fn drain(&mut self, index: u16) -> Result<(), String> {
        let mem = self.mem.clone();
        let mut gpu = self.shared.gpu();
        let (queue, name) = if index == CONTROLQ {
            (&mut self.controlq, "controlq")
        } else {
            (&mut self.cursorq, "cursorq")
        };
        let notify = drain_queue(queue, &mem, |chain| {
            if index == CONTROLQ {
                gpu.process_control(chain, &mem)
            } else {
                gpu.process_cursor(chain, &mem)
            }
        })
        .map_err(|e| format!("virtio-gpu {name}: {e}"))?;
        drop(gpu);
        if notify {
            self.interrupt
                .signal_used_queue(index)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl WorkerHandler for GpuQueues {
    fn queue_notified(&mut self, index: usize) -> Result<(), String> {
        match index {
            0 => self.serve(CONTROLQ),
            _ => self.serve(CURSORQ),
        }
    }
}

/// The GPU device.
pub struct Gpu {
    shared: Arc<Shared>,
    worker: Option<Worker<GpuQueues>>,
}

impl Gpu {
    /// A GPU with one display of `width`x`height`.
    pub fn new(width: u32, height: u32) -> Result<Self, GpuError> {
        let config = GpuConfig {
            scanouts: vec![ScanoutConfig { width, height }],
            ..GpuConfig::default()
        };
        let hub = Arc::new(EventHub::new().map_err(GpuError::Hub)?);
        let gpu = virtio_gpu::Gpu::new(&config, Box::new(HubDisplay::new(hub.clone())))?;
        Ok(Gpu {
            shared: Arc::new(Shared {
                gpu: Mutex::new(gpu),
                interrupt: Mutex::new(None),
                hub,
            }),
            worker: None,
        })
    }

    pub fn handle(&self) -> GpuHandle {
        GpuHandle {
            shared: self.shared.clone(),
        }
    }

    /// Hands memory, the interrupt and both queues to a new worker.
    fn start_worker(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        [controlq, cursorq]: [ActiveQueue; 2],
    ) -> Result<(), ActivateError> {
        self.set_interrupt(Some(interrupt.clone()));
        let handler = GpuQueues {
            mem,
            interrupt,
            controlq: controlq.queue,
            cursorq: cursorq.queue,
            shared: self.shared.clone(),
            controlq_poller: Poller::new(CONTROLQ_POLL),
        };
        match Worker::spawn("virtio-gpu", vec![controlq.notify, cursorq.notify], handler) {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                self.set_interrupt(None);
                Err(ActivateError::Worker(e))
            }
        }
    }

    fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = interrupt;
    }
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u32 {
        virtio_gpu::Gpu::DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        self.shared.gpu().features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.shared.gpu().read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.shared.gpu().write_config(offset, data);
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
        let queues = exact_queues::<2>(queues)?;
        self.shared.gpu().ack_features(acked_features);
        self.start_worker(mem, interrupt, queues)
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        self.set_interrupt(None);
        self.shared.gpu().reset();
    }

    /// The worker stops between two requests; the device model keeps what it shows
    /// (clients still see the screen) and its copy goes into the state.
    fn save(&mut self) -> Result<DeviceState, SaveError> {
        let handler = super::worker::stop_for_save(&mut self.worker)?;
        self.set_interrupt(None);
        let state = self.shared.gpu().save();
        let device = serde_json::to_value(&state)
            .map_err(|e| SaveError::Device(format!("virtio-gpu: {e}")))?;
        Ok(DeviceState {
            queues: vec![
                QueuePosition::of(CONTROLQ, &handler.controlq),
                QueuePosition::of(CURSORQ, &handler.cursorq),
            ],
            device,
        })
    }

    /// Rebuilds the model from the state (checked field by field: it comes from a
    /// file), then serves the queues from where they were saved.
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
        let queues = exact_queues::<2>(queues)?;
        let bad = |e: &dyn std::fmt::Display| ActivateError::BadState(format!("virtio-gpu: {e}"));
        let state = GpuState::deserialize(state).map_err(|e| bad(&e))?;
        {
            let mut gpu = self.shared.gpu();
            gpu.restore(&state, &mem).map_err(|e| bad(&e))?;
            // The transport's word on features is the one the driver negotiated.
            gpu.ack_features(acked_features);
        }
        super::worker::kick_each(&queues).map_err(ActivateError::Worker)?;
        let started = self.start_worker(mem, interrupt, queues);
        if started.is_err() {
            self.shared.gpu().reset();
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_gpu as b;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const REQ: u64 = 0x1_0000;
    const RESP: u64 = 0x2_0000;
    const PIXELS: u64 = 0x4_0000;

    fn le(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A control command: the 24-byte header (type, flags, fence_id, ctx_id, ring_idx,
    /// padding) then `body`.
    fn command(type_: u32, body: &[u32]) -> Vec<u8> {
        let mut bytes = le(&[type_, 0, 0, 0, 0, 0]);
        bytes.extend(le(body));
        bytes
    }

    /// Posts command number `i` as a chain (request readable, 64-byte response
    /// writable) on the queue `mock` drives, in descriptors `2i` and `2i + 1`.
    fn post(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>, i: usize, cmd: &[u8]) {
        let req = REQ + i as u64 * 0x100;
        let resp = RESP + i as u64 * 0x100;
        mem.write_slice(cmd, GuestAddress(req)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                req,
                cmd.len() as u32,
                VRING_DESC_F_NEXT as u16,
                (i * 2 + 1) as u16,
            )),
            RawDescriptor::from(SplitDescriptor::new(resp, 64, VRING_DESC_F_WRITE as u16, 0)),
        ];
        mock.add_desc_chains(&descs, (i * 2) as u16).unwrap();
    }

    /// Waits until the device has used `n` chains of `mock`'s queue; returns the
    /// response types of the first `n` commands.
    fn wait_used(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<GuestMemoryMmap>,
        n: usize,
    ) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let used_idx: u16 = mem.read_obj(GuestAddress(mock.used_addr().0 + 2)).unwrap();
            if usize::from(used_idx) == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not serve the queue"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (0..n)
            .map(|i| mem.read_obj(GuestAddress(RESP + i as u64 * 0x100)).unwrap())
            .collect()
    }

    /// The two queues, as the transport hands them over: controlq from `mock`, an
    /// empty cursorq at 0x8000; `positions` where a save left them.
    fn transport_queues(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<GuestMemoryMmap>,
        positions: &[QueuePosition],
    ) -> (Vec<ActiveQueue>, EventFd) {
        let cursor_mock = MockSplitQueue::create(mem, GuestAddress(0x8000), 16);
        let mut controlq: Queue = mock.create_queue().unwrap();
        let mut cursorq: Queue = cursor_mock.create_queue().unwrap();
        for (queue, at) in [&mut controlq, &mut cursorq].into_iter().zip(positions) {
            queue.set_next_avail(at.next_avail);
            queue.set_next_used(at.next_used);
        }
        let notify = EventFd::new(0).unwrap();
        let kick = notify.try_clone().unwrap();
        let active = vec![
            ActiveQueue {
                index: 0,
                queue: controlq,
                notify,
            },
            ActiveQueue {
                index: 1,
                queue: cursorq,
                notify: EventFd::new(0).unwrap(),
            },
        ];
        (active, kick)
    }

    /// Posts each command, kicks controlq of a new 4x2 GPU and returns the response
    /// types, in order.
    fn run_commands(commands: &[Vec<u8>]) -> (Vec<u32>, GpuHandle, Arc<CountingInterrupt>, Gpu) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        for (i, cmd) in commands.iter().enumerate() {
            post(&mem, &mock, i, cmd);
        }
        let mut gpu = Gpu::new(4, 2).unwrap();
        let handle = gpu.handle();
        let interrupt = Arc::new(CountingInterrupt::default());
        let (queues, kick) = transport_queues(&mem, &mock, &[]);
        let features = gpu.device_features();
        gpu.activate(mem.clone(), interrupt.clone(), queues, features)
            .unwrap();
        kick.write(1).unwrap();
        let types = wait_used(&mem, &mock, commands.len());
        (types, handle, interrupt, gpu)
    }

    #[test]
    fn a_flushed_frame_reaches_the_screenshot_and_a_subscriber() {
        let ok = b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
        let format = b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM;
        // The guest's pixels, at PIXELS, are still zero: the transfer copies those.
        let commands = [
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
                &[1, format, 4, 2],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
                &[1, 1, PIXELS as u32, 0, 32, 0],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT,
                &[0, 0, 4, 2, 0, 1],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
                &[0, 0, 4, 2, 0, 0, 1, 0],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH,
                &[0, 0, 4, 2, 1, 0],
            ),
            // A resource that does not exist: an error response, no panic.
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH,
                &[0, 0, 4, 2, 9, 0],
            ),
        ];
        let (types, handle, interrupt, mut gpu) = run_commands(&commands);
        assert_eq!(&types[..5], &[ok; 5]);
        assert_eq!(
            types[5],
            b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        );
        assert!(interrupt.used() > 0);
        // Guest memory at PIXELS was zero: the screen is transparent black, 4x2.
        let shot = handle.capture().unwrap();
        assert_eq!((shot.width, shot.height), (4, 2));
        assert_eq!(shot.rgba, vec![0u8; 32]);
        assert_eq!(handle.scanout_size(), Some((4, 2)));
        // A subscriber arriving now gets the mode and its memfd.
        let (_, mode, fd, _) = handle.events().subscribe();
        assert!(mode.enabled && fd.is_some());
        assert_eq!(
            (mode.width, mode.stride, mode.format.as_str()),
            (4, 16, "R8G8B8A8")
        );
        // The host resizes: a config interrupt.
        handle.resize(8, 6).unwrap();
        assert_eq!(interrupt.config(), 1);
        handle.resize(8, 6).unwrap();
        assert_eq!(interrupt.config(), 1, "nothing changed");
        assert!(handle.resize(0, 6).is_err());
        gpu.reset();
        assert!(matches!(handle.capture(), Err(GpuError::NoScanout)));
    }

    #[test]
    fn a_screenshot_is_a_png_of_the_screen() {
        let format = b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
        let commands = [
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
                &[1, format, 4, 2],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
                &[1, 1, PIXELS as u32, 0, 32, 0],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT,
                &[0, 0, 4, 2, 0, 1],
            ),
        ];
        let (_, handle, ..) = run_commands(&commands);
        let path = std::env::temp_dir().join(format!("vireo-gpu-shot-{}.png", std::process::id()));
        assert_eq!(handle.screenshot(&path).unwrap(), (4, 2));
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (4, 2));
        // X8 formats are opaque.
        assert_eq!(&buf[..4], &[0, 0, 0, 255]);
        std::fs::remove_file(&path).unwrap();
        let bad = handle.screenshot(Path::new("/nonexistent-dir/shot.png"));
        assert!(matches!(bad, Err(GpuError::Screenshot { .. })));
    }

    /// A 4x2 frame of distinct pixels, on screen.
    fn show_frame(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>) {
        let pixels: Vec<u8> = (1..=32).collect();
        mem.write_slice(&pixels, GuestAddress(PIXELS)).unwrap();
        let format = b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM;
        let commands = [
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
                &[1, format, 4, 2],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
                &[1, 1, PIXELS as u32, 0, 32, 0],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT,
                &[0, 0, 4, 2, 0, 1],
            ),
            command(
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
                &[0, 0, 4, 2, 0, 0, 1, 0],
            ),
        ];
        for (i, cmd) in commands.iter().enumerate() {
            post(mem, mock, i, cmd);
        }
    }

    #[test]
    fn a_saved_gpu_restores_into_a_new_one_with_the_same_screen() {
        let ok = b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        show_frame(&mem, &mock);
        let mut gpu = Gpu::new(4, 2).unwrap();
        let (queues, kick) = transport_queues(&mem, &mock, &[]);
        let features = gpu.device_features();
        let interrupt = Arc::new(CountingInterrupt::default());
        gpu.activate(mem.clone(), interrupt, queues, features)
            .unwrap();
        kick.write(1).unwrap();
        assert_eq!(wait_used(&mem, &mock, 4), vec![ok; 4]);
        let before = gpu.handle().capture().unwrap();
        assert_eq!(&before.rgba[..4], &[3, 2, 1, 4], "B8G8R8A8 as RGBA");

        let saved = gpu.save().unwrap();
        let positions = [
            QueuePosition {
                index: 0,
                next_avail: 4,
                next_used: 4,
            },
            QueuePosition {
                index: 1,
                next_avail: 0,
                next_used: 0,
            },
        ];
        assert_eq!(saved.queues, positions);
        // Through a file, as a real save goes.
        let saved: DeviceState =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();

        let mut restored = Gpu::new(4, 2).unwrap();
        let handle = restored.handle();
        let (queues, kick) = transport_queues(&mem, &mock, &saved.queues);
        let interrupt = Arc::new(CountingInterrupt::default());
        restored
            .restore(
                mem.clone(),
                interrupt.clone(),
                queues,
                features,
                &saved.device,
            )
            .unwrap();
        let after = handle.capture().unwrap();
        assert_eq!((after.width, after.height), (4, 2));
        assert_eq!(after.rgba, before.rgba);
        // A client attaching now gets the screen's mode and memfd.
        let (_, mode, fd, _) = handle.events().subscribe();
        assert!(mode.enabled && fd.is_some());

        // The driver goes on where it was: its next request is served and answered.
        let flush = command(
            b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            &[0, 0, 4, 2, 1, 0],
        );
        post(&mem, &mock, 4, &flush);
        kick.write(1).unwrap();
        assert_eq!(wait_used(&mem, &mock, 5), vec![ok; 5]);
        assert!(interrupt.used_on(0) > 0);
        handle.resize(8, 6).unwrap();
        assert_eq!(interrupt.config(), 1);
        restored.reset();
    }

    #[test]
    fn a_state_that_does_not_fit_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let mut gpu = Gpu::new(4, 2).unwrap();
        let features = gpu.device_features();
        let interrupt: Arc<dyn Interrupt> = Arc::new(CountingInterrupt::default());
        let mut state = gpu.shared.gpu().save();
        state.scanouts[0].resource_id = 3;
        let bad_states = [
            serde_json::Value::Null,
            serde_json::json!({"version": 1}),
            serde_json::to_value(&state).unwrap(),
        ];
        for bad in &bad_states {
            let (queues, _) = transport_queues(&mem, &mock, &[]);
            let err = gpu
                .restore(mem.clone(), interrupt.clone(), queues, features, bad)
                .unwrap_err();
            assert!(matches!(err, ActivateError::BadState(_)), "{err}");
            assert!(gpu.worker.is_none());
        }
        // The device is still whole: a driver can activate it.
        let (queues, _) = transport_queues(&mem, &mock, &[]);
        gpu.activate(mem.clone(), interrupt, queues, features)
            .unwrap();
        gpu.reset();
    }
}
