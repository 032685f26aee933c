package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// A volume's used bytes for its PlinthVolume: what its staged filesystem
// holds; nothing to tell for a volume not staged here, a raw block volume,
// or a staging path that no longer shows the volume's mount.
func TestVolumeUsage(t *testing.T) {
	dir, _, local := filePool(t)
	p := NewMounts(local, mount.NewHost(mount.Exec{}), filepath.Join(dir, "state"))
	ctx := context.Background()
	fs, err := local.CreateVolume(ctx, "p", pool.Volume{ID: "pv-fs", Name: "fs", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	blk, err := local.CreateVolume(ctx, "p", pool.Volume{ID: "pv-blk", Name: "blk", CapacityBytes: 64 << 20, Mode: pool.ModeBlock})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := p.VolumeUsage(ctx, fs.ID); ok || err != nil {
		t.Errorf("a volume not staged: ok %t, %v; want nothing to tell", ok, err)
	}
	staging := filepath.Join(dir, "staging")
	if err := p.Stage(ctx, fs.ID, staging, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Unstage(ctx, fs.ID, staging) })
	empty, ok, err := p.VolumeUsage(ctx, fs.ID)
	if !ok || err != nil {
		t.Fatalf("staged: ok %t, %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(staging, "data"), make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if f, err := os.Open(filepath.Join(staging, "data")); err == nil {
		_ = f.Sync()
		f.Close()
	}
	used, ok, err := p.VolumeUsage(ctx, fs.ID)
	if !ok || err != nil || used < empty+8<<20 {
		t.Errorf("after writing 8 MiB: %d bytes (ok %t, %v), was %d; want 8 MiB more", used, ok, err, empty)
	}
	if _, ok, err := p.VolumeUsage(ctx, blk.ID); ok || err != nil {
		t.Errorf("a raw block volume: ok %t, %v; want nothing to tell", ok, err)
	}
}
