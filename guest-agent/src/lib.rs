//! Vireo's guest agent ("guest additions").
//!
//! This crate will hold the host<->guest wire protocol, `no_std` + `alloc` at its core so
//! that the host, the Linux agent and the probe guest share it. For now it holds
//! [`guest_info`], the guest-side gathering of OS, hostname, addresses, uptime and memory,
//! which needs an operating system and so lives behind the `std` feature (on by default).

#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod guest_info;
