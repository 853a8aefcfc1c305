//! Reading the CLIPBOARD selection ourselves (ICCCM §2.4–2.7), instead of through arboard:
//! arboard gives an INCR transfer 10 ms per chunk, so a big copy from a busy owner (64 MiB
//! from `xclip` on a loaded guest) times out half-way and reads as "nothing copied". Here
//! every wait is seconds long, the owner's TARGETS are asked for first (so no format is
//! requested that the owner does not have), and data past the size limit is counted, not
//! kept: a hostile owner cannot make the agent hold more than the limit per format.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, Property, Window, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::{COPY_DEPTH_FROM_PARENT, NONE};

use super::Payload;
use crate::protocol::ClipboardFormat;

/// How long the owner has to answer a request, and to hand over each INCR chunk.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);
/// Property reads in pieces of this many 32-bit units (4 MiB).
const PROPERTY_CHUNK: u32 = 1 << 20;

/// Text targets, best first. STRING is Latin-1 (ICCCM), converted to UTF-8.
const TEXT_TARGETS: [&str; 3] = ["UTF8_STRING", "text/plain;charset=utf-8", "STRING"];
const PNG_TARGET: &str = "image/png";

/// One format's worth of data as read: the bytes, or only their count past the limit.
type Read = Result<Option<Payload>, String>;

pub struct SelectionReader {
    conn: RustConnection,
    window: Window,
    clipboard: Atom,
    targets: Atom,
    incr: Atom,
    /// The property on our window the owner writes into.
    property: Atom,
}

impl SelectionReader {
    pub fn connect() -> Result<Self, String> {
        let (conn, screen) =
            RustConnection::connect(None).map_err(|e| format!("cannot reach the X server: {e}"))?;
        Self::on(conn, screen).map_err(|e| format!("X: {e}"))
    }

    fn on(conn: RustConnection, screen: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let root = conn.setup().roots.get(screen).ok_or("no such screen")?.root;
        let window = conn.generate_id()?;
        // INCR chunks are announced as PropertyNotify on the requestor's window.
        conn.create_window(
            COPY_DEPTH_FROM_PARENT,
            window,
            root,
            0,
            0,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )?;
        let atom = |name: &str| -> Result<Atom, Box<dyn std::error::Error>> {
            Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
        };
        let (clipboard, targets) = (atom("CLIPBOARD")?, atom("TARGETS")?);
        let (incr, property) = (atom("INCR")?, atom("VIREO_SELECTION")?);
        Ok(SelectionReader {
            conn,
            window,
            clipboard,
            targets,
            incr,
            property,
        })
    }

    /// Everything CLIPBOARD offers in our formats: empty when nobody owns it. Past
    /// `limit` a format is only counted.
    pub fn read(&mut self, limit: usize) -> Result<Vec<(ClipboardFormat, Payload)>, String> {
        let owner = self
            .conn
            .get_selection_owner(self.clipboard)
            .map_err(x_err)?
            .reply()
            .map_err(x_err)?
            .owner;
        if owner == NONE {
            return Ok(Vec::new());
        }
        let offered = self.offered_targets()?;
        let mut entries = Vec::new();
        if let Some(text) = self.read_text(&offered, limit)? {
            entries.push((ClipboardFormat::Text, text));
        }
        if offered
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == PNG_TARGET))
        {
            if let Some(png) = self.read_target(PNG_TARGET, limit)? {
                entries.push((ClipboardFormat::Png, png));
            }
        }
        Ok(entries)
    }

    /// The owner's TARGETS by name; `None` when it does not answer that (old programs):
    /// then each format is simply asked for.
    fn offered_targets(&mut self) -> Result<Option<Vec<String>>, String> {
        let Some(Payload::Data(raw)) = self.convert(self.targets, 64 * 1024)? else {
            return Ok(None);
        };
        let mut names = Vec::new();
        for chunk in raw.chunks_exact(4) {
            let atom = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let name = self
                .conn
                .get_atom_name(atom)
                .map_err(x_err)?
                .reply()
                .map_err(x_err)?
                .name;
            names.push(String::from_utf8_lossy(&name).into_owned());
        }
        Ok(Some(names))
    }

    fn read_text(&mut self, offered: &Option<Vec<String>>, limit: usize) -> Read {
        for target in TEXT_TARGETS {
            if offered
                .as_ref()
                .is_some_and(|t| !t.iter().any(|n| n == target))
            {
                continue;
            }
            match self.read_target(target, limit)? {
                Some(Payload::Data(bytes)) if target == "STRING" => {
                    return Ok(Some(Payload::Data(latin1_to_utf8(&bytes))));
                }
                Some(Payload::Data(bytes)) if std::str::from_utf8(&bytes).is_err() => {
                    // Not text after all: the next target may be.
                    continue;
                }
                Some(payload) => return Ok(Some(payload)),
                None => continue,
            }
        }
        Ok(None)
    }

    fn read_target(&mut self, name: &str, limit: usize) -> Read {
        let target = self
            .conn
            .intern_atom(false, name.as_bytes())
            .map_err(x_err)?
            .reply()
            .map_err(x_err)?
            .atom;
        self.convert(target, limit)
            .map_err(|e| format!("reading {name}: {e}"))
    }

    /// ConvertSelection, then the property the owner filled: whole, or INCR in chunks.
    /// `None` when the owner refuses the target.
    fn convert(&mut self, target: Atom, limit: usize) -> Read {
        self.conn
            .delete_property(self.window, self.property)
            .map_err(x_err)?;
        self.conn
            .convert_selection(
                self.window,
                self.clipboard,
                target,
                self.property,
                x11rb::CURRENT_TIME,
            )
            .map_err(x_err)?;
        self.conn.flush().map_err(x_err)?;
        let notify = self.wait_for(|e| match e {
            Event::SelectionNotify(n) if n.requestor == self.window => Some(n.property),
            _ => None,
        })?;
        let Some(property) = notify else {
            return Err("the owner did not answer within 5 s".into());
        };
        if property == NONE {
            return Ok(None);
        }
        let (kind, first) = self.take_property(limit)?;
        if kind != self.incr {
            return Ok(Some(first));
        }
        self.read_incr(limit).map(Some)
    }

    /// The INCR protocol: deleting the property asks for the next chunk; an empty chunk
    /// ends the transfer.
    fn read_incr(&mut self, limit: usize) -> Result<Payload, String> {
        let mut data = Payload::Data(Vec::new());
        loop {
            let new_value = self.wait_for(|e| match e {
                Event::PropertyNotify(p)
                    if p.window == self.window
                        && p.atom == self.property
                        && p.state == Property::NEW_VALUE =>
                {
                    Some(())
                }
                _ => None,
            })?;
            if new_value.is_none() {
                return Err("the owner stopped sending its data (no chunk for 5 s)".into());
            }
            let (_, chunk) = self.take_property(limit)?;
            let chunk_len = payload_len(&chunk);
            if chunk_len == 0 {
                return Ok(data);
            }
            data = append(data, chunk, limit);
        }
    }

    /// Reads and deletes our property: its type and its bytes (counted past `limit`).
    fn take_property(&mut self, limit: usize) -> Result<(Atom, Payload), String> {
        let mut data = Payload::Data(Vec::new());
        let mut offset = 0u32;
        loop {
            let reply = self
                .conn
                .get_property(
                    false,
                    self.window,
                    self.property,
                    AtomEnum::ANY,
                    offset,
                    PROPERTY_CHUNK,
                )
                .map_err(x_err)?
                .reply()
                .map_err(x_err)?;
            let piece_units = u32::try_from(reply.value.len().div_ceil(4)).unwrap_or(u32::MAX);
            data = append(data, Payload::Data(reply.value), limit);
            if reply.bytes_after == 0 || piece_units == 0 {
                // Deleting is what tells an INCR owner to send the next chunk.
                self.conn
                    .delete_property(self.window, self.property)
                    .map_err(x_err)?;
                self.conn.flush().map_err(x_err)?;
                return Ok((reply.type_, data));
            }
            offset = offset.saturating_add(piece_units);
        }
    }

    /// The first event `pick` accepts, or `None` after [`OWNER_TIMEOUT`] without one.
    fn wait_for<T>(&self, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<Option<T>, String> {
        let deadline = Instant::now() + OWNER_TIMEOUT;
        loop {
            // Events x11rb already read come first; only then is the socket waited on.
            while let Some(event) = self.conn.poll_for_event().map_err(x_err)? {
                if let Some(found) = pick(&event) {
                    return Ok(Some(found));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.conn.stream().as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("waiting for the X server: {e}")),
            }
        }
    }
}

fn x_err(e: impl std::fmt::Display) -> String {
    format!("X: {e}")
}

fn payload_len(p: &Payload) -> usize {
    match p {
        Payload::Data(d) => d.len(),
        Payload::TooLarge(n) => *n,
        // Another clipboard's refusal: past any limit.
        Payload::Refused(_) => usize::MAX,
    }
}

/// `data` followed by `more`; once past `limit` only the length is kept.
fn append(data: Payload, more: Payload, limit: usize) -> Payload {
    let total = payload_len(&data).saturating_add(payload_len(&more));
    match (data, more) {
        (Payload::Data(mut d), Payload::Data(m)) if total <= limit => {
            d.extend_from_slice(&m);
            Payload::Data(d)
        }
        _ => Payload::TooLarge(total),
    }
}

/// ICCCM's STRING is ISO 8859-1: each byte is the code point of the same value.
fn latin1_to_utf8(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .map(|&b| char::from(b))
        .collect::<String>()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_counts_past_the_limit() {
        let a = append(
            Payload::Data(b"abc".to_vec()),
            Payload::Data(b"de".to_vec()),
            5,
        );
        assert_eq!(a, Payload::Data(b"abcde".to_vec()));
        let b = append(a, Payload::Data(b"f".to_vec()), 5);
        assert_eq!(b, Payload::TooLarge(6));
        let c = append(b, Payload::Data(vec![0; 10]), 5);
        assert_eq!(c, Payload::TooLarge(16));
    }

    #[test]
    fn latin1_becomes_utf8() {
        assert_eq!(latin1_to_utf8(b"caf\xe9"), "café".as_bytes());
    }
}
