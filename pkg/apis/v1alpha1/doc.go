// Package v1alpha1 holds plinth's custom resources: PlinthVolume, the one
// record of a volume in the cluster (which node, pool, size and mode; the
// node's answer in its status), and PlinthNode, what one node says of its
// pools and devices. Both are cluster-scoped. The CRDs in deploy/ are
// generated from these types (make generate).
//
// +groupName=plinth.example.com
// +kubebuilder:object:generate=false
package v1alpha1

import "k8s.io/apimachinery/pkg/runtime/schema"

// Group and version of plinth's resources.
const (
	Group   = "plinth.example.com"
	Version = "v1alpha1"
)

// Resources, as the API server names them.
var (
	VolumeResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "plinthvolumes"}
	NodeResource   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "plinthnodes"}
)
