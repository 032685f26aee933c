package nodestatus

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	ktesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
)

// A device's health changes become events on the Node.
func TestDeviceEvents(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	r := &Reporter{NodeName: "n1", Events: rec}
	gpu := func(healthy bool) []v1alpha1.DeviceStatus {
		return []v1alpha1.DeviceStatus{{Resource: "example.com/gpu", ID: "0000:18:00.0", Healthy: healthy}, {Resource: "example.com/gpu", ID: "0000:3b:00.0", Healthy: true}}
	}
	r.deviceEvents(gpu(true))
	if len(rec.Events) != 0 {
		t.Fatalf("healthy at start: %d events", len(rec.Events))
	}
	r.lastStatus = &v1alpha1.NodeStatus{Devices: gpu(true)}
	r.deviceEvents(gpu(false))
	if ev := <-rec.Events; !strings.Contains(ev, "DeviceUnhealthy") || !strings.Contains(ev, "0000:18:00.0") {
		t.Fatalf("event %q", ev)
	}
	r.lastStatus = &v1alpha1.NodeStatus{Devices: gpu(false)}
	r.deviceEvents(gpu(false))
	if len(rec.Events) != 0 {
		t.Fatal("an unchanged unhealthy device was reported again")
	}
	r.deviceEvents(gpu(true))
	if ev := <-rec.Events; !strings.Contains(ev, "DeviceHealthy") {
		t.Fatalf("event %q", ev)
	}
}

// A pool that cannot be read is published unhealthy (the controller places
// nothing on it) with an event; the others are published as usual.
func TestUnreadablePool(t *testing.T) {
	good, err := file.New(file.Config{Name: "good", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	badDir := t.TempDir()
	bad, err := file.New(file.Config{Name: "bad", Dir: badDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(badDir); err != nil { // statfs of the pool now fails
		t.Fatal(err)
	}
	local, err := node.NewLocal(good, bad)
	if err != nil {
		t.Fatal(err)
	}
	plinth := plinthfake.NewSimpleClientset()
	rec := record.NewFakeRecorder(10)
	r := &Reporter{NodeName: "n1", Pools: local.PoolHealth, Plinth: plinth, Core: fake.NewSimpleClientset(), Events: rec, Interval: time.Hour}
	if err := r.Publish(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	n, err := plinth.PlinthV1alpha1().PlinthNodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	health := map[string]bool{}
	for _, p := range n.Status.Pools {
		health[p.Name] = p.Healthy
	}
	if len(health) != 2 || !health["good"] || health["bad"] {
		t.Fatalf("pools %+v: want good healthy, bad unhealthy", n.Status.Pools)
	}
	if ev := <-rec.Events; !strings.Contains(ev, "PoolUnhealthy") || !strings.Contains(ev, "pool bad") {
		t.Fatalf("event %q", ev)
	}
}

// The node's disks are published with its pools; a degraded pool stays
// healthy and says why.
func TestDisksAndDegradedPool(t *testing.T) {
	plinth := plinthfake.NewSimpleClientset()
	disks := []v1alpha1.DiskStatus{
		{ID: "wwn:a", Name: "sdb", SizeBytes: 1 << 40, Transport: "sata", NUMANode: -1, State: "plinth", Pool: "mirror"},
		{ID: "wwn:b", Name: "sdc", SizeBytes: 1 << 40, Transport: "sata", NUMANode: -1, State: "missing", Pool: "mirror", Reason: "not present: last seen as sdc"},
	}
	pools := func(context.Context) []node.PoolHealth {
		return []node.PoolHealth{{Name: "mirror", Backend: "btrfs", Stats: pool.Stats{TotalBytes: 1 << 40, FreeBytes: 1 << 39, Degraded: "disk wwn:b (was sdc) is missing"}}}
	}
	rec := record.NewFakeRecorder(10)
	r := &Reporter{NodeName: "n1", Pools: pools, Disks: func() []v1alpha1.DiskStatus { return append([]v1alpha1.DiskStatus(nil), disks...) }, Plinth: plinth,
		Core: fake.NewSimpleClientset(), Events: rec, Interval: time.Hour}
	if err := r.Publish(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	n, err := plinth.PlinthV1alpha1().PlinthNodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Status.Disks) != 2 || n.Status.Disks[1].State != "missing" {
		t.Errorf("disks %+v", n.Status.Disks)
	}
	if p := n.Status.Pools[0]; !p.Healthy || p.Message != "degraded: disk wwn:b (was sdc) is missing" {
		t.Errorf("pool %+v: want healthy, degraded message", p)
	}
	// On the Node and on the PlinthNode: the pool degraded, the disk missing.
	var got []string
	for len(rec.Events) > 0 {
		got = append(got, <-rec.Events)
	}
	all := strings.Join(got, "\n")
	if len(got) != 4 || strings.Count(all, "PoolDegraded") != 2 || strings.Count(all, "DiskMissing disk wwn:b of pool mirror") != 2 {
		t.Errorf("events:\n%s", all)
	}
	// The disk is back: one DiskBack on each; nothing else again.
	disks[1].State, disks[1].Reason = "plinth", ""
	if err := r.Publish(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	got = nil
	for len(rec.Events) > 0 {
		got = append(got, <-rec.Events)
	}
	if len(got) != 2 || !strings.Contains(got[0], "DiskBack") {
		t.Errorf("events after the disk came back: %v", got)
	}
}

// Space taken from outside plinth (a file written into the pool's
// filesystem) reaches the PlinthNode at the next poll, long before the
// heartbeat; an unchanged status is not written again before it.
func TestOutsideFillPublishedAtPoll(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a tmpfs of its own, so that the fill is the only writer")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	p, err := file.New(file.Config{Name: "p", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	local, err := node.NewLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	plinth := plinthfake.NewSimpleClientset()
	writes := 0
	plinth.PrependReactor("update", "plinthnodes", func(ktesting.Action) (bool, runtime.Object, error) {
		writes++
		return false, nil, nil
	})
	r := &Reporter{NodeName: "n1", Pools: local.PoolHealth, Plinth: plinth, Core: fake.NewSimpleClientset(),
		Events: record.NewFakeRecorder(10), Interval: time.Hour, Poll: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	allocatable := func() int64 {
		n, err := plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil || len(n.Status.Pools) != 1 {
			return -1
		}
		return n.Status.Pools[0].AllocatableBytes
	}
	var before int64
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		before = allocatable()
		return before > 0, nil
	}); err != nil {
		t.Fatal("no status published")
	}
	time.Sleep(200 * time.Millisecond)
	r.mu.Lock()
	quiet := writes
	r.mu.Unlock()
	if quiet > 2 {
		t.Errorf("an unchanged status was written %d times in 200ms with an hour's heartbeat", quiet)
	}
	if err := os.WriteFile(filepath.Join(dir, "outside"), make([]byte, 32<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return allocatable() <= before-30<<20, nil
	}); err != nil {
		t.Fatalf("allocatable %d after 32MiB were written from outside (was %d)", allocatable(), before)
	}
}

// sequenceFixture is a fake API holding node n1's PlinthNode, a maker of
// Reporters for n1 over one file pool, and the stored status's sequence.
func sequenceFixture(t *testing.T) (*plinthfake.Clientset, func() *Reporter, func() int64) {
	t.Helper()
	p1, err := file.New(file.Config{Name: "p", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	local, err := node.NewLocal(p1)
	if err != nil {
		t.Fatal(err)
	}
	plinth := plinthfake.NewSimpleClientset()
	newReporter := func() *Reporter {
		return &Reporter{NodeName: "n1", Pools: local.PoolHealth, Plinth: plinth, Core: fake.NewSimpleClientset(), Events: record.NewFakeRecorder(10), Interval: time.Hour}
	}
	seq := func() int64 {
		n, err := plinth.PlinthV1alpha1().PlinthNodes().Get(context.Background(), "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Status.Sequence
	}
	return plinth, newReporter, seq
}

// Each written status has the next sequence, also after a restart (a new
// Reporter over the same object); PublishAfter returns the sequence of a
// status that read the pools after the time asked, writing one only when
// needed; an unchanged status is not rewritten for a new sequence.
func TestSequence(t *testing.T) {
	_, newReporter, seq := sequenceFixture(t)
	ctx := context.Background()
	r := newReporter()
	if err := r.Publish(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(ctx, false); err != nil { // unchanged: no write
		t.Fatal(err)
	}
	if s := seq(); s != 1 {
		t.Fatalf("sequence %d after one write, want 1", s)
	}
	before := time.Now()
	got, err := r.PublishAfter(ctx, before)
	if err != nil || got != 2 || seq() != 2 {
		t.Fatalf("PublishAfter after the last read: %d %v (object %d), want a new status 2", got, err, seq())
	}
	if got, err := r.PublishAfter(ctx, before); err != nil || got != 2 || seq() != 2 {
		t.Fatalf("PublishAfter already answered: %d %v (object %d), want 2 without a write", got, err, seq())
	}
	restarted := newReporter()
	if err := restarted.Publish(ctx, true); err != nil {
		t.Fatal(err)
	}
	if s := seq(); s != 3 {
		t.Errorf("sequence %d after a restart's first write, want 3", s)
	}
}

// A heartbeat is one request (the status write, from the object the last
// write returned), as the API server's load at a thousand nodes asked; a
// write that another writer got in before conflicts, reads the object
// again and still has the next sequence.
func TestHeartbeatIsOneWrite(t *testing.T) {
	plinth, newReporter, seq := sequenceFixture(t)
	// The fake's tracker keeps no resourceVersions: this one does as the
	// API server does (a write must name the stored one, and bumps it).
	var version int
	plinth.PrependReactor("update", "plinthnodes", func(a ktesting.Action) (bool, runtime.Object, error) {
		n := a.(ktesting.UpdateAction).GetObject().(*v1alpha1.PlinthNode).DeepCopy()
		stored, err := plinth.Tracker().Get(a.GetResource(), "", n.Name)
		if err != nil {
			return true, nil, err
		}
		if rv := stored.(*v1alpha1.PlinthNode).ResourceVersion; n.ResourceVersion != rv {
			return true, nil, apierrors.NewConflict(a.GetResource().GroupResource(), n.Name, fmt.Errorf("resourceVersion %q, stored %q", n.ResourceVersion, rv))
		}
		version++
		n.ResourceVersion = strconv.Itoa(version)
		if err := plinth.Tracker().Update(a.GetResource(), n, ""); err != nil {
			return true, nil, err
		}
		return true, n, nil
	})
	ctx := context.Background()
	verbs := func() []string {
		var v []string
		for _, a := range plinth.Actions() {
			v = append(v, a.GetVerb()+" "+a.GetResource().Resource+"/"+a.GetSubresource())
		}
		plinth.ClearActions()
		return v
	}
	r := newReporter()
	if err := r.Publish(ctx, true); err != nil {
		t.Fatal(err)
	}
	verbs()
	for i := range 3 {
		if err := r.Publish(ctx, true); err != nil {
			t.Fatal(err)
		}
		if v := verbs(); len(v) != 1 || v[0] != "update plinthnodes/status" {
			t.Fatalf("heartbeat %d asked %v, want one status update", i, v)
		}
	}
	if s := seq(); s != 4 {
		t.Fatalf("sequence %d after four writes, want 4", s)
	}
	other := newReporter() // another writer (a restarted agent) gets in first
	if err := other.Publish(ctx, true); err != nil {
		t.Fatal(err)
	}
	verbs()
	if err := r.Publish(ctx, true); err != nil {
		t.Fatalf("write after another writer's: %v", err)
	}
	if v := verbs(); len(v) != 3 {
		t.Errorf("write after another writer's asked %v, want the conflicting update, a read and an update", v)
	}
	if s := seq(); s != 6 {
		t.Errorf("sequence %d after another writer's 5, want 6", s)
	}
	// Removed behind its back: made again.
	if err := plinth.PlinthV1alpha1().PlinthNodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Publish(ctx, true); err != nil {
		t.Fatalf("write after the object was removed: %v", err)
	}
	if s := seq(); s != 1 {
		t.Errorf("sequence %d in the object made again, want 1", s)
	}
}
