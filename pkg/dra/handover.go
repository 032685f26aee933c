package dra

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/device"
)

// A resource moves between the device plugin and DRA only through a state
// where neither offers it: the scheduler sends a pod's extended resource to
// DRA only where the Node's allocatable for it is 0, and the kubelet admits
// against the device plugin's count, so a node offering both would admit
// the same devices twice.

// awaitHandover waits until the Node's allocatable no longer counts any DRA
// resource's devices (a device plugin that served it before this start is
// gone and the kubelet has marked its devices unhealthy).
func (d *Driver) awaitHandover(ctx context.Context) error {
	logged := false
	return wait.PollUntilContextCancel(ctx, d.cfg.HandoverPoll, true, func(ctx context.Context) (bool, error) {
		n, err := d.cfg.Client.CoreV1().Nodes().Get(ctx, d.cfg.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			klog.ErrorS(err, "Read the Node before publishing DRA devices", "node", d.cfg.NodeName)
			return false, nil
		}
		if busy := deviceAllocatable(n, d.cfg.Resources); len(busy) > 0 {
			if !logged {
				klog.InfoS("Waiting for the kubelet to stop counting device-plugin devices before publishing them through DRA", "resources", busy)
				logged = true
			}
			return false, nil
		}
		return true, nil
	})
}

// deviceAllocatable lists the resources the Node still has allocatable.
func deviceAllocatable(n *v1.Node, rs []device.Resource) []string {
	var out []string
	for _, r := range rs {
		if q, ok := n.Status.Allocatable[v1.ResourceName(r.Name)]; ok && !q.IsZero() {
			out = append(out, r.Name)
		}
	}
	return out
}

// Withdraw makes sure, before the device plugins of pluginResources
// register, that DRA offers and holds none of their devices: no
// ResourceSlice of driver on node lists one (with the driver not running it
// deletes the node's slices of the driver, which a previous start may have
// published; otherwise it waits until the driver's own publication, which
// lists only DRA resources, has replaced them), and no claim prepared
// through DRA still holds one (held, when set, names such resources: a
// resource switched back to the device plugin waits until the pods that
// got its devices through DRA are gone).
func Withdraw(ctx context.Context, client kubernetes.Interface, driver, node string, pluginResources []device.Resource, draOn bool, held func() []string) error {
	if len(pluginResources) == 0 {
		return nil
	}
	selector := fields.Set{resourceapi.ResourceSliceSelectorNodeName: node, resourceapi.ResourceSliceSelectorDriver: driver}.AsSelector().String()
	plugin := map[string]bool{}
	for _, r := range pluginResources {
		plugin[r.Name] = true
	}
	logged := false
	return wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil {
			if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
				return true, nil // no resource.k8s.io/v1 in this cluster: nothing published
			}
			if apierrors.IsForbidden(err) {
				// This service account may not read slices, so it cannot
				// have published any (RBAC of a release without DRA).
				klog.InfoS("Not allowed to list ResourceSlices: assuming this node publishes none", "err", err)
				return true, nil
			}
			klog.ErrorS(err, "List this node's ResourceSlices before registering device plugins")
			return false, nil
		}
		if held != nil {
			if busy := held(); len(busy) > 0 {
				if !logged {
					klog.InfoS("Waiting for the claims prepared through DRA to be unprepared before their resources' device plugins register", "resources", busy)
					logged = true
				}
				return false, nil
			}
		}
		var stale []string
		for _, s := range list.Items {
			for _, dev := range s.Spec.Devices {
				if a, ok := dev.Attributes[AttrResource]; ok && a.StringValue != nil && plugin[*a.StringValue] {
					stale = append(stale, s.Name)
					break
				}
			}
		}
		if len(stale) == 0 {
			return true, nil
		}
		if !draOn {
			for _, name := range stale {
				err := client.ResourceV1().ResourceSlices().Delete(ctx, name, metav1.DeleteOptions{})
				if err != nil && !apierrors.IsNotFound(err) {
					return false, fmt.Errorf("delete ResourceSlice %s, which offers device-plugin devices through DRA: %w", name, err)
				}
				klog.InfoS("Deleted a ResourceSlice that offered device-plugin devices through DRA", "slice", name)
			}
			return false, nil
		}
		if !logged {
			klog.InfoS("Waiting for this node's ResourceSlices to stop offering device-plugin resources before registering their plugins", "slices", stale)
			logged = true
		}
		return false, nil
	})
}
