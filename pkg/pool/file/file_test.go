package file

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// testFs mounts a fresh filesystem of fsType and size (real loop device);
// tests that need one skip where the host cannot make it.
func testFs(t *testing.T, fsType string, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop-mounted filesystem")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, size)
	args := []string{"-q", img}
	switch fsType {
	case "xfs":
		args = []string{"-q", "-m", "reflink=1", img}
	case "ext4":
		args = []string{"-q", "-F", img}
	}
	if _, err := (mount.Exec{}).Run(context.Background(), "mkfs."+fsType, args...); err != nil {
		t.Skipf("mkfs.%s unavailable: %v", fsType, err)
	}
	loops := mount.NewLoop("/sys", "/dev")
	loops.BlockSize = 512
	dev, err := loops.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o700)
	if err := unix.Mount(dev, mnt, fsType, 0, ""); err != nil {
		loops.Detach(img)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Unmount(mnt, 0)
		loops.Detach(img)
	})
	return mnt
}

func newPool(t *testing.T, dir string) *Pool {
	t.Helper()
	p, err := New(Config{Name: "p", Dir: dir, Loops: mount.NewLoop("/sys", "/dev")})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// leftovers lists every file in the pool's directories.
func leftovers(t *testing.T, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p[len(dir):])
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func vol(id string, size int64) pool.Volume {
	return pool.Volume{ID: id, Name: "name-" + id, CapacityBytes: size, Mode: pool.ModeBlock}
}

func TestThinThickAndCapacity(t *testing.T) {
	dir := filepath.Join(testFs(t, "xfs", 512<<20), "pool")
	p := newPool(t, dir)
	ctx := context.Background()
	before, _ := p.Stats(ctx)

	thin, err := p.CreateVolume(ctx, vol("thin", 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	thickSpec := vol("thick", 64<<20)
	thickSpec.Thick = true
	if _, err := p.CreateVolume(ctx, thickSpec); err != nil {
		t.Fatal(err)
	}
	if a := allocated(p.volImage("thin")); a > 1<<20 {
		t.Errorf("thin image allocates %d bytes, want ~0", a)
	}
	if a := allocated(p.volImage("thick")); a < 64<<20 {
		t.Errorf("thick image allocates %d bytes, want 64Mi", a)
	}
	after, _ := p.Stats(ctx)
	// Both volumes are fully promised: allocatable drops by 128 MiB (±1 MiB
	// of filesystem metadata), whether or not the blocks are written yet.
	if drop := before.AllocatableBytes() - after.AllocatableBytes(); drop < 127<<20 || drop > 129<<20 {
		t.Errorf("allocatable dropped by %d, want ~128Mi", drop)
	}
	// A request larger than what is left fails and leaves nothing behind.
	files := leftovers(t, dir)
	if _, err := p.CreateVolume(ctx, vol("huge", after.AllocatableBytes()+64<<20)); !errors.Is(err, pool.ErrNoSpace) {
		t.Fatalf("oversized create: %v, want ErrNoSpace", err)
	}
	if got := leftovers(t, dir); !equal(got, files) {
		t.Errorf("failed create changed the pool: %v -> %v", files, got)
	}
	// Expansion also respects capacity.
	if _, err := p.ExpandVolume(ctx, "thin", thin.CapacityBytes+after.AllocatableBytes()+64<<20); !errors.Is(err, pool.ErrNoSpace) {
		t.Fatalf("oversized expand: %v, want ErrNoSpace", err)
	}
	if v, err := p.ExpandVolume(ctx, "thin", 96<<20); err != nil || v.CapacityBytes != 96<<20 {
		t.Fatalf("expand: %+v %v", v, err)
	}
	if fi, _ := os.Stat(p.volImage("thin")); fi.Size() != 96<<20 {
		t.Errorf("image size %d after expand", fi.Size())
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSnapshotAndCloneKeepData(t *testing.T) {
	for _, fsType := range []string{"xfs", "ext4"} { // reflink, sparse copy
		t.Run(fsType, func(t *testing.T) {
			dir := filepath.Join(testFs(t, fsType, 512<<20), "pool")
			p := newPool(t, dir)
			ctx := context.Background()
			if _, err := p.CreateVolume(ctx, vol("src", 16<<20)); err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte("plinth!"), 1000)
			writeAt(t, p.volImage("src"), 8<<20, data)
			if _, err := p.CreateSnapshot(ctx, pool.Snapshot{ID: "snap", Name: "s", SourceVolumeID: "src"}); err != nil {
				t.Fatal(err)
			}
			writeAt(t, p.volImage("src"), 8<<20, []byte("overwritten after the snapshot"))
			restore := vol("restored", 32<<20)
			restore.Source = &pool.Source{SnapshotID: "snap"}
			if _, err := p.CreateVolume(ctx, restore); err != nil {
				t.Fatal(err)
			}
			if got := readAt(t, p.volImage("restored"), 8<<20, len(data)); !bytes.Equal(got, data) {
				t.Error("restored volume does not hold the snapshot's data")
			}
			if fi, _ := os.Stat(p.volImage("restored")); fi.Size() != 32<<20 {
				t.Errorf("restored size %d, want 32Mi", fi.Size())
			}
			if a := allocated(p.volImage("restored")); a > 2<<20 {
				t.Errorf("restored image allocates %d: holes were filled", a)
			}
			small := vol("small", 8<<20)
			small.Source = &pool.Source{VolumeID: "src"}
			if _, err := p.CreateVolume(ctx, small); !errors.Is(err, pool.ErrOutOfRange) {
				t.Errorf("clone smaller than source: %v, want ErrOutOfRange", err)
			}
			for _, id := range []string{"restored", "src"} {
				if err := p.DeleteVolume(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.DeleteSnapshot(ctx, "snap"); err != nil {
				t.Fatal(err)
			}
			if l := leftovers(t, dir); len(l) != 0 {
				t.Errorf("left behind: %v", l)
			}
		})
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	f.ReadAt(b, off)
	return b
}

// TestCrashStates puts the pool in each state a crash can leave, reopens
// it (a restart) and checks that a retry completes and a delete leaves
// nothing.
func TestCrashStates(t *testing.T) {
	ctx := context.Background()
	data := []byte("acknowledged data")
	states := map[string]func(t *testing.T, dir string){
		"record written, no image": func(t *testing.T, dir string) {
			writeRecord(t, dir, "v", pool.StateCreating)
		},
		"temp image half made": func(t *testing.T, dir string) {
			writeRecord(t, dir, "v", pool.StateCreating)
			os.WriteFile(filepath.Join(dir, "volumes", "v.img.tmp"), []byte("partial"), 0o600)
		},
		"image renamed, record not yet ready": func(t *testing.T, dir string) {
			writeRecord(t, dir, "v", pool.StateCreating)
			os.WriteFile(filepath.Join(dir, "volumes", "v.img"), nil, 0o600)
			os.Truncate(filepath.Join(dir, "volumes", "v.img"), 16<<20)
			writeAt(t, filepath.Join(dir, "volumes", "v.img"), 0, data)
		},
		"delete removed the image, not the record": func(t *testing.T, dir string) {
			writeRecord(t, dir, "v", pool.StateDeleting)
		},
		"delete marked, image still there": func(t *testing.T, dir string) {
			writeRecord(t, dir, "v", pool.StateDeleting)
			os.WriteFile(filepath.Join(dir, "volumes", "v.img"), nil, 0o600)
			os.Truncate(filepath.Join(dir, "volumes", "v.img"), 16<<20)
			writeAt(t, filepath.Join(dir, "volumes", "v.img"), 0, []byte("old tenant's data"))
		},
		"atomic record write interrupted": func(t *testing.T, dir string) {
			writeRecord(t, dir, "v", pool.StateCreating)
			os.WriteFile(filepath.Join(dir, "volumes", ".v.json.tmp-42"), []byte(`{"schema":1,"id":"v","sta`), 0o600)
		},
	}
	for name, crash := range states {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pool")
			newPool(t, dir) // lay out the directories
			crash(t, dir)
			p := newPool(t, dir) // restart
			if vs, _ := p.ListVolumes(ctx); len(vs) != 1 {
				t.Fatalf("after restart: %d volumes, want the 1 recorded", len(vs))
			}
			if name == "delete removed the image, not the record" {
				if err := p.DeleteVolume(ctx, "v"); err != nil {
					t.Fatal(err)
				}
			} else {
				v, err := p.CreateVolume(ctx, vol("v", 16<<20))
				if err != nil {
					t.Fatalf("retried create: %v", err)
				}
				if v.State != pool.StateReady {
					t.Fatalf("state %s after retry", v.State)
				}
				if fi, err := os.Stat(p.volImage("v")); err != nil || fi.Size() != 16<<20 {
					t.Fatalf("image after retry: %v %v", fi, err)
				}
				if name == "temp image half made" || name == "delete marked, image still there" {
					if got := readAt(t, p.volImage("v"), 0, 7); !bytes.Equal(got, make([]byte, 7)) {
						t.Errorf("retried volume starts with %q: the partial image's bytes survived", got)
					}
				}
				if name == "image renamed, record not yet ready" {
					if got := readAt(t, p.volImage("v"), 0, len(data)); !bytes.Equal(got, data) {
						t.Error("retry rebuilt an image that was already complete")
					}
				}
				// A third start sees the same ready volume.
				p2 := newPool(t, dir)
				if v2, err := p2.GetVolume(ctx, "v"); err != nil || v2.State != pool.StateReady {
					t.Fatalf("after second restart: %+v %v", v2, err)
				}
				if err := p2.DeleteVolume(ctx, "v"); err != nil {
					t.Fatal(err)
				}
			}
			if l := leftovers(t, dir); len(l) != 0 {
				t.Errorf("left behind: %v", l)
			}
		})
	}
}

func writeRecord(t *testing.T, dir, id string, st pool.State) {
	v := vol(id, 16<<20)
	v.Schema, v.Pool, v.State = pool.VolumeRecords.Version(), "p", st
	if err := pool.VolumeRecords.Write(filepath.Join(dir, "volumes", id+".json"), v); err != nil {
		t.Fatal(err)
	}
}

func TestAttachedVolumeIsNotDeleted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	ctx := context.Background()
	p := newPool(t, filepath.Join(t.TempDir(), "pool"))
	if _, err := p.CreateVolume(ctx, vol("v", 8<<20)); err != nil {
		t.Fatal(err)
	}
	att, err := p.Attach(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	again, err := p.Attach(ctx, "v")
	if err != nil || again.Device != att.Device {
		t.Fatalf("second attach: %v %v, want the same device %s", again, err, att.Device)
	}
	if err := p.DeleteVolume(ctx, "v"); !errors.Is(err, pool.ErrInUse) {
		t.Fatalf("delete while attached: %v, want ErrInUse", err)
	}
	if _, err := p.ExpandVolume(ctx, "v", 16<<20); err != nil {
		t.Fatal(err)
	}
	if size, err := mount.DeviceSize(att.Device); err != nil || size != 16<<20 {
		t.Fatalf("loop device size after expand: %d %v, want 16Mi", size, err)
	}
	if err := p.Detach(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(ctx, "v"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if err := p.DeleteVolume(ctx, "v"); err != nil {
		t.Fatal(err)
	}
}

// TestSymlinkedDirAfterReopen: a pool opened through a symlink (to its
// directory, or to a directory above it) knows its volumes' loop devices
// when opened again (a restarted plinth): the delete of an attached
// volume is refused with its image kept, and a detach releases its device.
func TestSymlinkedDirAfterReopen(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	ctx := context.Background()
	top := t.TempDir()
	os.MkdirAll(filepath.Join(top, "real", "pool"), 0o700)
	for _, link := range []string{filepath.Join(top, "link"), filepath.Join(top, "up")} {
		to := filepath.Join(top, "real", "pool")
		dir := link
		if filepath.Base(link) == "up" {
			to, dir = filepath.Join(top, "real"), filepath.Join(link, "pool")
		}
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(link), func(t *testing.T) {
			id := "v-" + filepath.Base(link)
			img := filepath.Join(top, "real", "pool", "volumes", id+".img")
			if _, err := newPool(t, dir).CreateVolume(ctx, vol(id, 8<<20)); err != nil {
				t.Fatal(err)
			}
			att, err := newPool(t, dir).Attach(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(img, &st); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { // whatever happened to the image meanwhile
				if fd, err := unix.Open(att.Device, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
					if info, err := unix.IoctlLoopGetStatus64(fd); err == nil && info.Device == st.Dev && info.Inode == st.Ino {
						unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
					}
					unix.Close(fd)
				}
			})
			p := newPool(t, dir) // a new process
			if got, ok, err := p.Attached(ctx, id); err != nil || !ok || got.Device != att.Device {
				t.Errorf("Attached after reopening = %+v, %v, %v; want %s", got, ok, err, att.Device)
			}
			if err := p.DeleteVolume(ctx, id); !errors.Is(err, pool.ErrInUse) {
				t.Errorf("delete while attached, after reopening: %v, want ErrInUse", err)
			}
			if _, err := os.Stat(img); err != nil {
				t.Fatalf("image after the delete: %v", err)
			}
			if err := p.Detach(ctx, id); err != nil {
				t.Fatal(err)
			}
			if devs, err := mount.NewLoop("/sys", "/dev").FindAll(img); err != nil || len(devs) != 0 {
				t.Errorf("devices of the image after detach: %v, %v", devs, err)
			}
			if err := p.DeleteVolume(ctx, id); err != nil {
				t.Errorf("delete once detached: %v", err)
			}
		})
	}
}
