package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/generated/informers/externalversions"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

const mi = int64(1 << 20)

// fakeCluster is a Cluster over a fake API server holding one PlinthNode
// with pool "fast" (allocatable bytes given) and the objects given.
func fakeCluster(t *testing.T, allocatable int64, gone map[string]bool, objs ...runtime.Object) (*Cluster, *plinthfake.Clientset) {
	t.Helper()
	return fakeClusterOf(t, []runtime.Object{plinthNode("n1", poolStatus("fast", allocatable))}, nil, gone, objs...)
}

// poolStatus is a healthy file pool serving block, ext4 and xfs volumes
// with allocatable bytes.
func poolStatus(name string, allocatable int64) v1alpha1.PoolStatus {
	return v1alpha1.PoolStatus{Name: name, Backend: "file", Block: true, FsTypes: []string{"ext4", "xfs"}, TotalBytes: allocatable * 2,
		FreeBytes: allocatable, AllocatableBytes: allocatable, Healthy: true}
}

func plinthNode(name string, pools ...v1alpha1.PoolStatus) runtime.Object {
	return &v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1alpha1.NodeStatus{Pools: pools}}
}

// fakeClusterOf is a Cluster over a fake API server holding these node and
// volume objects; wrap (may be nil) wraps the client the Cluster writes
// through (not the informers').
func fakeClusterOf(t *testing.T, nodes []runtime.Object, wrap func(versioned.Interface) versioned.Interface, gone map[string]bool, objs ...runtime.Object) (*Cluster, *plinthfake.Clientset) {
	t.Helper()
	client := plinthfake.NewSimpleClientset(append(nodes, objs...)...)
	var writer versioned.Interface = client
	if wrap != nil {
		writer = wrap(client)
	}
	factory := externalversions.NewSharedInformerFactory(client, 0)
	c, err := NewCluster(writer, factory, func(n string) bool { return gone[n] })
	if err != nil {
		t.Fatal(err)
	}
	c.Wait = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.HasSynced) {
		t.Fatal("caches did not sync")
	}
	return c, client
}

// Many creates at once never promise the same bytes twice: with room for
// two, exactly two are recorded and the rest are refused, saying why.
func TestReservationNeverOvercommits(t *testing.T) {
	c, client := fakeCluster(t, 100*mi, nil)
	n, _ := c.Node("n1")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = n.CreateVolume(ctx, "fast", pool.Volume{ID: fmt.Sprintf("pv-%d", i), Name: fmt.Sprintf("v%d", i), CapacityBytes: 40 * mi, Mode: pool.ModeBlock})
		}()
	}
	wg.Wait()
	var inProgress, noSpace int
	for _, err := range errs {
		switch {
		case errors.Is(err, ErrInProgress): // recorded; no node answers in this test
			inProgress++
		case errors.Is(err, pool.ErrNoSpace):
			noSpace++
		default:
			t.Errorf("unexpected answer %v", err)
		}
	}
	if inProgress != 2 || noSpace != 3 {
		t.Fatalf("%d recorded, %d refused; want 2 and 3 (%v)", inProgress, noSpace, errs)
	}
	l, err := client.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 {
		t.Fatalf("%d volume objects, want 2", len(l.Items))
	}
	infos, err := n.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := infos[0].Stats.AllocatableBytes(); got != 20*mi {
		t.Fatalf("allocatable with two reservations: %d, want %d", got, 20*mi)
	}
	if !errors.Is(errs[0], ErrInProgress) && !errors.Is(errs[0], pool.ErrNoSpace) {
		t.Fatal(errs[0])
	}
}

func volumeObject(name string, phase v1alpha1.VolumePhase, reason, msg string) runtime.Object {
	return &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelNode: "n1"}},
		Spec:       v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", VolumeName: "v", CapacityBytes: 10 * mi, Mode: v1alpha1.ModeBlock},
		Status:     v1alpha1.VolumeStatus{Phase: phase, Reason: reason, Message: msg, CapacityBytes: 10 * mi},
	}
}

// A node's refusal comes back as the pool error of its kind with the
// node's words, and the failed object is removed so a retry starts afresh.
func TestNodeRefusal(t *testing.T) {
	c, client := fakeCluster(t, 100*mi, nil, volumeObject("pv-x", v1alpha1.VolumeFailed, v1alpha1.ReasonNoSpace, "pool fast has 1Mi free"))
	n, _ := c.Node("n1")
	_, err := n.CreateVolume(context.Background(), "fast", pool.Volume{ID: "pv-x", Name: "v", CapacityBytes: 10 * mi, Mode: pool.ModeBlock})
	if !errors.Is(err, pool.ErrNoSpace) || !strings.Contains(err.Error(), "pool fast has 1Mi free") {
		t.Fatalf("got %v, want ErrNoSpace with the node's message", err)
	}
	if _, err := client.PlinthV1alpha1().PlinthVolumes().Get(context.Background(), "pv-x", metav1.GetOptions{}); err == nil {
		t.Fatal("the failed volume object is still there")
	}
}

// A Ready volume is answered from its object: a retried create (a
// controller restart) finds it.
func TestCreateFindsReadyVolume(t *testing.T) {
	c, _ := fakeCluster(t, 100*mi, nil, volumeObject("pv-y", v1alpha1.VolumeReady, "", ""))
	n, _ := c.Node("n1")
	v, err := n.CreateVolume(context.Background(), "fast", pool.Volume{ID: "pv-y", Name: "v", CapacityBytes: 10 * mi, Mode: pool.ModeBlock})
	if err != nil || v.State != pool.StateReady || v.CapacityBytes != 10*mi {
		t.Fatalf("got %+v, %v", v, err)
	}
	// The same ID with another size is a conflict, not a second volume.
	if _, err := n.CreateVolume(context.Background(), "fast", pool.Volume{ID: "pv-y", Name: "v", CapacityBytes: 20 * mi, Mode: pool.ModeBlock}); !errors.Is(err, pool.ErrExists) {
		t.Fatalf("different size: %v, want ErrExists", err)
	}
}

// A volume on a node that left the cluster is reported and kept.
func TestDeleteOnLostNode(t *testing.T) {
	c, client := fakeCluster(t, 100*mi, map[string]bool{"n1": true}, volumeObject("pv-z", v1alpha1.VolumeReady, "", ""))
	vc := volume.NewControllerOver(c)
	err := vc.DeleteVolume(context.Background(), "pv-z")
	if !errors.Is(err, volume.ErrNodeGone) {
		t.Fatalf("got %v, want ErrNodeGone", err)
	}
	if _, err := client.PlinthV1alpha1().PlinthVolumes().Get(context.Background(), "pv-z", metav1.GetOptions{}); err != nil {
		t.Fatalf("the volume object was dropped: %v", err)
	}
}

func TestRequestFromClaim(t *testing.T) {
	p := &Provisioner{Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node"}
	block := v1.PersistentVolumeBlock
	claim := func(modes ...v1.PersistentVolumeAccessMode) *v1.PersistentVolumeClaim {
		return &v1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"},
			Spec: v1.PersistentVolumeClaimSpec{AccessModes: modes,
				Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")}}},
		}
	}
	sc := func(params map[string]string) *storagev1.StorageClass {
		return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: "plinth.example.com", Parameters: params}
	}
	req, err := p.request(context.Background(), controller.ProvisionOptions{StorageClass: sc(map[string]string{"pool": "fast", ParamFsType: "xfs"}), PVName: "pvc-1",
		PVC: claim(v1.ReadWriteOnce), SelectedNodeName: "n1"})
	if err != nil || req.FsType != "xfs" || req.Params.Pool != "fast" || req.RequiredBytes != 1<<30 || len(req.Requisite) != 1 || req.Requisite[0] != "n1" || req.Owner != "ns/c" {
		t.Fatalf("got %+v, %v", req, err)
	}
	bc := claim(v1.ReadWriteOncePod)
	bc.Spec.VolumeMode = &block
	if req, err := p.request(context.Background(), controller.ProvisionOptions{StorageClass: sc(map[string]string{ParamFsType: "ext4"}), PVName: "pvc-2", PVC: bc}); err != nil || req.Mode != pool.ModeBlock || req.FsType != "" {
		t.Fatalf("block: %+v, %v", req, err)
	}
	bad := []struct {
		name string
		opts controller.ProvisionOptions
	}{
		{"RWX", controller.ProvisionOptions{StorageClass: sc(nil), PVName: "x", PVC: claim(v1.ReadWriteMany)}},
		{"unknown parameter", controller.ProvisionOptions{StorageClass: sc(map[string]string{"poool": "fast"}), PVName: "x", PVC: claim(v1.ReadWriteOnce)}},
		{"fs type", controller.ProvisionOptions{StorageClass: sc(map[string]string{ParamFsType: "ntfs"}), PVName: "x", PVC: claim(v1.ReadWriteOnce)}},
		{"topology key", controller.ProvisionOptions{StorageClass: &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"},
			AllowedTopologies: []v1.TopologySelectorTerm{{MatchLabelExpressions: []v1.TopologySelectorLabelRequirement{{Key: "zone", Values: []string{"a"}}}}}},
			PVName: "x", PVC: claim(v1.ReadWriteOnce)}},
	}
	for _, b := range bad {
		if _, err := p.request(context.Background(), b.opts); err == nil {
			t.Errorf("%s: accepted", b.name)
		}
	}
	ds := claim(v1.ReadWriteOnce)
	ds.Spec.DataSource = &v1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "src"}
	if _, err := p.request(context.Background(), controller.ProvisionOptions{StorageClass: sc(nil), PVName: "x", PVC: ds}); !errors.Is(err, pool.ErrUnsupported) {
		t.Errorf("data source: %v, want ErrUnsupported", err)
	}
}

// The answer to the library: no room on the scheduler's node reschedules;
// a node still working is "in background"; success is a PV bound to the node.
func TestAnswer(t *testing.T) {
	p := &Provisioner{Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node"}
	opts := controller.ProvisionOptions{StorageClass: &storagev1.StorageClass{}, PVName: "pvc-1", SelectedNodeName: "n1",
		PVC: &v1.PersistentVolumeClaim{Spec: v1.PersistentVolumeClaimSpec{AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce}}}}
	if _, state, _ := p.answer(context.Background(), opts, volume.Placed{}, pool.ErrNoSpace); state != controller.ProvisioningReschedule {
		t.Errorf("no space on the selected node: %s", state)
	}
	if _, state, _ := p.answer(context.Background(), opts, volume.Placed{}, ErrInProgress); state != controller.ProvisioningInBackground {
		t.Errorf("in progress: %s", state)
	}
	pv, state, err := p.answer(context.Background(), opts, volume.Placed{Node: "n1",
		Volume: pool.Volume{ID: "pv-1", Pool: "fast", CapacityBytes: 5 * mi, Mode: pool.ModeFilesystem, FsType: "xfs"}}, nil)
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatal(state, err)
	}
	q := pv.Spec.Capacity[v1.ResourceStorage]
	if pv.Spec.CSI.VolumeHandle != "pv-1" || pv.Spec.CSI.FSType != "xfs" || q.Value() != 5*mi ||
		pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0] != "n1" ||
		pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete {
		t.Fatalf("PV %+v", pv.Spec)
	}
}

// The cluster path answers a create under a name already taken by the same
// rules as plinth standalone: OK with the existing
// volume when its capacity lies in the range and the rest matches (old:
// ALREADY_EXISTS unless the recomputed size was equal), ALREADY_EXISTS for
// another pool or backend (old: OK with the old volume). And every PVC data
// source (a clone or restore, whatever its volumeMode or fsType) is a final
// error before anything is recorded: the cluster serves none yet.
func TestClusterCreateRules(t *testing.T) {
	const name = "pvc-0a1b"
	existing := &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: volume.VolumeID(name), Labels: map[string]string{v1alpha1.LabelNode: "n1", v1alpha1.LabelPool: "fast"}},
		Spec:       v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", VolumeName: name, CapacityBytes: 10 * mi, Mode: v1alpha1.ModeBlock},
		Status:     v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 10 * mi},
	}
	c, client := fakeCluster(t, 100*mi, nil, existing)
	vc := volume.NewControllerOver(c)
	ctx := context.Background()
	base := volume.CreateRequest{Name: name, RequiredBytes: 10 * mi, Mode: pool.ModeBlock, Params: volume.Params{Pool: "fast"}, Requisite: []string{"n1"}}
	with := func(mod func(r *volume.CreateRequest)) volume.CreateRequest { r := base; mod(&r); return r }
	cases := map[string]struct {
		req  volume.CreateRequest
		want error
	}{
		"same request":             {base, nil},
		"range it satisfies":       {with(func(r *volume.CreateRequest) { r.RequiredBytes, r.LimitBytes = 5*mi, 20*mi }), nil},
		"no range":                 {with(func(r *volume.CreateRequest) { r.RequiredBytes = 0 }), nil},
		"its backend":              {with(func(r *volume.CreateRequest) { r.Params = volume.Params{Backend: "file"} }), nil},
		"required above":           {with(func(r *volume.CreateRequest) { r.RequiredBytes = 20 * mi }), pool.ErrExists},
		"other pool":               {with(func(r *volume.CreateRequest) { r.Params.Pool = "slow" }), pool.ErrExists},
		"other backend":            {with(func(r *volume.CreateRequest) { r.Params = volume.Params{Backend: "btrfs"} }), pool.ErrExists},
		"filesystem":               {with(func(r *volume.CreateRequest) { r.Mode, r.FsType = pool.ModeFilesystem, "ext4" }), pool.ErrExists},
		"thick":                    {with(func(r *volume.CreateRequest) { r.Params.Thick = true }), pool.ErrExists},
		"another node (scheduler)": {with(func(r *volume.CreateRequest) { r.Requisite = []string{"n2"} }), pool.ErrExists},
	}
	for cname, tc := range cases {
		got, err := vc.CreateVolume(ctx, tc.req)
		if !errors.Is(err, tc.want) || tc.want == nil && err != nil {
			t.Errorf("%s: %v, want %v", cname, err, tc.want)
		}
		if err == nil && (got.Node != "n1" || got.Volume.ID != volume.VolumeID(name) || got.Volume.CapacityBytes != 10*mi) {
			t.Errorf("%s: answered %+v, want the existing volume", cname, got)
		}
	}

	p := &Provisioner{Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Controller: vc}
	block := v1.PersistentVolumeBlock
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: "plinth.example.com",
		Parameters: map[string]string{"pool": "fast", ParamFsType: "xfs"}}
	snapGroup := "snapshot.storage.k8s.io"
	sources := map[string]func(*v1.PersistentVolumeClaim){
		"clone of a filesystem PVC as block": func(c *v1.PersistentVolumeClaim) {
			c.Spec.VolumeMode = &block
			c.Spec.DataSource = &v1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "fs-src"}
		},
		"restore of a snapshot as xfs": func(c *v1.PersistentVolumeClaim) {
			c.Spec.DataSource = &v1.TypedLocalObjectReference{APIGroup: &snapGroup, Kind: "VolumeSnapshot", Name: "ext4-snap"}
		},
		"dataSourceRef only": func(c *v1.PersistentVolumeClaim) {
			c.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: &snapGroup, Kind: "VolumeSnapshot", Name: "block-snap"}
		},
	}
	for cname, mod := range sources {
		claim := &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"},
			Spec: v1.PersistentVolumeClaimSpec{AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
				Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("10Mi")}}}}
		mod(claim)
		pv, state, err := p.Provision(ctx, controller.ProvisionOptions{StorageClass: sc, PVName: "pvc-new", PVC: claim, SelectedNodeName: "n1"})
		if pv != nil || state != controller.ProvisioningFinished || !errors.Is(err, pool.ErrUnsupported) || !strings.Contains(err.Error(), "data sources") {
			t.Errorf("%s: pv %v, state %s, err %v; want a final error naming data sources", cname, pv, state, err)
		}
	}
	l, err := client.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 1 || l.Items[0].GetName() != volume.VolumeID(name) {
		t.Fatalf("volume objects after the refusals: %d, want only the existing one", len(l.Items))
	}
}
