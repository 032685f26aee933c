package app

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// limitPool is a pool of a backend whose Stats say how many volumes it
// holds at most (only what volumeLimit reads; anything else panics).
type limitPool struct {
	pool.Pool
	name, backend string
	max           int
	err           error
}

func (p limitPool) Name() string    { return p.name }
func (p limitPool) Backend() string { return p.backend }
func (p limitPool) Stats(context.Context) (pool.Stats, error) {
	return pool.Stats{MaxVolumes: p.max}, p.err
}

// NodeGetInfo's limit: the disks of disk pools where those are all the
// node has; half the kernel's mount limit where a pool is bounded by bytes
// alone; never above the operator's cap.
func TestVolumeLimit(t *testing.T) {
	mountMax := filepath.Join(t.TempDir(), "mount-max")
	if err := os.WriteFile(mountMax, []byte("3000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	disks := func(name string, n int) pool.Pool { return limitPool{name: name, backend: "disk", max: n} }
	for _, c := range []struct {
		name  string
		pools []pool.Pool
		capAt int64
		want  int64
	}{
		{"disk pools only", []pool.Pool{disks("a", 3), disks("b", 2)}, 0, 5},
		{"disk pools, capped", []pool.Pool{disks("a", 3), disks("b", 2)}, 4, 4},
		{"a disk pool with no disk present", []pool.Pool{disks("a", 3), limitPool{name: "b", backend: "disk", err: pool.ErrNotReady}}, 0, 3},
		{"a file pool", []pool.Pool{disks("a", 3), limitPool{name: "f", backend: "file"}}, 0, 1500},
		{"a btrfs pool that cannot be read", []pool.Pool{limitPool{name: "b", backend: "btrfs", err: errors.New("gone")}}, 0, 1500},
		{"a file pool, capped", []pool.Pool{limitPool{name: "f", backend: "file"}}, 64, 64},
	} {
		t.Run(c.name, func(t *testing.T) {
			local, err := node.NewLocal(c.pools...)
			if err != nil {
				t.Fatal(err)
			}
			if got := volumeLimit(context.Background(), local, c.capAt, mountMax); got != c.want {
				t.Errorf("volumeLimit = %d; want %d", got, c.want)
			}
		})
	}
	// Without the kernel's file: its default, 100000 mounts.
	local, _ := node.NewLocal(limitPool{name: "f", backend: "file"})
	if got := volumeLimit(context.Background(), local, 0, filepath.Join(t.TempDir(), "none")); got != 50000 {
		t.Errorf("volumeLimit without fs.mount-max = %d; want 50000", got)
	}
}
