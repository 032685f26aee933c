// Package iolimit enforces a volume's IO limits (the readIOPS, writeIOPS,
// readBytesPerSecond and writeBytesPerSecond of its
// VolumeAttributesClass) on the pods that use it, through the block IO
// controller of each pod's cgroup, for the volume's block devices:
//
//   - New finds the hierarchy: cgroup v1 (root/blkio with blk-throttle)
//     or cgroup v2 (root/cgroup.controllers listing io).
//   - Limiter.Apply finds the pod's cgroup (pod<uid> of the kubelet's
//     cgroupfs driver, kubepods-…-pod<uid>.slice of its systemd driver,
//     under any cgroup root) and writes the rules; called again it changes
//     them in place, which is how a class change applies live.
//     Limiter.Forget removes them when the volume leaves the pod, and
//     Limiter.Run keeps them on the pod's new cgroups (v1, below).
//
// # cgroup v1: flat throttling
//
// blk-throttle on cgroup v1 is not hierarchical: a rule on the pod's
// cgroup does not cover the processes in its containers' cgroups below
// it. So Apply writes each rule (blkio.throttle.read_iops_device,
// write_iops_device, read_bps_device, write_bps_device: "MAJ:MIN N",
// where 0 removes the rule) into the pod's cgroup and every cgroup below
// it, to a few levels, and watches them (inotify: a mkdir in cgroupfs is
// an IN_CREATE of its parent) so that a cgroup made later gets the rules
// the moment Run sees it. The kubelet publishes volumes before it starts
// the containers, so most containers are throttled from their start; but
// a container's first milliseconds, before the watch fires and its rules
// are written, are not. Processes in cgroups deeper than the levels
// watched (a container that makes its own cgroups) are not throttled.
//
// cgroup v1 cannot throttle buffered writes: they reach the device when
// the kernel's flusher writes the pages back, outside the pod's cgroup.
// Only direct IO and reads are limited; a pod writing through the page
// cache is held back only by its memory limit and dirty-page throttling.
//
// # cgroup v2: io.max
//
// io.max is hierarchical: one line on the pod's cgroup, "MAJ:MIN
// riops=N wiops=N rbps=N wbps=N" with max for no limit, covers all of its
// containers, and nothing needs watching. Buffered writes are throttled
// too, by writeback attribution, but only where the memory controller is
// enabled for the pod's cgroup along with io, on a filesystem that
// attributes writeback to cgroups (ext4, xfs, btrfs).
//
// # Several volumes
//
// Each key is one volume published to one pod; a pod can have several,
// each with its own devices. A rule is per device, so where two keys of
// one pod name the same device, the tightest of their limits, field by
// field, holds, and forgetting one leaves the other's.
//
// # Input
//
// A pod UID becomes part of a path only once it is checked to be one (a
// UUID, or the 32 hex digits of a static pod). The search never follows
// a symlink and stays within a bounded depth; files are opened
// write-only, never created, relative to the hierarchy with openat2
// (RESOLVE_BENEATH, no symlinks), and written with one write(2) a rule.
// A device of major 0, or out of the kernel's device number range, is
// refused. IOPS above 2^32-1, more than the kernel keeps, are no limit;
// a limit the kernel refuses fails naming the file.
package iolimit
