//! Turning a `vm.toml` into a `vireo-vmm` command line, and finding the programs and
//! guest images that takes: the engine, the probe guest (the "Vireo self-test" OS) and
//! the demo Linux image. Each is looked up from an environment variable first (tests and
//! packagers set them), then beside the `vireo` binary as a cargo build lays them out.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::vm_config::{OsSource, VmConfig};

/// The kernel command line that makes the probe guest draw its self-test screen.
pub const SELF_TEST_CMDLINE: &str = "probe.run=selftest-screen";
/// The vsock CID every VM gets: each VM has its own vsock device and host socket.
pub const GUEST_CID: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the Vireo self-test guest is not built: run `cargo build --release --manifest-path tests/probe-guest/Cargo.toml --target-dir target/probe-guest`, or set VIREO_PROBE_GUEST to its path")]
    NoProbeGuest,
    #[error("the Vireo demo Linux image is not built: create the VM in the app's New VM wizard (it builds the image), or run `vireo-image --out ~/.local/share/vireo/images/demo-linux`, or set VIREO_DEMO_IMAGE to its directory")]
    NoDemoImage,
    #[error("the kernel {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("the initrd {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("the VM's disk {0} is missing")]
    DiskMissing(PathBuf),
}

/// Where the app finds the programs and images it runs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `vireo-vmm`.
    pub engine: PathBuf,
    /// The `vireo` binary itself, which runs each VM's monitor (`vireo monitor`).
    pub app: PathBuf,
    /// The directory `vireo` lives in (target/release in a build tree).
    exe_dir: PathBuf,
    /// The user's images (`<data>/images`), where the wizard builds the demo Linux.
    user_images: Option<PathBuf>,
}

impl Programs {
    /// For the running `vireo`: the engine beside it (or `VIREO_VMM`, or on PATH).
    pub fn from_current_exe() -> Programs {
        let app = std::env::current_exe().unwrap_or_else(|_| "vireo".into());
        Programs::beside(app)
    }

    /// For a `vireo` binary at `app` (tests start the built binary).
    pub fn beside(app: PathBuf) -> Programs {
        let exe_dir = app.parent().map(Path::to_owned).unwrap_or_default();
        let engine = std::env::var_os("VIREO_VMM")
            .map(PathBuf::from)
            .or_else(|| Some(exe_dir.join("vireo-vmm")).filter(|p| p.is_file()))
            .unwrap_or_else(|| "vireo-vmm".into());
        Programs {
            engine,
            app,
            exe_dir,
            user_images: None,
        }
    }

    /// Also looks for guest images in `dir` (the user's `<data>/images`).
    pub fn with_user_images(mut self, dir: PathBuf) -> Programs {
        self.user_images = Some(dir);
        self
    }

    /// `vireo-image`, which builds guest images: `VIREO_IMAGE`, or beside `vireo`, or on
    /// PATH.
    pub fn image_builder(&self) -> PathBuf {
        std::env::var_os("VIREO_IMAGE")
            .map(PathBuf::from)
            .or_else(|| Some(self.exe_dir.join("vireo-image")).filter(|p| p.is_file()))
            .unwrap_or_else(|| "vireo-image".into())
    }

    /// Where the wizard builds the demo Linux when none is found (the user's images).
    pub fn demo_image_home(&self) -> Option<PathBuf> {
        self.user_images.as_ref().map(|d| d.join("demo-linux"))
    }

    /// The probe guest's ELF: `VIREO_PROBE_GUEST`, or the build tree's
    /// `target/probe-guest/x86_64-unknown-linux-gnu/release/vireo-probe-guest`, or
    /// `vireo-probe-guest` beside `vireo` (an installed layout).
    pub fn probe_guest(&self) -> Result<PathBuf, LaunchError> {
        let candidates = [
            std::env::var_os("VIREO_PROBE_GUEST").map(PathBuf::from),
            self.exe_dir.parent().map(|target| {
                target.join("probe-guest/x86_64-unknown-linux-gnu/release/vireo-probe-guest")
            }),
            Some(self.exe_dir.join("vireo-probe-guest")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
            .ok_or(LaunchError::NoProbeGuest)
    }

    /// The demo Linux image directory (`vmlinuz`, `initramfs.img`): `VIREO_DEMO_IMAGE`,
    /// the build tree's `target/demo-linux`, or the one the wizard built in the user's
    /// images.
    pub fn demo_image(&self) -> Result<PathBuf, LaunchError> {
        let candidates = [
            std::env::var_os("VIREO_DEMO_IMAGE").map(PathBuf::from),
            self.exe_dir
                .parent()
                .map(|target| target.join("demo-linux")),
            self.demo_image_home(),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|d| crate::images::is_demo_image(d))
            .ok_or(LaunchError::NoDemoImage)
    }
}

/// The files of one running VM in its runtime directory.
#[derive(Debug, Clone)]
pub struct RuntimeFiles {
    pub dir: PathBuf,
}

impl RuntimeFiles {
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The hybrid vsock's host socket (guest ports land on `vsock.sock_<port>`).
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// The engine's pid, written by the monitor.
    pub fn engine_pid(&self) -> PathBuf {
        self.dir.join("engine.pid")
    }
}

/// The engine's arguments for `config`, whose directory is `vm_dir` (its disk).
pub fn engine_args(
    config: &VmConfig,
    vm_dir: &Path,
    runtime: &RuntimeFiles,
    programs: &Programs,
) -> Result<Vec<OsString>, LaunchError> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |flag: &str, value: OsString| {
        args.push(flag.into());
        args.push(value);
    };
    // A Debian 12 VM's own disk: its root filesystem, so the first (/dev/vda).
    let mut os_disk = None;
    let (kernel, initrd, cmdline) = match &config.os {
        OsSource::SelfTest => (programs.probe_guest()?, None, SELF_TEST_CMDLINE.to_owned()),
        OsSource::Debian12 {
            disk,
            kernel,
            initrd,
            cmdline,
            ..
        } => {
            let (kernel, initrd, disk) =
                (vm_dir.join(kernel), vm_dir.join(initrd), vm_dir.join(disk));
            if !kernel.is_file() {
                return Err(LaunchError::KernelMissing(kernel));
            }
            if !initrd.is_file() {
                return Err(LaunchError::InitrdMissing(initrd));
            }
            if !disk.is_file() {
                return Err(LaunchError::DiskMissing(disk));
            }
            os_disk = Some(disk);
            (kernel, Some(initrd), cmdline.clone())
        }
        OsSource::DemoLinux => {
            let dir = programs.demo_image()?;
            (
                dir.join("vmlinuz"),
                Some(dir.join("initramfs.img")),
                String::new(),
            )
        }
        OsSource::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            if !kernel.is_file() {
                return Err(LaunchError::KernelMissing(kernel.clone()));
            }
            if let Some(i) = initrd.as_ref().filter(|i| !i.is_file()) {
                return Err(LaunchError::InitrdMissing(i.clone()));
            }
            (kernel.clone(), initrd.clone(), cmdline.clone())
        }
    };
    push("--kernel", kernel.into());
    if let Some(initrd) = initrd {
        push("--initrd", initrd.into());
    }
    if !cmdline.is_empty() {
        push("--cmdline", cmdline.into());
    }
    push("--cpus", config.cpus.to_string().into());
    push("--memory", format!("{}M", config.memory_mib).into());
    // A guest reboot starts it again, as on a real machine.
    push("--reboot", "restart".into());
    if let Some(disk) = os_disk {
        let mut spec = OsString::from("path=");
        spec.push(disk);
        spec.push(",format=qcow2");
        spec.push(config.resources.disk_spec());
        push("--disk", spec);
    }
    if config.disk.is_some() {
        let disk = vm_dir.join(crate::vm_config::DISK_FILE);
        if !disk.is_file() {
            return Err(LaunchError::DiskMissing(disk));
        }
        let mut spec = OsString::from("path=");
        spec.push(disk);
        spec.push(",format=raw");
        spec.push(config.resources.disk_spec());
        push("--disk", spec);
    }
    for (flag, value) in config.resources.engine_flags() {
        push(flag, value.into());
    }
    if config.network {
        let spec = match &config.mac {
            Some(mac) => format!("passt,mac={mac}"),
            None => "passt".to_owned(),
        } + &config.resources.net_spec();
        push("--net", spec.into());
    }
    let mut vsock = OsString::from(format!("cid={GUEST_CID},socket="));
    vsock.push(runtime.vsock_socket());
    push("--vsock", vsock);
    push(
        "--display",
        format!("{}x{}", config.display.width, config.display.height).into(),
    );
    push("--control-socket", runtime.control_socket().into());
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's arguments for `config`, as text.
    fn args_text(
        config: &VmConfig,
        dir: &Path,
        runtime: &RuntimeFiles,
        programs: &Programs,
    ) -> Vec<String> {
        engine_args(config, dir, runtime, programs)
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
    use crate::vm_config::{DiskConfig, DisplaySize};

    #[test]
    fn kernel_vms_become_engine_flags() {
        let dir = std::env::temp_dir().join(format!("vireo-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(dir.join("disk.img"), b"").unwrap();
        let config = VmConfig {
            name: "k".into(),
            os: OsSource::Kernel {
                kernel: kernel.clone(),
                initrd: None,
                cmdline: "quiet".into(),
            },
            cpus: 2,
            memory_mib: 300,
            disk: Some(DiskConfig { size_gib: 1 }),
            network: true,
            display: DisplaySize {
                width: 800,
                height: 600,
            },
            link: Default::default(),
            window: Default::default(),
            mac: Some("52:54:00:00:00:07".into()),
            resources: crate::resources::Resources {
                cpu_weight: None,
                cpu_limit_percent: Some(50),
                disk_mib_s: Some(20),
                net_mib_s: Some(8),
                give_back_idle_memory: false,
            },
        };
        let runtime = RuntimeFiles {
            dir: "/run/v/k".into(),
        };
        let programs = Programs::beside("/nowhere/vireo".into());
        let text = args_text(&config, &dir, &runtime, &programs);
        let expect = [
            "--kernel".to_owned(),
            kernel.display().to_string(),
            "--cmdline".into(),
            "quiet".into(),
            "--cpus".into(),
            "2".into(),
            "--memory".into(),
            "300M".into(),
            "--reboot".into(),
            "restart".into(),
            "--disk".into(),
            format!("path={},format=raw,bw=20M", dir.join("disk.img").display()),
            "--cpu-limit".into(),
            "50".into(),
            "--net".into(),
            "passt,mac=52:54:00:00:00:07,bw=8M".into(),
            "--vsock".into(),
            "cid=3,socket=/run/v/k/vsock.sock".into(),
            "--display".into(),
            "800x600".into(),
            "--control-socket".into(),
            "/run/v/k/control.sock".into(),
        ];
        assert_eq!(text, expect);
        std::fs::remove_file(&kernel).unwrap();
        let err = engine_args(&config, &dir, &runtime, &programs).unwrap_err();
        assert!(matches!(err, LaunchError::KernelMissing(_)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A Debian 12 VM boots its own kernel and initrd with its command line, its qcow2
    /// as the first disk (the root's /dev/vda), a network card and the agent's vsock.
    #[test]
    fn a_debian12_vm_boots_its_own_files() {
        let dir = std::env::temp_dir().join(format!("vireo-launch-deb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["vmlinuz", "initrd.img", "disk.qcow2"] {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        let config = VmConfig {
            name: "deb".into(),
            os: OsSource::debian12("alice", "root=/dev/vda rw\n"),
            cpus: 2,
            memory_mib: 1024,
            disk: None,
            network: true,
            display: DisplaySize::default(),
            link: Default::default(),
            window: Default::default(),
            mac: Some("52:54:00:00:00:08".into()),
            resources: Default::default(),
        };
        let runtime = RuntimeFiles {
            dir: "/run/v/deb".into(),
        };
        let programs = Programs::beside("/nowhere/vireo".into());
        let text = args_text(&config, &dir, &runtime, &programs);
        let path = |f: &str| dir.join(f).display().to_string();
        let expect = [
            "--kernel".to_owned(),
            path("vmlinuz"),
            "--initrd".into(),
            path("initrd.img"),
            "--cmdline".into(),
            "root=/dev/vda rw".into(),
            "--cpus".into(),
            "2".into(),
            "--memory".into(),
            "1024M".into(),
            "--reboot".into(),
            "restart".into(),
            "--disk".into(),
            format!("path={},format=qcow2", path("disk.qcow2")),
            "--net".into(),
            "passt,mac=52:54:00:00:00:08".into(),
            "--vsock".into(),
            "cid=3,socket=/run/v/deb/vsock.sock".into(),
            "--display".into(),
            "1024x768".into(),
            "--control-socket".into(),
            "/run/v/deb/control.sock".into(),
        ];
        assert_eq!(text, expect);
        // A raw disk added later is the second: the root stays /dev/vda.
        std::fs::write(dir.join("disk.img"), b"").unwrap();
        let with_raw = VmConfig {
            disk: Some(DiskConfig { size_gib: 1 }),
            ..config.clone()
        };
        let args = engine_args(&with_raw, &dir, &runtime, &programs).unwrap();
        let disks: Vec<String> = args
            .windows(2)
            .filter(|w| w[0] == "--disk")
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect();
        assert!(
            disks[0].contains("disk.qcow2") && disks[1].contains("disk.img"),
            "{disks:?}"
        );
        std::fs::remove_file(dir.join("disk.qcow2")).unwrap();
        let err = engine_args(&config, &dir, &runtime, &programs).unwrap_err();
        assert!(matches!(err, LaunchError::DiskMissing(p) if p == dir.join("disk.qcow2")));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
