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

# busybox's poweroff and reboot (which the agent runs when the host asks) signal PID 1:
# USR2 powers off, TERM reboots. The shell acts on them once its foreground command ends.
trap 'echo "vireo-init: powering off"; sync; poweroff -f' USR2
trap 'echo "vireo-init: rebooting"; sync; reboot -f' TERM
ip link set lo up 2>/dev/null

# The list is written by the image builder: the wanted modules that are not built in.
while read -r module; do
	case "$module" in '' | '#'*) continue ;; esac
	modprobe "$module" || echo "vireo-init: cannot load module $module"
done </etc/vireo/modules

# The power button (the VMM's "shut down"): the kernel's ACPI button driver reports
# KEY_POWER, busybox acpid runs /etc/acpi/PWRF/00000080 for it. It powers off from
# there, not through PID 1's trap, which would wait for the foreground command.
mkdir -p /etc/acpi/PWRF
cat >/etc/acpi/PWRF/00000080 <<'SCRIPT'
#!/bin/sh
echo "vireo-init: power button: powering off" >/dev/console
sync
poweroff -f
SCRIPT
chmod 755 /etc/acpi/PWRF/00000080
# As soon as the button driver is loaded: a press before acpid listens is lost.
acpid -c /etc/acpi -l /run/acpid.log || echo "vireo-init: cannot start acpid"

# A network card (virtio-net: passt's user-mode network or a TAP bridge): DHCP on the
# first one with busybox udhcpc, which runs the script below on each lease event
# ($1 and the lease in its environment: ip, mask (prefix bits), router, dns, mtu).
mkdir -p /etc/vireo
cat >/etc/vireo/udhcpc.script <<'SCRIPT'
#!/bin/sh
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
	for r in $router; do
		ip route replace default via "$r" dev "$interface"
		break
	done
	: >/etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	echo "vireo-init: $interface $ip/$mask gateway $router dns $dns"
	;;
esac
SCRIPT
chmod 755 /etc/vireo/udhcpc.script
for nic in /sys/class/net/*; do
	nic=${nic##*/}
	[ "$nic" = lo ] && continue
	ip link set "$nic" up
	# -n: give up (after -t tries) rather than wait forever; with a lease udhcpc goes to
	# the background and renews it.
	udhcpc -i "$nic" -s /etc/vireo/udhcpc.script -t 5 -T 2 -n >/dev/null 2>&1 ||
		echo "vireo-init: no DHCP lease on $nic"
	break
done

# The guest info once on the console, then the agent itself, serving the host on vsock
# port 7000 when the VM has a vsock device (its log: /run/vireo-agent.log).
vireo-agent info || echo "vireo-init: vireo-agent info failed"
for dev in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do
	[ -e "$dev" ] && vireo-agent run >/run/vireo-agent.log 2>&1 &
	break
done

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
