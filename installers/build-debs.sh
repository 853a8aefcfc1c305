#!/usr/bin/env bash
# Builds Vireo's Debian packages with dpkg-deb (no debian/ source tree needed):
#   vireo        the host: vireo, vireo-vmm, vireo-window, vireo-image (+ the static
#                agent vireo-image puts into the demo Linux, and the vireo-agent package
#                it installs in the full Debian 12), menu entry, icons
#   vireo-agent  the guest agent for Debian/Ubuntu guests: the static vireo-agent, its
#                systemd unit (and udev rule)
# Usage: installers/build-debs.sh [host|agent|all] [OUT_DIR]   (default: all target/debian)
# Prints the path of each package built, one per line, last.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
what=${1:-all}
out=$(realpath -m "${2:-target/debian}")
deb_dir=$root/installers/deb
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
maintainer="Vireo maintainers <maintainers@vireo.invalid>"
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
mkdir -p "$out"
work=$(mktemp -d "$out/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT

# The static agent, built as installers/src/agent.rs builds it for the demo Linux.
build_static_agent() {
  env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
    -u CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS \
    CARGO_TARGET_DIR="$root/target/agent-static" \
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release -q -p vireo-guest-agent --bin vireo-agent \
    --target x86_64-unknown-linux-gnu >&2
  static_agent=$root/target/agent-static/x86_64-unknown-linux-gnu/release/vireo-agent
}

# Documentation every package carries: copyright and a (native) changelog.
install_docs() { # STAGE PACKAGE
  local doc=$1/usr/share/doc/$2
  install -d "$doc"
  install -m644 "$deb_dir/common/copyright" "$doc/copyright"
  {
    echo "$2 ($version) unstable; urgency=medium"
    echo
    echo "  * Built from the Vireo repository (installers/build-debs.sh)."
    echo
    echo " -- $maintainer  $(date -R -d "@$epoch")"
  } | gzip -9n >"$doc/changelog.gz"
}

# Lintian overrides, each with the reason beside it, where a package has some.
install_overrides() { # STAGE PACKAGE
  local file=$deb_dir/$2/lintian-overrides
  [ ! -f "$file" ] || install -Dm644 "$file" "$1/usr/share/lintian/overrides/$2"
}

# The shared libraries the ELF files need, as a Depends list (dpkg-shlibdeps wants a
# debian/control to read; a minimal one will do).
shlib_depends() { # FILE...
  local d=$work/shlibs
  mkdir -p "$d/debian"
  printf 'Source: vireo\n\nPackage: vireo\nArchitecture: any\n' >"$d/debian/control"
  (cd "$d" && dpkg-shlibdeps -O --warnings=0 "$@") | sed -n 's/^shlibs:Depends=//p'
}

# Control file (with md5sums and Installed-Size) and the package itself.
pack() { # STAGE PACKAGE DEPENDS SECTION SUMMARY DESCRIPTION [RECOMMENDS]
  local stage=$1 pkg=$2
  install -d "$stage/DEBIAN"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
  {
    echo "Package: $pkg"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
    [ -z "$3" ] || echo "Depends: $3"
    [ -z "${7:-}" ] || echo "Recommends: $7"
    echo "Section: $4"
    echo "Priority: optional"
    echo "Homepage: https://github.com/vireo-vm/vireo"
    echo "Description: $5"
    echo "$6" | fold -s -w 78 | sed 's/ *$//; s/^/ /'
  } >"$stage/DEBIAN/control"
  # Reproducible: every file dated at the last commit (dpkg-deb dates the archive
  # members from SOURCE_DATE_EPOCH), so the same sources give the same package.
  find "$stage" -exec touch -h -d "@$epoch" {} +
  local deb=$out/${pkg}_${version}_${arch}.deb
  SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
  echo "$deb"
}

build_host() {
  # vireo-image installs this in the full Debian 12 guests it builds.
  local agent_deb
  agent_deb=$(build_agent)
  # One package per cargo run, as the tests build them: building them together unifies
  # features differently, and the next test build would compile them again.
  cargo build --release -q -p vireo-vmm --bins >&2
  cargo build --release -q -p vireo-app --bin vireo >&2
  cargo build --release -q -p vireo-installers --bin vireo-image >&2
  build_static_agent
  local stage=$work/vireo
  install -d "$stage/usr/bin" "$stage/usr/lib/vireo"
  for bin in vireo vireo-vmm vireo-window vireo-image; do
    install -m755 "target/release/$bin" "$stage/usr/bin/$bin"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/$bin"
  done
  # Not on PATH: vireo-image copies it into guest images; static so that any guest
  # Linux runs it.
  install -m755 "$static_agent" "$stage/usr/lib/vireo/vireo-agent"
  strip --strip-unneeded --remove-section=.comment "$stage/usr/lib/vireo/vireo-agent"
  install -Dm644 "$agent_deb" "$stage/usr/share/vireo/vireo-agent.deb"
  install -Dm644 "$deb_dir/vireo/dev.vireo.Vireo.desktop" \
    "$stage/usr/share/applications/dev.vireo.Vireo.desktop"
  install -Dm644 assets/icons/vireo.svg \
    "$stage/usr/share/icons/hicolor/scalable/apps/dev.vireo.Vireo.svg"
  install -d "$stage/usr/share/icons/hicolor/48x48/apps"
  rsvg-convert -w 48 -h 48 assets/icons/vireo.svg \
    -o "$stage/usr/share/icons/hicolor/48x48/apps/dev.vireo.Vireo.png"
  install_docs "$stage" vireo
  install -m644 "$deb_dir/vireo/README.Debian" "$stage/usr/share/doc/vireo/README.Debian"
  install_overrides "$stage" vireo
  install -d "$stage/DEBIAN"
  install -m755 "$deb_dir/vireo/postinst" "$stage/DEBIAN/postinst"
  local libs
  libs=$(shlib_depends "$stage"/usr/bin/*)
  # Loaded at run time (dlopen), so not in the ELF files: the window stacks (GL and
  # Vulkan through Mesa, X11 cursor and input, xkbcommon). passt: --net. The image
  # builders: apt (the demo Linux; dpkg is essential), debootstrap, e2fsprogs, qemu-utils and
  # openssl (the full Debian 12 guest), kmod (depmod). pkexec: the wizard builds a Debian 12
  # VM's image as root through it (recommended: only that needs it).
  pack "$stage" vireo \
    "$libs, passt, libegl1, libgl1, libvulkan1, libxkbcommon-x11-0, libxcursor1, libxi6, apt, kmod, debootstrap, e2fsprogs, qemu-utils, openssl" \
    admin "desktop virtualization with KVM" \
    "Vireo runs other operating systems in a window on Linux, with KVM underneath and guest additions (clipboard, shared folders, time sync, seamless mouse) across the boundary. This package has the desktop app (vireo), the VM engine (vireo-vmm), its window (vireo-window) and the guest image builder (vireo-image)." \
    "mesa-vulkan-drivers, libegl-mesa0, pkexec"
}

build_agent() {
  build_static_agent
  local stage=$work/vireo-agent
  install -d "$stage/usr/bin"
  install -m755 "$static_agent" "$stage/usr/bin/vireo-agent"
  strip --strip-unneeded --remove-section=.comment "$stage/usr/bin/vireo-agent"
  install -Dm644 "$deb_dir/vireo-agent/vireo-agent.service" \
    "$stage/lib/systemd/system/vireo-agent.service"
  install -Dm644 "$deb_dir/vireo-agent/60-vireo-agent.rules" \
    "$stage/lib/udev/rules.d/60-vireo-agent.rules"
  # Every graphical session starts its part (the session clipboard); outside a Vireo VM
  # it exits at once.
  install -Dm644 "$deb_dir/vireo-agent/dev.vireo.Agent.desktop" \
    "$stage/etc/xdg/autostart/dev.vireo.Agent.desktop"
  install_docs "$stage" vireo-agent
  install -m644 "$deb_dir/vireo-agent/README.Debian" "$stage/usr/share/doc/vireo-agent/README.Debian"
  install_overrides "$stage" vireo-agent
  install -d "$stage/DEBIAN"
  for script in postinst prerm postrm; do
    install -m755 "$deb_dir/vireo-agent/$script" "$stage/DEBIAN/$script"
  done
  echo /etc/xdg/autostart/dev.vireo.Agent.desktop >"$stage/DEBIAN/conffiles"
  pack "$stage" vireo-agent "" admin \
    "guest agent for Vireo virtual machines" \
    "Runs inside a Linux guest of Vireo and talks to the host over vsock: guest info, graceful power off and reboot, time sync, the shared clipboard, display resize and shared folders (FUSE). Its systemd service starts only in a VM with a vsock device, so it is harmless on other machines. In each graphical session an autostart entry runs its session part, which bridges that session's clipboard (and exits at once outside a Vireo VM)." \
    "fuse3, x11-xserver-utils"
}

case $what in
  host) build_host ;;
  agent) build_agent ;;
  all) build_host; echo "$out/vireo-agent_${version}_${arch}.deb" ;;
  *) echo "usage: $0 [host|agent|all] [OUT_DIR]" >&2; exit 2 ;;
esac
