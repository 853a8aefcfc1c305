//! `vireo-image`: builds the Vireo demo Linux guest image (kernel + initramfs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use vireo_installers::{build_image, default_cache_dir, workspace_root, BuildOptions, KERNEL};

#[derive(Parser)]
#[command(
    name = "vireo-image",
    version,
    about = "Build the Vireo demo Linux: vmlinuz, vmlinux and initramfs.img from Debian packages"
)]
struct Cli {
    /// Directory to write vmlinuz, vmlinux and initramfs.img into.
    #[arg(long)]
    out: PathBuf,
    /// Package cache (downloaded .debs and unpacked trees); reused across runs.
    #[arg(long)]
    cache: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let start = Instant::now();
    let options = BuildOptions {
        out_dir: cli.out,
        cache_dir: cli.cache.unwrap_or_else(default_cache_dir),
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
