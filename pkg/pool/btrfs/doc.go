// Package btrfs is the pool backend whose volumes are subvolumes of a btrfs
// filesystem; snapshots and clones are native btrfs snapshots.
//
// A volume is bounded by the limit on its level-1 qgroup 1/<subvolume id>,
// which holds the volume's own level-0 qgroup and that of every subvolume
// made inside it: anyone who may write in a volume may make a subvolume
// there, and a limit on the volume's level-0 qgroup alone does not see it.
// On a filesystem with simple quotas (which a new pool gets where the
// kernel has them) the kernel puts a new subvolume into the groups of the
// subvolume it is made in; the pool sweeps for the rest (see Stats), and
// upgrades volumes made before level-1 groups when it opens. Usage reads
// the level-1 group, and a delete removes the nested subvolumes first.
// docs/backends.md says what remains open.
package btrfs
