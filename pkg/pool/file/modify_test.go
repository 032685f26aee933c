package file

// ModifyVolume from an outside review: what a class change does to the
// image, on real loop-mounted filesystems, and what an image replaced
// under the pool makes it do.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// record reads volume id's record as a restarted pool does.
func record(t *testing.T, dir, id string) pool.Volume {
	t.Helper()
	v, err := newPool(t, dir).GetVolume(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func imageSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// Thin → thick allocates every block of the image, its size and data
// unchanged; thick → thin only records it; the same change again changes
// nothing; IO limits alone never touch the image. Every change is in the
// record a restarted pool reads (the IO limits too), and zero limits are
// recorded as none.
func TestModifyThinThickRoundTrip(t *testing.T) {
	for _, fsType := range []string{"xfs", "ext4"} {
		t.Run(fsType, func(t *testing.T) {
			dir := filepath.Join(testFs(t, fsType, 512<<20), "pool")
			p := newPool(t, dir)
			ctx := context.Background()
			if _, err := p.CreateVolume(ctx, vol("v", 64<<20)); err != nil {
				t.Fatal(err)
			}
			img := p.volImage("v")
			data := []byte("tenant data at 5 MiB")
			writeAt(t, img, 5<<20, data)
			if a := allocated(img); a > 1<<20 {
				t.Fatalf("thin image allocates %d", a)
			}

			l := &pool.IOLimits{ReadIOPS: 1, WriteIOPS: 2, ReadBytesPerSecond: 3, WriteBytesPerSecond: 4}
			got, err := p.ModifyVolume(ctx, "v", pool.Mutable{IOLimits: l})
			if err != nil {
				t.Fatal(err)
			}
			if a := allocated(img); a > 1<<20 {
				t.Errorf("a change of IO limits alone allocated the image: %d bytes", a)
			}
			if d := cmp.Diff(l, record(t, dir, "v").IOLimits); d != "" || got.Thick {
				t.Errorf("IO limits after a restart (-want +got):\n%s", d)
			}

			got, err = p.ModifyVolume(ctx, "v", pool.Mutable{Thick: true, IOLimits: l})
			if err != nil {
				t.Fatal(err)
			}
			if !got.Thick || !record(t, dir, "v").Thick {
				t.Errorf("thin → thick: returned %+v, recorded thick %v", got, record(t, dir, "v").Thick)
			}
			if a := allocated(img); a < 64<<20 {
				t.Errorf("thick image allocates %d bytes, want all 64 MiB", a)
			}
			if s := imageSize(t, img); s != 64<<20 {
				t.Errorf("thick image is %d bytes, want 64 MiB: fallocate changed its size", s)
			}
			if b := readAt(t, img, 5<<20, len(data)); !bytes.Equal(b, data) {
				t.Errorf("data after thin → thick: %q", b)
			}

			// Thick → thin records it; the blocks stay until a trim.
			got, err = p.ModifyVolume(ctx, "v", pool.Mutable{Thick: false, IOLimits: &pool.IOLimits{}})
			if err != nil {
				t.Fatal(err)
			}
			r := record(t, dir, "v")
			if got.Thick || r.Thick || r.IOLimits != nil {
				t.Errorf("thick → thin with zero limits: recorded thick %v, limits %+v", r.Thick, r.IOLimits)
			}
			if a := allocated(img); a < 64<<20 {
				t.Errorf("thick → thin gave blocks back by itself: %d bytes", a)
			}
			// Again: nothing changes, not even the record's file.
			fi, _ := os.Stat(filepath.Join(dir, "volumes", "v.json"))
			time.Sleep(10 * time.Millisecond)
			if _, err := p.ModifyVolume(ctx, "v", pool.Mutable{}); err != nil {
				t.Fatal(err)
			}
			if fi2, _ := os.Stat(filepath.Join(dir, "volumes", "v.json")); !fi2.ModTime().Equal(fi.ModTime()) {
				t.Error("the same change again rewrote the record")
			}
		})
	}
}

var noSpaceNumbers = regexp.MustCompile(`asks (\d+) bytes more, and pool \S+ filesystem has (\d+) bytes free`)

// A thin → thick change in a pool whose filesystem has less free space
// than the image lacks (something else filled it) is ErrNoSpace naming
// both numbers; the image (its size and blocks) and the record stay as
// they were, and a retry once there is room succeeds.
func TestModifyThickNoSpace(t *testing.T) {
	for _, fsType := range []string{"xfs", "ext4"} {
		t.Run(fsType, func(t *testing.T) {
			fs := testFs(t, fsType, 320<<20)
			dir := filepath.Join(fs, "pool")
			p := newPool(t, dir)
			ctx := context.Background()
			if _, err := p.CreateVolume(ctx, vol("v", 128<<20)); err != nil {
				t.Fatal(err)
			}
			img := p.volImage("v")
			writeAt(t, img, 0, []byte("x"))
			// Something else takes all but ~32 MiB of the filesystem.
			var st unix.Statfs_t
			if err := unix.Statfs(fs, &st); err != nil {
				t.Fatal(err)
			}
			hog := filepath.Join(fs, "hog")
			f, err := os.Create(hog)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(st.Bavail)*st.Bsize-32<<20); err != nil {
				t.Fatal(err)
			}
			f.Close()
			beforeAlloc, beforeSize := allocated(img), imageSize(t, img)
			need := 128<<20 - beforeAlloc
			unix.Statfs(fs, &st)
			free := int64(st.Bavail) * st.Bsize

			_, err = p.ModifyVolume(ctx, "v", pool.Mutable{Thick: true})
			if !errors.Is(err, pool.ErrNoSpace) {
				t.Fatalf("thick change without room: %v, want ErrNoSpace", err)
			}
			m := noSpaceNumbers.FindStringSubmatch(err.Error())
			if m == nil {
				t.Fatalf("message %q names neither number", err)
			}
			if n, _ := strconv.ParseInt(m[1], 10, 64); n != need {
				t.Errorf("message says %d bytes more, the image lacks %d", n, need)
			}
			if n, _ := strconv.ParseInt(m[2], 10, 64); n < free-1<<20 || n > free+1<<20 {
				t.Errorf("message says %d bytes free, statfs says %d", n, free)
			}
			if a, s := allocated(img), imageSize(t, img); a != beforeAlloc || s != beforeSize {
				t.Errorf("refused change touched the image: %d/%d bytes allocated/size, were %d/%d", a, s, beforeAlloc, beforeSize)
			}
			if r := record(t, dir, "v"); r.Thick {
				t.Error("refused change recorded thick")
			}

			os.Remove(hog)
			// xfs frees an unlinked file's blocks in the background.
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				unix.Sync()
				if unix.Statfs(fs, &st) == nil && int64(st.Bavail)*st.Bsize > need {
					break
				}
			}
			if _, err := p.ModifyVolume(ctx, "v", pool.Mutable{Thick: true}); err != nil {
				t.Fatalf("retry with room: %v", err)
			}
			if a, s := allocated(img), imageSize(t, img); a < 128<<20 || s != 128<<20 {
				t.Errorf("after the retry: %d bytes allocated, size %d", a, s)
			}
		})
	}
}

// An image replaced under the pool (a symlink to a file elsewhere, a
// FIFO, a directory) is refused: nothing is allocated through it, the
// call does not block, and the record stays thin.
func TestModifyImageReplaced(t *testing.T) {
	for name, replace := range map[string]func(t *testing.T, img, bait string){
		"symlink": func(t *testing.T, img, bait string) {
			if err := os.Symlink(bait, img); err != nil {
				t.Fatal(err)
			}
		},
		"fifo": func(t *testing.T, img, _ string) {
			if err := syscall.Mkfifo(img, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"directory": func(t *testing.T, img, _ string) {
			if err := os.Mkdir(img, 0o700); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(testFs(t, "xfs", 512<<20), "pool")
			p := newPool(t, dir)
			ctx := context.Background()
			if _, err := p.CreateVolume(ctx, vol("v", 64<<20)); err != nil {
				t.Fatal(err)
			}
			img := p.volImage("v")
			bait := filepath.Join(filepath.Dir(dir), "bait")
			if err := os.WriteFile(bait, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			os.Truncate(bait, 64<<20)
			if err := os.Rename(img, img+".away"); err != nil {
				t.Fatal(err)
			}
			replace(t, img, bait)
			done := make(chan error, 1)
			go func() { _, err := p.ModifyVolume(ctx, "v", pool.Mutable{Thick: true}); done <- err }()
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("thick change through a %s succeeded", name)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("thick change blocked on a %s", name)
			}
			if a := allocated(bait); a != 0 {
				t.Errorf("the file the symlink names got %d bytes allocated", a)
			}
			if r := record(t, dir, "v"); r.Thick {
				t.Error("refused change recorded thick")
			}
		})
	}
}

// A volume that is not Ready (being made, being deleted) is not modified:
// ErrNotReady, the image untouched.
func TestModifyNotReady(t *testing.T) {
	dir := filepath.Join(testFs(t, "xfs", 512<<20), "pool")
	p := newPool(t, dir)
	ctx := context.Background()
	for _, st := range []pool.State{pool.StateCreating, pool.StateDeleting} {
		if _, err := p.CreateVolume(ctx, vol("v", 64<<20)); err != nil {
			t.Fatal(err)
		}
		v, _ := p.index.Volume("v")
		v.State = st
		if err := p.index.PutVolume(v); err != nil {
			t.Fatal(err)
		}
		if _, err := p.ModifyVolume(ctx, "v", pool.Mutable{Thick: true}); !errors.Is(err, pool.ErrNotReady) {
			t.Errorf("%s volume: %v, want ErrNotReady", st, err)
		}
		if a := allocated(p.volImage("v")); a > 1<<20 {
			t.Errorf("%s volume's image allocated: %d bytes", st, a)
		}
		v.State = pool.StateReady
		p.index.PutVolume(v)
		if err := p.DeleteVolume(ctx, "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.ModifyVolume(ctx, "nope", pool.Mutable{Thick: true}); !errors.Is(err, pool.ErrNotFound) {
		t.Errorf("unknown volume: %v, want ErrNotFound", err)
	}
}
