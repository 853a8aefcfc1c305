//! Arbitrary command chains from a guest against the virtio-gpu device: requests of any
//! type and length, cut into descriptors anywhere, with response room of any size,
//! some buffers outside guest memory, on the control and the cursor queue, mixed with
//! guest writes to the memory backing resources and host-side actions (display
//! resizes, configuration space accesses, resets). Nothing may panic, write more
//! response than the chain has room for, allocate past the memory cap, or report damage
//! outside a scanout.
//!
//! Input: a stream of operations, each starting with an op byte whose low 2 bits pick:
//! - 0/1, a control/cursor chain: `[op, len_lo, len_hi, cut, resp_lo, resp_hi,
//!   request...]`: `len` request bytes (mod 4 KiB) copied to the request area and cut
//!   into two readable descriptors at `cut`; `resp` bytes (mod 2 KiB) of writable room.
//!   Op bit 2 moves the request, bit 3 the response, past guest memory; bit 4 adds a
//!   readable descriptor after the writable one.
//! - 2, a host action: `[op, a, b, c]`: bits 2-3 of op choose a resize of scanout `a`
//!   to (b * 16) x (c * 16), a config write of `b` at offset `a`, a config read, or a
//!   reset.
//! - 3, a guest memory write: `[op, at_lo, at_hi, len, bytes...]` at `at * 16` into
//!   the data area.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_gpu::{
    DisplayBackend, DisplayEvent, Framebuffer, FramebufferId, Gpu, GpuConfig, ScanoutConfig,
    ScanoutMode, VecFramebuffer,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 2 << 20;
const REQUEST: u64 = 0x1000;
const RESPONSE: u64 = 0x3000;
/// Where backing pages go: the guest points its entries anywhere, but this is where
/// the memory writes land.
const DATA_AREA: u64 = 0x1_0000;
const MEMORY_CAP: u64 = 8 << 20;

/// Checks every event against the scanouts' modes.
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

fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(input.len());
    let (head, rest) = input.split_at(n);
    *input = rest;
    head
}

fn byte(input: &mut &[u8]) -> u8 {
    take(input, 1).first().copied().unwrap_or(0)
}

fn le16(input: &mut &[u8]) -> u16 {
    u16::from(byte(input)) | u16::from(byte(input)) << 8
}

fn readable(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, 0, 0)
}

/// Builds and serves one chain.
fn chain(gpu: &mut Gpu, mem: &GuestMemoryMmap, op: u8, input: &mut &[u8]) {
    let len = usize::from(le16(input)) % 4096;
    let cut = usize::from(byte(input));
    let resp = u32::from(le16(input)) % 2048;
    let request = take(input, len);
    mem.write_slice(request, GuestAddress(REQUEST)).unwrap();
    let far = |moved: bool, addr: u64| {
        if moved {
            addr + MEM_SIZE as u64 - 0x800
        } else {
            addr
        }
    };
    let req_addr = far(op & 4 != 0, REQUEST);
    let cut = cut.min(request.len());
    let mut descs = vec![
        readable(req_addr, cut as u32),
        readable(req_addr + cut as u64, (request.len() - cut) as u32),
        Descriptor::new(
            far(op & 8 != 0, RESPONSE),
            resp,
            VRING_DESC_F_WRITE as u16,
            0,
        ),
    ];
    if op & 16 != 0 {
        descs.push(readable(REQUEST, 16));
    }
    let used = if op & 1 == 0 {
        gpu.process_control(descs, mem)
    } else {
        gpu.process_cursor(descs, mem)
    };
    assert!(used <= resp, "wrote {used} bytes into {resp} bytes of room");
}

fn host_action(gpu: &mut Gpu, op: u8, input: &mut &[u8]) {
    let (a, b, c) = (byte(input), byte(input), byte(input));
    match (op >> 2) & 3 {
        0 => {
            let _ = gpu.set_display_size(u32::from(a), u32::from(b) * 16, u32::from(c) * 16);
        }
        1 => gpu.write_config(u64::from(a), &[b, c]),
        2 => {
            let mut data = [0u8; 8];
            gpu.read_config(u64::from(a), &mut data);
        }
        _ => gpu.reset(),
    }
}

fuzz_target!(|input: &[u8]| {
    let mut input = input;
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
    gpu.ack_features(gpu.features());
    while !input.is_empty() {
        let op = byte(&mut input);
        match op & 3 {
            0 | 1 => chain(&mut gpu, &mem, op, &mut input),
            2 => host_action(&mut gpu, op, &mut input),
            _ => {
                let at = DATA_AREA + u64::from(le16(&mut input)) * 16;
                let len = usize::from(byte(&mut input));
                let data = take(&mut input, len);
                let _ = mem.write_slice(data, GuestAddress(at));
            }
        }
        assert!(gpu.used_host_memory() <= MEMORY_CAP);
        for (i, mode) in modes.lock().unwrap().iter().enumerate() {
            assert_eq!(gpu.scanout_mode(i as u32), *mode);
        }
    }
});
