//! What the host configures: the scanouts (displays) with their initial size, and the
//! cap on host memory the guest can make the device allocate.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_gpu::VIRTIO_GPU_MAX_SCANOUTS;

use crate::edid::MAX_DTD_ACTIVE;

/// The largest display size: what an EDID detailed timing descriptor can describe.
pub const MAX_DISPLAY_WIDTH: u32 = MAX_DTD_ACTIVE;
pub const MAX_DISPLAY_HEIGHT: u32 = MAX_DTD_ACTIVE;
/// Default cap on the pixels and bookkeeping of all resources together.
pub const DEFAULT_MAX_HOST_MEMORY: u64 = 256 << 20;

/// One display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanoutConfig {
    pub width: u32,
    pub height: u32,
}

/// The device's configuration (a VM's `[gpu]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// The displays, 1 to 16; each starts enabled at its size.
    #[serde(default = "default_scanouts")]
    pub scanouts: Vec<ScanoutConfig>,
    /// Bytes of host memory all resources together may take (ERR_OUT_OF_MEMORY past
    /// it).
    #[serde(default = "default_max_host_memory")]
    pub max_host_memory: u64,
}

fn default_scanouts() -> Vec<ScanoutConfig> {
    vec![ScanoutConfig {
        width: 1280,
        height: 800,
    }]
}

fn default_max_host_memory() -> u64 {
    DEFAULT_MAX_HOST_MEMORY
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            scanouts: default_scanouts(),
            max_host_memory: default_max_host_memory(),
        }
    }
}

/// A configuration the device cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the GPU needs 1 to {max} scanouts, not {0}", max = VIRTIO_GPU_MAX_SCANOUTS)]
    ScanoutCount(usize),
    #[error(
        "display size {width}x{height} is outside 1x1 to {MAX_DISPLAY_WIDTH}x{MAX_DISPLAY_HEIGHT}"
    )]
    DisplaySize { width: u32, height: u32 },
    #[error(
        "max_host_memory {0} is too small for one display's image and framebuffer ({1} bytes)"
    )]
    MemoryCap(u64, u64),
}

/// Checks a display size.
pub fn check_size(width: u32, height: u32) -> Result<(), ConfigError> {
    if (1..=MAX_DISPLAY_WIDTH).contains(&width) && (1..=MAX_DISPLAY_HEIGHT).contains(&height) {
        Ok(())
    } else {
        Err(ConfigError::DisplaySize { width, height })
    }
}

impl GpuConfig {
    /// Checks every value, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.scanouts.len();
        if n == 0 || n > VIRTIO_GPU_MAX_SCANOUTS as usize {
            return Err(ConfigError::ScanoutCount(n));
        }
        for s in &self.scanouts {
            check_size(s.width, s.height)?;
        }
        let largest = self
            .scanouts
            .iter()
            .map(|s| u64::from(s.width) * u64::from(s.height) * 4)
            .max()
            .unwrap_or(0);
        // The guest's image of the largest display, and the framebuffer it is shown in.
        let largest = 2 * largest;
        if self.max_host_memory < largest {
            return Err(ConfigError::MemoryCap(self.max_host_memory, largest));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: GpuConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, GpuConfig::default());
        c.validate().unwrap();
        let c: GpuConfig = serde_json::from_str(
            r#"{"scanouts":[{"width":1920,"height":1080},{"width":800,"height":600}],
                "max_host_memory":67108864}"#,
        )
        .unwrap();
        assert_eq!(c.scanouts.len(), 2);
        c.validate().unwrap();
        assert!(serde_json::from_str::<GpuConfig>(r#"{"scanout":[]}"#).is_err());
        assert!(serde_json::from_str::<GpuConfig>(
            r#"{"scanouts":[{"width":1,"height":1,"x":0}]}"#
        )
        .is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = GpuConfig {
            scanouts: vec![],
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::ScanoutCount(0)));
        c.scanouts = vec![
            ScanoutConfig {
                width: 640,
                height: 480
            };
            17
        ];
        assert_eq!(c.validate(), Err(ConfigError::ScanoutCount(17)));
        c.scanouts = vec![ScanoutConfig {
            width: 5000,
            height: 480,
        }];
        assert!(matches!(c.validate(), Err(ConfigError::DisplaySize { .. })));
        c.scanouts[0].width = 1920;
        c.max_host_memory = 1 << 20;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryCap(..))));
    }
}
