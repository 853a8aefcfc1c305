//! The Vireo demo Linux (Debian's kernel + our initramfs), built once per test process
//! by `vireo-installers` into `target/demo-linux` (packages cached under `target/`).

use std::path::PathBuf;
use std::sync::OnceLock;

use vireo_installers::{build_image, default_cache_dir, workspace_root, BuildOptions, ImageReport};

use crate::repo_root;

/// Builds (or finds cached) the demo image and returns what it holds.
pub fn demo_image() -> ImageReport {
    static IMAGE: OnceLock<ImageReport> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let options = BuildOptions {
                out_dir: repo_root().join("target/demo-linux"),
                cache_dir: default_cache_dir(),
                workspace: workspace_root(),
            };
            build_image(&options, &mut |_| {})
                .unwrap_or_else(|e| panic!("building the demo Linux image failed: {e}"))
        })
        .clone()
}

/// The uncompressed kernel, for the PVH path.
pub fn vmlinux() -> PathBuf {
    demo_image().vmlinux
}

/// The engine's arguments to boot the demo Linux (its bzImage and initramfs) with
/// `vcpus`, `memory` and the kernel command line `cmdline`.
pub fn boot_args(vcpus: u8, memory: &str, cmdline: &str) -> Vec<String> {
    let image = demo_image();
    let path = |p: &std::path::Path| p.to_str().expect("paths here are UTF-8").to_owned();
    vec![
        "--kernel".into(),
        path(&image.vmlinuz),
        "--initrd".into(),
        path(&image.initramfs),
        "--cpus".into(),
        vcpus.to_string(),
        "--memory".into(),
        memory.into(),
        "--cmdline".into(),
        cmdline.into(),
    ]
}
