package reconcile

// A volume object's mutable attributes (spec.thick, spec.ioLimits) from an
// outside review: what the node does with a change it refuses, a change
// whose consumers it cannot reach, a change behind a refused expansion,
// and another node's object.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/nodestatus"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// modPool is the file pool with its ModifyVolume counted, and answering
// refuse instead while that is set.
type modPool struct {
	pool.Pool
	refuse atomic.Pointer[error]
	calls  atomic.Int32
}

func (m *modPool) ModifyVolume(ctx context.Context, id string, mu pool.Mutable) (pool.Volume, error) {
	m.calls.Add(1)
	if e := m.refuse.Load(); e != nil {
		return pool.Volume{}, *e
	}
	return m.Pool.(pool.Modifier).ModifyVolume(ctx, id, mu)
}

type modNode struct {
	testNode
	mp *modPool
}

// startModNode is startNodeConfigured over a modPool; the reconciler's
// goroutines end before the pool's directory is removed.
func startModNode(t *testing.T, before func(*node.Local), configure func(*Reconciler), objs ...runtime.Object) modNode {
	t.Helper()
	dir := t.TempDir()
	fp, err := file.New(file.Config{Name: "fast", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	mp := &modPool{Pool: fp}
	local, err := node.NewLocal(mp)
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
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; time.Sleep(100 * time.Millisecond) })
	return modNode{testNode: testNode{dir: dir, local: local, plinth: plinth, ctx: ctx, rec: r}, mp: mp}
}

func (n modNode) get(t *testing.T, name string) *v1alpha1.PlinthVolume {
	t.Helper()
	v, err := n.plinth.PlinthV1alpha1().PlinthVolumes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// change sets name's spec.ioLimits (and thick) at the next generation.
func (n modNode) change(t *testing.T, name string, thick bool, l *v1alpha1.IOLimits) {
	t.Helper()
	v := n.get(t, name)
	v.Spec.Thick, v.Spec.IOLimits = thick, l
	v.Generation++
	if _, err := n.plinth.PlinthV1alpha1().PlinthVolumes().Update(context.Background(), v, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func pendingObject(name string) *v1alpha1.PlinthVolume {
	return &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: name, Generation: 1, Labels: map[string]string{v1alpha1.LabelNode: "n1"}, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(8 * mi)}
}

func (n modNode) ready(t *testing.T, name string) {
	t.Helper()
	waitFor(t, name+" Ready", func() bool {
		v := n.get(t, name)
		return v.Status.Phase == v1alpha1.VolumeReady
	})
}

func appliedLimits(v *v1alpha1.PlinthVolume, want *v1alpha1.IOLimits) bool {
	return v.Status.Applied != nil && equality.Semantic.DeepEqual(v.Status.Applied.IOLimits, want)
}

// A change the pool refuses (ErrNoSpace) is written to the status at
// that generation and not tried again, however often the object is
// looked at; a later spec change is tried, and once made, status.applied
// says so, the reason is cleared and the consumers were told.
func TestAttackModifyRefusedNotRetried(t *testing.T) {
	var told atomic.Int32
	n := startModNode(t, nil, func(r *Reconciler) {
		r.Consumers = func(context.Context, string) error { told.Add(1); return nil }
	}, pendingObject("pv-a"))
	n.ready(t, "pv-a")
	noSpace := fmt.Errorf("%w: thick provisioning asks more than there is", pool.ErrNoSpace)
	n.mp.refuse.Store(&noSpace)
	n.change(t, "pv-a", true, &v1alpha1.IOLimits{ReadIOPS: 10})
	waitFor(t, "refusal in the status", func() bool {
		v := n.get(t, "pv-a")
		return v.Status.Reason == v1alpha1.ReasonNoSpace && v.Status.ObservedGeneration == v.Generation
	})
	for range 5 {
		n.rec.RequeueVolumes()
		time.Sleep(50 * time.Millisecond)
	}
	if c := n.mp.calls.Load(); c != 1 {
		t.Errorf("a refused change was tried %d times at one generation", c)
	}
	n.mp.refuse.Store(nil)
	want := &v1alpha1.IOLimits{ReadIOPS: 20}
	n.change(t, "pv-a", true, want)
	waitFor(t, "applied", func() bool {
		v := n.get(t, "pv-a")
		return appliedLimits(v, want) && v.Status.Applied.Thick && v.Status.Reason == "" && v.Status.ObservedGeneration == v.Generation
	})
	if l, err := n.local.Volume(context.Background(), "pv-a"); err != nil || !l.Thick || l.IOLimits == nil || l.IOLimits.ReadIOPS != 20 {
		t.Errorf("record after the change: %+v %v", l, err)
	}
	if told.Load() == 0 {
		t.Error("the consumers were never told of the change")
	}
}

// The change is recorded on the node before its consumers are told
// (Mounts.Reapply: the pods' limits, a trim). When telling them fails
// (the volume's lock held a moment by a snapshot, a usage read or a
// publish; a pod's cgroup not found; a limit the kernel refuses), the
// change is not done: it must be tried again, not reported as applied by
// the next pass, which finds the record matching the spec and writes
// status.applied without telling anyone (the controller's
// ControllerModifyVolume then answers success, and the running pods keep
// their old limits until the node agent restarts).
func TestAttackModifyConsumersFailureRetried(t *testing.T) {
	for name, failure := range map[string]error{
		"volume locked":        fmt.Errorf("apply: %w", volume.ErrLocked),
		"pod cgroup not found": errors.New("pod 0f0e: pod cgroup not found"),
	} {
		t.Run(name, func(t *testing.T) {
			var failures, told atomic.Int32
			n := startModNode(t, nil, func(r *Reconciler) {
				r.Consumers = func(context.Context, string) error {
					if failures.Add(1) <= 2 {
						return failure
					}
					told.Add(1)
					return nil
				}
			}, pendingObject("pv-a"))
			n.ready(t, "pv-a")
			want := &v1alpha1.IOLimits{WriteIOPS: 5}
			n.change(t, "pv-a", false, want)
			waitFor(t, "applied", func() bool { return appliedLimits(n.get(t, "pv-a"), want) })
			if told.Load() == 0 {
				t.Errorf("status.applied says %+v, but the consumers were never told of it (%d failed tries)", n.get(t, "pv-a").Status.Applied.IOLimits, failures.Load())
			}
		})
	}
}

// A volume whose expansion the pool refused keeps its larger
// spec.capacityBytes (an object's capacity never shrinks), and every pass
// takes the expansion first: a class change of that volume must still be
// made, and not be answered with the expansion's NoSpace.
func TestAttackModifyBlockedByRefusedExpand(t *testing.T) {
	n := startModNode(t, nil, nil, pendingObject("pv-a"))
	n.ready(t, "pv-a")
	v := n.get(t, "pv-a")
	v.Spec.CapacityBytes = 1 << 50
	v.Generation++
	if _, err := n.plinth.PlinthV1alpha1().PlinthVolumes().Update(context.Background(), v, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "expansion refused", func() bool { return n.get(t, "pv-a").Status.Reason == v1alpha1.ReasonNoSpace })
	want := &v1alpha1.IOLimits{ReadBytesPerSecond: 1 << 20}
	n.change(t, "pv-a", false, want)
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := n.local.Volume(context.Background(), "pv-a")
		if err == nil && l.IOLimits != nil && l.IOLimits.ReadBytesPerSecond == 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			s := n.get(t, "pv-a").Status
			t.Fatalf("a class change of a volume whose expansion was refused is never made (ModifyVolume called %d times); status %s: %s", n.mp.calls.Load(), s.Reason, s.Message)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An object of another node (mislabelled, or the fake API server's
// informer, which ignores label selectors) is never modified, even where
// this node holds a volume of that name, and gets no status from it.
func TestAttackModifyOtherNodeUntouched(t *testing.T) {
	other := &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-b", Generation: 2, Labels: map[string]string{v1alpha1.LabelNode: "n1"}, Finalizers: []string{v1alpha1.Finalizer}},
		Spec:       spec(8 * mi),
		Status:     v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 8 * mi, ObservedGeneration: 1},
	}
	other.Spec.NodeName = "n2"
	other.Spec.Thick, other.Spec.IOLimits = true, &v1alpha1.IOLimits{ReadIOPS: 1}
	n := startModNode(t, func(local *node.Local) {
		if _, err := local.CreateVolume(context.Background(), "fast", pool.Volume{ID: "pv-b", Name: "pv-b", CapacityBytes: 8 * mi, Mode: pool.ModeBlock}); err != nil {
			t.Fatal(err)
		}
	}, nil, other, pendingObject("pv-a"))
	n.ready(t, "pv-a") // the reconciler runs
	n.rec.RequeueVolumes()
	time.Sleep(300 * time.Millisecond)
	if c := n.mp.calls.Load(); c != 0 {
		t.Errorf("ModifyVolume called %d times for another node's object", c)
	}
	if l, err := n.local.Volume(context.Background(), "pv-b"); err != nil || l.Thick || l.IOLimits != nil {
		t.Errorf("this node's pv-b after another node's object: %+v %v", l, err)
	}
	if s := n.get(t, "pv-b").Status; s.Applied != nil || s.ObservedGeneration != 1 {
		t.Errorf("another node's object got a status: %+v", s)
	}
}
