//! The X session's CLIPBOARD selection: arboard writes it (and keeps serving what it
//! wrote for as long as the agent lives: X11 content lives in its owner),
//! [`SelectionReader`] reads it, XFixes tells when another program takes it. Wayland sessions are reached through Xwayland,
//! whose `DISPLAY` the compositor bridges to the Wayland clipboard.

use std::io::Cursor;

use arboard::{Clipboard, ImageData};
use image::{ImageFormat, ImageReader, Limits};
use x11rb::connection::Connection;
use x11rb::protocol::xfixes::{ConnectionExt as _, SelectionEventMask};
use x11rb::protocol::xproto::{ConnectionExt as _, CreateWindowAux, WindowClass};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::COPY_DEPTH_FROM_PARENT;

use super::x11_selection::SelectionReader;
use super::{Entries, SessionClipboard};
use crate::agent::log;
use crate::protocol::{ClipboardContent, ClipboardFormat};

/// Largest decoded image accepted from the host (RGBA bytes): a 64 MiB PNG may inflate to
/// far more, so the decoder is bounded, not trusted.
const MAX_DECODED_IMAGE: u64 = 512 * 1024 * 1024;

pub struct X11Clipboard {
    clipboard: Clipboard,
    reader: SelectionReader,
}

impl X11Clipboard {
    /// Opens the session clipboard of `DISPLAY`; an error when there is none.
    pub fn open() -> Result<Self, String> {
        if std::env::var_os("DISPLAY").is_none_or(|d| d.is_empty()) {
            return Err("DISPLAY is not set".into());
        }
        // arboard would also try Wayland, and on failure takes ~0.25 s: X answers first.
        let reader = SelectionReader::connect()?;
        // arboard's connection, on a loaded machine, sometimes fails where ours just
        // succeeded: a few tries before giving the session up.
        let mut tries = 0;
        loop {
            match Clipboard::new() {
                Ok(clipboard) => return Ok(Self { clipboard, reader }),
                Err(e) if tries >= 4 => return Err(format!("arboard: {e}")),
                Err(e) => {
                    log(format_args!("clipboard: arboard: {e}; trying again"));
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100 << tries));
                }
            }
        }
    }

    /// Calls `changed` on every change of the CLIPBOARD selection's owner, from a thread
    /// of its own, until `changed` returns false or the X connection ends.
    pub fn watch(&self, changed: impl Fn() -> bool + Send + 'static) -> Result<(), String> {
        self.watch_until_closed(changed, || ())
    }

    /// [`watch`](Self::watch), then `ended` when the X connection ends: the session is
    /// over (`vireo-agent session` exits with it).
    pub fn watch_until_closed(
        &self,
        changed: impl Fn() -> bool + Send + 'static,
        ended: impl FnOnce() + Send + 'static,
    ) -> Result<(), String> {
        let (conn, screen) =
            RustConnection::connect(None).map_err(|e| format!("cannot reach the X server: {e}"))?;
        select_owner_events(&conn, screen).map_err(|e| format!("XFixes: {e}"))?;
        std::thread::Builder::new()
            .name("vireo-xfixes".into())
            .spawn(move || loop {
                match conn.wait_for_event() {
                    Ok(Event::XfixesSelectionNotify(_)) => {
                        if !changed() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log(format_args!("clipboard: X connection lost: {e}"));
                        ended();
                        return;
                    }
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the XFixes thread: {e}"))
    }
}

/// Asks for XFixes selection events about CLIPBOARD on a 1x1 window of our own.
fn select_owner_events(
    conn: &RustConnection,
    screen: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = conn.setup().roots.get(screen).ok_or("no such screen")?.root;
    let window = conn.generate_id()?;
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
        &CreateWindowAux::new(),
    )?;
    conn.xfixes_query_version(5, 0)?.reply()?;
    let clipboard = conn.intern_atom(false, b"CLIPBOARD")?.reply()?.atom;
    conn.xfixes_select_selection_input(
        window,
        clipboard,
        SelectionEventMask::SET_SELECTION_OWNER
            | SelectionEventMask::SELECTION_WINDOW_DESTROY
            | SelectionEventMask::SELECTION_CLIENT_CLOSE,
    )?;
    conn.flush()?;
    Ok(())
}

impl SessionClipboard for X11Clipboard {
    fn read(&mut self, limit: usize) -> Result<Entries, String> {
        self.reader.read(limit)
    }

    fn write(&mut self, content: &ClipboardContent, limit: usize) -> Result<Entries, String> {
        // arboard owns one format at a time: the owner's first is its preferred.
        let Some((format, data)) = content.entries.first() else {
            self.clear()?;
            return Ok(Vec::new());
        };
        match format {
            ClipboardFormat::Text => {
                let text =
                    std::str::from_utf8(data).map_err(|e| format!("the text is not UTF-8: {e}"))?;
                self.clipboard
                    .set_text(text)
                    .map_err(|e| format!("arboard: {e}"))?;
            }
            ClipboardFormat::Png => {
                let image = decode_png(data)?;
                self.clipboard
                    .set_image(image)
                    .map_err(|e| format!("arboard: {e}"))?;
            }
        }
        // Read back through the X server, exactly as XFixes' coming report of this very
        // write will be read: equal content is then known to be ours.
        self.read(limit)
    }

    fn clear(&mut self) -> Result<(), String> {
        self.clipboard.clear().map_err(|e| format!("arboard: {e}"))
    }
}

/// PNG bytes to the RGBA pixels arboard takes, with the decoder's allocation bounded.
pub fn decode_png(png: &[u8]) -> Result<ImageData<'static>, String> {
    let mut reader = ImageReader::with_format(Cursor::new(png), ImageFormat::Png);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODED_IMAGE);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format!("the image is not a readable PNG: {e}"))?
        .into_rgba8();
    let (width, height) = image.dimensions();
    Ok(ImageData {
        width: width as usize,
        height: height as usize,
        bytes: image.into_raw().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbaImage;

    /// arboard's RGBA pixels to PNG bytes.
    fn encode_png(image: &ImageData<'_>) -> Result<Vec<u8>, String> {
        let width = u32::try_from(image.width).map_err(|_| "image too wide")?;
        let height = u32::try_from(image.height).map_err(|_| "image too tall")?;
        let rgba = RgbaImage::from_raw(width, height, image.bytes.to_vec())
            .ok_or("image size does not match its pixels")?;
        let mut png = Vec::new();
        rgba.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|e| format!("cannot encode PNG: {e}"))?;
        Ok(png)
    }

    #[test]
    fn png_round_trips_through_rgba() {
        let image = ImageData {
            width: 3,
            height: 2,
            bytes: (0..24u8).collect::<Vec<_>>().into(),
        };
        let png = encode_png(&image).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let back = decode_png(&png).unwrap();
        assert_eq!((back.width, back.height), (3, 2));
        assert_eq!(back.bytes, image.bytes);
        // Deterministic: the read-back of our own write compares equal.
        assert_eq!(encode_png(&back).unwrap(), png);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_png(b"\x89PNG\r\n\x1a\nnot really").is_err());
        assert!(decode_png(&[]).is_err());
    }
}
