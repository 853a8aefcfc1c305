//! Vireo's VM engine: one process runs one VM under KVM. See ARCHITECTURE.md for the
//! life of a VM through these modules.

pub mod acpi;
pub mod boot;
pub mod config;
pub mod console;
pub mod control;
pub mod devices;
pub mod doctor;
pub mod exit;
pub mod pause;
pub mod pci;
pub mod resources;
pub mod sandbox;
pub mod snapshot;
pub mod socket_path;
pub mod vcpu;
pub mod vm;
#[cfg(feature = "window")]
pub mod window;
pub mod window_process;
pub mod x86_64;

pub use config::{RebootPolicy, VmConfig};
pub use exit::ExitReason;
pub use vm::{run, Console};
