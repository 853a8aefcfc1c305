//! Links the probe guest as a static freestanding ELF at 1 MiB with its own script.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-Wl,--gc-sections",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,--build-id=none",
        "-no-pie",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
