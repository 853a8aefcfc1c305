//! The global allocator: a first-fit free list (`linked_list_allocator`) over the largest
//! stretch of RAM above the kernel image and inside the identity map.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;

use crate::phys;
use crate::pvh::{MemmapEntry, MEMMAP_RAM};
use crate::sync::SpinLock;

extern "C" {
    /// End of the loaded image, bss and boot stacks included (from the linker script).
    static __image_end: [u8; 0];
}

struct Allocator(SpinLock<Heap>);

#[global_allocator]
static ALLOCATOR: Allocator = Allocator(SpinLock::new(Heap::empty()));

// SAFETY: `Heap` hands out disjoint, suitably aligned blocks from the region given to
// `init`, which nothing else uses; the lock serializes access.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned, with its layout.
            unsafe { self.0.lock().deallocate(ptr, layout) };
        }
    }
}

/// The heap's region.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: u64,
    pub size: u64,
}

/// Picks the heap region from the memory map and hands it to the allocator. Call once,
/// after everything needed from firmware memory (start info, ACPI) has been copied out.
pub fn init(memmap: &[MemmapEntry]) -> Option<Region> {
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let region = memmap
        .iter()
        .filter(|e| e.kind == MEMMAP_RAM)
        .filter_map(|e| {
            let start = e.addr.max(image_end).next_multiple_of(4096);
            let end = e.addr.saturating_add(e.size).min(phys::MAPPED_END) & !4095;
            (end > start).then(|| Region {
                start,
                size: end - start,
            })
        })
        .max_by_key(|r| r.size)?;
    // SAFETY: the region is RAM per the memory map, above the image (so it overlaps no
    // code, data, stack or boot table), inside the identity map, and used by nothing
    // else: the start info and ACPI tables were copied out before this call. `init`
    // runs once, so the heap is not re-initialised under live allocations.
    unsafe {
        ALLOCATOR
            .0
            .lock()
            .init(region.start as *mut u8, region.size as usize)
    };
    Some(region)
}

/// Free heap bytes.
pub fn free() -> usize {
    ALLOCATOR.0.lock().free()
}
