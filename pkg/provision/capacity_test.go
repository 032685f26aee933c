package provision

import (
	"context"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
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
