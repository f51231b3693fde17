#!/usr/bin/env bash
# run-in-v2-kernel.sh - run a command as root on a real cgroup v2 kernel (an emulated guest).
#
# Usage: scripts/run-in-v2-kernel.sh [--disk-size SIZE] [--memory SIZE] [--timeout S] CMD [ARGS...]
#
# Boots Debian's generic 6.1 kernel (unpacked by scripts/setup.sh into the cache
# below, never installed over the host's boot) under qemu-system-x86_64 with TCG
# (/dev/kvm exists on the dev box but a KVM guest hangs in early boot), with a
# busybox initramfs that loads the virtio/9p/ext4/bfq modules, mounts this
# machine's root file system READ-ONLY over 9p at the same paths, and chroots
# into it. CMD then runs as root with:
#
#   /sys/fs/cgroup     cgroup2, "+io" in the root's cgroup.subtree_control
#   /tmp, /run         writable tmpfs; of the host's, only the working directory and
#                      this checkout are visible there (bound back read-only), so a
#                      clone under /tmp runs as it does anywhere else
#   lo                 loopback networking, nothing else
#   $DRCIO_VM_DISK_DEV MAJ:MIN of a raw scratch virtio disk (a sparse file on the host)
#   $DRCIO_VM_SCRATCH  a directory on an ext4 file system on that disk
#   $DRCIO_VM_KERNEL   the guest kernel's release
#
# CMD's output is printed; the script exits with CMD's exit code. A guest that
# overruns --timeout is killed (exit 124), and its temporary files are removed
# whatever happens. Needs root (the guest reads the whole host tree).
#
# Environment: DRCIO_VM_CACHE (where setup.sh unpacked the kernel; default
# /var/cache/drcio/v2-kernel), DRCIO_VM_DEBUG=1 shows the guest's boot messages.
set -euo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

DISK_SIZE=1G
MEMORY=1G
TIMEOUT=600
while [ $# -gt 0 ]; do
  case "$1" in
    --disk-size) DISK_SIZE=${2:?--disk-size needs a size}; shift 2 ;;
    --memory) MEMORY=${2:?--memory needs a size}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "run-in-v2-kernel: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "run-in-v2-kernel: no command given (see --help)" >&2
  exit 2
fi
case "$TIMEOUT" in ''|*[!0-9]*) echo "run-in-v2-kernel: --timeout must be whole seconds, got '$TIMEOUT'" >&2; exit 2 ;; esac

CACHE=${DRCIO_VM_CACHE:-/var/cache/drcio/v2-kernel}
fail() { echo "run-in-v2-kernel: $*" >&2; exit 3; }
[ "$(id -u)" -eq 0 ] || fail "needs root (the guest mounts the host's whole file system)"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing: run scripts/setup.sh"
BUSYBOX=$(command -v busybox) || fail "busybox missing: run scripts/setup.sh (Debian package busybox-static)"
KROOT=$(ls -d "$CACHE"/*/ 2>/dev/null | sort -V | tail -n 1) || true
[ -n "$KROOT" ] && [ -d "$KROOT/boot" ] || fail "no unpacked kernel in $CACHE: run scripts/setup.sh"
KREL=$(basename "$(ls -d "$KROOT"/lib/modules/*/ | head -n 1)")
VMLINUZ="$KROOT/boot/vmlinuz-$KREL"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drcio-v2-vm.XXXXXX")
QEMU_PID=
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill -KILL "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ---- the initramfs: busybox, the modules (with their dependency list), /init, the command
INITRD_DIR="$WORK/initrd"
mkdir -p "$INITRD_DIR"/{bin,dev,proc,sys,host,lib/modules/"$KREL"}
cp "$BUSYBOX" "$INITRD_DIR/bin/busybox"
MODDIR="$KROOT/lib/modules/$KREL"
MODULES="virtio_pci virtio_blk 9pnet_virtio 9p ext4 crc32c_generic bfq"
# Copy each module and everything modules.dep says it needs, keeping the paths modprobe expects.
needed=$(for m in $MODULES; do
  awk -v m="$m" '{ f=$1; sub(":$","",f); n=f; sub(".*/","",n); sub("\\.ko.*","",n); gsub("-","_",n);
                   if (n==m) { print f; for (i=2;i<=NF;i++) print $i } }' "$MODDIR/modules.dep"
done | sort -u)
for f in $needed; do
  mkdir -p "$INITRD_DIR/lib/modules/$KREL/$(dirname "$f")"
  cp "$MODDIR/$f" "$INITRD_DIR/lib/modules/$KREL/$f"
done
cp "$MODDIR/modules.dep" "$INITRD_DIR/lib/modules/$KREL/"

{
  printf '#!/bin/sh\n'
  printf 'cd %q\n' "$PWD"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} > "$INITRD_DIR/cmd"
chmod +x "$INITRD_DIR/cmd"

# The guest's /tmp and /run are fresh tmpfs; the working directory and this checkout
# are bound back from the host's tree where they live below either (e.g. a CI clone in /tmp).
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
for p in "$(pwd -P)" "$REPO"; do
  case "$p" in /tmp|/tmp/*|/run|/run/*) printf '%s\n' "$p" ;; esac
done | sort -u > "$INITRD_DIR/keep.list"

cat > "$INITRD_DIR/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
KREL=$(uname -r)
for m in virtio_pci virtio_blk 9pnet_virtio 9p ext4 crc32c_generic bfq; do
  modprobe "$m" || echo "guest: modprobe $m failed" >&2
done
# The host's root, read-only, with the guest's own /proc, /sys, /dev, cgroup2, /tmp and /run on top.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host || { echo "guest: 9p mount failed" >&2; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t devpts devpts /host/dev/pts 2>/dev/null || true
mount -t cgroup2 -o nsdelegate cgroup2 /host/sys/fs/cgroup
echo +io > /host/sys/fs/cgroup/cgroup.subtree_control
i=0
while read -r p; do i=$((i+1)); mkdir -p "/keep/$i"; mount -o bind "/host$p" "/keep/$i"; done < /keep.list
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
i=0
while read -r p; do i=$((i+1)); mkdir -p "/host$p"; mount -o bind "/keep/$i" "/host$p"; done < /keep.list
ip link set lo up
# Scratch disk: raw virtio disk, ext4 over the whole disk (cgroup I/O limits take whole disks).
mkdir -p /host/run/drcio-scratch
chroot /host /sbin/mkfs.ext4 -q -F /dev/vda >/host/run/.mkfs.log 2>&1 || { echo "guest: mkfs.ext4 /dev/vda failed:" >&2; cat /host/run/.mkfs.log >&2; }
mount -t ext4 /dev/vda /host/run/drcio-scratch
chmod 1777 /host/run/drcio-scratch
cp /cmd /host/run/drcio-cmd
stty -onlcr -echo 2>/dev/null
export DRCIO_VM_DISK_DEV=$(cat /sys/block/vda/dev) DRCIO_VM_SCRATCH=/run/drcio-scratch DRCIO_VM_KERNEL=$KREL
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "guest: ready after $(cut -d' ' -f1 /proc/uptime) s" > /dev/ttyS1
chroot /host /run/drcio-cmd < /dev/null
rc=$?
sync
echo "exit=$rc" > /dev/ttyS1
poweroff -f
INIT
chmod +x "$INITRD_DIR/init"
(cd "$INITRD_DIR" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 > "$WORK/initrd.gz")

truncate -s "$DISK_SIZE" "$WORK/scratch.img"
: > "$WORK/status"

if [ "${DRCIO_VM_DEBUG:-0}" = 1 ]; then CONSOLE="console=ttyS0 loglevel=7"; else CONSOLE="console=ttyS0 quiet loglevel=0"; fi

# -accel tcg: KVM hangs in early boot on the dev box. The 9p export is read-only;
# multidevs=remap keeps inode numbers of the host's different file systems apart
# (without it the guest's mounts land on the wrong directories).
timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg -m "$MEMORY" -smp 1 -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
  -append "$CONSOLE panic=-1 rdinit=/init" \
  -chardev stdio,id=out,signal=off -serial chardev:out -serial "file:$WORK/status" \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
  -drive "file=$WORK/scratch.img,format=raw,if=virtio,cache=writeback" \
  < /dev/null &
QEMU_PID=$!
set +e
wait "$QEMU_PID"
qrc=$?
set -e
QEMU_PID=
if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
  echo "run-in-v2-kernel: guest killed after the ${TIMEOUT} s timeout" >&2
  exit 124
fi
[ "${DRCIO_VM_DEBUG:-0}" = 1 ] && cat "$WORK/status" >&2
rc=$(sed -n 's/^exit=\([0-9]*\).*/\1/p' "$WORK/status" | tail -n 1)
if [ -z "$rc" ]; then
  echo "run-in-v2-kernel: the guest stopped without reporting an exit code (qemu exit $qrc); rerun with DRCIO_VM_DEBUG=1" >&2
  exit 3
fi
exit "$rc"
