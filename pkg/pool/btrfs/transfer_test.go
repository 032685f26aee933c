package btrfs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
)

// twoPools is a sending pool and a receiving one, each on a btrfs of its
// own (two nodes' disks).
func twoPools(t *testing.T) (src *btrfs.Pool, srcDir string, dst *btrfs.Pool, dstDir string) {
	t.Helper()
	src, srcDir = newPool(t, "")
	dst, dstDir = newPool(t, "")
	return
}

// sendInto runs send into a new attempt of target's receive.
func sendInto(t *testing.T, s pool.Send, target pool.ImportTarget) error {
	t.Helper()
	if target.Format != pool.ImportStream || target.Receive == nil {
		t.Fatalf("target format %q, receive set %v: want a stream", target.Format, target.Receive != nil)
	}
	ctx := context.Background()
	w, err := target.Receive(ctx)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(s.Run(ctx, pw)) }()
	_, err = io.Copy(w, pr)
	pr.CloseWithError(err)
	return errors.Join(err, w.Close())
}

// tree is what a directory holds: path → type, mode, size and content.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(path)
			desc += " -> " + l
		case info.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d %x", len(b), sha256.Sum256(b))
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what, a, b string) {
	t.Helper()
	ta, tb := tree(t, a), tree(t, b)
	for k, v := range ta {
		if tb[k] != v {
			t.Errorf("%s: %s is %q on the source, %q on the target", what, k, v, tb[k])
		}
	}
	for k := range tb {
		if _, ok := ta[k]; !ok {
			t.Errorf("%s: %s is on the target only", what, k)
		}
	}
}

func fill(t *testing.T, dir string, seed byte) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, "d/e"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "d/e/small"), []byte("small "+string(seed)), 0o640))
	big := bytes.Repeat([]byte{seed, 1, 2, 3}, 1<<20) // 4 MiB
	must(t, os.WriteFile(filepath.Join(dir, "big"), big, 0o600))
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(t, err)
	_, err = f.WriteAt([]byte("end"), 32<<20)
	must(t, err)
	must(t, f.Close())
	must(t, os.Symlink("../etc/passwd", filepath.Join(dir, "link")))
	must(t, os.Link(filepath.Join(dir, "big"), filepath.Join(dir, "hard")))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A volume sent to another node and brought up to date there: the target
// holds exactly the source's tree after each step, under its own limit,
// and keeps nothing of the transfer once done.
func TestSendReceiveAndSync(t *testing.T) {
	ctx := context.Background()
	src, srcDir, dst, dstDir := twoPools(t)
	const capacity = 128 << 20
	_, err := src.CreateVolume(ctx, pool.Volume{ID: "vol", CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs"})
	must(t, err)
	srcVol := filepath.Join(srcDir, "volumes/vol")
	fill(t, srcVol, 'a')
	_, err = src.CreateSnapshot(ctx, pool.Snapshot{ID: "snap1", SourceVolumeID: "vol"})
	must(t, err)

	send, _, err := src.SendSnapshot(ctx, "snap1")
	must(t, err)
	want := pool.Volume{ID: "moved", CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "a", SnapshotID: "snap1"}}
	target, v, err := dst.BeginImport(ctx, want)
	must(t, err)
	if v.State != pool.StateCreating {
		t.Fatalf("import begins %s", v.State)
	}
	// A first attempt breaks half-way: the next starts over and ends whole.
	w, err := target.Receive(ctx)
	must(t, err)
	var buf bytes.Buffer
	must(t, send.Run(ctx, &buf))
	half := buf.Bytes()[:buf.Len()/2]
	if _, err := w.Write(half); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil {
		t.Fatal("a receive of half a stream succeeded")
	}
	if _, err := dst.FinishImport(ctx, "moved"); err == nil {
		t.Fatal("an import finished from half a stream")
	}
	must(t, sendInto(t, send, target))
	got, err := dst.FinishImport(ctx, "moved")
	must(t, err)
	if got.State != pool.StateReady {
		t.Fatalf("import finished %s", got.State)
	}
	dstVol := filepath.Join(dstDir, "volumes/moved")
	sameTree(t, "after the import", filepath.Join(srcDir, "snapshots/snap1"), dstVol)
	checkBound(t, dst, dstDir, "moved", capacity)
	// The volume is writable.
	must(t, os.WriteFile(filepath.Join(dstVol, "probe"), []byte("x"), 0o600))
	must(t, os.Remove(filepath.Join(dstVol, "probe")))
	if again, err := dst.FinishImport(ctx, "moved"); err != nil || again.State != pool.StateReady {
		t.Fatalf("FinishImport again: %v, %v", again.State, err)
	}

	// The source changes; a sync brings the target to it.
	must(t, os.WriteFile(filepath.Join(srcVol, "d/e/small"), []byte("changed"), 0o640))
	must(t, os.Remove(filepath.Join(srcVol, "hard")))
	must(t, os.WriteFile(filepath.Join(srcVol, "new"), bytes.Repeat([]byte("n"), 3<<20), 0o600))
	must(t, os.Rename(filepath.Join(srcVol, "d/e"), filepath.Join(srcVol, "d/f")))
	delta, _, err := src.SendVolume(ctx, "vol", "snap1")
	must(t, err)
	var dbuf bytes.Buffer
	must(t, delta.Run(ctx, &dbuf))
	if dbuf.Len() > 4<<20 {
		t.Errorf("the incremental stream is %d bytes for about 3 MiB changed", dbuf.Len())
	}
	t.Logf("whole stream %d KiB for ~4 MiB of data; incremental stream %d KiB for ~3 MiB written, a file renamed, one removed", buf.Len()>>10, dbuf.Len()>>10)
	st, err := dst.SyncTarget(ctx, "moved")
	must(t, err)
	must(t, sendInto(t, delta, st))
	delta.Close()
	must(t, dst.FinishSync(ctx, "moved"))
	sameTree(t, "after the sync", srcVol, dstVol)
	checkBound(t, dst, dstDir, "moved", capacity)
	must(t, dst.FinishSync(ctx, "moved"))
	sameTree(t, "after the sync again", srcVol, dstVol)
	for _, gone := range []string{"imports/moved", "volumes/moved.sync"} {
		if _, err := os.Lstat(filepath.Join(dstDir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left after the sync: %v", gone, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(srcDir, "exports")); len(ents) != 0 {
		t.Errorf("the source keeps %d snapshots made to send", len(ents))
	}
	// No base is left: another sync is refused.
	if _, err := dst.SyncTarget(ctx, "moved"); !errors.Is(err, pool.ErrUnsupported) {
		t.Errorf("a second sync: %v, want ErrUnsupported", err)
	}
	must(t, dst.DeleteVolume(ctx, "moved"))
}

func checkBound(t *testing.T, p *btrfs.Pool, dir, id string, capacity int64) {
	t.Helper()
	v, err := p.GetVolume(context.Background(), id)
	must(t, err)
	sub, err := btrfs.SubvolID(filepath.Join(dir, "volumes", id))
	must(t, err)
	if v.Parameters[btrfs.SubvolKey] != strconv.FormatUint(sub, 10) {
		t.Errorf("record says subvolume %s, the volume is %d", v.Parameters[btrfs.SubvolKey], sub)
	}
	q, err := btrfs.ReadQgroups(dir, sub)
	must(t, err)
	if q.Limit != capacity {
		t.Errorf("volume %s's level-1 group limit is %d, want %d", id, q.Limit, capacity)
	}
}

// A volume restored from another node's snapshot is used: the subvolume
// it was received as goes at its first attach, and it cannot be synced.
func TestAttachDropsReceivedBase(t *testing.T) {
	ctx := context.Background()
	src, srcDir, dst, dstDir := twoPools(t)
	_, err := src.CreateVolume(ctx, pool.Volume{ID: "vol", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs"})
	must(t, err)
	fill(t, filepath.Join(srcDir, "volumes/vol"), 'b')
	_, err = src.CreateSnapshot(ctx, pool.Snapshot{ID: "s", SourceVolumeID: "vol"})
	must(t, err)
	send, _, err := src.SendSnapshot(ctx, "s")
	must(t, err)
	target, _, err := dst.BeginImport(ctx, pool.Volume{ID: "r", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "a", SnapshotID: "s"}})
	must(t, err)
	must(t, sendInto(t, send, target))
	_, err = dst.FinishImport(ctx, "r")
	must(t, err)
	if _, err := os.Stat(filepath.Join(dstDir, "imports/r")); err != nil {
		t.Fatalf("the base is not kept before the volume is used: %v", err)
	}
	_, err = dst.Attach(ctx, "r")
	must(t, err)
	if _, err := os.Lstat(filepath.Join(dstDir, "imports/r")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the base is kept after attach: %v", err)
	}
	if _, err := dst.SyncTarget(ctx, "r"); !errors.Is(err, pool.ErrUnsupported) {
		t.Errorf("sync of a used volume: %v, want ErrUnsupported", err)
	}
	sameTree(t, "restored", filepath.Join(srcDir, "snapshots/s"), filepath.Join(dstDir, "volumes/r"))
}

// A stream longer than a volume of its capacity can need is cut, and the
// import does not finish.
func TestReceiveCutsAnOverlongStream(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	target, _, err := dst.BeginImport(ctx, pool.Volume{ID: "x", CapacityBytes: 1 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "a", SnapshotID: "s"}})
	must(t, err)
	w, err := target.Receive(ctx)
	must(t, err)
	chunk := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 80 && werr == nil; i++ {
		_, werr = w.Write(chunk)
	}
	if werr == nil {
		t.Fatal("80 MiB went into the receive of a 1 MiB volume")
	}
	if err := w.Close(); err == nil {
		t.Fatal("the receive of garbage succeeded")
	}
	if _, err := dst.FinishImport(ctx, "x"); err == nil {
		t.Fatal("the import finished")
	}
	must(t, dst.DeleteVolume(ctx, "x"))
	if _, err := os.Lstat(filepath.Join(dstDir, "imports/x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the delete left the import directory: %v", err)
	}
}
