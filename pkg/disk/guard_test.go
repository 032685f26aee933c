package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// statsPool is a pool whose stats always read.
type statsPool struct{ Unavailable }

func (statsPool) Stats(context.Context) (pool.Stats, error) {
	return pool.Stats{TotalBytes: 1 << 30}, nil
}

// A disk that goes while plinth runs: a raid1 pool serves on, degraded; a
// single-disk pool is unhealthy and takes no volume; both say which disk.
func TestGuardWhenADiskGoes(t *testing.T) {
	h := writeMachine(t, machine(), machineMountinfo, machineSwaps)
	ctx := context.Background()
	disks, err := Scan(ctx, h, machineSignatures())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Disk{}
	for _, d := range disks {
		byName[d.Name] = d
	}
	w := NewWatcher(h, machineSignatures(), 0, Plan{Decisions: []Decision{{Disk: byName["sdc"], Pool: "mirror"}, {Disk: byName["vda"], Pool: "mirror"}, {Disk: byName["nvme0n1"], Pool: "one"}}})
	if err := w.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mirror := Guard(statsPool{Unavailable{PoolName: "mirror"}}, Ready{Name: "mirror", Layout: LayoutBtrfs, Raid: "raid1", Dir: dir,
		Members: []Disk{byName["sdc"], byName["vda"]}}, w)
	one := Guard(statsPool{Unavailable{PoolName: "one"}}, Ready{Name: "one", Layout: LayoutFile, Dir: dir, Members: []Disk{byName["nvme0n1"]}}, w)
	for _, p := range []*Guarded{mirror, one} {
		if st, err := p.Stats(ctx); err != nil || st.Degraded != "" {
			t.Fatalf("%s before: %+v %v", p.Name(), st, err)
		}
	}
	// The SAS disk and the NVMe drive go.
	for _, n := range []string{"sdc", "nvme0n1"} {
		if err := os.Remove(filepath.Join(h.Sysfs, "block", n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := mirror.Stats(ctx); err != nil || !strings.Contains(st.Degraded, "wwn:5000c500b0c0d0e0 (was sdc) is gone") {
		t.Errorf("mirror with a disk gone: %+v %v; want degraded", st, err)
	}
	if _, err := one.Stats(ctx); !errors.Is(err, pool.ErrNotReady) || !strings.Contains(err.Error(), "(was nvme0n1) is gone") {
		t.Errorf("single-disk pool with its disk gone: %v", err)
	}
	if err := one.CheckVolume(ctx, "pv-1"); err == nil {
		t.Error("a volume of the pool whose disk is gone is healthy")
	}
	if _, err := one.CreateVolume(ctx, pool.Volume{ID: "pv-2"}); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("create on the pool whose disk is gone: %v", err)
	}
	var missing []string
	for _, d := range w.Status() {
		if d.State == StateMissing {
			missing = append(missing, d.Name+"/"+d.Pool)
		}
	}
	if strings.Join(missing, ",") != "nvme0n1/one,sdc/mirror" {
		t.Errorf("missing disks %v", missing)
	}
	// A filesystem that fails reads as unhealthy even though statfs works.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := w.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := mirror.Stats(ctx); err == nil || !strings.Contains(err.Error(), "its filesystem fails") {
		t.Errorf("mirror whose root cannot be read: %v", err)
	}
}
