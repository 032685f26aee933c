package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/pool/guard"
)

// seen is the disks a watcher sees now, by identity.
type seen map[string]bool

func (s seen) Find(id string) (disk.Disk, bool) { return disk.Disk{ID: id}, s[id] }

// A file pool made from a disk whose disk is gone takes no import and no
// sync from another node: nothing is filled, nothing is made, though the
// pool under the guard could still be written to.
func TestGuardedPoolRefusesTransfers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fp, err := file.New(file.Config{Name: "d", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	disks := seen{"wwn:1": true}
	g := guard.New(fp, disk.Ready{Name: "d", Layout: disk.LayoutFile, Dir: dir, Members: []disk.Disk{{ID: "wwn:1", Name: "sdb"}}}, disks)
	local, err := node.NewLocal(g)
	if err != nil {
		t.Fatal(err)
	}
	ready, err := local.CreateVolume(ctx, "d", pool.Volume{ID: "pv-ready", Name: "r", CapacityBytes: 1 << 20, Mode: pool.ModeBlock})
	if err != nil {
		t.Fatal(err)
	}
	delete(disks, "wwn:1") // the disk is pulled
	filled := false
	fill := func(context.Context, pool.ImportTarget) error { filled = true; return nil }

	v := pool.Volume{ID: "pv-in", Name: "in", CapacityBytes: 1 << 20, Mode: pool.ModeBlock,
		Source: &pool.Source{Node: "n1", SnapshotID: "sn-1"}}
	if _, err := local.Import(ctx, "d", v, fill); err == nil {
		t.Fatal("an import into a pool whose disk is gone was taken")
	}
	if err := local.Sync(ctx, ready.ID, fill); err == nil {
		t.Fatal("a sync into a pool whose disk is gone was taken")
	}
	if filled {
		t.Fatal("the transfer was asked to fill a pool whose disk is gone")
	}
	if _, err := fp.GetVolume(ctx, "pv-in"); !errors.Is(err, pool.ErrNotFound) {
		t.Errorf("the refused import left a volume record: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "imports", "*")); len(left) != 0 {
		t.Errorf("the refused transfers left %v", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes", "pv-in.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused import made an image: %v", err)
	}
}
