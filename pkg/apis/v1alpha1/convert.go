package v1alpha1

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/plinth-dev/plinth/pkg/pool"
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

// ObjectMode is a pool mode as a PlinthVolume spells it.
func ObjectMode(m pool.Mode) string {
	if m == pool.ModeBlock {
		return ModeBlock
	}
	return ModeFilesystem
}

// PoolMode is a PlinthVolume's mode as the pools spell it.
func PoolMode(m string) pool.Mode {
	if m == ModeBlock {
		return pool.ModeBlock
	}
	return pool.ModeFilesystem
}

// List reads every PlinthVolume or PlinthNode through the dynamic client.
func List[T PlinthVolume | PlinthNode](ctx context.Context, dyn dynamic.Interface) ([]*T, error) {
	gvr := VolumeResource
	if _, ok := any(new(T)).(*PlinthNode); ok {
		gvr = NodeResource
	}
	l, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", gvr.Resource, err)
	}
	out := make([]*T, 0, len(l.Items))
	for i := range l.Items {
		v, err := FromUnstructured[T](&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
