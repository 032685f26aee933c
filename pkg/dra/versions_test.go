package dra

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// v010Checkpoint is the checkpoint plinth v0.1.0 wrote with two claims
// prepared on the 8-GPU fixture, one of them with admin access
// (testdata/records/v0.1.0, its README says how it was made).
const v010Checkpoint = "../../testdata/records/v0.1.0/dra/prepared.json"

const (
	v010Train = types.UID("5d2e7c4a-8f61-4b3e-a2c9-7e1d0f3b6a58") // two GPUs
	v010Admin = types.UID("0b7c1f5e-3a52-4a8e-9d1e-4f6a2b8c9d01") // admin access
)

// stateWith makes a state directory whose checkpoint is a copy of src.
func stateWith(t *testing.T, src string) (state, path string) {
	t.Helper()
	state = t.TempDir()
	path = filepath.Join(state, "dra", "prepared.json")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return state, path
}

// The checkpoint v0.1.0 wrote is read as written: the driver starts with
// its claims prepared, answers them again without preparing, unprepares
// them, and writes the version v0.1.0 reads.
func TestV010Checkpoint(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	state, path := stateWith(t, v010Checkpoint)
	cdiDir := t.TempDir()
	d, prepared := newCountedDriver(t, inv, cfg, state, cdiDir, dev)
	got := recorded(t, d)
	train, admin := got[v010Train], got[v010Admin]
	if len(got) != 2 || train.Name != "train" || len(train.Devices) != 2 || train.Devices[0].ID != "0000:18:00.0" ||
		!admin.Devices[0].AdminAccess || admin.Devices[0].CDIIDs[0] != "plinth.example.com/claim="+string(v010Admin)+"-pci-0000-1a-00-0" {
		t.Fatalf("checkpoint of v0.1.0 read as %+v", got)
	}
	if !d.Needed() {
		t.Error("not needed with claims prepared")
	}
	ctx := context.Background()
	c := claim(string(v010Train), "train", "pci-0000-18-00-0", "pci-0000-1a-00-0")
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil || res[v010Train].Err != nil || len(res[v010Train].Devices) != 2 || prepared.Load() != 0 {
		t.Errorf("prepare again: %v %+v, %d prepared", err, res, prepared.Load())
	}
	un, err := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: v010Train}})
	if err != nil || un[v010Train] != nil {
		t.Fatalf("unprepare: %v %v", err, un)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"version": 1,`) || strings.Contains(string(b), string(v010Train)) || !strings.Contains(string(b), string(v010Admin)) {
		t.Errorf("checkpoint after unprepare: %s", b)
	}
	if checkpointFormat.Version() != 1 {
		t.Errorf("this plinth writes checkpoint version %d, v0.1.0 reads 1", checkpointFormat.Version())
	}
}

// A checkpoint of a newer version: the driver does not start; with
// rolling updates (where every call reads the checkpoint again) a driver
// that started before another instance wrote it refuses to prepare and
// unprepare. The file keeps its bytes and modification time throughout.
func TestNewerCheckpointUntouched(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	b, _ := os.ReadFile(v010Checkpoint)
	newer := []byte(strings.Replace(string(b), `"version": 1`, `"version": 99`, 1))
	write := func(path string) time.Time {
		os.WriteFile(path, newer, 0o600)
		old := time.Now().Add(-time.Hour).Truncate(time.Second)
		os.Chtimes(path, old, old)
		return old
	}
	unchanged := func(path string, mtime time.Time) {
		t.Helper()
		got, err := os.ReadFile(path)
		fi, _ := os.Stat(path)
		if err != nil || string(got) != string(newer) || !fi.ModTime().Equal(mtime) {
			t.Errorf("%s changed: %v, %v", path, err, fi.ModTime())
		}
	}
	state, path := stateWith(t, v010Checkpoint)
	mtime := write(path)
	cdiDir := t.TempDir()
	_, err := New(Config{DriverName: driver, NodeName: "node-a", StateDir: state, CDIDir: cdiDir, DevRoot: dev, Resources: cfg.Resources, Inventory: inv})
	var ne *durable.NewerError
	if !errors.As(err, &ne) || ne.Path != path || ne.Version != 99 || ne.Newest != 1 || !strings.Contains(err.Error(), "DRA checkpoint "+path) {
		t.Fatalf("New = %v, want a NewerError naming %s", err, path)
	}
	unchanged(path, mtime)

	// Rolling updates: the driver read version 1, then another instance
	// wrote a newer one.
	state, path = stateWith(t, v010Checkpoint)
	kubelet := t.TempDir()
	d, err := New(Config{DriverName: driver, NodeName: "node-a", StateDir: state, CDIDir: cdiDir, DevRoot: dev, Resources: cfg.Resources,
		Inventory: inv, KubeletDir: kubelet, PodUID: "pod-new"})
	if err != nil {
		t.Fatal(err)
	}
	mtime = write(path)
	ctx := context.Background()
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim("new", "new", "pci-0000-1c-00-0")})
	if err == nil && (res["new"].Err == nil || !errors.Is(res["new"].Err, durable.ErrNewer)) {
		t.Errorf("prepare over a newer checkpoint: %v %+v", err, res)
	}
	un, err := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: v010Train}})
	if err == nil && !errors.Is(un[v010Train], durable.ErrNewer) {
		t.Errorf("unprepare over a newer checkpoint: %v %v", err, un)
	}
	unchanged(path, mtime)
	if _, err := os.Stat(filepath.Join(cdiDir, "plinth.example.com-claim_new.json")); !os.IsNotExist(err) {
		t.Errorf("a CDI spec was written for a claim the checkpoint could not record: %v", err)
	}
}
