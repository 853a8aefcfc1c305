//! The wire format of the control and cursor queues (virtio 1.2, 5.7.6 "Device
//! Operation"): requests parsed from guest bytes into [`Command`]s, responses encoded
//! back, and [`CommandError`], each error naming the `VIRTIO_GPU_RESP_ERR_*` it is
//! answered with. Layouts come from `virtio_bindings::virtio_gpu`; every field is
//! little-endian and read at its `offset_of!` in the binding's struct.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_gpu as b;

use crate::display::Rect;

// Command and response types (enum virtio_gpu_ctrl_type), under their spec names.
pub const VIRTIO_GPU_CMD_GET_DISPLAY_INFO: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO;
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D;
pub const VIRTIO_GPU_CMD_RESOURCE_UNREF: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF;
pub const VIRTIO_GPU_CMD_SET_SCANOUT: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT;
pub const VIRTIO_GPU_CMD_RESOURCE_FLUSH: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH;
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D;
pub const VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING;
pub const VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING;
pub const VIRTIO_GPU_CMD_GET_EDID: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_EDID;
pub const VIRTIO_GPU_CMD_UPDATE_CURSOR: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_UPDATE_CURSOR;
pub const VIRTIO_GPU_CMD_MOVE_CURSOR: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_MOVE_CURSOR;
pub const VIRTIO_GPU_RESP_OK_NODATA: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
pub const VIRTIO_GPU_RESP_OK_DISPLAY_INFO: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
pub const VIRTIO_GPU_RESP_OK_EDID: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID;
pub const VIRTIO_GPU_RESP_ERR_UNSPEC: u32 = b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;
pub const VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
pub const VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
pub const VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
pub const VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER: u32 =
    b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;

/// Bytes of `struct virtio_gpu_ctrl_hdr`, which starts every request and response.
pub const CTRL_HDR_LEN: usize = size_of::<b::virtio_gpu_ctrl_hdr>();
/// Bytes of one `struct virtio_gpu_mem_entry` following RESOURCE_ATTACH_BACKING.
pub const MEM_ENTRY_LEN: usize = size_of::<b::virtio_gpu_mem_entry>();
/// Bytes of the GET_DISPLAY_INFO response.
pub const RESP_DISPLAY_INFO_LEN: usize = size_of::<b::virtio_gpu_resp_display_info>();
/// Bytes of the GET_EDID response (the EDID blob is always 1024 bytes on the wire).
pub const RESP_EDID_LEN: usize = size_of::<b::virtio_gpu_resp_edid>();

/// Why a command failed: the guest gets the matching `VIRTIO_GPU_RESP_ERR_*`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command type {0:#x}")]
    UnknownCommand(u32),
    #[error("the request has {got} bytes, the command needs {needed}")]
    ShortRequest { needed: usize, got: usize },
    #[error("cannot access the chain's buffers in guest memory")]
    ChainMemory(#[source] vm_memory::GuestMemoryError),
    #[error("resource id {0} does not name a resource")]
    InvalidResourceId(u32),
    #[error("resource id {0} is already in use")]
    ResourceIdInUse(u32),
    #[error("scanout id {0} does not exist")]
    InvalidScanoutId(u32),
    #[error("format {0} is not a supported 2D format")]
    UnsupportedFormat(u32),
    #[error("a {width}x{height} resource has no pixels or is too large")]
    InvalidSize { width: u32, height: u32 },
    #[error("rectangle {rect:?} is not inside the {width}x{height} resource")]
    RectOutOfBounds { rect: Rect, width: u32, height: u32 },
    #[error("the transfer reads past the {backing} bytes of backing")]
    TransferOutsideBacking { backing: u64 },
    #[error("resource {0} has no backing attached")]
    NoBacking(u32),
    #[error("resource {0} already has backing attached")]
    BackingAttached(u32),
    #[error("{0} backing entries is more than the device accepts")]
    TooManyEntries(u32),
    #[error("backing entry {addr:#x}+{len} lies outside guest memory")]
    BackingOutsideMemory { addr: u64, len: u32 },
    #[error("cannot read the backing from guest memory")]
    BackingMemory(#[source] vm_memory::GuestMemoryError),
    #[error("{needed} more bytes of host memory would pass the {limit}-byte cap")]
    OutOfMemory { needed: u64, limit: u64 },
    #[error("the host cannot allocate {0} bytes")]
    HostAllocation(u64),
    #[error("the display cannot create a framebuffer")]
    Framebuffer(#[source] std::io::Error),
    #[error("the cursor resource is {width}x{height}, not 64x64")]
    InvalidCursor { width: u32, height: u32 },
    #[error("GET_EDID without VIRTIO_GPU_F_EDID negotiated")]
    EdidNotNegotiated,
}

impl CommandError {
    /// The response type the guest gets (virtio 1.2, 5.7.6.7).
    pub fn response_type(&self) -> u32 {
        use CommandError::*;
        match self {
            InvalidResourceId(_) | ResourceIdInUse(_) => VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            InvalidScanoutId(_) => VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
            OutOfMemory { .. } | HostAllocation(_) | Framebuffer(_) => {
                VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
            }
            UnsupportedFormat(_)
            | InvalidSize { .. }
            | RectOutOfBounds { .. }
            | TransferOutsideBacking { .. }
            | TooManyEntries(_)
            | BackingOutsideMemory { .. }
            | InvalidCursor { .. } => VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            UnknownCommand(_)
            | ShortRequest { .. }
            | ChainMemory(_)
            | NoBacking(_)
            | BackingAttached(_)
            | BackingMemory(_)
            | EdidNotNegotiated => VIRTIO_GPU_RESP_ERR_UNSPEC,
        }
    }
}

fn le32(buf: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le64(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `struct virtio_gpu_ctrl_hdr`, the part a response echoes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlHdr {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

impl CtrlHdr {
    /// Parses the first [`CTRL_HDR_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8; CTRL_HDR_LEN]) -> Self {
        type H = b::virtio_gpu_ctrl_hdr;
        CtrlHdr {
            type_: le32(buf, offset_of!(H, type_)),
            flags: le32(buf, offset_of!(H, flags)),
            fence_id: le64(buf, offset_of!(H, fence_id)),
            ctx_id: le32(buf, offset_of!(H, ctx_id)),
            ring_idx: buf[offset_of!(H, ring_idx)],
        }
    }

    /// The header of the response to this request: with VIRTIO_GPU_FLAG_FENCE the
    /// fence id and context are echoed (virtio 1.2, 5.7.6.7); the 2D device does
    /// everything before answering, so the fence is complete with the response.
    pub fn response(&self, type_: u32) -> [u8; CTRL_HDR_LEN] {
        type H = b::virtio_gpu_ctrl_hdr;
        let mut out = [0u8; CTRL_HDR_LEN];
        put32(&mut out, offset_of!(H, type_), type_);
        if self.flags & b::VIRTIO_GPU_FLAG_FENCE != 0 {
            put32(&mut out, offset_of!(H, flags), b::VIRTIO_GPU_FLAG_FENCE);
            put64(&mut out, offset_of!(H, fence_id), self.fence_id);
            put32(&mut out, offset_of!(H, ctx_id), self.ctx_id);
        }
        out
    }
}

/// `struct virtio_gpu_mem_entry`: one run of guest memory backing a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub length: u32,
}

/// `struct virtio_gpu_cursor_pos`. The coordinates are signed on purpose: Linux sends a
/// cursor partly off the left or top edge as a negative position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    pub scanout_id: u32,
    pub x: i32,
    pub y: i32,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    GetDisplayInfo,
    GetEdid {
        scanout: u32,
    },
    ResourceCreate2d {
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    },
    ResourceUnref {
        resource_id: u32,
    },
    SetScanout {
        r: Rect,
        scanout_id: u32,
        resource_id: u32,
    },
    ResourceFlush {
        r: Rect,
        resource_id: u32,
    },
    TransferToHost2d {
        r: Rect,
        offset: u64,
        resource_id: u32,
    },
    /// The entries follow the request; `nr_entries` is checked against the cap before
    /// they are read (see [`attach_backing_entries`]).
    ResourceAttachBacking {
        resource_id: u32,
        nr_entries: u32,
    },
    ResourceDetachBacking {
        resource_id: u32,
    },
    UpdateCursor {
        pos: CursorPos,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    },
    MoveCursor {
        pos: CursorPos,
    },
}

/// The full length of the request struct of command type `type_` (header included),
/// or `None` for a type this device does not serve.
pub fn request_len(type_: u32) -> Option<usize> {
    Some(match type_ {
        VIRTIO_GPU_CMD_GET_DISPLAY_INFO => CTRL_HDR_LEN,
        VIRTIO_GPU_CMD_GET_EDID => size_of::<b::virtio_gpu_cmd_get_edid>(),
        VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => size_of::<b::virtio_gpu_resource_create_2d>(),
        VIRTIO_GPU_CMD_RESOURCE_UNREF => size_of::<b::virtio_gpu_resource_unref>(),
        VIRTIO_GPU_CMD_SET_SCANOUT => size_of::<b::virtio_gpu_set_scanout>(),
        VIRTIO_GPU_CMD_RESOURCE_FLUSH => size_of::<b::virtio_gpu_resource_flush>(),
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => size_of::<b::virtio_gpu_transfer_to_host_2d>(),
        VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => {
            size_of::<b::virtio_gpu_resource_attach_backing>()
        }
        VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => {
            size_of::<b::virtio_gpu_resource_detach_backing>()
        }
        VIRTIO_GPU_CMD_UPDATE_CURSOR | VIRTIO_GPU_CMD_MOVE_CURSOR => {
            size_of::<b::virtio_gpu_update_cursor>()
        }
        _ => return None,
    })
}

fn rect_at(buf: &[u8], at: usize) -> Rect {
    type R = b::virtio_gpu_rect;
    Rect {
        x: le32(buf, at + offset_of!(R, x)),
        y: le32(buf, at + offset_of!(R, y)),
        width: le32(buf, at + offset_of!(R, width)),
        height: le32(buf, at + offset_of!(R, height)),
    }
}

fn cursor_pos_at(buf: &[u8], at: usize) -> CursorPos {
    type P = b::virtio_gpu_cursor_pos;
    CursorPos {
        scanout_id: le32(buf, at + offset_of!(P, scanout_id)),
        x: le32(buf, at + offset_of!(P, x)) as i32,
        y: le32(buf, at + offset_of!(P, y)) as i32,
    }
}

impl Command {
    /// Parses a whole request (header included). `buf` must hold at least
    /// `request_len(type)` bytes; anything shorter is a [`CommandError::ShortRequest`].
    pub fn parse(hdr: &CtrlHdr, buf: &[u8]) -> Result<Command, CommandError> {
        let needed = request_len(hdr.type_).ok_or(CommandError::UnknownCommand(hdr.type_))?;
        if buf.len() < needed {
            return Err(CommandError::ShortRequest {
                needed,
                got: buf.len(),
            });
        }
        Ok(match hdr.type_ {
            VIRTIO_GPU_CMD_GET_DISPLAY_INFO => Command::GetDisplayInfo,
            VIRTIO_GPU_CMD_GET_EDID => Command::GetEdid {
                scanout: le32(buf, offset_of!(b::virtio_gpu_cmd_get_edid, scanout)),
            },
            VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => {
                type C = b::virtio_gpu_resource_create_2d;
                Command::ResourceCreate2d {
                    resource_id: le32(buf, offset_of!(C, resource_id)),
                    format: le32(buf, offset_of!(C, format)),
                    width: le32(buf, offset_of!(C, width)),
                    height: le32(buf, offset_of!(C, height)),
                }
            }
            VIRTIO_GPU_CMD_RESOURCE_UNREF => Command::ResourceUnref {
                resource_id: le32(buf, offset_of!(b::virtio_gpu_resource_unref, resource_id)),
            },
            VIRTIO_GPU_CMD_SET_SCANOUT => {
                type C = b::virtio_gpu_set_scanout;
                Command::SetScanout {
                    r: rect_at(buf, offset_of!(C, r)),
                    scanout_id: le32(buf, offset_of!(C, scanout_id)),
                    resource_id: le32(buf, offset_of!(C, resource_id)),
                }
            }
            VIRTIO_GPU_CMD_RESOURCE_FLUSH => {
                type C = b::virtio_gpu_resource_flush;
                Command::ResourceFlush {
                    r: rect_at(buf, offset_of!(C, r)),
                    resource_id: le32(buf, offset_of!(C, resource_id)),
                }
            }
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => {
                type C = b::virtio_gpu_transfer_to_host_2d;
                Command::TransferToHost2d {
                    r: rect_at(buf, offset_of!(C, r)),
                    offset: le64(buf, offset_of!(C, offset)),
                    resource_id: le32(buf, offset_of!(C, resource_id)),
                }
            }
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => {
                type C = b::virtio_gpu_resource_attach_backing;
                Command::ResourceAttachBacking {
                    resource_id: le32(buf, offset_of!(C, resource_id)),
                    nr_entries: le32(buf, offset_of!(C, nr_entries)),
                }
            }
            VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => Command::ResourceDetachBacking {
                resource_id: le32(
                    buf,
                    offset_of!(b::virtio_gpu_resource_detach_backing, resource_id),
                ),
            },
            VIRTIO_GPU_CMD_UPDATE_CURSOR => {
                type C = b::virtio_gpu_update_cursor;
                Command::UpdateCursor {
                    pos: cursor_pos_at(buf, offset_of!(C, pos)),
                    resource_id: le32(buf, offset_of!(C, resource_id)),
                    hot_x: le32(buf, offset_of!(C, hot_x)),
                    hot_y: le32(buf, offset_of!(C, hot_y)),
                }
            }
            VIRTIO_GPU_CMD_MOVE_CURSOR => Command::MoveCursor {
                pos: cursor_pos_at(buf, offset_of!(b::virtio_gpu_update_cursor, pos)),
            },
            other => return Err(CommandError::UnknownCommand(other)),
        })
    }
}

/// Parses the `struct virtio_gpu_mem_entry` array that follows RESOURCE_ATTACH_BACKING.
pub fn attach_backing_entries(buf: &[u8]) -> Vec<MemEntry> {
    type E = b::virtio_gpu_mem_entry;
    buf.chunks_exact(MEM_ENTRY_LEN)
        .map(|e| MemEntry {
            addr: le64(e, offset_of!(E, addr)),
            length: le32(e, offset_of!(E, length)),
        })
        .collect()
}

/// One scanout in the GET_DISPLAY_INFO response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisplayOne {
    pub r: Rect,
    pub enabled: bool,
}

/// Encodes the GET_DISPLAY_INFO response body after `hdr`.
pub fn display_info_response(hdr: [u8; CTRL_HDR_LEN], pmodes: &[DisplayOne]) -> Vec<u8> {
    type R = b::virtio_gpu_resp_display_info;
    type One = b::virtio_gpu_resp_display_info_virtio_gpu_display_one;
    let mut out = vec![0u8; RESP_DISPLAY_INFO_LEN];
    out[..CTRL_HDR_LEN].copy_from_slice(&hdr);
    let max = b::VIRTIO_GPU_MAX_SCANOUTS as usize;
    for (i, mode) in pmodes.iter().take(max).enumerate() {
        let at = offset_of!(R, pmodes) + i * size_of::<One>();
        let r = at + offset_of!(One, r);
        put32(&mut out, r + offset_of!(b::virtio_gpu_rect, x), mode.r.x);
        put32(&mut out, r + offset_of!(b::virtio_gpu_rect, y), mode.r.y);
        put32(
            &mut out,
            r + offset_of!(b::virtio_gpu_rect, width),
            mode.r.width,
        );
        put32(
            &mut out,
            r + offset_of!(b::virtio_gpu_rect, height),
            mode.r.height,
        );
        put32(
            &mut out,
            at + offset_of!(One, enabled),
            u32::from(mode.enabled),
        );
    }
    out
}

/// Encodes the GET_EDID response: `size` and the blob, zero-padded to 1024 bytes.
pub fn edid_response(hdr: [u8; CTRL_HDR_LEN], edid: &[u8]) -> Vec<u8> {
    type R = b::virtio_gpu_resp_edid;
    let mut out = vec![0u8; RESP_EDID_LEN];
    out[..CTRL_HDR_LEN].copy_from_slice(&hdr);
    let n = edid.len().min(RESP_EDID_LEN - offset_of!(R, edid));
    put32(&mut out, offset_of!(R, size), n as u32);
    out[offset_of!(R, edid)..offset_of!(R, edid) + n].copy_from_slice(&edid[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_sizes_match_the_spec() {
        assert_eq!(CTRL_HDR_LEN, 24);
        assert_eq!(MEM_ENTRY_LEN, 16);
        assert_eq!(RESP_DISPLAY_INFO_LEN, 24 + 16 * 24);
        assert_eq!(RESP_EDID_LEN, 24 + 8 + 1024);
        assert_eq!(request_len(VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D), Some(56));
        assert_eq!(request_len(VIRTIO_GPU_CMD_UPDATE_CURSOR), Some(56));
        assert_eq!(request_len(0x1234), None);
    }

    #[test]
    fn fence_is_echoed_only_when_asked_for() {
        let mut raw = [0u8; CTRL_HDR_LEN];
        raw[0..4].copy_from_slice(&VIRTIO_GPU_CMD_RESOURCE_FLUSH.to_le_bytes());
        raw[4..8].copy_from_slice(&b::VIRTIO_GPU_FLAG_FENCE.to_le_bytes());
        raw[8..16].copy_from_slice(&0xdead_beef_1234u64.to_le_bytes());
        raw[16..20].copy_from_slice(&7u32.to_le_bytes());
        let hdr = CtrlHdr::parse(&raw);
        let resp = CtrlHdr::parse(&hdr.response(VIRTIO_GPU_RESP_OK_NODATA));
        assert_eq!(resp.type_, VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(resp.flags, b::VIRTIO_GPU_FLAG_FENCE);
        assert_eq!(resp.fence_id, 0xdead_beef_1234);
        assert_eq!(resp.ctx_id, 7);

        raw[4..8].fill(0);
        let resp = CtrlHdr::parse(&CtrlHdr::parse(&raw).response(VIRTIO_GPU_RESP_OK_NODATA));
        assert_eq!((resp.flags, resp.fence_id), (0, 0));
    }

    #[test]
    fn short_and_unknown_requests_are_errors() {
        let hdr = CtrlHdr {
            type_: VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
            ..Default::default()
        };
        let err = Command::parse(&hdr, &[0u8; 30]).unwrap_err();
        assert!(matches!(
            err,
            CommandError::ShortRequest {
                needed: 40,
                got: 30
            }
        ));
        assert_eq!(err.response_type(), VIRTIO_GPU_RESP_ERR_UNSPEC);
        let hdr = CtrlHdr {
            type_: 0x0200, // VIRTIO_GPU_CMD_CTX_CREATE: 3D, not served.
            ..Default::default()
        };
        assert!(matches!(
            Command::parse(&hdr, &[0u8; 100]),
            Err(CommandError::UnknownCommand(0x200))
        ));
    }

    #[test]
    fn cursor_positions_are_signed() {
        let mut buf = [0u8; 56];
        buf[0..4].copy_from_slice(&VIRTIO_GPU_CMD_MOVE_CURSOR.to_le_bytes());
        buf[24..28].copy_from_slice(&1u32.to_le_bytes());
        buf[28..32].copy_from_slice(&(-5i32).to_le_bytes());
        buf[32..36].copy_from_slice(&9u32.to_le_bytes());
        let hdr = CtrlHdr::parse(buf[..24].try_into().unwrap());
        assert_eq!(
            Command::parse(&hdr, &buf).unwrap(),
            Command::MoveCursor {
                pos: CursorPos {
                    scanout_id: 1,
                    x: -5,
                    y: 9
                }
            }
        );
    }
}
