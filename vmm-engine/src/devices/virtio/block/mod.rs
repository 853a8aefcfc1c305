//! virtio-blk (virtio 1.2, 5.2 "Block Device"): one request queue served by a worker
//! thread, over a raw or qcow2 image.
//!
//! - `config`: the `--disk` option / `vm.toml` disk table (`DiskConfig`).
//! - `disk`: opening and locking an image; the raw and qcow2 backends.
//! - `lock`: QEMU-compatible image locks.
//! - `request`: a descriptor chain parsed into a request and executed on the disk.
//! - `worker`: the worker thread's handler: drain the queue, interrupt the driver.
//!
//! The device is `Inactive` until the driver sets DRIVER_OK, then `Activated` with a
//! worker owning the queue; the disk itself is shared with the worker, so a reset (or a
//! worker that died) never loses the open, locked image.

pub mod config;
pub mod disk;
pub mod lock;
pub mod request;
pub mod worker;

use std::mem::{offset_of, size_of};
use std::sync::{Arc, Mutex, PoisonError};

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::io_counters::IoCounters;
use super::rate_limit::{LimitError, RateLimiter};
use super::worker::{kick_each, Worker};
use super::{
    ActivateError, ActiveQueue, DeviceState, Interrupt, SaveError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
pub use config::{DiskConfig, DiskConfigError, DiskFormat};
use disk::SECTOR_BYTES;
pub use disk::{Disk, DiskBackend, DiskError};
use request::{RequestPolicy, MAX_SEGMENTS, MAX_SEGMENT_SECTORS};
use worker::BlockWorker;

/// The size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request (`seg_max`): a chain holds the header and the status
/// besides, and without VIRTIO_F_INDIRECT_DESC it cannot be longer than the queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the device ID string (VIRTIO_BLK_T_GET_ID).
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Config(#[from] DiskConfigError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("--disk: {0}")]
    Limits(#[from] LimitError),
    #[error("cannot create the disk's I/O limit timer: {0}")]
    LimitTimer(#[source] std::io::Error),
}

enum State {
    Inactive,
    Activated(Worker<BlockWorker>),
}

/// A virtio block device.
pub struct Block {
    disk: Arc<Mutex<Disk>>,
    read_only: bool,
    id: [u8; ID_LEN],
    features: u64,
    config_space: Vec<u8>,
    queue_sizes: [u16; 1],
    state: State,
    /// Bytes and requests served, across resets (the control socket's `stats`).
    counters: Arc<IoCounters>,
    /// The I/O limits (`bw=`, `iops=`), changeable through the control socket.
    limiter: Option<Arc<RateLimiter>>,
}

impl Block {
    /// Opens (and locks) the image `config` names.
    pub fn new(config: &DiskConfig) -> Result<Block, BlockError> {
        config.validate()?;
        let disk = Disk::open(config)?;
        let id = match &config.id {
            Some(id) => id_bytes(id.as_bytes()),
            None => default_id(&config.path),
        };
        config.limits.validate()?;
        let limiter = RateLimiter::new(config.limits).map_err(BlockError::LimitTimer)?;
        let mut block = Block::with_disk(disk, id);
        block.limiter = Some(Arc::new(limiter));
        Ok(block)
    }

    /// A device over an already open disk.
    pub fn with_disk(disk: Disk, id: [u8; ID_LEN]) -> Block {
        let read_only = disk.read_only();
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let config_space = config_space(&disk);
        Block {
            disk: Arc::new(Mutex::new(disk)),
            read_only,
            id,
            features,
            config_space,
            queue_sizes: [QUEUE_SIZE],
            state: State::Inactive,
            counters: Arc::default(),
            limiter: None,
        }
    }

    /// The ID string the guest reads.
    pub fn id(&self) -> &[u8; ID_LEN] {
        &self.id
    }

    /// The device's traffic counters (shared: they keep counting).
    /// The open image, for handing its lock over in a live migration.
    pub fn disk(&self) -> Arc<Mutex<Disk>> {
        Arc::clone(&self.disk)
    }

    pub fn counters(&self) -> Arc<IoCounters> {
        Arc::clone(&self.counters)
    }

    /// The disk's I/O limiter (none for a device made with `with_disk`).
    pub fn limiter(&self) -> Option<Arc<RateLimiter>> {
        self.limiter.clone()
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Activated(_))
    }
}

/// The ID string as the guest gets it: NUL-padded to 20 bytes.
fn id_bytes(id: &[u8]) -> [u8; ID_LEN] {
    let mut out = [0u8; ID_LEN];
    let n = id.len().min(ID_LEN);
    out[..n].copy_from_slice(&id[..n]);
    out
}

/// A default serial that stays the same across runs for the same image path (so a
/// guest's /dev/disk/by-id names are stable): "vireo-" and 14 hex digits of the FNV-1a
/// hash of the absolute path (FNV, not `DefaultHasher`, whose output may change between
/// Rust releases).
fn default_id(path: &std::path::Path) -> [u8; ID_LEN] {
    use std::os::unix::ffi::OsStrExt;
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in path.as_os_str().as_bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    id_bytes(format!("vireo-{:014x}", hash >> 8).as_bytes())
}

/// The device's configuration space (`struct virtio_blk_config`, little-endian), with
/// the fields of the features offered filled in.
fn config_space(disk: &Disk) -> Vec<u8> {
    let mut space = vec![0u8; size_of::<virtio_blk_config>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        space[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(
        offset_of!(virtio_blk_config, capacity),
        &(disk.size() / SECTOR_BYTES).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_BYTES as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &1u16.to_le_bytes(),
    );
    let granularity = disk_granularity_sectors(disk);
    for (field, value) in [
        (
            offset_of!(virtio_blk_config, max_discard_sectors),
            MAX_SEGMENT_SECTORS,
        ),
        (offset_of!(virtio_blk_config, max_discard_seg), MAX_SEGMENTS),
        (
            offset_of!(virtio_blk_config, discard_sector_alignment),
            granularity,
        ),
        (
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            MAX_SEGMENT_SECTORS,
        ),
        (
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            MAX_SEGMENTS,
        ),
    ] {
        put(field, &value.to_le_bytes());
    }
    // Both backends free space for write-zeroes with the unmap flag.
    put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    space
}

fn disk_granularity_sectors(disk: &Disk) -> u32 {
    // Linux takes this as the discard granularity: the backend's unit (a page for raw
    // files, a cluster for qcow2), so the guest's discards free whole units.
    u32::try_from(disk.discard_granularity().max(SECTOR_BYTES) / SECTOR_BYTES).unwrap_or(u32::MAX)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| self.config_space.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only: `writeback` is writable only with
        // VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                needed: 1,
            });
        }
        let ActiveQueue {
            index,
            mut queue,
            notify,
        } = queues.remove(0);
        queue.set_event_idx(acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
        let acked = |bit: u32| acked_features & (1 << bit) != 0;
        let policy = RequestPolicy {
            read_only: self.read_only,
            write_through: !acked(VIRTIO_BLK_F_FLUSH),
            discard: acked(VIRTIO_BLK_F_DISCARD),
            write_zeroes: acked(VIRTIO_BLK_F_WRITE_ZEROES),
            id: self.id,
        };
        let mut handler =
            BlockWorker::new(mem, interrupt, queue, index, Arc::clone(&self.disk), policy)
                .counting(self.counters());
        if let Some(limiter) = self.limiter() {
            handler = handler.limited(limiter);
        }
        let worker =
            Worker::spawn("vireo-blk", vec![notify], handler).map_err(ActivateError::Worker)?;
        self.state = State::Activated(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let State::Activated(worker) = std::mem::replace(&mut self.state, State::Inactive) {
            // Joins the thread: no request is in flight once this returns.
            worker.stop();
        }
    }

    /// Requests are served synchronously in the worker (`worker`), so once it has
    /// stopped nothing is in flight; flushing then leaves the image file consistent on
    /// disk (qcow2 metadata included) for whoever copies it with the saved state. The
    /// configuration space is fixed by the image, so the state is the queue alone and
    /// the default `restore` (activate) fits.
    fn save(&mut self) -> Result<DeviceState, SaveError> {
        let State::Activated(worker) = std::mem::replace(&mut self.state, State::Inactive) else {
            return Err(SaveError::WorkerLost);
        };
        let handler = worker.stop().ok_or(SaveError::WorkerLost)?;
        if !self.read_only {
            let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
            disk.backend()
                .flush()
                .map_err(|e| SaveError::Device(format!("virtio-blk: flushing the disk: {e}")))?;
        }
        Ok(DeviceState::queues_only([(
            handler.queue_index(),
            handler.queue(),
        )]))
    }

    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
        state: &serde_json::Value,
    ) -> Result<(), ActivateError> {
        if !state.is_null() {
            return Err(ActivateError::BadState(
                "virtio-blk keeps no state beyond its queue".into(),
            ));
        }
        kick_each(&queues).map_err(ActivateError::Worker)?;
        self.activate(mem, interrupt, queues, acked_features)
    }
}

/// Shared by the tests of this folder: guest memory, a driver-side queue, disks.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;
    use std::process::Command;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    pub use crate::devices::virtio::test_utils::CountingInterrupt;

    pub const MEM_SIZE: usize = 16 << 20;
    /// Where data buffers start, above the rings.
    pub const DATA_START: u64 = 0x10_0000;

    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// One part of a chain: (guest address, length, device-writable).
    pub type Part = (GuestAddress, u32, bool);

    /// Descriptors for `parts`, linked in order from index `first`.
    pub fn chain(parts: &[Part], first: u16) -> Vec<Descriptor> {
        parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
                if i + 1 < parts.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                Descriptor::new(addr.0, len, flags, first + i as u16 + 1)
            })
            .collect()
    }

    /// Where a request's pieces are in guest memory.
    pub struct Submitted {
        pub data: GuestAddress,
        pub status: GuestAddress,
    }

    /// The driver's side of the request queue.
    pub struct Driver<'m> {
        pub mem: &'m GuestMemoryMmap,
        pub vq: MockSplitQueue<'m, GuestMemoryMmap>,
        next_desc: u16,
        next_data: u64,
    }

    impl<'m> Driver<'m> {
        pub fn new(mem: &'m GuestMemoryMmap) -> Self {
            Driver {
                mem,
                vq: MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE),
                next_desc: 0,
                next_data: DATA_START,
            }
        }

        pub fn queue(&self) -> Queue {
            self.vq.create_queue().unwrap()
        }

        pub fn alloc(&mut self, len: u64) -> GuestAddress {
            let addr = GuestAddress(self.next_data);
            self.next_data += len.next_multiple_of(16);
            addr
        }

        /// Makes `parts` available as one chain.
        pub fn submit(&mut self, parts: &[Part]) {
            let descs: Vec<RawDescriptor> = chain(parts, self.next_desc)
                .into_iter()
                .map(RawDescriptor::from)
                .collect();
            self.vq.add_desc_chains(&descs, self.next_desc).unwrap();
            self.next_desc += parts.len() as u16;
        }

        /// A request in the usual layout: header, data, status in their own
        /// descriptors. `data` is `Ok(bytes)` for the device to read, `Err(len)` for
        /// it to write.
        pub fn request(
            &mut self,
            request_type: u32,
            sector: u64,
            data: Result<&[u8], u32>,
        ) -> Submitted {
            let header = self.alloc(16);
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&request_type.to_le_bytes());
            raw[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&raw, header).unwrap();
            let (data_addr, data_part) = match data {
                Ok(bytes) => {
                    let a = self.alloc(bytes.len() as u64);
                    self.mem.write_slice(bytes, a).unwrap();
                    (
                        a,
                        (!bytes.is_empty()).then_some((a, bytes.len() as u32, false)),
                    )
                }
                Err(len) => {
                    let a = self.alloc(u64::from(len));
                    (a, (len > 0).then_some((a, len, true)))
                }
            };
            let status = self.alloc(1);
            self.mem.write_obj(0xffu8, status).unwrap();
            let mut parts = vec![(header, 16, false)];
            parts.extend(data_part);
            parts.push((status, 1, true));
            self.submit(&parts);
            Submitted {
                data: data_addr,
                status,
            }
        }

        pub fn status(&self, s: &Submitted) -> u8 {
            self.mem.read_obj(s.status).unwrap()
        }

        pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read_slice(&mut v, addr).unwrap();
            v
        }

        pub fn used_idx(&self) -> u16 {
            self.vq.used().idx().load()
        }

        /// (head, len) of used element `i`.
        pub fn used(&self, i: u16) -> (u32, u32) {
            let e = self.vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        }

        /// The driver's `used_event` (virtio 1.2, 2.7.10): interrupt me once the used
        /// index passes this.
        pub fn set_used_event(&self, value: u16) {
            let addr = self
                .vq
                .avail_addr()
                .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
            self.mem.write_obj(value, addr).unwrap();
        }
    }

    /// A zero-filled temporary file of `size` bytes.
    pub fn raw_image(size: u64) -> TempFile {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(size).unwrap();
        tmp
    }

    /// A temporary qcow2 image made by qemu-img.
    pub fn qcow2_image(size: u64) -> TempFile {
        let tmp = TempFile::new().unwrap();
        qemu_img(&["create", "-q", "-f", "qcow2"], tmp.as_path(), Some(size));
        tmp
    }

    pub fn qemu_img(args: &[&str], path: &Path, size: Option<u64>) -> std::process::Output {
        let mut cmd = Command::new("qemu-img");
        cmd.args(args).arg(path);
        if let Some(size) = size {
            cmd.arg(size.to_string());
        }
        let out = cmd.output().expect("qemu-img (Debian package qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn open(path: &Path, readonly: bool) -> Disk {
        Disk::open(&DiskConfig {
            path: path.to_owned(),
            format: None,
            readonly,
            id: None,
            limits: Default::default(),
        })
        .unwrap()
    }

    pub fn all_features_policy(read_only: bool) -> request::RequestPolicy {
        request::RequestPolicy {
            read_only,
            write_through: false,
            discard: true,
            write_zeroes: true,
            id: *b"test-disk-id\0\0\0\0\0\0\0\0",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::devices::virtio::test_utils::CountingInterrupt;
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use virtio_queue::QueueT;
    use vmm_sys_util::eventfd::EventFd;

    use super::test_support::*;
    use super::*;
    use crate::devices::virtio::QueuePosition;

    fn read_u32(block: &Block, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        block.read_config(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn features_and_config_space() {
        let img = raw_image(10 << 20);
        let block = Block::new(&DiskConfig {
            path: img.as_path().to_owned(),
            format: None,
            readonly: false,
            id: Some("data".into()),
            limits: Default::default(),
        })
        .unwrap();
        assert_eq!(block.device_type(), VIRTIO_ID_BLOCK);
        assert_eq!(block.queue_max_sizes(), &[QUEUE_SIZE]);
        let f = block.device_features();
        for bit in [
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        ] {
            assert_ne!(f & 1 << bit, 0, "feature {bit}");
        }
        assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);

        let mut cap = [0u8; 8];
        block.read_config(offset_of!(virtio_blk_config, capacity) as u64, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), (10 << 20) / 512);
        assert_eq!(
            read_u32(&block, offset_of!(virtio_blk_config, blk_size)),
            512
        );
        assert_eq!(
            read_u32(&block, offset_of!(virtio_blk_config, seg_max)),
            SEG_MAX
        );
        assert_eq!(
            read_u32(&block, offset_of!(virtio_blk_config, max_discard_seg)),
            MAX_SEGMENTS
        );
        assert_eq!(
            read_u32(
                &block,
                offset_of!(virtio_blk_config, discard_sector_alignment)
            ),
            8
        );
        // Out of range reads as zero; writes are ignored.
        let mut far = [0xaau8; 4];
        block.read_config(4096, &mut far);
        assert_eq!(far, [0; 4]);
        block.read_config(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
        assert_eq!(&block.id()[..5], b"data\0");
    }

    #[test]
    fn read_only_offers_ro_and_no_discard() {
        let img = raw_image(1 << 20);
        let block = Block::new(&DiskConfig {
            path: img.as_path().to_owned(),
            format: Some(DiskFormat::Raw),
            readonly: true,
            id: None,
            limits: Default::default(),
        })
        .unwrap();
        let f = block.device_features();
        assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(
            f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
    }

    #[test]
    fn default_id_is_stable_and_path_dependent() {
        let a = raw_image(1 << 20);
        let b = raw_image(1 << 20);
        let id_a = default_id(a.as_path());
        assert_eq!(id_a, default_id(a.as_path()));
        assert_ne!(id_a, default_id(b.as_path()));
        assert!(id_a.starts_with(b"vireo-"));
        assert!(id_a.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-'));
    }

    fn wait_for(mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn activate_serve_reset_reactivate() {
        let img = raw_image(1 << 20);
        std::os::unix::fs::FileExt::write_all_at(img.as_file(), &[7u8; 512], 512).unwrap();
        let mut block = Block::new(&DiskConfig {
            path: img.as_path().to_owned(),
            format: None,
            readonly: false,
            id: None,
            limits: Default::default(),
        })
        .unwrap();
        let features = block.device_features();

        for round in 0..2 {
            let mem = guest_memory();
            let mut driver = Driver::new(&mem);
            let interrupt = Arc::new(CountingInterrupt::default());
            let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let kick = notify.try_clone().unwrap();
            block
                .activate(
                    mem.clone(),
                    interrupt.clone(),
                    vec![ActiveQueue {
                        index: 0,
                        queue: driver.queue(),
                        notify,
                    }],
                    features,
                )
                .unwrap();
            assert!(block.is_active());
            assert!(matches!(
                block.activate(mem.clone(), interrupt.clone(), Vec::new(), features),
                Err(ActivateError::AlreadyActive)
            ));

            let r = driver.request(VIRTIO_BLK_T_IN, 1, Err(512));
            kick.write(1).unwrap();
            wait_for(|| driver.used_idx() == 1);
            assert_eq!(driver.status(&r), VIRTIO_BLK_S_OK as u8, "round {round}");
            assert_eq!(driver.read(r.data, 512), vec![7u8; 512]);
            assert_eq!(driver.used(0).1, 513);
            wait_for(|| interrupt.used() == 1);

            // Reset while active: the worker stops, the disk stays open and locked.
            block.reset();
            assert!(!block.is_active());
            block.reset();
            let r = driver.request(VIRTIO_BLK_T_GET_ID, 0, Err(20));
            let _ = r;
        }

        // Two queues where one is needed.
        let mem = guest_memory();
        let driver = Driver::new(&mem);
        let queues = (0..2)
            .map(|index| ActiveQueue {
                index,
                queue: driver.queue(),
                notify: EventFd::new(0).unwrap(),
            })
            .collect();
        assert!(matches!(
            block.activate(
                mem.clone(),
                Arc::new(CountingInterrupt::default()),
                queues,
                features
            ),
            Err(ActivateError::QueueCount { got: 2, needed: 1 })
        ));
    }

    fn disk_config(img: &vmm_sys_util::tempfile::TempFile) -> DiskConfig {
        DiskConfig {
            path: img.as_path().to_owned(),
            format: None,
            readonly: false,
            id: None,
            limits: Default::default(),
        }
    }

    /// A device on an image another device just closed. A child another test (or this
    /// one: qemu-img) forks meanwhile holds a copy of the closed descriptor, and so its
    /// OFD lock, until it execs: retry for a moment.
    fn reopen(config: &DiskConfig) -> Block {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Block::new(config) {
                Ok(block) => return block,
                Err(BlockError::Disk(DiskError::Lock { .. })) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("reopening the image: {e}"),
            }
        }
    }

    /// The image's guest-visible bytes at `offset`, read by qemu-img (sharing the lock
    /// the device holds), so only what is on disk counts.
    fn image_bytes(img: &vmm_sys_util::tempfile::TempFile, offset: usize, len: usize) -> Vec<u8> {
        let out = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(img.as_path())
            .arg(out.as_path())
            .status()
            .expect("qemu-img (Debian package qemu-utils)");
        assert!(status.success());
        std::fs::read(out.as_path()).unwrap()[offset..offset + len].to_vec()
    }

    /// A write, a save (the image is complete on disk when it returns, qcow2 metadata
    /// included), the state through JSON, then a new device over the same image
    /// restored with the queue where the save left it: the request made available
    /// before the save is served, the write is not served again.
    #[test]
    fn save_flushes_and_a_restored_device_carries_on() {
        for img in [raw_image(4 << 20), qcow2_image(4 << 20)] {
            let mem = guest_memory();
            let mut driver = Driver::new(&mem);
            let mut block = Block::new(&disk_config(&img)).unwrap();
            let features = block.device_features();
            let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let kick = notify.try_clone().unwrap();
            let interrupt = Arc::new(CountingInterrupt::default());
            let queues = vec![ActiveQueue {
                index: 0,
                queue: driver.queue(),
                notify,
            }];
            block
                .activate(mem.clone(), interrupt.clone(), queues, features)
                .unwrap();
            let pattern = vec![0x5au8; 4096];
            let w = driver.request(VIRTIO_BLK_T_OUT, 8, Ok(&pattern));
            kick.write(1).unwrap();
            wait_for(|| driver.used_idx() == 1);
            assert_eq!(driver.status(&w), VIRTIO_BLK_S_OK as u8);

            // A request the driver made available and whose kick the old process never
            // read: the restored device serves it without another kick.
            driver.set_used_event(1);
            let r = driver.request(VIRTIO_BLK_T_IN, 8, Err(4096));
            let saved = block.save().unwrap();
            assert!(!block.is_active());
            assert_eq!(image_bytes(&img, 8 * 512, 4096), pattern);
            let saved: DeviceState =
                serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
            assert_eq!(
                saved.queues,
                vec![QueuePosition {
                    index: 0,
                    next_avail: 1,
                    next_used: 1
                }]
            );
            drop(block);

            let mut block = reopen(&disk_config(&img));
            let mut queue = driver.queue();
            queue.set_next_avail(saved.queues[0].next_avail);
            queue.set_next_used(saved.queues[0].next_used);
            let interrupt = Arc::new(CountingInterrupt::default());
            let queues = vec![ActiveQueue {
                index: 0,
                queue,
                notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }];
            block
                .restore(
                    mem.clone(),
                    interrupt.clone(),
                    queues,
                    features,
                    &saved.device,
                )
                .unwrap();
            wait_for(|| driver.used_idx() == 2);
            assert_eq!(driver.status(&r), VIRTIO_BLK_S_OK as u8);
            assert_eq!(driver.read(r.data, 4096), pattern);
            // The write's used entry is untouched; the read took the next one.
            assert_eq!(driver.used(0), (0, 1));
            assert_eq!(driver.used(1), (3, 4097));
            wait_for(|| interrupt.used() == 1);
            block.reset();
        }
    }

    #[test]
    fn a_restore_with_device_state_is_refused() {
        let img = raw_image(1 << 20);
        let mut block = Block::new(&disk_config(&img)).unwrap();
        let mem = guest_memory();
        let driver = Driver::new(&mem);
        let queues = vec![ActiveQueue {
            index: 0,
            queue: driver.queue(),
            notify: EventFd::new(0).unwrap(),
        }];
        let result = block.restore(
            mem.clone(),
            Arc::new(CountingInterrupt::default()),
            queues,
            block.device_features(),
            &serde_json::json!({"queue": 3}),
        );
        assert!(matches!(result, Err(ActivateError::BadState(_))));
        assert!(!block.is_active());
    }

    #[test]
    fn a_second_device_cannot_open_a_running_image() {
        let img = raw_image(1 << 20);
        let config = DiskConfig {
            path: img.as_path().to_owned(),
            format: None,
            readonly: false,
            id: None,
            limits: Default::default(),
        };
        let first = Block::new(&config).unwrap();
        let err = Block::new(&config).err().expect("second open must fail");
        assert!(
            matches!(err, BlockError::Disk(DiskError::Lock { .. })),
            "{err}"
        );
        drop(first);
        // Another test of this process forking (qemu-img) holds a copy of the dropped
        // descriptor, and so the OFD lock, until its child execs: give that a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Block::new(&config) {
                Ok(_) => break,
                Err(BlockError::Disk(DiskError::Lock { .. }))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopening after the first device closed: {e}"),
            }
        }
    }

    #[test]
    fn write_is_durable_path_through_worker() {
        // OUT then IN through the worker, synchronously, on raw and qcow2.
        for img in [raw_image(4 << 20), qcow2_image(4 << 20)] {
            let mem = guest_memory();
            let mut driver = Driver::new(&mem);
            let interrupt = Arc::new(CountingInterrupt::default());
            let disk = Arc::new(Mutex::new(open(img.as_path(), false)));
            let mut worker = BlockWorker::new(
                mem.clone(),
                interrupt.clone(),
                driver.queue(),
                0,
                disk,
                test_support::all_features_policy(false),
            );
            let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
            let w = driver.request(VIRTIO_BLK_T_OUT, 100, Ok(&pattern));
            let r = driver.request(VIRTIO_BLK_T_IN, 100, Err(4096));
            assert!(worker.process_queue().unwrap());
            assert_eq!(driver.status(&w), 0);
            assert_eq!(driver.status(&r), 0);
            assert_eq!(driver.read(r.data, 4096), pattern);
            assert_eq!(driver.used(0).1, 1);
            assert_eq!(driver.used(1).1, 4097);
            assert_eq!(interrupt.used(), 1);
        }
    }
}
