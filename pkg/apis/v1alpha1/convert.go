package v1alpha1

import (
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// Kinds.
const (
	VolumeKind = "PlinthVolume"
	NodeKind   = "PlinthNode"
)

// FromUnstructured converts an object read through the dynamic client.
func FromUnstructured[T PlinthVolume | PlinthNode](obj any) (*T, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("not an unstructured object: %T", obj)
	}
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return out, nil
}

// ToUnstructured converts a PlinthVolume or PlinthNode for the dynamic
// client, with its apiVersion and kind set.
func ToUnstructured[T PlinthVolume | PlinthNode](obj *T) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(Group + "/" + Version)
	switch any(obj).(type) {
	case *PlinthVolume:
		u.SetKind(VolumeKind)
	case *PlinthNode:
		u.SetKind(NodeKind)
	}
	return u, nil
}
