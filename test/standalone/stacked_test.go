package standalone

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/test/testenv"
)

// tmpfsAt mounts a tmpfs named source, with a marker file, at dir (on top
// of whatever is mounted there), and unmounts it when the test ends if it
// is still the top mount.
func tmpfsAt(t *testing.T, dir, source string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(source, dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m := mountAt(t, dir); m != nil && m.FSType == "tmpfs" {
			_ = unix.Unmount(dir, 0)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "marker"), []byte("foreign"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A mount stacked on the volume's own: what a path shows is its top mount,
// and that is what umount(2) takes. Each node call judges the top one.
func TestForeignMountStackedOnTheVolumesOwn(t *testing.T) {
	e := newNodePathEnv(t)

	t.Run("on the target", func(t *testing.T) {
		v := e.npVolume(t, "stack-target", "fext4", testenv.MountCap(""))
		staging, target := e.stagedAndPublished(t, v)
		tmpfsAt(t, target, "tmpfs")
		wantCode(t, "unpublish with a foreign tmpfs on top of the volume's bind", e.unpublish(v, target), codes.FailedPrecondition)
		wantForeignIntact(t, target)
		wantCode(t, "publish again with a foreign tmpfs on top of the volume's bind", e.publish(v, staging, target, false), codes.AlreadyExists)
		wantForeignIntact(t, target)
	})

	t.Run("on the staging path", func(t *testing.T) {
		v := e.npVolume(t, "stack-staging", "fext4", testenv.MountCap(""))
		staging, _ := e.paths(v)
		if err := e.stage(v, staging); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.unstage(v, staging) })
		tmpfsAt(t, staging, "tmpfs")
		wantCode(t, "unstage with a foreign tmpfs on top of the staging mount", e.unstage(v, staging), codes.FailedPrecondition)
		wantForeignIntact(t, staging)
		target := filepath.Join(e.root, "stack-staging-target")
		wantCode(t, "publish from a staging path a foreign tmpfs covers", e.publish(v, staging, target, false), codes.FailedPrecondition)
		if m := mountAt(t, target); m != nil {
			t.Errorf("the covering tmpfs was published to the tenant: %+v", m)
		}
	})
}

// A mount that names the volume's device as its source (mount -t tmpfs
// /dev/loopN dir) is not the volume's: the source is a free-form string,
// what the mount is of is its device number and filesystem type.
func TestMountPosingAsTheVolumesDevice(t *testing.T) {
	e := newNodePathEnv(t)
	v := e.npVolume(t, "posing", "fext4", testenv.MountCap(""))
	staging, _ := e.paths(v)
	if err := e.stage(v, staging); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(v, staging) })
	own := mountAt(t, staging)
	if own == nil {
		t.Fatal("nothing mounted at the staging path after stage")
	}
	posing := filepath.Join(e.root, "posing")
	tmpfsAt(t, posing, own.Source)

	target := filepath.Join(e.root, "posing-target")
	wantCode(t, "publish from a tmpfs posing as the volume", e.publish(v, posing, target, false), codes.FailedPrecondition)
	if m := mountAt(t, target); m != nil {
		t.Errorf("the posing tmpfs was published to the tenant: %+v", m)
	}
	if err := e.stage(v, posing); status.Code(err) != codes.FailedPrecondition && status.Code(err) != codes.AlreadyExists {
		t.Errorf("stage at a tmpfs posing as the volume: %v, want FAILED_PRECONDITION (staged elsewhere) or ALREADY_EXISTS (something else there)", err)
	}
	wantForeignIntact(t, posing)
	// Not staged there: OK by the spec, and the tmpfs is not the volume's
	// to unmount.
	wantCode(t, "unstage at a tmpfs posing as the volume", e.unstage(v, posing), codes.OK)
	wantForeignIntact(t, posing)
	if m := mountAt(t, staging); m == nil || m.Major != own.Major || m.Minor != own.Minor {
		t.Errorf("the volume's staging mount changed: %+v", m)
	}
}
