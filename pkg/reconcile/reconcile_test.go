package reconcile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/reference"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/nodestatus"
	"github.com/plinth-dev/plinth/pkg/pool/file"
)

const mi = int64(1 << 20)

func spec(capacity int64) v1alpha1.VolumeSpec {
	return v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", VolumeName: "pvc-1", CapacityBytes: capacity, Mode: v1alpha1.ModeBlock, Claim: "ns/c"}
}

// The node makes what a Pending object asks for (a real file pool in a
// temporary directory), publishes the pool's new numbers, answers Ready;
// refuses what does not fit with the reason; grows an expanded volume; and
// removes the storage of a deleted one before dropping its finalizer.
func TestReconcile(t *testing.T) {
	dir := t.TempDir()
	p, err := file.New(file.Config{Name: "fast", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	local, err := node.NewLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{v1alpha1.LabelNode: "n1"}
	plinth := plinthfake.NewSimpleClientset(
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(8 * mi)},
		&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-huge", Labels: labels, Finalizers: []string{v1alpha1.Finalizer}}, Spec: spec(1 << 50)},
	)
	volumes := plinth.PlinthV1alpha1().PlinthVolumes()
	core := fake.NewSimpleClientset()
	status := &nodestatus.Publisher{NodeName: "n1", Version: "test", Pools: local.PoolHealth, Plinth: plinth, Core: core, Interval: time.Hour}
	r := &Reconciler{NodeName: "n1", Local: local, Plinth: plinth, Core: core, Status: status}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()

	get := func(name string) *v1alpha1.PlinthVolume {
		v, err := volumes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return v
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	waitFor("pv-a Ready", func() bool { v := get("pv-a"); return v != nil && v.Status.Phase == v1alpha1.VolumeReady })
	if v := get("pv-a"); v.Status.CapacityBytes != 8*mi {
		t.Fatalf("pv-a status %+v", v.Status)
	}
	if _, err := local.Volume(ctx, "pv-a"); err != nil {
		t.Fatalf("no storage for pv-a: %v", err)
	}
	waitFor("pv-huge Failed", func() bool { v := get("pv-huge"); return v != nil && v.Status.Phase == v1alpha1.VolumeFailed })
	if v := get("pv-huge"); v.Status.Reason != v1alpha1.ReasonNoSpace || v.Status.Message == "" {
		t.Fatalf("pv-huge status %+v", v.Status)
	}
	n, err := plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Status.Pools) != 1 || n.Status.Pools[0].Volumes != 1 || n.Status.Pools[0].ProvisionedBytes != 8*mi {
		t.Fatalf("PlinthNode status %+v", n.Status)
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
	ref, err := reference.GetReference(scheme.Scheme, eventObject(v))
	if err != nil {
		t.Fatal(err)
	}
	if ref.Kind != v1alpha1.VolumeKind || ref.APIVersion != "plinth.example.com/v1alpha1" || ref.Name != "pv-a" || ref.UID != "u1" {
		t.Fatalf("reference %+v", ref)
	}
}
