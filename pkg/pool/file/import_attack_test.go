package file

// Attacks on the file pool's import and export (a careless administrator
// or a bug leaving odd files in the pool). All of these HOLD today.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/pkg/pool"
)

func importVol(id string, size int64) pool.Volume {
	v := vol(id, size)
	v.Source = &pool.Source{SnapshotID: "sn-1", Node: "n1"}
	return v
}

// HOLDS. Volume IDs with path characters never reach a path: BeginImport
// refuses them, and so does ExportSnapshot for snapshot IDs.
func TestAttackImportIDsHolds(t *testing.T) {
	p, err := New(Config{Name: "p", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, id := range []string{"../x", "a/b", "..", "", "X", "a\x00b"} {
		if _, _, err := p.BeginImport(ctx, importVol(id, 1<<20)); !errors.Is(err, pool.ErrInvalid) {
			t.Errorf("BeginImport(%q) = %v, want ErrInvalid", id, err)
		}
		if _, _, err := p.ExportSnapshot(ctx, id); err == nil {
			t.Errorf("ExportSnapshot(%q) accepted", id)
		}
	}
}

// HOLDS. FinishImport does not follow a partial image that is a symlink
// (it could name another volume's image, or a host file), nor take a FIFO
// or an image larger than the volume; what the link names is untouched
// and nothing becomes the volume.
func TestAttackFinishImportOddPartHolds(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		make func(t *testing.T, part string)
	}{
		{"symlink", func(t *testing.T, part string) {
			victim := filepath.Join(t.TempDir(), "victim")
			os.WriteFile(victim, bytes.Repeat([]byte{7}, 1<<20), 0o600)
			if err := os.Symlink(victim, part); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if b, _ := os.ReadFile(victim); len(b) != 1<<20 {
					t.Errorf("the symlink's target was changed: %d bytes", len(b))
				}
			})
		}},
		{"fifo", func(t *testing.T, part string) {
			if err := syscall.Mkfifo(part, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"larger than the volume", func(t *testing.T, part string) {
			os.WriteFile(part, nil, 0o600)
			os.Truncate(part, 8<<20)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p, err := New(Config{Name: "p", Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			target, _, err := p.BeginImport(ctx, importVol("pv-1", 4<<20))
			if err != nil {
				t.Fatal(err)
			}
			c.make(t, target.Image)
			done := make(chan error, 1)
			go func() {
				_, err := p.FinishImport(ctx, "pv-1")
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("FinishImport took it")
				}
			case <-time.After(3 * time.Second):
				t.Fatal("FinishImport hangs")
			}
			if _, err := os.Lstat(p.volImage("pv-1")); err == nil {
				t.Error("it became the volume's image")
			}
			if v, _ := p.index.Volume("pv-1"); v.State == pool.StateReady {
				t.Error("the volume is Ready")
			}
		})
	}
}

// HOLDS. A Ready imported volume is not touched again: a later
// BeginImport answers the Ready record (node.Import then returns without
// a fill), FinishImport is a no-op, and a partial image left beside it is
// never renamed over it.
func TestAttackReadyImportNotOverwrittenHolds(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := New(Config{Name: "p", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	target, _, err := p.BeginImport(ctx, importVol("pv-1", 4<<20))
	if err != nil {
		t.Fatal(err)
	}
	good := bytes.Repeat([]byte{1}, 1<<20)
	os.WriteFile(target.Image, good, 0o600)
	if _, err := p.FinishImport(ctx, "pv-1"); err != nil {
		t.Fatal(err)
	}
	// A late writer's partial image appears.
	os.WriteFile(target.Image, bytes.Repeat([]byte{0xbb}, 1<<20), 0o600)
	_, got, err := p.BeginImport(ctx, importVol("pv-1", 4<<20))
	if err != nil || got.State != pool.StateReady {
		t.Fatalf("BeginImport of a Ready import = %+v, %v", got, err)
	}
	if _, err := p.FinishImport(ctx, "pv-1"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p.volImage("pv-1"))
	if !bytes.Equal(b[:1<<20], good) {
		t.Error("the Ready volume's image was overwritten")
	}
}
