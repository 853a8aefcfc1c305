//! Events pushed to subscribed control clients: a device (the GPU's display backend)
//! publishes `Event`s from its worker thread, the control thread takes them out and
//! writes them to each subscriber's connection.
//!
//! Each subscriber has its own bounded queue. Publishing never blocks and never waits
//! for a client: a subscriber whose queue is full is marked lost and the control thread
//! disconnects it, so a client that stops reading costs the device worker nothing.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::protocol::{Event, ScreenMode};

/// Events one subscriber may have waiting before it is dropped: a second of damage at a
/// few hundred flushes a second, which a client that reads at all never lets pile up.
pub const MAX_QUEUED: usize = 1024;

/// An event with the fd that goes with it (a `mode` event's new framebuffer).
#[derive(Debug, Clone)]
pub struct Pushed {
    pub event: Event,
    pub fd: Option<Arc<OwnedFd>>,
}

/// The subscriber fell behind: its connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client did not read {MAX_QUEUED} display events in time")]
pub struct Lost;

struct Subscriber {
    id: u64,
    queue: VecDeque<Pushed>,
    lost: bool,
}

#[derive(Default)]
struct HubState {
    subscribers: Vec<Subscriber>,
    next_id: u64,
    /// What `display-attach` answers: the current mode and its framebuffer.
    screen: Option<(ScreenMode, Option<Arc<OwnedFd>>)>,
    /// The last cursor event with its image, so a late subscriber sees the cursor too.
    cursor: Option<Event>,
}

/// Where events wait for the control thread.
pub struct EventHub {
    state: Mutex<HubState>,
    /// Written on each publish that has subscribers: the control thread waits on it.
    wake: EventFd,
}

impl EventHub {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::default(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd readable when events wait.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Queues `event` for every subscriber; a mode (and the cursor's image) also
    /// becomes what new subscribers are told. Never blocks.
    pub fn publish(&self, event: Event, fd: Option<Arc<OwnedFd>>) {
        let mut state = self.lock();
        match &event {
            Event::Mode(mode) => state.screen = Some((mode.clone(), fd.clone())),
            Event::Cursor { image: Some(_), .. } => state.cursor = Some(event.clone()),
            Event::Cursor {
                x,
                y,
                visible,
                image: None,
                ..
            } => {
                if let Some(Event::Cursor {
                    x: last_x,
                    y: last_y,
                    visible: last_visible,
                    ..
                }) = &mut state.cursor
                {
                    (*last_x, *last_y, *last_visible) = (*x, *y, *visible);
                }
            }
            Event::Damage { .. } => {}
        }
        if state.subscribers.is_empty() {
            return;
        }
        for sub in state.subscribers.iter_mut().filter(|s| !s.lost) {
            if sub.queue.len() >= MAX_QUEUED {
                sub.lost = true;
                sub.queue.clear();
            } else {
                sub.queue.push_back(Pushed {
                    event: event.clone(),
                    fd: fd.clone(),
                });
            }
        }
        drop(state);
        let _ = self.wake.write(1);
    }

    /// Subscribes a client: returns its id, the screen as it is now (with its memfd),
    /// and the cursor's last image, all as of the same instant, so the events that
    /// follow apply to exactly that state.
    pub fn subscribe(&self) -> (u64, ScreenMode, Option<Arc<OwnedFd>>, Option<Event>) {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.push(Subscriber {
            id,
            queue: VecDeque::new(),
            lost: false,
        });
        let (mode, fd) = state.screen.clone().unwrap_or_else(|| {
            (
                ScreenMode {
                    scanout: 0,
                    enabled: false,
                    width: 0,
                    height: 0,
                    stride: 0,
                    format: String::new(),
                },
                None,
            )
        });
        (id, mode, fd, state.cursor.clone())
    }

    pub fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.retain(|s| s.id != id);
    }

    /// Takes what waits for subscriber `id`.
    pub fn take(&self, id: u64) -> Result<Vec<Pushed>, Lost> {
        let mut state = self.lock();
        match state.subscribers.iter_mut().find(|s| s.id == id) {
            Some(sub) if sub.lost => Err(Lost),
            Some(sub) => Ok(sub.queue.drain(..).collect()),
            None => Err(Lost),
        }
    }

    /// Consumes the wake-up (the control thread then takes every subscriber's events).
    pub fn acknowledge(&self) {
        let _ = self.wake.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage(x: u32) -> Event {
        Event::Damage {
            scanout: 0,
            x,
            y: 0,
            width: 1,
            height: 1,
        }
    }

    #[test]
    fn subscribers_get_what_was_published_after_they_subscribed() {
        let hub = EventHub::new().unwrap();
        hub.publish(damage(1), None);
        let (id, mode, fd, cursor) = hub.subscribe();
        assert!(!mode.enabled && fd.is_none() && cursor.is_none());
        hub.publish(damage(2), None);
        let got = hub.take(id).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, damage(2));
        assert!(hub.take(id).unwrap().is_empty());
        hub.unsubscribe(id);
        assert_eq!(hub.take(id).unwrap_err(), Lost);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_lost_not_waited_for() {
        let hub = EventHub::new().unwrap();
        let (slow, ..) = hub.subscribe();
        let (fast, ..) = hub.subscribe();
        for i in 0..MAX_QUEUED as u32 {
            hub.publish(damage(i), None);
        }
        assert_eq!(hub.take(fast).unwrap().len(), MAX_QUEUED);
        hub.publish(damage(0), None);
        assert_eq!(hub.take(slow).unwrap_err(), Lost);
        assert_eq!(hub.take(fast).unwrap().len(), 1);
    }

    #[test]
    fn a_new_subscriber_sees_the_current_mode_and_cursor() {
        let hub = EventHub::new().unwrap();
        let mode = ScreenMode {
            scanout: 0,
            enabled: true,
            width: 4,
            height: 2,
            stride: 16,
            format: "B8G8R8A8".into(),
        };
        hub.publish(Event::Mode(mode.clone()), None);
        let cursor = |x, image: Option<String>| Event::Cursor {
            scanout: 0,
            x,
            y: 0,
            hot_x: 1,
            hot_y: 1,
            visible: true,
            image,
        };
        hub.publish(cursor(3, Some("AAAA".into())), None);
        hub.publish(cursor(7, None), None);
        let (_, got, _, last_cursor) = hub.subscribe();
        assert_eq!(got, mode);
        assert_eq!(last_cursor, Some(cursor(7, Some("AAAA".into()))));
    }
}
