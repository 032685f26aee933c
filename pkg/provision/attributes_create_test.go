package provision

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/volume"
)

const testTopologyKey = "topology.plinth.example.com/node"

func attributesClass(name, driver string, params map[string]string) *storagev1.VolumeAttributesClass {
	return &storagev1.VolumeAttributesClass{ObjectMeta: metav1.ObjectMeta{Name: name}, DriverName: driver, Parameters: params}
}

// classLister lists these VolumeAttributesClasses; add puts one more in.
func classLister(t *testing.T, classes ...*storagev1.VolumeAttributesClass) (lister storagelisters.VolumeAttributesClassLister, add func(*storagev1.VolumeAttributesClass)) {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	add = func(c *storagev1.VolumeAttributesClass) {
		if err := idx.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range classes {
		add(c)
	}
	return storagelisters.NewVolumeAttributesClassLister(idx), add
}

// claimWithClass is PVC ns/data asking 16Mi, naming VolumeAttributesClass
// class, for a StorageClass of plinth with pool poolName.
func claimWithClass(class, poolName string) controller.ProvisionOptions {
	return controller.ProvisionOptions{
		StorageClass: &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "plinth-local"}, Provisioner: driverName,
			Parameters: map[string]string{"pool": poolName}},
		PVName: "pvc-0f1e2d3c", SelectedNodeName: "n1",
		PVC: &v1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "data", UID: "uid-data"},
			Spec: v1.PersistentVolumeClaimSpec{
				AccessModes:               []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
				VolumeMode:                ptr(v1.PersistentVolumeBlock),
				Resources:                 v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("16Mi")}},
				VolumeAttributesClassName: ptr(class),
			},
		},
	}
}

// standaloneController is a volume.Controller over node n1 with a real
// file pool "f".
func standaloneController(t *testing.T) *volume.Controller {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "f")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p, err := file.New(file.Config{Name: "f", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	local, err := node.NewLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	return volume.NewController(map[string]volume.Node{"n1": local})
}

var goldClass = attributesClass("gold", driverName, map[string]string{
	"readIOPS": "1000", "writeIOPS": "500", "readBytesPerSecond": "100Mi", "writeBytesPerSecond": "50Mi", "provisioning": "thick"})

var goldLimits = pool.IOLimits{ReadIOPS: 1000, WriteIOPS: 500, ReadBytesPerSecond: 100 << 20, WriteBytesPerSecond: 50 << 20}

// A claim that names a VolumeAttributesClass of plinth's is made with the
// class's parameters (what the external-provisioner passes as CreateVolume's
// mutable_parameters), and its PV records the class
// (spec.volumeAttributesClassName), which is what tells the binder and the
// modify controller that the volume has it already.
func TestProvisionWithAttributesClass(t *testing.T) {
	ctx := context.Background()
	vc := standaloneController(t)
	classes, _ := classLister(t, goldClass)
	p := &Provisioner{Driver: driverName, TopologyKey: testTopologyKey, Controller: vc, AttributeClasses: classes}
	opts := claimWithClass("gold", "f")

	req, err := p.request(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&goldLimits, req.Params.IOLimits); d != "" {
		t.Errorf("request's IO limits (-want +got):\n%s", d)
	}
	if !req.Params.Thick {
		t.Error("request: the class says provisioning thick, the request is thin")
	}

	pv, state, err := p.Provision(ctx, opts)
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("Provision: %v, %s", err, state)
	}
	if got := pv.Spec.VolumeAttributesClassName; got == nil || *got != "gold" {
		t.Errorf("PV spec.volumeAttributesClassName %v, want gold", got)
	}
	placed, err := vc.GetVolume(ctx, pv.Spec.CSI.VolumeHandle)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&goldLimits, placed.Volume.IOLimits); d != "" {
		t.Errorf("the volume made: IO limits (-want +got):\n%s", d)
	}
	if !placed.Volume.Thick {
		t.Error("the volume made is thin; the class says thick")
	}

	// A claim naming no class: no limits, and the PV names none.
	plain := claimWithClass("", "f")
	plain.PVC.Spec.VolumeAttributesClassName = nil
	plain.PVName = "pvc-plain"
	pv, _, err = p.Provision(ctx, plain)
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.VolumeAttributesClassName != nil {
		t.Errorf("PV of a claim without a class names %q", *pv.Spec.VolumeAttributesClassName)
	}
	if placed, err := vc.GetVolume(ctx, pv.Spec.CSI.VolumeHandle); err != nil || !placed.Volume.IOLimits.IsZero() || placed.Volume.Thick {
		t.Errorf("volume of a claim without a class: %+v, %v; want no limits, thin", placed.Volume, err)
	}
}

// Through the cluster (plinth controller): the volume object the node
// makes the volume from carries the class's limits and provisioning.
func TestProvisionWithAttributesClassInCluster(t *testing.T) {
	ctx := context.Background()
	c, client := fakeCluster(t, 100*mi, nil)
	classes, _ := classLister(t, goldClass)
	p := &Provisioner{Driver: driverName, TopologyKey: testTopologyKey, Controller: volume.NewControllerOver(c), AttributeClasses: classes}
	if _, state, err := p.Provision(ctx, claimWithClass("gold", "fast")); state != controller.ProvisioningInBackground {
		// No node answers in this test: the volume is recorded and waits.
		t.Fatalf("Provision: %v, %s; want in background", err, state)
	}
	l, err := client.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 1 {
		t.Fatalf("%d volume objects, want 1", len(l.Items))
	}
	spec := l.Items[0].Spec
	if d := cmp.Diff(&v1alpha1.IOLimits{ReadIOPS: 1000, WriteIOPS: 500, ReadBytesPerSecond: 100 << 20, WriteBytesPerSecond: 50 << 20}, spec.IOLimits); d != "" {
		t.Errorf("volume object spec.ioLimits (-want +got):\n%s", d)
	}
	if !spec.Thick {
		t.Error("volume object spec.thick is false; the class says thick")
	}
}

// A claim naming a class of another driver is refused before anything is
// made; one naming a class that does not exist yet is refused (an error:
// the library tries the claim again) and made once the class exists.
func TestProvisionAttributesClassRefused(t *testing.T) {
	ctx := context.Background()
	vc := standaloneController(t)
	classes, add := classLister(t, attributesClass("foreign", "ebs.csi.aws.com", map[string]string{"iops": "3000"}))
	p := &Provisioner{Driver: driverName, TopologyKey: testTopologyKey, Controller: vc, AttributeClasses: classes}
	nothingMade := func(when string) {
		t.Helper()
		all, err := vc.ListVolumes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 0 {
			t.Errorf("%s: %d volumes made, want none", when, len(all))
		}
	}

	pv, state, err := p.Provision(ctx, claimWithClass("foreign", "f"))
	if err == nil || pv != nil {
		t.Errorf("class of another driver: PV %v, error %v; want a refusal", pv, err)
	}
	if state == controller.ProvisioningInBackground {
		t.Errorf("class of another driver: %s; nothing is being made", state)
	}
	nothingMade("class of another driver")

	pv, state, err = p.Provision(ctx, claimWithClass("gold", "f"))
	if err == nil || pv != nil {
		t.Errorf("missing class: PV %v, error %v; want an error (retried)", pv, err)
	}
	if state == controller.ProvisioningInBackground {
		t.Errorf("missing class: %s; nothing is being made", state)
	}
	nothingMade("missing class")

	// The library's retry, once the class exists.
	add(goldClass)
	pv, _, err = p.Provision(ctx, claimWithClass("gold", "f"))
	if err != nil {
		t.Fatalf("after the class was created: %v", err)
	}
	if got := pv.Spec.VolumeAttributesClassName; got == nil || *got != "gold" {
		t.Errorf("PV spec.volumeAttributesClassName %v, want gold", got)
	}
}
