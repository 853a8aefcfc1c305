//! Vireo's guest agent ("guest additions").
//!
//! - [`protocol`]: the host<->guest wire protocol, `no_std` + `alloc` so that the host, the
//!   Linux agent and the probe guest share it.
//! - `guest_info` (feature `std`): the guest-side gathering of OS, hostname, addresses,
//!   uptime and memory.
//! - `agent` (feature `std`): the guest side: transports, request handling, time sync,
//!   power.
//! - `host` (feature `std`): the host-side client library.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod protocol;

#[cfg(feature = "std")]
pub mod guest_info;

#[cfg(feature = "std")]
pub mod util;

#[cfg(feature = "std")]
pub mod agent;

#[cfg(feature = "std")]
pub mod host;
