package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	listers "github.com/plinth-dev/plinth/pkg/generated/listers/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

const (
	testDriver   = "plinth.example.com"
	testTopology = "topology.plinth.example.com/node"
	testNS       = "shop"
	testClaim    = "data"
	testClaimUID = "c1a1m000-0000-0000-0000-000000000001"
	testMoveUID  = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	srcPVName    = "pvc-c1a1m000"
	srcVolID     = "pv-src"
	tgtVolID     = "pv-tgt"
	gib          = int64(1 << 30)
)

// world is the cluster a test starts from; tests change it, then build
// the controller over it.
type world struct {
	pvc     *v1.PersistentVolumeClaim
	pv      *v1.PersistentVolume
	vol     *v1alpha1.PlinthVolume
	nodes   []*v1.Node
	pnodes  map[string]*v1alpha1.PlinthNode
	m       *v1alpha1.PlinthMove
	others  []*v1alpha1.PlinthMove // other moves in the lister
	core    []runtime.Object       // more core objects
	plinth  []runtime.Object       // more plinth objects
	volumes map[string]*fakeNode   // volume.Controller's nodes

	coreClient   *k8sfake.Clientset
	plinthClient *plinthfake.Clientset
}

func filePool(name string) v1alpha1.PoolStatus {
	return v1alpha1.PoolStatus{Name: name, Backend: "file", Healthy: true, Block: true, FsTypes: []string{"ext4", "xfs"}, AllocatableBytes: 10 * gib}
}

func newWorld() *world {
	mode := v1.PersistentVolumeFilesystem
	w := &world{
		pvc: &v1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: testClaim, Namespace: testNS, UID: testClaimUID,
				Labels: map[string]string{"app": "db"},
				Annotations: map[string]string{
					"pv.kubernetes.io/bind-completed":          "yes",
					"volume.kubernetes.io/selected-node":       "w1",
					"example.com/keep":                         "me",
					"volume.kubernetes.io/storage-provisioner": testDriver,
				}},
			Spec: v1.PersistentVolumeClaimSpec{
				AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
				Resources:   v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(gib, resource.BinarySI)}},
				VolumeName:  srcPVName, VolumeMode: &mode,
			},
			Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound},
		},
		pv: &v1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: srcPVName,
				Labels: map[string]string{"tier": "gold"},
				Annotations: map[string]string{
					"pv.kubernetes.io/provisioned-by":      testDriver,
					"pv.kubernetes.io/bound-by-controller": "yes",
				}},
			Spec: v1.PersistentVolumeSpec{
				Capacity:                      v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(gib, resource.BinarySI)},
				AccessModes:                   []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimDelete,
				VolumeMode:                    &mode,
				PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
					Driver: testDriver, VolumeHandle: srcVolID, FSType: "ext4",
					VolumeAttributes: map[string]string{"plinth.example.com/node": "w1", v1alpha1.LabelPool: "p1", "other": "kept"},
				}},
				ClaimRef: &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: testNS, Name: testClaim, UID: testClaimUID},
				NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
					MatchExpressions: []v1.NodeSelectorRequirement{{Key: testTopology, Operator: v1.NodeSelectorOpIn, Values: []string{"w1"}}},
				}}}},
			},
			Status: v1.PersistentVolumeStatus{Phase: v1.VolumeBound},
		},
		vol: &v1alpha1.PlinthVolume{
			ObjectMeta: metav1.ObjectMeta{Name: srcVolID},
			Spec: v1alpha1.VolumeSpec{NodeName: "w1", Pool: "p1", CapacityBytes: gib, Mode: v1alpha1.ModeFilesystem, FsType: "ext4",
				Claim: testNS + "/" + testClaim},
			Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: gib},
		},
		nodes: []*v1.Node{readyNode("w1"), readyNode("w2")},
		pnodes: map[string]*v1alpha1.PlinthNode{
			"w1": {ObjectMeta: metav1.ObjectMeta{Name: "w1"}, Status: v1alpha1.NodeStatus{
				Pools: []v1alpha1.PoolStatus{filePool("p1")}, Transfer: &v1alpha1.TransferEndpoint{Address: "10.0.0.1:7460"}}},
			"w2": {ObjectMeta: metav1.ObjectMeta{Name: "w2"}, Status: v1alpha1.NodeStatus{
				Pools: []v1alpha1.PoolStatus{filePool("p2")}, Transfer: &v1alpha1.TransferEndpoint{Address: "10.0.0.2:7460"}}},
		},
		m: &v1alpha1.PlinthMove{
			ObjectMeta: metav1.ObjectMeta{Name: testClaim, Namespace: testNS, UID: testMoveUID},
			Spec:       v1alpha1.MoveSpec{Claim: testClaim, TargetNode: "w2"},
		},
		volumes: map[string]*fakeNode{"w1": newFakeNode(), "w2": newFakeNode()},
	}
	return w
}

// controller builds the fakes over w; w.m is the move's object as the
// API server has it (fetched back, so that its resourceVersion matches).
func (w *world) controller(t *testing.T) *Controller {
	t.Helper()
	var core []runtime.Object
	if w.pvc != nil {
		core = append(core, w.pvc)
	}
	if w.pv != nil {
		core = append(core, w.pv)
	}
	for _, n := range w.nodes {
		core = append(core, n)
	}
	core = append(core, w.core...)
	var pl []runtime.Object
	if w.vol != nil {
		pl = append(pl, w.vol)
	}
	for _, n := range w.pnodes {
		if n != nil {
			pl = append(pl, n)
		}
	}
	pl = append(pl, w.m)
	for _, o := range w.others {
		pl = append(pl, o)
	}
	pl = append(pl, w.plinth...)
	w.coreClient = k8sfake.NewClientset(core...)
	w.plinthClient = plinthfake.NewSimpleClientset(pl...)
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, o := range append([]*v1alpha1.PlinthMove{w.m}, w.others...) {
		if err := idx.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	nodes := map[string]volume.Node{}
	for name, n := range w.volumes {
		nodes[name] = n
	}
	c := &Controller{Core: w.coreClient, Plinth: w.plinthClient, Volumes: volume.NewController(nodes),
		Driver: testDriver, TopologyKey: testTopology, moves: listers.NewPlinthMoveLister(idx)}
	got, err := w.plinthClient.PlinthV1alpha1().PlinthMoves(testNS).Get(context.Background(), w.m.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.m = got
	return c
}

func (w *world) volumeObject(t *testing.T, name string) *v1alpha1.PlinthVolume {
	t.Helper()
	v, err := w.plinthClient.PlinthV1alpha1().PlinthVolumes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (w *world) moveObject(t *testing.T) *v1alpha1.PlinthMove {
	t.Helper()
	m, err := w.plinthClient.PlinthV1alpha1().PlinthMoves(testNS).Get(context.Background(), w.m.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fakeNode is a volume.Node that keeps its volumes and snapshots in maps.
type fakeNode struct {
	mu        sync.Mutex
	vols      map[string]pool.Volume
	snaps     map[string]pool.Snapshot
	delVolErr error
	// pools, when set, are what the node has: CreateVolume makes volumes
	// in them (Ready at once) and records them.
	pools []volume.PoolInfo
}

func newFakeNode() *fakeNode {
	return &fakeNode{vols: map[string]pool.Volume{}, snaps: map[string]pool.Snapshot{}}
}

func (f *fakeNode) Pools(context.Context) ([]volume.PoolInfo, error) { return f.pools, nil }
func (f *fakeNode) CreateVolume(_ context.Context, poolName string, v pool.Volume) (pool.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pools) == 0 {
		return pool.Volume{}, pool.ErrUnsupported
	}
	v.Pool, v.State = poolName, pool.StateReady
	f.vols[v.ID] = v
	return v, nil
}
func (f *fakeNode) DeleteVolume(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.delVolErr != nil {
		return f.delVolErr
	}
	delete(f.vols, id)
	return nil
}
func (f *fakeNode) ExpandVolume(context.Context, string, int64) (pool.Volume, error) {
	return pool.Volume{}, pool.ErrUnsupported
}
func (f *fakeNode) ModifyVolume(context.Context, string, pool.Mutable) (pool.Volume, error) {
	return pool.Volume{}, pool.ErrUnsupported
}
func (f *fakeNode) Volume(_ context.Context, id string) (pool.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vols[id]; ok {
		return v, nil
	}
	return pool.Volume{}, pool.ErrNotFound
}
func (f *fakeNode) Volumes(context.Context) ([]pool.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []pool.Volume
	for _, v := range f.vols {
		out = append(out, v)
	}
	return out, nil
}
func (f *fakeNode) Snapshot(_ context.Context, id string) (pool.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.snaps[id]; ok {
		return s, nil
	}
	return pool.Snapshot{}, pool.ErrNotFound
}
func (f *fakeNode) CreateSnapshot(_ context.Context, s pool.Snapshot) (pool.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.State = pool.StateReady
	f.snaps[s.ID] = s
	return s, nil
}
func (f *fakeNode) DeleteSnapshot(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.snaps, id)
	return nil
}
func (f *fakeNode) Snapshots(context.Context) ([]pool.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []pool.Snapshot
	for _, s := range f.snaps {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeNode) has(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, v := f.vols[id]
	_, s := f.snaps[id]
	return v || s
}

func reasonOf(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	return ""
}

// --- check() ---------------------------------------------------------------

// refusalMessages are what some refusals of TestCheckRefuses must say
// (several share a reason).
var refusalMessages = map[string]string{
	"claim pending":                  "is Pending, not bound",
	"claim bound without volumeName": "not bound",
	"claim being deleted":            "is being deleted",
	"PV claimRef of another claim (another namespace, same name)": "is not bound to claim shop/data",
	"PV claimRef without UID":                                     "is not bound to claim",
	"volume object missing":                                       "which plinth does not know",
	"volume not Ready":                                            "volume pv-src is Pending",
	"volume already held":                                         "held by another move",
	"target without transfer":                                     "node w2 serves no transfers",
	"source without transfer":                                     "node w1 serves no transfers",
	"source pool is btrfs, target's is file":                      "p2 is a file pool, the volume's is a btrfs pool",
	"source pool is disk, target's is file":                       "p2 is a file pool, the volume's is a disk pool",
	"target pool unhealthy":                                       "p2 is unhealthy",
	"target pool too small":                                       "p2 has",
	"target pool without block":                                   "holds no block volumes",
	"target pool without the fsType":                              "makes no ext4",
	"another move of the claim copying":                           "move earlier of claim",
	"another move of the claim not started yet":                   "move twin of claim",
}

func TestCheckRefuses(t *testing.T) {
	now := metav1.Now()
	cases := []struct {
		name   string
		change func(w *world)
		reason string
	}{
		{"claim missing", func(w *world) { w.pvc = nil }, ReasonNotFound},
		{"claim pending", func(w *world) { w.pvc.Status.Phase = v1.ClaimPending }, ReasonNotBound},
		{"claim lost", func(w *world) { w.pvc.Status.Phase = v1.ClaimLost }, ReasonNotBound},
		{"claim bound without volumeName", func(w *world) { w.pvc.Spec.VolumeName = "" }, ReasonNotBound},
		{"claim being deleted", func(w *world) {
			w.pvc.DeletionTimestamp, w.pvc.Finalizers = &now, []string{"kubernetes.io/pvc-protection"}
		}, ReasonNotBound},
		{"claim RWX", func(w *world) {
			w.pvc.Spec.AccessModes = []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce, v1.ReadWriteMany}
		}, ReasonUnsupported},
		{"claim ROX", func(w *world) { w.pvc.Spec.AccessModes = []v1.PersistentVolumeAccessMode{v1.ReadOnlyMany} }, ReasonUnsupported},
		{"PV of another driver", func(w *world) { w.pv.Spec.CSI.Driver = "ebs.csi.aws.com" }, ReasonNotPlinth},
		{"PV not CSI", func(w *world) {
			w.pv.Spec.CSI = nil
			w.pv.Spec.HostPath = &v1.HostPathVolumeSource{Path: "/data"}
		}, ReasonNotPlinth},
		{"PV claimRef of another claim (another namespace, same name)", func(w *world) {
			w.pv.Spec.ClaimRef = &v1.ObjectReference{Namespace: "other", Name: testClaim, UID: "someone-else"}
		}, ReasonNotBound},
		{"PV claimRef without UID", func(w *world) { w.pv.Spec.ClaimRef.UID = "" }, ReasonNotBound},
		{"PV without claimRef", func(w *world) { w.pv.Spec.ClaimRef = nil }, ReasonNotBound},
		{"volume object missing", func(w *world) { w.vol = nil }, ReasonNotPlinth},
		{"volume not Ready", func(w *world) { w.vol.Status.Phase = v1alpha1.VolumePending }, ReasonNotBound},
		{"volume failed", func(w *world) { w.vol.Status.Phase = v1alpha1.VolumeFailed }, ReasonNotBound},
		{"volume being deleted", func(w *world) {
			w.vol.DeletionTimestamp, w.vol.Finalizers = &now, []string{v1alpha1.Finalizer}
		}, ReasonNotBound},
		{"volume already held", func(w *world) {
			w.vol.Spec.Held = true
			w.vol.Annotations = map[string]string{AnnotationHeldBy: "another-move"}
			w.others = append(w.others, holder("another-move"))
		}, ReasonInProgress},
		{"target is the source node", func(w *world) { w.m.Spec.TargetNode = "w1" }, ReasonSameNode},
		{"target Node missing", func(w *world) { w.m.Spec.TargetNode = "w9" }, ReasonNoNode},
		{"target without PlinthNode", func(w *world) { w.pnodes["w2"] = nil }, ReasonNoPool},
		{"target without transfer", func(w *world) { w.pnodes["w2"].Status.Transfer = nil }, ReasonUnsupported},
		{"source without transfer", func(w *world) { w.pnodes["w1"].Status.Transfer = nil }, ReasonUnsupported},
		{"source pool is btrfs, target's is file", func(w *world) { w.pnodes["w1"].Status.Pools[0].Backend = "btrfs" }, ReasonNoPool},
		{"source pool is disk, target's is file", func(w *world) { w.pnodes["w1"].Status.Pools[0].Backend = "disk" }, ReasonNoPool},
		{"source pool unknown to its node", func(w *world) { w.vol.Spec.Pool = "gone" }, ReasonUnsupported},
		{"target pool unhealthy", func(w *world) { w.pnodes["w2"].Status.Pools[0].Healthy = false }, ReasonNoPool},
		{"target pool too small", func(w *world) { w.pnodes["w2"].Status.Pools[0].AllocatableBytes = gib - 1 }, ReasonNoPool},
		{"target pool without block", func(w *world) {
			w.vol.Spec.Mode, w.vol.Spec.FsType = v1alpha1.ModeBlock, ""
			w.pnodes["w2"].Status.Pools[0].Block = false
		}, ReasonNoPool},
		{"target pool without the fsType", func(w *world) { w.pnodes["w2"].Status.Pools[0].FsTypes = []string{"xfs"} }, ReasonNoPool},
		{"target pool is btrfs", func(w *world) { w.pnodes["w2"].Status.Pools[0].Backend = "btrfs" }, ReasonNoPool},
		{"target has no pools", func(w *world) { w.pnodes["w2"].Status.Pools = nil }, ReasonNoPool},
		{"another move of the claim copying", func(w *world) {
			w.others = append(w.others, &v1alpha1.PlinthMove{
				ObjectMeta: metav1.ObjectMeta{Name: "earlier", Namespace: testNS, UID: "earlier-uid-0000000000"},
				Spec:       v1alpha1.MoveSpec{Claim: testClaim, TargetNode: "w2"},
				Status:     v1alpha1.MoveStatus{Phase: v1alpha1.MoveCopying}})
		}, ReasonInProgress},
		{"another move of the claim not started yet", func(w *world) {
			w.others = append(w.others, &v1alpha1.PlinthMove{
				ObjectMeta: metav1.ObjectMeta{Name: "twin", Namespace: testNS, UID: "twin-uid-000000000000"},
				Spec:       v1alpha1.MoveSpec{Claim: testClaim, TargetNode: "w2"}})
		}, ReasonInProgress},
		{"another move of the claim in rebind", func(w *world) {
			w.others = append(w.others, &v1alpha1.PlinthMove{
				ObjectMeta: metav1.ObjectMeta{Name: "rebinding", Namespace: testNS, UID: "rebinding-uid-0000000"},
				Spec:       v1alpha1.MoveSpec{Claim: testClaim, TargetNode: "w2"},
				Status:     v1alpha1.MoveStatus{Phase: v1alpha1.MoveRebind}})
		}, ReasonInProgress},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld()
			tc.change(w)
			c := w.controller(t)
			before := w.m.Status
			err := c.check(context.Background(), w.m)
			if err == nil {
				t.Fatalf("check passed, want a refusal %s", tc.reason)
			}
			if got := reasonOf(err); got != tc.reason {
				t.Fatalf("refusal %q (%v), want %q", got, err, tc.reason)
			}
			if want := refusalMessages[tc.name]; !strings.Contains(err.Error(), want) {
				t.Errorf("refusal %q does not say %q", err, want)
			}
			if !equality.Semantic.DeepEqual(w.m.Status, before) {
				t.Errorf("a refusal changed the move's status: %+v", w.m.Status)
			}
		})
	}
}

func TestCheckFillsTheSource(t *testing.T) {
	w := newWorld()
	// Moves that must not stop this one: finished moves of the claim, a
	// running move of another claim, a running move of a claim of the
	// same name in another namespace.
	for i, o := range []struct {
		ns, claim string
		phase     v1alpha1.MovePhase
	}{
		{testNS, testClaim, v1alpha1.MoveDone}, {testNS, testClaim, v1alpha1.MoveFailed},
		{testNS, "other", v1alpha1.MoveCopying}, {"elsewhere", testClaim, v1alpha1.MoveCutover},
	} {
		w.others = append(w.others, &v1alpha1.PlinthMove{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("m%d", i), Namespace: o.ns, UID: types.UID(fmt.Sprintf("uid-%d-000000000000", i))},
			Spec:       v1alpha1.MoveSpec{Claim: o.claim, TargetNode: "w2"}, Status: v1alpha1.MoveStatus{Phase: o.phase}})
	}
	// The target has a pool that does not fit before one that does.
	w.pnodes["w2"].Status.Pools = []v1alpha1.PoolStatus{{Name: "b", Backend: "btrfs", Healthy: true}, filePool("p2")}
	c := w.controller(t)
	if err := c.check(context.Background(), w.m); err != nil {
		t.Fatalf("check: %v", err)
	}
	s := w.m.Status
	if s.SourceNode != "w1" || s.SourcePV != srcPVName || s.SourceVolumeID != srcVolID || s.ClaimUID != testClaimUID || s.BytesTotal != gib {
		t.Errorf("status %+v", s)
	}
	if s.Phase != "" {
		t.Errorf("check set the phase to %q", s.Phase)
	}
	var saved savedClaim
	if err := json.Unmarshal([]byte(s.Claim), &saved); err != nil {
		t.Fatalf("saved claim %q: %v", s.Claim, err)
	}
	if saved.Labels["app"] != "db" || saved.Annotations["example.com/keep"] != "me" || saved.Spec.VolumeName != srcPVName ||
		!slices.Equal(saved.Spec.AccessModes, []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce}) ||
		saved.Spec.Resources.Requests.Storage().Value() != gib {
		t.Errorf("saved claim %+v", saved)
	}
}

func TestCheckBlockVolume(t *testing.T) {
	w := newWorld()
	w.vol.Spec.Mode, w.vol.Spec.FsType = v1alpha1.ModeBlock, ""
	w.pnodes["w2"].Status.Pools[0].FsTypes = nil // no filesystems, but block
	c := w.controller(t)
	if err := c.check(context.Background(), w.m); err != nil {
		t.Fatalf("check: %v", err)
	}
}

func TestFits(t *testing.T) {
	fs := v1alpha1.ModeFilesystem
	if why := Fits(nil, "file", fs, "xfs", gib); why != "it has no pools" {
		t.Errorf("no pools: %q", why)
	}
	small := filePool("small")
	small.AllocatableBytes = gib - 1
	sick := filePool("sick")
	sick.Healthy = false
	noxfs := filePool("noxfs")
	noxfs.FsTypes = []string{"ext4"}
	noblock := filePool("noblock")
	noblock.Block = false
	why := Fits([]v1alpha1.PoolStatus{small, sick, noxfs, {Name: "d", Backend: "disk", Healthy: true}}, "file", fs, "xfs", gib)
	for _, want := range []string{"small has", "sick is unhealthy", "noxfs makes no xfs", "d is a disk pool"} {
		if !strings.Contains(why, want) {
			t.Errorf("%q lacks %q", why, want)
		}
	}
	exact := filePool("exact")
	exact.AllocatableBytes = gib
	if why := Fits([]v1alpha1.PoolStatus{small, exact}, "file", fs, "xfs", gib); why != "" {
		t.Errorf("a pool of exactly the size: %q", why)
	}
	if why := Fits([]v1alpha1.PoolStatus{noxfs}, "file", fs, "", gib); why != "" {
		t.Errorf("a volume with no fsType: %q", why)
	}
	if why := Fits([]v1alpha1.PoolStatus{noblock}, "file", v1alpha1.ModeBlock, "", gib); !strings.Contains(why, "noblock holds no block volumes") {
		t.Errorf("block: %q", why)
	}
	if why := Fits([]v1alpha1.PoolStatus{noblock, exact}, "file", v1alpha1.ModeBlock, "", gib); why != "" {
		t.Errorf("block, second pool fits: %q", why)
	}
	// A btrfs volume goes to a btrfs pool only, whatever filesystems a
	// file pool makes; an image never goes to a btrfs pool.
	btr := filePool("btr")
	btr.Backend, btr.FsTypes = "btrfs", []string{"btrfs"}
	withBtrfs := filePool("withbtrfs")
	withBtrfs.FsTypes = []string{"ext4", "xfs", "btrfs"}
	if why := Fits([]v1alpha1.PoolStatus{withBtrfs}, "btrfs", fs, "btrfs", gib); !strings.Contains(why, "withbtrfs is a file pool, the volume's is a btrfs pool") {
		t.Errorf("btrfs volume into a file pool: %q", why)
	}
	if why := Fits([]v1alpha1.PoolStatus{withBtrfs, btr}, "btrfs", fs, "btrfs", gib); why != "" {
		t.Errorf("btrfs volume, a btrfs pool fits: %q", why)
	}
	if why := Fits([]v1alpha1.PoolStatus{btr}, "file", fs, "btrfs", gib); !strings.Contains(why, "btr is a btrfs pool") {
		t.Errorf("image into a btrfs pool: %q", why)
	}
}

// start() on a refusal: the move is Failed with the reason, gets no
// finalizer, and nothing else changes.
func TestStartRefusalChangesNothing(t *testing.T) {
	w := newWorld()
	w.vol.Spec.Held = true
	w.vol.Annotations = map[string]string{AnnotationHeldBy: "another"}
	w.others = append(w.others, holder("another"))
	c := w.controller(t)
	if _, err := c.start(context.Background(), w.m); err != nil {
		t.Fatal(err)
	}
	m := w.moveObject(t)
	if m.Status.Phase != v1alpha1.MoveFailed || m.Status.Reason != ReasonInProgress || !strings.HasPrefix(m.Status.Message, "refused: ") {
		t.Errorf("status %+v", m.Status)
	}
	if len(m.Finalizers) != 0 || m.Status.TargetPV != "" || m.Status.SourceVolumeID != "" {
		t.Errorf("a refused move got %v, %+v", m.Finalizers, m.Status)
	}
	if v := w.volumeObject(t, srcVolID); v.Annotations[AnnotationHeldBy] != "another" || !v.Spec.Held {
		t.Errorf("the volume changed: %+v", v)
	}
	for _, a := range w.plinthClient.Actions() {
		if a.GetVerb() != "get" && a.GetVerb() != "list" && a.GetVerb() != "watch" &&
			!(a.GetResource().Resource == "plinthmoves" && a.GetSubresource() == "status") {
			t.Errorf("a refusal wrote: %s %s/%s", a.GetVerb(), a.GetResource().Resource, a.GetSubresource())
		}
	}
	for _, a := range w.coreClient.Actions() {
		if a.GetVerb() != "get" && a.GetVerb() != "list" {
			t.Errorf("a refusal wrote: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
}

// --- targetPV() and bindAnnotation() --------------------------------------

func targetWorld(policy string) (*world, *v1.PersistentVolume) {
	w := newWorld()
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveRebind, SourceNode: "w1", SourcePV: srcPVName, SourceVolumeID: srcVolID,
		TargetPV: targetPVName(srcPVName, testMoveUID), TargetVolumeID: tgtVolID, SourceReclaimPolicy: policy, ClaimUID: testClaimUID}
	w.plinth = append(w.plinth, &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: tgtVolID},
		Spec:       v1alpha1.VolumeSpec{NodeName: "w2", Pool: "p2", CapacityBytes: gib, Mode: v1alpha1.ModeFilesystem, FsType: "ext4"},
		Status:     v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 2 * gib},
	})
	old := w.pv.DeepCopy()
	old.Spec.PersistentVolumeReclaimPolicy = v1.PersistentVolumeReclaimRetain // rebind's step 1
	return w, old
}

func TestTargetPV(t *testing.T) {
	w, old := targetWorld(string(v1.PersistentVolumeReclaimDelete))
	c := w.controller(t)
	keep := old.DeepCopy()
	pv, err := c.targetPV(context.Background(), w.m, old)
	if err != nil {
		t.Fatal(err)
	}
	if pv.Name != w.m.Status.TargetPV || !strings.HasPrefix(pv.Name, srcPVName+"-m") {
		t.Errorf("name %q", pv.Name)
	}
	csi := pv.Spec.CSI
	if csi.Driver != testDriver || csi.VolumeHandle != tgtVolID || csi.FSType != "ext4" {
		t.Errorf("csi %+v", csi)
	}
	if csi.VolumeAttributes["plinth.example.com/node"] != "w2" || csi.VolumeAttributes[v1alpha1.LabelPool] != "p2" || csi.VolumeAttributes["other"] != "kept" {
		t.Errorf("attributes %v", csi.VolumeAttributes)
	}
	if q := pv.Spec.Capacity[v1.ResourceStorage]; q.Value() != 2*gib {
		t.Errorf("capacity %s, want the target's 2Gi", q.String())
	}
	terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
	if len(terms) != 1 || len(terms[0].MatchExpressions) != 1 {
		t.Fatalf("node affinity %+v", pv.Spec.NodeAffinity)
	}
	if e := terms[0].MatchExpressions[0]; e.Key != testTopology || e.Operator != v1.NodeSelectorOpIn || !slices.Equal(e.Values, []string{"w2"}) {
		t.Errorf("node affinity %+v", e)
	}
	r := pv.Spec.ClaimRef
	if r == nil || r.Namespace != testNS || r.Name != testClaim || r.UID != "" || r.ResourceVersion != "" || r.Kind != "PersistentVolumeClaim" {
		t.Errorf("claimRef %+v: want pre-bound to %s/%s without a UID", r, testNS, testClaim)
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete {
		t.Errorf("reclaim policy %s, want the source's Delete back", pv.Spec.PersistentVolumeReclaimPolicy)
	}
	if _, ok := pv.Annotations["pv.kubernetes.io/bound-by-controller"]; ok {
		t.Errorf("annotations %v keep bound-by-controller", pv.Annotations)
	}
	if pv.Annotations["pv.kubernetes.io/provisioned-by"] != testDriver || pv.Annotations["plinth.example.com/moved-from"] != srcPVName {
		t.Errorf("annotations %v", pv.Annotations)
	}
	if pv.Labels["tier"] != "gold" || pv.ResourceVersion != "" || pv.UID != "" || len(pv.Finalizers) != 0 {
		t.Errorf("meta %+v", pv.ObjectMeta)
	}
	if !equality.Semantic.DeepEqual(old, keep) {
		t.Errorf("targetPV changed the source PV")
	}
}

func TestTargetPVKeepsRetainWhenTheSourceWasRetain(t *testing.T) {
	w, old := targetWorld("") // the source was Retain already: nothing recorded
	c := w.controller(t)
	pv, err := c.targetPV(context.Background(), w.m, old)
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimRetain {
		t.Errorf("reclaim policy %s", pv.Spec.PersistentVolumeReclaimPolicy)
	}
}

func TestTargetPVWithoutPoolAttribute(t *testing.T) {
	w, old := targetWorld("Delete")
	delete(old.Spec.CSI.VolumeAttributes, v1alpha1.LabelPool)
	c := w.controller(t)
	pv, err := c.targetPV(context.Background(), w.m, old)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pv.Spec.CSI.VolumeAttributes[v1alpha1.LabelPool]; ok {
		t.Errorf("attributes %v: a pool attribute was added", pv.Spec.CSI.VolumeAttributes)
	}
}

func TestTargetPVWithoutTargetVolume(t *testing.T) {
	w, old := targetWorld("Delete")
	w.plinth = nil
	c := w.controller(t)
	if _, err := c.targetPV(context.Background(), w.m, old); err == nil {
		t.Fatal("a PV was made for a target volume that does not exist")
	}
}

func TestTargetPVName(t *testing.T) {
	a := targetPVName(srcPVName, testMoveUID)
	if a != srcPVName+"-m0f1e2d3c4b" {
		t.Errorf("%q", a)
	}
	if b := targetPVName(srcPVName, "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"); b == a {
		t.Errorf("two moves give one name")
	}
	if n := targetPVName(strings.Repeat("a", 253), testMoveUID); len(n) > 253 {
		t.Errorf("%d characters", len(n))
	}
}

func TestBindAnnotation(t *testing.T) {
	for k, want := range map[string]bool{
		"pv.kubernetes.io/bind-completed":               true,
		"pv.kubernetes.io/bound-by-controller":          true,
		"volume.kubernetes.io/selected-node":            true,
		"volume.beta.kubernetes.io/storage-provisioner": true,
		"volume.kubernetes.io/storage-provisioner":      true,
		"example.com/keep":                              false,
		"volume.beta.kubernetes.io/storage-class":       false,
		"": false,
	} {
		if got := bindAnnotation(k); got != want {
			t.Errorf("bindAnnotation(%q) = %v", k, got)
		}
	}
}

// --- attacks ----------------------------------------------------------------

// FIXED (found failing by an outside review). A careless admin (or anything) lifts spec.held during FinalSync, after
// the target's node has already reported status.syncedVolumeID: pods that
// waited on the source node stage it and write. finalSync() only checks
// that the source is Ready (sourceVolume), not that this move still
// holds it, so the move goes to Rebind, deletes those pods and the claim,
// and Done removes the source: whatever was written after the sync is
// lost. Correct: from Cutover to Rebind every phase verifies
// spec.held && held-by == the move's UID (and ObservedGeneration), and
// rolls back (or holds again and syncs again) otherwise.
func TestAttackFinalSyncIgnoresLiftedHold(t *testing.T) {
	w := newWorld()
	w.m.Finalizers = []string{Finalizer}
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveFinalSync, SourceNode: "w1", SourcePV: srcPVName, SourceVolumeID: srcVolID,
		SnapshotID: "sn-1", TargetPV: targetPVName(srcPVName, testMoveUID), TargetVolumeID: tgtVolID, ClaimUID: testClaimUID}
	w.vol.Spec.Held = false // lifted by someone else; annotation gone too
	w.plinth = append(w.plinth, &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: tgtVolID},
		Spec: v1alpha1.VolumeSpec{NodeName: "w2", Pool: "p2", CapacityBytes: gib, Mode: v1alpha1.ModeFilesystem, FsType: "ext4",
			Sync: &v1alpha1.VolumeSync{NodeName: "w1", VolumeID: srcVolID, BaseSnapshotID: "sn-1"}},
		Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: gib, SyncedVolumeID: srcVolID},
	})
	c := w.controller(t)
	_, _ = c.rollbackOn(context.Background(), w.m, c.finalSync)
	if p := w.moveObject(t).Status.Phase; p == v1alpha1.MoveRebind {
		t.Errorf("the move went to Rebind although its source is no longer held: writes since the sync are lost at Done")
	}
}

// A pod of the claim that is scheduled on the source node and already
// has the volume staged/published, but whose phase is still Pending (init
// containers running, an image pulling), is skipped by cutover() as "not
// started" (phases.go cutover: Phase != Running && no deletion). The move
// goes to FinalSync with the pod about to run on the source; it is never
// evicted (FinalSync evicts nothing) and the source node refuses to serve
// a published volume, so the move hangs in FinalSync with the workload
// running on a held volume (a restart of the pod then cannot stage it).
// Correct: count every pod bound to a node (spec.nodeName set) that has
// not finished, and evict or wait for it, as for a Running one.
func TestAttackCutoverSkipsPodInInitContainers(t *testing.T) {
	w := newWorld()
	w.m.Finalizers = []string{Finalizer}
	w.m.Spec.Evict = true
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveCutover, SourceNode: "w1", SourcePV: srcPVName, SourceVolumeID: srcVolID,
		SnapshotID: "sn-1", TargetPV: targetPVName(srcPVName, testMoveUID), TargetVolumeID: tgtVolID, ClaimUID: testClaimUID}
	w.vol.Spec.Held = true
	w.vol.Annotations = map[string]string{AnnotationHeldBy: testMoveUID}
	w.core = append(w.core, &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: testNS},
		Spec: v1.PodSpec{NodeName: "w1", Volumes: []v1.Volume{{Name: "d", VolumeSource: v1.VolumeSource{
			PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: testClaim}}}}},
		Status: v1.PodStatus{Phase: v1.PodPending, InitContainerStatuses: []v1.ContainerStatus{{Name: "init",
			State: v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: metav1.Now()}}}}},
	})
	c := w.controller(t)
	if _, err := c.cutover(context.Background(), w.m); err != nil {
		t.Fatal(err)
	}
	if p := w.moveObject(t).Status.Phase; p == v1alpha1.MoveFinalSync {
		t.Errorf("cutover went to FinalSync while pod db-0 runs init containers on the source node with the volume mounted")
	}
}

// The snapshot is recorded in status only once it is Ready
// (phases.go copying). A move deleted (or failing) while its snapshot is
// still being made rolls back with status.snapshotID empty, so the
// snapshot plinth-move-<uid>, which ListSnapshots hides, stays on the
// source's pool for ever. Correct: rollback (and done) delete
// volume.SnapshotID(SnapshotPrefix+uid), which is known from the UID.
func TestAttackRollbackLeaksUnrecordedSnapshot(t *testing.T) {
	w := newWorld()
	w.m.Finalizers = []string{Finalizer}
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveCopying, SourceNode: "w1", SourcePV: srcPVName, SourceVolumeID: srcVolID,
		TargetPV: targetPVName(srcPVName, testMoveUID), TargetVolumeID: volume.VolumeID(targetPVName(srcPVName, testMoveUID)), ClaimUID: testClaimUID}
	snapID := volume.SnapshotID(SnapshotPrefix + testMoveUID)
	w.volumes["w1"].vols[srcVolID] = pool.Volume{ID: srcVolID, State: pool.StateReady}
	w.volumes["w1"].snaps[snapID] = pool.Snapshot{ID: snapID, Name: SnapshotPrefix + testMoveUID, SourceVolumeID: srcVolID, State: pool.StateCreating}
	c := w.controller(t)
	if _, err := c.rollback(context.Background(), w.m, ReasonCancelled, errors.New("the move was deleted")); err != nil {
		t.Fatal(err)
	}
	if w.volumes["w1"].has(snapID) {
		t.Errorf("snapshot %s (%s) survived the rollback: a hidden snapshot leaks", snapID, SnapshotPrefix+testMoveUID)
	}
}

// deleted() ignores the delay rollback() returns: when removing the
// target volume is still in progress (ErrInProgress, ErrLocked: common
// while the target's node is importing into it) rollback returns
// (poll, nil) before it reaches the snapshot, and deleted() drops the
// finalizer anyway. The snapshot (hidden from ListSnapshots) and, with
// ErrLocked, the target volume leak. Correct: keep the finalizer and
// requeue until rollback has finished.
func TestAttackDeleteDropsFinalizerBeforeRollbackFinishes(t *testing.T) {
	w := newWorld()
	now := metav1.Now()
	tgt := volume.VolumeID(targetPVName(srcPVName, testMoveUID))
	snapID := volume.SnapshotID(SnapshotPrefix + testMoveUID)
	w.m.Finalizers, w.m.DeletionTimestamp = []string{Finalizer}, &now
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveFinalSync, SourceNode: "w1", SourcePV: srcPVName, SourceVolumeID: srcVolID,
		SnapshotID: snapID, TargetPV: targetPVName(srcPVName, testMoveUID), TargetVolumeID: tgt, ClaimUID: testClaimUID}
	w.vol.Spec.Held = true
	w.vol.Annotations = map[string]string{AnnotationHeldBy: testMoveUID}
	w.volumes["w1"].snaps[snapID] = pool.Snapshot{ID: snapID, SourceVolumeID: srcVolID, State: pool.StateReady}
	w.volumes["w2"].vols[tgt] = pool.Volume{ID: tgt, State: pool.StateReady}
	w.volumes["w2"].delVolErr = fmt.Errorf("volume %s: %w", tgt, volume.ErrInProgress)
	c := w.controller(t)
	if _, err := c.deleted(context.Background(), w.m); err != nil {
		t.Fatal(err)
	}
	m := w.moveObject(t)
	if !slices.Contains(m.Finalizers, Finalizer) && (w.volumes["w1"].has(snapID) || w.volumes["w2"].has(tgt)) {
		t.Errorf("the finalizer was dropped while the rollback is unfinished: snapshot left %v, target volume left %v",
			w.volumes["w1"].has(snapID), w.volumes["w2"].has(tgt))
	}
}

// A move whose rollback has begun (status Failed, finalizer still on:
// e.g. lifting the hold hit a conflict, the target's node is away, or the
// controller restarted between the status write and the hold) and that is
// then deleted (by hand, or by `kubectl plinth move` of the same claim,
// which deletes Failed moves): deleted() treats Failed like Pending and
// drops the finalizer without finishing the rollback. The source stays
// held for ever (no pod can stage it; no new move passes check()), and
// the target volume and snapshot leak. Correct: deleted() runs rollback
// for a Failed move that still has the finalizer, as sync() does.
func TestAttackDeletingFailedMoveSkipsRollback(t *testing.T) {
	w := newWorld()
	now := metav1.Now()
	w.m.Finalizers, w.m.DeletionTimestamp = []string{Finalizer}, &now
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveFailed, Reason: ReasonCopyFailed, Message: "rolled back: x",
		SourceNode: "w1", SourcePV: srcPVName, SourceVolumeID: srcVolID, TargetPV: targetPVName(srcPVName, testMoveUID),
		TargetVolumeID: volume.VolumeID(targetPVName(srcPVName, testMoveUID)), ClaimUID: testClaimUID}
	w.vol.Spec.Held = true
	w.vol.Annotations = map[string]string{AnnotationHeldBy: testMoveUID}
	c := w.controller(t)
	if _, err := c.deleted(context.Background(), w.m); err != nil {
		t.Fatal(err)
	}
	if v := w.volumeObject(t, srcVolID); v.Spec.Held && !slices.Contains(w.moveObject(t).Finalizers, Finalizer) {
		t.Errorf("the move let go while its source is still held by it: held for ever")
	}
}

// check() trusts that the volume a PV names is that claim's alone. An
// administrator who made a second, static PV for an existing volume
// handle (to share or re-attach it) leaves two claims on one volume; a
// move of either copies it and Done deletes the volume under the other
// claim's PV. The PlinthVolume's spec.claim says whose it is. Correct:
// refuse when spec.claim is set and is not <ns>/<claim> (and/or when
// another PV names the same handle).
func TestAttackCheckAcceptsVolumeOfAnotherClaim(t *testing.T) {
	w := newWorld()
	w.vol.Spec.Claim = "other/db"
	other := w.pv.DeepCopy()
	other.Name = "pvc-other"
	other.Spec.ClaimRef = &v1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "other", Name: "db", UID: "other-uid"}
	w.core = append(w.core, other)
	c := w.controller(t)
	if err := c.check(context.Background(), w.m); err == nil {
		t.Errorf("check accepted volume %s, which is claim other/db's (and PV pvc-other's too)", srcVolID)
	}
}

// A generic ephemeral volume's claim (owned by its pod) is accepted;
// podsUsing only sees spec.volumes[].persistentVolumeClaim, not
// spec.volumes[].ephemeral, so cutover finds no pod and goes on; and the
// claim made again at Rebind has no ownerReferences, which the kubelet
// refuses for an ephemeral volume ("was not created for pod"). Correct:
// refuse claims whose controller owner is a Pod.
func TestAttackCheckAcceptsEphemeralClaim(t *testing.T) {
	w := newWorld()
	yes := true
	w.pvc.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "web-0", UID: "pod-uid", Controller: &yes}}
	c := w.controller(t)
	if err := c.check(context.Background(), w.m); err == nil {
		t.Errorf("check accepted a generic ephemeral volume's claim")
	}
}

// The target pool is chosen by fits() and CreateVolume with only
// Params{Thick}: the StorageClass's pool/backend parameters are ignored, so
// a volume of class "slow" (pool: slow) lands in the target's pool "fast",
// and whoever can create a PlinthMove picks any node and any pool.
// Correct: honour the PV's StorageClass parameters (pool, backend) in
// fits() and in the CreateVolume of copying().
func TestAttackTargetPoolIgnoresStorageClass(t *testing.T) {
	w := newWorld()
	w.pv.Spec.StorageClassName = "slow"
	w.pnodes["w1"].Status.Pools[0].Name, w.vol.Spec.Pool = "slow", "slow"
	w.pnodes["w2"].Status.Pools[0].Name = "fast"
	w.core = append(w.core, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "slow"}, Provisioner: testDriver,
		Parameters: map[string]string{volume.ParamPool: "slow"}})
	c := w.controller(t)
	if err := c.check(context.Background(), w.m); err == nil {
		t.Errorf("check accepted node w2, whose only pool is \"fast\", for a volume of StorageClass slow (pool: slow)")
	}
}

// Defence in depth: rollback() and done() delete whatever IDs status
// names (TargetVolumeID, SnapshotID, SourceVolumeID, SourcePV) with the
// controller's cluster-wide rights. Status is a subresource, so this needs
// plinthmoves/status (granted e.g. by a namespace role with resources
// ["*"]); then a tenant sets phase Failed and targetVolumeID to another
// namespace's volume, and the controller deletes it. Correct: delete only
// what the move derives itself: VolumeID(targetPVName(sourcePV, uid)),
// SnapshotID(SnapshotPrefix+uid), and a source whose spec.claim is
// <ns>/<claim>.
func TestAttackRollbackDeletesVolumeNamedOnlyByStatus(t *testing.T) {
	w := newWorld()
	w.m.Finalizers = []string{Finalizer}
	w.m.Status = v1alpha1.MoveStatus{Phase: v1alpha1.MoveFailed, Reason: ReasonCopyFailed, Message: "x",
		TargetVolumeID: "pv-victim"}
	w.plinth = append(w.plinth, &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-victim"},
		Spec:   v1alpha1.VolumeSpec{NodeName: "w2", Pool: "p2", CapacityBytes: gib, Mode: v1alpha1.ModeFilesystem, Claim: "bank/ledger"},
		Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady}})
	w.volumes["w2"].vols["pv-victim"] = pool.Volume{ID: "pv-victim", State: pool.StateReady}
	c := w.controller(t)
	_, _ = c.sync(context.Background(), testNS+"/"+testClaim)
	if !w.volumes["w2"].has("pv-victim") {
		t.Errorf("move %s/%s deleted volume pv-victim of claim bank/ledger because its status named it", testNS, testClaim)
	}
}

// --- rebind() and done(): what holds -----------------------------------------

func rebindWorld() *world {
	w, _ := targetWorld("")
	w.m.Finalizers = []string{Finalizer}
	w.vol.Spec.Held = true
	w.vol.Annotations = map[string]string{AnnotationHeldBy: testMoveUID}
	saved, _ := json.Marshal(savedClaim{Labels: w.pvc.Labels, Annotations: w.pvc.Annotations, Spec: w.pvc.Spec})
	w.m.Status.Claim = string(saved)
	w.m.Status.SnapshotID = volume.SnapshotID(SnapshotPrefix + testMoveUID)
	return w
}

func claimPod(name string) *v1.Pod {
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
		Spec: v1.PodSpec{NodeName: "w1", Volumes: []v1.Volume{{Name: "d", VolumeSource: v1.VolumeSource{
			PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: testClaim}}}}},
		Status: v1.PodStatus{Phase: v1.PodPending}}
}

// Rebind step by step: Retain (policy recorded), the target's PV, the
// claim and its pods deleted, the claim made again from the saved JSON
// (bind annotations dropped, volumeName the target's PV), Done once bound.
func TestRebindSteps(t *testing.T) {
	w := rebindWorld()
	w.core = append(w.core, claimPod("db-0"))
	c := w.controller(t)
	ctx := context.Background()
	pvs := w.coreClient.CoreV1().PersistentVolumes()
	claims := w.coreClient.CoreV1().PersistentVolumeClaims(testNS)
	step := func() {
		t.Helper()
		if _, err := c.rebind(ctx, w.m); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if old, _ := pvs.Get(ctx, srcPVName, metav1.GetOptions{}); old.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimRetain {
		t.Fatalf("step 1: policy %s", old.Spec.PersistentVolumeReclaimPolicy)
	}
	if w.moveObject(t).Status.SourceReclaimPolicy != "Delete" {
		t.Fatalf("step 1: the source's policy is not recorded")
	}
	step()
	tpv, err := pvs.Get(ctx, w.m.Status.TargetPV, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("step 2: %v", err)
	}
	if tpv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete || tpv.Spec.CSI.VolumeHandle != tgtVolID {
		t.Errorf("step 2: %+v", tpv.Spec)
	}
	if _, err := claims.Get(ctx, testClaim, metav1.GetOptions{}); err != nil {
		t.Fatalf("step 2 touched the claim: %v", err)
	}
	step()
	if _, err := claims.Get(ctx, testClaim, metav1.GetOptions{}); err == nil {
		t.Fatalf("step 3: the claim is still there")
	}
	if _, err := w.coreClient.CoreV1().Pods(testNS).Get(ctx, "db-0", metav1.GetOptions{}); err == nil {
		t.Errorf("step 3: the pod waiting for the claim is still there")
	}
	step()
	pvc, err := claims.Get(ctx, testClaim, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("step 4: %v", err)
	}
	if pvc.Spec.VolumeName != w.m.Status.TargetPV || pvc.Labels["app"] != "db" || pvc.Annotations["example.com/keep"] != "me" {
		t.Errorf("step 4: claim %+v", pvc)
	}
	for k := range pvc.Annotations {
		if bindAnnotation(k) {
			t.Errorf("step 4: the claim made again keeps %s", k)
		}
	}
	step() // not bound yet: waits
	if w.moveObject(t).Status.Phase != v1alpha1.MoveRebind {
		t.Fatalf("Done before the claim is bound")
	}
	pvc.UID, pvc.Status.Phase = "new-claim-uid", v1.ClaimBound
	if _, err := claims.Update(ctx, pvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The StatefulSet made its pod again while the claim was made again,
	// and the scheduler placed it on the old node (the old claim's): it
	// goes, so that it is made again where the volume now is. One on the
	// target node stays.
	stranded, placed := claimPod("db-0"), claimPod("db-1")
	placed.Spec.NodeName = "w2"
	for _, p := range []*v1.Pod{stranded, placed} {
		if _, err := w.coreClient.CoreV1().Pods(testNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if _, err := w.coreClient.CoreV1().Pods(testNS).Get(ctx, "db-0", metav1.GetOptions{}); err == nil {
		t.Error("a pod placed on the old node after the claim was bound on the target is still there")
	}
	if _, err := w.coreClient.CoreV1().Pods(testNS).Get(ctx, "db-1", metav1.GetOptions{}); err != nil {
		t.Errorf("the pod on the target node was deleted: %v", err)
	}
	if m := w.moveObject(t); m.Status.Phase != v1alpha1.MoveDone || m.Status.ClaimUID != "new-claim-uid" || m.Status.DoneTime != nil {
		t.Errorf("after the bind: %+v", m.Status)
	}
}

// A claim made again by someone else and bound to another PV is left
// alone: not deleted, its pods not deleted, the move waits.
func TestRebindLeavesAClaimOfSomeoneElse(t *testing.T) {
	w := rebindWorld()
	w.pv.Spec.PersistentVolumeReclaimPolicy = v1.PersistentVolumeReclaimRetain
	w.m.Status.SourceReclaimPolicy = "Delete"
	w.pvc.UID, w.pvc.Spec.VolumeName = "someone-else", "pvc-elsewhere"
	w.core = append(w.core, claimPod("db-0"))
	c := w.controller(t)
	pv, err := c.targetPV(context.Background(), w.m, w.pv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.coreClient.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.rebind(context.Background(), w.m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.coreClient.CoreV1().PersistentVolumeClaims(testNS).Get(context.Background(), testClaim, metav1.GetOptions{}); err != nil {
		t.Errorf("the other claim was deleted: %v", err)
	}
	if _, err := w.coreClient.CoreV1().Pods(testNS).Get(context.Background(), "db-0", metav1.GetOptions{}); err != nil {
		t.Errorf("a pod of the other claim was deleted: %v", err)
	}
	if m := w.moveObject(t); m.Status.Phase != v1alpha1.MoveRebind || !strings.Contains(m.Status.Message, "made again by someone else") {
		t.Errorf("status %+v", m.Status)
	}
}

// done() waits while the old PV is bound and for keepSourceFor; then it
// removes the source volume, the old PV and the snapshot, and lets go.
func TestDone(t *testing.T) {
	w := rebindWorld()
	now := metav1.Now()
	w.m.Status.Phase, w.m.Status.RebindTime = v1alpha1.MoveDone, &now
	w.m.Spec.KeepSourceFor = &metav1.Duration{Duration: time.Hour}
	w.pv.Spec.PersistentVolumeReclaimPolicy = v1.PersistentVolumeReclaimRetain
	w.pv.Finalizers = []string{provisionerFinalizer}
	w.volumes["w1"].vols[srcVolID] = pool.Volume{ID: srcVolID, State: pool.StateReady}
	w.volumes["w1"].snaps[w.m.Status.SnapshotID] = pool.Snapshot{ID: w.m.Status.SnapshotID, SourceVolumeID: srcVolID, State: pool.StateReady}
	c := w.controller(t)
	ctx := context.Background()
	if after, err := c.done(ctx, w.m); err != nil || after < 59*time.Minute {
		t.Fatalf("keepSourceFor: %v %v", after, err)
	}
	w.m.Spec.KeepSourceFor = nil
	if _, err := c.done(ctx, w.m); err != nil {
		t.Fatal(err)
	}
	if !w.volumes["w1"].has(srcVolID) {
		t.Fatalf("the source was removed while its PV is still bound")
	}
	old, _ := w.coreClient.CoreV1().PersistentVolumes().Get(ctx, srcPVName, metav1.GetOptions{})
	old.Status.Phase = v1.VolumeReleased
	if _, err := w.coreClient.CoreV1().PersistentVolumes().UpdateStatus(ctx, old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.done(ctx, w.m); err != nil {
		t.Fatal(err)
	}
	if w.volumes["w1"].has(srcVolID) || w.volumes["w1"].has(w.m.Status.SnapshotID) {
		t.Errorf("the source volume or the snapshot is left")
	}
	if pv, err := w.coreClient.CoreV1().PersistentVolumes().Get(ctx, srcPVName, metav1.GetOptions{}); err == nil && pv.DeletionTimestamp == nil {
		t.Errorf("the old PV is left: %+v", pv.ObjectMeta)
	}
	if m := w.moveObject(t); m.Status.DoneTime == nil || slices.Contains(m.Finalizers, Finalizer) {
		t.Errorf("the move did not finish: %+v %v", m.Status, m.Finalizers)
	}
}

// Two moves of one claim that both got past check(): the second to reach
// Cutover finds the source held by the first, rolls back, and leaves the
// first's hold alone.
func TestCutoverSourceHeldByAnotherMove(t *testing.T) {
	w := rebindWorld()
	w.m.Status.Phase = v1alpha1.MoveCutover
	w.vol.Annotations[AnnotationHeldBy] = "the-other-move"
	w.others = append(w.others, holder("the-other-move"))
	c := w.controller(t)
	if _, err := c.rollbackOn(context.Background(), w.m, c.cutover); err != nil {
		t.Fatal(err)
	}
	if m := w.moveObject(t); m.Status.Phase != v1alpha1.MoveFailed || m.Status.Reason != ReasonInProgress {
		t.Errorf("status %+v", m.Status)
	}
	if v := w.volumeObject(t, srcVolID); !v.Spec.Held || v.Annotations[AnnotationHeldBy] != "the-other-move" {
		t.Errorf("the other move's hold was touched: %+v", v.ObjectMeta.Annotations)
	}
}

func readyNode(name string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}}}
}

// A cordoned or NotReady target is refused: the claim's pods could not
// follow it there.
func TestCheckRefusesUnschedulableTarget(t *testing.T) {
	for name, change := range map[string]func(*v1.Node){
		"cordoned":  func(n *v1.Node) { n.Spec.Unschedulable = true },
		"not ready": func(n *v1.Node) { n.Status.Conditions[0].Status = v1.ConditionFalse },
	} {
		t.Run(name, func(t *testing.T) {
			w := newWorld()
			change(w.nodes[1])
			c := w.controller(t)
			var r *refusal
			if err := c.check(context.Background(), w.m); !errors.As(err, &r) || r.reason != ReasonNoNode {
				t.Fatalf("check = %v, want a %s refusal", err, ReasonNoNode)
			}
		})
	}
}

// holder is a finished move of another claim in the namespace whose UID
// holds a volume (so the hold is not an orphan's).
func holder(uid string) *v1alpha1.PlinthMove {
	return &v1alpha1.PlinthMove{ObjectMeta: metav1.ObjectMeta{Name: "holder-" + uid, Namespace: testNS, UID: types.UID(uid)},
		Spec: v1alpha1.MoveSpec{Claim: "someone-else", TargetNode: "w2"}, Status: v1alpha1.MoveStatus{Phase: v1alpha1.MoveDone}}
}

// A hold whose move no longer exists (its finalizer taken off by hand) is
// an orphan: a new move of the claim takes it over instead of being
// refused for ever.
func TestOrphanedHoldTakenOver(t *testing.T) {
	w := newWorld()
	w.vol.Spec.Held = true
	w.vol.Annotations = map[string]string{AnnotationHeldBy: "gone-move"}
	c := w.controller(t)
	if err := c.check(context.Background(), w.m); err != nil {
		t.Fatalf("check with an orphaned hold: %v", err)
	}
}

// A whole disk moves offline: no snapshot is taken, a blank disk volume is
// made on the target (in a disk pool, filled from nothing), the workload
// stops, and the final sync names no base: the whole disk is sent.
func TestDiskMoveCopiesWholeAfterCutover(t *testing.T) {
	w := newWorld()
	disk := func(name string) v1alpha1.PoolStatus {
		return v1alpha1.PoolStatus{Name: name, Backend: "disk", Healthy: true, Block: true, FsTypes: []string{"ext4"}, AllocatableBytes: 2 * gib}
	}
	w.pnodes["w1"].Status.Pools = []v1alpha1.PoolStatus{disk("d1")}
	w.pnodes["w2"].Status.Pools = []v1alpha1.PoolStatus{filePool("f2"), disk("d2")}
	w.vol.Spec.Pool = "d1"
	w.volumes["w2"].pools = []volume.PoolInfo{
		{Name: "f2", Backend: "file", Capabilities: pool.Capabilities{Block: true, FsTypes: []string{"ext4"}}, Stats: pool.Stats{TotalBytes: 100 * gib, FreeBytes: 100 * gib}},
		{Name: "d2", Backend: "disk", Capabilities: pool.Capabilities{Block: true, FsTypes: []string{"ext4"}}, Stats: pool.Stats{TotalBytes: 2 * gib, FreeBytes: 2 * gib}},
	}
	c := w.controller(t)
	ctx := context.Background()
	if _, err := c.start(ctx, w.m); err != nil {
		t.Fatal(err)
	}
	if m := w.moveObject(t); m.Status.Phase != v1alpha1.MoveCopying {
		t.Fatalf("start: %s %s", m.Status.Phase, m.Status.Message)
	}
	if _, err := c.copying(ctx, w.moveObject(t)); err != nil {
		t.Fatal(err)
	}
	m := w.moveObject(t)
	if m.Status.Phase != v1alpha1.MoveCutover || m.Status.SnapshotID != "" {
		t.Fatalf("phase %s, snapshot %q (%s): want Cutover with no snapshot", m.Status.Phase, m.Status.SnapshotID, m.Status.Message)
	}
	if len(w.volumes["w1"].snaps) != 0 {
		t.Errorf("a snapshot was taken of a whole disk: %v", w.volumes["w1"].snaps)
	}
	tv, ok := w.volumes["w2"].vols[m.Status.TargetVolumeID]
	if !ok || tv.Pool != "d2" || tv.Source != nil {
		t.Fatalf("target volume %+v (made: %v): want a blank volume in disk pool d2", tv, ok)
	}
	if !strings.Contains(m.Status.Message, "whole disk") {
		t.Errorf("message %q", m.Status.Message)
	}
}
