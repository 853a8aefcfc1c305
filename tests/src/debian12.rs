//! The full Debian 12 guest image for the tests, built once per test process into
//! `target/debian12-image` and kept across runs while its inputs are the same (the
//! debootstrapped base system, the agent package, the account): a `stamp` file there
//! names them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use vireo_installers::{debian12, default_cache_dir, mirror};

use crate::packaging::build_deb;
use crate::repo_root;

/// The account the tests create and log in with.
pub const USER: &str = "vireo";
pub const PASSWORD: &str = "vireo-test-password";
pub const DISK_GIB: u64 = 8;

/// The image, and whether this process built it (false: reused from an earlier run).
#[derive(Debug, Clone)]
pub struct TestImage {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub built_now: bool,
}

/// Builds (or finds) the test image. Panics with the builder's error.
pub fn debian12_image() -> TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(build_or_reuse).clone()
}

/// The inputs the image depends on, as the stamp records them.
fn stamp(mirror: &str, agent_deb: &Path) -> String {
    let agent = std::fs::read(agent_deb).expect("the agent package");
    // The package's md5 is enough to see a change (dpkg-deb output is not reproducible
    // to the byte, so an agent rebuilt from the same source also rebuilds the image).
    let out = Command::new("md5sum")
        .arg(agent_deb)
        .output()
        .expect("md5sum runs");
    let md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    format!(
        "base {}\nagent {md5} ({} bytes)\nuser {USER}\npassword {PASSWORD}\ndisk {DISK_GIB}G\n",
        debian12::base_key(mirror),
        agent.len()
    )
}

fn build_or_reuse() -> TestImage {
    let dir = repo_root().join("target/debian12-image");
    let mirror = mirror::host_mirror(debian12::SUITE);
    let agent_deb = build_deb("agent");
    let wanted = stamp(&mirror, &agent_deb);
    let stamp_path = dir.join("stamp");
    let image = |built_now| TestImage {
        disk: dir.join("disk.qcow2"),
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        initrd: dir.join("initrd.img"),
        cmdline: std::fs::read_to_string(dir.join("cmdline"))
            .unwrap_or_default()
            .trim()
            .to_owned(),
        dir: dir.clone(),
        built_now,
    };
    let cached = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == wanted);
    if cached
        && ["disk.qcow2", "vmlinuz", "vmlinux", "initrd.img"]
            .iter()
            .all(|f| dir.join(f).is_file())
    {
        println!("Debian 12 image: reused {}", dir.display());
        return image(false);
    }
    let _ = std::fs::remove_file(&stamp_path);
    let start = Instant::now();
    let built = debian12::build(
        &debian12::Options {
            out_dir: dir.clone(),
            cache_dir: default_cache_dir(),
            mirror,
            user: USER.into(),
            password: PASSWORD.into(),
            agent_deb,
            disk_gib: DISK_GIB,
        },
        &mut |p| println!("{}", p.line()),
    )
    .unwrap_or_else(|e| panic!("building the Debian 12 image failed: {e}"));
    println!(
        "Debian 12 image: built in {:.1} s (base system {})",
        start.elapsed().as_secs_f64(),
        if built.base_cached {
            "cached"
        } else {
            "debootstrapped now"
        }
    );
    std::fs::write(&stamp_path, wanted).expect("writing the stamp");
    image(true)
}
