#!/bin/sh
# /init of the Vireo demo Linux initramfs, run by busybox sh as PID 1.
# Built into the image by vireo-installers (vireo-image); see assets/guest/README.md.
#
# Kernel command line:
#   vireo.run=<command>  run <command> with its output on the console, then power off.
#                        Write spaces as '+'; '%XX' is a hex-escaped byte (so a literal
#                        '+' is %2B and '%' is %25), e.g. vireo.run=cat+/proc/meminfo
#   (none)               an interactive shell on the console; power off when it exits.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

hostname vireo-demo
ip link set lo up 2>/dev/null

# The list is written by the image builder: the wanted modules that are not built in.
while read -r module; do
	case "$module" in '' | '#'*) continue ;; esac
	modprobe "$module" || echo "vireo-init: cannot load module $module"
done </etc/vireo/modules

# The agent; for now it reports the guest info once.
vireo-agent info || echo "vireo-init: vireo-agent info failed"

echo "VIREO-GUEST USERSPACE READY"

run=
set -f # no globbing of the command line's words
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vireo.run=*) run="${arg#vireo.run=}" ;;
	esac
done
set +f

if [ -n "$run" ]; then
	# '+' -> space, then '%XX' -> '\xXX' for printf %b to decode.
	run=$(echo "$run" | sed 's/+/ /g; s/%\([0-9A-Fa-f][0-9A-Fa-f]\)/\\x\1/g')
	run=$(printf '%b' "$run")
	sh -c "$run"
	echo "VIREO-RUN EXIT STATUS $?"
else
	# cttyhack gives the shell the real console as its controlling tty (job control, ^C).
	setsid cttyhack sh -l
fi

echo "vireo-init: powering off"
sync
poweroff -f
