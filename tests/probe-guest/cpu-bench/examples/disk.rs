//! Host side of the probe's block tests: checks or writes the seeded disk pattern in an
//! image file, with the same code as the guest.
//!
//! `cargo run --release --example disk -- check IMAGE SEED MIB` prints
//! `host disk_check bytes=N ok=1|0 first_bad=none|OFFSET`;
//! `cargo run --release --example disk -- fill IMAGE SEED MIB` writes the pattern.

use std::fs::OpenOptions;
use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, path, seed, mib] = &args[..] else {
        eprintln!("usage: disk check|fill IMAGE SEED MIB");
        std::process::exit(2);
    };
    let seed: u64 = seed.parse().expect("SEED is a number");
    let bytes = mib.parse::<u64>().expect("MIB is a number") * vireo_cpu_bench::MIB;
    let mut file = OpenOptions::new()
        .read(true)
        .write(mode == "fill")
        .open(path)
        .expect("open the image");
    let mut buf = vec![0u8; vireo_cpu_bench::MIB as usize];
    let mut offset = 0;
    let mut first_bad = None;
    while offset < bytes {
        let len = (bytes - offset).min(buf.len() as u64) as usize;
        if mode == "fill" {
            vireo_cpu_bench::fill_disk_pattern(seed, offset, &mut buf[..len]);
            file.write_all(&buf[..len]).expect("write the image");
        } else {
            file.read_exact(&mut buf[..len]).expect("read the image");
            first_bad = vireo_cpu_bench::check_disk_pattern(seed, offset, &buf[..len]);
            if first_bad.is_some() {
                break;
            }
        }
        offset += len as u64;
    }
    if mode == "fill" {
        println!("host disk_fill bytes={bytes} seed={seed}");
    } else {
        println!(
            "host disk_check bytes={offset} ok={} first_bad={}",
            u8::from(first_bad.is_none()),
            first_bad.map_or("none".to_string(), |b| b.to_string())
        );
    }
}
