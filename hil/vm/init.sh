#!/bin/busybox sh
# /init of the HIL VM's initramfs (built by hil/vm/build.sh, booted by hil/vm/run.sh).
# Loads the CAN/9p modules, mounts the host's root over 9p, creates vcan0/vcan1, chroots into the host root,
# runs the job script named on the kernel command line, prints "HSX-VM-EXIT <nonce> <code>" and powers off.
# Everything it says itself starts with "[hil-vm]"; everything else on the console is the job's output.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "[hil-vm] $*"; }
job=""; nonce=""; p9cache="loose"
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    hsx_job=*) job="${arg#hsx_job=}";;
    hsx_nonce=*) nonce="${arg#hsx_nonce=}";;
    hsx_9pcache=*) p9cache="${arg#hsx_9pcache=}";;
  esac
done
finish() {
  echo "HSX-VM-EXIT $nonce $1"
  sync
  poweroff -f
  sleep 5
}

while read -r ko; do
  insmod "/lib/modules/$ko" || { say "insmod $ko failed"; finish 125; }
done < /lib/modules/order

# msize: bigger 9p messages make reading node_modules over virtio much faster.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=$p9cache,access=any hostroot /host \
  || { say "cannot mount the host root over 9p"; finish 125; }

ip link set lo up
for ifc in vcan0 vcan1; do
  ip link add dev "$ifc" type vcan && ip link set "$ifc" mtu 72 && ip link set "$ifc" up \
    || { say "cannot create $ifc"; finish 125; }
done
# Unpaced bursts overflow the default socket receive buffer and drop silently; give sockets room.
echo 8388608 > /proc/sys/net/core/rmem_default
echo 8388608 > /proc/sys/net/core/rmem_max
echo 4194304 > /proc/sys/net/core/wmem_default
echo 4194304 > /proc/sys/net/core/wmem_max

# The chroot sees the host's files (the host's /tmp too: CI may clone the work tree there) but the
# guest's kernel: its own proc, sys and dev, and a private scratch directory as TMPDIR (unix sockets and
# mmap'd scratch files need a local filesystem, not 9p).
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs tmpfs /host/run 2>/dev/null
mkdir -p /host/run/hsx-tmp && chmod 1777 /host/run/hsx-tmp

[ -n "$job" ] && [ -f "/host$job" ] || { say "no job script (hsx_job=$job)"; finish 125; }
export TMPDIR=/run/hsx-tmp HOME=/root TERM=dumb LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
chroot /host /bin/bash "$job" < /dev/null
rc=$?
umount /host/dev/shm /host/dev/pts 2>/dev/null
finish "$rc"
