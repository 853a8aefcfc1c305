//! The clipboard bridge of one VM: the host's X11 clipboard ↔ the agent, following the
//! host client's grab → request → data rules (`vireo_guest_agent::host::clipboard`).
//!
//! Host → guest: on an owner change (XFixes) the host clipboard is read and offered to
//! the agent as a grab (`clipboard_set`); the agent fetches it at once. Guest → host: on
//! the agent's grab its data is fetched (`clipboard_get`) and written to the host
//! clipboard, *without* offering it back. Our own write makes XFixes report a change
//! too: the content read then is what the write returned, which is how it is known and
//! dropped (`host_news`), so nothing echoes.

use std::time::Duration;

use vireo_guest_agent::agent::clipboard::x11::X11Clipboard;
use vireo_guest_agent::agent::clipboard::{entries_to_content, SessionClipboard};
use vireo_guest_agent::host::{AgentClient, ClipboardEvent};
use vireo_guest_agent::protocol::{
    Capabilities, ClipboardContent, ClipboardFormat, DEFAULT_CLIPBOARD_LIMIT,
};

use crate::vm_config::ClipboardDirection;

/// Reads of the host clipboard tried before giving up: an owner that is busy or just
/// went away fails a read now and then.
const READ_TRIES: u32 = 3;
const READ_RETRY: Duration = Duration::from_millis(50);

/// What an owner change of the host clipboard means for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNews {
    /// Our own write, or what the guest already has: nothing to do.
    Nothing,
    /// The host clipboard went empty: withdraw the offer.
    Release,
    /// A new copy on the host: offer it.
    Offer(ClipboardContent),
}

/// Decides what a host clipboard holding `content` means, given what the bridge wrote
/// last (for the guest) and offered last (to the guest).
pub fn host_news(
    content: ClipboardContent,
    written: Option<&ClipboardContent>,
    offered: Option<&ClipboardContent>,
) -> HostNews {
    if written == Some(&content) || offered == Some(&content) {
        HostNews::Nothing
    } else if content.is_empty() {
        if offered.is_some() {
            HostNews::Release
        } else {
            HostNews::Nothing
        }
    } else {
        HostNews::Offer(content)
    }
}

/// The format fetched from a guest grab: text first (what a paste most often wants;
/// arboard owns one format at a time), else the image.
pub fn preferred(formats: &[ClipboardFormat]) -> Option<ClipboardFormat> {
    [ClipboardFormat::Text, ClipboardFormat::Png]
        .into_iter()
        .find(|f| formats.contains(f))
}

pub struct Bridge {
    pub direction: ClipboardDirection,
    host: Result<X11Clipboard, String>,
    /// What the last write for the guest reads back as.
    written: Option<ClipboardContent>,
    /// What the guest was offered last.
    offered: Option<ClipboardContent>,
}

impl Bridge {
    pub fn new(direction: ClipboardDirection, host: Result<X11Clipboard, String>) -> Bridge {
        Bridge {
            direction,
            host,
            written: None,
            offered: None,
        }
    }

    /// Whether the host clipboard could be opened.
    pub fn host_ready(&self) -> Result<(), String> {
        self.host.as_ref().map(drop).map_err(Clone::clone)
    }

    /// The host clipboard's owner changed: offer the guest what is new. `None` when
    /// there was nothing to do, else what was done or why it failed.
    pub fn host_changed(&mut self, client: &AgentClient) -> Option<Result<String, String>> {
        let offers = client
            .peer()
            .is_some_and(|h| h.capabilities.contains(Capabilities::CLIPBOARD));
        if !self.direction.host_to_guest() || !offers {
            return None;
        }
        let host = self.host.as_mut().ok()?;
        let content = match read(host) {
            Ok(content) => content,
            Err(why) => return Some(Err(format!("cannot read the host clipboard: {why}"))),
        };
        match host_news(content, self.written.as_ref(), self.offered.as_ref()) {
            HostNews::Nothing => None,
            HostNews::Release => {
                self.offered = None;
                Some(
                    client
                        .clipboard_release()
                        .map(|()| "host clipboard empty: offer withdrawn".to_owned())
                        .map_err(|e| e.to_string()),
                )
            }
            HostNews::Offer(content) => {
                let what = describe(&content);
                let result = client.clipboard_set(content.clone());
                self.offered = Some(content);
                Some(
                    result
                        .map(|serial| format!("host → guest: {what} (grab {serial})"))
                        .map_err(|e| format!("offering the host's copy: {e}")),
                )
            }
        }
    }

    /// Something the agent said about the guest's clipboard.
    pub fn guest_event(
        &mut self,
        client: &AgentClient,
        event: ClipboardEvent,
    ) -> Option<Result<String, String>> {
        let ClipboardEvent::GuestGrab(grab) = event else {
            return None;
        };
        // The guest's copy is newer than whatever the host offered.
        self.offered = None;
        if !self.direction.guest_to_host() {
            return None;
        }
        let host = self.host.as_mut().ok()?;
        let format = preferred(&grab.formats)?;
        let data = match client.clipboard_get(format) {
            Ok(data) => data,
            Err(e) => return Some(Err(format!("fetching the guest's copy: {e}"))),
        };
        let content = ClipboardContent {
            entries: vec![(format, data)],
        };
        let what = describe(&content);
        let written = host
            .write(&content, DEFAULT_CLIPBOARD_LIMIT)
            .and_then(|e| entries_to_content(e, DEFAULT_CLIPBOARD_LIMIT));
        Some(match written {
            Ok(read_back) => {
                self.written = Some(read_back);
                Ok(format!("guest → host: {what} (grab {})", grab.serial))
            }
            Err(why) => Err(format!("writing the host clipboard: {why}")),
        })
    }
}

fn read(host: &mut X11Clipboard) -> Result<ClipboardContent, String> {
    let mut tries = 1;
    loop {
        match host.read(DEFAULT_CLIPBOARD_LIMIT) {
            Ok(entries) => return entries_to_content(entries, DEFAULT_CLIPBOARD_LIMIT),
            Err(_) if tries < READ_TRIES => {
                tries += 1;
                std::thread::sleep(READ_RETRY);
            }
            Err(why) => return Err(why),
        }
    }
}

/// `text, 12 bytes` for the log.
fn describe(content: &ClipboardContent) -> String {
    content
        .entries
        .iter()
        .map(|(f, d)| format!("{}, {} bytes", format_name(*f), d.len()))
        .collect::<Vec<_>>()
        .join("; ")
}

fn format_name(format: ClipboardFormat) -> &'static str {
    match format {
        ClipboardFormat::Text => "text",
        ClipboardFormat::Png => "png",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_writes_and_repeats_are_not_offered_again() {
        let text = ClipboardContent::text("from the guest");
        let other = ClipboardContent::text("copied on the host");
        let empty = ClipboardContent::default();
        // Our write for the guest, seen by XFixes: no echo.
        assert_eq!(
            host_news(text.clone(), Some(&text), None),
            HostNews::Nothing
        );
        // Something new on the host: offered; the same again (a second owner change
        // with the same content): nothing.
        assert_eq!(
            host_news(other.clone(), Some(&text), None),
            HostNews::Offer(other.clone())
        );
        assert_eq!(
            host_news(other.clone(), None, Some(&other)),
            HostNews::Nothing
        );
        // Emptied: withdraw an offer, if there is one.
        assert_eq!(
            host_news(empty.clone(), None, Some(&other)),
            HostNews::Release
        );
        assert_eq!(host_news(empty, None, None), HostNews::Nothing);
    }

    #[test]
    fn text_is_fetched_before_images() {
        use ClipboardFormat::{Png, Text};
        assert_eq!(preferred(&[Png, Text]), Some(Text));
        assert_eq!(preferred(&[Png]), Some(Png));
        assert_eq!(preferred(&[]), None);
    }
}
