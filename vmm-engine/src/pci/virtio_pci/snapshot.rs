//! The transport's part of a snapshot: PCI config space, MSI-X, the common
//! configuration the driver programmed, and the device's own state (`VirtioDevice::save`).
//! A restore replays it into a transport built the same way at start-up.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::{status, InterruptLine, VirtioPciDevice};
use crate::devices::lock;
use crate::devices::virtio::{ActiveQueue, DeviceState, QueuePosition, SaveError};
use crate::pci::msix::MsixState;

/// A queue as the driver programmed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub vector: u16,
}

/// Everything a virtio-pci function needs to carry on after a restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtioPciState {
    pub device_type: u32,
    pub config_space: Vec<u8>,
    pub msix: MsixState,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub device_status: u8,
    pub config_generation: u8,
    pub queue_select: u16,
    pub config_vector: u16,
    pub isr: u8,
    pub queues: Vec<QueueConfig>,
    /// The device's state, if the driver had it running (DRIVER_OK).
    pub device: Option<DeviceState>,
}

impl VirtioPciDevice {
    /// Takes the function's state; a running device is stopped (its worker ends) and
    /// stays stopped: the VM is being saved.
    pub fn save(&mut self) -> Result<VirtioPciState, SaveError> {
        let running = self.device_status & status::DRIVER_OK != 0
            && self.device_status & status::DEVICE_NEEDS_RESET == 0;
        let device = if running {
            Some(self.device.save()?)
        } else {
            None
        };
        let vectors = &self.interrupt.queue_vectors;
        Ok(VirtioPciState {
            device_type: self.device.device_type(),
            config_space: self.config.bytes().to_vec(),
            msix: lock(&self.interrupt.msix).save(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            device_status: self.device_status,
            config_generation: self.config_generation,
            queue_select: self.queue_select,
            config_vector: self.interrupt.config_vector.load(Ordering::Acquire),
            isr: self.interrupt.isr.load(Ordering::Acquire),
            queues: self
                .queues
                .iter()
                .zip(vectors)
                .map(|(q, v)| QueueConfig {
                    size: q.size(),
                    ready: q.ready(),
                    desc: q.desc_table(),
                    avail: q.avail_ring(),
                    used: q.used_ring(),
                    vector: v.load(Ordering::Acquire),
                })
                .collect(),
            device,
        })
    }

    /// Puts `state` back into this freshly built function (same device, same place on
    /// the bus) and restarts its device where it stopped. The caller then lets the bus
    /// recompute where the BARs decode.
    pub fn restore(&mut self, state: &VirtioPciState) -> Result<(), String> {
        if state.device_type != self.device.device_type() {
            return Err(format!(
                "saved virtio device type {} where this VM has type {}",
                state.device_type,
                self.device.device_type()
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "{} saved queues where the device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        self.config.restore(&state.config_space)?;
        {
            let mut msix = lock(&self.interrupt.msix);
            msix.restore(&state.msix)?;
            msix.set_control(self.config.u16_at(self.msix_cap + 2));
        }
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.driver_features = state.driver_features;
        self.device_status = state.device_status;
        self.config_generation = state.config_generation;
        self.queue_select = state.queue_select;
        self.interrupt
            .config_vector
            .store(self.valid_vector(state.config_vector), Ordering::Release);
        self.interrupt.isr.store(state.isr, Ordering::Release);
        for (index, saved) in state.queues.iter().enumerate() {
            self.restore_queue(index, saved)?;
        }
        match &state.device {
            Some(device) => self.restart_device(device),
            None => Ok(()),
        }
    }

    fn restore_queue(&mut self, index: usize, saved: &QueueConfig) -> Result<(), String> {
        let vector = self.valid_vector(saved.vector);
        self.interrupt.queue_vectors[index].store(vector, Ordering::Release);
        let mem = self.mem.clone();
        let q = &mut self.queues[index];
        q.try_set_size(saved.size)
            .map_err(|e| format!("queue {index}: {e}"))?;
        let split = |v: u64| (Some(v as u32), Some((v >> 32) as u32));
        let (lo, hi) = split(saved.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(saved.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(saved.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(saved.ready);
        if saved.ready && !q.is_valid(&mem) {
            return Err(format!("queue {index}: its rings are not in guest memory"));
        }
        Ok(())
    }

    /// Hands the device its queues, positioned where the save left them.
    fn restart_device(&mut self, saved: &DeviceState) -> Result<(), String> {
        let event_idx = self.driver_features & crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut active = Vec::with_capacity(saved.queues.len());
        for &QueuePosition {
            index,
            next_avail,
            next_used,
        } in &saved.queues
        {
            let i = index as usize;
            let programmed = self
                .queues
                .get_mut(i)
                .filter(|q| q.ready())
                .ok_or_else(|| format!("the saved device used queue {i}, which is not enabled"))?;
            programmed.set_event_idx(event_idx);
            let mut queue = Queue::try_from(programmed.state()).map_err(|e| e.to_string())?;
            queue.set_next_avail(next_avail);
            queue.set_next_used(next_used);
            let notify = self.notifiers[i]
                .try_clone()
                .map_err(|e| format!("cannot clone a notifier: {e}"))?;
            active.push(ActiveQueue {
                index,
                queue,
                notify,
            });
        }
        let interrupt = Arc::new(InterruptLine(self.interrupt.clone()));
        self.device
            .restore(
                self.mem.clone(),
                interrupt,
                active,
                self.driver_features,
                &saved.device,
            )
            .map_err(|e| e.to_string())
        // Every device's restore looks at each queue once (`worker::kick_each`): a
        // kick made just before the save was lost with the old process.
    }
}
