#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, run and test Vireo.
# Idempotent: packages already present are left alone, and apt is not touched at all
# when nothing is missing.
set -euo pipefail

packages=(
  build-essential pkg-config   # cc for crates with C parts, linking the probe guest
  qemu-system-x86 qemu-utils   # the side-by-side reference in benchmarks; qemu-img
  kmod cpio xz-utils zstd      # depmod and archives for the demo Linux image
  busybox-static               # the demo guest's shell, to test its /init on the host
  util-linux                   # setpriv, used by the permission test
  passt                        # user-mode networking for --net (the engine starts it)
  fuse3                        # fusermount3: the agent's shared-folder mounts (tests mount here)
  linux-perf                   # exit counts in the benchmarks
  acpica-tools                 # iasl: the engine's ACPI tables checked by ACPICA's disassembler
  # vireo-vmm --window (winit + wgpu, loaded at run time), the vireo app (eframe + glow:
  # Mesa's GL comes with xvfb) and their tests on a private X server: Mesa's GL and
  # Vulkan drivers, Xvfb, xdotool, ImageMagick's import.
  libxcursor1 libxi6 libxkbcommon-x11-0 libegl1 libegl-mesa0 libvulkan1 mesa-vulkan-drivers
  xvfb xauth xdotool imagemagick
  # The guest agent's clipboard and display tests: the other X client, and RandR.
  xclip x11-xserver-utils
  # The Debian packages (installers/build-debs.sh) and their checks: dpkg-shlibdeps
  # (dpkg-dev, with build-essential), the icon rendered from its SVG, lintian,
  # desktop-file-validate, systemd-analyze for the agent's units.
  librsvg2-bin lintian desktop-file-utils systemd
  # The full Debian 12 guest image: debootstrap, mkfs.ext4 -d, the password hash.
  debootstrap e2fsprogs openssl
  ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup-host: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# apt-get download (the demo image builder) needs package lists, even when nothing
# above was missing.
if ! apt-cache policy linux-image-amd64 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
fi

if ! command -v cargo >/dev/null; then
  echo "setup-host: cargo not found: install Rust from your distribution (rustup or the rustc/cargo packages) and run this again" >&2
  exit 1
fi

if [ -e /dev/kvm ] && [ ! -w /dev/kvm ]; then
  echo "setup-host: note: /dev/kvm is not writable for $(id -un): add yourself to the kvm group (sudo usermod -aG kvm \$USER) and log in again" >&2
fi
