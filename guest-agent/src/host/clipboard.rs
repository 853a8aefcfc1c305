//! The host side of the clipboard (rules in `agent::clipboard::sync`): what the host
//! offers (its grab and the data behind it) and what the guest offers (the agent's
//! grab), as calls on [`AgentClient`] and [`ClipboardEvent`]s.
//!
//! The app bridges this with the host clipboard: on a host change it calls
//! [`AgentClient::clipboard_set`]; on [`ClipboardEvent::GuestGrab`] it fetches with
//! [`AgentClient::clipboard_get`] and writes the host clipboard *without* calling
//! `clipboard_set` for that write, so nothing echoes.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::client::{AgentClient, ClientError};
use crate::protocol::clipboard::format_name;
use crate::protocol::{
    error_code, Capabilities, ClipboardContent, ClipboardData, ClipboardFormat, ClipboardGrab,
    ClipboardRelease, ClipboardRequest, ErrorReply, Message, DEFAULT_CLIPBOARD_LIMIT,
};

/// What the guest did with its clipboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipboardEvent {
    /// The guest copied: these formats can be fetched with `clipboard_get`.
    GuestGrab(ClipboardGrab),
    /// The guest's clipboard is empty.
    GuestReleased,
    /// The agent fetched the host's data for this grab serial.
    HostDataSent { serial: u32 },
}

#[derive(Debug, Default)]
struct State {
    last_serial: u32,
    /// The host's newest grab and its data.
    own: Option<(u32, ClipboardContent)>,
    /// The agent requested our newest grab: a guest grab after this is newer than ours.
    acked: bool,
    /// When our newest grab was sent.
    own_at: Option<Instant>,
    /// Highest of our serials whose data the agent fetched.
    served: Option<u32>,
    /// The guest's grab, when the guest owns the clipboard.
    guest: Option<ClipboardGrab>,
    /// The agent told us its clipboard state on this connection.
    guest_known: bool,
}

pub(super) struct HostClipboard {
    state: Mutex<State>,
    changed: Condvar,
    limit: usize,
}

impl Default for HostClipboard {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: Condvar::new(),
            limit: DEFAULT_CLIPBOARD_LIMIT,
        }
    }
}

/// How long a guest grab that precedes the agent's request for our newest grab counts as
/// crossing ours. Beyond it the agent evidently does not fetch at once (another guest
/// implementation may fetch lazily), and its grab is simply the newest.
const CROSSING_WINDOW: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostClipboard {
    /// A new connection: both sides start over (the app re-offers on its next change).
    pub(super) fn reset(&self) {
        let last_serial = lock(&self.state).last_serial;
        *lock(&self.state) = State {
            last_serial,
            ..State::default()
        };
        self.changed.notify_all();
    }

    /// An unsolicited clipboard message from the agent: the reply to send, if any, and
    /// the event to emit.
    pub(super) fn on_message(&self, message: Message) -> (Option<Message>, Option<ClipboardEvent>) {
        let mut state = lock(&self.state);
        let out = match message {
            Message::ClipboardGrab(grab) => {
                state.guest_known = true;
                let crossing = state.own.is_some()
                    && !state.acked
                    && state.own_at.is_some_and(|t| t.elapsed() < CROSSING_WINDOW);
                if crossing {
                    // Crossing grabs: the agent has not seen ours yet, and takes it as the
                    // newest when it does. Ours stands.
                    (None, None)
                } else {
                    state.own = None;
                    state.guest = Some(grab.clone());
                    (None, Some(ClipboardEvent::GuestGrab(grab)))
                }
            }
            Message::ClipboardRelease(release) => {
                state.guest_known = true;
                match &state.guest {
                    Some(g) if g.serial == release.serial => {
                        state.guest = None;
                        (None, Some(ClipboardEvent::GuestReleased))
                    }
                    _ => (None, None),
                }
            }
            Message::ClipboardRequest(request) => {
                let current = state
                    .own
                    .as_ref()
                    .filter(|(s, _)| *s == request.serial)
                    .map(|(_, c)| c.get(request.format).map(<[u8]>::to_vec));
                if current.is_some() {
                    state.acked = true;
                }
                match current {
                    Some(Some(data)) => {
                        let reply = Message::ClipboardData(ClipboardData {
                            serial: request.serial,
                            format: request.format,
                            data,
                        });
                        let event = ClipboardEvent::HostDataSent {
                            serial: request.serial,
                        };
                        (Some(reply), Some(event))
                    }
                    Some(None) => (
                        Some(refusal(
                            &request,
                            format!(
                                "the host clipboard holds no {}",
                                format_name(request.format)
                            ),
                        )),
                        None,
                    ),
                    None => (
                        Some(refusal(
                            &request,
                            format!("grab {} is not the host's current grab", request.serial),
                        )),
                        None,
                    ),
                }
            }
            other => {
                let text = format!("kind {:#06x} is not a clipboard message", other.kind());
                let reply = Message::Error(ErrorReply {
                    code: error_code::UNEXPECTED,
                    in_reply_to_kind: other.kind(),
                    text,
                });
                (Some(reply), None)
            }
        };
        drop(state);
        self.changed.notify_all();
        out
    }

    /// The data of grab `serial` is written to the agent (not merely queued: a caller
    /// waiting for this may exit right after).
    pub(super) fn mark_sent(&self, serial: u32) {
        lock(&self.state).served = Some(serial);
        self.changed.notify_all();
    }

    fn wait(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if done(&state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn refusal(request: &ClipboardRequest, text: String) -> Message {
    Message::Error(ErrorReply {
        code: error_code::FAILED,
        in_reply_to_kind: Message::ClipboardRequest(*request).kind(),
        text,
    })
}

impl AgentClient {
    fn host_clipboard(&self) -> &HostClipboard {
        &self.shared().clipboard
    }

    /// The host copied `content`: offer it to the guest. Returns the grab's serial; the
    /// agent fetches the data at once ([`Self::clipboard_wait_sent`] waits for that).
    pub fn clipboard_set(&self, content: ClipboardContent) -> Result<u32, ClientError> {
        self.require_capability(Capabilities::CLIPBOARD, "the clipboard")?;
        let clipboard = self.host_clipboard();
        content
            .check_limit(clipboard.limit)
            .map_err(ClientError::TooLarge)?;
        if content.is_empty() {
            return Err(ClientError::Clipboard("nothing to offer".into()));
        }
        let grab = {
            let mut state = lock(&clipboard.state);
            state.last_serial = state.last_serial.wrapping_add(1).max(1);
            let serial = state.last_serial;
            let grab = ClipboardGrab {
                serial,
                formats: content.formats(),
            };
            state.own = Some((serial, content));
            state.acked = false;
            state.own_at = Some(Instant::now());
            state.guest = None;
            grab
        };
        let serial = grab.serial;
        self.send_unsolicited(&Message::ClipboardGrab(grab))?;
        Ok(serial)
    }

    /// Waits until the agent has fetched the data of grab `serial`.
    pub fn clipboard_wait_sent(&self, serial: u32, timeout: Duration) -> Result<(), ClientError> {
        let sent = self
            .host_clipboard()
            .wait(timeout, |s| s.served == Some(serial));
        if sent {
            Ok(())
        } else {
            Err(ClientError::Timeout(timeout))
        }
    }

    /// The host clipboard went empty: withdraw our offer.
    pub fn clipboard_release(&self) -> Result<(), ClientError> {
        let own = lock(&self.host_clipboard().state).own.take();
        match own {
            Some((serial, _)) => {
                self.send_unsolicited(&Message::ClipboardRelease(ClipboardRelease { serial }))
            }
            None => Ok(()),
        }
    }

    /// The guest's current grab, if the guest owns the clipboard.
    pub fn guest_clipboard(&self) -> Option<ClipboardGrab> {
        lock(&self.host_clipboard().state).guest.clone()
    }

    /// The clipboard's content in `format`: the guest's (fetched from the agent), or the
    /// host's own when the host's grab is the newest.
    pub fn clipboard_get(&self, format: ClipboardFormat) -> Result<Vec<u8>, ClientError> {
        self.require_capability(Capabilities::CLIPBOARD, "the clipboard")?;
        let clipboard = self.host_clipboard();
        // Right after connecting, the agent's account of its clipboard may be in flight.
        let timeout = self.config().call_timeout;
        clipboard.wait(timeout, |s| s.guest_known || s.own.is_some());
        let (own, guest) = {
            let state = lock(&clipboard.state);
            (state.own.clone(), state.guest.clone())
        };
        if let Some((_, content)) = own {
            return content.get(format).map(<[u8]>::to_vec).ok_or_else(|| {
                ClientError::Clipboard(format!(
                    "the host clipboard holds no {}",
                    format_name(format)
                ))
            });
        }
        let Some(grab) = guest else {
            return Err(ClientError::Clipboard(
                "the guest clipboard is empty".into(),
            ));
        };
        if !grab.formats.contains(&format) {
            return Err(ClientError::Clipboard(format!(
                "the guest clipboard holds no {}",
                format_name(format)
            )));
        }
        let request = ClipboardRequest {
            serial: grab.serial,
            format,
        };
        match self.request(&Message::ClipboardRequest(request)) {
            Ok(Message::ClipboardData(data))
                if data.serial == grab.serial && data.format == format =>
            {
                Ok(data.data)
            }
            Ok(other) => Err(ClientError::Unexpected(other.kind())),
            Err(ClientError::Agent { code, text }) if code == error_code::TOO_LARGE => {
                Err(ClientError::TooLarge(text))
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offering(clipboard: &HostClipboard, serial: u32, text: &str) {
        let mut state = lock(&clipboard.state);
        state.own = Some((serial, ClipboardContent::text(text)));
        state.acked = false;
        state.own_at = Some(Instant::now());
    }

    fn guest_grab(serial: u32) -> Message {
        Message::ClipboardGrab(ClipboardGrab {
            serial,
            formats: vec![ClipboardFormat::Text],
        })
    }

    fn request(serial: u32) -> Message {
        Message::ClipboardRequest(ClipboardRequest {
            serial,
            format: ClipboardFormat::Text,
        })
    }

    #[test]
    fn crossing_guest_grab_loses_until_the_agent_has_seen_ours() {
        let clipboard = HostClipboard::default();
        offering(&clipboard, 4, "host");
        // The guest's grab crossed ours on the wire: ignored.
        assert_eq!(clipboard.on_message(guest_grab(1)), (None, None));
        // The agent asks for ours: served, and the next guest grab is newer.
        let (reply, event) = clipboard.on_message(request(4));
        assert!(matches!(reply, Some(Message::ClipboardData(ref d)) if d.data == b"host"));
        assert_eq!(event, Some(ClipboardEvent::HostDataSent { serial: 4 }));
        let (_, event) = clipboard.on_message(guest_grab(2));
        assert!(matches!(event, Some(ClipboardEvent::GuestGrab(ref g)) if g.serial == 2));
        // Ours is gone: a request for it now is stale.
        let (reply, _) = clipboard.on_message(request(4));
        assert!(matches!(reply, Some(Message::Error(ref e)) if e.code == error_code::FAILED));
        // The guest's release of that grab empties its side.
        let release = Message::ClipboardRelease(ClipboardRelease { serial: 2 });
        assert_eq!(
            clipboard.on_message(release),
            (None, Some(ClipboardEvent::GuestReleased))
        );
    }

    #[test]
    fn a_lazy_agents_grab_wins_after_the_window() {
        let clipboard = HostClipboard::default();
        offering(&clipboard, 1, "host");
        lock(&clipboard.state).own_at = Some(Instant::now() - CROSSING_WINDOW);
        let (_, event) = clipboard.on_message(guest_grab(9));
        assert!(matches!(event, Some(ClipboardEvent::GuestGrab(_))));
        assert!(lock(&clipboard.state).own.is_none());
    }

    #[test]
    fn requests_for_absent_formats_and_odd_kinds_get_errors() {
        let clipboard = HostClipboard::default();
        offering(&clipboard, 3, "host");
        let png = Message::ClipboardRequest(ClipboardRequest {
            serial: 3,
            format: ClipboardFormat::Png,
        });
        let (reply, event) = clipboard.on_message(png);
        assert!(matches!(reply, Some(Message::Error(ref e)) if e.text.contains("no png")));
        assert_eq!(event, None);
        let (reply, _) = clipboard.on_message(Message::TimeQuery);
        assert!(matches!(reply, Some(Message::Error(ref e)) if e.code == error_code::UNEXPECTED));
    }
}
