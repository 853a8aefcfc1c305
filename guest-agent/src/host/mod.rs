//! The host side: a client library for the agent protocol, over a Unix socket or the
//! engine's hybrid vsock.

pub mod client;
pub mod clipboard;
pub mod display;
pub mod share;
pub mod transport;

pub use client::{AgentClient, ClientConfig, ClientError, ClientEvent, HOST_CAPABILITIES};
pub use clipboard::ClipboardEvent;
pub use share::ShareConfig;
pub use transport::{connect, ConnectError, Endpoint};
