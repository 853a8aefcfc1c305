//! Arbitrary bytes as a saved virtio-gpu state (JSON, as the engine stores it) restored
//! into a device: a state is a file on disk, as untrusted as the guest. Nothing may
//! panic or allocate past the memory cap; a refused state leaves the device reset; an
//! accepted one matches what the display heard, saves again, and that restores too.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use virtio_gpu::{
    DisplayBackend, DisplayEvent, Framebuffer, FramebufferId, Gpu, GpuConfig, GpuState,
    ScanoutConfig, ScanoutMode, VecFramebuffer,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 2 << 20;
const MEMORY_CAP: u64 = 8 << 20;

/// Keeps each scanout's mode as the events tell it, and checks damage against it.
struct CheckingDisplay(Arc<Mutex<Vec<Option<ScanoutMode>>>>);

impl DisplayBackend for CheckingDisplay {
    fn create_framebuffer(
        &mut self,
        _id: FramebufferId,
        mode: ScanoutMode,
    ) -> std::io::Result<Box<dyn Framebuffer>> {
        Ok(Box::new(VecFramebuffer::new(mode)?))
    }

    fn handle_event(&mut self, event: DisplayEvent) {
        let mut modes = self.0.lock().unwrap();
        match event {
            DisplayEvent::ScanoutEnabled { scanout, mode, .. } => {
                modes[scanout as usize] = Some(mode);
            }
            DisplayEvent::ScanoutDisabled { scanout } => modes[scanout as usize] = None,
            DisplayEvent::Damage { scanout, rect } => {
                let mode = modes[scanout as usize].expect("damage on a disabled scanout");
                assert!(!rect.is_empty() && rect.is_inside(mode.width, mode.height));
            }
            DisplayEvent::Cursor(_) => {}
        }
    }
}

/// The display's view and the device's agree.
fn check(gpu: &Gpu, modes: &Mutex<Vec<Option<ScanoutMode>>>) {
    assert!(gpu.used_host_memory() <= MEMORY_CAP);
    for (i, mode) in modes.lock().unwrap().iter().enumerate() {
        assert_eq!(gpu.scanout_mode(i as u32), *mode);
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(state) = serde_json::from_slice::<GpuState>(input) else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let config = GpuConfig {
        scanouts: vec![
            ScanoutConfig {
                width: 640,
                height: 480,
            },
            ScanoutConfig {
                width: 320,
                height: 200,
            },
        ],
        max_host_memory: MEMORY_CAP,
    };
    let modes = Arc::new(Mutex::new(vec![None; config.scanouts.len()]));
    let mut gpu = Gpu::new(&config, Box::new(CheckingDisplay(modes.clone()))).unwrap();
    if gpu.restore(&state, &mem).is_err() {
        assert_eq!(gpu.used_host_memory(), 0);
        assert_eq!(gpu.display_size(0), Some((640, 480)));
        check(&gpu, &modes);
        return;
    }
    check(&gpu, &modes);
    let saved = gpu.save();
    gpu.restore(&saved, &mem)
        .expect("a state the device saved restores");
    check(&gpu, &modes);
    assert_eq!(gpu.save(), saved);
});
