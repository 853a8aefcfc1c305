//! What a saved input device keeps besides its queues: the question the driver last
//! put to the configuration space, the keyboard LEDs it set, and the events the host
//! queued that no driver buffer took yet (the driver's buffers themselves stay in the
//! event queue: the worker pops one only to put an event in it).

use serde::{Deserialize, Serialize};

use super::event::{InputEvent, InputProfile};
use super::MAX_BACKLOG;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputState {
    pub select: u8,
    pub subsel: u8,
    /// Bit n = LED n, as the guest last set them.
    pub leds: u32,
    /// (type, code, value) of each waiting event, oldest first.
    pub events: Vec<(u16, u16, u32)>,
}

impl InputState {
    /// A saved state as untrusted input: the events must be ones `profile`'s device
    /// could have queued (whole groups, within the backlog).
    pub fn parse(value: &serde_json::Value, profile: &InputProfile) -> Result<Self, String> {
        let state = Self::deserialize(value).map_err(|e| e.to_string())?;
        if state.events.len() > MAX_BACKLOG {
            return Err(format!(
                "{} waiting events, more than the {MAX_BACKLOG} the device keeps",
                state.events.len()
            ));
        }
        if let Some((kind, code, _)) = state
            .events
            .iter()
            .find(|(kind, code, _)| !profile.supports(*kind, *code))
        {
            return Err(format!(
                "the {} cannot send event type {kind} code {code}",
                profile.name
            ));
        }
        let syn = InputEvent::syn();
        if let Some(&(kind, code, value)) = state.events.last() {
            if InputEvent::new(kind, code, value) != syn {
                return Err("the waiting events end in the middle of a group".into());
            }
        }
        Ok(state)
    }

    pub fn events(&self) -> impl Iterator<Item = InputEvent> + '_ {
        self.events
            .iter()
            .map(|&(kind, code, value)| InputEvent::new(kind, code, value))
    }
}
