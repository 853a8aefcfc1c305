//! Vireo, the desktop app: the VM library (`library`, `vm_config`), running VMs
//! (`supervisor`), the `vireo` command line (`cli`) and the window (`ui`). See
//! ARCHITECTURE.md.

pub mod cli;
pub mod guest_link;
pub mod host;
pub mod images;
pub mod library;
pub mod paths;
pub mod resources;
pub mod settings;
pub mod supervisor;
pub mod ui;
pub mod usage;
pub mod vm_config;
