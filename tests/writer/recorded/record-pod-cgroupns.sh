#!/bin/sh
C=/sys/fs/cgroup
P=$C/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8d3e6a2c_4b1f_4c2e_9a7d_1f0e2d3c4b5a.slice/cri-containerd-a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4.scope
for d in kubepods.slice kubepods.slice/kubepods-besteffort.slice; do mkdir -p $C/$d; echo +io > $C/$d/cgroup.subtree_control; done
mkdir -p $P
echo $$ > $P/cgroup.procs
mkdir -p /run/host/sys/fs/cgroup
unshare --cgroup --mount --propagation private sh -c '
  mount --bind /sys/fs/cgroup /run/host/sys/fs/cgroup
  umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
  echo "== /proc/self/cgroup"; cat /proc/self/cgroup
  echo "== /proc/self/mountinfo (cgroup2 lines)"; grep cgroup2 /proc/self/mountinfo
  echo "== ls /sys/fs/cgroup"; ls /sys/fs/cgroup | head -5
  echo "== ls /run/host/sys/fs/cgroup"; ls -d /run/host/sys/fs/cgroup/kubepods*'
