// Package testenv gives plinth's tests real backing filesystems (image
// files on loop devices, mounted) and a real plinth standalone in-process.
package testenv

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testfs"
)

// RequireHost skips t unless it runs as root with loop devices and the
// given programs: what real mounts need (testfs.RequireHost).
func RequireHost(t testing.TB, programs ...string) {
	t.Helper()
	testfs.RequireHost(t, programs...)
}

// Filesystem makes, mounts and later tears down a size-byte filesystem of
// fsType (testfs.Filesystem).
func Filesystem(t testing.TB, fsType string, size int64) string {
	t.Helper()
	return testfs.Filesystem(t, fsType, size)
}

// TearDown unmounts every mount of a loop device whose backing file lies
// under dir, and detaches those loop devices (testfs.TearDown).
func TearDown(t testing.TB, dir string) {
	t.Helper()
	testfs.TearDown(t, dir)
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
