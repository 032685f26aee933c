package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and version of plinth's resources.
const (
	Group   = "plinth.example.com"
	Version = "v1alpha1"
)

// Kinds.
const (
	VolumeKind   = "PlinthVolume"
	SnapshotKind = "PlinthSnapshot"
	NodeKind     = "PlinthNode"
	MoveKind     = "PlinthMove"
)

// SchemeGroupVersion is the group and version of plinth's resources (the
// name the generated clientset looks for).
var SchemeGroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// Resources, as the API server names them.
var (
	VolumeResource   = SchemeGroupVersion.WithResource("plinthvolumes")
	SnapshotResource = SchemeGroupVersion.WithResource("plinthsnapshots")
	NodeResource     = SchemeGroupVersion.WithResource("plinthnodes")
	MoveResource     = SchemeGroupVersion.WithResource("plinthmoves")
)

// Resource returns the group-qualified resource for a plural name (the
// generated listers' not-found errors use it).
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

var (
	// SchemeBuilder registers PlinthVolume, PlinthSnapshot, PlinthNode, PlinthMove and their lists.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds plinth's kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&PlinthVolume{}, &PlinthVolumeList{},
		&PlinthSnapshot{}, &PlinthSnapshotList{},
		&PlinthNode{}, &PlinthNodeList{},
		&PlinthMove{}, &PlinthMoveList{},
	)
	metav1.AddToGroupVersion(scheme, SchemeGroupVersion)
	return nil
}
