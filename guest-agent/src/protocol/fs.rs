//! Shared-folder messages.
//!
//! The host exports folders; the agent mounts each one through FUSE and forwards every
//! file-system operation to the host as an [`FsRequest`], answered by an [`FsReply`].
//! The guest never names a host path: it names nodes (ids the host hands out on lookup,
//! [`FS_ROOT`] being the share's root) and handles (ids the host hands out on open), and
//! single path components, which the host resolves beneath the node it names.
//!
//! Host → agent: [`FsShares`] (the full list of exports, a request answered with
//! [`FsSharesReply`] once the agent has mounted them) and [`FsInvalidate`] (an event:
//! something changed on the host, drop the guest's cached view of it).

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::frame::FRAME_HEADER_LEN;
use super::message::{kind, ENVELOPE_HEADER_LEN, ENVELOPE_VERSION};

/// Node id of a share's root directory (FUSE's root id too).
pub const FS_ROOT: u64 = 1;
/// Largest read or write in one request: FUSE's 1 MiB (256 pages) kernel limit.
pub const FS_MAX_IO: u32 = 1 << 20;
/// Longest file name (bytes), as on Linux file systems.
pub const FS_MAX_NAME: usize = 255;
/// Longest symlink target (bytes): `PATH_MAX`.
pub const FS_MAX_LINK: usize = 4096;

/// One exported folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// Named in each [`FsRequest`].
    pub id: u32,
    /// Mounted at `/mnt/vireo/<name>`: one path component.
    pub name: String,
    pub read_only: bool,
    /// Changes whenever the host's node table starts afresh (a new connection): the
    /// agent remounts a share whose instance changed, since its node ids mean nothing
    /// to the new table.
    pub instance: u64,
}

/// Host → agent request: these are the shares now (mount new ones, unmount missing ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsShares {
    pub shares: Vec<ShareInfo>,
}

/// The outcome of mounting one share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMountResult {
    pub name: String,
    /// Where it is mounted in the guest, or why it is not.
    pub result: Result<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSharesReply {
    pub results: Vec<FsMountResult>,
}

/// Host → agent event: drop cached state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsInvalidate {
    /// The name in the directory changed (created, removed, renamed).
    Entry {
        share: u32,
        parent: u64,
        name: String,
    },
    /// The node's attributes and data changed.
    Node { share: u32, node: u64 },
}

/// Agent → host: one file-system operation on a share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest {
    pub share: u32,
    pub op: FsOp,
}

/// A time to set: now (the host's clock), or nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsTime {
    Now,
    UnixNs(i64),
}

/// The attributes a `setattr` changes (`None`: leave alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSetAttr {
    /// Permission bits (`0o7777`).
    pub mode: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<FsTime>,
    pub mtime: Option<FsTime>,
    /// Ownership changes are refused: the host user owns everything in a share.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Flags of [`FsOp::Open`] and [`FsOp::Create`]; anything else the guest passes is
/// dropped by the agent and refused by the host.
pub mod open_flags {
    pub const WRITE: u32 = 1 << 0;
    pub const READ: u32 = 1 << 1;
    pub const TRUNCATE: u32 = 1 << 2;
    pub const APPEND: u32 = 1 << 3;
    /// Create only: fail if the name exists.
    pub const EXCLUSIVE: u32 = 1 << 4;
    pub const ALL: u32 = WRITE | READ | TRUNCATE | APPEND | EXCLUSIVE;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// Answered with [`FsReply::Entry`]; each successful lookup counts one reference the
    /// guest later gives back with [`FsOp::Forget`].
    Lookup {
        parent: u64,
        name: String,
    },
    /// The guest dropped `count` references (no reply expected beyond `Done`).
    Forget {
        node: u64,
        count: u64,
    },
    GetAttr {
        node: u64,
    },
    SetAttr {
        node: u64,
        /// An open handle to use for a size change, when the guest has one.
        handle: Option<u64>,
        set: FsSetAttr,
    },
    ReadLink {
        node: u64,
    },
    Mkdir {
        parent: u64,
        name: String,
        mode: u32,
    },
    Unlink {
        parent: u64,
        name: String,
    },
    Rmdir {
        parent: u64,
        name: String,
    },
    Symlink {
        parent: u64,
        name: String,
        target: String,
    },
    Rename {
        parent: u64,
        name: String,
        new_parent: u64,
        new_name: String,
        /// `RENAME_NOREPLACE` (1) and `RENAME_EXCHANGE` (2); others are refused.
        flags: u32,
    },
    Open {
        node: u64,
        /// [`open_flags`].
        flags: u32,
    },
    Create {
        parent: u64,
        name: String,
        mode: u32,
        flags: u32,
    },
    Read {
        handle: u64,
        offset: u64,
        len: u32,
    },
    Write {
        handle: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Fsync {
        handle: u64,
        data_only: bool,
    },
    Release {
        handle: u64,
    },
    OpenDir {
        node: u64,
    },
    /// Entries after `offset` (0: from the start; else a `next_offset` seen before).
    ReadDir {
        handle: u64,
        offset: u64,
    },
    StatFs,
    /// Like [`ReadDir`](Self::ReadDir), each entry with its attributes, and each entry
    /// with attributes counts as a lookup ([`FsOp::Forget`] gives it back). Entries
    /// stop before their FUSE encoding ([`dir_plus_size`]) passes `max_bytes`, so the
    /// guest kernel's buffer takes them all (at least one comes, whatever the limit).
    /// Only to a host with [`Capabilities::SHARE_DIR_PLUS`](super::Capabilities).
    ReadDirPlus {
        handle: u64,
        offset: u64,
        max_bytes: u32,
    },
}

/// Bytes a `readdirplus` entry named `name_len` bytes takes in the FUSE reply buffer
/// (`fuse_direntplus`: entry_out 128 + dirent 24 + the name, 8-aligned).
pub const fn dir_plus_size(name_len: usize) -> usize {
    (128 + 24 + name_len + 7) & !7
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsKind {
    File,
    Dir,
    Symlink,
    /// Fifos, sockets, devices: visible but not openable through a share.
    Other,
}

/// A node's attributes. No owner: everything shows as the guest user the agent maps the
/// share to, and belongs to the host user on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsAttr {
    pub node: u64,
    pub kind: FsKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsDirEntry {
    /// Only for `d_ino`; the guest looks the name up before using it.
    pub ino: u64,
    pub name: String,
    pub kind: FsKind,
    /// Pass as `offset` to continue after this entry.
    pub next_offset: u64,
}

/// An entry of [`FsOp::ReadDirPlus`] with its attributes (`attr.node` is its node:
/// the lookup is counted, the guest forgets it later). Entries the host cannot look up
/// (gone since) are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsDirEntryPlus {
    pub name: String,
    /// Pass as `offset` to continue after this entry.
    pub next_offset: u64,
    pub attr: FsAttr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStatFs {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// The host's answer to an [`FsRequest`]: a result or an errno (Linux numbering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Entry(FsAttr),
    Attr(FsAttr),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Link(String),
    Written(u32),
    Opened {
        handle: u64,
    },
    Created {
        attr: FsAttr,
        handle: u64,
    },
    /// An empty list: the end of the directory.
    Entries(Vec<FsDirEntry>),
    StatFs(FsStatFs),
    Done,
    Errno(i32),
    /// An empty list: the end of the directory.
    EntriesPlus(Vec<FsDirEntryPlus>),
}

/// Bytes before the data in a frame built by [`data_reply_frame`]: frame length,
/// envelope, the `Data` variant and room for the longest length varint.
const DATA_HEADROOM: usize = FRAME_HEADER_LEN + ENVELOPE_HEADER_LEN + 1 + 5;
/// `FsReply::Data`'s variant index in postcard (declaration order).
const DATA_VARIANT: u8 = 2;

/// Builds the frame of an `FsReply::Data` answer to request `id` with the data written
/// by `fill` straight into the frame (a file read lands where it is sent from: no copy
/// of a megabyte chunk). Returns the buffer and where the frame starts in it; the
/// bytes from there decode exactly as `encode_message(id, &FsReply(Data(..)))`.
pub fn data_reply_frame<E>(
    id: u32,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(Vec<u8>, usize), E> {
    let mut buf = Vec::with_capacity(DATA_HEADROOM + FS_MAX_IO as usize);
    buf.resize(DATA_HEADROOM, 0);
    fill(&mut buf)?;
    let len = buf.len().saturating_sub(DATA_HEADROOM);
    let mut varint = [0u8; 5];
    let varint = postcard::to_slice(&(len as u32), &mut varint)
        .map(|v| v.len())
        .unwrap_or(0);
    let mut header = Vec::with_capacity(DATA_HEADROOM);
    let body_len = ENVELOPE_HEADER_LEN + 1 + varint + len;
    header.extend_from_slice(&(body_len as u32).to_le_bytes());
    header.push(ENVELOPE_VERSION);
    header.extend_from_slice(&kind::FS_REPLY.to_le_bytes());
    header.extend_from_slice(&id.to_le_bytes());
    header.push(DATA_VARIANT);
    let mut len_bytes = [0u8; 5];
    let _ = postcard::to_slice(&(len as u32), &mut len_bytes);
    header.extend_from_slice(&len_bytes[..varint]);
    let start = DATA_HEADROOM - header.len();
    buf[start..DATA_HEADROOM].copy_from_slice(&header);
    Ok((buf, start))
}

/// The id and data of a frame payload that is an `FsReply::Data` answer, borrowed where
/// they lie (a megabyte chunk is handed to FUSE without being copied into a `Vec`
/// first); `None` for any other payload, which then goes through
/// [`decode_payload`](super::decode_payload). Whatever this returns `Some` for decodes to
/// exactly that with `decode_payload`, and the other way round (the fuzz target checks).
pub fn data_reply_payload(payload: &[u8]) -> Option<(u32, &[u8])> {
    let (header, body) = payload.split_first_chunk::<ENVELOPE_HEADER_LEN>()?;
    if header[0] != ENVELOPE_VERSION || u16::from_le_bytes([header[1], header[2]]) != kind::FS_REPLY
    {
        return None;
    }
    let id = u32::from_le_bytes([header[3], header[4], header[5], header[6]]);
    let (&variant, rest) = body.split_first()?;
    if variant != DATA_VARIANT {
        return None;
    }
    // The length as postcard reads a byte string's (a canonical varint).
    let (len, data) = postcard::take_from_bytes::<usize>(rest).ok()?;
    (data.len() == len).then_some((id, data))
}

/// Is `name` one path component the host may resolve: not empty, not `.` or `..`, no
/// `/` or NUL, at most [`FS_MAX_NAME`] bytes.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= FS_MAX_NAME
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_reply_frames_decode_like_encoded_ones() {
        use crate::protocol::{decode_payload, encode_message, FrameDecoder, Message};
        for len in [0usize, 1, 127, 128, 16_383, 16_384, FS_MAX_IO as usize] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (buf, start) = data_reply_frame::<()>(77, |b| {
                b.extend_from_slice(&data);
                Ok(())
            })
            .unwrap();
            let message = Message::FsReply(FsReply::Data(data));
            assert_eq!(
                &buf[start..],
                encode_message(77, &message).unwrap(),
                "{len}"
            );
            let mut dec = FrameDecoder::new();
            dec.push(&buf[start..]);
            let env = decode_payload(&dec.next_frame().unwrap().unwrap()).unwrap();
            assert_eq!((env.id, env.message), (77, message));
        }
    }

    #[test]
    fn data_replies_are_borrowed_and_nothing_else_is() {
        use crate::protocol::{encode_message, Message};
        let data = vec![7u8; 300];
        let frame = encode_message(9, &Message::FsReply(FsReply::Data(data.clone()))).unwrap();
        let payload = &frame[FRAME_HEADER_LEN..];
        assert_eq!(data_reply_payload(payload), Some((9, &data[..])));
        // One byte short or long: the length no longer matches.
        assert_eq!(data_reply_payload(&payload[..payload.len() - 1]), None);
        assert_eq!(data_reply_payload(&[payload, &[0]].concat()), None);
        for other in [FsReply::Done, FsReply::Link("x".into()), FsReply::Errno(2)] {
            let frame = encode_message(9, &Message::FsReply(other)).unwrap();
            assert_eq!(data_reply_payload(&frame[FRAME_HEADER_LEN..]), None);
        }
        let ping = encode_message(9, &Message::Ping(data)).unwrap();
        assert_eq!(data_reply_payload(&ping[FRAME_HEADER_LEN..]), None);
    }

    #[test]
    fn plain_names() {
        for ok in ["a", "a.b", "...", "ü", " x"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        let long = "x".repeat(FS_MAX_NAME + 1);
        for bad in ["", ".", "..", "a/b", "/", "a\0", long.as_str()] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
