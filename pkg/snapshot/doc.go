// Package snapshot serves the VolumeSnapshotContents of plinth's driver in a
// cluster: the work the csi-snapshotter sidecar does beside other drivers.
// It runs that sidecar's own controller
// (github.com/kubernetes-csi/external-snapshotter/v8/pkg/sidecar-controller)
// inside plinth controller, with a Snapshotter that asks plinth's CSI
// controller service in-process instead of over a socket: the same
// requests, validation and gRPC codes as the sidecar would get, without a
// container or a socket between them. The cluster-wide snapshot-controller
// and the snapshot CRDs are the cluster's (a standard add-on); until the
// CRDs exist, Run waits for them.
package snapshot
