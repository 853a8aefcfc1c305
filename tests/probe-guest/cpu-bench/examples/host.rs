//! Runs the probe guest's CPU benchmark natively and prints its `sha256` line, for a
//! side-by-side with the guest: `cargo run --release --example host -- 256 [CHUNK_MIB]`
//! (the chunk defaults to the whole stream, as in a guest with enough memory).

use std::time::Instant;

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let chunk_mib: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(mib);
    let total = mib * vireo_cpu_bench::MIB;
    let mut buf = vec![0u8; (chunk_mib.min(mib) * vireo_cpu_bench::MIB) as usize];
    let start = Instant::now();
    let result =
        vireo_cpu_bench::hash_pattern(total, &mut buf, || start.elapsed().as_nanos() as u64);
    let hex = vireo_cpu_bench::to_hex(&result.digest);
    println!(
        "host sha256 bytes={} chunk={} ns={} mib_per_s={} digest={}",
        result.bytes,
        buf.len(),
        result.hash_ticks,
        vireo_cpu_bench::mib_per_s(result.bytes, result.hash_ticks, 1_000_000_000),
        std::str::from_utf8(&hex).expect("hex is ASCII"),
    );
}
