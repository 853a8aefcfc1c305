#!/usr/bin/env bash
# Set up, build, and run Vireo's guests with the engine alone (the desktop app comes
# later): `vireo-vmm doctor`, then the self-test probe guest (on any KVM host), then the
# Vireo demo Linux with a shell on this terminal where the host has hardware KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
./installers/setup-host.sh
cargo build --release -p vireo-vmm   # vireo-vmm and vireo-window
vmm=target/release/vireo-vmm

echo "== what this host's KVM can run"
"$vmm" doctor

echo "== the self-test VM (probe guest)"
cargo build --release --quiet --manifest-path tests/probe-guest/Cargo.toml --target-dir target/probe-guest
probe=target/probe-guest/x86_64-unknown-linux-gnu/release/vireo-probe-guest
"$vmm" --kernel "$probe" --cpus 2 --memory 256M --cmdline "probe.run=selftest"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "== its self-test screen in a window (type, move the mouse; Escape or closing the window ends it)"
  "$vmm" --kernel "$probe" --memory 256M --window --display 1024x768 --cmdline "probe.run=selftest-screen"
fi

if "$vmm" doctor | grep -q '^runs_unmodified_kernels: yes'; then
  echo "== the Vireo demo Linux (Ctrl-A x quits; 'poweroff -f' in the guest ends it)"
  cargo run --release --quiet -p vireo-installers --bin vireo-image -- --out target/demo-linux
  "$vmm" --kernel target/demo-linux/vmlinuz --initrd target/demo-linux/initramfs.img --cpus 2 --memory 1G
else
  echo "== the demo Linux VM needs hardware virtualization (VT-x/AMD-V): this host's KVM cannot boot a stock kernel, see 'doctor' above"
fi
