//! The host's X11 CLIPBOARD as the links see it: each link reads and writes it through
//! its own `X11Clipboard` (arboard; the guest agent's session clipboard, which does the
//! same job in the guest), and one XFixes watcher for the whole app tells every link
//! when the owner changes. One watcher, not one per VM: its thread blocks on the X
//! connection for the app's lifetime, so per-VM watchers would pile up.

use std::sync::{Mutex, MutexGuard, OnceLock};

use vireo_guest_agent::agent::clipboard::x11::X11Clipboard;

/// Called on every owner change; a subscriber returning false is dropped.
type Subscriber = Box<dyn Fn() -> bool + Send>;

struct Watcher {
    subscribers: Mutex<Vec<Subscriber>>,
}

static WATCHER: OnceLock<Result<Watcher, String>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the host clipboard (the X display in `DISPLAY`) and subscribes `changed` to its
/// owner changes.
pub fn open(changed: impl Fn() -> bool + Send + 'static) -> Result<X11Clipboard, String> {
    let clipboard = X11Clipboard::open()?;
    let watcher = WATCHER.get_or_init(|| {
        clipboard.watch(notify_all)?;
        Ok(Watcher {
            subscribers: Mutex::default(),
        })
    });
    match watcher {
        Ok(w) => lock(&w.subscribers).push(Box::new(changed)),
        Err(why) => return Err(why.clone()),
    }
    Ok(clipboard)
}

fn notify_all() -> bool {
    if let Some(Ok(w)) = WATCHER.get() {
        lock(&w.subscribers).retain(|changed| changed());
    }
    true
}
