// Package testenv gives plinth's tests real backing filesystems (image
// files on loop devices, mounted) and a real plinth standalone in-process.
package testenv

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/app"
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

// Standalone runs plinth standalone with cfg (defaults filled by Validate)
// until the test ends; it returns the socket path once plinth listens.
func Standalone(t testing.TB, cfg app.StandaloneConfig) string {
	sock, _ := StandaloneStoppable(t, cfg)
	return sock
}

// StandaloneStoppable is Standalone with a stop function (idempotent) for
// restart tests.
func StandaloneStoppable(t testing.TB, cfg app.StandaloneConfig) (string, func()) {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "node-1"
	}
	if cfg.DriverName == "" {
		cfg.DriverName = "plinth.example.com"
	}
	if cfg.TopologyKey == "" {
		cfg.TopologyKey = "topology.plinth.example.com/node"
	}
	if cfg.SysfsRoot == "" {
		cfg.SysfsRoot, cfg.DevRoot = "/sys", "/dev"
	}
	if cfg.Version == "" {
		cfg.Version = "test"
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sock, _ := filepath.Abs(cfg.Endpoint[len("unix://"):])
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.RunStandalone(ctx, cfg) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("plinth standalone: %v", err)
		}
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("plinth standalone exited: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, stop
		} else if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("plinth standalone did not listen within 30s")
	return "", nil
}

// Reboot does behind plinth's back what a reboot does: every mount under
// root goes away (deepest first) and every loop device backed by a file
// under poolDirs is detached.
func Reboot(t testing.TB, root string, poolDirs ...string) {
	t.Helper()
	all, err := mount.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	var mounts []mount.Info
	for _, m := range all {
		if m.Under(root) {
			mounts = append(mounts, m)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, 0); err != nil {
			t.Fatalf("unmount %s: %v", m.Mountpoint, err)
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	loops := mount.NewLoop("/sys", "/dev")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		backing := strings.TrimSpace(string(b))
		for _, d := range poolDirs {
			if strings.HasPrefix(backing, d+"/") {
				if err := loops.Detach(backing); err != nil {
					t.Fatalf("detach %s: %v", backing, err)
				}
			}
		}
	}
}
