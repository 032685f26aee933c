package whole

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/transfer"
	"github.com/plinth-dev/plinth/test/testfs"
)

// realDisks finds loop devices by the IDs a test gives them.
type realDisks map[string]disk.Disk

func (d realDisks) Find(id string) (disk.Disk, bool) { x, ok := d[id]; return x, ok }

// loopDisk is a loop device of size bytes as a disk with identity id.
func loopDisk(t *testing.T, id string, size int64) disk.Disk {
	t.Helper()
	dev := testfs.Loop(t, size)
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	return disk.Disk{ID: id, Name: filepath.Base(dev), Device: dev, SizeBytes: size,
		MajorMinor: fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))}
}

// realPool is a disk pool of one real disk, probed with wipefs.
func realPool(t *testing.T, name string, d disk.Disk) *Pool {
	t.Helper()
	p, err := New(Config{Name: name, Dir: filepath.Join(t.TempDir(), "records"), Members: []string{d.ID},
		Disks: realDisks{d.ID: d}, Probe: disk.Wipefs{Run: mount.Exec{}}, Run: mount.Exec{},
		Mountinfo: "/proc/self/mountinfo", SysfsRoot: "/sys"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func deviceSum(t *testing.T, dev string, size int64) [32]byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, size); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// copyWhole does what the transfer does with a disk: the source's chunks
// that are not all zeros, written at their offsets through dst.
func copyWhole(t *testing.T, src *os.File, dst *transfer.DeviceDestination, id string) (sent int64) {
	t.Helper()
	size, err := src.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	from, err := dst.Resume(id, size)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	for off := from; off < size; off += int64(len(buf)) {
		n, err := src.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], zero[:n]) {
			if err := dst.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
			sent += int64(n)
		}
	}
	if err := dst.Commit(id, size, size); err != nil {
		t.Fatal(err)
	}
	return sent
}

// A whole disk moves: the source, held, is read exclusively; the target's
// disk, full of an earlier tenant's bytes, is zeroed and written, and then
// holds exactly the source's bytes and its filesystem, recorded as the
// volume's.
func TestDiskSyncedWhole(t *testing.T) {
	testfs.RequireHost(t, "wipefs", "mkfs.ext4")
	ctx := context.Background()
	const size = 64 << 20
	a, b := loopDisk(t, "id:a", size), loopDisk(t, "id:b", size)
	// The target disk holds an earlier tenant's data (no signature).
	junk := make([]byte, 4<<20)
	if _, err := rand.Read(junk); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.Device, junk, 0); err != nil {
		t.Fatal(err)
	}
	src, dst := realPool(t, "src", a), realPool(t, "dst", b)
	_, err := src.CreateVolume(ctx, pool.Volume{ID: "v", CapacityBytes: size, Mode: pool.ModeFilesystem, FsType: "ext4"})
	must(t, err)
	if _, err := src.Attach(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// As a stage would: a filesystem, recorded, with data in it.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", a.Device).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	must(t, src.RecordFilesystem(ctx, "v", a.Device))
	mnt := t.TempDir()
	must(t, unix.Mount(a.Device, mnt, "ext4", 0, ""))
	must(t, os.WriteFile(filepath.Join(mnt, "data"), bytes.Repeat([]byte("plinth "), 1<<20), 0o644))
	must(t, unix.Unmount(mnt, 0))

	_, err = dst.CreateVolume(ctx, pool.Volume{ID: "w", CapacityBytes: size, Mode: pool.ModeFilesystem, FsType: "ext4"})
	must(t, err)
	target, err := dst.SyncTarget(ctx, "w")
	must(t, err)
	if target.Format != pool.ImportDevice || target.OpenDevice == nil {
		t.Fatalf("target %+v", target)
	}
	f, _, err := src.ExportVolume(ctx, "v")
	must(t, err)
	// Held exclusively while it is read: nothing mounts it meanwhile.
	if err := unix.Mount(a.Device, mnt, "ext4", unix.MS_RDONLY, ""); err == nil {
		unix.Unmount(mnt, 0)
		t.Error("the source disk mounted while it was being sent")
	}
	d := &transfer.DeviceDestination{Open: target.OpenDevice, Progress: target.Progress}
	sent := copyWhole(t, f, d, "c1")
	f.Close()
	must(t, d.Close())
	must(t, dst.FinishSync(ctx, "w"))
	if deviceSum(t, a.Device, size) != deviceSum(t, b.Device, size) {
		t.Fatal("the target disk does not hold the source's bytes")
	}
	t.Logf("sent %d MiB of a %d MiB disk", sent>>20, size>>20)
	if sent >= size/2 {
		t.Errorf("sent %d bytes of a %d-byte disk holding ~7 MiB", sent, int64(size))
	}
	v, err := dst.GetVolume(ctx, "w")
	must(t, err)
	sv, _ := src.GetVolume(ctx, "v")
	if v.DiskFsUUID == "" || v.DiskFsUUID != sv.DiskFsUUID || v.Parameters[fillingKey] != "" {
		t.Errorf("target record: fs %q (source's %q), filling %q", v.DiskFsUUID, sv.DiskFsUUID, v.Parameters[fillingKey])
	}
	// The volume is the target's now: attached as it is, and never filled
	// again from another node.
	if _, err := dst.Attach(ctx, "w"); err != nil {
		t.Fatalf("attach the filled disk: %v", err)
	}
	if _, err := dst.SyncTarget(ctx, "w"); !errors.Is(err, pool.ErrInUse) {
		t.Errorf("a second fill of a disk handed over: %v, want ErrInUse", err)
	}
}

// A disk handed to a consumer is never filled from another node, and one
// mounted or held is neither opened to be filled nor sent.
func TestDiskSyncRefusals(t *testing.T) {
	testfs.RequireHost(t, "wipefs", "mkfs.ext4")
	ctx := context.Background()
	const size = 32 << 20
	a := loopDisk(t, "id:a", size)
	p := realPool(t, "p", a)
	_, err := p.CreateVolume(ctx, pool.Volume{ID: "v", CapacityBytes: size, Mode: pool.ModeBlock})
	must(t, err)
	// Held by someone else: not sent, not opened to be filled.
	fd, err := unix.Open(a.Device, unix.O_RDONLY|unix.O_EXCL, 0)
	must(t, err)
	if _, _, err := p.ExportVolume(ctx, "v"); !errors.Is(err, pool.ErrInUse) {
		t.Errorf("send of a held disk: %v, want ErrInUse", err)
	}
	if _, err := p.SyncTarget(ctx, "v"); err == nil {
		t.Error("a held disk was handed over to be filled")
	}
	unix.Close(fd)
	target, err := p.SyncTarget(ctx, "v")
	must(t, err)
	fd, err = unix.Open(a.Device, unix.O_RDONLY|unix.O_EXCL, 0)
	must(t, err)
	if f, err := target.OpenDevice(); err == nil {
		f.Close()
		t.Error("a held disk was opened to be filled")
	}
	unix.Close(fd)
	// A delete mid-fill wipes what the transfer wrote.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", a.Device).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	must(t, p.DeleteVolume(ctx, "v"))

	// Handed to a consumer (attached): never filled from elsewhere.
	_, err = p.CreateVolume(ctx, pool.Volume{ID: "u", CapacityBytes: size, Mode: pool.ModeBlock})
	must(t, err)
	_, err = p.Attach(ctx, "u")
	must(t, err)
	if _, err := p.SyncTarget(ctx, "u"); !errors.Is(err, pool.ErrInUse) {
		t.Errorf("fill of a disk handed to a consumer: %v, want ErrInUse", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
