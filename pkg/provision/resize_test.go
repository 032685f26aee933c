package provision

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// A PVC event right after a finished resize, with the PV lister not yet
// showing the resizer's own PV update, starts nothing: the live PV already
// has the size, so the PVC is not marked Resizing again (it used to be, and
// stayed so when the stale PV update then conflicted).
func TestResizeStalePVListerStartsNothing(t *testing.T) {
	size := func(s string) v1.ResourceList { return v1.ResourceList{v1.ResourceStorage: resource.MustParse(s)} }
	pvc := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "data"},
		Spec:       v1.PersistentVolumeClaimSpec{VolumeName: "pv-1", Resources: v1.VolumeResourceRequirements{Requests: size("2Gi")}},
		Status:     v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound, Capacity: size("2Gi")},
	}
	pv := func(capacity string) *v1.PersistentVolume {
		return &v1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-1"}, Spec: v1.PersistentVolumeSpec{Capacity: size(capacity),
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{Driver: "plinth.example.com", VolumeHandle: "pv-x"}}}}
	}
	client := fake.NewClientset(pvc, pv("2Gi"))
	claims := informers.NewSharedInformerFactory(client, 0).Core().V1().PersistentVolumeClaims().Informer()
	if err := claims.GetStore().Add(pvc); err != nil {
		t.Fatal(err)
	}
	stale := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	stale.Add(pv("1Gi"))
	// No Controller: expanding would panic.
	r := &Resizer{Client: client, Claims: claims, Volumes: corelisters.NewPersistentVolumeLister(stale), Driver: "plinth.example.com"}
	client.ClearActions()
	if err := r.sync(context.Background(), "ns/data"); err != nil {
		t.Fatal(err)
	}
	for _, a := range client.Actions() {
		if a.GetVerb() != "get" {
			t.Errorf("the resizer wrote: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
}
