package dra

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/plinth-dev/plinth/pkg/device"
)

func gpuSlice(node string) *resourceapi.ResourceSlice {
	return &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: node + "-plinth-x"},
		Spec: resourceapi.ResourceSliceSpec{Driver: driver, NodeName: ptr.To(node), Pool: resourceapi.ResourcePool{Name: node, ResourceSliceCount: 1},
			Devices: []resourceapi.Device{{Name: "pci-0000-18-00-0", Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				AttrResource: {StringValue: ptr.To("example.com/gpu")}}}}},
	}
}

var gpu = []device.Resource{{Name: "example.com/gpu"}}

// With the driver off, a slice left offering a device-plugin resource is
// deleted before the plugin registers.
func TestWithdrawDeletesStaleSlices(t *testing.T) {
	client := fake.NewClientset(gpuSlice("node-a"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Withdraw(ctx, client, driver, "node-a", gpu, false, nil); err != nil {
		t.Fatal(err)
	}
	if l, _ := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{}); len(l.Items) != 0 {
		t.Errorf("slices left: %v", l.Items)
	}
}

// With the driver on, Withdraw waits for its publication, never deleting
// its slices itself; and while a prepared claim holds a device of the
// resource, it waits too.
func TestWithdrawWaits(t *testing.T) {
	client := fake.NewClientset(gpuSlice("node-a"))
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if err := Withdraw(ctx, client, driver, "node-a", gpu, true, nil); err == nil {
		t.Fatal("returned while a slice still offers example.com/gpu")
	}
	if l, _ := client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{}); len(l.Items) != 1 {
		t.Errorf("the driver's slice was touched: %v", l.Items)
	}
	empty := fake.NewClientset()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel2()
	held := func() []string { return []string{"example.com/gpu"} }
	if err := Withdraw(ctx2, empty, driver, "node-a", gpu, true, held); err == nil {
		t.Fatal("returned while a prepared claim holds an example.com/gpu device")
	}
}

// The driver publishes nothing while the Node still counts the resource as
// a device plugin's (allocatable above 0); it goes on once that is 0.
func TestAwaitHandover(t *testing.T) {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: types.UID("u")}}
	n.Status.Allocatable = v1.ResourceList{"example.com/gpu": resource.MustParse("8")}
	client := fake.NewClientset(n)
	d := &Driver{cfg: Config{NodeName: "node-a", Resources: gpu, Client: client, HandoverPoll: 50 * time.Millisecond}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.awaitHandover(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("handover done while 8 GPUs are allocatable: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	n.Status.Allocatable["example.com/gpu"] = resource.MustParse("0")
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A service account that may not read ResourceSlices cannot have published
// any: the device plugins register instead of waiting forever.
func TestWithdrawForbidden(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "resourceslices", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(resourceapi.Resource("resourceslices"), "", nil)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Withdraw(ctx, client, driver, "node-a", gpu, false, nil); err != nil {
		t.Fatal(err)
	}
}
