package provision

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// eventLog records events with the kind and name of their object.
type eventLog struct {
	mu     sync.Mutex
	events []string // "Kind/name type reason: message"
}

func (e *eventLog) Event(obj runtime.Object, kind, reason, msg string) {
	name := ""
	if m, ok := obj.(metav1.Object); ok {
		name = m.GetName()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, fmt.Sprintf("%T/%s %s %s: %s", obj, name, kind, reason, msg))
}

func (e *eventLog) Eventf(obj runtime.Object, kind, reason, format string, args ...any) {
	e.Event(obj, kind, reason, fmt.Sprintf(format, args...))
}

func (e *eventLog) AnnotatedEventf(obj runtime.Object, _ map[string]string, kind, reason, format string, args ...any) {
	e.Eventf(obj, kind, reason, format, args...)
}

// reasons lists the events' "Kind/name reason", in order.
func (e *eventLog) reasons() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.events {
		f := strings.Fields(ev)
		out = append(out, f[0]+" "+strings.TrimSuffix(f[2], ":"))
	}
	return out
}

// finalizerDeletes makes the fake API server delete a volume object with
// finalizers as a real one does: it only sets the deletion timestamp.
func finalizerDeletes(client *plinthfake.Clientset) {
	gvr := v1alpha1.SchemeGroupVersion.WithResource("plinthvolumes")
	client.PrependReactor("delete", "plinthvolumes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj, err := client.Tracker().Get(gvr, "", a.(k8stesting.DeleteAction).GetName())
		if err != nil {
			return true, nil, err
		}
		v := obj.(*v1alpha1.PlinthVolume).DeepCopy()
		if len(v.Finalizers) == 0 {
			return false, nil, nil
		}
		if v.DeletionTimestamp == nil {
			now := metav1.Now()
			v.DeletionTimestamp = &now
		}
		return true, nil, client.Tracker().Update(gvr, v, "")
	})
}

func lostVolume(name string) *v1alpha1.PlinthVolume {
	return &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelNode: "n1", v1alpha1.LabelPool: "fast"},
			Finalizers: []string{v1alpha1.Finalizer}},
		Spec:   v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", VolumeName: name, CapacityBytes: 10 * mi, Mode: v1alpha1.ModeBlock, Claim: "ns/c-" + name},
		Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 10 * mi},
	}
}

// boundPair is a PV of plinth's driver for volume id bound to PVC ns/c-id.
func boundPair(id string, reclaim v1.PersistentVolumeReclaimPolicy) (*v1.PersistentVolume, *v1.PersistentVolumeClaim) {
	pvc := &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c-" + id, UID: types.UID("uid-" + id)},
		Spec: v1.PersistentVolumeClaimSpec{VolumeName: id}, Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound}}
	pv := &v1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: id},
		Spec: v1.PersistentVolumeSpec{PersistentVolumeReclaimPolicy: reclaim,
			ClaimRef:               &v1.ObjectReference{Namespace: "ns", Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{Driver: "plinth.example.com", VolumeHandle: id}}},
		Status: v1.PersistentVolumeStatus{Phase: v1.VolumeBound}}
	return pv, pvc
}

// lostSetup is node n1 (its PlinthNode gone with its Node) holding volume
// objects pv-d (reclaim Delete) and pv-r (Retain), each with a bound PV and
// PVC; node is the Kubernetes Node the API server holds (nil: none), and
// cacheGone what the controller's Node cache says.
type lostSetup struct {
	lost   *LostNodes
	core   *fake.Clientset
	plinth *plinthfake.Clientset
	vc     *volume.Controller
	events *eventLog
	now    *time.Time
}

func newLostSetup(t *testing.T, releaseAfter time.Duration, node *v1.Node, cacheGone bool) lostSetup {
	t.Helper()
	c, client := fakeClusterOf(t, nil, nil, map[string]bool{"n1": cacheGone}, lostVolume("pv-d"), lostVolume("pv-r"))
	finalizerDeletes(client)
	pvs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	claims := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	var objs []runtime.Object
	for id, reclaim := range map[string]v1.PersistentVolumeReclaimPolicy{"pv-d": v1.PersistentVolumeReclaimDelete, "pv-r": v1.PersistentVolumeReclaimRetain} {
		pv, pvc := boundPair(id, reclaim)
		_ = pvs.Add(pv)
		_ = claims.Add(pvc)
		objs = append(objs, pv, pvc)
	}
	if node != nil {
		objs = append(objs, node)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	events := &eventLog{}
	core := fake.NewSimpleClientset(objs...)
	lost := &LostNodes{Client: core, Cluster: c, PVs: corelisters.NewPersistentVolumeLister(pvs),
		Claims: corelisters.NewPersistentVolumeClaimLister(claims), Driver: "plinth.example.com", Events: events,
		ReleaseAfter: releaseAfter, Now: func() time.Time { return now }}
	c.Lost = lost
	return lostSetup{lost: lost, core: core, plinth: client, vc: volume.NewControllerOver(c), events: events, now: &now}
}

func (s lostSetup) claimExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := s.core.CoreV1().PersistentVolumeClaims("ns").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

func (s lostSetup) volumeObject(t *testing.T, id string) *v1alpha1.PlinthVolume {
	t.Helper()
	v, err := s.plinth.PlinthV1alpha1().PlinthVolumes().Get(context.Background(), id, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("volume object %s: %v", id, err)
	}
	return v
}

// The volumes of a node whose Node object has left are reported once per
// loss, and released only when asked to, only once the node has been
// absent for longer than the delay, and only when the API server (not just
// the cache) has no Node object; a Node that exists, whatever its
// condition, stops everything.
func TestLostNodes(t *testing.T) {
	notReady := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1.NodeStatus{Conditions: []v1.NodeCondition{
		{Type: v1.NodeReady, Status: v1.ConditionUnknown, Reason: "NodeStatusUnknown"}}}}
	reported := []string{
		"*v1.PersistentVolume/pv-d VolumeOnLostNode", "*v1.PersistentVolumeClaim/c-pv-d VolumeOnLostNode",
		"*v1.PersistentVolume/pv-r VolumeOnLostNode", "*v1.PersistentVolumeClaim/c-pv-r VolumeOnLostNode",
	}
	released := []string{
		"*v1.PersistentVolume/pv-d VolumeReleased", "*v1.PersistentVolumeClaim/c-pv-d VolumeReleased",
		"*v1.PersistentVolume/pv-r VolumeReleased", "*v1.PersistentVolumeClaim/c-pv-r VolumeReleased",
	}
	cases := map[string]struct {
		releaseAfter time.Duration
		node         *v1.Node
		cacheGone    bool
		absentFor    time.Duration
		wantEvents   []string
		wantRelease  bool
	}{
		"release off":                              {0, nil, true, 24 * time.Hour, reported, false},
		"Node present and NotReady":                {time.Minute, notReady, false, 24 * time.Hour, nil, false},
		"absent for less than the delay":           {10 * time.Minute, nil, true, 10 * time.Minute, reported, false},
		"absent for longer than the delay":         {10 * time.Minute, nil, true, 10*time.Minute + time.Second, append(slices.Clone(reported), released...), true},
		"cache stale, the API server has the Node": {time.Minute, notReady, true, 24 * time.Hour, nil, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s := newLostSetup(t, tc.releaseAfter, tc.node, tc.cacheGone)
			ctx := context.Background()
			if err := s.lost.pass(ctx); err != nil {
				t.Fatal(err)
			}
			*s.now = s.now.Add(tc.absentFor)
			if err := s.lost.pass(ctx); err != nil {
				t.Fatal(err)
			}
			if got := s.events.reasons(); !slices.Equal(got, tc.wantEvents) {
				t.Fatalf("events %q, want %q\n%s", got, tc.wantEvents, strings.Join(s.events.events, "\n"))
			}
			for _, claim := range []string{"c-pv-d", "c-pv-r"} {
				if exists := s.claimExists(t, claim); exists == tc.wantRelease {
					t.Errorf("claim %s exists: %t, want %t", claim, exists, !tc.wantRelease)
				}
			}
			if tc.wantRelease {
				s.checkReleaseMessages(t)
			}
			if !tc.cacheGone {
				return // a present node's volumes are deleted by the node, as always
			}
			// The PV of reclaim Delete, its claim gone (or not): the volume
			// object is let go only when released.
			err := s.vc.DeleteVolume(ctx, "pv-d")
			v := s.volumeObject(t, "pv-d")
			if !tc.wantRelease {
				if !errors.Is(err, volume.ErrNodeGone) || v.DeletionTimestamp != nil {
					t.Fatalf("delete: %v, deletion %v; want ErrNodeGone and the object kept", err, v.DeletionTimestamp)
				}
				return
			}
			if err != nil {
				t.Fatalf("delete of a released volume: %v", err)
			}
			if v.DeletionTimestamp == nil || !slices.Contains(v.Finalizers, v1alpha1.Finalizer) {
				t.Fatalf("volume object after the delete: deletion %v, finalizers %v; want a deletion request and the node's finalizer", v.DeletionTimestamp, v.Finalizers)
			}
			// Asked again (the library retries), it stays let go.
			waitDeleting(t, s, "pv-d")
			if err := s.vc.DeleteVolume(ctx, "pv-d"); err != nil {
				t.Fatalf("second delete: %v", err)
			}
			if v := s.volumeObject(t, "pv-r"); v.DeletionTimestamp != nil {
				t.Fatal("the Retain volume's object was deleted")
			}
		})
	}
}

func (s lostSetup) checkReleaseMessages(t *testing.T) {
	t.Helper()
	for _, ev := range s.events.events {
		if !strings.Contains(ev, ReasonVolumeReleased) {
			continue
		}
		if !strings.Contains(ev, "node n1") || !strings.Contains(ev, "10m1s") {
			t.Errorf("release event does not name the node and the time: %s", ev)
		}
		if strings.Contains(ev, "pv-r") && !strings.Contains(ev, "reclaim policy Retain and is left as it is") {
			t.Errorf("release event of a Retain PV: %s", ev)
		}
	}
	for _, ev := range s.events.events {
		if strings.Contains(ev, ReasonVolumeOnLostNode) && !strings.Contains(ev, "release is on") {
			t.Errorf("report does not say release is on: %s", ev)
		}
	}
}

// waitDeleting waits until the Cluster's cache shows the object's deletion.
func waitDeleting(t *testing.T, s lostSetup, id string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		v, ok := s.lost.Cluster.Volume(id)
		return ok && v.DeletionTimestamp != nil, nil
	}); err != nil {
		t.Fatalf("cache never showed %s deleting: %v", id, err)
	}
}

// A node that comes back ends the loss: its clock restarts and its volumes
// are reported again if it leaves again.
func TestLostNodeComesBack(t *testing.T) {
	s := newLostSetup(t, time.Minute, nil, true)
	ctx := context.Background()
	gone := map[string]bool{"n1": true}
	s.lost.Cluster.nodeGone = func(n string) bool { return gone[n] }
	if err := s.lost.pass(ctx); err != nil {
		t.Fatal(err)
	}
	*s.now = s.now.Add(50 * time.Second)
	gone["n1"] = false // back
	if err := s.lost.pass(ctx); err != nil {
		t.Fatal(err)
	}
	gone["n1"] = true // and gone again: the clock starts afresh
	for range 2 {
		if err := s.lost.pass(ctx); err != nil {
			t.Fatal(err)
		}
		*s.now = s.now.Add(30 * time.Second)
	}
	if !s.claimExists(t, "c-pv-d") {
		t.Fatal("released 110 s after the first absence began, 60 s into the second")
	}
	if got := len(s.events.reasons()); got != 8 {
		t.Fatalf("%d events, want 4 for each loss:\n%s", got, strings.Join(s.events.events, "\n"))
	}
	*s.now = s.now.Add(time.Second)
	if ok, err := s.lost.Releasable(ctx, "n1"); !ok || err != nil {
		t.Fatalf("releasable after 61 s of the second absence: %t, %v", ok, err)
	}
}
