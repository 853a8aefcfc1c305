//! Arbitrary descriptor chains from a guest against the virtio-blk device: descriptors,
//! available ring and request bytes all come from the input, in real guest memory,
//! through the worker's drain loop, the request parser and the executor, against a raw
//! or a qcow2 disk in a tmpfs file. Nothing may panic, hang, touch memory outside the
//! guest's, or hand the driver back more used entries than it made available.
//!
//! Input:
//! - byte 0, flags: bit 0 EVENT_IDX, bit 1 read-only, bit 2 write-through (FLUSH not
//!   negotiated), bit 3 qcow2 (else raw), bit 4 discard/write-zeroes not negotiated.
//! - byte 1: how many heads are made available (mod 2 * QUEUE_SIZE, so the avail
//!   index can run ahead of the ring and wrap); byte 2: used_event.
//! - QUEUE_SIZE descriptors of 12 bytes: addr (u32: below 2^31 an offset into the data
//!   area, above a raw guest address reaching past guest memory), len (u32, taken
//!   mod 2^20 unless its top bit is set), flags (u8), next (u8).
//! - QUEUE_SIZE available-ring entries (u8 each).
//! - the rest: the data area's initial contents (headers, discard segments...).
#![no_main]

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vireo_vmm::devices::virtio::block::disk::{Qcow2Disk, RawDisk};
use vireo_vmm::devices::virtio::block::request::RequestPolicy;
use vireo_vmm::devices::virtio::block::worker::BlockWorker;
use vireo_vmm::devices::virtio::block::{Disk, DiskFormat};
use vireo_vmm::devices::virtio::rate_limit::{IoLimits, RateLimiter};
use vireo_vmm::devices::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: u64 = 1 << 20;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const DATA_AREA: u64 = 0x3000;
/// 64 KiB: 128 sectors.
const DISK_SIZE: u64 = 64 << 10;

struct CountingInterrupt(AtomicUsize);

impl Interrupt for CountingInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The backing files, made once per process in tmpfs and reset for every input.
struct Files {
    raw: File,
    qcow2: Option<(File, std::path::PathBuf, Vec<u8>)>,
}

fn files() -> &'static Mutex<Files> {
    static FILES: OnceLock<Mutex<Files>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir();
        let raw_path = dir.join(format!("vireo-fuzz-blk-{}.raw", std::process::id()));
        let raw = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .unwrap();
        let _ = std::fs::remove_file(&raw_path);
        // A qcow2 template made by qemu-img (skipped when it is not installed).
        let q_path = dir.join(format!("vireo-fuzz-blk-{}.qcow2", std::process::id()));
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"])
            .arg(&q_path)
            .arg(DISK_SIZE.to_string())
            // Keep it off our terminal: a background job touching the tty gets stopped.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let qcow2 = made.then(|| {
            let template = std::fs::read(&q_path).unwrap();
            let file = File::options()
                .read(true)
                .write(true)
                .open(&q_path)
                .unwrap();
            (file, q_path, template)
        });
        Mutex::new(Files { raw, qcow2 })
    })
}

fn disk(qcow2: bool, read_only: bool) -> Disk {
    let files = files().lock().unwrap();
    if let (true, Some((file, path, template))) = (qcow2, &files.qcow2) {
        file.set_len(0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(file, template, 0).unwrap();
        let backend = Qcow2Disk::open(file.try_clone().unwrap(), path, !read_only).unwrap();
        return Disk::from_backend(Box::new(backend), DiskFormat::Qcow2, read_only);
    }
    files.raw.set_len(0).unwrap();
    files.raw.set_len(DISK_SIZE).unwrap();
    let backend = RawDisk::new(files.raw.try_clone().unwrap()).unwrap();
    Disk::from_backend(Box::new(backend), DiskFormat::Raw, read_only)
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(input.len());
    let (head, rest) = input.split_at(n);
    *input = rest;
    head
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(raw)
}

fuzz_target!(|input: &[u8]| {
    let mut input = input;
    let head = take(&mut input, 3);
    let flags = head.first().copied().unwrap_or(0);
    let avail_count = u16::from(head.get(1).copied().unwrap_or(1)) % (2 * QUEUE_SIZE);
    let used_event = u16::from(head.get(2).copied().unwrap_or(0));
    let (event_idx, read_only, write_through, qcow2, no_discard, limited) = (
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
        flags & 8 != 0,
        flags & 16 != 0,
        flags & 32 != 0,
    );

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let descs = take(&mut input, 12 * usize::from(QUEUE_SIZE));
    for i in 0..QUEUE_SIZE as usize {
        let at = 12 * i;
        let raw_addr = u32_at(descs, at);
        let addr = if raw_addr < 1 << 31 {
            DATA_AREA + u64::from(raw_addr) % (MEM_SIZE - DATA_AREA)
        } else {
            // Anywhere, including past guest memory and near the top of the address
            // space.
            u64::from(raw_addr)
                .wrapping_mul(0x1_0000_0001)
                .rotate_left(raw_addr & 63)
        };
        let raw_len = u32_at(descs, at + 4);
        let len = if raw_len & 1 << 31 != 0 {
            raw_len
        } else {
            raw_len % (1 << 20)
        };
        let desc_flags = u16::from(descs.get(at + 8).copied().unwrap_or(0));
        let next = u16::from(descs.get(at + 9).copied().unwrap_or(0));
        let entry = DESC_TABLE + 16 * i as u64;
        mem.write_obj(addr, GuestAddress(entry)).unwrap();
        mem.write_obj(len, GuestAddress(entry + 8)).unwrap();
        mem.write_obj(desc_flags, GuestAddress(entry + 12)).unwrap();
        mem.write_obj(next, GuestAddress(entry + 14)).unwrap();
    }
    let heads = take(&mut input, usize::from(QUEUE_SIZE));
    for i in 0..QUEUE_SIZE {
        let head_index = u16::from(heads.get(usize::from(i)).copied().unwrap_or(0));
        mem.write_obj(head_index, GuestAddress(AVAIL_RING + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(avail_count, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    mem.write_obj(
        used_event,
        GuestAddress(AVAIL_RING + 4 + 2 * u64::from(QUEUE_SIZE)),
    )
    .unwrap();
    let data = take(&mut input, (MEM_SIZE - DATA_AREA) as usize);
    mem.write_slice(data, GuestAddress(DATA_AREA)).unwrap();

    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(QUEUE_SIZE);
    queue
        .try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
        .unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(USED_RING))
        .unwrap();
    queue.set_ready(true);
    queue.set_event_idx(event_idx);

    let interrupt = Arc::new(CountingInterrupt(AtomicUsize::new(0)));
    let policy = RequestPolicy {
        read_only,
        write_through,
        discard: !no_discard && !read_only,
        write_zeroes: !no_discard && !read_only,
        id: *b"fuzz-disk-0123456789",
    };
    let disk = Arc::new(Mutex::new(disk(qcow2, read_only)));
    let mut worker = BlockWorker::new(mem.clone(), interrupt.clone(), queue, 0, disk, policy);
    if limited {
        // A bucket of a few requests and a few KiB: chains refused part-way through
        // the ring go back to it (the put-back path sees every kind of chain).
        let limits = IoLimits {
            bw: Some(1 << 20),
            bw_burst: Some(4096 << (used_event & 3)),
            iops: Some(1000),
            iops_burst: Some(1 + u64::from(used_event >> 2 & 3)),
        };
        worker = worker.limited(Arc::new(RateLimiter::new(limits).unwrap()));
    }

    // The same kick twice: the second finds nothing new (or the same broken ring).
    // Under a limit the bucket may have refilled in between, so it may serve more.
    let first = worker.process_queue();
    let second = worker.process_queue();
    if let (Ok(_), Ok(again), false) = (&first, &second, limited) {
        assert!(!again, "an interrupt with nothing new used");
    }
    // Never more used entries than the driver made available.
    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
    assert!(
        used_idx <= avail_count,
        "used {used_idx} > avail {avail_count}"
    );
    assert!(interrupt.0.load(Ordering::Relaxed) <= 2);
});
