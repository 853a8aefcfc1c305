//! The device: resources, scanouts, cursor and configuration space, driven one
//! descriptor chain at a time (virtio 1.2, 5.7 "GPU Device").
//!
//! Queue 0 (controlq) carries the commands of 5.7.6.8, queue 1 (cursorq) UPDATE_CURSOR
//! and MOVE_CURSOR. Each chain is a request (device-readable) followed by room for the
//! response (device-writable). Everything happens before the response is written: a
//! fenced command's fence has completed when the driver sees its answer.

use std::collections::HashMap;
use std::mem::size_of;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_gpu::{self as b, VIRTIO_GPU_EVENT_DISPLAY, VIRTIO_GPU_F_EDID};
use virtio_bindings::virtio_ids::VIRTIO_ID_GPU;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use vm_memory::GuestMemory;

use crate::chain::Chain;
use crate::config::{check_size, ConfigError, GpuConfig};
use crate::display::{
    CursorEvent, CursorImage, DisplayBackend, DisplayEvent, Framebuffer, FramebufferId, Rect,
    ScanoutMode, CURSOR_HEIGHT, CURSOR_WIDTH,
};
use crate::edid;
use crate::format::{PixelFormat, BYTES_PER_PIXEL};
use crate::protocol::{
    self, attach_backing_entries, Command, CommandError, CtrlHdr, DisplayOne, CTRL_HDR_LEN,
    MEM_ENTRY_LEN, VIRTIO_GPU_RESP_ERR_UNSPEC, VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
    VIRTIO_GPU_RESP_OK_EDID, VIRTIO_GPU_RESP_OK_NODATA,
};
use crate::resource::{framebuffer_fits, Backing, Resource};

/// Bytes of the configuration space (`struct virtio_gpu_config`).
pub const CONFIG_SPACE_LEN: usize = size_of::<b::virtio_gpu_config>();
/// The most entries one RESOURCE_ATTACH_BACKING may carry: 512 MiB in 4 KiB pages, more
/// than the largest resource the memory cap allows even with no two pages adjacent.
pub const MAX_BACKING_ENTRIES: u32 = 1 << 17;

/// Queue indices and sizes.
pub const CONTROLQ: u16 = 0;
pub const CURSORQ: u16 = 1;
pub const QUEUE_SIZES: [u16; 2] = [256, 16];

const EVENTS_READ_AT: usize = std::mem::offset_of!(b::virtio_gpu_config, events_read);
const EVENTS_CLEAR_AT: usize = std::mem::offset_of!(b::virtio_gpu_config, events_clear);
const NUM_SCANOUTS_AT: usize = std::mem::offset_of!(b::virtio_gpu_config, num_scanouts);
const NUM_CAPSETS_AT: usize = std::mem::offset_of!(b::virtio_gpu_config, num_capsets);

/// Why the host's display size change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    #[error("scanout {0} does not exist")]
    InvalidScanout(u32),
    #[error(transparent)]
    Size(#[from] ConfigError),
}

/// Which queue a chain came from: each serves its own commands only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueKind {
    Control,
    Cursor,
}

/// One display.
pub(crate) struct Scanout {
    /// The size the host wants (display info, EDID).
    pub(crate) preferred: (u32, u32),
    /// The resource shown (0: none) and which part of it.
    pub(crate) resource_id: u32,
    pub(crate) rect: Rect,
    /// What the scanout shows and in which framebuffer (both `Some` when enabled).
    mode: Option<ScanoutMode>,
    shown: Option<FramebufferId>,
    /// The scanout's own framebuffer, when it shows part of a resource (flushes copy
    /// into it); `None` when it shows a resource whole, in the resource's storage.
    copy: Option<Box<dyn Framebuffer>>,
}

/// The cursor as the guest last set it, kept so that a snapshot can show it again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) scanout: u32,
    pub(crate) x: i32,
    pub(crate) y: i32,
    /// The resource the image came from and the image (`None`: hidden). The image is
    /// kept, not the resource: the guest may change or unref the resource after
    /// UPDATE_CURSOR, and the cursor shows what it was then.
    pub(crate) image: Option<(u32, CursorImage)>,
}

/// The virtio-gpu device.
pub struct Gpu {
    pub(crate) scanouts: Vec<Scanout>,
    pub(crate) resources: HashMap<u32, Resource>,
    max_host_memory: u64,
    used_host_memory: u64,
    pub(crate) acked_features: u64,
    /// `events_read` of the configuration space.
    pub(crate) events_read: u32,
    pub(crate) cursor: Cursor,
    display: Box<dyn DisplayBackend>,
    /// The last [`FramebufferId`] handed out.
    last_framebuffer: u64,
    /// Counts SET_SCANOUTs, to find the resource shown longest ago.
    pub(crate) show_clock: u64,
}

/// How many resources may keep their pixels in display framebuffers per scanout: a
/// page-flipping driver cycles through two or three, each of which then flips with no
/// copy; a guest showing more in turn gets the longest unseen one moved back to host
/// memory (so a guest cannot make the display create framebuffers (memfds, each an
/// open file) without bound).
pub const DISPLAY_STORAGE_PER_SCANOUT: usize = 4;

/// Host bytes a framebuffer for `mode` costs.
fn framebuffer_cost(mode: &ScanoutMode) -> u64 {
    (u64::from(mode.width) * u64::from(mode.height)).saturating_mul(u64::from(BYTES_PER_PIXEL))
}

impl Gpu {
    /// The virtio device id.
    pub const DEVICE_TYPE: u32 = VIRTIO_ID_GPU;

    pub fn new(config: &GpuConfig, display: Box<dyn DisplayBackend>) -> Result<Self, ConfigError> {
        config.validate()?;
        let scanouts = config
            .scanouts
            .iter()
            .map(|s| Scanout {
                preferred: (s.width, s.height),
                resource_id: 0,
                rect: Rect::default(),
                mode: None,
                shown: None,
                copy: None,
            })
            .collect();
        Ok(Gpu {
            scanouts,
            resources: HashMap::new(),
            max_host_memory: config.max_host_memory,
            used_host_memory: 0,
            acked_features: 0,
            events_read: 0,
            cursor: Cursor::default(),
            display,
            last_framebuffer: 0,
            show_clock: 0,
        })
    }

    /// Every feature bit the device offers: VERSION_1, EVENT_IDX and VIRTIO_GPU_F_EDID.
    pub fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_GPU_F_EDID
    }

    /// The features the driver accepted (GET_EDID needs VIRTIO_GPU_F_EDID).
    pub fn ack_features(&mut self, acked: u64) {
        self.acked_features = acked & self.features();
    }

    /// Reads the configuration space; bytes past its end read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let mut put = |at: usize, v: u32| space[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(EVENTS_READ_AT, self.events_read);
        put(EVENTS_CLEAR_AT, 0);
        put(NUM_SCANOUTS_AT, self.scanouts.len() as u32);
        put(NUM_CAPSETS_AT, 0);
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64);
            *byte = at
                .and_then(|a| usize::try_from(a).ok())
                .and_then(|a| space.get(a).copied())
                .unwrap_or(0);
        }
    }

    /// Writes the configuration space: only `events_clear` is writable, and each 1 bit
    /// written clears that event in `events_read` (virtio 1.2, 5.7.4).
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                return;
            };
            let clear_at = EVENTS_CLEAR_AT as u64;
            if (clear_at..clear_at + 4).contains(&at) {
                self.events_read &= !(u32::from(byte) << (8 * (at - clear_at)));
            }
        }
    }

    /// `events_read` as the driver sees it.
    pub fn events_read(&self) -> u32 {
        self.events_read
    }

    /// The host wants scanout `scanout` to be `width`x`height` (its window was
    /// resized): display info and EDID report the new size and `events_read` gets
    /// VIRTIO_GPU_EVENT_DISPLAY. Returns whether anything changed, i.e. whether the
    /// caller must raise a configuration-change interrupt.
    pub fn set_display_size(
        &mut self,
        scanout: u32,
        width: u32,
        height: u32,
    ) -> Result<bool, ResizeError> {
        check_size(width, height)?;
        let s = self
            .scanouts
            .get_mut(scanout as usize)
            .ok_or(ResizeError::InvalidScanout(scanout))?;
        if s.preferred == (width, height) {
            return Ok(false);
        }
        s.preferred = (width, height);
        self.events_read |= VIRTIO_GPU_EVENT_DISPLAY;
        Ok(true)
    }

    /// The size the host wants for `scanout`.
    pub fn display_size(&self, scanout: u32) -> Option<(u32, u32)> {
        self.scanouts.get(scanout as usize).map(|s| s.preferred)
    }

    /// What `scanout` shows now, if anything.
    pub fn scanout_mode(&self, scanout: u32) -> Option<ScanoutMode> {
        self.scanouts.get(scanout as usize)?.mode
    }

    /// The framebuffer `scanout` shows (for screenshots), if it is enabled.
    pub fn framebuffer(&self, scanout: u32) -> Option<&dyn Framebuffer> {
        let s = self.scanouts.get(scanout as usize)?;
        s.mode?;
        match &s.copy {
            Some(fb) => Some(fb.as_ref()),
            None => Some(self.resources.get(&s.resource_id)?.display_storage()?.1),
        }
    }

    /// Host bytes resources, backings and framebuffers take now.
    pub fn used_host_memory(&self) -> u64 {
        self.used_host_memory
    }

    /// Forgets everything the driver set up (virtio 1.2, 2.4 "Device Reset"): resources,
    /// scanouts (the display hears they are disabled), cursor, pending events. The
    /// host's display sizes stay.
    pub fn reset(&mut self) {
        for id in 0..self.scanouts.len() as u32 {
            self.disable_scanout(id);
        }
        self.resources.clear();
        self.used_host_memory = 0;
        self.acked_features = 0;
        self.events_read = 0;
        self.show_clock = 0;
        if std::mem::take(&mut self.cursor).image.is_some() {
            self.display
                .handle_event(DisplayEvent::Cursor(CursorEvent::Update {
                    scanout: 0,
                    x: 0,
                    y: 0,
                    image: None,
                }));
        }
    }

    /// Serves one chain of the control queue; returns the bytes written into it (the
    /// used length).
    pub fn process_control<M: GuestMemory>(
        &mut self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &M,
    ) -> u32 {
        self.process(QueueKind::Control, descriptors, mem)
    }

    /// Serves one chain of the cursor queue; returns the bytes written into it (0 when
    /// the driver, like Linux, gives no room for a response).
    pub fn process_cursor<M: GuestMemory>(
        &mut self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &M,
    ) -> u32 {
        self.process(QueueKind::Cursor, descriptors, mem)
    }

    fn process<M: GuestMemory>(
        &mut self,
        queue: QueueKind,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &M,
    ) -> u32 {
        let mut chain = Chain::new(descriptors);
        let mut raw = [0u8; CTRL_HDR_LEN];
        let (hdr, result) = match chain.read(mem, &mut raw) {
            Ok(CTRL_HDR_LEN) => {
                let hdr = CtrlHdr::parse(&raw);
                let result = self.serve(queue, &raw, &hdr, &mut chain, mem);
                (hdr, result)
            }
            Ok(got) => (
                CtrlHdr::default(),
                Err(CommandError::ShortRequest {
                    needed: CTRL_HDR_LEN,
                    got,
                }),
            ),
            Err(e) => (CtrlHdr::default(), Err(CommandError::ChainMemory(e))),
        };
        let response = result.unwrap_or_else(|e| {
            tracing::debug!("virtio-gpu: command {:#x} failed: {e}", hdr.type_);
            hdr.response(e.response_type()).to_vec()
        });
        respond(&mut chain, mem, &hdr, &response)
    }

    /// Reads the rest of the request, runs it, and returns the response bytes.
    fn serve<M: GuestMemory>(
        &mut self,
        queue: QueueKind,
        raw_hdr: &[u8; CTRL_HDR_LEN],
        hdr: &CtrlHdr,
        chain: &mut Chain,
        mem: &M,
    ) -> Result<Vec<u8>, CommandError> {
        let is_cursor_cmd = matches!(
            hdr.type_,
            protocol::VIRTIO_GPU_CMD_UPDATE_CURSOR | protocol::VIRTIO_GPU_CMD_MOVE_CURSOR
        );
        if is_cursor_cmd != (queue == QueueKind::Cursor) {
            return Err(CommandError::UnknownCommand(hdr.type_));
        }
        let needed =
            protocol::request_len(hdr.type_).ok_or(CommandError::UnknownCommand(hdr.type_))?;
        let mut buf = vec![0u8; needed];
        buf[..CTRL_HDR_LEN].copy_from_slice(raw_hdr);
        let got = CTRL_HDR_LEN
            + chain
                .read(mem, &mut buf[CTRL_HDR_LEN..])
                .map_err(CommandError::ChainMemory)?;
        let command = Command::parse(hdr, &buf[..got])?;
        self.execute(command, hdr, chain, mem)
    }

    fn execute<M: GuestMemory>(
        &mut self,
        command: Command,
        hdr: &CtrlHdr,
        chain: &mut Chain,
        mem: &M,
    ) -> Result<Vec<u8>, CommandError> {
        let ok = || Ok(hdr.response(VIRTIO_GPU_RESP_OK_NODATA).to_vec());
        match command {
            Command::GetDisplayInfo => Ok(self.display_info(hdr)),
            Command::GetEdid { scanout } => self.get_edid(hdr, scanout),
            Command::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self
                .resource_create_2d(resource_id, format, width, height)
                .and_then(|_| ok()),
            Command::ResourceUnref { resource_id } => {
                self.resource_unref(resource_id).and_then(|_| ok())
            }
            Command::ResourceAttachBacking {
                resource_id,
                nr_entries,
            } => self
                .attach_backing(resource_id, nr_entries, chain, mem)
                .and_then(|_| ok()),
            Command::ResourceDetachBacking { resource_id } => {
                self.detach_backing(resource_id).and_then(|_| ok())
            }
            Command::SetScanout {
                r,
                scanout_id,
                resource_id,
            } => self
                .set_scanout(scanout_id, resource_id, r)
                .and_then(|_| ok()),
            Command::TransferToHost2d {
                r,
                offset,
                resource_id,
            } => self
                .resource_mut(resource_id)?
                .transfer_to_host(resource_id, &r, offset, mem)
                .and_then(|_| ok()),
            Command::ResourceFlush { r, resource_id } => {
                self.resource_flush(resource_id, r).and_then(|_| ok())
            }
            Command::UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
            } => self
                .update_cursor(pos, resource_id, hot_x, hot_y)
                .and_then(|_| ok()),
            Command::MoveCursor { pos } => self.move_cursor(pos).and_then(|_| ok()),
        }
    }

    /// Tells the display something outside a command (a restored cursor).
    pub(crate) fn display_event(&mut self, event: DisplayEvent) {
        self.display.handle_event(event);
    }

    fn display_info(&self, hdr: &CtrlHdr) -> Vec<u8> {
        let pmodes: Vec<DisplayOne> = self
            .scanouts
            .iter()
            .map(|s| DisplayOne {
                r: Rect::new(0, 0, s.preferred.0, s.preferred.1),
                enabled: true,
            })
            .collect();
        protocol::display_info_response(hdr.response(VIRTIO_GPU_RESP_OK_DISPLAY_INFO), &pmodes)
    }

    fn get_edid(&self, hdr: &CtrlHdr, scanout: u32) -> Result<Vec<u8>, CommandError> {
        if self.acked_features & 1 << VIRTIO_GPU_F_EDID == 0 {
            return Err(CommandError::EdidNotNegotiated);
        }
        let s = self.scanout(scanout)?;
        let block = edid::generate(s.preferred.0, s.preferred.1, scanout);
        Ok(protocol::edid_response(
            hdr.response(VIRTIO_GPU_RESP_OK_EDID),
            &block,
        ))
    }

    fn scanout(&self, id: u32) -> Result<&Scanout, CommandError> {
        self.scanouts
            .get(id as usize)
            .ok_or(CommandError::InvalidScanoutId(id))
    }

    fn resource(&self, id: u32) -> Result<&Resource, CommandError> {
        self.resources
            .get(&id)
            .ok_or(CommandError::InvalidResourceId(id))
    }

    fn resource_mut(&mut self, id: u32) -> Result<&mut Resource, CommandError> {
        self.resources
            .get_mut(&id)
            .ok_or(CommandError::InvalidResourceId(id))
    }

    /// Takes `bytes` from the memory budget.
    pub(crate) fn charge(&mut self, bytes: u64) -> Result<(), CommandError> {
        let out = CommandError::OutOfMemory {
            needed: bytes,
            limit: self.max_host_memory,
        };
        match self.used_host_memory.checked_add(bytes) {
            Some(total) if total <= self.max_host_memory => {
                self.used_host_memory = total;
                Ok(())
            }
            _ => Err(out),
        }
    }

    pub(crate) fn uncharge(&mut self, bytes: u64) {
        self.used_host_memory = self.used_host_memory.saturating_sub(bytes);
    }

    fn resource_create_2d(
        &mut self,
        id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> Result<(), CommandError> {
        if id == 0 {
            return Err(CommandError::InvalidResourceId(0));
        }
        if self.resources.contains_key(&id) {
            return Err(CommandError::ResourceIdInUse(id));
        }
        let format =
            PixelFormat::from_raw(format).ok_or(CommandError::UnsupportedFormat(format))?;
        if width == 0 || height == 0 {
            return Err(CommandError::InvalidSize { width, height });
        }
        let cost = Resource::cost(width, height);
        self.charge(cost)?;
        match Resource::new(format, width, height) {
            Ok(resource) => {
                self.resources.insert(id, resource);
                Ok(())
            }
            Err(e) => {
                self.uncharge(cost);
                Err(e)
            }
        }
    }

    fn resource_unref(&mut self, id: u32) -> Result<(), CommandError> {
        let resource = self
            .resources
            .remove(&id)
            .ok_or(CommandError::InvalidResourceId(id))?;
        let backing = resource.backing.as_ref().map_or(0, |b| b.entries());
        self.uncharge(Resource::cost(resource.width, resource.height) + Backing::cost(backing));
        // A scanout must not keep showing a resource that is gone.
        for scanout in 0..self.scanouts.len() as u32 {
            if self.scanouts[scanout as usize].resource_id == id {
                self.disable_scanout(scanout);
            }
        }
        Ok(())
    }

    fn attach_backing<M: GuestMemory>(
        &mut self,
        id: u32,
        nr_entries: u32,
        chain: &mut Chain,
        mem: &M,
    ) -> Result<(), CommandError> {
        if self.resource(id)?.backing.is_some() {
            return Err(CommandError::BackingAttached(id));
        }
        if nr_entries > MAX_BACKING_ENTRIES {
            return Err(CommandError::TooManyEntries(nr_entries));
        }
        // At most MAX_BACKING_ENTRIES * 16 bytes: 2 MiB.
        let mut raw = vec![0u8; nr_entries as usize * MEM_ENTRY_LEN];
        let got = chain
            .read(mem, &mut raw)
            .map_err(CommandError::ChainMemory)?;
        if got < raw.len() {
            return Err(CommandError::ShortRequest {
                needed: raw.len(),
                got,
            });
        }
        let backing = Backing::new(&attach_backing_entries(&raw), mem)?;
        self.charge(Backing::cost(backing.entries()))?;
        self.resource_mut(id)?.backing = Some(backing);
        Ok(())
    }

    fn detach_backing(&mut self, id: u32) -> Result<(), CommandError> {
        let backing = self
            .resource_mut(id)?
            .backing
            .take()
            .ok_or(CommandError::NoBacking(id))?;
        self.uncharge(Backing::cost(backing.entries()));
        Ok(())
    }

    pub(crate) fn set_scanout(
        &mut self,
        scanout_id: u32,
        resource_id: u32,
        r: Rect,
    ) -> Result<(), CommandError> {
        self.scanout(scanout_id)?;
        if resource_id == 0 {
            self.disable_scanout(scanout_id);
            return Ok(());
        }
        let resource = self.resource(resource_id)?;
        resource.check_rect(&r)?;
        if r.is_empty() {
            return Err(CommandError::InvalidSize {
                width: r.width,
                height: r.height,
            });
        }
        let mode = ScanoutMode {
            width: r.width,
            height: r.height,
            format: resource.format,
        };
        let whole = r == Rect::new(0, 0, resource.width, resource.height);
        let shown = if whole {
            self.show_whole(scanout_id, resource_id, mode)?
        } else {
            self.show_part(scanout_id, mode)?
        };
        self.show_clock += 1;
        if let Some(resource) = self.resources.get_mut(&resource_id) {
            resource.last_shown = self.show_clock;
        }
        let s = &mut self.scanouts[scanout_id as usize];
        let changed = (s.mode, s.shown) != (Some(mode), Some(shown));
        s.resource_id = resource_id;
        s.rect = r;
        s.mode = Some(mode);
        s.shown = Some(shown);
        if changed {
            self.display.handle_event(DisplayEvent::ScanoutEnabled {
                scanout: scanout_id,
                mode,
                framebuffer: shown,
            });
        }
        self.present(scanout_id, r);
        Ok(())
    }

    /// Readies a scanout to show the whole of a resource in the resource's own storage,
    /// moving its pixels into a display framebuffer if they are not in one yet; returns
    /// that framebuffer. On failure the scanout is disabled.
    fn show_whole(
        &mut self,
        scanout_id: u32,
        resource_id: u32,
        mode: ScanoutMode,
    ) -> Result<FramebufferId, CommandError> {
        if self.scanouts[scanout_id as usize].copy.is_some() {
            // Its own framebuffer goes before the resource's storage may be made.
            self.disable_scanout(scanout_id);
        }
        let storage = self.resource(resource_id)?.display_storage().map(|s| s.0);
        if let Some(id) = storage {
            return Ok(id);
        }
        let res = self.resource(resource_id)?;
        let pixels = Resource::cost(res.width, res.height);
        // While they move, the pixels exist twice.
        let made = self.make_room_for_display_storage().and_then(|_| {
            self.with_transient(pixels, |gpu| {
                let (id, fb) = gpu.framebuffer_for(mode)?;
                gpu.resource_mut(resource_id)?.move_to_display(id, fb);
                Ok(id)
            })
        });
        if made.is_err() {
            self.disable_scanout(scanout_id);
        }
        made
    }

    /// Readies a scanout to show part of a resource in a framebuffer of its own (made
    /// anew when the mode changes); returns it.
    fn show_part(
        &mut self,
        scanout_id: u32,
        mode: ScanoutMode,
    ) -> Result<FramebufferId, CommandError> {
        let s = &self.scanouts[scanout_id as usize];
        if let (Some(id), Some(_), true) = (s.shown, &s.copy, s.mode == Some(mode)) {
            return Ok(id);
        }
        // The old framebuffer goes first, so that both never take memory at once.
        self.disable_scanout(scanout_id);
        let cost = framebuffer_cost(&mode);
        self.charge(cost)?;
        match self.framebuffer_for(mode) {
            Ok((id, fb)) => {
                self.scanouts[scanout_id as usize].copy = Some(fb);
                Ok(id)
            }
            Err(e) => {
                self.uncharge(cost);
                Err(e)
            }
        }
    }

    /// A new framebuffer for `mode` from the display, checked to be large enough. The
    /// caller has charged its cost (or, for a resource's storage, holds it already).
    fn framebuffer_for(
        &mut self,
        mode: ScanoutMode,
    ) -> Result<(FramebufferId, Box<dyn Framebuffer>), CommandError> {
        self.last_framebuffer += 1;
        let id = FramebufferId(self.last_framebuffer);
        let fb = self
            .display
            .create_framebuffer(id, mode)
            .map_err(CommandError::Framebuffer)?;
        if !framebuffer_fits(fb.as_ref(), mode.width, mode.height) {
            return Err(CommandError::Framebuffer(std::io::Error::other(
                "the display's framebuffer is too small",
            )));
        }
        Ok((id, fb))
    }

    /// Before a resource gets display storage: if as many resources as allowed have
    /// some, the one shown longest ago that no scanout shows moves back to host memory.
    fn make_room_for_display_storage(&mut self) -> Result<(), CommandError> {
        let limit = DISPLAY_STORAGE_PER_SCANOUT * self.scanouts.len();
        let with_storage = self
            .resources
            .values()
            .filter(|r| r.display_storage().is_some())
            .count();
        if with_storage >= limit {
            let shown: Vec<u32> = self.scanouts.iter().map(|s| s.resource_id).collect();
            let oldest = self
                .resources
                .iter()
                .filter(|(id, r)| r.display_storage().is_some() && !shown.contains(id))
                .min_by_key(|(_, r)| r.last_shown)
                .map(|(&id, r)| (id, Resource::cost(r.width, r.height)));
            if let Some((id, cost)) = oldest {
                self.with_transient(cost, |gpu| gpu.resource_mut(id)?.move_to_host())?;
            }
        }
        Ok(())
    }

    /// Runs `f` with `bytes` more charged against the memory cap for its duration: a
    /// copy of pixels that exists only while they move.
    fn with_transient<T>(
        &mut self,
        bytes: u64,
        f: impl FnOnce(&mut Self) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        self.charge(bytes)?;
        let result = f(self);
        self.uncharge(bytes);
        result
    }

    /// Turns a scanout off, telling the display if it was on.
    fn disable_scanout(&mut self, scanout_id: u32) {
        let Some(s) = self.scanouts.get_mut(scanout_id as usize) else {
            return;
        };
        s.resource_id = 0;
        s.rect = Rect::default();
        s.shown = None;
        let copy = s.copy.take();
        if let Some(mode) = s.mode.take() {
            if copy.is_some() {
                self.uncharge(framebuffer_cost(&mode));
            }
            self.display.handle_event(DisplayEvent::ScanoutDisabled {
                scanout: scanout_id,
            });
        }
    }

    fn resource_flush(&mut self, resource_id: u32, r: Rect) -> Result<(), CommandError> {
        self.resource(resource_id)?.check_rect(&r)?;
        for scanout in 0..self.scanouts.len() as u32 {
            if self.scanouts[scanout as usize].resource_id == resource_id {
                self.present(scanout, r);
            }
        }
        Ok(())
    }

    /// Reports the part of `r` (resource coordinates) the scanout shows as damage,
    /// copying it into the scanout's own framebuffer first if it has one (a scanout
    /// showing a resource whole already shows what TRANSFER_TO_HOST_2D wrote).
    fn present(&mut self, scanout_id: u32, r: Rect) {
        let s = &mut self.scanouts[scanout_id as usize];
        let Some(resource) = self.resources.get(&s.resource_id) else {
            return;
        };
        let Some(area) = r.intersect(&s.rect) else {
            return;
        };
        let (dx, dy) = (area.x - s.rect.x, area.y - s.rect.y);
        if let Some(fb) = s.copy.as_mut() {
            let stride = fb.stride() as usize;
            let bpp = BYTES_PER_PIXEL as usize;
            let pixels = fb.pixels_mut();
            for row in 0..area.height {
                let Some(src) = resource.row(area.x, area.y + row, area.width) else {
                    continue;
                };
                let at = (dy + row) as usize * stride + dx as usize * bpp;
                // Checked when the framebuffer was created; a display that shrank it
                // since loses the update rather than panicking the device.
                if let Some(dst) = pixels.get_mut(at..at + src.len()) {
                    dst.copy_from_slice(src);
                }
            }
        }
        self.display.handle_event(DisplayEvent::Damage {
            scanout: scanout_id,
            rect: Rect::new(dx, dy, area.width, area.height),
        });
    }

    fn update_cursor(
        &mut self,
        pos: protocol::CursorPos,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    ) -> Result<(), CommandError> {
        self.scanout(pos.scanout_id)?;
        let image = if resource_id == 0 {
            None
        } else {
            Some(self.cursor_image(resource_id, hot_x, hot_y)?)
        };
        self.cursor = Cursor {
            scanout: pos.scanout_id,
            x: pos.x,
            y: pos.y,
            image: image.clone().map(|i| (resource_id, i)),
        };
        self.display
            .handle_event(DisplayEvent::Cursor(CursorEvent::Update {
                scanout: pos.scanout_id,
                x: pos.x,
                y: pos.y,
                image,
            }));
        Ok(())
    }

    /// The cursor resource's pixels as RGBA; the hot spot is kept inside the image.
    fn cursor_image(&self, id: u32, hot_x: u32, hot_y: u32) -> Result<CursorImage, CommandError> {
        let res = self.resource(id)?;
        if (res.width, res.height) != (CURSOR_WIDTH, CURSOR_HEIGHT) {
            return Err(CommandError::InvalidCursor {
                width: res.width,
                height: res.height,
            });
        }
        let mut rgba = Vec::with_capacity((CURSOR_WIDTH * CURSOR_HEIGHT * 4) as usize);
        for y in 0..CURSOR_HEIGHT {
            let row = res.row(0, y, CURSOR_WIDTH).ok_or_else(|| {
                CommandError::Framebuffer(std::io::Error::other("the display shrank it"))
            })?;
            for px in row.chunks_exact(4) {
                rgba.extend_from_slice(&res.format.to_rgba([px[0], px[1], px[2], px[3]]));
            }
        }
        Ok(CursorImage {
            width: CURSOR_WIDTH,
            height: CURSOR_HEIGHT,
            hot_x: hot_x.min(CURSOR_WIDTH - 1),
            hot_y: hot_y.min(CURSOR_HEIGHT - 1),
            rgba,
        })
    }

    fn move_cursor(&mut self, pos: protocol::CursorPos) -> Result<(), CommandError> {
        self.scanout(pos.scanout_id)?;
        (self.cursor.scanout, self.cursor.x, self.cursor.y) = (pos.scanout_id, pos.x, pos.y);
        self.display
            .handle_event(DisplayEvent::Cursor(CursorEvent::Move {
                scanout: pos.scanout_id,
                x: pos.x,
                y: pos.y,
            }));
        Ok(())
    }
}

/// Writes the response; one that does not fit becomes ERR_UNSPEC if a header fits, and
/// nothing otherwise. Returns the used length.
fn respond<M: GuestMemory>(chain: &mut Chain, mem: &M, hdr: &CtrlHdr, response: &[u8]) -> u32 {
    let room = chain.writable_left();
    let unspec;
    let bytes = if response.len() as u64 <= room {
        response
    } else if CTRL_HDR_LEN as u64 <= room {
        unspec = hdr.response(VIRTIO_GPU_RESP_ERR_UNSPEC);
        &unspec[..]
    } else {
        return 0;
    };
    if let Err(e) = chain.write(mem, bytes) {
        tracing::debug!("virtio-gpu: cannot write the response: {e}");
    }
    chain.written()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::ScanoutConfig;
    use crate::display::VecFramebuffer;
    use crate::protocol::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    pub(crate) const MEM_SIZE: usize = 4 << 20;
    pub(crate) const REQUEST: u64 = 0x1_0000;
    pub(crate) const RESPONSE: u64 = 0x8_0000;
    pub(crate) const B8G8R8X8: u32 = 2;
    pub(crate) const B8G8R8A8: u32 = 1;

    #[derive(Default)]
    pub(crate) struct Shared {
        pub(crate) events: Vec<DisplayEvent>,
        /// Hand out framebuffers one row short.
        short_framebuffers: bool,
        /// Framebuffers made so far, and how many are alive.
        pub(crate) created: usize,
        pub(crate) live: Arc<AtomicUsize>,
    }

    /// A framebuffer that counts itself alive.
    pub(crate) struct Counted(VecFramebuffer, Arc<AtomicUsize>);

    impl Framebuffer for Counted {
        fn stride(&self) -> u32 {
            self.0.stride()
        }
        fn pixels(&self) -> &[u8] {
            self.0.pixels()
        }
        fn pixels_mut(&mut self) -> &mut [u8] {
            self.0.pixels_mut()
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) struct TestDisplay(Arc<Mutex<Shared>>);

    impl DisplayBackend for TestDisplay {
        fn create_framebuffer(
            &mut self,
            _id: FramebufferId,
            mut mode: ScanoutMode,
        ) -> std::io::Result<Box<dyn Framebuffer>> {
            let mut shared = self.0.lock().unwrap();
            if shared.short_framebuffers {
                mode.height -= 1;
            }
            shared.created += 1;
            shared.live.fetch_add(1, Ordering::SeqCst);
            let live = shared.live.clone();
            Ok(Box::new(Counted(VecFramebuffer::new(mode)?, live)))
        }

        fn handle_event(&mut self, event: DisplayEvent) {
            self.0.lock().unwrap().events.push(event);
        }
    }

    /// The driver side: guest memory, the device, and what its display saw.
    pub(crate) struct Driver {
        pub(crate) mem: GuestMemoryMmap,
        pub(crate) gpu: Gpu,
        pub(crate) shared: Arc<Mutex<Shared>>,
    }

    /// A request: header (type, flags, fence id) then 32-bit little-endian fields.
    pub(crate) fn req(type_: u32, fields: &[u32]) -> Vec<u8> {
        fenced(type_, 0, 0, fields)
    }

    pub(crate) fn fenced(type_: u32, flags: u32, fence_id: u64, fields: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&type_.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&fence_id.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        for f in fields {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out
    }

    pub(crate) fn create_2d(id: u32, format: u32, w: u32, h: u32) -> Vec<u8> {
        req(VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, &[id, format, w, h])
    }

    /// Attach with `entries` (addr, len) in the same request.
    pub(crate) fn attach(id: u32, entries: &[(u64, u32)]) -> Vec<u8> {
        let mut fields = vec![id, entries.len() as u32];
        for &(addr, len) in entries {
            fields.extend_from_slice(&[addr as u32, (addr >> 32) as u32, len, 0]);
        }
        req(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, &fields)
    }

    pub(crate) fn set_scanout(scanout: u32, id: u32, r: Rect) -> Vec<u8> {
        req(
            VIRTIO_GPU_CMD_SET_SCANOUT,
            &[r.x, r.y, r.width, r.height, scanout, id],
        )
    }

    pub(crate) fn transfer(id: u32, r: Rect, offset: u64) -> Vec<u8> {
        req(
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
            &[
                r.x,
                r.y,
                r.width,
                r.height,
                offset as u32,
                (offset >> 32) as u32,
                id,
                0,
            ],
        )
    }

    pub(crate) fn flush(id: u32, r: Rect) -> Vec<u8> {
        req(
            VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            &[r.x, r.y, r.width, r.height, id, 0],
        )
    }

    pub(crate) fn cursor(
        type_: u32,
        scanout: u32,
        x: i32,
        y: i32,
        id: u32,
        hot: (u32, u32),
    ) -> Vec<u8> {
        req(
            type_,
            &[scanout, x as u32, y as u32, 0, id, hot.0, hot.1, 0],
        )
    }

    pub(crate) fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    pub(crate) fn desc_next(addr: u64, len: u32, write: bool, next: u16) -> RawDescriptor {
        let mut flags = VRING_DESC_F_NEXT as u16;
        if write {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    pub(crate) fn resp_type(resp: &[u8]) -> u32 {
        u32::from_le_bytes(resp[0..4].try_into().unwrap())
    }

    impl Driver {
        pub(crate) fn new(config: GpuConfig) -> Self {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            let shared = Arc::new(Mutex::new(Shared::default()));
            let mut gpu = Gpu::new(&config, Box::new(TestDisplay(shared.clone()))).unwrap();
            gpu.ack_features(gpu.features());
            Driver { mem, gpu, shared }
        }

        /// Posts `descs` as one chain of a mock queue in guest memory and hands the
        /// chain to the device; returns the used length.
        pub(crate) fn chain(&mut self, descs: &[RawDescriptor], cursor_queue: bool) -> u32 {
            let mock = MockSplitQueue::new(&self.mem, 16);
            // One chain at a time: the mock appends at avail.idx, so start it over.
            self.mem
                .write_obj(0u16, mock.avail_addr().unchecked_add(2))
                .unwrap();
            let chain = mock.build_desc_chain(descs).unwrap();
            if cursor_queue {
                self.gpu.process_cursor(chain, &self.mem)
            } else {
                self.gpu.process_control(chain, &self.mem)
            }
        }

        /// A request and `resp_len` bytes of room; returns the response written.
        pub(crate) fn send(&mut self, request: &[u8], resp_len: u32) -> Vec<u8> {
            self.mem
                .write_slice(request, GuestAddress(REQUEST))
                .unwrap();
            let used = self.chain(
                &[
                    desc(REQUEST, request.len() as u32, false),
                    desc(RESPONSE, resp_len, true),
                ],
                false,
            );
            let mut out = vec![0u8; used as usize];
            self.mem
                .read_slice(&mut out, GuestAddress(RESPONSE))
                .unwrap();
            out
        }

        /// A command answered with a bare header; returns its type.
        pub(crate) fn cmd(&mut self, request: &[u8]) -> u32 {
            let resp = self.send(request, CTRL_HDR_LEN as u32);
            assert_eq!(resp.len(), CTRL_HDR_LEN);
            resp_type(&resp)
        }

        /// A cursor command as Linux sends it: no room for a response.
        pub(crate) fn cursor_cmd(&mut self, request: &[u8]) -> u32 {
            self.mem
                .write_slice(request, GuestAddress(REQUEST))
                .unwrap();
            self.chain(&[desc(REQUEST, request.len() as u32, false)], true)
        }

        pub(crate) fn events(&self) -> Vec<DisplayEvent> {
            std::mem::take(&mut self.shared.lock().unwrap().events)
        }

        pub(crate) fn pixels(&self, scanout: u32) -> Vec<u8> {
            self.gpu.framebuffer(scanout).unwrap().pixels().to_vec()
        }
    }

    /// The guest's image: pixel (x, y) is B = x, G = y, R = x ^ y, X = 0x80.
    pub(crate) fn pattern(x: u32, y: u32) -> [u8; 4] {
        [x as u8, y as u8, (x ^ y) as u8, 0x80]
    }

    /// Writes a `w`x`h` pattern image into guest memory split over `entries`.
    pub(crate) fn write_image(mem: &GuestMemoryMmap, w: u32, h: u32, entries: &[(u64, u32)]) {
        let image: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| pattern(x, y)))
            .collect();
        let mut at = 0usize;
        for &(addr, len) in entries {
            let n = (len as usize).min(image.len() - at);
            mem.write_slice(&image[at..at + n], GuestAddress(addr))
                .unwrap();
            at += n;
        }
    }

    /// A 64x32 image over three discontiguous runs, cut mid-row and mid-pixel.
    pub(crate) const ENTRIES: [(u64, u32); 3] =
        [(0x20_0000, 3001), (0x18_0000, 4095), (0x30_0000, 1096)];

    /// Create, attach and show resource 1 (64x32) on scanout 0, the way Linux sets up
    /// its framebuffer.
    pub(crate) fn setup(d: &mut Driver) {
        assert_eq!(
            d.cmd(&create_2d(1, B8G8R8X8, 64, 32)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        write_image(&d.mem, 64, 32, &ENTRIES);
        assert_eq!(d.cmd(&attach(1, &ENTRIES)), VIRTIO_GPU_RESP_OK_NODATA);
        let full = Rect::new(0, 0, 64, 32);
        assert_eq!(d.cmd(&set_scanout(0, 1, full)), VIRTIO_GPU_RESP_OK_NODATA);
    }

    pub(crate) fn pixel_at(pixels: &[u8], stride: usize, x: usize, y: usize) -> [u8; 4] {
        pixels[y * stride + x * 4..y * stride + x * 4 + 4]
            .try_into()
            .unwrap()
    }

    #[test]
    fn linux_driver_sequence() {
        let mut d = Driver::new(GpuConfig::default());

        let info = d.send(&req(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]), 1024);
        assert_eq!(info.len(), RESP_DISPLAY_INFO_LEN);
        assert_eq!(resp_type(&info), VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
        let field = |at: usize| u32::from_le_bytes(info[at..at + 4].try_into().unwrap());
        // pmodes[0]: r = (0, 0, 1280, 800), enabled = 1; pmodes[1] disabled.
        assert_eq!(
            (field(24), field(28), field(32), field(36), field(40)),
            (0, 0, 1280, 800, 1)
        );
        assert_eq!(field(24 + 24 + 16), 0);

        let edid = d.send(&req(VIRTIO_GPU_CMD_GET_EDID, &[0, 0]), 2048);
        assert_eq!(edid.len(), RESP_EDID_LEN);
        assert_eq!(resp_type(&edid), VIRTIO_GPU_RESP_OK_EDID);
        assert_eq!(u32::from_le_bytes(edid[24..28].try_into().unwrap()), 128);
        assert_eq!(edid::preferred_mode(&edid[32..160]), Some((1280, 800, 60)));

        setup(&mut d);
        let mode = ScanoutMode {
            width: 64,
            height: 32,
            format: PixelFormat::B8G8R8X8,
        };
        assert_eq!(
            d.events(),
            vec![
                DisplayEvent::ScanoutEnabled {
                    scanout: 0,
                    mode,
                    framebuffer: FramebufferId(1)
                },
                DisplayEvent::Damage {
                    scanout: 0,
                    rect: Rect::new(0, 0, 64, 32)
                },
            ]
        );
        // Nothing transferred yet: black.
        assert!(d.pixels(0).iter().all(|&b| b == 0));

        // A partial update: transfer and flush a 16x8 rectangle at (8, 4), fenced.
        let r = Rect::new(8, 4, 16, 8);
        assert_eq!(
            d.cmd(&transfer(1, r, 4 * 64 * 4 + 8 * 4)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        let fenced_flush = fenced(
            VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            b::VIRTIO_GPU_FLAG_FENCE,
            42,
            &[r.x, r.y, r.width, r.height, 1, 0],
        );
        let resp = d.send(&fenced_flush, 24);
        let hdr = CtrlHdr::parse(resp[..24].try_into().unwrap());
        assert_eq!(hdr.type_, VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!((hdr.flags, hdr.fence_id), (b::VIRTIO_GPU_FLAG_FENCE, 42));
        assert_eq!(
            d.events(),
            vec![DisplayEvent::Damage {
                scanout: 0,
                rect: r
            }]
        );
        let px = d.pixels(0);
        for y in 0..32 {
            for x in 0..64 {
                let inside = (8..24).contains(&x) && (4..12).contains(&y);
                let want = if inside { pattern(x, y) } else { [0; 4] };
                assert_eq!(
                    pixel_at(&px, 256, x as usize, y as usize),
                    want,
                    "({x},{y})"
                );
            }
        }

        // The whole image.
        let full = Rect::new(0, 0, 64, 32);
        assert_eq!(d.cmd(&transfer(1, full, 0)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(d.cmd(&flush(1, full)), VIRTIO_GPU_RESP_OK_NODATA);
        let px = d.pixels(0);
        for (x, y) in [(0, 0), (63, 0), (17, 11), (63, 31), (40, 20)] {
            assert_eq!(pixel_at(&px, 256, x, y), pattern(x as u32, y as u32));
        }
        assert_eq!(d.gpu.scanout_mode(0), Some(mode));
    }

    /// Chains through a real queue, as the engine's `drain_queue` does: every chain
    /// comes back in the used ring with the length of its response.
    #[test]
    fn chains_through_a_queue() {
        let mut d = Driver::new(GpuConfig::default());
        let mock = MockSplitQueue::new(&d.mem, 16);
        let info = req(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]);
        let create = create_2d(7, B8G8R8A8, 4, 4);
        d.mem.write_slice(&info, GuestAddress(REQUEST)).unwrap();
        d.mem
            .write_slice(&create, GuestAddress(REQUEST + 0x100))
            .unwrap();
        let chains = [
            desc_next(REQUEST, info.len() as u32, false, 1),
            desc(RESPONSE, 1024, true),
            desc_next(REQUEST + 0x100, create.len() as u32, false, 3),
            desc(RESPONSE + 0x1000, 24, true),
        ];
        mock.add_desc_chains(&chains, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let mem = d.mem.clone();
        while let Some(chain) = queue.iter(&mem).unwrap().next() {
            let head = chain.head_index();
            let len = d.gpu.process_control(chain, &mem);
            queue.add_used(&mem, head, len).unwrap();
        }
        let used_len = |i: u64| -> u32 {
            mem.read_obj(mock.used_addr().unchecked_add(4 + 8 * i + 4))
                .unwrap()
        };
        assert_eq!(used_len(0), RESP_DISPLAY_INFO_LEN as u32);
        assert_eq!(used_len(1), 24);
        let t: u32 = mem.read_obj(GuestAddress(RESPONSE + 0x1000)).unwrap();
        assert_eq!(t, VIRTIO_GPU_RESP_OK_NODATA);
    }

    /// After an error the device answers the next commands normally.
    pub(crate) fn still_works(d: &mut Driver) {
        let info = d.send(&req(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]), 1024);
        assert_eq!(resp_type(&info), VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
        assert_eq!(
            d.cmd(&create_2d(99, B8G8R8A8, 2, 2)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_UNREF, &[99, 0])),
            VIRTIO_GPU_RESP_OK_NODATA
        );
    }

    #[test]
    fn bad_resource_and_scanout_ids() {
        let mut d = Driver::new(GpuConfig::default());
        setup(&mut d);
        let full = Rect::new(0, 0, 64, 32);
        let unref = |id| req(VIRTIO_GPU_CMD_RESOURCE_UNREF, &[id, 0]);
        let detach = |id| req(VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING, &[id, 0]);
        for (request, want) in [
            (
                create_2d(0, B8G8R8X8, 4, 4),
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (
                create_2d(1, B8G8R8X8, 4, 4),
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (unref(0), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (unref(5), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (detach(5), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (attach(5, &ENTRIES), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (
                transfer(5, full, 0),
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (flush(5, full), VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
            (
                set_scanout(0, 5, full),
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (
                set_scanout(1, 1, full),
                VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
            ),
            (
                set_scanout(u32::MAX, 0, full),
                VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
            ),
            (
                req(VIRTIO_GPU_CMD_GET_EDID, &[1, 0]),
                VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
            ),
        ] {
            let resp = d.send(&request, 2048);
            assert_eq!(resp_type(&resp), want, "{:#x}", resp_type(&request));
        }
        // None of that touched the display.
        assert_eq!(d.events().len(), 2);
        still_works(&mut d);
    }

    #[test]
    fn bad_formats_sizes_and_rectangles() {
        let mut d = Driver::new(GpuConfig::default());
        setup(&mut d);
        d.events();
        let inval = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
        for (request, want) in [
            (create_2d(2, 0, 4, 4), inval),
            (create_2d(2, 5, 4, 4), inval),
            (create_2d(2, B8G8R8X8, 0, 4), inval),
            (create_2d(2, B8G8R8X8, 4, 0), inval),
            (set_scanout(0, 1, Rect::new(1, 0, 64, 32)), inval),
            (set_scanout(0, 1, Rect::new(0, 0, 0, 0)), inval),
            (set_scanout(0, 1, Rect::new(u32::MAX, 0, 2, 2)), inval),
            (flush(1, Rect::new(0, 31, 64, 2)), inval),
            (flush(1, Rect::new(0, u32::MAX, 1, 1)), inval),
            (transfer(1, Rect::new(60, 0, 5, 1), 0), inval),
            (transfer(1, Rect::new(u32::MAX, 0, 2, 1), 0), inval),
            (transfer(1, Rect::new(0, 0, 1, 1), u64::MAX - 3), inval),
            (transfer(1, Rect::new(0, 0, 64, 32), 4), inval),
            (transfer(1, Rect::new(0, 31, 64, 1), 64 * 4 * 31 + 1), inval),
        ] {
            assert_eq!(d.cmd(&request), want, "{request:?}");
        }
        assert!(d.events().is_empty());
        // The last row at its exact offset is fine.
        assert_eq!(
            d.cmd(&transfer(1, Rect::new(0, 31, 64, 1), 64 * 4 * 31)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        still_works(&mut d);
    }

    #[test]
    fn bad_backing() {
        let mut d = Driver::new(GpuConfig::default());
        assert_eq!(
            d.cmd(&create_2d(1, B8G8R8X8, 64, 32)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        let full = Rect::new(0, 0, 64, 32);
        // No backing yet.
        assert_eq!(d.cmd(&transfer(1, full, 0)), VIRTIO_GPU_RESP_ERR_UNSPEC);
        assert_eq!(
            d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING, &[1, 0])),
            VIRTIO_GPU_RESP_ERR_UNSPEC
        );
        let inval = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
        // Outside guest memory, straddling its end, wrapping the address space.
        for entries in [
            [(MEM_SIZE as u64, 4096)],
            [(MEM_SIZE as u64 - 100, 4096)],
            [(u64::MAX - 10, 4096)],
        ] {
            assert_eq!(d.cmd(&attach(1, &entries)), inval);
        }
        // More entries than the cap, and more than the request carries.
        let huge = req(
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            &[1, MAX_BACKING_ENTRIES + 1],
        );
        assert_eq!(d.cmd(&huge), inval);
        let lying = req(
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            &[1, 1000, 0, 0, 64, 0],
        );
        assert_eq!(d.cmd(&lying), VIRTIO_GPU_RESP_ERR_UNSPEC);
        assert_eq!(d.gpu.used_host_memory(), Resource::cost(64, 32));
        // A backing too small for the image: attach works, a transfer past it fails.
        assert_eq!(
            d.cmd(&attach(1, &[(0x20_0000, 4096)])),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(d.cmd(&attach(1, &ENTRIES)), VIRTIO_GPU_RESP_ERR_UNSPEC);
        assert_eq!(d.cmd(&transfer(1, full, 0)), inval);
        assert_eq!(
            d.cmd(&transfer(1, Rect::new(0, 0, 64, 4), 0)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        // Detach, then attach the real one, entries in their own descriptor (as Linux
        // sends them).
        assert_eq!(
            d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING, &[1, 0])),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        let request = attach(1, &ENTRIES);
        d.mem.write_slice(&request, GuestAddress(REQUEST)).unwrap();
        let used = d.chain(
            &[
                desc(REQUEST, 32, false),
                desc(REQUEST + 32, 48, false),
                desc(RESPONSE, 24, true),
            ],
            false,
        );
        assert_eq!(used, 24);
        let t: u32 = d.mem.read_obj(GuestAddress(RESPONSE)).unwrap();
        assert_eq!(t, VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(d.cmd(&transfer(1, full, 0)), VIRTIO_GPU_RESP_OK_NODATA);
        still_works(&mut d);
    }

    #[test]
    fn memory_cap() {
        let config = GpuConfig {
            scanouts: vec![ScanoutConfig {
                width: 64,
                height: 64,
            }],
            max_host_memory: 1 << 20,
        };
        let mut d = Driver::new(config);
        // 512x512x4 = 1 MiB plus bookkeeping: over the cap.
        assert_eq!(
            d.cmd(&create_2d(1, B8G8R8X8, 512, 512)),
            VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        );
        // The largest resource the protocol can express, without overflow.
        assert_eq!(
            d.cmd(&create_2d(1, B8G8R8X8, u32::MAX, u32::MAX)),
            VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        );
        // Many small ones until the cap, then freeing one makes room again.
        let mut id = 1;
        while d.cmd(&create_2d(id, B8G8R8X8, 64, 64)) == VIRTIO_GPU_RESP_OK_NODATA {
            id += 1;
        }
        let fitted = id - 1;
        assert_eq!(u64::from(fitted), (1 << 20) / Resource::cost(64, 64));
        assert_eq!(
            d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_UNREF, &[1, 0])),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.cmd(&create_2d(id, B8G8R8X8, 64, 64)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        // A framebuffer counts too: showing a resource needs room for it.
        assert_eq!(
            d.cmd(&set_scanout(0, 2, Rect::new(0, 0, 64, 64))),
            VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        );
        for i in 3..=fitted {
            assert_eq!(
                d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_UNREF, &[i, 0])),
                VIRTIO_GPU_RESP_OK_NODATA
            );
        }
        assert_eq!(
            d.cmd(&set_scanout(0, 2, Rect::new(0, 0, 64, 64))),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        d.gpu.reset();
        assert_eq!(d.gpu.used_host_memory(), 0);
    }

    #[test]
    fn short_requests_unknown_commands_and_no_room() {
        let mut d = Driver::new(GpuConfig::default());
        let unspec = VIRTIO_GPU_RESP_ERR_UNSPEC;
        // Shorter than a header, shorter than the command.
        assert_eq!(d.cmd(&[0x00, 0x01, 0, 0, 0, 0]), unspec);
        let create = create_2d(1, B8G8R8X8, 4, 4);
        assert_eq!(d.cmd(&create[..30]), unspec);
        assert_eq!(d.cmd(&req(VIRTIO_GPU_CMD_SET_SCANOUT, &[0, 0])), unspec);
        // Unknown, 3D, and cursor commands on the control queue.
        for t in [0, 0x0200, 0x0205, 0xffff_ffff, VIRTIO_GPU_CMD_MOVE_CURSOR] {
            assert_eq!(d.cmd(&req(t, &[0; 8])), unspec, "{t:#x}");
        }
        // A response that does not fit becomes ERR_UNSPEC; no room at all, nothing.
        let info = req(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]);
        let resp = d.send(&info, 100);
        assert_eq!((resp.len(), resp_type(&resp)), (24, unspec));
        assert!(d.send(&info, 23).is_empty());
        // A chain whose buffers lie outside guest memory.
        let used = d.chain(
            &[desc(MEM_SIZE as u64, 24, false), desc(RESPONSE, 24, true)],
            false,
        );
        assert_eq!(used, 24);
        let t: u32 = d.mem.read_obj(GuestAddress(RESPONSE)).unwrap();
        assert_eq!(t, unspec);
        d.mem.write_slice(&info, GuestAddress(REQUEST)).unwrap();
        let used = d.chain(
            &[desc(REQUEST, 24, false), desc(u64::MAX - 8, 1024, true)],
            false,
        );
        assert_eq!(used, 0);
        // A chain with no descriptors readable at all.
        assert_eq!(d.chain(&[desc(RESPONSE, 24, true)], false), 24);
        // GET_EDID before the driver accepted VIRTIO_GPU_F_EDID.
        d.gpu.ack_features(0);
        assert_eq!(d.cmd(&req(VIRTIO_GPU_CMD_GET_EDID, &[0, 0])), unspec);
        still_works(&mut d);
    }

    #[test]
    fn a_scanout_shows_part_of_a_resource() {
        let mut d = Driver::new(GpuConfig::default());
        setup(&mut d);
        assert_eq!(
            d.cmd(&transfer(1, Rect::new(0, 0, 64, 32), 0)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        let view = Rect::new(16, 8, 32, 16);
        assert_eq!(d.cmd(&set_scanout(0, 1, view)), VIRTIO_GPU_RESP_OK_NODATA);
        let mode = ScanoutMode {
            width: 32,
            height: 16,
            format: PixelFormat::B8G8R8X8,
        };
        let events = d.events();
        assert!(events.contains(&DisplayEvent::ScanoutDisabled { scanout: 0 }));
        assert!(events.contains(&DisplayEvent::ScanoutEnabled {
            scanout: 0,
            mode,
            framebuffer: FramebufferId(2)
        }));
        let px = d.pixels(0);
        assert_eq!(pixel_at(&px, 128, 0, 0), pattern(16, 8));
        assert_eq!(pixel_at(&px, 128, 31, 15), pattern(47, 23));
        // A flush overlapping the view is clipped and moved to scanout coordinates; one
        // outside it damages nothing.
        assert_eq!(
            d.cmd(&flush(1, Rect::new(0, 0, 20, 10))),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.cmd(&flush(1, Rect::new(0, 0, 8, 8))),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.events(),
            vec![DisplayEvent::Damage {
                scanout: 0,
                rect: Rect::new(0, 0, 4, 2)
            }]
        );
        // Unref'ing the resource shown turns the scanout off.
        assert_eq!(
            d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_UNREF, &[1, 0])),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.events(),
            vec![DisplayEvent::ScanoutDisabled { scanout: 0 }]
        );
        assert!(d.gpu.framebuffer(0).is_none());
        assert_eq!(d.gpu.used_host_memory(), 0);
    }

    /// Framebuffers made so far, and alive now.
    pub(crate) fn framebuffers(d: &Driver) -> (usize, usize) {
        let shared = d.shared.lock().unwrap();
        (shared.created, shared.live.load(Ordering::SeqCst))
    }

    #[test]
    fn a_resource_shown_whole_is_written_in_place_and_flips_need_no_copy() {
        let mut d = Driver::new(GpuConfig::default());
        setup(&mut d);
        let full = Rect::new(0, 0, 64, 32);
        let mode = ScanoutMode {
            width: 64,
            height: 32,
            format: PixelFormat::B8G8R8X8,
        };
        d.events();
        // The transfer alone changes what the scanout shows: its framebuffer is the
        // resource's storage. The flush only reports damage.
        assert_eq!(d.cmd(&transfer(1, full, 0)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(pixel_at(&d.pixels(0), 256, 63, 31), pattern(63, 31));
        assert!(d.events().is_empty());
        assert_eq!(d.cmd(&flush(1, full)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(
            d.events(),
            vec![DisplayEvent::Damage {
                scanout: 0,
                rect: full
            }]
        );
        // Showing it costs nothing beyond the resource.
        assert_eq!(
            d.gpu.used_host_memory(),
            Resource::cost(64, 32) + Backing::cost(3)
        );
        assert_eq!(framebuffers(&d), (1, 1));

        // A second resource of the same size, black: a page flip to it is a new
        // framebuffer (clients must map it), the first keeps its pixels.
        assert_eq!(
            d.cmd(&create_2d(2, B8G8R8X8, 64, 32)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(d.cmd(&set_scanout(0, 2, full)), VIRTIO_GPU_RESP_OK_NODATA);
        let second = FramebufferId(2);
        assert_eq!(
            d.events(),
            vec![
                DisplayEvent::ScanoutEnabled {
                    scanout: 0,
                    mode,
                    framebuffer: second
                },
                DisplayEvent::Damage {
                    scanout: 0,
                    rect: full
                }
            ]
        );
        assert!(d.pixels(0).iter().all(|&b| b == 0));
        // Flipping back shows the first resource's framebuffer again, made no new one.
        assert_eq!(d.cmd(&set_scanout(0, 1, full)), VIRTIO_GPU_RESP_OK_NODATA);
        assert!(matches!(
            d.events()[0],
            DisplayEvent::ScanoutEnabled {
                framebuffer: FramebufferId(1),
                ..
            }
        ));
        assert_eq!(pixel_at(&d.pixels(0), 256, 5, 7), pattern(5, 7));
        assert_eq!(framebuffers(&d), (2, 2));
        // The same SET_SCANOUT again changes nothing but damages.
        assert_eq!(d.cmd(&set_scanout(0, 1, full)), VIRTIO_GPU_RESP_OK_NODATA);
        assert!(matches!(d.events()[..], [DisplayEvent::Damage { .. }]));

        // Part of the first resource: a framebuffer of the scanout's own, which flushes
        // copy into; then whole again, in the resource's storage, which kept its pixels.
        let view = Rect::new(8, 8, 16, 16);
        assert_eq!(d.cmd(&set_scanout(0, 1, view)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(pixel_at(&d.pixels(0), 64, 0, 0), pattern(8, 8));
        assert_eq!(framebuffers(&d), (3, 3));
        assert_eq!(d.cmd(&set_scanout(0, 1, full)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(framebuffers(&d), (3, 2));
        assert_eq!(pixel_at(&d.pixels(0), 256, 8, 8), pattern(8, 8));

        // Unref'ing the resource shown disables the scanout and frees its storage.
        d.events();
        assert_eq!(
            d.cmd(&req(VIRTIO_GPU_CMD_RESOURCE_UNREF, &[1, 0])),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.events(),
            vec![DisplayEvent::ScanoutDisabled { scanout: 0 }]
        );
        assert_eq!(framebuffers(&d), (3, 1));
        assert!(d.gpu.framebuffer(0).is_none());
        d.gpu.reset();
        assert_eq!(framebuffers(&d).1, 0);
        assert_eq!(d.gpu.used_host_memory(), 0);
    }

    #[test]
    fn display_storage_is_bounded_and_the_oldest_moves_back_intact() {
        let mut d = Driver::new(GpuConfig::default());
        let full = Rect::new(0, 0, 64, 32);
        let count = DISPLAY_STORAGE_PER_SCANOUT as u32 + 3;
        // Resource i shows the pattern shifted by i rows (its backing starts i rows in).
        let entries = [(0x20_0000, 64 * 64 * 4)];
        write_image(&d.mem, 64, 64, &entries);
        for id in 1..=count {
            assert_eq!(
                d.cmd(&create_2d(id, B8G8R8X8, 64, 32)),
                VIRTIO_GPU_RESP_OK_NODATA
            );
            assert_eq!(d.cmd(&attach(id, &entries)), VIRTIO_GPU_RESP_OK_NODATA);
            let at = u64::from(id) * 64 * 4;
            assert_eq!(d.cmd(&transfer(id, full, at)), VIRTIO_GPU_RESP_OK_NODATA);
        }
        for round in 0..2 {
            for id in 1..=count {
                assert_eq!(d.cmd(&set_scanout(0, id, full)), VIRTIO_GPU_RESP_OK_NODATA);
                let px = d.pixels(0);
                assert_eq!(pixel_at(&px, 256, 3, 0), pattern(3, id), "{round} {id}");
                assert_eq!(pixel_at(&px, 256, 63, 31), pattern(63, 31 + id));
                let (_, live) = framebuffers(&d);
                assert!(live <= DISPLAY_STORAGE_PER_SCANOUT, "{live} alive");
            }
        }
        // Still within the cap, and everything is given back on reset.
        let resources = Resource::cost(64, 32) + Backing::cost(1);
        assert_eq!(d.gpu.used_host_memory(), u64::from(count) * resources);
        d.gpu.reset();
        assert_eq!(framebuffers(&d).1, 0);
    }

    #[test]
    fn a_framebuffer_too_small_is_refused() {
        let mut d = Driver::new(GpuConfig::default());
        d.shared.lock().unwrap().short_framebuffers = true;
        assert_eq!(
            d.cmd(&create_2d(1, B8G8R8X8, 64, 32)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        assert_eq!(
            d.cmd(&set_scanout(0, 1, Rect::new(0, 0, 64, 32))),
            VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        );
        assert!(d.gpu.scanout_mode(0).is_none());
        assert!(d.events().is_empty());
        assert_eq!(d.gpu.used_host_memory(), Resource::cost(64, 32));
    }

    #[test]
    fn cursor_update_and_move() {
        let mut d = Driver::new(GpuConfig::default());
        assert_eq!(
            d.cmd(&create_2d(5, B8G8R8A8, 64, 64)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        let entries = [(0x20_0000, 64 * 64 * 4)];
        write_image(&d.mem, 64, 64, &entries);
        assert_eq!(d.cmd(&attach(5, &entries)), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(
            d.cmd(&transfer(5, Rect::new(0, 0, 64, 64), 0)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        let update = cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 100, -3, 5, (2, 70));
        assert_eq!(d.cursor_cmd(&update), 0);
        let events = d.events();
        let [DisplayEvent::Cursor(CursorEvent::Update {
            scanout: 0,
            x: 100,
            y: -3,
            image: Some(image),
        })] = &events[..]
        else {
            panic!("{events:?}");
        };
        // The hot spot stays inside the image; B8G8R8A8 becomes RGBA.
        assert_eq!((image.hot_x, image.hot_y), (2, 63));
        let at = (10 * 64 + 7) * 4;
        let [b, g, r, a] = pattern(7, 10);
        assert_eq!(&image.rgba[at..at + 4], &[r, g, b, a]);

        let mv = cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 0, 5, 6, 0, (0, 0));
        assert_eq!(d.cursor_cmd(&mv), 0);
        assert_eq!(
            d.events(),
            vec![DisplayEvent::Cursor(CursorEvent::Move {
                scanout: 0,
                x: 5,
                y: 6
            })]
        );
        // Hiding; a non-64x64 resource, an unknown one or a bad scanout change nothing;
        // control commands on the cursor queue are refused.
        let hide = cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 0, 0, 0, (0, 0));
        d.cursor_cmd(&hide);
        assert!(matches!(
            &d.events()[..],
            [DisplayEvent::Cursor(CursorEvent::Update {
                image: None,
                ..
            })]
        ));
        assert_eq!(
            d.cmd(&create_2d(6, B8G8R8A8, 32, 32)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        for bad in [
            cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 0, 0, 6, (0, 0)),
            cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 0, 0, 0, 77, (0, 0)),
            cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, 3, 0, 0, 5, (0, 0)),
            cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, 9, 0, 0, 0, (0, 0)),
            create_2d(8, B8G8R8A8, 64, 64),
            mv[..30].to_vec(),
        ] {
            d.cursor_cmd(&bad);
        }
        assert!(d.events().is_empty());
        assert_eq!(
            d.cmd(&create_2d(8, B8G8R8A8, 64, 64)),
            VIRTIO_GPU_RESP_OK_NODATA
        );
        // A driver that gives room for a response on the cursor queue gets one.
        d.mem.write_slice(&mv, GuestAddress(REQUEST)).unwrap();
        let used = d.chain(
            &[
                desc(REQUEST, mv.len() as u32, false),
                desc(RESPONSE, 24, true),
            ],
            true,
        );
        assert_eq!(used, 24);
        let t: u32 = d.mem.read_obj(GuestAddress(RESPONSE)).unwrap();
        assert_eq!(t, VIRTIO_GPU_RESP_OK_NODATA);
    }

    #[test]
    fn host_resize_sets_and_the_driver_clears_the_display_event() {
        let mut d = Driver::new(GpuConfig::default());
        let read32 = |gpu: &Gpu, at: u64| {
            let mut b = [0u8; 4];
            gpu.read_config(at, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(read32(&d.gpu, 0), 0);
        assert_eq!(read32(&d.gpu, 8), 1, "num_scanouts");
        assert_eq!(read32(&d.gpu, 12), 0, "num_capsets");
        assert_eq!(read32(&d.gpu, 14), 0, "past the end reads zero");
        assert_eq!(read32(&d.gpu, u64::MAX - 1), 0);

        assert_eq!(d.gpu.set_display_size(0, 1920, 1080), Ok(true));
        assert_eq!(read32(&d.gpu, 0), VIRTIO_GPU_EVENT_DISPLAY);
        let info = d.send(&req(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]), 1024);
        let field = |at: usize| u32::from_le_bytes(info[at..at + 4].try_into().unwrap());
        assert_eq!((field(32), field(36)), (1920, 1080));
        let edid = d.send(&req(VIRTIO_GPU_CMD_GET_EDID, &[0, 0]), 2048);
        assert_eq!(edid::preferred_mode(&edid[32..160]), Some((1920, 1080, 60)));

        // events_read is read-only; writing 1s to events_clear clears.
        d.gpu.write_config(0, &[0; 4]);
        assert_eq!(d.gpu.events_read(), VIRTIO_GPU_EVENT_DISPLAY);
        d.gpu
            .write_config(4, &VIRTIO_GPU_EVENT_DISPLAY.to_le_bytes());
        assert_eq!(read32(&d.gpu, 0), 0);
        d.gpu.write_config(u64::MAX, &[0xff; 8]);

        assert_eq!(d.gpu.set_display_size(0, 1920, 1080), Ok(false));
        assert_eq!(d.gpu.events_read(), 0);
        assert_eq!(
            d.gpu.set_display_size(1, 800, 600),
            Err(ResizeError::InvalidScanout(1))
        );
        assert!(matches!(
            d.gpu.set_display_size(0, 0, 600),
            Err(ResizeError::Size(_))
        ));
        assert!(matches!(
            d.gpu.set_display_size(0, 8000, 600),
            Err(ResizeError::Size(_))
        ));
        assert_eq!(d.gpu.display_size(0), Some((1920, 1080)));
    }

    #[test]
    fn reset_forgets_the_driver() {
        let mut d = Driver::new(GpuConfig::default());
        setup(&mut d);
        d.events();
        assert!(d.gpu.set_display_size(0, 1024, 768).unwrap());
        d.gpu.reset();
        assert_eq!(
            d.events(),
            vec![DisplayEvent::ScanoutDisabled { scanout: 0 }]
        );
        assert_eq!(d.gpu.used_host_memory(), 0);
        assert_eq!(d.gpu.events_read(), 0);
        assert_eq!(d.gpu.display_size(0), Some((1024, 768)));
        assert_eq!(
            d.cmd(&flush(1, Rect::new(0, 0, 1, 1))),
            VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
        );
        // Set up again from scratch.
        d.gpu.ack_features(d.gpu.features());
        setup(&mut d);
        assert!(d.gpu.scanout_mode(0).is_some());
    }

    #[test]
    fn bad_config_is_refused() {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let config = GpuConfig {
            scanouts: vec![],
            ..GpuConfig::default()
        };
        assert!(Gpu::new(&config, Box::new(TestDisplay(shared))).is_err());
    }
}
