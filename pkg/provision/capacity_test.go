package provision

import (
	"context"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/plinth-dev/plinth/pkg/volume"
)

// CSIStorageCapacity is published per class and node that has a pool the
// class may use: a full pool says 0, a node without such a pool has no
// object (old: one per class and node, 9 per node in a cluster of 9
// classes, however few a node could serve).
func TestCapacityOnlyWhereAPoolServes(t *testing.T) {
	nodes := []runtime.Object{
		plinthNode("n1", poolStatus("fast", 100*mi), poolStatus("bulk", 0)),
		plinthNode("n2", poolStatus("bulk", 50*mi)),
	}
	c, _ := fakeClusterOf(t, nodes, nil, nil)
	class := func(name, pool string) *storagev1.StorageClass {
		return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: "plinth.example.com", Parameters: map[string]string{"pool": pool}}
	}
	core := fake.NewSimpleClientset(class("fast", "fast"), class("bulk", "bulk"))
	factory := informers.NewSharedInformerFactory(core, 0)
	classes := factory.Storage().V1().StorageClasses()
	_ = classes.Informer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	factory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), classes.Informer().HasSynced)
	p := &CapacityPublisher{Client: core, Classes: classes.Lister(), Cluster: c, Controller: volume.NewControllerOver(c),
		Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Namespace: "plinth-system"}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := core.StorageV1().CSIStorageCapacities("plinth-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, o := range l.Items {
		got[o.StorageClassName+"@"+o.NodeTopology.MatchLabels["topology.plinth.example.com/node"]] = o.Capacity.Value()
	}
	want := map[string]int64{"fast@n1": 100 * mi, "bulk@n1": 0, "bulk@n2": 50 * mi}
	if len(got) != len(want) {
		t.Fatalf("objects %v, want %v (none for fast on n2, which has no pool fast)", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: %d (present %v), want %d", k, g, ok, v)
		}
	}
}

// With a cache of its objects (Published) a pass reads none from the API
// server, leaves the cached objects as they were (they are shared), and
// still corrects what it finds: a stale capacity updated, an object of a
// node that left deleted, someone else's object left alone.
func TestCapacityFromCache(t *testing.T) {
	c, _ := fakeClusterOf(t, []runtime.Object{plinthNode("n1", poolStatus("fast", 100*mi))}, nil, nil)
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Provisioner: "plinth.example.com", Parameters: map[string]string{"pool": "fast"}}
	owned := map[string]string{labelManagedBy: "plinth", labelDriver: "plinth.example.com"}
	q := func(v int64) *resource.Quantity { return resource.NewQuantity(v, resource.BinarySI) }
	stale := &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: capacityName("fast", "n1"), Namespace: "plinth-system", Labels: owned},
		StorageClassName: "fast", Capacity: q(1), MaximumVolumeSize: q(1)}
	gone := &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: capacityName("fast", "n9"), Namespace: "plinth-system", Labels: owned},
		StorageClassName: "fast", Capacity: q(1), MaximumVolumeSize: q(1)}
	foreign := &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "plinth-system"}, StorageClassName: "fast", Capacity: q(1)}
	core := fake.NewSimpleClientset(sc, stale, gone, foreign)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	factory := informers.NewSharedInformerFactory(core, 0)
	classes := factory.Storage().V1().StorageClasses()
	capFactory := informers.NewSharedInformerFactoryWithOptions(core, 0, informers.WithNamespace("plinth-system"),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = CapacitySelector("plinth.example.com") }))
	published := capFactory.Storage().V1().CSIStorageCapacities()
	_, _ = classes.Informer(), published.Informer()
	factory.Start(ctx.Done())
	capFactory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), classes.Informer().HasSynced, published.Informer().HasSynced)
	core.ClearActions()
	cached, err := published.Lister().CSIStorageCapacities("plinth-system").Get(stale.Name)
	if err != nil {
		t.Fatal(err)
	}
	p := &CapacityPublisher{Client: core, Classes: classes.Lister(), Cluster: c, Controller: volume.NewControllerOver(c),
		Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Namespace: "plinth-system",
		Published: published.Lister().CSIStorageCapacities("plinth-system")}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range core.Actions() {
		if a.GetVerb() == "list" && a.GetResource().Resource == "csistoragecapacities" {
			t.Errorf("a pass with a cache listed the objects from the API server: %v", a)
		}
	}
	if got, err := core.StorageV1().CSIStorageCapacities("plinth-system").Get(ctx, stale.Name, metav1.GetOptions{}); err != nil || got.Capacity.Value() != 100*mi {
		t.Errorf("stale object after the pass: %v, %v; want capacity %d", got, err, 100*mi)
	}
	if _, err := core.StorageV1().CSIStorageCapacities("plinth-system").Get(ctx, gone.Name, metav1.GetOptions{}); err == nil {
		t.Error("the object of a node without a PlinthNode was kept")
	}
	if _, err := core.StorageV1().CSIStorageCapacities("plinth-system").Get(ctx, "other", metav1.GetOptions{}); err != nil {
		t.Errorf("someone else's object: %v", err)
	}
	if cached.Capacity.Value() != 1 {
		t.Error("the pass changed the cached object in place")
	}
}
