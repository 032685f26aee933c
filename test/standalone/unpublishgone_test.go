package standalone

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/plinth-dev/plinth/test/testenv"
)

// TestUnpublishOfAVolumeThatIsGone takes the kubelet's seat after its
// restart: it asks to unpublish volumes that were deleted, at the mount
// directories their pods left behind. Nothing mounted there: OK, and an
// empty directory (what the kubelet made) is removed. A mount there is
// refused and left alone; anything else is left where it is; a path
// outside the allowed roots or a symlink is refused as before (issue 26,
// "a decision for the kubelet's sake").
func TestUnpublishOfAVolumeThatIsGone(t *testing.T) {
	e := newNodePathEnv(t)
	const gone = "pv-0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"
	// A pod's CSI volume directory, as the kubelet lays it out.
	podVolume := func(t *testing.T, name string) string {
		t.Helper()
		dir := filepath.Join(e.root, "pods", name, "volumes", "kubernetes.io~csi", "pvc-"+name)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "vol_data.json"), []byte(`{"volumeHandle":"`+gone+`"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, "mount")
	}
	mkdir := func(t *testing.T, p string) {
		t.Helper()
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	wantThere := func(t *testing.T, p string) {
		t.Helper()
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s is gone: %v", p, err)
		}
	}
	elsewhere := t.TempDir() // outside the allowed root
	a := e.npVolume(t, "live-a", "fext4", testenv.MountCap(""))
	stA, tA := e.stagedAndPublished(t, a)

	cases := []struct {
		name  string
		setup func(t *testing.T) string // returns the target
		want  codes.Code
		check func(t *testing.T, target string)
	}{
		{"empty directory the kubelet made", func(t *testing.T) string {
			target := podVolume(t, "empty")
			mkdir(t, target)
			return target
		}, codes.OK, func(t *testing.T, target string) {
			if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("empty target left: %v", err)
			}
			wantThere(t, filepath.Join(filepath.Dir(target), "vol_data.json")) // the kubelet's own
		}},
		{"nothing at the target", func(t *testing.T) string { return podVolume(t, "nothing") }, codes.OK, nil},
		{"not even the target's parent", func(t *testing.T) string {
			return filepath.Join(e.root, "pods", "no-such-pod", "volumes", "kubernetes.io~csi", "pvc-x", "mount")
		}, codes.OK, nil},
		{"a foreign tmpfs at the target", func(t *testing.T) string {
			return foreignTmpfs(t, filepath.Dir(podVolume(t, "tmpfs")), "mount")
		}, codes.FailedPrecondition, func(t *testing.T, target string) { wantForeignIntact(t, target) }},
		{"a live volume's publish at the target", func(t *testing.T) string { return tA }, codes.FailedPrecondition,
			func(t *testing.T, target string) { wantMountedFrom(t, tA, stA) }},
		{"a live volume's staging mount", func(t *testing.T) string { return stA }, codes.FailedPrecondition,
			func(t *testing.T, target string) { wantMountedFrom(t, tA, stA) }},
		{"a directory with files in it", func(t *testing.T) string {
			target := podVolume(t, "full")
			mkdir(t, target)
			if err := os.WriteFile(filepath.Join(target, "data"), []byte("a tenant's"), 0o644); err != nil {
				t.Fatal(err)
			}
			return target
		}, codes.OK, func(t *testing.T, target string) { wantThere(t, filepath.Join(target, "data")) }},
		{"a file at the target", func(t *testing.T) string {
			target := podVolume(t, "file")
			if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			return target
		}, codes.OK, wantThere},
		{"a FIFO at the target", func(t *testing.T) string {
			target := podVolume(t, "fifo")
			if err := unix.Mkfifo(target, 0o600); err != nil {
				t.Fatal(err)
			}
			return target
		}, codes.OK, wantThere},
		{"a symlink to an empty directory elsewhere", func(t *testing.T) string {
			target := podVolume(t, "link")
			dir := filepath.Join(elsewhere, "linked")
			mkdir(t, dir)
			if err := os.Symlink(dir, target); err != nil {
				t.Fatal(err)
			}
			return target
		}, codes.InvalidArgument, func(t *testing.T, target string) {
			wantThere(t, target)
			wantThere(t, filepath.Join(elsewhere, "linked"))
		}},
		{"an empty directory outside the allowed roots", func(t *testing.T) string {
			target := filepath.Join(elsewhere, "outside")
			mkdir(t, target)
			return target
		}, codes.InvalidArgument, wantThere},
		{"a path outside the allowed roots whose parent does not exist", func(t *testing.T) string {
			return filepath.Join(elsewhere, "no-such-dir", "mount")
		}, codes.InvalidArgument, nil},
		{"the allowed root itself", func(t *testing.T) string { return e.root }, codes.InvalidArgument, wantThere},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.setup(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := e.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: gone, TargetPath: target})
			wantCode(t, tc.name, err, tc.want)
			if tc.check != nil {
				tc.check(t, target)
			}
		})
	}
}
