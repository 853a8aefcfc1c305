//! The clipboard protocol on one host connection, free of I/O (spice-vdagent's rules, with
//! a serial per side):
//!
//! - Whoever copies **grabs**: `ClipboardGrab { serial, formats }`, the serial counting
//!   that side's grabs. A grab replaces any earlier one, from either side: the newest
//!   grab received wins.
//! - The other side **requests** one format naming the owner's serial and gets
//!   `ClipboardData` with the same serial, or an error. A request or data naming a serial
//!   that is no longer the current grab is stale: refused or dropped, never applied.
//! - The agent fetches the host's data at once (arboard cannot offer a format lazily) and
//!   puts it on the guest clipboard marked [`Origin::Host`]; only [`Origin::Guest`]
//!   changes are grabbed towards the host, so data never comes back to where it came from.
//! - Release: the owner's clipboard went empty.
//!
//! A new connection (a new host, or a transport reset after a restore) starts from
//! nothing, then grabs whatever the guest clipboard holds (or releases serial 0 when it
//! is empty, so the host knows the guest's state either way).
//!
//! Crossing grabs (both sides copy within one round trip) resolve to the host: the agent
//! takes any host grab as the newest, and the host ignores a guest grab that reaches it
//! before the agent's request for the host's newest grab (the agent requests at once,
//! so a guest grab made after seeing the host's always follows that request).

use super::{GuestClipboard, LookupError, Origin, Snapshot};
use crate::agent::log;
use crate::protocol::clipboard::format_name;
use crate::protocol::{
    error_code, ClipboardContent, ClipboardData, ClipboardFormat, ClipboardGrab, ClipboardRelease,
    ClipboardRequest, ClipboardSource, ClipboardStatus, ErrorReply, Message, NO_REPLY,
};

/// A message for the session to send with this id.
pub type Outgoing = (u32, Message);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fetch {
    id: u32,
    serial: u32,
    format: ClipboardFormat,
}

#[derive(Debug, Default)]
pub struct ClipboardSync {
    /// Serial of the agent's last grab on this connection.
    last_serial: u32,
    /// The guest owns the clipboard, announced with this serial.
    guest_grab: Option<u32>,
    /// The host owns the clipboard with this grab serial.
    host_grab: Option<u32>,
    /// Our request for the host's data, not answered yet.
    fetch: Option<Fetch>,
    /// Generation of the guest clipboard last looked at.
    seen: Option<u64>,
    /// Where the clipboard lived when last told to the host.
    source_told: Option<ClipboardSource>,
}

fn error(id: u32, kind_of: &Message, code: u16, text: String) -> Outgoing {
    let reply = ErrorReply {
        code,
        in_reply_to_kind: kind_of.kind(),
        text,
    };
    (id, Message::Error(reply))
}

impl ClipboardSync {
    /// The host said hello: tell it what the guest clipboard holds, a grab, or when it is
    /// empty a release of serial 0, so the host knows the state either way.
    pub fn on_hello(&mut self, clipboard: &GuestClipboard) -> Vec<Outgoing> {
        *self = Self::default();
        let snapshot = clipboard.snapshot();
        self.seen = Some(snapshot.generation);
        let empty = ClipboardRelease { serial: 0 };
        let mut out = vec![self
            .grab(&snapshot)
            .unwrap_or((NO_REPLY, Message::ClipboardRelease(empty)))];
        out.extend(self.status(clipboard));
        out
    }

    /// Where the clipboard lives, when the host has not heard it yet (a desktop session
    /// came or went): the host shows it as the clipboard feature's state.
    fn status(&mut self, clipboard: &GuestClipboard) -> Option<Outgoing> {
        let source = clipboard.source();
        if self.source_told == Some(source) {
            return None;
        }
        self.source_told = Some(source);
        Some((
            NO_REPLY,
            Message::ClipboardStatus(ClipboardStatus { source }),
        ))
    }

    fn grab(&mut self, snapshot: &Snapshot) -> Option<Outgoing> {
        if snapshot.is_empty() {
            return None;
        }
        self.last_serial = self.last_serial.wrapping_add(1);
        self.guest_grab = Some(self.last_serial);
        self.host_grab = None;
        self.fetch = None;
        let grab = ClipboardGrab {
            serial: self.last_serial,
            formats: snapshot.formats(),
        };
        Some((NO_REPLY, Message::ClipboardGrab(grab)))
    }

    /// The guest clipboard may have changed (the worker woke us): grab or release.
    pub fn poll(&mut self, clipboard: &GuestClipboard) -> Vec<Outgoing> {
        let mut out: Vec<Outgoing> = self.status(clipboard).into_iter().collect();
        out.extend(self.poll_content(clipboard));
        out
    }

    fn poll_content(&mut self, clipboard: &GuestClipboard) -> Vec<Outgoing> {
        let snapshot = clipboard.snapshot();
        if self.seen == Some(snapshot.generation) {
            return Vec::new();
        }
        self.seen = Some(snapshot.generation);
        if snapshot.origin == Origin::Host {
            // The host's own data (or its release) landing: nothing to tell it.
            self.guest_grab = None;
            return Vec::new();
        }
        if let Some(grab) = self.grab(&snapshot) {
            return vec![grab];
        }
        match self.guest_grab.take() {
            Some(serial) => vec![(
                NO_REPLY,
                Message::ClipboardRelease(ClipboardRelease { serial }),
            )],
            None => Vec::new(),
        }
    }

    /// The host copied: it owns the clipboard now; ask for its data (`fetch_id` is a
    /// fresh request id of the session's).
    pub fn on_grab(&mut self, grab: ClipboardGrab, fetch_id: u32) -> Vec<Outgoing> {
        self.host_grab = Some(grab.serial);
        self.guest_grab = None;
        self.fetch = None;
        // The host lists its formats in its order of preference.
        let Some(&format) = grab.formats.first() else {
            return Vec::new();
        };
        self.fetch = Some(Fetch {
            id: fetch_id,
            serial: grab.serial,
            format,
        });
        let request = ClipboardRequest {
            serial: grab.serial,
            format,
        };
        vec![(fetch_id, Message::ClipboardRequest(request))]
    }

    /// The answer to our fetch: onto the guest clipboard, if it is still the newest grab.
    pub fn on_data(&mut self, id: u32, data: ClipboardData, clipboard: &GuestClipboard) {
        let expected = self.fetch.filter(|f| f.id == id);
        let Some(fetch) = expected else {
            log(format_args!(
                "clipboard: dropping data for no request of ours (id {id})"
            ));
            return;
        };
        self.fetch = None;
        if self.host_grab != Some(data.serial) || fetch.serial != data.serial {
            log(format_args!(
                "clipboard: dropping data for stale grab {} (host grab now {:?})",
                data.serial, self.host_grab
            ));
            return;
        }
        if data.format != fetch.format {
            log(format_args!(
                "clipboard: asked for {}, got {}: dropped",
                format_name(fetch.format),
                format_name(data.format)
            ));
            return;
        }
        let content = ClipboardContent::one(data.format, data.data);
        if let Err(why) = content.check_limit(clipboard.limit()) {
            log(format_args!("clipboard: refusing the host's data: {why}"));
            return;
        }
        clipboard.set_from_host(content);
    }

    /// The host's error for our fetch ends it.
    pub fn on_error(&mut self, id: u32) {
        if self.fetch.is_some_and(|f| f.id == id) {
            self.fetch = None;
        }
    }

    /// The host asks for the guest's data.
    pub fn on_request(
        &mut self,
        id: u32,
        request: ClipboardRequest,
        clipboard: &GuestClipboard,
    ) -> Outgoing {
        let asked = Message::ClipboardRequest(request);
        if self.guest_grab != Some(request.serial) {
            let text = match self.guest_grab {
                Some(now) => format!(
                    "grab {} is stale: the guest's current grab is {now}",
                    request.serial
                ),
                None => format!(
                    "grab {} is stale: the guest does not own the clipboard",
                    request.serial
                ),
            };
            return error(id, &asked, error_code::FAILED, text);
        }
        let snapshot = clipboard.snapshot();
        match snapshot.data(request.format, clipboard.limit()) {
            Ok(data) => {
                let data = ClipboardData {
                    serial: request.serial,
                    format: request.format,
                    data: data.to_vec(),
                };
                (id, Message::ClipboardData(data))
            }
            Err(LookupError::TooLarge(text)) => error(id, &asked, error_code::TOO_LARGE, text),
            Err(LookupError::Absent) => {
                let text = format!(
                    "the guest clipboard holds no {}",
                    format_name(request.format)
                );
                error(id, &asked, error_code::FAILED, text)
            }
        }
    }

    /// The host's clipboard went empty.
    pub fn on_release(&mut self, release: ClipboardRelease, clipboard: &GuestClipboard) {
        if self.host_grab == Some(release.serial) {
            self.host_grab = None;
            self.fetch = None;
            clipboard.host_released();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::agent::clipboard::ClipboardMode;
    use crate::protocol::error_code;

    fn memory() -> GuestClipboard {
        GuestClipboard::start(ClipboardMode::Memory, 16).unwrap()
    }

    /// Waits for the worker to publish a generation other than `after`.
    fn settled(clipboard: &GuestClipboard, after: u64) -> Snapshot {
        let start = Instant::now();
        loop {
            let s = clipboard.snapshot();
            if s.generation != after || start.elapsed() > Duration::from_secs(5) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn grab(serial: u32) -> ClipboardGrab {
        ClipboardGrab {
            serial,
            formats: vec![ClipboardFormat::Text],
        }
    }

    fn data(serial: u32, bytes: &[u8]) -> ClipboardData {
        ClipboardData {
            serial,
            format: ClipboardFormat::Text,
            data: bytes.to_vec(),
        }
    }

    #[test]
    fn host_data_lands_and_is_not_grabbed_back() {
        let clipboard = memory();
        let mut sync = ClipboardSync::default();
        assert!(matches!(
            sync.on_hello(&clipboard)[..],
            [
                (0, Message::ClipboardRelease(ClipboardRelease { serial: 0 })),
                (
                    0,
                    Message::ClipboardStatus(ClipboardStatus {
                        source: ClipboardSource::AgentCopy
                    })
                )
            ]
        ));
        let out = sync.on_grab(grab(5), 40);
        assert!(matches!(
            out[..],
            [(
                40,
                Message::ClipboardRequest(ClipboardRequest { serial: 5, .. })
            )]
        ));
        sync.on_data(40, data(5, b"hi"), &clipboard);
        let s = settled(&clipboard, 0);
        assert_eq!(s.origin, Origin::Host);
        assert_eq!(s.data(ClipboardFormat::Text, 16), Ok(&b"hi"[..]));
        // No echo: the host's own data is not grabbed towards it.
        assert!(sync.poll(&clipboard).is_empty());
    }

    #[test]
    fn stale_data_is_dropped_and_the_newest_grab_wins() {
        let clipboard = memory();
        let mut sync = ClipboardSync::default();
        sync.on_hello(&clipboard);
        sync.on_grab(grab(1), 10);
        sync.on_grab(grab(2), 11);
        // The answer to the first fetch arrives after the second grab.
        sync.on_data(10, data(1, b"old"), &clipboard);
        sync.on_data(11, data(2, b"new"), &clipboard);
        let s = settled(&clipboard, 0);
        assert_eq!(s.data(ClipboardFormat::Text, 16), Ok(&b"new"[..]));
        assert_eq!(s.generation, 1, "the stale data never landed");
    }

    #[test]
    fn guest_copy_is_grabbed_served_and_released() {
        let clipboard = memory();
        let mut sync = ClipboardSync::default();
        sync.on_hello(&clipboard);
        clipboard
            .set_from_local(ClipboardContent::text("guest"))
            .unwrap();
        let out = sync.poll(&clipboard);
        let [(0, Message::ClipboardGrab(g))] = &out[..] else {
            panic!("{out:?}")
        };
        let request = ClipboardRequest {
            serial: g.serial,
            format: ClipboardFormat::Text,
        };
        let (id, reply) = sync.on_request(9, request, &clipboard);
        assert_eq!(id, 9);
        assert!(matches!(reply, Message::ClipboardData(ref d) if d.data == b"guest"));
        // A request naming an older serial is refused.
        let stale = ClipboardRequest {
            serial: g.serial.wrapping_sub(1),
            format: ClipboardFormat::Text,
        };
        let (_, reply) = sync.on_request(10, stale, &clipboard);
        assert!(matches!(reply, Message::Error(ref e) if e.code == error_code::FAILED));
        // A host grab takes over; then the guest's old serial is stale too.
        sync.on_grab(grab(3), 11);
        let (_, reply) = sync.on_request(12, request, &clipboard);
        assert!(matches!(reply, Message::Error(_)));
    }

    #[test]
    fn over_limit_is_refused_locally_and_from_the_host() {
        let clipboard = memory();
        let err = clipboard
            .set_from_local(ClipboardContent::text("x".repeat(17)))
            .unwrap_err();
        assert!(err.contains("over the limit of 16 bytes"), "{err}");
        let mut sync = ClipboardSync::default();
        sync.on_hello(&clipboard);
        sync.on_grab(grab(1), 2);
        sync.on_data(2, data(1, &[b'x'; 17]), &clipboard);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(clipboard.snapshot().generation, 0);
    }

    #[test]
    fn new_connection_grabs_what_the_guest_holds() {
        let clipboard = memory();
        clipboard
            .set_from_local(ClipboardContent::text("kept"))
            .unwrap();
        let mut sync = ClipboardSync::default();
        let out = sync.on_hello(&clipboard);
        assert!(matches!(out[..], [(0, Message::ClipboardGrab(ref g)), _] if g.serial == 1));
        assert!(sync.poll(&clipboard).is_empty());
    }
}
