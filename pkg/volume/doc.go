// Package volume holds the controller's decisions (placement, identity,
// capacity) and the node's work on volumes, joined by one narrow
// interface, Node. On the node side, LocalNode owns the per-volume lock
// table that every caller takes (controller calls, CSI node, reconciler),
// and Publisher stages and publishes, acting only on mounts it has checked
// are the volume's own.
package volume
