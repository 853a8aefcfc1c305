//! The 2D pixel formats (enum virtio_gpu_formats): all 32 bits per pixel, named by the
//! order of their bytes in memory (B8G8R8A8 = bytes B, G, R, A; DRM's ARGB8888 on a
//! little-endian guest).

use virtio_bindings::virtio_gpu as b;

/// Bytes per pixel of every 2D format.
pub const BYTES_PER_PIXEL: u32 = 4;

/// A 2D resource's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    B8G8R8A8,
    B8G8R8X8,
    A8R8G8B8,
    X8R8G8B8,
    R8G8B8A8,
    X8B8G8R8,
    A8B8G8R8,
    R8G8B8X8,
}

impl PixelFormat {
    /// The format named by `VIRTIO_GPU_FORMAT_*` value `raw`, if it is a 2D one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        use PixelFormat::*;
        Some(match raw {
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM => B8G8R8A8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM => B8G8R8X8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM => A8R8G8B8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM => X8R8G8B8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM => R8G8B8A8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM => X8B8G8R8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM => A8B8G8R8,
            b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM => R8G8B8X8,
            _ => return None,
        })
    }

    /// The `VIRTIO_GPU_FORMAT_*` value.
    pub fn raw(self) -> u32 {
        use PixelFormat::*;
        match self {
            B8G8R8A8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
            B8G8R8X8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            A8R8G8B8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
            X8R8G8B8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
            R8G8B8A8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            X8B8G8R8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
            A8B8G8R8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
            R8G8B8X8 => b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
        }
    }

    /// Where R, G, B and alpha sit in a pixel's four bytes; `None` for an X (unused)
    /// byte, whose pixels are opaque.
    fn layout(self) -> ([usize; 3], Option<usize>) {
        use PixelFormat::*;
        match self {
            B8G8R8A8 => ([2, 1, 0], Some(3)),
            B8G8R8X8 => ([2, 1, 0], None),
            A8R8G8B8 => ([1, 2, 3], Some(0)),
            X8R8G8B8 => ([1, 2, 3], None),
            R8G8B8A8 => ([0, 1, 2], Some(3)),
            X8B8G8R8 => ([3, 2, 1], None),
            A8B8G8R8 => ([3, 2, 1], Some(0)),
            R8G8B8X8 => ([0, 1, 2], None),
        }
    }

    /// Whether the fourth channel is alpha (not padding).
    pub fn has_alpha(self) -> bool {
        self.layout().1.is_some()
    }

    /// One pixel of this format as R, G, B, A bytes (A = 255 for formats without alpha).
    pub fn to_rgba(self, pixel: [u8; 4]) -> [u8; 4] {
        let ([r, g, b], a) = self.layout();
        [
            pixel[r],
            pixel[g],
            pixel[b],
            a.map_or(u8::MAX, |a| pixel[a]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_linux_format_round_trips() {
        for raw in [1, 2, 3, 4, 67, 68, 121, 134] {
            assert_eq!(PixelFormat::from_raw(raw).unwrap().raw(), raw);
        }
        assert_eq!(PixelFormat::from_raw(0), None);
        assert_eq!(PixelFormat::from_raw(5), None);
    }

    #[test]
    fn converts_to_rgba_by_byte_order() {
        let px = [0x10, 0x20, 0x30, 0x40];
        assert_eq!(PixelFormat::B8G8R8A8.to_rgba(px), [0x30, 0x20, 0x10, 0x40]);
        assert_eq!(PixelFormat::B8G8R8X8.to_rgba(px), [0x30, 0x20, 0x10, 0xff]);
        assert_eq!(PixelFormat::A8R8G8B8.to_rgba(px), [0x20, 0x30, 0x40, 0x10]);
        assert_eq!(PixelFormat::R8G8B8A8.to_rgba(px), [0x10, 0x20, 0x30, 0x40]);
        assert_eq!(PixelFormat::X8B8G8R8.to_rgba(px), [0x40, 0x30, 0x20, 0xff]);
        assert_eq!(PixelFormat::A8B8G8R8.to_rgba(px), [0x40, 0x30, 0x20, 0x10]);
        assert!(!PixelFormat::R8G8B8X8.has_alpha());
    }
}
