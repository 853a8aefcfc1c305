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
    CursorEvent, CursorImage, Display, DisplayEvent, Framebuffer, Rect, ScanoutMode, CURSOR_HEIGHT,
    CURSOR_WIDTH,
};
use crate::edid;
use crate::format::{PixelFormat, BYTES_PER_PIXEL};
use crate::protocol::{
    self, attach_backing_entries, Command, CommandError, CtrlHdr, DisplayOne, CTRL_HDR_LEN,
    MEM_ENTRY_LEN, VIRTIO_GPU_RESP_ERR_UNSPEC, VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
    VIRTIO_GPU_RESP_OK_EDID, VIRTIO_GPU_RESP_OK_NODATA,
};
use crate::resource::{Backing, Resource};

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
struct Scanout {
    /// The size the host wants (display info, EDID).
    preferred: (u32, u32),
    /// The resource shown (0: none) and which part of it.
    resource_id: u32,
    rect: Rect,
    /// What the framebuffer holds, and the framebuffer (both `Some` when enabled).
    mode: Option<ScanoutMode>,
    framebuffer: Option<Box<dyn Framebuffer>>,
}

/// The virtio-gpu device.
pub struct Gpu {
    scanouts: Vec<Scanout>,
    resources: HashMap<u32, Resource>,
    max_host_memory: u64,
    used_host_memory: u64,
    acked_features: u64,
    /// `events_read` of the configuration space.
    events_read: u32,
    cursor_visible: bool,
    display: Box<dyn Display>,
}

/// Host bytes a framebuffer for `mode` costs.
fn framebuffer_cost(mode: &ScanoutMode) -> u64 {
    u64::from(mode.width) * u64::from(mode.height) * u64::from(BYTES_PER_PIXEL)
}

impl Gpu {
    /// The virtio device id.
    pub const DEVICE_TYPE: u32 = VIRTIO_ID_GPU;

    pub fn new(config: &GpuConfig, display: Box<dyn Display>) -> Result<Self, ConfigError> {
        config.validate()?;
        let scanouts = config
            .scanouts
            .iter()
            .map(|s| Scanout {
                preferred: (s.width, s.height),
                resource_id: 0,
                rect: Rect::default(),
                mode: None,
                framebuffer: None,
            })
            .collect();
        Ok(Gpu {
            scanouts,
            resources: HashMap::new(),
            max_host_memory: config.max_host_memory,
            used_host_memory: 0,
            acked_features: 0,
            events_read: 0,
            cursor_visible: false,
            display,
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

    /// The framebuffer of `scanout` (for screenshots), if it is enabled.
    pub fn framebuffer(&self, scanout: u32) -> Option<&dyn Framebuffer> {
        self.scanouts.get(scanout as usize)?.framebuffer.as_deref()
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
        if std::mem::take(&mut self.cursor_visible) {
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
                let result = self.serve(queue, &hdr, &mut chain, mem);
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
        buf[..CTRL_HDR_LEN].copy_from_slice(&hdr.response(hdr.type_));
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
    fn charge(&mut self, bytes: u64) -> Result<(), CommandError> {
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

    fn uncharge(&mut self, bytes: u64) {
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

    fn set_scanout(
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
        let changed = self.scanouts[scanout_id as usize].mode != Some(mode);
        if changed {
            self.replace_framebuffer(scanout_id, mode)?;
        }
        let s = &mut self.scanouts[scanout_id as usize];
        s.resource_id = resource_id;
        s.rect = r;
        if changed {
            self.display.handle_event(DisplayEvent::ScanoutEnabled {
                scanout: scanout_id,
                mode,
            });
        }
        self.present(scanout_id, r);
        Ok(())
    }

    /// Gets a framebuffer for `mode` from the display, checks it is large enough, and
    /// puts it in place of the scanout's old one.
    fn replace_framebuffer(
        &mut self,
        scanout_id: u32,
        mode: ScanoutMode,
    ) -> Result<(), CommandError> {
        self.disable_scanout(scanout_id);
        let cost = framebuffer_cost(&mode);
        self.charge(cost)?;
        let created = self.display.create_framebuffer(scanout_id, mode);
        let fb = created.and_then(|fb| {
            let row = u64::from(mode.width) * u64::from(BYTES_PER_PIXEL);
            let stride = u64::from(fb.stride());
            let needed = stride * u64::from(mode.height);
            if stride < row || (fb.pixels().len() as u64) < needed {
                return Err(std::io::Error::other(
                    "the display's framebuffer is too small",
                ));
            }
            Ok(fb)
        });
        match fb {
            Ok(fb) => {
                let s = &mut self.scanouts[scanout_id as usize];
                s.mode = Some(mode);
                s.framebuffer = Some(fb);
                Ok(())
            }
            Err(e) => {
                self.uncharge(cost);
                Err(CommandError::Framebuffer(e))
            }
        }
    }

    /// Turns a scanout off, telling the display if it was on.
    fn disable_scanout(&mut self, scanout_id: u32) {
        let Some(s) = self.scanouts.get_mut(scanout_id as usize) else {
            return;
        };
        s.resource_id = 0;
        s.rect = Rect::default();
        s.framebuffer = None;
        if let Some(mode) = s.mode.take() {
            self.uncharge(framebuffer_cost(&mode));
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

    /// Copies the part of `r` (resource coordinates) the scanout shows into its
    /// framebuffer and reports it as damage.
    fn present(&mut self, scanout_id: u32, r: Rect) {
        let s = &mut self.scanouts[scanout_id as usize];
        let (Some(resource), Some(fb)) =
            (self.resources.get(&s.resource_id), s.framebuffer.as_mut())
        else {
            return;
        };
        let Some(area) = r.intersect(&s.rect) else {
            return;
        };
        let (dx, dy) = (area.x - s.rect.x, area.y - s.rect.y);
        let stride = fb.stride() as usize;
        let bpp = BYTES_PER_PIXEL as usize;
        let pixels = fb.pixels_mut();
        for row in 0..area.height {
            let src = resource.row(area.x, area.y + row, area.width);
            let at = (dy + row) as usize * stride + dx as usize * bpp;
            // Checked when the framebuffer was created; a display that shrank it since
            // loses the update rather than panicking the device.
            if let Some(dst) = pixels.get_mut(at..at + src.len()) {
                dst.copy_from_slice(src);
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
        self.cursor_visible = image.is_some();
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
            for px in res.row(0, y, CURSOR_WIDTH).chunks_exact(4) {
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
