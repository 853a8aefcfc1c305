//! The virtio-blk tests (`probe.run=blk-*`), driven by `virtio-drivers` over PCI.
//!
//! Requests go through a small pipeline ([`Pipe`]): up to `qd` requests in flight with
//! the crate's non-blocking API, completions polled from the used ring (no interrupts),
//! and notifications suppressed by EVENT_IDX, because every notify is an exit (~30 µs
//! under PVM). Data is the seeded disk pattern of `vireo-cpu-bench`, a function of the
//! seed and the byte offset only, so the host can check the image file with the same code.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use vireo_cpu_bench::{check_disk_pattern, fill_disk_pattern, MIB};
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, SECTOR_SIZE};
use virtio_drivers::Error;

use crate::arch::idt::{self, TrapFrame};
use crate::arch::{self, rdmsr, wrmsr};
use crate::pci::{self, Pci};
use crate::probe;
use crate::virtio::{self, Blk};

/// What the `probe.blk_*` words set.
#[derive(Clone, Copy, Debug)]
pub struct BlkOptions {
    /// MiB written, read or benchmarked.
    pub mib: u64,
    pub seed: u64,
    /// Which virtio-blk device (in bus order) the single-disk commands use.
    pub dev: usize,
    /// Bytes per request for the pattern commands.
    pub req_kib: u64,
    /// Requests in flight.
    pub qd: usize,
    /// Random 4 KiB reads in the benchmark.
    pub rand: u64,
    /// `counter`: MiB of memory written (non-zero) before counting, so a save has
    /// that much to store.
    pub dirty_mib: u64,
}

impl Default for BlkOptions {
    fn default() -> Self {
        Self {
            mib: 64,
            seed: 1,
            dev: 0,
            req_kib: 256,
            qd: 8,
            rand: 4096,
            dirty_mib: 0,
        }
    }
}

/// A device that makes no progress for this long has hung.
const TIMEOUT_MS: u64 = 10_000;
/// The benchmark's sequential request size.
const BENCH_SEQ_LEN: usize = MIB as usize;
/// The benchmark's random request size.
const BENCH_RAND_LEN: usize = 4096;

/// What a pipeline writes or expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    /// The disk pattern for this seed: written, or checked on reads.
    Pattern(u64),
    /// Whatever is in the buffers, unchecked (the benchmark: no CPU time on data).
    Any,
}

/// Which offsets a pipeline visits.
#[derive(Clone, Copy, Debug)]
enum Order {
    Sequential {
        next: u64,
        end: u64,
    },
    /// `left` requests at 4 KiB-aligned offsets below `span`, from an xorshift sequence.
    Random {
        left: u64,
        state: u64,
        span: u64,
    },
}

impl Order {
    fn next(&mut self, len: usize) -> Option<(u64, usize)> {
        match self {
            Order::Sequential { next, end } => {
                if *next >= *end {
                    return None;
                }
                let op = (*next, (*end - *next).min(len as u64) as usize);
                *next += op.1 as u64;
                Some(op)
            }
            Order::Random { left, state, span } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                // xorshift64: a fixed sequence for a fixed seed.
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                let blocks = (*span / len as u64).max(1);
                Some(((*state % blocks) * len as u64, len))
            }
        }
    }
}

/// One request's buffers. They stay put while a request is in flight: the slots live in a
/// `Vec` that is never resized, and the data buffer is its own heap block.
struct Slot {
    req: BlkReq,
    resp: BlkResp,
    buf: Vec<u8>,
    token: Option<u16>,
    offset: u64,
    len: usize,
}

/// Requests in flight on one device.
struct Pipe<'a> {
    blk: &'a mut Blk,
    write: bool,
    data: Data,
    order: Order,
    req_len: usize,
    slots: Vec<Slot>,
    in_flight: usize,
    /// An operation the queue had no room for.
    pending: Option<(u64, usize)>,
    bytes: u64,
    requests: u64,
    first_bad: Option<u64>,
    error: Option<Error>,
    /// Status of the first failed request.
    bad_status: Option<RespStatus>,
    last_progress: u64,
    timeout_ticks: u64,
    timed_out: bool,
}

impl<'a> Pipe<'a> {
    fn new(
        blk: &'a mut Blk,
        write: bool,
        data: Data,
        order: Order,
        req_len: usize,
        qd: usize,
        tsc_khz: u64,
    ) -> Self {
        let slots = (0..qd.max(1))
            .map(|_| Slot {
                req: BlkReq::default(),
                resp: BlkResp::default(),
                buf: vec![0; req_len],
                token: None,
                offset: 0,
                len: 0,
            })
            .collect();
        Self {
            blk,
            write,
            data,
            order,
            req_len,
            slots,
            in_flight: 0,
            pending: None,
            bytes: 0,
            requests: 0,
            first_bad: None,
            error: None,
            bad_status: None,
            last_progress: arch::rdtsc(),
            timeout_ticks: TIMEOUT_MS * timeout_khz(tsc_khz),
            timed_out: false,
        }
    }

    /// Submits what fits, then completes at most one request. True when all is done.
    fn step(&mut self) -> bool {
        self.submit();
        if !self.complete() && self.in_flight != 0 {
            if arch::rdtsc().wrapping_sub(self.last_progress) > self.timeout_ticks {
                self.timed_out = true;
                self.abandon();
                return true;
            }
            core::hint::spin_loop();
        }
        self.in_flight == 0 && (self.error.is_some() || self.pending.is_none() && self.exhausted())
    }

    /// Gives up on the requests in flight: their buffers are leaked rather than freed,
    /// since the device may still write to them.
    fn abandon(&mut self) {
        core::mem::forget(core::mem::take(&mut self.slots));
        self.in_flight = 0;
    }

    fn exhausted(&self) -> bool {
        match self.order {
            Order::Sequential { next, end } => next >= end,
            Order::Random { left, .. } => left == 0,
        }
    }

    fn submit(&mut self) {
        while self.error.is_none() {
            let Some(slot) = self.slots.iter_mut().find(|s| s.token.is_none()) else {
                return;
            };
            let Some((offset, len)) = self
                .pending
                .take()
                .or_else(|| self.order.next(self.req_len))
            else {
                return;
            };
            slot.offset = offset;
            slot.len = len;
            let sector = (offset / SECTOR_SIZE as u64) as usize;
            let buf = &mut slot.buf[..len];
            let token = if self.write {
                if let Data::Pattern(seed) = self.data {
                    fill_disk_pattern(seed, offset, buf);
                }
                // SAFETY: the request, data and response buffers belong to this slot, are
                // not touched until `complete` pops this token with the same buffers, and
                // do not move (see `Slot`).
                unsafe {
                    self.blk
                        .write_blocks_nb(sector, &mut slot.req, buf, &mut slot.resp)
                }
            } else {
                // SAFETY: as above.
                unsafe {
                    self.blk
                        .read_blocks_nb(sector, &mut slot.req, buf, &mut slot.resp)
                }
            };
            match token {
                Ok(token) => {
                    slot.token = Some(token);
                    self.in_flight += 1;
                }
                Err(Error::QueueFull) => {
                    self.pending = Some((offset, len));
                    return;
                }
                Err(error) => self.error = Some(error),
            }
        }
    }

    /// Completes the next used request, if any.
    fn complete(&mut self) -> bool {
        let Some(token) = self.blk.peek_used() else {
            return false;
        };
        let Some(slot) = self.slots.iter_mut().find(|s| s.token == Some(token)) else {
            self.error = Some(Error::WrongToken);
            self.abandon();
            return true;
        };
        let buf = &mut slot.buf[..slot.len];
        let result = if self.write {
            // SAFETY: the buffers `submit` passed with this token.
            unsafe {
                self.blk
                    .complete_write_blocks(token, &slot.req, buf, &mut slot.resp)
            }
        } else {
            // SAFETY: as above.
            unsafe {
                self.blk
                    .complete_read_blocks(token, &slot.req, buf, &mut slot.resp)
            }
        };
        slot.token = None;
        self.in_flight -= 1;
        self.requests += 1;
        self.last_progress = arch::rdtsc();
        match result {
            Ok(()) => {
                self.bytes += slot.len as u64;
                if let (false, Data::Pattern(seed)) = (self.write, self.data) {
                    if let Some(bad) = check_disk_pattern(seed, slot.offset, buf) {
                        self.first_bad = Some(self.first_bad.map_or(bad, |b| b.min(bad)));
                    }
                }
            }
            Err(error) => {
                self.bad_status.get_or_insert(slot.resp.status());
                self.error.get_or_insert(error);
            }
        }
        true
    }

    /// Runs to the end; returns the TSC ticks it took.
    fn run(&mut self) -> u64 {
        let start = arch::rdtsc();
        while !self.step() {}
        arch::rdtsc() - start
    }

    /// `ok=1` material: everything transferred, no error, and on reads the pattern held.
    fn ok(&self, expected: u64) -> bool {
        !self.timed_out
            && self.error.is_none()
            && self.first_bad.is_none()
            && self.bytes == expected
    }

    /// ` error=... status=...` for the result line (empty when fine).
    fn failure(&self) -> alloc::string::String {
        let mut out = alloc::string::String::new();
        if self.timed_out {
            out.push_str(" error=timeout");
        } else if let Some(error) = self.error {
            out.push_str(" error=");
            out.push_str(error_name(error));
            out.push_str(" status=");
            out.push_str(self.bad_status.map_or("none", status_name));
        }
        out
    }
}

fn status_name(status: RespStatus) -> &'static str {
    match status {
        RespStatus::OK => "ok",
        RespStatus::IO_ERR => "ioerr",
        RespStatus::UNSUPPORTED => "unsupp",
        RespStatus::NOT_READY => "notready",
        _ => "other",
    }
}

pub(crate) fn error_name(error: Error) -> &'static str {
    match error {
        Error::QueueFull => "queue_full",
        Error::NotReady => "not_ready",
        Error::WrongToken => "wrong_token",
        Error::AlreadyUsed => "already_used",
        Error::InvalidParam => "invalid_param",
        Error::DmaError => "dma",
        Error::IoError => "io",
        Error::Unsupported => "unsupported",
        Error::ConfigSpaceTooSmall => "config_space_too_small",
        Error::ConfigSpaceMissing => "config_space_missing",
        _ => "other",
    }
}

/// The TSC rate for timeouts: when the rate is unknown (0), a guess on the high side, so
/// that timeouts come late rather than early.
fn timeout_khz(tsc_khz: u64) -> u64 {
    if tsc_khz == 0 {
        5_000_000
    } else {
        tsc_khz
    }
}

/// MiB/s (integer) for `bytes` in `ticks`.
fn mib_s(bytes: u64, ticks: u64, tsc_khz: u64) -> u64 {
    vireo_cpu_bench::mib_per_s(bytes, ticks, tsc_khz * 1000)
}

fn us(ticks: u64, tsc_khz: u64) -> u64 {
    ticks * 1000 / tsc_khz.max(1)
}

/// Opens device `index`, printing `blk_dev` (or an error line).
fn open(pci: &mut Pci, index: usize, vector: Option<u16>) -> Option<Blk> {
    match virtio::open_blk(pci, index, vector) {
        Ok((blk, function)) => {
            probe!(
                "blk_dev index={index} bdf={} capacity_sectors={} ro={} queue_size={}",
                function.df,
                blk.capacity(),
                u8::from(blk.readonly()),
                blk.virt_queue_size()
            );
            Some(blk)
        }
        Err(error) => {
            probe!("error blk={error} index={index}");
            None
        }
    }
}

/// The byte count a command moves, if the disk is large enough.
fn span(blk: &Blk, options: &BlkOptions) -> Option<u64> {
    let bytes = options.mib * MIB;
    let capacity = blk.capacity() * SECTOR_SIZE as u64;
    if bytes == 0 || bytes > capacity {
        probe!("error blk=too_small bytes={bytes} capacity={capacity}");
        return None;
    }
    Some(bytes)
}

fn req_len(options: &BlkOptions) -> usize {
    (options.req_kib.clamp(1, 4096) * 1024) as usize
}

/// `probe.run=blk-write`: the pattern over the first `mib` MiB, then a flush.
pub fn write(pci: &mut Pci, options: &BlkOptions, tsc_khz: u64) {
    let Some(mut blk) = open(pci, options.dev, None) else {
        return;
    };
    let Some(bytes) = span(&blk, options) else {
        return;
    };
    let order = Order::Sequential {
        next: 0,
        end: bytes,
    };
    let data = Data::Pattern(options.seed);
    let start = arch::rdtsc();
    let mut pipe = Pipe::new(
        &mut blk,
        true,
        data,
        order,
        req_len(options),
        options.qd,
        tsc_khz,
    );
    pipe.run();
    let (ok, done, requests, failure) = (pipe.ok(bytes), pipe.bytes, pipe.requests, pipe.failure());
    drop(pipe);
    let flushed = ok && blk.flush().is_ok();
    let ticks = arch::rdtsc() - start;
    probe!(
        "blk_write bytes={done} ok={} flush_ok={} mib_per_s={} us={} requests={requests} \
         req_kib={} qd={} seed={}{failure}",
        u8::from(ok && flushed),
        u8::from(flushed),
        mib_s(done, ticks, tsc_khz),
        us(ticks, tsc_khz),
        options.req_kib,
        options.qd,
        options.seed,
    );
}

/// `probe.run=blk-verify`: reads the first `mib` MiB back and checks the pattern.
pub fn verify(pci: &mut Pci, options: &BlkOptions, tsc_khz: u64) {
    let Some(mut blk) = open(pci, options.dev, None) else {
        return;
    };
    let Some(bytes) = span(&blk, options) else {
        return;
    };
    let order = Order::Sequential {
        next: 0,
        end: bytes,
    };
    let data = Data::Pattern(options.seed);
    let mut pipe = Pipe::new(
        &mut blk,
        false,
        data,
        order,
        req_len(options),
        options.qd,
        tsc_khz,
    );
    let ticks = pipe.run();
    probe!(
        "blk_verify bytes={} ok={} first_bad={} mib_per_s={} us={} requests={} seed={}{}",
        pipe.bytes,
        u8::from(pipe.ok(bytes)),
        Offset(pipe.first_bad),
        mib_s(pipe.bytes, ticks, tsc_khz),
        us(ticks, tsc_khz),
        pipe.requests,
        options.seed,
        pipe.failure(),
    );
}

/// How often `probe.run=counter` counts: often enough that a save lands between two
/// counts, rarely enough that the serial line (~100 µs a byte here) costs little.
const COUNT_PERIOD_MS: u64 = 20;
/// Every this many counts the counter reads its disk pattern back.
const VERIFY_EVERY: u64 = 25;

/// `probe.run=counter`, the save/restore and migration subject: writes the pattern over
/// the first `mib` MiB of disk `dev`, then counts (`count N` every 20 ms of TSC time) and
/// every 25 counts reads the pattern back through the same driver and queue
/// (`blk_verified n=N ok=1`), until the power button. Across a save and restore the
/// counts go on from where they were, and the disk reads back what was written before.
pub fn counter(pci: &mut Pci, options: &BlkOptions, tsc_khz: u64) {
    let Some(mut blk) = open(pci, options.dev, None) else {
        return;
    };
    let Some(bytes) = span(&blk, options) else {
        return;
    };
    let pass = |blk: &mut Blk, write: bool| {
        let order = Order::Sequential {
            next: 0,
            end: bytes,
        };
        let data = Data::Pattern(options.seed);
        let mut pipe = Pipe::new(
            blk,
            write,
            data,
            order,
            req_len(options),
            options.qd,
            tsc_khz,
        );
        pipe.run();
        pipe.ok(bytes)
    };
    let written = pass(&mut blk, true) && blk.flush().is_ok();
    // Kept for ever: the loop below never returns.
    let dirty = dirty_memory(options.dirty_mib);
    probe!(
        "counter_ready blk_written={} dirty_mib={}",
        u8::from(written),
        (dirty.len() * 8) >> 20
    );
    let period = tsc_khz.max(1) * COUNT_PERIOD_MS;
    let mut next = arch::rdtsc() + period;
    let mut count = 0u64;
    loop {
        if arch::rdtsc() >= next {
            count += 1;
            next += period;
            probe!("count {count}");
            if count.is_multiple_of(VERIFY_EVERY) {
                let ok = pass(&mut blk, false);
                probe!("blk_verified n={count} ok={}", u8::from(ok));
            }
        }
        if crate::acpi::power_button_pressed() {
            probe!("power_button");
            crate::acpi::power_off();
        }
        core::hint::spin_loop();
    }
}

/// `mib` MiB of heap, every word written with a non-zero value (a zero page would not
/// count as dirty: snapshots skip them); empty if the heap has not that much.
fn dirty_memory(mib: u64) -> alloc::vec::Vec<u64> {
    let words = (mib << 20) as usize / 8;
    let mut buffer = alloc::vec::Vec::new();
    if buffer.try_reserve_exact(words).is_err() {
        probe!("error dirty_mib={mib} heap_too_small=1");
        return buffer;
    }
    buffer.extend((0..words as u64).map(|i| (i | 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    buffer
}

/// `none` or the decimal offset.
struct Offset(Option<u64>);

impl core::fmt::Display for Offset {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(offset) => write!(f, "{offset}"),
            None => f.write_str("none"),
        }
    }
}

/// `probe.run=blk-readonly`: the device's RO bit, capacity and ID, then a write that must
/// fail and a read that must work.
pub fn readonly(pci: &mut Pci, options: &BlkOptions, _tsc_khz: u64) {
    let Some(mut blk) = open(pci, options.dev, None) else {
        return;
    };
    let mut id = [0u8; 20];
    let (id_ok, id_len) = match blk.device_id(&mut id) {
        Ok(len) => (true, len),
        Err(_) => (false, 0),
    };
    // Printable, no spaces or quotes, so that the value stays one token.
    let id: alloc::string::String = id[..id_len]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() && b != b'"' {
                b as char
            } else {
                '_'
            }
        })
        .collect();

    let mut sector = vec![0xA5u8; SECTOR_SIZE];
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: the three buffers are locals not touched until the same token is popped
    // below, with the same buffers, before they go out of scope.
    let write = unsafe { blk.write_blocks_nb(0, &mut req, &sector, &mut resp) };
    let status = match write {
        Ok(token) => {
            while blk.peek_used() != Some(token) {
                core::hint::spin_loop();
            }
            // SAFETY: the buffers passed to `write_blocks_nb` for this token.
            let _ = unsafe { blk.complete_write_blocks(token, &req, &sector, &mut resp) };
            status_name(resp.status())
        }
        Err(error) => error_name(error),
    };
    let read_ok = blk.read_blocks(0, &mut sector).is_ok();
    let ok = blk.readonly() && status != "ok" && read_ok;
    probe!(
        "blk_readonly status={status} ro={} capacity_sectors={} id_ok={} id=\"{id}\" read_ok={} ok={}",
        u8::from(blk.readonly()),
        blk.capacity(),
        u8::from(id_ok),
        u8::from(read_ok),
        u8::from(ok),
    );
}

/// `probe.run=blk-two`: devices 0 and 1 at once, seeds `seed` and `seed + 1`: both
/// written concurrently, flushed, read back concurrently and checked.
pub fn two(pci: &mut Pci, options: &BlkOptions, tsc_khz: u64) {
    let (Some(mut a), Some(mut b)) = (open(pci, 0, None), open(pci, 1, None)) else {
        return;
    };
    let (Some(bytes), Some(_)) = (span(&a, options), span(&b, options)) else {
        return;
    };
    let (seed_a, seed_b) = (options.seed, options.seed.wrapping_add(1));
    let len = req_len(options);
    let seq = Order::Sequential {
        next: 0,
        end: bytes,
    };

    let start = arch::rdtsc();
    let mut wa = Pipe::new(
        &mut a,
        true,
        Data::Pattern(seed_a),
        seq,
        len,
        options.qd,
        tsc_khz,
    );
    let mut wb = Pipe::new(
        &mut b,
        true,
        Data::Pattern(seed_b),
        seq,
        len,
        options.qd,
        tsc_khz,
    );
    let (mut done_a, mut done_b) = (false, false);
    while !(done_a && done_b) {
        done_a = done_a || wa.step();
        done_b = done_b || wb.step();
    }
    let write_ok = wa.ok(bytes) && wb.ok(bytes);
    let write_failure = [wa.failure(), wb.failure()].concat();
    drop((wa, wb));
    let flushed = write_ok && a.flush().is_ok() && b.flush().is_ok();
    let write_ticks = arch::rdtsc() - start;

    let start = arch::rdtsc();
    let mut ra = Pipe::new(
        &mut a,
        false,
        Data::Pattern(seed_a),
        seq,
        len,
        options.qd,
        tsc_khz,
    );
    let mut rb = Pipe::new(
        &mut b,
        false,
        Data::Pattern(seed_b),
        seq,
        len,
        options.qd,
        tsc_khz,
    );
    let (mut done_a, mut done_b) = (false, false);
    while !(done_a && done_b) {
        done_a = done_a || ra.step();
        done_b = done_b || rb.step();
    }
    let read_ticks = arch::rdtsc() - start;
    let (ok_a, ok_b) = (ra.ok(bytes), rb.ok(bytes));
    probe!(
        "blk_two bytes={bytes} write_ok={} disk0_ok={} disk1_ok={} disk0_first_bad={} \
         disk1_first_bad={} write_mib_per_s={} read_mib_per_s={} seeds={seed_a},{seed_b} ok={}{}{}{}",
        u8::from(write_ok && flushed),
        u8::from(ok_a),
        u8::from(ok_b),
        Offset(ra.first_bad),
        Offset(rb.first_bad),
        mib_s(2 * bytes, write_ticks, tsc_khz),
        mib_s(2 * bytes, read_ticks, tsc_khz),
        u8::from(write_ok && flushed && ok_a && ok_b),
        write_failure,
        ra.failure(),
        rb.failure(),
    );
}

/// `probe.run=blk-bench`: sequential 1 MiB writes then reads over `mib` MiB, then
/// `rand` random 4 KiB reads in that span at queue depth `qd` and at depth 1.
pub fn bench(pci: &mut Pci, options: &BlkOptions, tsc_khz: u64) {
    let Some(mut blk) = open(pci, options.dev, None) else {
        return;
    };
    let Some(bytes) = span(&blk, options) else {
        return;
    };
    let seq = Order::Sequential {
        next: 0,
        end: bytes,
    };
    let qd = options.qd;
    let mut failures = alloc::string::String::new();
    let mut requests = 0;

    let mut pipe = Pipe::new(&mut blk, true, Data::Any, seq, BENCH_SEQ_LEN, qd, tsc_khz);
    let write_ticks = pipe.run();
    let write_ok = pipe.ok(bytes);
    failures.push_str(&pipe.failure());
    requests += pipe.requests;
    drop(pipe);
    let _ = blk.flush();

    let mut pipe = Pipe::new(&mut blk, false, Data::Any, seq, BENCH_SEQ_LEN, qd, tsc_khz);
    let read_ticks = pipe.run();
    let read_ok = pipe.ok(bytes);
    failures.push_str(&pipe.failure());
    requests += pipe.requests;
    drop(pipe);

    let mut rand_iops = [0u64; 2];
    let mut rand_ok = true;
    for (i, depth) in [qd, 1].into_iter().enumerate() {
        let order = Order::Random {
            left: options.rand,
            state: 0x9E37_79B9_7F4A_7C15,
            span: bytes,
        };
        let mut pipe = Pipe::new(
            &mut blk,
            false,
            Data::Any,
            order,
            BENCH_RAND_LEN,
            depth,
            tsc_khz,
        );
        let ticks = pipe.run();
        rand_ok &= pipe.ok(options.rand * BENCH_RAND_LEN as u64);
        failures.push_str(&pipe.failure());
        requests += pipe.requests;
        rand_iops[i] = pipe.requests * tsc_khz * 1000 / ticks.max(1);
    }
    probe!(
        "blk_bench bytes={bytes} seq_write_mib_s={} seq_read_mib_s={} rand4k_read_iops={} \
         rand4k_qd1_read_iops={} requests={requests} qd={qd} rand={} ok={}{failures}",
        mib_s(bytes, write_ticks, tsc_khz),
        mib_s(bytes, read_ticks, tsc_khz),
        rand_iops[0],
        rand_iops[1],
        options.rand,
        u8::from(write_ok && read_ok && rand_ok),
    );
}

/// The vector the MSI-X test programs (any free one above the exceptions).
const MSIX_VECTOR: u8 = 0x41;
/// MSI-X table entry the request queue uses.
const MSIX_ENTRY: u16 = 0;
/// Requests whose completions are counted.
const MSIX_REQUESTS: u32 = 8;
/// How long to wait for an interrupt, and how long to watch for one that must not come.
const IRQ_WAIT_MS: u64 = 200;
const IRQ_QUIET_MS: u64 = 50;
/// x2APIC registers: ID, spurious-interrupt vector (bit 8: APIC enabled), LVT LINT0/1.
const X2APIC_ID: u32 = 0x802;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_LVT_LINT0: u32 = 0x835;
const X2APIC_LVT_LINT1: u32 = 0x836;
const LVT_MASKED: u64 = 1 << 16;
/// MSI address: the local APIC's range, destination APIC ID in bits 12..=19.
const MSI_ADDRESS: u64 = 0xFEE0_0000;

/// Interrupts seen per vector. Written at CPL0 by [`count_interrupt`].
static IRQ_COUNTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];

/// The interrupt handler: runs at CPL0, interpreted under PVM, no SSE; one locked
/// increment (the `& 0xFF` lets the compiler drop the bounds check).
fn count_interrupt(frame: &mut TrapFrame) {
    IRQ_COUNTS[frame.vector as usize & 0xFF].fetch_add(1, Ordering::Relaxed);
}

fn total_interrupts() -> u32 {
    IRQ_COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Spins until `done` or `ms` milliseconds pass; true if `done`.
fn wait_until(ms: u64, tsc_khz: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = arch::rdtsc();
    let limit = ms * timeout_khz(tsc_khz);
    loop {
        if done() {
            return true;
        }
        if arch::rdtsc().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// `probe.run=blk-msix`: completions raise exactly the programmed vector; a masked entry
/// holds its message (PBA bit set, nothing delivered) until unmasked.
pub fn msix(pci: &mut Pci, options: &BlkOptions, tsc_khz: u64) {
    let Some(function) = virtio::find(
        pci,
        virtio_drivers::transport::DeviceType::Block,
        options.dev,
    ) else {
        probe!("error blk=no_such_blk_device index={}", options.dev);
        return;
    };
    let Some(msix) = pci.msix(&function) else {
        probe!("error blk_msix=no_msix_capability");
        return;
    };
    // The local APIC: software-enabled (SVR bit 8, spurious vector 0xFF), LINT0/1 masked
    // (no 8259 behind them on these machines, but a firmware might have left ExtINT).
    let apic_id = rdmsr(X2APIC_ID) as u32;
    wrmsr(X2APIC_SVR, 0x1FF);
    wrmsr(X2APIC_LVT_LINT0, LVT_MASKED);
    wrmsr(X2APIC_LVT_LINT1, LVT_MASKED);
    for vector in 32..=255u8 {
        idt::set_handler(vector, count_interrupt);
    }
    // Table entry first (unmasked), then MSI-X on: from then on the function signals by
    // message only. Then the device, whose queue gets the entry during setup.
    msix.program(
        MSIX_ENTRY,
        MSI_ADDRESS | u64::from(apic_id & 0xFF) << 12,
        u32::from(MSIX_VECTOR),
        false,
    );
    msix.set_enabled(pci, true);
    let control = msix.control(pci);
    let Some(mut blk) = open(pci, options.dev, Some(MSIX_ENTRY)) else {
        return;
    };
    let readback = virtio::queue_vector_readback();
    if readback != Some(MSIX_ENTRY) {
        probe!(
            "error blk_msix=queue_vector_refused readback={:#x}",
            readback.unwrap_or(0xFFFF)
        );
        return;
    }
    arch::enable_interrupts();

    // 1. Interrupt-driven requests, one at a time: each completion raises our vector.
    // The driver waits for the interrupt before it pops the used entry: popping first
    // moves `used_event` past the completion, and a device honouring EVENT_IDX then
    // rightly sends no interrupt for it.
    let mut buf = vec![0u8; 4096];
    let mut io_ok = true;
    for i in 0..MSIX_REQUESTS {
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        // SAFETY: `req`, `buf` and `resp` stay untouched until the token is completed
        // below with the same buffers.
        match unsafe { blk.read_blocks_nb(i as usize * 8, &mut req, &mut buf, &mut resp) } {
            Ok(token) => {
                let interrupted = wait_until(IRQ_WAIT_MS, tsc_khz, || total_interrupts() > i);
                let used = interrupted
                    && wait_until(IRQ_WAIT_MS, tsc_khz, || blk.peek_used() == Some(token));
                // SAFETY: the buffers passed to `read_blocks_nb` for this token.
                io_ok &= used
                    && unsafe { blk.complete_read_blocks(token, &req, &mut buf, &mut resp) }
                        .is_ok();
            }
            Err(_) => io_ok = false,
        }
    }
    wait_until(IRQ_QUIET_MS, tsc_khz, || false);
    let on_vector = IRQ_COUNTS[usize::from(MSIX_VECTOR)].load(Ordering::Relaxed);
    let total = total_interrupts();
    let unhandled = idt::unhandled_interrupts();

    // 2. Masked: the completion must not interrupt; the PBA shows it pending.
    msix.set_masked(MSIX_ENTRY, true);
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` are not touched until this token is popped below
    // with the same buffers.
    let token = unsafe { blk.read_blocks_nb(0, &mut req, &mut buf, &mut resp) };
    let masked_done = match token {
        Ok(token) => wait_until(IRQ_WAIT_MS, tsc_khz, || blk.peek_used() == Some(token)),
        Err(_) => false,
    };
    let arrived_while_masked = wait_until(IRQ_QUIET_MS, tsc_khz, || total_interrupts() > total);
    let masked_pending = msix.pending(MSIX_ENTRY);
    if let (Ok(token), true) = (token, masked_done) {
        // SAFETY: the buffers passed to `read_blocks_nb` for this token.
        io_ok &= unsafe { blk.complete_read_blocks(token, &req, &mut buf, &mut resp) }.is_ok();
    } else {
        io_ok = false;
    }

    // 3. Unmasked: the pending message is delivered, and the pending bit clears.
    let before_unmask = total_interrupts();
    msix.set_masked(MSIX_ENTRY, false);
    let delivered = wait_until(IRQ_WAIT_MS, tsc_khz, || {
        IRQ_COUNTS[usize::from(MSIX_VECTOR)].load(Ordering::Relaxed) > on_vector
    });
    wait_until(IRQ_QUIET_MS, tsc_khz, || false);
    let after_unmask = total_interrupts() - before_unmask;
    let pending_after = msix.pending(MSIX_ENTRY);
    arch::disable_interrupts();

    let ok = io_ok
        && on_vector == MSIX_REQUESTS
        && total == MSIX_REQUESTS
        && unhandled == 0
        && !arrived_while_masked
        && masked_pending
        && delivered
        && after_unmask == 1
        && !pending_after;
    probe!(
        "blk_msix vector={MSIX_VECTOR} entry={MSIX_ENTRY} table_entries={} apic_id={apic_id} \
         control={control:#06x} requests={MSIX_REQUESTS} interrupts={on_vector} \
         other_vectors={} unhandled={unhandled} masked_quiet={} masked_pending={} \
         delivered_after_unmask={} after_unmask={after_unmask} pending_after_unmask={} io_ok={} ok={}",
        msix.entries,
        total - on_vector,
        u8::from(!arrived_while_masked),
        u8::from(masked_pending),
        u8::from(delivered),
        u8::from(pending_after),
        u8::from(io_ok),
        u8::from(ok),
    );
}

/// `probe.run=pci`: the enumeration lines are all there is.
pub fn pci_only(_pci: &mut Pci, _options: &BlkOptions, _tsc_khz: u64) {}

/// A device test: runs on the enumerated bus with the options and the TSC rate.
pub type DeviceTest = fn(&mut Pci, &BlkOptions, u64);

/// Runs a device test: PCI first (enumeration lines), then `test`.
pub fn with_pci(host: &pci::HostOptions, options: &BlkOptions, tsc_khz: u64, test: DeviceTest) {
    if let Some(mut pci) = pci::init(host, tsc_khz) {
        test(&mut pci, options, tsc_khz);
    }
}
