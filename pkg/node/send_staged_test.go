package node

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
	"github.com/plinth-dev/plinth/test/testfs"
)

// A move's final sync of a btrfs volume that is staged but published to no
// pod is sent, with what was written through the staging mount and not
// yet synced: the kubelet keeps a volume staged while a pod on the node
// asks for it (a StatefulSet's new pod waiting on the held volume), so a
// sync that waited for the unstage never came (make move-kills). A
// published volume is still refused: a pod has it.
func TestSendVolumeOfStagedUnpublishedVolume(t *testing.T) {
	testfs.RequireHost(t, "btrfs")
	ctx := context.Background()
	fs := testfs.Filesystem(t, "btrfs", 1<<30)
	dir := filepath.Join(fs, "pool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bt, err := btrfs.New(ctx, btrfs.Config{Name: "bt", Dir: dir, Run: mount.Exec{}})
	if err != nil {
		t.Fatal(err)
	}
	local, err := NewLocal(bt)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	p := NewMounts(local, mount.NewHost(mount.Exec{}), state)
	if _, err := local.CreateVolume(ctx, "bt", pool.Volume{ID: "pv-m", Name: "m", CapacityBytes: 256 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs"}); err != nil {
		t.Fatal(err)
	}
	if _, err := local.CreateSnapshot(ctx, pool.Snapshot{ID: "sn-base", Name: "base", SourceVolumeID: "pv-m"}); err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(t.TempDir(), "globalmount")
	a := Access{FsType: "btrfs"}
	if err := p.Stage(ctx, "pv-m", staging, a); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Unstage(ctx, "pv-m", staging) }()
	// Written through the staging mount, not synced.
	data := bytes.Repeat([]byte("unsynced "), 200000)
	if err := os.WriteFile(filepath.Join(staging, "late"), data, 0o600); err != nil {
		t.Fatal(err)
	}

	send, _, err := local.SendVolume(ctx, "pv-m", "sn-base")
	if err != nil {
		t.Fatalf("SendVolume of a staged, unpublished volume: %v", err)
	}
	var stream bytes.Buffer
	err = send.Run(ctx, &stream)
	send.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(stream.Bytes(), []byte("unsynced unsynced ")) || stream.Len() < len(data) {
		t.Fatalf("the stream (%d bytes) lacks what was written through the staging mount (%d bytes)", stream.Len(), len(data))
	}

	target := filepath.Join(t.TempDir(), "mount")
	if err := p.Publish(ctx, "pv-m", staging, target, a); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Unpublish(ctx, "pv-m", target, false) }()
	if _, _, err := local.SendVolume(ctx, "pv-m", "sn-base"); !errors.Is(err, pool.ErrInUse) {
		t.Fatalf("SendVolume of a published volume: %v, want ErrInUse", err)
	}
	if _, _, err := local.ExportVolume(ctx, "pv-m"); err == nil {
		t.Fatal("ExportVolume of a published volume was not refused")
	}
}
