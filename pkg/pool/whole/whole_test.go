package whole

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// disks is the watcher's view, set by the test.
type disks struct {
	mu sync.Mutex
	m  map[string]disk.Disk
}

func (d *disks) Find(id string) (disk.Disk, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	x, ok := d.m[id]
	return x, ok
}

// Probe answers what the test put on the disk, read "now".
func (d *disks) Probe(_ context.Context, dev string) (disk.Signature, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, x := range d.m {
		if x.Device == dev {
			return x.Signature, nil
		}
	}
	return disk.Signature{}, errors.New("no such device " + dev)
}

func (d *disks) Exclusive(dev string) error { return nil }

func (d *disks) remove(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.m, id)
}

// runs records the programs run (wipefs, blkdiscard); nothing runs.
type runs struct {
	mu   sync.Mutex
	cmds []string
	fail string
}

func (r *runs) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, name+" "+strings.Join(args, " "))
	if name == r.fail {
		return nil, errors.New(name + " failed")
	}
	return nil, nil
}

func newPool(t *testing.T) (*Pool, *disks, *runs, string) {
	t.Helper()
	dir := t.TempDir()
	mi := filepath.Join(dir, "mountinfo")
	os.WriteFile(mi, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o600)
	ds := &disks{m: map[string]disk.Disk{
		"wwn:a": {ID: "wwn:a", Name: "sda", Device: "/dev/sda", MajorMinor: "8:0", SizeBytes: 100 << 30},
		"wwn:b": {ID: "wwn:b", Name: "sdb", Device: "/dev/sdb", MajorMinor: "8:16", SizeBytes: 400 << 30},
		"wwn:c": {ID: "wwn:c", Name: "sdc", Device: "/dev/sdc", MajorMinor: "8:32", SizeBytes: 200 << 30},
		// Claimed, but someone wrote a filesystem on it since: never given out.
		"wwn:d": {ID: "wwn:d", Name: "sdd", Device: "/dev/sdd", MajorMinor: "8:48", SizeBytes: 800 << 30, Signature: disk.Signature{Type: "xfs"}},
	}}
	r := &runs{}
	p, err := New(Config{Name: "whole", Dir: filepath.Join(dir, "records"), Members: []string{"wwn:a", "wwn:b", "wwn:c", "wwn:d"},
		Disks: ds, Probe: ds, Run: r, Mountinfo: mi})
	if err != nil {
		t.Fatal(err)
	}
	return p, ds, r, mi
}

func TestBestFitAndCapacity(t *testing.T) {
	p, ds, _, _ := newPool(t)
	ctx := context.Background()
	st, err := p.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.FreeBytes != 700<<30 || st.MaxVolumeBytes() != 400<<30 || st.TotalBytes != 1500<<30 || st.MaxVolumes != 4 {
		t.Errorf("stats %+v: want 700GiB free, 400GiB the largest volume, 1500GiB total, 4 volumes at most (one per disk)", st)
	}
	v, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-1", Name: "a", CapacityBytes: 150 << 30, Mode: pool.ModeBlock})
	if err != nil || v.Disk != "wwn:c" || v.CapacityBytes != 200<<30 {
		t.Fatalf("150GiB: %+v %v; want the 200GiB disk, its whole size", v, err)
	}
	// The same request again is the same volume; another under the ID is not.
	if again, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-1", Name: "a", CapacityBytes: 150 << 30, Mode: pool.ModeBlock}); err != nil || again.Disk != v.Disk {
		t.Errorf("retry: %+v %v", again, err)
	}
	if _, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-1", Name: "a", CapacityBytes: 300 << 30, Mode: pool.ModeBlock}); !errors.Is(err, pool.ErrExists) {
		t.Errorf("retry larger than the disk: %v, want ErrExists", err)
	}
	if _, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-2", Name: "b", CapacityBytes: 500 << 30, Mode: pool.ModeBlock}); !errors.Is(err, pool.ErrNoSpace) {
		t.Errorf("500GiB with 400GiB the largest free clean disk: %v, want ErrNoSpace", err)
	}
	if _, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-3", Name: "c", Mode: pool.ModeFilesystem, CapacityBytes: 1, Source: &pool.Source{VolumeID: "pv-1"}}); !errors.Is(err, pool.ErrUnsupported) {
		t.Errorf("a clone: %v, want ErrUnsupported", err)
	}
	v2, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-4", Name: "d", CapacityBytes: 1 << 30, Mode: pool.ModeFilesystem})
	if err != nil || v2.Disk != "wwn:a" || v2.FsType != "ext4" {
		t.Errorf("1GiB filesystem: %+v %v; want the 100GiB disk, ext4", v2, err)
	}
	if _, err := p.ExpandVolume(ctx, "pv-4", 101<<30); !errors.Is(err, pool.ErrOutOfRange) {
		t.Errorf("growing a whole disk: %v, want ErrOutOfRange", err)
	}
	if got, err := p.ExpandVolume(ctx, "pv-4", 100<<30); err != nil || got.CapacityBytes != 100<<30 {
		t.Errorf("expanding to the size it has: %+v %v", got, err)
	}
	// A disk pulled: its volume is out of reach, the pool still serves.
	ds.remove("wwn:a")
	if err := p.CheckVolume(ctx, "pv-4"); err == nil || !strings.Contains(err.Error(), "not present") {
		t.Errorf("volume of a pulled disk: %v", err)
	}
	if _, err := p.Attach(ctx, "pv-4"); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("attach on a pulled disk: %v, want ErrNotReady", err)
	}
	if st, err := p.Stats(ctx); err != nil || st.Degraded == "" || st.MaxVolumes != 3 {
		t.Errorf("stats with a disk gone: %+v %v; want degraded, 3 volumes at most", st, err)
	}
	if err := p.DeleteVolume(ctx, "pv-4"); !errors.Is(err, pool.ErrNotReady) {
		t.Errorf("delete while the disk is gone: %v, want ErrNotReady (wiped when it is back)", err)
	}
	if v, _ := p.GetVolume(ctx, "pv-4"); v.State != pool.StateDeleting {
		t.Errorf("the volume of the gone disk is %q, want deleting", v.State)
	}
}

func TestDeleteWipesOnlyAnIdleDisk(t *testing.T) {
	p, _, r, mi := newPool(t)
	ctx := context.Background()
	v, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-1", Name: "a", CapacityBytes: 1 << 30, Mode: pool.ModeFilesystem})
	if err != nil {
		t.Fatal(err)
	}
	// Mounted somewhere: refused, nothing run.
	os.WriteFile(mi, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n40 22 8:0 / /mnt/x rw - ext4 /dev/sda rw\n"), 0o600)
	if err := p.DeleteVolume(ctx, v.ID); !errors.Is(err, pool.ErrInUse) {
		t.Errorf("delete of a mounted disk's volume: %v, want ErrInUse", err)
	}
	if len(r.cmds) != 0 {
		t.Errorf("ran %v on a mounted disk", r.cmds)
	}
	// A partition the tenant made, mounted somewhere: refused too.
	sys := filepath.Join(filepath.Dir(mi), "sys")
	os.MkdirAll(filepath.Join(sys, "block", "sda", "sda1"), 0o755)
	os.WriteFile(filepath.Join(sys, "block", "sda", "sda1", "dev"), []byte("8:1\n"), 0o644)
	p.cfg.SysfsRoot = sys
	os.WriteFile(mi, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n41 22 8:1 / /mnt/y rw - ext4 /dev/sda1 rw\n"), 0o600)
	if err := p.DeleteVolume(ctx, v.ID); !errors.Is(err, pool.ErrInUse) || !strings.Contains(err.Error(), "sda1") {
		t.Errorf("delete with a partition of the disk mounted: %v, want ErrInUse naming sda1", err)
	}
	os.MkdirAll(filepath.Join(sys, "block", "sda", "sda1", "holders", "dm-3"), 0o755)
	os.WriteFile(mi, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o600)
	if err := p.DeleteVolume(ctx, v.ID); !errors.Is(err, pool.ErrInUse) || !strings.Contains(err.Error(), "dm-3") {
		t.Errorf("delete with a partition of the disk held: %v, want ErrInUse naming dm-3", err)
	}
	if len(r.cmds) != 0 {
		t.Errorf("ran %v on a disk in use", r.cmds)
	}
	os.RemoveAll(filepath.Join(sys, "block", "sda", "sda1"))
	// A wipe that fails keeps the volume (deleting) and its disk.
	os.WriteFile(mi, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o600)
	r.fail = "wipefs"
	if err := p.DeleteVolume(ctx, v.ID); err == nil {
		t.Error("delete with a failing wipe succeeded")
	}
	if st, _ := p.Stats(ctx); st.FreeBytes != 600<<30 {
		t.Errorf("after a failed wipe %d bytes free; the disk must not be free", st.FreeBytes)
	}
	r.fail = ""
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.cmds, "; "); !strings.Contains(got, "wipefs --all --quiet /dev/sda") {
		t.Errorf("delete ran %q; want wipefs of /dev/sda", got)
	}
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Errorf("delete again: %v", err)
	}
	if st, _ := p.Stats(ctx); st.FreeBytes != 700<<30 {
		t.Errorf("after the delete %d bytes free, want the disk back", st.FreeBytes)
	}
	// The records survive a restart.
	q, err := New(p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if vs, _ := q.ListVolumes(ctx); len(vs) != 0 {
		t.Errorf("after a restart %d volumes", len(vs))
	}
}

// The rescan after a wipe publishes the node's status when it finds a
// change, and publishing reads this pool's Stats: the rescan must not run
// under the pool's lock (in the e2e cluster the node agent hung there, its
// health check with it).
func TestRescanAfterWipeDoesNotHoldThePoolsLock(t *testing.T) {
	p, _, _, _ := newPool(t)
	ctx := context.Background()
	v, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-1", Name: "a", CapacityBytes: 1 << 30, Mode: pool.ModeBlock})
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Rescan = func(ctx context.Context) error {
		_, err := p.Stats(ctx) // what the status publisher reads
		return err
	}
	done := make(chan error, 1)
	go func() { done <- p.DeleteVolume(ctx, v.ID) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DeleteVolume did not return: the rescan after the wipe waits on the pool's lock")
	}
}
