//! Save/restore benchmark (issue 8): `vireo-vmm`'s `save` and `--restore` against QEMU's
//! equivalent on the same probe guest, in the same run, at 512 MiB and 2 GiB, 1 vCPU,
//! with the same 16 MiB virtio-blk disk.
//!
//! `probe.run=counter` (its disk pattern, then `count N` every 20 ms), idle (it touched
//! little memory) and with 400 MiB of memory written first (`probe.dirty_mib`): save
//! times, the file's size, restore → the guest counting again (its first instructions
//! after the restore print that line), and the round trip the user sees.
//! `probe.run=gpu-draw` on a 1024x768 display: restore → the first screenshot that shows
//! its picture (QEMU: virtio-gpu-pci and `screendump`). `probe.run=agent` with vsock:
//! restore → a new agent client's ping answered (the guest responsive on vsock; QEMU
//! would need vhost-vsock, which this host's kernel lacks, so Vireo only).
//!
//! QEMU does what `virsh save` / `virsh restore` do: no bandwidth limit, `stop` then `migrate
//! "exec:cat > FILE && sync FILE"` over QMP (the `sync` gives its file the durability
//! Vireo's save has: Vireo fsyncs before it answers), `quit`; and `-incoming "exec:cat
//! FILE"`, `cont` once the stream is loaded (a guest saved stopped comes back stopped).
//! Restores are timed with the file in the page cache (just written) and out of it
//! (`POSIX_FADV_DONTNEED` on the file alone): Vireo maps guest RAM from the file lazily,
//! QEMU reads the whole stream before the guest runs.
//!
//! Live migration of the counter guest to a second VMM on this host over a Unix socket
//! (QEMU: `-incoming unix:`, `migrate` with no bandwidth limit): the request → done, and
//! how long the guest's 20 ms count stood still across the move.
//!
//! `cargo bench -p vireo-e2e --bench snapshot` (VIREO_BENCH_RUNS=N rounds, default 3).
//! The files go to `$TMPDIR`: on a disk, the saves of a dirty guest are the disk's speed
//! (both VMMs sync); `TMPDIR=/dev/shm` measures the VMMs alone.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vireo_e2e::engine::{connect_control, s, vmm_binary};
use vireo_e2e::probe_guest::probe_guest_elf;
use vireo_e2e::qemu::{qemu_available, qemu_probe_command, virtio_blk_args, DiskFormat};
use vireo_e2e::temp::TempDir;
use vireo_vmm::control::client::Control;
use vireo_vmm::control::protocol::{Request, Response};
use vireo_vmm::exit::code;

const SIZES_MIB: [u64; 2] = [512, 2048];
const DISK_MIB: u64 = 16;
const COUNTER: &str = "probe.run=counter probe.blk_mib=2 probe.blk_seed=77";
/// Longer than the bench runs: the guest is still hashing when it is saved.
const DIRTY: &str = "probe.run=counter probe.blk_mib=2 probe.blk_seed=77 probe.dirty_mib=400";
const DIRTY_MIB: u64 = 400;
/// QEMU's `max-bandwidth` for a save: no limit in practice (1 TiB/s).
const UNLIMITED_BYTES_PER_S: u64 = 1 << 40;
const BOOT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(60);

/// A VMM process: its stdout lines as they come, timestamped.
struct Vm {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
    /// When the highest count so far came, and that count.
    last_at: Option<(Instant, u64)>,
}

impl Vm {
    fn spawn(cmd: &mut Command) -> Vm {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Vm {
            child,
            lines,
            seen: Vec::new(),
            last_at: None,
        }
    }

    fn take(&mut self, at: Instant, line: String) {
        if let Some(n) = count_of(&line) {
            if self.last_at.is_none_or(|(_, last)| n > last) {
                self.last_at = Some((at, n));
            }
        }
        self.seen.push(line);
    }

    /// When the first line (from now on) matching `hit` came.
    fn wait_line(&mut self, what: &str, hit: impl Fn(&str) -> bool) -> Instant {
        let end = Instant::now() + BOOT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let matched = hit(&line);
                    self.take(at, line);
                    if matched {
                        return at;
                    }
                }
                Err(_) => panic!("no {what}; last lines: {:#?}", self.tail()),
            }
        }
    }

    /// The first `count N` with N above `after`.
    fn wait_count_above(&mut self, after: u64) -> Instant {
        self.wait_line("count", |l| count_of(l).is_some_and(|n| n > after))
    }

    fn last_count(&mut self) -> u64 {
        while let Ok((at, line)) = self.lines.try_recv() {
            self.take(at, line);
        }
        self.seen
            .iter()
            .filter_map(|l| count_of(l))
            .max()
            .unwrap_or(0)
    }

    /// When the process ended (polled every 0.5 ms), and how.
    fn wait_exit(&mut self) -> (Instant, ExitStatus) {
        let end = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return (Instant::now(), status);
            }
            assert!(Instant::now() < end, "the VMM did not exit");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn tail(&self) -> &[String] {
        &self.seen[self.seen.len().saturating_sub(10)..]
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// N of a `VIREO-PROBE count N` line (a save can cut a line; a cut one is no count).
fn count_of(line: &str) -> Option<u64> {
    line.strip_prefix("VIREO-PROBE count ")?.trim().parse().ok()
}

/// A dirty guest's save must have found most of its buffer: else the row measures less
/// than it says.
fn check_dirty(save: &Save, vmm: &str) {
    assert!(
        save.stored >= (DIRTY_MIB << 20) * 95 / 100,
        "{vmm}: only {} MiB stored of a guest that wrote {DIRTY_MIB} MiB",
        save.stored >> 20
    );
}

/// Waits for the counter guest to be ready (its disk written, its memory too if it was
/// asked to) and counting.
fn wait_counting(vm: &mut Vm, cmdline: &str) {
    vm.wait_line("counter_ready", |l| {
        l.contains("counter_ready blk_written=1")
    });
    if cmdline == DIRTY {
        let line = vm.seen.last().cloned().unwrap_or_default();
        assert!(
            line.contains(&format!("dirty_mib={DIRTY_MIB}")),
            "the guest did not write its memory: {line}"
        );
    }
    vm.wait_count_above(5);
}

/// What one save measured.
#[derive(Clone, Copy)]
struct Save {
    /// Request → the file whole and synced (Vireo: the request answered).
    file: Duration,
    /// Request → the VMM process gone.
    exit: Duration,
    apparent: u64,
    stored: u64,
}

/// One guest at one size, under one VMM.
#[derive(Default)]
struct Sample {
    save: Vec<Save>,
    /// Start → the guest's next count, file in the page cache.
    restore_warm: Vec<Duration>,
    /// The same with the file dropped from the page cache first.
    restore_cold: Vec<Duration>,
    /// Save request → the restored guest's next count, restore started at once.
    round_trip: Vec<Duration>,
}

fn file_sizes(path: &Path) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.len(), meta.blocks() * 512)
}

/// Drops `path`'s pages from the page cache (they are clean: both saves synced it).
fn uncache(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: plain syscall on an fd we own; advice only, no memory involved.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Where one size's files live.
struct Bench {
    dir: PathBuf,
    mem_mib: u64,
}

impl Bench {
    fn disk(&self, vmm: &str) -> PathBuf {
        let disk = self.dir.join(format!("{vmm}-disk.img"));
        if !disk.exists() {
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(DISK_MIB << 20))
                .unwrap();
        }
        disk
    }

    fn snap(&self, vmm: &str) -> PathBuf {
        self.dir.join(format!("{vmm}-{}.snap", self.mem_mib))
    }
}

// ---- Vireo ----

fn vireo_args(b: &Bench, cmdline: &str) -> Vec<String> {
    [
        "--kernel",
        s(&probe_guest_elf()),
        "--cpus",
        "1",
        "--memory",
        &format!("{}M", b.mem_mib),
        "--disk",
        &format!("path={}", b.disk("vireo").display()),
        "--control-socket",
        s(&b.dir.join("control.sock")),
        "--cmdline",
        cmdline,
    ]
    .map(String::from)
    .to_vec()
}

fn control(b: &Bench) -> Control {
    connect_control(&b.dir.join("control.sock"), BOOT, STEP)
}

/// Saves the running engine `vm`; returns the measure and when the request went out.
fn vireo_save(b: &Bench, vm: &mut Vm, snap: &Path) -> (Save, Instant) {
    let mut control = control(b);
    let start = Instant::now();
    let answer = control
        .ask(&Request::Save {
            path: s(snap).into(),
        })
        .unwrap();
    let file = start.elapsed();
    assert_eq!(answer, Response::Ok, "save");
    let (exited, status) = vm.wait_exit();
    assert_eq!(status.code(), Some(code::SAVED), "{:#?}", vm.tail());
    let (apparent, stored) = file_sizes(snap);
    let save = Save {
        file,
        exit: exited - start,
        apparent,
        stored,
    };
    (save, start)
}

/// Restores the counter guest and times start → its next count; powers it off.
fn vireo_restore(b: &Bench, cmdline: &str, last: u64) -> (Instant, Instant) {
    let start = Instant::now();
    let mut vm = Vm::spawn(
        Command::new(vmm_binary())
            .args(vireo_args(b, cmdline))
            .args(["--restore", s(&b.snap("vireo"))]),
    );
    let counting = vm.wait_count_above(last);
    assert_eq!(control(b).ask(&Request::PowerOff {}).unwrap(), Response::Ok);
    vm.wait_exit();
    (start, counting)
}

fn vireo_counter(b: &Bench, cmdline: &str, out: &mut Sample) {
    let mut vm = Vm::spawn(Command::new(vmm_binary()).args(vireo_args(b, cmdline)));
    wait_counting(&mut vm, cmdline);
    let (save, asked) = vireo_save(b, &mut vm, &b.snap("vireo"));
    if cmdline == DIRTY {
        check_dirty(&save, "vireo");
    }
    let last = vm.last_count();
    let (start, counting) = vireo_restore(b, cmdline, last);
    out.save.push(save);
    out.restore_warm.push(counting - start);
    out.round_trip.push(counting - asked);
    uncache(&b.snap("vireo"));
    let (start, counting) = vireo_restore(b, cmdline, last);
    out.restore_cold.push(counting - start);
}

/// The agent guest saved and restored: start → a fresh client's ping answered over
/// the hybrid vsock socket (the socket must be there, the guest must take the
/// connection after its transport reset, and answer the hello and the ping).
fn vireo_agent_restore(b: &Bench) -> Duration {
    use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint};
    let vsock = b.dir.join("v.sock");
    let mut args = vireo_args(b, "probe.run=agent");
    args.extend([
        "--vsock".into(),
        format!("cid=3,socket={}", vsock.display()),
    ]);
    let mut vm = Vm::spawn(Command::new(vmm_binary()).args(&args));
    vm.wait_line("agent_ready", |l| l.contains("agent_ready"));
    let snap = b.snap("vireo-agent");
    vireo_save(b, &mut vm, &snap);
    let start = Instant::now();
    let mut restored = Vm::spawn(
        Command::new(vmm_binary())
            .args(&args)
            .args(["--restore", s(&snap)]),
    );
    // Retrying every millisecond: the row measures the guest, not the client's backoff.
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        ..ClientConfig::default()
    };
    let endpoint = Endpoint::HybridVsock {
        path: vsock,
        port: vireo_guest_agent::protocol::AGENT_VSOCK_PORT,
    };
    let answered = loop {
        let ping = AgentClient::connect(endpoint.clone(), config.clone())
            .ok()
            .and_then(|client| client.ping().ok());
        if ping.is_some() {
            break start.elapsed();
        }
        assert!(start.elapsed() < STEP, "the restored agent never answered");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(control(b).ask(&Request::PowerOff {}).unwrap(), Response::Ok);
    restored.wait_exit();
    let _ = std::fs::remove_file(&snap);
    answered
}

// ---- QEMU ----

/// A QMP connection: one command at a time, events skipped.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let end = Instant::now() + BOOT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => panic!("QMP socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        stream.set_read_timeout(Some(STEP)).unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.read();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        qmp.ask("qmp_capabilities", json!({}));
        qmp
    }

    fn read(&mut self) -> Value {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("QMP reply");
            assert!(n > 0, "QMP closed");
            let value: Value = serde_json::from_str(&line).expect("QMP speaks JSON");
            if value.get("event").is_none() {
                return value;
            }
        }
    }

    /// Runs `command`; returns its `return` value, panics on an error reply.
    fn ask(&mut self, command: &str, arguments: Value) -> Value {
        self.try_ask(command, arguments)
            .unwrap_or_else(|reply| panic!("QMP {command}: {reply}"))
    }

    /// Runs `command`: its `return` value, or the whole reply if it is an error.
    fn try_ask(&mut self, command: &str, arguments: Value) -> Result<Value, Value> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").unwrap();
        let reply = self.read();
        reply.get("return").cloned().ok_or(reply)
    }

    /// Polls `query` until its `status` is not `while_status`; returns that status.
    fn wait_status(&mut self, query: &str, while_status: &[&str]) -> String {
        let end = Instant::now() + STEP;
        loop {
            let reply = self.ask(query, json!({}));
            let status = reply["status"].as_str().unwrap_or_default().to_owned();
            if !while_status.contains(&status.as_str()) {
                return status;
            }
            assert!(Instant::now() < end, "{query} stuck at {status}");
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// The probe guest under QEMU with a QMP socket.
fn qemu_base(b: &Bench, cmdline: &str) -> Command {
    let mut cmd = qemu_probe_command(&probe_guest_elf(), cmdline, 1, b.mem_mib);
    let qmp = b.dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    cmd
}

/// With the disk, as Vireo's counter guest has it.
fn qemu_command(b: &Bench, cmdline: &str) -> Command {
    let mut cmd = qemu_base(b, cmdline);
    cmd.args(virtio_blk_args(
        0,
        &b.disk("qemu"),
        DiskFormat::Raw,
        false,
        None,
    ));
    cmd
}

/// `stop`, `migrate` to the file, `quit`, as `virsh save` does.
fn qemu_save(vm: &mut Vm, qmp: &mut Qmp, snap: &Path) -> (Save, Instant) {
    let done = snap.with_extension("done");
    let _ = std::fs::remove_file(&done);
    let uri = format!(
        "exec:cat > {0} && sync {0} && touch {1}",
        snap.display(),
        done.display()
    );
    // QEMU throttles a migration to 128 MiB/s by default; `virsh save` lifts the limit.
    qmp.ask(
        "migrate-set-parameters",
        json!({ "max-bandwidth": UNLIMITED_BYTES_PER_S }),
    );
    let start = Instant::now();
    qmp.ask("stop", json!({}));
    qmp.ask("migrate", json!({ "uri": uri }));
    let status = qmp.wait_status("query-migrate", &["setup", "active", "device"]);
    assert_eq!(status, "completed", "QEMU's migration");
    while !done.exists() {
        assert!(start.elapsed() < STEP, "QEMU's file was not finished");
        std::thread::sleep(Duration::from_micros(500));
    }
    let file = start.elapsed();
    qmp.ask("quit", json!({}));
    let (exited, _) = vm.wait_exit();
    let (apparent, stored) = file_sizes(snap);
    let save = Save {
        file,
        exit: exited - start,
        apparent,
        stored,
    };
    (save, start)
}

/// `-incoming` from the file, `cont` once loaded; start → the guest's next count.
fn qemu_restore(b: &Bench, cmdline: &str, last: u64) -> (Instant, Instant) {
    let start = Instant::now();
    let mut cmd = qemu_command(b, cmdline);
    cmd.arg("-incoming")
        .arg(format!("exec:cat {}", b.snap("qemu").display()));
    let mut vm = Vm::spawn(&mut cmd);
    let mut qmp = Qmp::connect(&b.dir.join("qmp.sock"));
    let status = qmp.wait_status("query-status", &["inmigrate"]);
    assert_eq!(status, "paused", "QEMU after loading the stream");
    qmp.ask("cont", json!({}));
    let counting = vm.wait_count_above(last);
    qmp.ask("quit", json!({}));
    vm.wait_exit();
    (start, counting)
}

fn qemu_counter(b: &Bench, cmdline: &str, out: &mut Sample) {
    let mut vm = Vm::spawn(&mut qemu_command(b, cmdline));
    let mut qmp = Qmp::connect(&b.dir.join("qmp.sock"));
    wait_counting(&mut vm, cmdline);
    let (save, asked) = qemu_save(&mut vm, &mut qmp, &b.snap("qemu"));
    if cmdline == DIRTY {
        check_dirty(&save, "qemu");
    }
    let last = vm.last_count();
    let (start, counting) = qemu_restore(b, cmdline, last);
    out.save.push(save);
    out.restore_warm.push(counting - start);
    out.round_trip.push(counting - asked);
    uncache(&b.snap("qemu"));
    let (start, counting) = qemu_restore(b, cmdline, last);
    out.restore_cold.push(counting - start);
}

// ---- live migration: source -> destination on this host, over a Unix socket ----

/// One live migration as measured from outside.
#[derive(Clone, Copy)]
struct Migration {
    /// The request → the source VMM done (Vireo: answered; QEMU: `completed`).
    total: Duration,
    /// The longest silence of the guest's 20 ms count across the move, less one
    /// period: how long the guest stood still, as the user sees it.
    blackout: Duration,
}

/// Takes the source's last count and its time, then waits for the destination's next.
fn blackout(source: &mut Vm, destination: &mut Vm) -> Duration {
    source.wait_exit();
    source.last_count();
    let (left, last) = source.last_at.expect("the source counted");
    let arrived = destination.wait_count_above(last);
    (arrived - left).saturating_sub(Duration::from_millis(20))
}

fn vireo_migration(b: &Bench, cmdline: &str, out: &mut Vec<Migration>) {
    let mig = b.dir.join("mig.sock");
    let mut source = Vm::spawn(Command::new(vmm_binary()).args(vireo_args(b, cmdline)));
    let mut dest_args = vireo_args(b, cmdline);
    let at = dest_args
        .iter()
        .position(|a| a == "--control-socket")
        .unwrap();
    dest_args[at + 1] = s(&b.dir.join("dest.sock")).into();
    dest_args.extend(["--incoming".into(), format!("unix:{}", mig.display())]);
    let mut destination = Vm::spawn(Command::new(vmm_binary()).args(dest_args));
    wait_counting(&mut source, cmdline);
    let start = Instant::now();
    let answer = control(b)
        .ask(&Request::Migrate {
            to: format!("unix:{}", mig.display()),
        })
        .unwrap();
    let total = start.elapsed();
    assert_eq!(answer, Response::Ok, "vireo migrate");
    let blackout = blackout(&mut source, &mut destination);
    out.push(Migration { total, blackout });
    let mut dest_control = Control::connect(&b.dir.join("dest.sock")).unwrap();
    let _ = dest_control.ask(&Request::PowerOff {});
    destination.wait_exit();
}

fn qemu_migration(b: &Bench, cmdline: &str, out: &mut Vec<Migration>) {
    let mig = b.dir.join("qemu-mig.sock");
    let _ = std::fs::remove_file(&mig);
    let mut source = Vm::spawn(&mut qemu_command(b, cmdline));
    let mut qmp = Qmp::connect(&b.dir.join("qmp.sock"));
    // The destination: the same VM (the same disk, which QEMU keeps inactive until the
    // migration ends), its own QMP socket, waiting on the Unix socket.
    let mut cmd = qemu_command(b, cmdline);
    let dest_qmp = b.dir.join("dest-qmp.sock");
    let _ = std::fs::remove_file(&dest_qmp);
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dest_qmp.display()))
        .arg("-incoming")
        .arg(format!("unix:{}", mig.display()));
    let mut destination = Vm::spawn(&mut cmd);
    let mut dest = Qmp::connect(&dest_qmp);
    wait_counting(&mut source, cmdline);
    qmp.ask(
        "migrate-set-parameters",
        json!({ "max-bandwidth": UNLIMITED_BYTES_PER_S }),
    );
    let start = Instant::now();
    qmp.ask(
        "migrate",
        json!({ "uri": format!("unix:{}", mig.display()) }),
    );
    let status = qmp.wait_status("query-migrate", &["setup", "active", "device"]);
    let total = start.elapsed();
    assert_eq!(status, "completed", "QEMU's live migration");
    qmp.ask("quit", json!({}));
    let blackout = blackout(&mut source, &mut destination);
    out.push(Migration { total, blackout });
    dest.ask("quit", json!({}));
    destination.wait_exit();
}

fn migration_rows(v: &[Migration], q: &[Migration]) {
    let f = |m: &[Migration], get: fn(&Migration) -> Duration| {
        m.iter()
            .map(|x| get(x).as_secs_f64() * 1e3)
            .collect::<Vec<_>>()
    };
    row(
        "migrate: request -> done (ms)",
        f(v, |m| m.total),
        f(q, |m| m.total),
    );
    row(
        "migrate: guest stood still (ms)",
        f(v, |m| m.blackout),
        f(q, |m| m.blackout),
    );
}

// ---- a restore with a display: start -> the first screenshot of the guest's picture ----

const SCREEN: &str = "1024x768";
/// Draws its test picture once, then idles.
const DRAW: &str = "probe.run=gpu-draw";

/// Whether `rgb` (pixels of `samples` bytes, colour first) has a pixel that is not black.
fn drawn(rgb: &[u8], samples: usize) -> bool {
    rgb.chunks(samples)
        .any(|px| px[..samples.min(3)].iter().any(|&c| c != 0))
}

/// A PNG screenshot that shows something.
fn png_drawn(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(mut reader) = png::Decoder::new(BufReader::new(file)).read_info() else {
        return false;
    };
    let mut buf = vec![0; reader.output_buffer_size()];
    let Ok(info) = reader.next_frame(&mut buf) else {
        return false;
    };
    drawn(&buf[..info.buffer_size()], info.color_type.samples())
}

/// A binary PPM (`P6\nW H\n255\n`, what QEMU's `screendump` writes) that shows something.
fn ppm_drawn(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let pixels = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(2)
        .map(|(i, _)| &bytes[i + 1..]);
    pixels.is_some_and(|p| drawn(p, 3))
}

fn vireo_display_args(b: &Bench) -> Vec<String> {
    [
        "--kernel",
        s(&probe_guest_elf()),
        "--cpus",
        "1",
        "--memory",
        &format!("{}M", b.mem_mib),
        "--display",
        SCREEN,
        "--control-socket",
        s(&b.dir.join("control.sock")),
        "--cmdline",
        DRAW,
    ]
    .map(String::from)
    .to_vec()
}

fn vireo_display(b: &Bench, out: &mut Vec<Duration>) {
    let snap = b.snap("vireo-display");
    let mut vm = Vm::spawn(Command::new(vmm_binary()).args(vireo_display_args(b)));
    vm.wait_line("IDLE", |l| l.contains("VIREO-PROBE IDLE"));
    vireo_save(b, &mut vm, &snap);
    let shot = b.dir.join("vireo-shot.png");
    let _ = std::fs::remove_file(&shot);
    let start = Instant::now();
    let mut vm = Vm::spawn(
        Command::new(vmm_binary())
            .args(vireo_display_args(b))
            .args(["--restore", s(&snap)]),
    );
    let mut control = control(b);
    loop {
        let answer = control.ask(&Request::Screenshot {
            path: s(&shot).into(),
        });
        if matches!(answer, Ok(Response::Screenshot { .. })) && png_drawn(&shot) {
            break;
        }
        assert!(start.elapsed() < STEP, "no screenshot: {answer:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    out.push(start.elapsed());
    assert_eq!(control.ask(&Request::PowerOff {}).unwrap(), Response::Ok);
    vm.wait_exit();
}

fn qemu_display_command(b: &Bench) -> Command {
    let (width, height) = SCREEN.split_once('x').expect("WxH");
    let mut cmd = qemu_base(b, DRAW);
    cmd.arg("-device")
        .arg(format!("virtio-gpu-pci,xres={width},yres={height}"));
    cmd
}

fn qemu_display(b: &Bench, out: &mut Vec<Duration>) {
    let snap = b.snap("qemu-display");
    let mut vm = Vm::spawn(&mut qemu_display_command(b));
    let mut qmp = Qmp::connect(&b.dir.join("qmp.sock"));
    vm.wait_line("IDLE", |l| l.contains("VIREO-PROBE IDLE"));
    qemu_save(&mut vm, &mut qmp, &snap);
    let shot = b.dir.join("qemu-shot.ppm");
    let _ = std::fs::remove_file(&shot);
    let start = Instant::now();
    let mut cmd = qemu_display_command(b);
    cmd.arg("-incoming")
        .arg(format!("exec:cat {}", snap.display()));
    let mut vm = Vm::spawn(&mut cmd);
    let mut qmp = Qmp::connect(&b.dir.join("qmp.sock"));
    qmp.wait_status("query-status", &["inmigrate"]);
    qmp.ask("cont", json!({}));
    loop {
        let answer = qmp.try_ask("screendump", json!({ "filename": s(&shot) }));
        if answer.is_ok() && ppm_drawn(&shot) {
            break;
        }
        assert!(start.elapsed() < STEP, "no screendump: {answer:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    out.push(start.elapsed());
    qmp.ask("quit", json!({}));
    vm.wait_exit();
}

// ---- the table ----

/// Median, min, max.
fn stats(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

fn cell(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((median, min, max)) => format!("{median:>8.1} ({min:.1}-{max:.1})"),
        None => format!("{:>8}", "n/a"),
    }
}

fn row(name: &str, vireo: Vec<f64>, qemu: Vec<f64>) {
    let (v, q) = (stats(vireo), stats(qemu));
    let ratio = match (v, q) {
        (Some(v), Some(q)) if q.0 > 0.0 => format!("{:.2}x", v.0 / q.0),
        _ => "n/a".into(),
    };
    println!("  {name:<34} {:<24} {:<24} {ratio:>8}", cell(v), cell(q));
}

fn ms(d: &[Duration]) -> Vec<f64> {
    d.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
}

fn save_rows(v: &Sample, q: &Sample) {
    let f = |s: &Sample, get: fn(&Save) -> f64| s.save.iter().map(get).collect::<Vec<_>>();
    fn mib(bytes: u64) -> f64 {
        bytes as f64 / (1u64 << 20) as f64
    }
    row(
        "save: request -> file synced (ms)",
        f(v, |s| s.file.as_secs_f64() * 1e3),
        f(q, |s| s.file.as_secs_f64() * 1e3),
    );
    row(
        "save: request -> VMM exited (ms)",
        f(v, |s| s.exit.as_secs_f64() * 1e3),
        f(q, |s| s.exit.as_secs_f64() * 1e3),
    );
    row(
        "file: apparent size (MiB)",
        f(v, |s| mib(s.apparent)),
        f(q, |s| mib(s.apparent)),
    );
    row(
        "file: stored, st_blocks (MiB)",
        f(v, |s| mib(s.stored)),
        f(q, |s| mib(s.stored)),
    );
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("*** SKIPPED snapshot bench: no /dev/kvm on this host ***");
        return;
    }
    let rounds: usize = std::env::var("VIREO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let has_qemu = qemu_available();
    if !has_qemu {
        eprintln!("snapshot bench: qemu-system-x86_64 or /dev/kvm missing (installers/setup-host.sh installs QEMU): QEMU columns are n/a");
    }
    let tmp = TempDir::new("snapshot-bench");
    let began = Instant::now();
    let mut results = Vec::new();
    for mem_mib in SIZES_MIB {
        let b = Bench {
            dir: tmp.0.join(format!("{mem_mib}")),
            mem_mib,
        };
        std::fs::create_dir_all(&b.dir).unwrap();
        let (mut vc, mut qc, mut vd, mut qd) = Default::default();
        let (mut vs, mut qs) = (Vec::new(), Vec::new());
        let (mut vm, mut qm) = (Vec::new(), Vec::new());
        let mut va = Vec::new();
        for _ in 0..rounds {
            vireo_migration(&b, COUNTER, &mut vm);
            if has_qemu {
                qemu_migration(&b, COUNTER, &mut qm);
            }
            // Interleaved, so drift on this shared machine hits both alike.
            vireo_counter(&b, COUNTER, &mut vc);
            if has_qemu {
                qemu_counter(&b, COUNTER, &mut qc);
            }
            vireo_counter(&b, DIRTY, &mut vd);
            if has_qemu {
                qemu_counter(&b, DIRTY, &mut qd);
            }
            vireo_display(&b, &mut vs);
            if has_qemu {
                qemu_display(&b, &mut qs);
            }
            va.push(vireo_agent_restore(&b));
        }
        results.push((mem_mib, vc, qc, vd, qd, vs, qs, vm, qm, va));
    }

    println!();
    println!(
        "Save/restore benchmark: probe guest, 1 vCPU, {DISK_MIB} MiB virtio-blk disk (screenshot: gpu-draw guest, {SCREEN} display), {rounds} rounds, median (min-max); {:.0} s",
        began.elapsed().as_secs_f64()
    );
    println!(
        "  {:<34} {:<24} {:<24} {:>8}",
        "", "vireo", "qemu (stop+migrate)", "vireo/qemu"
    );
    for (mem_mib, vc, qc, vd, qd, vs, qs, vm, qm, va) in results {
        println!("{mem_mib} MiB, counter guest, idle (touched little):");
        counter_rows(&vc, &qc);
        row("restore: start -> screenshot (ms)", ms(&vs), ms(&qs));
        row("restore: start -> agent answers (ms)", ms(&va), Vec::new());
        migration_rows(&vm, &qm);
        println!("{mem_mib} MiB, counter guest with {DIRTY_MIB} MiB of memory written:");
        counter_rows(&vd, &qd);
    }
}

/// The rows of one counter guest's saves and restores.
fn counter_rows(v: &Sample, q: &Sample) {
    save_rows(v, q);
    row(
        "restore: start -> counting (ms)",
        ms(&v.restore_warm),
        ms(&q.restore_warm),
    );
    row(
        "  the same, file not cached (ms)",
        ms(&v.restore_cold),
        ms(&q.restore_cold),
    );
    row(
        "save -> counting again (ms)",
        ms(&v.round_trip),
        ms(&q.round_trip),
    );
}
