package reconcile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/reference"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/nodestatus"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
)

const mi = int64(1 << 20)

// testNode is node n1 with a real file pool "fast" in a temporary directory,
// its reconciler running over a fake API server holding objs.
type testNode struct {
	dir    string
	local  *node.Local
	plinth *plinthfake.Clientset
	ctx    context.Context
	rec    *Reconciler
	pool   *reachable
}

// reachable is the file pool whose volumes the test can put out of reach
// (as a pulled disk does).
type reachable struct {
	pool.Pool
	problem atomic.Pointer[string]
}

func (r *reachable) CheckVolume(context.Context, string) error {
	if p := r.problem.Load(); p != nil {
		return errors.New(*p)
	}
	return nil
}

func startNode(t *testing.T, objs ...runtime.Object) testNode {
	t.Helper()
	return startNodeWith(t, nil, objs...)
}

// startNodeWith is startNode, with before run on the node's pools before its
// reconciler starts (storage left from an earlier life of the node).
func startNodeWith(t *testing.T, before func(*node.Local), objs ...runtime.Object) testNode {
	t.Helper()
	return startNodeConfigured(t, before, nil, objs...)
}

// startNodeConfigured is startNodeWith, with configure run on the
// reconciler before it starts.
func startNodeConfigured(t *testing.T, before func(*node.Local), configure func(*Reconciler), objs ...runtime.Object) testNode {
	t.Helper()
	dir := t.TempDir()
	fp, err := file.New(file.Config{Name: "fast", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	p := &reachable{Pool: fp}
	local, err := node.NewLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(local)
	}
	plinth := plinthfake.NewSimpleClientset(objs...)
	core := fake.NewSimpleClientset()
	status := &nodestatus.Reporter{NodeName: "n1", Version: "test", Pools: local.PoolHealth, Plinth: plinth, Core: core, Interval: time.Hour}
	r := &Reconciler{NodeName: "n1", Local: local, Plinth: plinth, Core: core, Status: status}
	if configure != nil {
		configure(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = r.Run(ctx) }()
	return testNode{dir: dir, local: local, plinth: plinth, ctx: ctx, rec: r, pool: p}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func spec(capacity int64) v1alpha1.VolumeSpec {
	return v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", VolumeName: "pvc-1", CapacityBytes: capacity, Mode: v1alpha1.ModeBlock, Claim: "ns/c"}
}

// The node makes what a Pending object asks for (a real file pool in a
// temporary directory), publishes the pool's new numbers, answers Ready;
// refuses what does not fit with the reason; grows an expanded volume; and
// removes the storage of a deleted one before dropping its finalizer.
func TestReconcile(t *testing.T) {
	labels := map[string]string{v1alpha1.LabelNode: "n1"}
	n := startNode(t,
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(8 * mi)},
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-huge", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(1 << 50)},
	)
	dir, local, plinth, ctx := n.dir, n.local, n.plinth, n.ctx
	volumes := plinth.PlinthV1alpha1().PlinthVolumes()
	get := func(name string) *v1alpha1.PlinthVolume {
		v, err := volumes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return v
	}
	waitFor := func(what string, cond func() bool) { t.Helper(); waitFor(t, what, cond) }
	waitFor("pv-a Ready", func() bool { v := get("pv-a"); return v != nil && v.Status.Phase == v1alpha1.VolumeReady })
	if v := get("pv-a"); v.Status.CapacityBytes != 8*mi {
		t.Fatalf("pv-a status %+v", v.Status)
	}
	// Ready names the node status that counts it, already written.
	if v := get("pv-a"); v.Status.CountedIn == 0 {
		t.Errorf("pv-a Ready without countedIn: %+v", v.Status)
	} else if pn, err := plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, "n1", metav1.GetOptions{}); err != nil || pn.Status.Sequence < v.Status.CountedIn {
		t.Errorf("pv-a counted in node status %d, the node's status is at %d (%v)", v.Status.CountedIn, pn.Status.Sequence, err)
	}
	if _, err := local.Volume(ctx, "pv-a"); err != nil {
		t.Fatalf("no storage for pv-a: %v", err)
	}
	waitFor("pv-huge Failed", func() bool { v := get("pv-huge"); return v != nil && v.Status.Phase == v1alpha1.VolumeFailed })
	if v := get("pv-huge"); v.Status.Reason != v1alpha1.ReasonNoSpace || v.Status.Message == "" {
		t.Fatalf("pv-huge status %+v", v.Status)
	}
	pn, err := plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pn.Status.Pools) != 1 || pn.Status.Pools[0].Volumes != 1 || pn.Status.Pools[0].ProvisionedBytes != 8*mi {
		t.Fatalf("PlinthNode status %+v", pn.Status)
	}

	// Expand.
	v := get("pv-a")
	v.Spec.CapacityBytes = 16 * mi
	v.Generation = 2
	if _, err := volumes.Update(ctx, v, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("pv-a grown", func() bool { v := get("pv-a"); return v != nil && v.Status.CapacityBytes == 16*mi })
	if fi, err := os.Stat(filepath.Join(dir, "volumes", "pv-a.img")); err != nil || fi.Size() != 16*mi {
		t.Fatalf("image after expansion: %v, %v", fi, err)
	}

	// Delete (the fake API server has no finalizer semantics: the object
	// arrives with its deletion timestamp set, as a real one would).
	v = get("pv-a")
	now := metav1.Now()
	v.DeletionTimestamp = &now
	if _, err := volumes.Update(ctx, v, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("pv-a finalizer dropped", func() bool { v := get("pv-a"); return v == nil || len(v.Finalizers) == 0 })
	if _, err := local.Volume(ctx, "pv-a"); err == nil {
		t.Fatal("pv-a's storage is still there")
	}
}

// Events name the volume object through the recorder's scheme, which (the
// core one in plinth node) does not know plinth's kinds: the object handed
// to the recorder carries its kind and apiVersion itself.
func TestEventObject(t *testing.T) {
	v := &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", UID: "u1", ResourceVersion: "7"}}
	ref, err := reference.GetReference(scheme.Scheme, eventObject(v1alpha1.VolumeKind, v.ObjectMeta))
	if err != nil {
		t.Fatal(err)
	}
	if ref.Kind != v1alpha1.VolumeKind || ref.APIVersion != "plinth.example.com/v1alpha1" || ref.Name != "pv-a" || ref.UID != "u1" {
		t.Fatalf("reference %+v", ref)
	}
}

// The node takes a Pending snapshot object's snapshot of its volume (a real
// file pool), answers Ready with the size, time and mode; refuses one of a
// volume it does not hold, or in a pool other than the volume's (and then
// holds nothing of it once deleted); restores a volume from a snapshot; and
// removes a deleted snapshot's storage before dropping its finalizer.
func TestReconcileSnapshots(t *testing.T) {
	labels := map[string]string{v1alpha1.LabelNode: "n1"}
	fin := []string{v1alpha1.Finalizer}
	snap := func(name, vol, poolName string) *v1alpha1.PlinthSnapshot {
		return &v1alpha1.PlinthSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Finalizers: fin},
			Spec: v1alpha1.SnapshotSpec{NodeName: "n1", Pool: poolName, SourceVolumeID: vol, SnapshotName: name + "-name"}}
	}
	n := startNode(t, &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", Labels: labels, Finalizers: fin}, Spec: spec(8 * mi)})
	dir, local, plinth, ctx := n.dir, n.local, n.plinth, n.ctx
	snaps := plinth.PlinthV1alpha1().PlinthSnapshots()
	getSnap := func(name string) *v1alpha1.PlinthSnapshot {
		s, err := snaps.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return s
	}
	waitFor := func(what string, cond func() bool) { t.Helper(); waitFor(t, what, cond) }
	waitFor("pv-a Ready", func() bool {
		v, err := plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, "pv-a", metav1.GetOptions{})
		return err == nil && v.Status.Phase == v1alpha1.VolumeReady
	})
	for _, s := range []*v1alpha1.PlinthSnapshot{snap("sn-1", "pv-a", "fast"), snap("sn-gone", "pv-nope", "fast"), snap("sn-elsewhere", "pv-a", "slow")} {
		if _, err := snaps.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("sn-1 Ready", func() bool { s := getSnap("sn-1"); return s != nil && s.Status.Phase == v1alpha1.VolumeReady })
	if s := getSnap("sn-1"); s.Status.SizeBytes != 8*mi || s.Status.CreationTime == nil || s.Status.Mode != v1alpha1.ModeBlock {
		t.Fatalf("sn-1 status %+v", s.Status)
	}
	waitFor("sn-gone Failed", func() bool { s := getSnap("sn-gone"); return s != nil && s.Status.Phase == v1alpha1.VolumeFailed })
	if s := getSnap("sn-gone"); s.Status.Reason != v1alpha1.ReasonNotFound {
		t.Fatalf("sn-gone status %+v", s.Status)
	}
	waitFor("sn-elsewhere Failed", func() bool { s := getSnap("sn-elsewhere"); return s != nil && s.Status.Phase == v1alpha1.VolumeFailed })
	if s := getSnap("sn-elsewhere"); s.Status.Reason != v1alpha1.ReasonInvalid {
		t.Fatalf("sn-elsewhere status %+v", s.Status)
	}

	// Restore from sn-1.
	restore := spec(8 * mi)
	restore.VolumeName = "pvc-2"
	restore.Source = &v1alpha1.VolumeSource{SnapshotID: "sn-1"}
	if _, err := plinth.PlinthV1alpha1().PlinthVolumes().Create(ctx, &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-b", Labels: labels, Finalizers: fin}, Spec: restore}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("pv-b Ready", func() bool {
		v, err := plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, "pv-b", metav1.GetOptions{})
		return err == nil && v.Status.Phase == v1alpha1.VolumeReady
	})
	if v, err := local.Volume(ctx, "pv-b"); err != nil || v.Source == nil || v.Source.SnapshotID != "sn-1" {
		t.Fatalf("pv-b on the node: %+v, %v", v, err)
	}

	// Delete the snapshots (the fake API server has no finalizer
	// semantics: each arrives with its deletion timestamp set).
	for _, name := range []string{"sn-1", "sn-elsewhere"} {
		s := getSnap(name)
		now := metav1.Now()
		s.DeletionTimestamp = &now
		if _, err := snaps.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(name+" finalizer dropped", func() bool { s := getSnap(name); return s == nil || len(s.Finalizers) == 0 })
		if _, err := local.Snapshot(ctx, name); err == nil {
			t.Fatalf("%s's storage is still there", name)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "snapshots", "sn-*")); len(left) != 0 {
		t.Fatalf("snapshot files left: %v", left)
	}
}

// A Ready volume whose storage goes out of reach (its disk pulled) says so
// in its object, which the controller's volume health reads, and clears
// when the storage is back.
func TestReconcileUnreachable(t *testing.T) {
	labels := map[string]string{v1alpha1.LabelNode: "n1"}
	n := startNode(t, &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(8 * mi)})
	get := func() *v1alpha1.PlinthVolume {
		v, err := n.plinth.PlinthV1alpha1().PlinthVolumes().Get(n.ctx, "pv-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	waitFor(t, "pv-a Ready", func() bool { return get().Status.Phase == v1alpha1.VolumeReady })
	gone := "volume pv-a: its disk wwn:x is not present"
	n.pool.problem.Store(&gone)
	n.rec.RequeueVolumes()
	waitFor(t, "pv-a unreachable", func() bool {
		s := get().Status
		return s.Phase == v1alpha1.VolumeReady && s.Reason == v1alpha1.ReasonUnreachable && s.Message == gone
	})
	n.pool.problem.Store(nil)
	n.rec.RequeueVolumes()
	waitFor(t, "pv-a reachable again", func() bool { s := get().Status; return s.Reason == "" && s.Message == "" })
}

// A node that comes back after the controller let go of its volumes (their
// objects deleted while it was away: --release-volumes-on-lost-node-after)
// finds the tombstones when it lists on start, removes their storage and
// then their finalizers; it keeps the storage of a volume whose object
// still stands, and of one that has no object at all.
func TestReconcileAfterReturn(t *testing.T) {
	labels := map[string]string{v1alpha1.LabelNode: "n1"}
	ctx := context.Background()
	made := func(local *node.Local, id string) {
		if _, err := local.CreateVolume(ctx, "fast", pool.Volume{ID: id, Name: id, CapacityBytes: 8 * mi, Mode: pool.ModeBlock}); err != nil {
			t.Fatal(err)
		}
	}
	deleted := metav1.Now()
	ready := v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 8 * mi}
	n := startNodeWith(t, func(local *node.Local) {
		for _, id := range []string{"pv-released", "pv-kept", "pv-no-object"} {
			made(local, id)
		}
	},
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-released", Labels: labels, Finalizers: []string{v1alpha1.Finalizer},
			DeletionTimestamp: &deleted}, Spec: spec(8 * mi), Status: ready},
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-kept", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}},
			Spec: spec(8 * mi), Status: ready},
	)
	volumes := n.plinth.PlinthV1alpha1().PlinthVolumes()
	waitFor(t, "pv-released finalizer dropped", func() bool {
		v, err := volumes.Get(n.ctx, "pv-released", metav1.GetOptions{})
		return err != nil || len(v.Finalizers) == 0
	})
	if _, err := n.local.Volume(ctx, "pv-released"); err == nil {
		t.Fatal("pv-released's storage is still there")
	}
	waitFor(t, "pv-kept reconciled", func() bool {
		v, err := volumes.Get(n.ctx, "pv-kept", metav1.GetOptions{})
		return err == nil && v.Status.ObservedGeneration == v.Generation && v.Status.Phase == v1alpha1.VolumeReady
	})
	n.rec.RequeueVolumes()
	time.Sleep(200 * time.Millisecond) // a pass over every object; nothing may touch the others
	for _, id := range []string{"pv-kept", "pv-no-object"} {
		if _, err := n.local.Volume(ctx, id); err != nil {
			t.Errorf("%s's storage was removed: %v", id, err)
		}
	}
}
