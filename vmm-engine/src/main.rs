//! `vireo-vmm`: run one VM from the command line, or examine the host with `doctor`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand, ValueEnum};
use vireo_vmm::boot::{BootSource, DEFAULT_CMDLINE};
use vireo_vmm::console::{ConsoleInput, RawTerminal};
use vireo_vmm::devices::virtio::block::config::DiskConfig;
use vireo_vmm::devices::virtio::net::config::NetConfig;
use vireo_vmm::devices::virtio::vsock::VsockConfig;
use vireo_vmm::doctor::{self, DEFAULT_KVM_DEVICE};
use vireo_vmm::exit::code;
use vireo_vmm::resources::cpu::{CpuConfig, CpuList};
use vireo_vmm::{config, Console, RebootPolicy, VmConfig};

const AFTER_HELP: &str = concat!(
    "Exit status: 0 the guest powered off (or Ctrl-A x), 1 the VM could not start, ",
    "2 bad command line, 3 the guest rebooted (with --reboot=exit), ",
    "4 the guest crashed (triple fault, KVM internal error), ",
    "5 the VM was saved (`save` on the control socket; --restore PATH starts it again), ",
    "6 the VM moved to another engine (`migrate`), ",
    "159 a thread made a syscall outside its seccomp filter (the log says which).\n",
    "The console is the guest's ttyS0 on stdin/stdout; on a terminal, Ctrl-A x quits ",
    "and Ctrl-A Ctrl-A sends Ctrl-A."
);

#[derive(Parser, Debug)]
#[command(
    name = "vireo-vmm",
    version,
    about = "Run one VM under KVM: a Linux bzImage, or an ELF kernel with a PVH entry (vmlinux, the probe guest)",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Kernel to boot: a bzImage, or an ELF with a PVH entry note.
    #[arg(long, value_name = "PATH", required = true)]
    kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs) for the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Appended to the default kernel command line.
    #[arg(long, value_name = "ARGS", default_value = "", long_help = format!(
        "Appended to the default kernel command line, which is:\n  {DEFAULT_CMDLINE}"))]
    cmdline: String,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,

    /// Guest RAM: a number with K, M, G or T (a plain number is MiB).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,

    /// What a guest reboot does: end the engine with exit status 3, or start the guest again.
    #[arg(long, value_enum, default_value_t = RebootArg::Exit)]
    reboot: RebootArg,

    /// The VM's CPU weight against other VMs and processes, 1-10000 (100: a normal
    /// process's share). Needs a cgroup (v2 delegated, or v1 as root).
    #[arg(long, value_name = "N")]
    cpu_weight: Option<u32>,
    /// At most this many percent of one host CPU for the whole VM (150: one and a half
    /// CPUs). Needs a cgroup like --cpu-weight.
    #[arg(long, value_name = "PERCENT")]
    cpu_limit: Option<u32>,
    /// Host CPUs for the vCPUs, e.g. 0 or 2-3: vCPU i runs on the i-th (round robin).
    #[arg(long, value_name = "LIST")]
    cpu_pin: Option<CpuList>,

    /// Offer guest RAM to KSM (MADV_MERGEABLE): identical pages of this and other VMs
    /// share host memory while the host's KSM runs (/sys/kernel/mm/ksm/run).
    #[arg(long)]
    ksm: bool,
    /// Who sets the balloon's target: fixed (you, with balloon-set on the control
    /// socket) or give-back-idle (the engine: idle guest memory goes back to the host,
    /// and comes back when the guest needs it).
    #[arg(long, value_name = "POLICY", default_value = "fixed")]
    balloon_policy: vireo_vmm::devices::virtio::balloon::policy::BalloonPolicy,

    /// A virtio-blk disk: path=IMG[,format=raw|qcow2][,readonly=on][,id=NAME], with I/O
    /// limits bw=20M (bytes/s), iops=N, bw_burst=, iops_burst=. Repeatable.
    #[arg(long, value_name = "SPEC")]
    disk: Vec<DiskConfig>,

    /// The guest's screen: WIDTHxHEIGHT adds a keyboard and an absolute tablet (driven
    /// through the control socket); none (the default) leaves them out.
    #[arg(long, value_name = "WxH|none", default_value = "none")]
    display: config::DisplayArg,
    /// A virtio-net card: passt (user-mode networking, the default) or tap=NAME, and
    /// mac=52:54:00:xx:xx:xx, and I/O limits bw=, iops= as --disk. `--net` alone means
    /// passt.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "passt")]
    net: Option<NetConfig>,

    /// Show the guest's screen in a window (needs an X11 or Wayland session): keyboard and
    /// pointer go to the guest, closing the window powers the VM off. Implies a display
    /// (1280x800 unless --display says otherwise).
    #[arg(long)]
    window: bool,

    /// Serve the control protocol (JSON lines: status, balloon, power-off) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,

    /// A virtio-vsock device: cid=N,socket=PATH. Host clients connect to PATH and write
    /// `CONNECT <port>`; guest connections to host port P go to PATH_P.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<VsockConfig>,

    /// Start from a snapshot the `save` control request wrote, instead of booting. The
    /// other flags must describe the same VM (CPUs, memory, disks, devices).
    #[arg(long, value_name = "PATH")]
    restore: Option<PathBuf>,

    /// Wait for a live migration (`migrate` on another engine's control socket) on
    /// unix:PATH or tcp:HOST:PORT instead of booting. The other flags must describe the
    /// same VM; its control and vsock sockets must be other paths than the source's.
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "restore")]
    incoming: Option<vireo_vmm::snapshot::migrate::Endpoint>,

    /// Start with the vCPUs paused; `resume` on the control socket runs them (with
    /// --restore: the guest's screen and state can be looked at before it runs on).
    #[arg(long, requires = "control_socket")]
    paused: bool,

    /// The KVM device node.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KVM_DEVICE, hide = true)]
    kvm_device: PathBuf,

    /// Run without the seccomp filters that confine each engine thread to the syscalls
    /// it needs (debugging only: a guest that escapes a device then has the whole host
    /// kernel to attack).
    #[arg(long)]
    no_seccomp: bool,

    /// Run without the Landlock rulesets that take file access from the threads the
    /// guest talks to and confine the control thread to /proc, /sys, the cgroup tree and
    /// the control socket's directory (debugging only).
    #[arg(long)]
    no_landlock: bool,

    /// Accept the `seccomp_trip` and `sandbox_probe` control requests, which make a
    /// thread break its filter or try to open a file (for the e2e tests of the sandbox;
    /// a run-time flag rather than a build option, so that the tests exercise the
    /// binary that ships).
    #[arg(long, hide = true, alias = "test-seccomp")]
    test_sandbox: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Tell whether this host's KVM is usable and what it can run, one `key: value` per line.
    Doctor {
        /// The KVM device node.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_KVM_DEVICE)]
        kvm_device: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RebootArg {
    Exit,
    Restart,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging();
    match cli.command {
        Some(Command::Doctor { kvm_device }) => {
            let report = doctor::examine(&kvm_device);
            print!("{report}");
            ExitCode::from(if report.usable { 0 } else { code::ERROR as u8 })
        }
        None => {
            tracing::debug!("command line parsed");
            if let Err(e) = start_sandbox(&cli) {
                eprintln!("vireo-vmm: {e}");
                return ExitCode::from(code::ERROR as u8);
            }
            run_vm(cli)
        }
    }
}

/// Help and version print as clap formats them; real mistakes get one line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("bad command line")
        .trim_start_matches("error: ");
    eprintln!("vireo-vmm: {first} (see vireo-vmm --help)");
    ExitCode::from(code::USAGE as u8)
}

/// Sets up the per-thread Landlock rulesets and seccomp filters before any thread
/// starts (`sandbox`).
fn start_sandbox(cli: &Cli) -> std::io::Result<()> {
    use vireo_vmm::sandbox::{self, Mode, Options};
    let mode = if cli.no_seccomp {
        tracing::warn!("--no-seccomp: the engine's threads run without syscall filters");
        Mode::Off
    } else if std::env::var_os("VIREO_SECCOMP").is_some_and(|v| v == "log") {
        tracing::warn!("VIREO_SECCOMP=log: syscalls outside the filters are only logged");
        Mode::Log
    } else {
        Mode::Enforce
    };
    if cli.no_landlock {
        tracing::warn!("--no-landlock: the engine's threads keep their file access");
    }
    let runtime_dirs = cli
        .control_socket
        .iter()
        .filter_map(|socket| std::path::absolute(socket).ok()?.parent().map(Into::into))
        .collect();
    sandbox::init(Options {
        seccomp: mode,
        landlock: !cli.no_landlock,
        runtime_dirs,
        test_requests: cli.test_sandbox,
    })
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_vm(cli: Cli) -> ExitCode {
    let memory = match config::parse_memory_size(&cli.memory) {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let vcpus = match u8::try_from(cli.cpus) {
        Ok(n) => n,
        Err(_) => {
            return fail(&config::Error::TooManyVcpus {
                given: cli.cpus,
                limit: config::MAX_VCPUS,
            })
        }
    };
    let window = cli.window;
    let mut config = VmConfig {
        boot: BootSource {
            kernel: cli.kernel.expect("clap requires --kernel"),
            initrd: cli.initrd,
            cmdline: cli.cmdline,
        },
        vcpus,
        memory,
        reboot: match cli.reboot {
            RebootArg::Exit => RebootPolicy::Exit,
            RebootArg::Restart => RebootPolicy::Restart,
        },
        kvm_device: cli.kvm_device,
        disks: cli.disk,
        net: cli.net,
        control_socket: cli.control_socket,
        display: cli.display.0,
        vsock: cli.vsock,
        restore: cli.restore,
        start_paused: cli.paused,
        incoming: cli.incoming,
        cpu: CpuConfig {
            weight: cli.cpu_weight,
            limit: cli.cpu_limit,
            pin: cli.cpu_pin.map(|l| l.0),
        },
        ksm: cli.ksm,
        balloon_policy: cli.balloon_policy,
    };
    if window && config.display.is_none() {
        config.display = Some(config::DisplayConfig {
            width: 1280,
            height: 800,
        });
    }
    let raw = RawTerminal::enter();
    let console = Console {
        output: Arc::new(Mutex::new(std::io::stdout())),
        input: ConsoleInput::Stdin {
            escapes: raw.is_some(),
        },
    };
    let result = if window {
        run_with_window(config, console)
    } else {
        vireo_vmm::run(&config, &console).map_err(anyhow::Error::from)
    };
    drop(raw);
    match result {
        Ok(reason) => {
            if reason.exit_code() != code::POWER_OFF
                || matches!(reason, vireo_vmm::ExitReason::Stopped)
            {
                eprintln!("vireo-vmm: {reason}");
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => fail(e.as_ref()),
    }
}

/// Runs the VM with its window beside it (`window_process`): the window talks to the
/// VM through its control socket, a private one unless --control-socket names it.
fn run_with_window(
    mut config: VmConfig,
    console: Console,
) -> anyhow::Result<vireo_vmm::ExitReason> {
    use vireo_vmm::window_process::WindowProcess;
    let binary = WindowProcess::binary();
    // Before the VM starts: a user error stops us with nothing running.
    WindowProcess::check(&binary)?;
    let socket = match &config.control_socket {
        Some(path) => path.clone(),
        None => {
            let path = private_socket_path()?;
            config.control_socket = Some(path.clone());
            path
        }
    };
    let display = config.display.expect("--window implies a display");
    let title = format!(
        "{} — Vireo",
        config
            .boot
            .kernel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let window = WindowProcess::spawn(&binary, &socket, &title, (display.width, display.height))?;
    let result = vireo_vmm::run(&config, &console);
    window.finish();
    Ok(result?)
}

/// `$XDG_RUNTIME_DIR/vireo-<uid>/window-<pid>.sock` (or under /tmp), in a directory only
/// we can enter.
fn private_socket_path() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = base.join(format!("vireo-{uid}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir.join(format!("window-{}.sock", std::process::id())))
}

/// One line naming what went wrong, with its causes, and exit status 1.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    eprintln!("vireo-vmm: {line}");
    ExitCode::from(code::ERROR as u8)
}
