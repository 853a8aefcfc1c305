//! `vireo-image`: builds guest images: the Vireo demo Linux (kernel + initramfs) by
//! default, or with `debian12` a full Debian 12 disk.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
mod cancel;

use vireo_installers::{
    build_image, debian12, default_cache_dir, mirror, workspace_root, BuildOptions, KERNEL,
};

#[derive(Parser)]
#[command(
    name = "vireo-image",
    version,
    about = "Build guest images: the Vireo demo Linux (vmlinuz, vmlinux, initramfs.img from Debian packages), or `debian12`",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Directory to write vmlinuz, vmlinux and initramfs.img into.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Package cache (downloaded .debs and unpacked trees); reused across runs.
    #[arg(long)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    image: Option<Image>,
}

#[derive(Subcommand)]
enum Image {
    /// A full Debian 12: disk.qcow2 (boots with root=/dev/vda), vmlinuz, vmlinux,
    /// initrd.img and cmdline in OUT. Needs root (debootstrap). Prints
    /// `progress <percent> <stage> <message>` lines while it builds.
    Debian12 {
        #[arg(long)]
        out: PathBuf,
        /// The account to create (in sudo).
        #[arg(long)]
        user: String,
        /// Read the account's password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// The account's password (visible to other users in the process list: prefer
        /// --password-stdin).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// The vireo-agent package to install (default: the one the vireo package
        /// installs, else built from the workspace).
        #[arg(long)]
        agent_deb: Option<PathBuf>,
        /// The Debian mirror (default: the host's apt configuration for bookworm).
        #[arg(long)]
        mirror: Option<String>,
        /// The disk's size in GiB.
        #[arg(long, default_value_t = 8)]
        disk_gib: u64,
        /// Cache of packages and debootstrapped base systems.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Give OUT and everything in it to this user when done (`UID:GID`): the app
        /// runs the builder as root through pkexec for a user's VM.
        #[arg(long, value_parser = parse_owner)]
        owner: Option<(u32, u32)>,
        /// With --password-stdin: keep reading stdin after the password and, when it
        /// closes before the build is done, stop the build and remove OUT (how the app
        /// cancels a build it cannot signal, one running as root).
        #[arg(long, requires = "password_stdin")]
        cancel_on_stdin_eof: bool,
    },
}

/// `UID:GID`, as chown takes it.
fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not UID:GID"))?;
    let number = |n: &str| n.parse::<u32>().map_err(|e| format!("{n:?}: {e}"));
    Ok((number(uid)?, number(gid)?))
}

fn main() -> anyhow::Result<()> {
    let result = run(Cli::parse());
    cancel::settle();
    result
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.image {
        Some(Image::Debian12 {
            out,
            user,
            password_stdin,
            password,
            agent_deb,
            mirror,
            disk_gib,
            cache,
            owner,
            cancel_on_stdin_eof,
        }) => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim_end_matches(['\n', '\r']).to_owned()
                }
                (None, false) => bail!("give the password with --password-stdin (or --password)"),
            };
            debian12::check_account(&user, &password)?;
            let agent_deb = match agent_deb {
                Some(deb) => deb,
                None => vireo_installers::agent::agent_deb()
                    .context("finding the vireo-agent package")?,
            };
            if cancel_on_stdin_eof {
                cancel::on_stdin_eof(out.clone())?;
            }
            let built = debian12_image(debian12::Options {
                out_dir: out.clone(),
                cache_dir: cache.unwrap_or_else(default_cache_dir),
                mirror: mirror.unwrap_or_else(|| mirror::host_mirror(debian12::SUITE)),
                user,
                password,
                agent_deb,
                disk_gib,
            });
            // Also after a failure: what is left must be the user's to remove.
            match (owner, out.exists()) {
                (Some((uid, gid)), true) => built.and(give_to(&out, uid, gid)),
                _ => built,
            }
        }
        None => demo_image(cli.out.context("--out is required")?, cli.cache),
    }
}

/// Makes `dir` and everything beneath it owned by `uid:gid` (symlinks themselves, not
/// their targets).
fn give_to(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .with_context(|| format!("giving {} to {uid}:{gid}", dir.display()))?;
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir)? {
            give_to(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn debian12_image(options: debian12::Options) -> anyhow::Result<()> {
    let start = Instant::now();
    println!(
        "vireo-image: Debian 12 from {}, cache {}",
        options.mirror,
        options.cache_dir.display()
    );
    let image = debian12::build(&options, &mut |p| println!("{}", p.line()))
        .context("building the Debian 12 image")?;
    println!(
        "vireo-image: wrote {} (Linux {}, boot with {:?}) in {:.1} s{}",
        image.disk.display(),
        image.kernel_release,
        image.cmdline,
        start.elapsed().as_secs_f64(),
        if image.base_cached {
            " (base system from cache)"
        } else {
            ""
        }
    );
    Ok(())
}

fn demo_image(out: PathBuf, cache: Option<PathBuf>) -> anyhow::Result<()> {
    let start = Instant::now();
    let options = BuildOptions {
        out_dir: out,
        cache_dir: cache.unwrap_or_else(default_cache_dir),
        workspace: workspace_root(),
    };
    println!(
        "vireo-image: Debian kernel {} {}, cache {}",
        KERNEL.package(),
        KERNEL.version,
        options.cache_dir.display()
    );
    let report = build_image(&options, &mut |p| {
        println!("[{}/{}] {}", p.step, p.steps, p.message);
    })
    .context("building the Vireo demo Linux image")?;
    println!(
        "vireo-image: wrote {}, {}, {} in {:.1} s{}",
        report.vmlinuz.display(),
        report.vmlinux.display(),
        report.initramfs.display(),
        start.elapsed().as_secs_f64(),
        if report.from_cache {
            " (packages from cache)"
        } else {
            ""
        }
    );
    Ok(())
}
