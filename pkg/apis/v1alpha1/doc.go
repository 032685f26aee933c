// Package v1alpha1 holds plinth's custom resources: PlinthVolume, the one
// record of a volume in the cluster (which node, pool, size and mode; the
// node's answer in its status), and PlinthNode, what one node says of its
// pools and devices. Both are cluster-scoped. The CRDs in deploy/ are
// generated from these types (make generate).
//
// +groupName=plinth.example.com
// +kubebuilder:object:generate=true
package v1alpha1
