// Package testfs gives tests real backing filesystems: image files on loop
// devices, made with mkfs and mounted, torn down when the test ends. It
// imports nothing of plinth's but pkg/mount, so any package's tests may use
// it (test/testenv, which runs plinth itself, builds on it).
package testfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
)

// RequireHost skips t unless it runs as root with loop devices and the
// given programs: what real mounts need.
func RequireHost(t testing.TB, programs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices and mounts (run `make test` as root)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("needs /dev/loop-control: this kernel has no loop devices")
	}
	for _, p := range append([]string{"mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "blkid"}, programs...) {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s: install e2fsprogs, xfsprogs, btrfs-progs (.ci/install-deps does)", p)
		}
	}
}

// Filesystem makes a size-byte filesystem of fsType (xfs with reflink,
// btrfs, ext4) on an image file attached as a loop device, mounts it under
// a temp dir and returns the mount point; cleanup unmounts and detaches.
func Filesystem(t testing.TB, fsType string, size int64) string {
	t.Helper()
	return FilesystemWith(t, fsType, size)
}

// FilesystemWith is Filesystem with mkfs options of the caller's in place
// of the defaults (xfs "-m reflink=0": no reflinks); the image's path is
// appended.
func FilesystemWith(t testing.TB, fsType string, size int64, mkfsOpts ...string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "backing.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	var args []string
	switch fsType {
	case "xfs":
		args = []string{"-q", "-m", "reflink=1", img}
	case "btrfs":
		args = []string{"-q", "-f", img}
	case "ext4":
		args = []string{"-q", "-F", img}
	default:
		t.Fatalf("unknown fs type %q", fsType)
	}
	if len(mkfsOpts) > 0 {
		args = append(append([]string{}, mkfsOpts...), img)
	}
	if out, err := exec.Command("mkfs."+fsType, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v: %s", fsType, err, out)
	}
	loops := mount.NewLoop("/sys", "/dev")
	loops.BlockSize = 512 // mkfs above ran on the file: 512-byte sectors
	dev, err := loops.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, fsType, 0, ""); err != nil {
		loops.Detach(img)
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() {
		// A test that failed half-way leaves volumes mounted and attached:
		// tear them down so the backing filesystem can go.
		TearDown(t, mnt)
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount backing fs: %v", err)
		}
		if err := loops.Detach(img); err != nil {
			t.Errorf("detach backing fs: %v", err)
		}
	})
	return mnt
}

// TearDown unmounts every mount of a loop device whose backing file lies
// under dir, and detaches those loop devices.
func TearDown(t testing.TB, dir string) {
	t.Helper()
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	mounts, _ := mount.Mounts()
	for _, f := range files {
		b, err := os.ReadFile(f)
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if err != nil || !strings.HasPrefix(backing, dir+"/") {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
		for _, m := range mounts {
			if m.Source == dev || m.BindsDevice(dev) {
				unix.Unmount(m.Mountpoint, unix.MNT_DETACH)
			}
		}
		if fd, err := unix.Open(dev, unix.O_RDONLY, 0); err == nil {
			unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
			unix.Close(fd)
		}
	}
}

// Loop attaches a size-byte sparse image file as a loop device (a disk
// for the tests) and returns the device; cleanup detaches it.
func Loop(t testing.TB, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	loops := mount.NewLoop("/sys", "/dev")
	dev, err := loops.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := loops.Detach(img); err != nil {
			t.Errorf("detach %s: %v", dev, err)
		}
	})
	return dev
}
