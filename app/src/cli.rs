//! `vireo <command>`: the library and its VMs from scripts. Every command prints plain
//! text, or one JSON document with `--json`; errors are one line on stderr naming what
//! to fix, with exit status 1 (2 for a bad command line).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::host::HostInfo;
use crate::library::{DiskChoice, Library, VmEntry};
use crate::paths::Dirs;
use crate::resources::Resources;
use crate::settings::{self, Settings};
use crate::supervisor::monitor::{self, MonitorArgs};
use crate::supervisor::{Action, Programs, Supervisor, VmState};
use crate::vm_config::{self, DiskConfig, DisplaySize, OnClose, OsSource, VmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "vireo",
    version,
    about = "Vireo: virtual machines on your desktop. With no command, opens the app."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Every VM with its OS and state.
    List(JsonFlag),
    /// Makes a new VM (and starts it with --start).
    Create(CreateArgs),
    /// Starts a VM (a saved one from its saved state); it keeps running after this
    /// command (and the app) ends.
    Start(VmArg),
    /// Powers a VM off at once (as pulling the plug); --graceful asks the guest instead.
    Stop {
        #[command(flatten)]
        vm: VmArg,
        /// Ask the guest to shut down (the ACPI power button) instead of cutting its power.
        #[arg(long)]
        graceful: bool,
        /// With --graceful: how many seconds the guest gets before this gives up (the
        /// VM is then left running).
        #[arg(long, default_value_t = 60, requires = "graceful")]
        timeout: u64,
    },
    /// Pauses a running VM.
    Pause(VmArg),
    /// Resumes a paused VM.
    Resume(VmArg),
    /// Saves a running VM's state to disk and stops it; `start` restores it.
    Save(VmArg),
    /// Deletes a saved VM's saved state, so its next start boots afresh (what was not
    /// written to its disk is lost).
    Discard(VmArg),
    /// Moves a running VM to the engine installed now (after a Vireo upgrade), without
    /// stopping it: a live migration to a new engine process on this host.
    Upgrade(VmArg),
    /// Deletes a stopped VM. Its disk is kept (moved to kept-disks/) unless --delete-disk.
    Delete {
        #[command(flatten)]
        vm: VmArg,
        /// Delete the VM's disk too.
        #[arg(long)]
        delete_disk: bool,
    },
    /// Copies a stopped VM under a new name: its disk (blocks shared where the
    /// filesystem can), a fresh MAC address. A saved VM's state is not copied: the copy
    /// boots afresh.
    Clone {
        #[command(flatten)]
        vm: VmArg,
        /// The copy's name.
        name: String,
    },
    /// Changes a stopped VM's settings; what is not given stays. A disk only grows.
    Set(SetArgs),
    /// Writes what a running VM's screen shows to a PNG file.
    Screenshot {
        #[command(flatten)]
        vm: VmArg,
        /// Where to write the PNG.
        path: PathBuf,
    },
    /// A VM's config, state, files and (when running) what its engine reports.
    Info(VmArg),
    /// Opens the app with a running VM's window.
    Open {
        /// The VM's name or id.
        vm: String,
    },
    /// Runs a VM's engine and records how it ends (started by `vireo start` and the
    /// app, not by people).
    #[command(hide = true)]
    Monitor {
        #[arg(long)]
        lock: PathBuf,
        #[arg(long)]
        engine_pid: PathBuf,
        #[arg(long)]
        last_exit: PathBuf,
        #[arg(long)]
        engine: PathBuf,
        #[arg(last = true)]
        engine_args: Vec<OsString>,
    },
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VmArg {
    /// The VM's name or id.
    pub vm: String,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub vm: VmArg,
    /// Virtual CPUs.
    #[arg(long)]
    pub cpus: Option<u8>,
    /// Memory, e.g. 512M or 2G.
    #[arg(long)]
    pub memory: Option<String>,
    /// Disk size in GiB (grow only; adds a disk to a VM without one).
    #[arg(long)]
    pub disk_gib: Option<u64>,
    /// Network on or off.
    #[arg(long)]
    pub net: Option<bool>,
    /// Display size, WIDTHxHEIGHT.
    #[arg(long)]
    pub display: Option<String>,
    /// What closing the VM's window (or quitting the app) does to it.
    #[arg(long, value_enum)]
    pub on_close: Option<OnClose>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsArg {
    /// The probe guest's self-test screen (runs on any KVM host).
    SelfTest,
    /// A Linux kernel (--kernel, optional --initrd).
    Kernel,
    /// The Vireo demo Linux (needs hardware virtualization).
    DemoLinux,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The VM's name.
    pub name: String,
    #[arg(long, value_enum, default_value_t = OsArg::SelfTest)]
    pub os: OsArg,
    #[arg(long, value_name = "PATH", required_if_eq("os", "kernel"))]
    pub kernel: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    #[arg(long, value_name = "ARGS", default_value = "")]
    pub cmdline: String,
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Guest RAM: a number with K, M, G (a plain number is MiB).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub memory: String,
    /// A disk of this many GiB (sparse: it takes space as the guest writes).
    #[arg(long, value_name = "GIB")]
    pub disk_gib: Option<u64>,
    /// User-mode networking.
    #[arg(long)]
    pub net: bool,
    #[arg(long, value_name = "WxH", default_value = "1024x768")]
    pub display: String,
    /// CPU weight against other VMs, 1-10000 (100: as any program).
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<u32>,
    /// At most this many percent of one host CPU (150: one and a half).
    #[arg(long, value_name = "PERCENT")]
    pub cpu_limit: Option<u32>,
    /// Cap the disk's bandwidth at this many MiB/s.
    #[arg(long, value_name = "MIB_S")]
    pub disk_limit: Option<u64>,
    /// Cap the network card's bandwidth at this many MiB/s.
    #[arg(long, value_name = "MIB_S")]
    pub net_limit: Option<u64>,
    /// Give the guest's idle memory back to the host (the balloon follows the guest).
    #[arg(long)]
    pub give_back_idle_memory: bool,
    /// Start the VM once it is made.
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// What a command failed with: printed as one line.
type Outcome = Result<(), anyhow::Error>;

/// Runs a command; returns the process exit status.
pub fn run(command: CliCommand) -> i32 {
    if let CliCommand::Monitor {
        lock,
        engine_pid,
        last_exit,
        engine,
        engine_args,
    } = command
    {
        return monitor::run(&MonitorArgs {
            lock,
            engine_pid,
            last_exit,
            engine,
            engine_args,
        });
    }
    match Context::new().and_then(|ctx| ctx.run(command)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vireo: {}", one_line(&e));
            1
        }
    }
}

/// The error with its causes, each once.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

struct Context {
    library: Library,
    supervisor: Supervisor,
}

impl Context {
    fn new() -> anyhow::Result<Context> {
        let dirs = Dirs::from_env()?;
        Ok(Context {
            library: Library::new(&dirs),
            supervisor: Supervisor::new(dirs, Programs::from_current_exe()),
        })
    }

    fn run(&self, command: CliCommand) -> Outcome {
        match command {
            CliCommand::List(out) => self.list(out.json),
            CliCommand::Create(args) => self.create(args),
            CliCommand::Start(vm) => {
                let entry = self.library.find(&vm.vm)?;
                let saved = self.supervisor.state(&entry).is_saved();
                self.supervisor.start(&entry)?;
                done(
                    vm.out.json,
                    &entry,
                    if saved { "restored" } else { "started" },
                )
            }
            CliCommand::Stop {
                vm,
                graceful: false,
                ..
            } => self.act(vm, Action::PowerOff, "stopped"),
            CliCommand::Stop {
                vm,
                graceful: true,
                timeout,
            } => {
                let entry = self.library.find(&vm.vm)?;
                self.supervisor.act(&entry, Action::Shutdown)?;
                self.supervisor
                    .wait_shut_down(&entry, Duration::from_secs(timeout))?;
                done(vm.out.json, &entry, "shut down")
            }
            CliCommand::Pause(vm) => self.act(vm, Action::Pause, "paused"),
            CliCommand::Resume(vm) => self.act(vm, Action::Resume, "resumed"),
            CliCommand::Save(vm) => self.act(vm, Action::Save, "saved"),
            CliCommand::Discard(vm) => {
                let entry = self.library.find(&vm.vm)?;
                self.supervisor.discard(&entry)?;
                done(vm.out.json, &entry, "saved state discarded")
            }
            CliCommand::Upgrade(vm) => {
                let entry = self.library.find(&vm.vm)?;
                self.supervisor.upgrade(&entry)?;
                done(vm.out.json, &entry, "moved to the installed engine")
            }
            CliCommand::Delete { vm, delete_disk } => self.delete(vm, delete_disk),
            CliCommand::Clone { vm, name } => {
                let entry = self.library.find(&vm.vm)?;
                self.supervisor.ensure_stopped(&entry)?;
                let copy = self.library.clone_vm(&entry, &name)?;
                done(vm.out.json, &copy, "cloned")
            }
            CliCommand::Set(args) => self.set(args),
            CliCommand::Screenshot { vm, path } => {
                let entry = self.library.find(&vm.vm)?;
                let (width, height) = self.supervisor.screenshot(&entry, &path)?;
                if vm.out.json {
                    print_json(&json!({"path": path, "width": width, "height": height}));
                } else {
                    println!("{}: {width}x{height}", path.display());
                }
                Ok(())
            }
            CliCommand::Info(vm) => self.info(vm),
            CliCommand::Monitor { .. } => unreachable!("handled in run"),
            CliCommand::Open { .. } => anyhow::bail!("`vireo open` opens a window: main runs it"),
        }
    }

    fn list(&self, as_json: bool) -> Outcome {
        let entries = self.library.list()?;
        let rows: Vec<Value> = entries.iter().map(|e| self.summary(e)).collect();
        if as_json {
            print_json(&Value::Array(rows));
            return Ok(());
        }
        if rows.is_empty() {
            println!("no VMs yet: vireo create NAME (or open the app)");
        }
        println!(
            "{:<20} {:<24} {:<12} {:>4} {:>8}",
            "NAME", "OS", "STATE", "CPUS", "MEMORY"
        );
        for (entry, row) in entries.iter().zip(&rows) {
            match &entry.config {
                Ok(c) => println!(
                    "{:<20} {:<24} {:<12} {:>4} {:>7}M",
                    c.name,
                    c.os.label(),
                    row["state"].as_str().unwrap_or(""),
                    c.cpus,
                    c.memory_mib
                ),
                Err(reason) => println!("{:<20} broken: {reason}", entry.id),
            }
        }
        Ok(())
    }

    /// A VM as `list --json` shows it.
    fn summary(&self, entry: &VmEntry) -> Value {
        match &entry.config {
            Ok(c) => {
                let state = self.supervisor.state(entry);
                json!({
                    "id": entry.id,
                    "name": c.name,
                    "os": c.os.label(),
                    "state": state.word(),
                    "cpus": c.cpus,
                    "memory_mib": c.memory_mib,
                })
            }
            Err(reason) => json!({
                "id": entry.id,
                "state": "broken",
                "broken": reason,
            }),
        }
    }

    fn create(&self, args: CreateArgs) -> Outcome {
        let config = config_from_args(&args)?;
        let problems = vm_config::check(&config, &HostInfo::detect(), &self.library.names());
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::bail!("{}", text.join("; "));
        }
        let entry = self.library.create(&config)?;
        if args.start {
            self.supervisor.start(&entry)?;
        }
        done(
            args.out.json,
            &entry,
            if args.start {
                "created and started"
            } else {
                "created"
            },
        )
    }

    fn act(&self, vm: VmArg, action: Action, word: &str) -> Outcome {
        let entry = self.library.find(&vm.vm)?;
        self.supervisor.act(&entry, action)?;
        done(vm.out.json, &entry, word)
    }

    fn delete(&self, vm: VmArg, delete_disk: bool) -> Outcome {
        let entry = self.library.find(&vm.vm)?;
        self.supervisor.ensure_stopped(&entry)?;
        let choice = if delete_disk {
            DiskChoice::Delete
        } else {
            DiskChoice::Keep
        };
        let kept = self.library.delete(&entry, choice)?;
        if vm.out.json {
            print_json(&json!({"id": entry.id, "deleted": true, "kept_disk": kept}));
        } else {
            println!("{}: deleted", entry.name());
            if let Some(k) = kept {
                println!("its disk was kept as {}", k.display());
            }
        }
        Ok(())
    }

    fn set(&self, args: SetArgs) -> Outcome {
        let entry = self.library.find(&args.vm.vm)?;
        self.supervisor.ensure_stopped(&entry)?;
        let mut settings = Settings::of(entry.config()?);
        if let Some(cpus) = args.cpus {
            settings.cpus = cpus;
        }
        if let Some(memory) = &args.memory {
            settings.memory_mib = vireo_vmm::config::parse_memory_size(memory)? >> 20;
        }
        if let Some(size) = args.disk_gib {
            settings.disk_gib = Some(size);
        }
        if let Some(net) = args.net {
            settings.network = net;
        }
        if let Some(display) = &args.display {
            let parsed: vireo_vmm::config::DisplayArg = display.parse()?;
            let d = parsed
                .0
                .ok_or_else(|| anyhow::anyhow!("--display: give WIDTHxHEIGHT"))?;
            settings.display = DisplaySize {
                width: d.width,
                height: d.height,
            };
        }
        if let Some(on_close) = args.on_close {
            settings.on_close = on_close;
        }
        let written = settings::apply(&entry, &settings, &HostInfo::detect())?;
        if args.vm.out.json {
            print_json(&json!({"id": entry.id, "result": "set", "config": written}));
        } else {
            println!("{}: settings saved", written.name);
        }
        Ok(())
    }

    fn info(&self, vm: VmArg) -> Outcome {
        let entry = self.library.find(&vm.vm)?;
        let config = entry.config()?;
        let state = self.supervisor.state(&entry);
        let mut info = json!({
            "id": entry.id,
            "name": config.name,
            "os": config.os.label(),
            "state": state.word(),
            "config": config,
            "dir": entry.dir,
            "log": entry.log_path(),
        });
        match &state {
            VmState::Running { status } => {
                info["runtime_dir"] = json!(self.supervisor.runtime(&entry)?.dir);
                // Vireo was upgraded under it: `vireo upgrade` moves it to the new engine.
                info["engine_outdated"] = json!(self.supervisor.engine_outdated(&entry));
                match status {
                    Ok(s) => info["engine"] = json!(s),
                    Err(e) => info["engine_error"] = json!(e),
                }
            }
            VmState::Failed { exit, log_tail } => {
                info["last_exit"] =
                    json!({"reason": exit.reason(), "code": exit.code, "signal": exit.signal});
                info["log_tail"] = json!(log_tail);
            }
            VmState::Saved {
                saved_unix,
                refused,
            } => {
                info["saved_unix"] = json!(saved_unix);
                info["saved_state"] = json!(entry.snapshot_path());
                if let Some(why) = refused {
                    info["restore_refused"] = json!(why);
                }
            }
            VmState::Stopped => {}
        }
        if vm.out.json {
            print_json(&info);
            return Ok(());
        }
        println!("name:    {}", config.name);
        println!("id:      {}", entry.id);
        println!("os:      {}", config.os.label());
        println!("state:   {}", state.word());
        println!("cpus:    {}", config.cpus);
        println!("memory:  {} MiB", config.memory_mib);
        println!("files:   {}", entry.dir.display());
        if let VmState::Saved { refused, .. } = &state {
            println!("saved:   {}", entry.snapshot_path().display());
            if let Some(why) = refused {
                println!(
                    "restore refused: {why} (vireo discard {} boots it afresh)",
                    entry.id
                );
            }
        }
        if let VmState::Failed { exit, log_tail } = &state {
            println!("ended:   {}", exit.reason());
            for line in log_tail {
                println!("  | {line}");
            }
        }
        Ok(())
    }
}

fn config_from_args(args: &CreateArgs) -> anyhow::Result<VmConfig> {
    let memory = vireo_vmm::config::parse_memory_size(&args.memory)?;
    let display: vireo_vmm::config::DisplayArg = args.display.parse()?;
    let display = display
        .0
        .map(|d| DisplaySize {
            width: d.width,
            height: d.height,
        })
        .unwrap_or_default();
    let os = match args.os {
        OsArg::SelfTest => OsSource::SelfTest,
        OsArg::DemoLinux => OsSource::DemoLinux,
        OsArg::Kernel => OsSource::Kernel {
            kernel: args.kernel.clone().unwrap_or_default(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
        },
    };
    Ok(VmConfig {
        name: args.name.clone(),
        os,
        cpus: args.cpus,
        memory_mib: memory >> 20,
        disk: args.disk_gib.map(|size_gib| DiskConfig { size_gib }),
        network: args.net,
        display,
        link: Default::default(),
        window: Default::default(),
        mac: None,
        resources: Resources {
            cpu_weight: args.cpu_weight,
            cpu_limit_percent: args.cpu_limit,
            disk_mib_s: args.disk_limit,
            net_mib_s: args.net_limit,
            give_back_idle_memory: args.give_back_idle_memory,
        },
    })
}

fn done(as_json: bool, entry: &VmEntry, word: &str) -> Outcome {
    if as_json {
        print_json(&json!({"id": entry.id, "name": entry.name(), "result": word}));
    } else {
        println!("{}: {word}", entry.name());
    }
    Ok(())
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
