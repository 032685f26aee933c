package guard

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
)

// statsPool is a pool whose stats always read.
type statsPool struct{ pool.Unavailable }

func (statsPool) Stats(context.Context) (pool.Stats, error) {
	return pool.Stats{TotalBytes: 1 << 30}, nil
}

// present is the disks a watcher sees, by identity.
type present map[string]disk.Disk

func (p present) Find(id string) (disk.Disk, bool) { d, ok := p[id]; return d, ok }

// A disk that goes while plinth runs: a raid1 pool serves on, degraded; a
// single-disk pool is unhealthy and takes no volume; both say which disk.
// A filesystem that fails reads as unhealthy even though statfs works.
func TestGuardWhenADiskGoes(t *testing.T) {
	ctx := context.Background()
	sdc := disk.Disk{ID: "wwn:5000c500b0c0d0e0", Name: "sdc"}
	vda := disk.Disk{ID: "virtio:vd-serial", Name: "vda"}
	nvme := disk.Disk{ID: "eui:0025388b71b2c0e1", Name: "nvme0n1"}
	seen := present{sdc.ID: sdc, vda.ID: vda, nvme.ID: nvme}
	dir := t.TempDir()
	mirror := New(statsPool{pool.Unavailable{PoolName: "mirror"}}, disk.Ready{Name: "mirror", Layout: disk.LayoutBtrfs, Raid: "raid1", Dir: dir,
		Members: []disk.Disk{sdc, vda}}, seen)
	one := New(statsPool{pool.Unavailable{PoolName: "one"}}, disk.Ready{Name: "one", Layout: disk.LayoutFile, Dir: dir, Members: []disk.Disk{nvme}}, seen)
	single := New(statsPool{pool.Unavailable{PoolName: "single"}}, disk.Ready{Name: "single", Layout: disk.LayoutBtrfs, Dir: dir, Members: []disk.Disk{sdc, vda}}, seen)
	for _, p := range []*Pool{mirror, one, single} {
		if st, err := p.Stats(ctx); err != nil || st.Degraded != "" {
			t.Fatalf("%s before: %+v %v", p.Name(), st, err)
		}
	}
	// The SAS disk and the NVMe drive go.
	delete(seen, sdc.ID)
	delete(seen, nvme.ID)
	if st, err := mirror.Stats(ctx); err != nil || !strings.Contains(st.Degraded, "wwn:5000c500b0c0d0e0 (was sdc) is gone") {
		t.Errorf("mirror with a disk gone: %+v %v; want degraded", st, err)
	}
	if _, err := single.Stats(ctx); !errors.Is(err, pool.ErrNotReady) || !strings.Contains(err.Error(), "(was sdc) is gone") {
		t.Errorf("a btrfs pool that keeps one copy, with one disk gone: %v; want not ready", err)
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
	// Both halves of the mirror gone: not ready.
	delete(seen, vda.ID)
	if _, err := mirror.Stats(ctx); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("mirror with both disks gone: %v; want not ready", err)
	}
	seen[vda.ID] = vda
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := mirror.Stats(ctx); err == nil || !strings.Contains(err.Error(), "its filesystem fails") {
		t.Errorf("mirror whose root cannot be read: %v", err)
	}
}

// A guarded file pool keeps what the file pool can do: the node finds its
// AttachedAll (every loop device of a volume, before releasing them), its
// blank record, imports and exports through the guard; a guarded pool
// without them offers none.
func TestGuardKeepsOptionalInterfaces(t *testing.T) {
	fp, err := file.New(file.Config{Name: "f", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	g := New(fp, disk.Ready{Name: "f", Layout: disk.LayoutFile, Dir: t.TempDir()}, disksSeen{})
	if _, ok := pool.As[pool.FullAttacher](g); !ok {
		t.Error("FullAttacher hidden by the guard")
	}
	if _, ok := pool.As[pool.BlankRecorder](g); !ok {
		t.Error("BlankRecorder hidden by the guard")
	}
	if _, ok := pool.As[pool.Importer](g); !ok {
		t.Error("Importer hidden by the guard")
	}
	if _, ok := pool.As[pool.Exporter](g); !ok {
		t.Error("Exporter hidden by the guard")
	}
	if vc, ok := pool.As[pool.VolumeChecker](g); !ok || vc != pool.VolumeChecker(g) {
		t.Error("the guard's own CheckVolume is not the one found")
	}
	plain := New(statsPool{pool.Unavailable{PoolName: "u"}}, disk.Ready{Name: "u", Layout: disk.LayoutFile, Dir: t.TempDir()}, disksSeen{})
	if _, ok := pool.As[pool.Importer](plain); ok {
		t.Error("a pool that imports nothing offers an Importer through the guard")
	}
}

type disksSeen struct{}

func (disksSeen) Find(string) (disk.Disk, bool) { return disk.Disk{}, true }
