//! What the device models' unit tests share: an `Interrupt` that counts.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Interrupt;

/// Counts used-buffer interrupts per queue (the first eight) and configuration-change
/// interrupts, so a test can assert that a device interrupted, where, and how often.
#[derive(Default)]
pub struct CountingInterrupt {
    queues: [AtomicUsize; 8],
    config: AtomicUsize,
}

impl CountingInterrupt {
    /// Used-buffer interrupts on every queue.
    pub fn used(&self) -> usize {
        self.queues.iter().map(|q| q.load(Ordering::SeqCst)).sum()
    }

    /// Used-buffer interrupts on queue `queue`.
    pub fn used_on(&self, queue: usize) -> usize {
        self.queues[queue].load(Ordering::SeqCst)
    }

    /// Configuration-change interrupts.
    pub fn config(&self) -> usize {
        self.config.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn signal_used_queue(&self, queue: u16) -> std::io::Result<()> {
        if let Some(counter) = self.queues.get(usize::from(queue)) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
