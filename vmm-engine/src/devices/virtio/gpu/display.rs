//! The engine's `DisplayBackend`: framebuffers in memfds, and the device's display
//! events turned into the control protocol's `Event`s on the hub subscribers read.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use base64::Engine as _;
use virtio_gpu::{
    CursorEvent, DisplayBackend, DisplayEvent, Framebuffer, FramebufferId, PixelFormat, ScanoutMode,
};

use super::memfd::MemfdFramebuffer;
use crate::control::events::EventHub;
use crate::control::protocol::{Event, ScreenMode};

/// What clients are told about a scanout's mode.
pub fn screen_mode(scanout: u32, mode: Option<&ScanoutMode>) -> ScreenMode {
    match mode {
        Some(m) => ScreenMode {
            scanout,
            enabled: true,
            width: m.width,
            height: m.height,
            stride: m.width * 4,
            format: format_name(m.format).into(),
        },
        None => ScreenMode {
            scanout,
            enabled: false,
            width: 0,
            height: 0,
            stride: 0,
            format: String::new(),
        },
    }
}

/// The format's name on the control socket: its bytes in memory, first to last.
pub fn format_name(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::B8G8R8A8 => "B8G8R8A8",
        PixelFormat::B8G8R8X8 => "B8G8R8X8",
        PixelFormat::A8R8G8B8 => "A8R8G8B8",
        PixelFormat::X8R8G8B8 => "X8R8G8B8",
        PixelFormat::R8G8B8A8 => "R8G8B8A8",
        PixelFormat::X8B8G8R8 => "X8B8G8R8",
        PixelFormat::A8B8G8R8 => "A8B8G8R8",
        PixelFormat::R8G8B8X8 => "R8G8B8X8",
    }
}

/// The cursor as clients last heard of it (a move repeats its hot spot).
#[derive(Default)]
struct Cursor {
    hot: (u32, u32),
    visible: bool,
}

/// Publishes to `hub`.
pub struct HubDisplay {
    hub: Arc<EventHub>,
    /// The memfd of each framebuffer the device holds (a resource's storage or a
    /// scanout's copy), by id: weak, so that the device dropping a framebuffer closes
    /// its memfd (clients keep their own).
    fds: HashMap<FramebufferId, Weak<OwnedFd>>,
    cursor: Cursor,
}

impl HubDisplay {
    pub fn new(hub: Arc<EventHub>) -> Self {
        HubDisplay {
            hub,
            fds: HashMap::new(),
            cursor: Cursor::default(),
        }
    }

    fn cursor_event(&mut self, event: CursorEvent) -> Event {
        match event {
            CursorEvent::Update {
                scanout,
                x,
                y,
                image,
            } => {
                self.cursor = match &image {
                    Some(i) => Cursor {
                        hot: (i.hot_x, i.hot_y),
                        visible: true,
                    },
                    None => Cursor::default(),
                };
                Event::Cursor {
                    scanout,
                    x,
                    y,
                    hot_x: self.cursor.hot.0,
                    hot_y: self.cursor.hot.1,
                    visible: self.cursor.visible,
                    image: image.map(|i| base64::engine::general_purpose::STANDARD.encode(&i.rgba)),
                }
            }
            CursorEvent::Move { scanout, x, y } => Event::Cursor {
                scanout,
                x,
                y,
                hot_x: self.cursor.hot.0,
                hot_y: self.cursor.hot.1,
                visible: self.cursor.visible,
                image: None,
            },
        }
    }
}

impl DisplayBackend for HubDisplay {
    fn create_framebuffer(
        &mut self,
        id: FramebufferId,
        mode: ScanoutMode,
    ) -> io::Result<Box<dyn Framebuffer>> {
        let framebuffer = MemfdFramebuffer::new(mode)?;
        // The device keeps a few framebuffers at most: forgetting the dropped ones here
        // keeps the map as small.
        self.fds.retain(|_, fd| fd.strong_count() > 0);
        self.fds.insert(id, Arc::downgrade(&framebuffer.fd()));
        Ok(Box::new(framebuffer))
    }

    fn handle_event(&mut self, event: DisplayEvent) {
        match event {
            DisplayEvent::ScanoutEnabled {
                scanout,
                mode,
                framebuffer,
            } => {
                let fd = self.fds.get(&framebuffer).and_then(Weak::upgrade);
                self.hub
                    .publish(Event::Mode(screen_mode(scanout, Some(&mode))), fd);
            }
            DisplayEvent::ScanoutDisabled { scanout } => {
                self.hub
                    .publish(Event::Mode(screen_mode(scanout, None)), None);
            }
            DisplayEvent::Damage { scanout, rect } => self.hub.publish(
                Event::Damage {
                    scanout,
                    x: rect.x,
                    y: rect.y,
                    width: rect.width,
                    height: rect.height,
                },
                None,
            ),
            DisplayEvent::Cursor(cursor) => {
                let event = self.cursor_event(cursor);
                self.hub.publish(event, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_gpu::{CursorImage, Rect};

    #[test]
    fn events_reach_a_subscriber_with_the_framebuffer_fd() {
        let hub = Arc::new(EventHub::new().unwrap());
        let (id, ..) = hub.subscribe();
        let mut display = HubDisplay::new(hub.clone());
        let mode = ScanoutMode {
            width: 2,
            height: 2,
            format: PixelFormat::B8G8R8X8,
        };
        let _fb = display.create_framebuffer(FramebufferId(1), mode).unwrap();
        display.handle_event(DisplayEvent::ScanoutEnabled {
            scanout: 0,
            mode,
            framebuffer: FramebufferId(1),
        });
        display.handle_event(DisplayEvent::Damage {
            scanout: 0,
            rect: Rect::new(0, 1, 2, 1),
        });
        display.handle_event(DisplayEvent::Cursor(CursorEvent::Update {
            scanout: 0,
            x: 5,
            y: 6,
            image: Some(CursorImage {
                width: 1,
                height: 1,
                hot_x: 1,
                hot_y: 2,
                rgba: vec![1, 2, 3, 4],
            }),
        }));
        display.handle_event(DisplayEvent::Cursor(CursorEvent::Move {
            scanout: 0,
            x: 7,
            y: 8,
        }));
        let got = hub.take(id).unwrap();
        assert_eq!(got.len(), 4);
        assert!(got[0].fd.is_some(), "the mode event carries the memfd");
        assert_eq!(got[0].event, Event::Mode(screen_mode(0, Some(&mode))));
        assert_eq!(
            got[1].event,
            Event::Damage {
                scanout: 0,
                x: 0,
                y: 1,
                width: 2,
                height: 1
            }
        );
        assert!(matches!(&got[2].event, Event::Cursor { image: Some(i), .. } if i == "AQIDBA=="));
        assert_eq!(
            got[3].event,
            Event::Cursor {
                scanout: 0,
                x: 7,
                y: 8,
                hot_x: 1,
                hot_y: 2,
                visible: true,
                image: None
            }
        );
    }

    /// The inode behind an fd: which memfd it is.
    fn inode(fd: &OwnedFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::File::from(fd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    #[test]
    fn a_page_flip_hands_clients_the_other_memfd() {
        let hub = Arc::new(EventHub::new().unwrap());
        let (id, ..) = hub.subscribe();
        let mut display = HubDisplay::new(hub.clone());
        let mode = ScanoutMode {
            width: 2,
            height: 2,
            format: PixelFormat::B8G8R8X8,
        };
        let mut front = display.create_framebuffer(FramebufferId(1), mode).unwrap();
        let back = display.create_framebuffer(FramebufferId(2), mode).unwrap();
        front.pixels_mut()[0] = 7;
        for framebuffer in [FramebufferId(1), FramebufferId(2), FramebufferId(1)] {
            display.handle_event(DisplayEvent::ScanoutEnabled {
                scanout: 0,
                mode,
                framebuffer,
            });
        }
        let got = hub.take(id).unwrap();
        let fds: Vec<&Arc<OwnedFd>> = got.iter().map(|p| p.fd.as_ref().unwrap()).collect();
        assert_ne!(inode(fds[0]), inode(fds[1]));
        assert_eq!(inode(fds[0]), inode(fds[2]));
        let mut first = [0u8; 1];
        let file = std::fs::File::from(fds[2].try_clone().unwrap());
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut first, 0).unwrap();
        assert_eq!(first[0], 7, "the front buffer's pixels");
        // A framebuffer the device dropped is forgotten when the next one is made.
        drop(back);
        drop(got);
        let _third = display.create_framebuffer(FramebufferId(3), mode).unwrap();
        assert_eq!(display.fds.len(), 2);
    }
}
