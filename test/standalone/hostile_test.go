package standalone

// Hostile CO reproducers from an independent trial (after issue 10).
// Each test states the request sequence and what must hold; a failure is
// a finding.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/test/testenv"
)

func mountsStackedAt(t *testing.T, path string) int {
	t.Helper()
	n := 0
	for mountAt(t, path) != nil {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			break
		}
		n++
	}
	return n
}

// TestHostilePublishTwoVolumesSameTargetRace: NodePublish(A, T) and
// NodePublish(B, T) at once, T absent. Per-volume locks do not serialise
// two volumes on one target path: at most one may answer OK (the other
// ALREADY_EXISTS), and T must hold exactly one mount.
func TestHostilePublishTwoVolumesSameTargetRace(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "race-pa", "bt", testenv.MountCap(""))
	b := e.npVolume(t, "race-pb", "bt", testenv.MountCap(""))
	stA, _ := e.paths(a)
	stB, _ := e.paths(b)
	if err := e.stage(a, stA); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(b, stB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(a, stA); _ = e.unstage(b, stB) })
	deadline := time.Now().Add(40 * time.Second)
	bothOK := 0
	for i := 0; i < 60 && time.Now().Before(deadline); i++ {
		target := filepath.Join(e.root, fmt.Sprintf("shared-target-%d", i))
		if i%2 == 0 { // a CO-made empty directory: no mkdir in the window
			os.Mkdir(target, 0o750)
		}
		var errA, errB error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); errA = e.publish(a, stA, target, false) }()
		go func() { defer wg.Done(); errB = e.publish(b, stB, target, false) }()
		wg.Wait()
		if errA == nil && errB == nil {
			bothOK++
			t.Errorf("round %d: publish A and publish B at the same target both OK; %d mounts stacked at %s", i, mountsStackedAt(t, target), target)
		} else {
			_ = e.unpublish(a, target)
			_ = e.unpublish(b, target)
			if n := mountsStackedAt(t, target); n != 0 {
				t.Errorf("round %d: %d mounts left at %s after both unpublished (A: %v, B: %v)", i, n, target, errA, errB)
			}
		}
	}
	t.Logf("both OK in %d rounds", bothOK)
}

// TestHostileStageTwoVolumesSameStagingRace: NodeStage(A, S) and
// NodeStage(B, S) at once.
func TestHostileStageTwoVolumesSameStagingRace(t *testing.T) {
	e := newNodePathEnv(t)
	deadline := time.Now().Add(40 * time.Second)
	for i := 0; i < 40 && time.Now().Before(deadline); i++ {
		a := e.npVolume(t, fmt.Sprintf("race-sa-%d", i), "bt", testenv.MountCap(""))
		b := e.npVolume(t, fmt.Sprintf("race-sb-%d", i), "bt", testenv.MountCap(""))
		staging := filepath.Join(e.root, fmt.Sprintf("shared-staging-%d", i))
		var errA, errB error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); errA = e.stage(a, staging) }()
		go func() { defer wg.Done(); errB = e.stage(b, staging) }()
		wg.Wait()
		if errA == nil && errB == nil {
			t.Errorf("round %d: stage A and stage B at the same staging path both OK; %d mounts stacked", i, mountsStackedAt(t, staging))
		}
		_ = e.unstage(a, staging)
		_ = e.unstage(b, staging)
		mountsStackedAt(t, staging)
		_ = e.unstage(a, staging)
		_ = e.unstage(b, staging)
		if err := e.deleteVolume(a); err != nil {
			t.Logf("round %d: delete A: %v", i, err)
		}
		if err := e.deleteVolume(b); err != nil {
			t.Logf("round %d: delete B: %v", i, err)
		}
	}
}

// TestHostilePathsInsideAnotherVolume: a staging or target path that lies
// inside another volume's staging mount or publish. plinth makes the
// directory inside the other volume's filesystem (a write into a volume
// that is not the one named) and mounts there.
func TestHostilePathsInsideAnotherVolume(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "host-a", "fext4", testenv.MountCap(""))
	b := e.npVolume(t, "guest-b", "fext4", testenv.MountCap(""))
	stA, tA := e.stagedAndPublished(t, a)
	stB, _ := e.paths(b)
	// Stage B inside A's publish.
	inner := filepath.Join(tA, "b-staging")
	err := e.stage(b, inner)
	if err == nil {
		t.Errorf("NodeStage(B, %s inside A's target) = OK", inner)
		_ = e.unstage(b, inner)
	}
	if _, serr := os.Lstat(filepath.Join(stA, "b-staging")); serr == nil {
		t.Errorf("stage of B made a directory inside volume A (code %v)", status.Code(err))
		os.Remove(filepath.Join(stA, "b-staging"))
	}
	// Publish B inside A's staging mount.
	if err := e.stage(b, stB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(b, stB) })
	innerT := filepath.Join(stA, "b-target")
	err = e.publish(b, stB, innerT, false)
	if err == nil {
		t.Errorf("NodePublish(B, target %s inside A's staging mount) = OK", innerT)
		_ = e.unpublish(b, innerT)
	}
	if _, serr := os.Lstat(innerT); serr == nil {
		t.Errorf("publish of B made a directory inside volume A (code %v)", status.Code(err))
		os.Remove(innerT)
	}
}

// TestHostileSymlinkParentIntoOwnStaging: target path /root/lnk/x where
// lnk -> the volume's own staging path. Lexically the target is apart
// from the staging path; really it is inside the volume.
func TestHostileSymlinkParentIntoOwnStaging(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "lnk-a", "fext4", testenv.MountCap(""))
	stA, _ := e.paths(a)
	if err := e.stage(a, stA); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(a, stA) })
	lnk := filepath.Join(e.root, "lnk")
	if err := os.Symlink(stA, lnk); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(lnk, "inner")
	err := e.publish(a, stA, target, false)
	if err == nil {
		t.Errorf("NodePublish(A, %s -> inside A's staging mount) = OK (publishing inside its own staging path directly is INVALID_ARGUMENT)", target)
		_ = e.unpublish(a, target)
		mountsStackedAt(t, filepath.Join(stA, "inner"))
	}
	if _, serr := os.Lstat(filepath.Join(stA, "inner")); serr == nil {
		t.Errorf("a target directory was made inside volume A through a symlinked parent")
		os.Remove(filepath.Join(stA, "inner"))
	}
}

// TestHostileAliasRepublishReadWrite: A published read-only at T; the CO
// asks NodePublish(A, read-write) at an alias of T (parent symlink to the
// same directory). plinth finds no mount at the alias string and stacks a
// read-write bind over the read-only publish: T becomes writable.
func TestHostileAliasRepublishReadWrite(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "alias-a", "bt", testenv.MountCap(""))
	stA, tA := e.paths(a)
	if err := e.stage(a, stA); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(a, stA) })
	if err := e.publish(a, stA, tA, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unpublish(a, tA); mountsStackedAt(t, tA) })
	lnk := filepath.Join(e.root, "same")
	if err := os.Symlink(e.root, lnk); err != nil {
		t.Fatal(err)
	}
	alias := filepath.Join(lnk, filepath.Base(tA))
	err := e.publish(a, stA, alias, false)
	if werr := os.WriteFile(filepath.Join(tA, "x"), []byte("x"), 0o644); werr == nil {
		t.Errorf("read-only publish at %s became writable after NodePublish(rw) at alias %s answered %v", tA, alias, status.Code(err))
	} else if err == nil {
		t.Logf("alias publish OK but target still read-only: %v", werr)
	}
}

// TestHostileTenantClearsLoopDevice: a tenant of a read-write block
// publish (root in its container, no CAP_SYS_ADMIN) runs LOOP_CLR_FD on
// its device (losetup -d). The loop device number is then free; the next
// volume attached gets it, and the first tenant's published device node
// now reads and writes the other volume.
func TestHostileTenantClearsLoopDevice(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "tenant-a", "fext4", testenv.BlockCap())
	c := e.npVolume(t, "victim-c", "fext4", testenv.BlockCap())
	stA, tA := e.stagedAndPublished(t, a)
	_ = stA
	// The tenant, without CAP_SYS_ADMIN, clears its loop device.
	out, err := exec.Command("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--", "losetup", "-d", tA).CombinedOutput()
	t.Logf("tenant losetup -d %s (no CAP_SYS_ADMIN): %v %s", tA, err, out)
	if err != nil {
		return
	}
	time.Sleep(200 * time.Millisecond)
	// Another volume is staged and written.
	stC, tC := e.stagedAndPublished(t, c)
	_ = stC
	secret := bytes.Repeat([]byte("victim-c-secret!"), 256)
	if f, err := os.OpenFile(tC, os.O_WRONLY, 0); err == nil {
		f.Write(secret)
		f.Sync()
		f.Close()
	}
	f, err := os.Open(tA)
	if err != nil {
		t.Logf("open tenant's target after clear: %v", err)
		return
	}
	got := make([]byte, len(secret))
	_, rerr := f.ReadAt(got, 0)
	f.Close()
	if rerr == nil && bytes.Equal(got, secret) {
		t.Errorf("tenant A's block publish %s now reads volume C's data (loop device reused after the tenant cleared it)", tA)
	}
	// And what does plinth answer now for A?
	t.Logf("unpublish A after the tenant cleared its device: %v", e.unpublish(a, tA))
	t.Logf("unstage A: %v", e.unstage(a, stA))
}

// TestHostileReadOnlyBlockRoot: root on the node (CAP_SYS_ADMIN) clears
// the read-only flag of a read-only block publish with BLKROSET and
// writes.
func TestHostileReadOnlyBlockRoot(t *testing.T) {
	e := newNodePathEnv(t)
	v := e.npVolume(t, "ro-root", "fext4", testenv.BlockCap())
	staging, target := e.paths(v)
	if err := e.stage(v, staging); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(v, staging) })
	if err := e.publish(v, staging, target, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unpublish(v, target) })
	fd, err := unix.Open(target, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("BLKROSET 0: %v", unix.IoctlSetPointerInt(fd, unix.BLKROSET, 0))
	unix.Close(fd)
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_SYNC, 0)
	if err != nil {
		t.Logf("open O_WRONLY after BLKROSET 0: %v", err)
		return
	}
	_, werr := f.WriteAt(bytes.Repeat([]byte{0xAA}, 4096), 0)
	serr := f.Sync()
	f.Close()
	if werr == nil && serr == nil {
		// Did it reach the image?
		b, _ := os.ReadFile(e.imageOf(v))
		if len(b) >= 4096 && b[0] == 0xAA && b[4095] == 0xAA {
			t.Errorf("write through a read-only block publish reached the image after BLKROSET 0")
		}
	}
	t.Logf("write after BLKROSET 0: %v, sync %v", werr, serr)
}

// TestHostileBlockUnstageWrongPath: a block volume staged at S and not
// published; NodeUnstage(V, other path). Spec: a volume not staged at
// that path answers OK and stays staged. plinth detaches it.
func TestHostileBlockUnstageWrongPath(t *testing.T) {
	e := newNodePathEnv(t)
	v := e.npVolume(t, "blk-wrong", "fext4", testenv.BlockCap())
	staging, target := e.paths(v)
	if err := e.stage(v, staging); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(v, staging) })
	err := e.unstage(v, filepath.Join(e.root, "not-its-staging"))
	t.Logf("unstage at the wrong path: %v", err)
	if n := len(loopsOf(t, e.imageOf(v))); n == 0 {
		t.Errorf("NodeUnstage at a path the block volume is not staged at detached it (code %v)", status.Code(err))
	}
	err = e.publish(v, staging, target, false)
	if err != nil {
		t.Errorf("publish from its real staging path after the wrong unstage: %v", err)
	} else {
		_ = e.unpublish(v, target)
	}
}

// TestHostileRetryWithOtherFlags: the same volume and path asked again
// with other mount flags. Spec: "identical" -> OK, otherwise ALREADY_EXISTS.
// plinth answers OK and the mount keeps the old options (a CO that asks
// noexec gets OK and an exec mount).
func TestHostileRetryWithOtherFlags(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "flags-a", "fext4", testenv.MountCap(""))
	st, tg := e.stagedAndPublished(t, a)
	err := e.publish(a, st, tg, false, "noexec")
	if m := mountAt(t, tg); err == nil && m != nil && !strings.Contains(","+m.Options+",", ",noexec,") {
		t.Errorf("NodePublish again with mount flag noexec = OK, but the mount at the target is %q (no noexec); spec: ALREADY_EXISTS", m.Options)
	}
	err = e.stage(a, st, "ro")
	if m := mountAt(t, st); err == nil && m != nil && !strings.Contains(","+m.Options+",", ",ro,") {
		t.Errorf("NodeStage again with mount flag ro = OK, but the staging mount is %q; spec: ALREADY_EXISTS", m.Options)
	}
}

// TestHostileBtrfsSnapshotEscape: an unprivileged tenant of a 64 MiB
// btrfs volume makes a nested subvolume, snapshots it (twice), and
// writes fresh data into each snapshot. Everything must count against
// the volume's limit.
func TestHostileBtrfsSnapshotEscape(t *testing.T) {
	e := newNodePathEnv(t)
	v := e.npVolume(t, "bt-esc", "bt", testenv.MountCap(""))
	_, tg := e.stagedAndPublished(t, v)
	os.Chmod(tg, 0o777)
	script := `set -x; cd "$1" && btrfs subvolume create n && btrfs subvolume snapshot n s1 && btrfs subvolume snapshot s1 s2;
for d in n s1 s2; do dd if=/dev/urandom of=$d/f bs=1M count=40 conv=fsync status=none; done; sync; du -sm .`
	out, err := exec.Command("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--", "sh", "-c", script, "sh", tg).CombinedOutput()
	t.Logf("tenant: %v\n%s", err, out)
	var written int64
	filepath.Walk(tg, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			written += fi.Size()
		}
		return nil
	})
	if written > 80<<20 {
		t.Errorf("tenant stored %d MiB of distinct data in a 64 MiB btrfs volume", written>>20)
	}
	r, err := e.c.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: tg})
	t.Logf("stats: %v %v", r.GetUsage(), err)
	exec.Command("sh", "-c", "cd "+tg+" && btrfs subvolume delete s2 s1 n").Run()
}

var _ = errors.Is
var _ = codes.OK
var _ = context.Background
var _ = csi.VolumeCapability{}
