#!/usr/bin/env bash
# Set up, build, and run Vireo: the desktop app (`vireo`) with a ready "Self-test" VM
# (the probe guest, which runs on any KVM host) and, where the host has hardware KVM, a
# "Demo Linux" VM (the image is built here). Without a desktop session, it prints what
# the command line (`vireo list|start|...`) can do instead.
set -euo pipefail
cd "$(dirname "$0")/.."
./installers/setup-host.sh

echo "== building Vireo (the app, the engine, the agent, the self-test guest)"
cargo build --release -p vireo-app -p vireo-vmm
cargo build --release --quiet --manifest-path tests/probe-guest/Cargo.toml --target-dir target/probe-guest
vireo=target/release/vireo
vmm=target/release/vireo-vmm

echo "== what this host's KVM can run"
"$vmm" doctor

# The library's VMs, made once (a later run finds them and leaves them alone).
have_vm() { "$vireo" list --json | grep -q "\"name\": \"$1\""; }
if ! have_vm "Self-test"; then
  "$vireo" create "Self-test" --os self-test --memory 256M
fi
if "$vmm" doctor | grep -q '^runs_unmodified_kernels: yes'; then
  echo "== the Vireo demo Linux image (Debian's kernel, busybox and vireo-agent)"
  cargo run --release --quiet -p vireo-installers --bin vireo-image -- --out target/demo-linux
  if ! have_vm "Demo Linux"; then
    "$vireo" create "Demo Linux" --os demo-linux --cpus 2 --memory 1G --net
  fi
else
  echo "== the demo Linux VM needs hardware virtualization (VT-x/AMD-V): this host's KVM cannot boot a stock kernel (see 'doctor' above); the Self-test VM runs here"
fi

if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "== the app: start a VM from the library (its screen opens in a window)"
  exec "$vireo"
else
  echo "== no desktop session here (DISPLAY and WAYLAND_DISPLAY are unset): the app needs one."
  echo "   The command line works anywhere, e.g.:"
  echo "     $vireo list"
  echo "     $vireo start Self-test && $vireo screenshot Self-test shot.png && $vireo stop Self-test"
  "$vireo" list
fi
