//! Vireo's packaging. For now: the builder of the "Vireo demo Linux" guest image
//! (DESIGN.md, "Guest boot and devices"), three files:
//!
//! - `vmlinuz`: Debian 12's generic kernel (a bzImage, for the Linux boot protocol);
//! - `vmlinux`: the same kernel uncompressed from the bzImage by [`bzimage`] (an ELF with
//!   the PVH entry note, for the PVH boot path);
//! - `initramfs.img`: busybox-static, the virtio modules and the static `vireo-agent`,
//!   with `/init` from `assets/guest/demo-init.sh` (see [`initramfs`]).
//!
//! Packages come from Debian with `apt-get download` and are unpacked with `dpkg-deb -x`
//! into a cache under `<workspace>/target/vireo-image-cache/` ([`apt`]); nothing is
//! installed on the host and nothing is committed. [`build_image`] reports its progress
//! through a callback, for the command line and the app's creation wizard.

pub mod agent;
pub mod apt;
pub mod bzimage;
pub mod cpio;
pub mod debian12;
pub mod elf;
pub mod initramfs;
pub mod mirror;
pub mod modules;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use apt::{AptError, PackageCache, PackageSpec};

/// The pinned Debian kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPin {
    /// The ABI name: the package is `linux-image-<abi>` and its modules live in
    /// `/lib/modules/<abi>`.
    pub abi: &'static str,
    /// The exact package version.
    pub version: &'static str,
}

impl KernelPin {
    pub fn package(&self) -> String {
        format!("linux-image-{}", self.abi)
    }
}

/// The kernel of the demo guest: what `linux-image-amd64` (bookworm-security) depends on.
/// Its payload is xz-compressed.
///
/// To bump it: `apt-get update`, then `apt-cache depends linux-image-amd64` names the
/// versioned package (`linux-image-<abi>`) and `apt-cache policy linux-image-<abi>` its
/// version; put both here. The security archive keeps only the newest version, so a
/// download failure naming this version means it is time to bump. The module list
/// ([`modules::DEMO_MODULES`]) is checked against the new kernel when the image is built.
pub const KERNEL: KernelPin = KernelPin {
    abi: "6.1.0-56-amd64",
    version: "6.1.192-2",
};

/// The static busybox; apt's candidate version (bookworm's busybox rarely changes, and
/// nothing here depends on its version).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The workspace this crate was built in (the image builder builds the agent from it
/// and keeps its cache under its `target/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// The default package cache: `<workspace>/target/vireo-image-cache`, or for an
/// installed `vireo-image` (see [`agent::installed_agent`]) the user's
/// `$XDG_CACHE_HOME/vireo/image-cache` (`~/.cache/...`).
pub fn default_cache_dir() -> PathBuf {
    if agent::installed_agent().is_none() {
        return workspace_root().join("target/vireo-image-cache");
    }
    let cache_home = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache_home.join("vireo/image-cache")
}

/// The stages of [`build_image`], reported in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A package is available (downloaded now, or found in the cache).
    Fetched,
    /// A package is unpacked (now, or found unpacked in the cache).
    Extracted,
    /// `vmlinuz` and `vmlinux` are written.
    KernelWritten,
    /// The static agent is built.
    AgentBuilt,
    /// The kernel modules are selected and staged.
    ModulesStaged,
    /// `initramfs.img` is written: the image is complete.
    Built,
}

/// One progress report: the stage reached, a line for humans, and how far along the
/// whole build is (`step` of `steps`), for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub message: String,
    pub step: u32,
    pub steps: u32,
}

/// Where to build the image.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The directory that receives `vmlinuz`, `vmlinux` and `initramfs.img`.
    pub out_dir: PathBuf,
    /// The package cache (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// The workspace the static agent is built from (see [`workspace_root`]), unless
    /// this is an installed `vireo-image` with the agent beside it.
    pub workspace: PathBuf,
}

/// What [`build_image`] produced.
#[derive(Debug, Clone)]
pub struct ImageReport {
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_compression: bzimage::Compression,
    pub pvh_entry: u64,
    pub modules: modules::Selection,
    /// True if no package had to be downloaded.
    pub from_cache: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error("the kernel package has no {}", path.display())]
    MissingKernelFile { path: PathBuf },
    #[error("cannot extract vmlinux from {}", path.display())]
    BzImage {
        path: PathBuf,
        #[source]
        source: bzimage::BzImageError,
    },
    #[error("the extracted vmlinux cannot be booted with PVH")]
    NotPvh(#[source] elf::ElfError),
    #[error(transparent)]
    Modules(#[from] modules::ModulesError),
    #[error(transparent)]
    Agent(#[from] agent::AgentBuildError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const STEPS: u32 = 8;

/// Builds the demo image into `options.out_dir`, calling `progress` after each step.
pub fn build_image(
    options: &BuildOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImageReport, BuildError> {
    let mut step = 0;
    let mut report = |stage, message: String| {
        step += 1;
        progress(Progress {
            stage,
            message,
            step,
            steps: STEPS,
        });
    };
    let cache = PackageCache::new(&options.cache_dir);
    let out = &options.out_dir;
    fs::create_dir_all(out).map_err(io_err("cannot create", out))?;

    // 1-4: packages.
    let kernel_package = KERNEL.package();
    let (kernel, busybox) = {
        let kernel = fetch_kernel(&cache, &mut report)?;
        let spec = PackageSpec {
            name: BUSYBOX_PACKAGE,
            version: None,
        };
        let busybox = fetch_unpacked(&cache, spec, |_| Ok(()), &mut report)?;
        (kernel, busybox)
    };
    let from_cache = !kernel.downloaded && !busybox.downloaded;

    // 5: kernel.
    let vmlinuz_src = kernel
        .tree
        .join("boot")
        .join(format!("vmlinuz-{}", KERNEL.abi));
    let image = fs::read(&vmlinuz_src).map_err(|_| BuildError::MissingKernelFile {
        path: vmlinuz_src.clone(),
    })?;
    let (vmlinux, compression) =
        bzimage::extract_vmlinux(&image).map_err(|source| BuildError::BzImage {
            path: vmlinuz_src.clone(),
            source,
        })?;
    let pvh_entry = elf::pvh_entry(&vmlinux).map_err(BuildError::NotPvh)?;
    let vmlinuz = out.join("vmlinuz");
    let vmlinux_path = out.join("vmlinux");
    write_atomic(&vmlinuz, &image)?;
    write_atomic(&vmlinux_path, &vmlinux)?;
    report(
        Stage::KernelWritten,
        format!(
            "kernel {kernel_package} {}: {compression} payload, vmlinux {} MiB, PVH entry {pvh_entry:#x}",
            KERNEL.version,
            vmlinux.len() >> 20
        ),
    );
    drop(vmlinux);

    // 6: agent.
    let agent = agent::static_agent(&options.workspace)?;
    report(
        Stage::AgentBuilt,
        format!("static agent {}", agent.display()),
    );

    // 7: modules.
    let modules_dir = kernel.tree.join("lib/modules").join(KERNEL.abi);
    let index = modules::ModuleIndex::load(&modules_dir)?;
    let selection = index.select(KERNEL.abi, modules::DEMO_MODULES)?;
    let staging = options
        .cache_dir
        .join(format!("staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    modules::stage(&kernel.tree, KERNEL.abi, &selection, &staging)?;
    report(
        Stage::ModulesStaged,
        format!(
            "{} module files (loads {}; built in: {})",
            selection.files.len(),
            selection.load.join(" "),
            if selection.builtin.is_empty() {
                "none".to_owned()
            } else {
                selection.builtin.join(" ")
            }
        ),
    );

    // 8: initramfs.
    let initramfs_path = out.join("initramfs.img");
    let mut archive = Vec::new();
    initramfs::write(
        &initramfs::Contents {
            busybox: &busybox.tree.join("bin/busybox"),
            agent: &agent,
            modules_root: &staging,
            load_modules: &selection.load,
        },
        &mut archive,
    )?;
    let _ = fs::remove_dir_all(&staging);
    write_atomic(&initramfs_path, &archive)?;
    report(
        Stage::Built,
        format!("{} ({} KiB)", initramfs_path.display(), archive.len() >> 10),
    );

    Ok(ImageReport {
        vmlinuz,
        vmlinux: vmlinux_path,
        initramfs: initramfs_path,
        kernel_compression: compression,
        pvh_entry,
        modules: selection,
        from_cache,
    })
}

/// Fetches and unpacks the pinned kernel, running `depmod` on the fresh tree (the
/// package ships no `modules.dep`).
pub fn fetch_kernel(
    cache: &PackageCache,
    report: &mut dyn FnMut(Stage, String),
) -> Result<apt::Unpacked, BuildError> {
    let name = KERNEL.package();
    let spec = PackageSpec {
        name: &name,
        version: Some(KERNEL.version),
    };
    fetch_unpacked(
        cache,
        spec,
        |tree| modules::depmod(tree, KERNEL.abi),
        report,
    )
}

fn fetch_unpacked(
    cache: &PackageCache,
    spec: PackageSpec<'_>,
    post_unpack: impl FnOnce(&Path) -> Result<(), AptError>,
    report: &mut dyn FnMut(Stage, String),
) -> Result<apt::Unpacked, BuildError> {
    let start = Instant::now();
    // Fetch first on its own, so that the two stages are reported separately.
    let (deb, downloaded) = cache.fetch(spec)?;
    let file = deb.file_name().unwrap_or_default().to_string_lossy();
    report(
        Stage::Fetched,
        if downloaded {
            format!(
                "downloaded {file} in {:.1} s",
                start.elapsed().as_secs_f64()
            )
        } else {
            format!("{file} (cached)")
        },
    );
    let start = Instant::now();
    let mut unpacked = cache.fetch_unpacked(spec, post_unpack)?;
    unpacked.downloaded = downloaded;
    report(
        Stage::Extracted,
        if unpacked.unpacked {
            format!(
                "unpacked {} in {:.1} s",
                spec.name,
                start.elapsed().as_secs_f64()
            )
        } else {
            format!("{} (already unpacked)", spec.name)
        },
    );
    Ok(unpacked)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    fs::write(&tmp, data).map_err(io_err("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real pinned Debian kernel: fetched into the cache (with `apt-get download`)
    /// unless already there, then taken apart with our own bzImage and ELF code.
    #[test]
    fn real_debian_kernel_is_xz_with_pvh_note() {
        if std::process::Command::new("apt-get")
            .arg("--version")
            .output()
            .is_err()
        {
            println!(
                "skipped: apt-get not available, cannot fetch {}",
                KERNEL.package()
            );
            return;
        }
        let cache = PackageCache::new(default_cache_dir());
        let kernel = fetch_kernel(&cache, &mut |_, msg| println!("{msg}")).unwrap();
        let image = fs::read(
            kernel
                .tree
                .join("boot")
                .join(format!("vmlinuz-{}", KERNEL.abi)),
        )
        .unwrap();
        let header = bzimage::SetupHeader::parse(&image).unwrap();
        assert!(
            header.version >= 0x020f,
            "boot protocol {:#x}",
            header.version
        );
        let (vmlinux, compression) = bzimage::extract_vmlinux(&image).unwrap();
        assert_eq!(compression, bzimage::Compression::Xz);
        let entry = elf::pvh_entry(&vmlinux).unwrap();
        // The PVH entry is a physical address inside the kernel's load range (16 MiB up).
        assert!((0x100_0000..0x1_0000_0000).contains(&entry), "{entry:#x}");

        // The demo module list resolves against this kernel.
        let index =
            modules::ModuleIndex::load(&kernel.tree.join("lib/modules").join(KERNEL.abi)).unwrap();
        let sel = index.select(KERNEL.abi, modules::DEMO_MODULES).unwrap();
        assert!(sel.files.iter().any(|f| f.ends_with("/virtio_pci.ko")));
        assert!(sel.files.iter().any(|f| f.ends_with("/virtio.ko")));
    }
}
