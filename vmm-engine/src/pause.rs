//! Pausing the guest: every vCPU parked outside `KVM_RUN`, and the KVM clock held still
//! while they are, so the guest does not see the pause as time it lived through (its
//! wall clock is then put right by the agent's time sync, as after a restore).
//!
//! The owner asks ([`Pauser::pause`]); each vCPU thread parks itself at the top of its
//! run loop ([`Pauser::park_if_paused`]) once a kick has taken it out of `KVM_RUN`.
//! `pause` returns when every live vCPU is parked, so a paused guest runs no instruction.
//! Then the devices are quiesced (`devices::virtio::quiesce`): their workers park too, so
//! nothing a backend receives reaches guest memory until `resume`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;

use crate::devices::virtio::quiesce::DeviceGate;

/// How long a pause waits for the vCPUs to leave the guest before giving up (they
/// answer a kick within microseconds; this bounds a wedged one).
const PARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Kicks repeat this often: one landing just before a thread enters `KVM_RUN` is lost.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the VM is stopping")]
    Stopping,
    #[error("the vCPUs did not stop within {0:?}; the VM keeps running")]
    Timeout(Duration),
    #[error("the devices did not stop ({0}); the VM keeps running")]
    Devices(String),
}

#[derive(Default)]
struct State {
    paused: bool,
    /// No more kicks or pauses: the vCPU threads are being joined.
    closed: bool,
    parked: usize,
    /// vCPU threads whose run loop has ended (they will never park).
    ended: usize,
    threads: Vec<libc::pthread_t>,
    /// The KVM clock when the vCPUs stopped, set back on resume.
    clock: Option<kvm_clock_data>,
}

#[derive(Default)]
pub struct Pauser {
    /// Read by every vCPU on every exit: the lock is only taken when it is set.
    requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    /// The devices' workers, held while paused (none: only the vCPUs stop).
    devices: Option<Arc<DeviceGate>>,
}

impl Pauser {
    /// A pauser that also quiesces the devices behind `devices`.
    pub fn with_devices(devices: Option<Arc<DeviceGate>>) -> Self {
        Self {
            devices,
            ..Self::default()
        }
    }

    /// Holds the devices (workers started later park at once); a failure releases them.
    fn hold_devices(&self) -> Result<(), PauseError> {
        match &self.devices {
            Some(gate) => gate
                .hold(PARK_TIMEOUT)
                .map_err(|e| PauseError::Devices(e.to_string())),
            None => Ok(()),
        }
    }

    fn release_devices(&self) {
        if let Some(gate) = &self.devices {
            gate.release();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The vCPU threads to kick, once they run (after `reopen` when it is used).
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        self.lock().threads = threads;
    }

    /// The KVM clock as it was when the vCPUs stopped, while paused: what a snapshot
    /// keeps (the clock itself ran on meanwhile).
    pub fn held_clock(&self) -> Option<kvm_clock_data> {
        self.lock().clock
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Called by a vCPU thread between two `KVM_RUN`s: blocks while the VM is paused.
    pub fn park_if_paused(&self) {
        if !self.requested.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !state.closed {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }

    /// Called by a vCPU thread whose run loop has ended.
    pub fn vcpu_ended(&self) {
        self.lock().ended += 1;
        self.changed.notify_all();
    }

    /// Stops every vCPU and the KVM clock; returns once no vCPU is in the guest.
    pub fn pause(&self, vm: &VmFd) -> Result<(), PauseError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PauseError::Stopping);
        }
        if state.paused {
            return Err(PauseError::AlreadyPaused);
        }
        state.paused = true;
        self.requested.store(true, Ordering::Release);
        let deadline = Instant::now() + PARK_TIMEOUT;
        while state.parked + state.ended < state.threads.len() {
            if state.closed {
                return Err(PauseError::Stopping);
            }
            if Instant::now() >= deadline {
                drop(state);
                self.unpause();
                return Err(PauseError::Timeout(PARK_TIMEOUT));
            }
            kick(&state.threads);
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.clock = match vm.get_clock() {
            Ok(clock) => Some(clock),
            Err(e) => {
                tracing::warn!("pause: cannot read the KVM clock ({e}); it keeps running");
                None
            }
        };
        drop(state);
        if let Err(e) = self.hold_devices() {
            // The clock was only read, never set: it has run on all along.
            self.lock().clock = None;
            self.unpause();
            return Err(e);
        }
        Ok(())
    }

    /// Sets the KVM clock back to where it stopped and lets the vCPUs run again.
    pub fn resume(&self, vm: &VmFd) -> Result<(), PauseError> {
        let mut state = self.lock();
        if !state.paused {
            return Err(PauseError::NotPaused);
        }
        if let Some(mut clock) = state.clock.take() {
            // Only the clock's value: KVM_CLOCK_REALTIME and friends are get-only here.
            clock.flags = 0;
            if let Err(e) = vm.set_clock(&clock) {
                tracing::warn!("resume: cannot set the KVM clock back ({e})");
            }
        }
        drop(state);
        // Devices first: a kick the guest makes as soon as it runs is served at once.
        self.release_devices();
        self.unpause();
        Ok(())
    }

    fn unpause(&self) {
        let mut state = self.lock();
        state.paused = false;
        self.requested.store(false, Ordering::Release);
        drop(state);
        self.changed.notify_all();
    }

    /// After `close`: new vCPU threads run the same VM (a save that failed carries on
    /// with the vCPUs it stopped).
    /// With `paused`, the new threads park before they first enter the guest, the
    /// devices are held, and the KVM clock is held from now until `resume`; call it
    /// before they start.
    pub fn reopen(&self, vm: &VmFd, paused: bool) {
        let mut state = self.lock();
        *state = State {
            paused,
            clock: if paused { vm.get_clock().ok() } else { None },
            ..State::default()
        };
        self.requested.store(paused, Ordering::Release);
        drop(state);
        if !paused {
            self.release_devices();
        } else if let Err(e) = self.hold_devices() {
            tracing::warn!("the VM starts paused but its devices run: {e}");
        }
    }

    /// Before the vCPU threads are joined: no kick may reach a joined thread, and a
    /// parked vCPU must wake to see that it is to stop. The devices run again (whoever
    /// stops the VM stops them; a save stops each at a request boundary).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.paused = false;
        self.requested.store(false, Ordering::Release);
        drop(state);
        self.changed.notify_all();
        self.release_devices();
    }
}

/// Sends the kick signal to each vCPU thread. Called with the state locked and not
/// closed, so every thread is still joinable.
fn kick(threads: &[libc::pthread_t]) {
    for &thread in threads {
        // SAFETY: `thread` names a vCPU thread that has not been joined (joining waits
        // for `close`, which cannot run while the caller holds the state lock); a thread
        // that already returned makes this a no-op (ESRCH), never undefined behaviour.
        unsafe { libc::pthread_kill(thread, crate::vcpu::kick_signal()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_without_pause_and_double_pause_are_refused() {
        let kvm = kvm_ioctls::Kvm::new();
        let Ok(kvm) = kvm else {
            eprintln!("*** SKIPPED pause tests: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let pauser = Pauser::default();
        assert_eq!(pauser.resume(&vm), Err(PauseError::NotPaused));
        // No vCPU threads: a pause parks nobody and succeeds at once.
        pauser.pause(&vm).unwrap();
        assert!(pauser.is_paused());
        assert_eq!(pauser.pause(&vm), Err(PauseError::AlreadyPaused));
        pauser.resume(&vm).unwrap();
        assert!(!pauser.is_paused());
        pauser.close();
        assert_eq!(pauser.pause(&vm), Err(PauseError::Stopping));
    }

    #[test]
    fn a_parked_thread_waits_until_resume_or_close() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let pauser = Arc::new(Pauser::default());
        let worker = {
            let pauser = Arc::clone(&pauser);
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while rounds < 3 {
                    pauser.park_if_paused();
                    std::thread::sleep(Duration::from_millis(5));
                    rounds += 1;
                }
                pauser.vcpu_ended();
            })
        };
        use std::os::unix::thread::JoinHandleExt;
        pauser.set_threads(vec![worker.as_pthread_t()]);
        crate::vcpu::install_kick_handler().unwrap();
        pauser.pause(&vm).unwrap();
        let state = pauser.lock();
        assert_eq!(state.parked + state.ended, 1);
        drop(state);
        pauser.resume(&vm).unwrap();
        pauser.close();
        worker.join().unwrap();
    }
}
