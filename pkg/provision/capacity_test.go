package provision

import (
	"context"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	storageinformers "k8s.io/client-go/informers/storage/v1"
	"k8s.io/client-go/kubernetes"
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
	p := cachedPublisher(ctx, core, c)
	core.ClearActions()
	cached, err := p.Published.Get(stale.Name)
	if err != nil {
		t.Fatal(err)
	}
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

// A change to one node's objects recounts that node only: its heartbeat
// (a PlinthNode update) is all TakeDirty returns, SyncNodes rewrites that
// node's objects and leaves every other node's as they are (even a stale
// one: the next full pass puts it right), and a node whose PlinthNode went
// loses its objects.
func TestCapacityRecountsOnlyChangedNodes(t *testing.T) {
	c, client := fakeClusterOf(t, []runtime.Object{
		plinthNode("n1", poolStatus("fast", 100*mi)), plinthNode("n2", poolStatus("fast", 50*mi)), plinthNode("n3", poolStatus("fast", 10*mi)),
	}, nil, nil)
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Provisioner: "plinth.example.com", Parameters: map[string]string{"pool": "fast"}}
	core := fake.NewSimpleClientset(sc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	classes := syncedClasses(ctx, core)
	p := &CapacityPublisher{Client: core, Classes: classes.Lister(), Cluster: c, Controller: volume.NewControllerOver(c),
		Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Namespace: "plinth-system"}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	capOf := func(node string) (int64, bool) {
		o, err := core.StorageV1().CSIStorageCapacities("plinth-system").Get(ctx, capacityName("fast", node), metav1.GetOptions{})
		if err != nil {
			return 0, false
		}
		return o.Capacity.Value(), true
	}
	_, _ = c.TakeDirty()

	// n1's pool shrinks (its status), n2's object goes stale behind
	// plinth's back.
	pn, err := client.PlinthV1alpha1().PlinthNodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pn.Status.Pools[0].AllocatableBytes, pn.Status.Pools[0].FreeBytes, pn.Status.Sequence = 30*mi, 30*mi, 2
	if _, err := client.PlinthV1alpha1().PlinthNodes().UpdateStatus(ctx, pn, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	stale, _ := core.StorageV1().CSIStorageCapacities("plinth-system").Get(ctx, capacityName("fast", "n2"), metav1.GetOptions{})
	stale.Capacity = resource.NewQuantity(1, resource.BinarySI)
	if _, err := core.StorageV1().CSIStorageCapacities("plinth-system").Update(ctx, stale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var dirty []string
	var all bool
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		d, a := c.TakeDirty()
		dirty, all = append(dirty, d...), all || a
		return len(dirty) > 0, nil
	}); err != nil {
		t.Fatal("no node marked changed after n1's status was written")
	}
	if all || len(dirty) != 1 || dirty[0] != "n1" {
		t.Fatalf("changed: %v (all %v), want n1 only", dirty, all)
	}
	if err := p.SyncNodes(ctx, dirty); err != nil {
		t.Fatal(err)
	}
	if got, _ := capOf("n1"); got != 30*mi {
		t.Errorf("n1 after its recount: %d, want %d", got, 30*mi)
	}
	if got, _ := capOf("n2"); got != 1 {
		t.Errorf("n2, not changed, was recounted: %d", got)
	}

	// n3's PlinthNode goes: its object goes in its node's recount.
	if err := client.PlinthV1alpha1().PlinthNodes().Delete(ctx, "n3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		_, err := c.PlinthNode("n3")
		return err != nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	d, _ := c.TakeDirty()
	if err := p.SyncNodes(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, ok := capOf("n3"); ok {
		t.Errorf("n3's object kept after its PlinthNode went (changed: %v)", d)
	}
	// A full pass puts n2 right.
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := capOf("n2"); got != 50*mi {
		t.Errorf("n2 after a full pass: %d, want %d", got, 50*mi)
	}
}

// With a cache, a pass over some nodes looks their objects up by name:
// it neither lists the objects from the API server nor touches another
// node's.
func TestCapacitySyncNodesFromCache(t *testing.T) {
	c, _ := fakeClusterOf(t, []runtime.Object{plinthNode("n1", poolStatus("fast", 100*mi)), plinthNode("n2", poolStatus("fast", 50*mi))}, nil, nil)
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Provisioner: "plinth.example.com", Parameters: map[string]string{"pool": "fast"}}
	owned := map[string]string{labelManagedBy: "plinth", labelDriver: "plinth.example.com"}
	q := resource.NewQuantity(1, resource.BinarySI)
	obj := func(node string) *storagev1.CSIStorageCapacity {
		return &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: capacityName("fast", node), Namespace: "plinth-system", Labels: owned},
			NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{"topology.plinth.example.com/node": node}}, StorageClassName: "fast", Capacity: q, MaximumVolumeSize: q}
	}
	core := fake.NewSimpleClientset(sc, obj("n1"), obj("n2"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := cachedPublisher(ctx, core, c)
	core.ClearActions()
	if err := p.SyncNodes(ctx, []string{"n1"}); err != nil {
		t.Fatal(err)
	}
	var updated []string
	for _, a := range core.Actions() {
		if a.GetResource().Resource != "csistoragecapacities" {
			continue
		}
		if a.GetVerb() == "list" {
			t.Errorf("a pass over n1 listed the objects from the API server")
		}
		if u, ok := a.(interface{ GetObject() runtime.Object }); ok && a.GetVerb() == "update" {
			updated = append(updated, u.GetObject().(*storagev1.CSIStorageCapacity).Name)
		}
	}
	if len(updated) != 1 || updated[0] != capacityName("fast", "n1") {
		t.Errorf("updated %v, want n1's object only", updated)
	}
}

// cachedPublisher is a CapacityPublisher over core's classes with a synced
// cache of its objects, as plinth controller runs it.
func cachedPublisher(ctx context.Context, core *fake.Clientset, c *Cluster) *CapacityPublisher {
	factory := informers.NewSharedInformerFactory(core, 0)
	classes := factory.Storage().V1().StorageClasses()
	capFactory := informers.NewSharedInformerFactoryWithOptions(core, 0, informers.WithNamespace("plinth-system"),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = CapacitySelector("plinth.example.com") }))
	published := capFactory.Storage().V1().CSIStorageCapacities()
	_, _ = classes.Informer(), published.Informer()
	factory.Start(ctx.Done())
	capFactory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), classes.Informer().HasSynced, published.Informer().HasSynced)
	return &CapacityPublisher{Client: core, Classes: classes.Lister(), Cluster: c, Controller: volume.NewControllerOver(c),
		Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Namespace: "plinth-system",
		Published: published.Lister().CSIStorageCapacities("plinth-system")}
}

// While changes come faster than the interval (a thousand nodes'
// heartbeats), full passes still come at the interval, and a new class
// gets its objects at once. old: the interval's timer restarted at every
// change, so a class created in a busy cluster never got its objects (the
// storage suite's capacity spec timed out).
func TestCapacityFullPassesUnderConstantChange(t *testing.T) {
	c, client := fakeClusterOf(t, []runtime.Object{plinthNode("n1", poolStatus("fast", 100*mi)), plinthNode("n2", poolStatus("fast", 50*mi))}, nil, nil)
	sc := func(name string) *storagev1.StorageClass {
		return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: "plinth.example.com", Parameters: map[string]string{"pool": "fast"}}
	}
	core := fake.NewSimpleClientset(sc("fast"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	classes := syncedClasses(ctx, core)
	p := &CapacityPublisher{Client: core, Classes: classes.Lister(), Cluster: c, Controller: volume.NewControllerOver(c),
		Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Namespace: "plinth-system",
		Interval: time.Second, ClassInformer: classes.Informer()}
	run, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(run) }()
	defer func() { stop(); <-done }()
	// n1's heartbeat, every 50 ms.
	go func() {
		for seq := int64(1); run.Err() == nil; seq++ {
			if pn, err := client.PlinthV1alpha1().PlinthNodes().Get(run, "n1", metav1.GetOptions{}); err == nil {
				pn.Status.Sequence = seq
				_, _ = client.PlinthV1alpha1().PlinthNodes().UpdateStatus(run, pn, metav1.UpdateOptions{})
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	get := func(class, node string) (*storagev1.CSIStorageCapacity, error) {
		return core.StorageV1().CSIStorageCapacities("plinth-system").Get(ctx, capacityName(class, node), metav1.GetOptions{})
	}
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		_, err := get("fast", "n2")
		return err == nil, nil
	}); err != nil {
		t.Fatal("no object for n2 after the first pass")
	}
	// The passes that starting brings (the class informer's replay of
	// "fast" asks for a full one) are over; from now on only n1 changes.
	time.Sleep(700 * time.Millisecond)
	// n2's object goes stale behind plinth's back: only a full pass sees it.
	o, _ := get("fast", "n2")
	o.Capacity = resource.NewQuantity(1, resource.BinarySI)
	if _, err := core.StorageV1().CSIStorageCapacities("plinth-system").Update(ctx, o, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		o, err := get("fast", "n2")
		return err == nil && o.Capacity.Value() == 50*mi, nil
	}); err != nil {
		t.Error("n2's stale object not put right within 5 intervals while n1 changed every 50 ms")
	}
	// A new class: its objects at once, not at the next interval.
	created := time.Now()
	if _, err := core.StorageV1().StorageClasses().Create(ctx, sc("new"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		_, err1 := get("new", "n1")
		_, err2 := get("new", "n2")
		return err1 == nil && err2 == nil, nil
	}); err != nil {
		t.Fatal("a new class got no objects")
	}
	if d := time.Since(created); d > 900*time.Millisecond {
		t.Logf("a new class's objects came after %s", d)
	}
}

// syncedClasses is a StorageClass informer over core, started and synced
// (until ctx ends).
func syncedClasses(ctx context.Context, core kubernetes.Interface) storageinformers.StorageClassInformer {
	factory := informers.NewSharedInformerFactory(core, 0)
	classes := factory.Storage().V1().StorageClasses()
	_ = classes.Informer()
	factory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), classes.Informer().HasSynced)
	return classes
}
