// Package provision is plinth controller's side of a cluster: the
// provisioner of sig-storage-lib-external-provisioner (a thin adapter that
// reads a PVC and its StorageClass into volume.Ask), Cluster (the nodes'
// PlinthNodes and the PlinthVolumes that carry each request to its node,
// with per-node capacity reservations), CSIStorageCapacity publishing, and
// the resizer that grows volumes whose PVC asks for more.
package provision
