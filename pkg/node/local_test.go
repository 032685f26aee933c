package node

import (
	"context"
	"errors"
	"testing"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
)

// While a pool cannot be read (its disks gone), a delete of a volume no
// readable pool holds is not taken as done; lookups answer as before; and
// new volumes still go to the healthy pools.
func TestUnreadablePoolIsNotNotFound(t *testing.T) {
	good, err := file.New(file.Config{Name: "good", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	gone := pool.Unavailable{PoolName: "gone", PoolBackend: "file", Err: errors.New("disk wwn:x (was sdb) is missing")}
	n, err := NewLocal(good, gone)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The node path answers as for any unknown volume (the kubelet's
	// clean-up of stale mounts goes on)...
	if _, _, err := n.PoolOfVolume(ctx, "pv-1"); !errors.Is(err, pool.ErrNotFound) {
		t.Errorf("lookup with a pool unreadable: %v, want ErrNotFound", err)
	}
	// ...but a delete is not taken as done.
	if err := n.DeleteVolume(ctx, "pv-1"); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("delete with a pool unreadable: %v, want ErrNotReady", err)
	}
	if err := n.DeleteSnapshot(ctx, "sn-1"); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("snapshot delete with a pool unreadable: %v, want ErrNotReady", err)
	}
	if u := n.Unopened(ctx); len(u) != 1 || u[0] != "gone" {
		t.Errorf("unopened %v", u)
	}
	infos, err := n.Pools(ctx)
	if err != nil || len(infos) != 1 || infos[0].Name != "good" {
		t.Errorf("pools %+v %v: want the good one only", infos, err)
	}
	v, err := n.CreateVolume(ctx, "good", pool.Volume{ID: "pv-2", Name: "b", CapacityBytes: 1 << 20, Mode: pool.ModeBlock})
	if err != nil || v.Pool != "good" {
		t.Errorf("create in the good pool: %+v %v", v, err)
	}
	if _, err := n.CreateVolume(ctx, "gone", pool.Volume{ID: "pv-3", Name: "c", CapacityBytes: 1 << 20, Mode: pool.ModeBlock}); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("create in the unreadable pool: %v, want ErrNotReady", err)
	}
}
