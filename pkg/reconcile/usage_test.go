package reconcile

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
)

// fakeUsage answers VolumeUsage from a table; IDs it does not hold are
// ok=false.
type fakeUsage struct {
	mu   sync.Mutex
	used map[string]int64
	err  map[string]error
}

func (f *fakeUsage) VolumeUsage(_ context.Context, id string) (int64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.err[id]; err != nil {
		return 0, false, err
	}
	u, ok := f.used[id]
	return u, ok, nil
}

func (f *fakeUsage) set(id string, used int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.used[id] = used
}

var _ UsageReader = (*fakeUsage)(nil)

func TestUsageDue(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	published := func(used int64, ago time.Duration) v1alpha1.VolumeStatus {
		return v1alpha1.VolumeStatus{UsedBytes: &used, UsageTime: &metav1.Time{Time: now.Add(-ago)}}
	}
	const capacity = 10 << 30 // 1% is about 102 MiB
	for name, tc := range map[string]struct {
		st   v1alpha1.VolumeStatus
		used int64
		want bool
	}{
		"never published":                   {st: v1alpha1.VolumeStatus{}, used: 0, want: true},
		"unchanged, fresh":                  {st: published(5<<30, time.Minute), used: 5 << 30},
		"unchanged, days old":               {st: published(5<<30, 72*time.Hour), used: 5 << 30},
		"moved 1 GiB, written a minute ago": {st: published(5<<30, time.Minute), used: 6 << 30},
		"moved 1 GiB, written 10 min ago":   {st: published(5<<30, 10*time.Minute), used: 6 << 30, want: true},
		"shrank 1 GiB, written 10 min ago":  {st: published(5<<30, 10*time.Minute), used: 4 << 30, want: true},
		"moved 1 MiB, written 30 min ago":   {st: published(5<<30, 30*time.Minute), used: 5<<30 + mi},
		"moved 1 MiB, written an hour ago":  {st: published(5<<30, time.Hour), used: 5<<30 + mi, want: true},
	} {
		t.Run(name, func(t *testing.T) {
			if got := usageDue(tc.st, capacity, tc.used, now); got != tc.want {
				t.Errorf("usageDue = %t, want %t", got, tc.want)
			}
		})
	}
}

// statusWrites counts the status updates of PlinthVolumes the fake API
// server has taken.
func statusWrites(c *plinthfake.Clientset) int {
	n := 0
	for _, a := range c.Actions() {
		if a.Matches("update", "plinthvolumes") && a.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

// A pass publishes the usage of the node's Ready volumes it can read, and
// writes nothing when nothing changed; a move of more than 1% waits for
// the minimum interval; volumes of other nodes, not Ready, unreadable or
// without an answer are left alone.
func TestPublishUsage(t *testing.T) {
	ctx := context.Background()
	vol := func(name, node string, phase v1alpha1.VolumePhase) *v1alpha1.PlinthVolume {
		return &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:   v1alpha1.VolumeSpec{NodeName: node, Pool: "fast", VolumeName: name, CapacityBytes: 1 << 30, Mode: v1alpha1.ModeFilesystem},
			Status: v1alpha1.VolumeStatus{Phase: phase, CapacityBytes: 1 << 30}}
	}
	vols := []*v1alpha1.PlinthVolume{
		vol("pv-a", "n1", v1alpha1.VolumeReady),
		vol("pv-b", "n1", v1alpha1.VolumeReady),   // the reader cannot tell
		vol("pv-err", "n1", v1alpha1.VolumeReady), // the reader fails
		vol("pv-pending", "n1", v1alpha1.VolumePending),
		vol("pv-other", "n2", v1alpha1.VolumeReady),
	}
	plinth := plinthfake.NewSimpleClientset()
	for _, v := range vols {
		if _, err := plinth.PlinthV1alpha1().PlinthVolumes().Create(ctx, v, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	reader := &fakeUsage{
		used: map[string]int64{"pv-a": 100 * mi, "pv-pending": mi, "pv-other": mi},
		err:  map[string]error{"pv-err": errors.New("qgroup unreadable")},
	}
	r := &Reconciler{NodeName: "n1", Plinth: plinth}
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	current := func() []*v1alpha1.PlinthVolume {
		var out []*v1alpha1.PlinthVolume
		for _, v := range vols {
			got, err := plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, v.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, got)
		}
		return out
	}
	used := func(name string) (int64, time.Time) {
		t.Helper()
		v, err := plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, name, metav1.GetOptions{})
		if err != nil || v.Status.UsedBytes == nil || v.Status.UsageTime == nil {
			t.Fatalf("%s: no usage published (%v): %+v", name, err, v.Status)
		}
		return *v.Status.UsedBytes, v.Status.UsageTime.Time
	}
	pass := func(at time.Time, wantWrites int) {
		t.Helper()
		before := statusWrites(plinth)
		if n := r.publishUsage(ctx, reader, current(), at); n != wantWrites || statusWrites(plinth)-before != wantWrites {
			t.Fatalf("pass at %s: %d writes (%d status updates), want %d", at.Format(time.TimeOnly), n, statusWrites(plinth)-before, wantWrites)
		}
	}

	pass(now, 1) // pv-a only
	if u, at := used("pv-a"); u != 100*mi || !at.Equal(now) {
		t.Errorf("pv-a: %d bytes at %s, want %d at %s", u, at, 100*mi, now)
	}
	for _, name := range []string{"pv-b", "pv-err", "pv-pending", "pv-other"} {
		if v, _ := plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, name, metav1.GetOptions{}); v.Status.UsedBytes != nil {
			t.Errorf("%s: usage published: %d", name, *v.Status.UsedBytes)
		}
	}
	// Nothing changed: no write, however late.
	pass(now.Add(time.Minute), 0)
	pass(now.Add(48*time.Hour), 0)
	// A move of 200 MiB (more than 1% of 1 GiB) waits for 10 minutes
	// after the last write.
	reader.set("pv-a", 300*mi)
	pass(now.Add(5*time.Minute), 0)
	pass(now.Add(10*time.Minute), 1)
	if u, _ := used("pv-a"); u != 300*mi {
		t.Errorf("pv-a: %d bytes, want %d", u, 300*mi)
	}
	// A move below the threshold waits for an hour.
	reader.set("pv-a", 300*mi+mi/2)
	pass(now.Add(40*time.Minute), 0)
	pass(now.Add(70*time.Minute), 1)
}

// A pass writes at most usageMaxWritesPerPass volumes; the rest follow in
// the next pass.
func TestPublishUsageBounded(t *testing.T) {
	ctx := context.Background()
	plinth := plinthfake.NewSimpleClientset()
	reader := &fakeUsage{used: map[string]int64{}}
	n := usageMaxWritesPerPass + 20
	for i := range n {
		v := &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-" + string(rune('a'+i/26)) + string(rune('a'+i%26))},
			Spec: v1alpha1.VolumeSpec{NodeName: "n1"}, Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 30}}
		if _, err := plinth.PlinthV1alpha1().PlinthVolumes().Create(ctx, v, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		reader.used[v.Name] = mi
	}
	r := &Reconciler{NodeName: "n1", Plinth: plinth}
	list := func() []*v1alpha1.PlinthVolume {
		l, err := plinth.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out := make([]*v1alpha1.PlinthVolume, len(l.Items))
		for i := range l.Items {
			out[i] = &l.Items[i]
		}
		return out
	}
	now := time.Now()
	if got := r.publishUsage(ctx, reader, list(), now); got != usageMaxWritesPerPass {
		t.Fatalf("first pass: %d writes, want %d", got, usageMaxWritesPerPass)
	}
	if got := r.publishUsage(ctx, reader, list(), now.Add(time.Minute)); got != 20 {
		t.Fatalf("second pass: %d writes, want 20", got)
	}
	if got := r.publishUsage(ctx, reader, list(), now.Add(2*time.Minute)); got != 0 {
		t.Fatalf("third pass: %d writes, want 0", got)
	}
}

// The running reconciler publishes a Ready volume's usage through its
// UsageReader, once, and not again while it does not change.
func TestReconcilePublishesUsage(t *testing.T) {
	reader := &fakeUsage{used: map[string]int64{"pv-a": 3 * mi}}
	labels := map[string]string{v1alpha1.LabelNode: "n1"}
	n := startNodeConfigured(t, nil, func(r *Reconciler) { r.Usage, r.UsageInterval = reader, 20*time.Millisecond },
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(8 * mi)})
	get := func() *v1alpha1.PlinthVolume {
		v, err := n.plinth.PlinthV1alpha1().PlinthVolumes().Get(n.ctx, "pv-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	waitFor(t, "pv-a usage published", func() bool { return get().Status.UsedBytes != nil })
	if v := get(); *v.Status.UsedBytes != 3*mi || v.Status.UsageTime == nil || v.Status.Phase != v1alpha1.VolumeReady || v.Status.CapacityBytes != 8*mi {
		t.Fatalf("pv-a status %+v", v.Status)
	}
	writes := statusWrites(n.plinth)
	time.Sleep(200 * time.Millisecond) // about ten passes
	if got := statusWrites(n.plinth); got != writes {
		t.Errorf("%d status writes while the usage did not change", got-writes)
	}
}
