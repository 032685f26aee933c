// Package node is the node side of volumes: Local serves this machine's
// pools behind the controller's seam (volume.Node) and owns the per-volume
// lock table every caller on the node takes (controller calls in
// standalone, the CSI node service, the reconciler of volume objects);
// Mounts stages and publishes volumes for consumers, acting only on
// mounts it has checked are the volume's own.
package node
