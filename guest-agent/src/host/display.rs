//! The host side of seamless mouse and display: the guest's pointer and screen status,
//! and resize requests. The agent also sends its status unprompted after the hello
//! ([`super::ClientEvent::Message`] with a `DisplayStatus`).

use super::client::{AgentClient, ClientError};
use crate::protocol::{Capabilities, DisplayStatus, Message, ScreenSize};

impl AgentClient {
    /// Whether the guest uses the absolute tablet, and its screen size.
    pub fn display_status(&self) -> Result<DisplayStatus, ClientError> {
        self.require_capability(Capabilities::DISPLAY, "display status")?;
        expect_status(self.request(&Message::DisplayStatusRequest)?)
    }

    /// Asks the guest's session to change its screen size; returns the status after.
    pub fn display_resize(&self, width: u32, height: u32) -> Result<DisplayStatus, ClientError> {
        self.require_capability(Capabilities::DISPLAY, "display resize")?;
        let size = ScreenSize { width, height };
        expect_status(self.request(&Message::DisplayResize(size))?)
    }
}

fn expect_status(message: Message) -> Result<DisplayStatus, ClientError> {
    match message {
        Message::DisplayStatus(status) => Ok(status),
        other => Err(ClientError::Unexpected(other.kind())),
    }
}
