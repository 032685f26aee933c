package standalone

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testenv"
)

// These tests take the seat of a hostile or confused CO: for each Node
// RPC, what else may already be at the paths it names, and what the CSI
// spec says the answer must be. Every case checks what is at the path
// afterwards, not only the code.

// npEnv is a running standalone plinth with a client.
type npEnv struct {
	*env
	c *testenv.Client
}

func newNodePathEnv(t *testing.T) *npEnv {
	e := newEnv(t)
	sock := testenv.Standalone(t, e.cfg)
	return &npEnv{env: e, c: testenv.Dial(t, sock)}
}

// npVolume creates a volume named name in pool with capability c.
func (e *npEnv) npVolume(t *testing.T, name, pool string, c *csi.VolumeCapability) *vol {
	t.Helper()
	v := &vol{name: name, pool: pool, cap: c, size: 64 << 20}
	create(t, e.c, v)
	return v
}

func (e *npEnv) stage(v *vol, staging string, flags ...string) error {
	c := capWithFlags(v.cap, flags...)
	_, err := e.c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: c})
	return err
}

func (e *npEnv) publish(v *vol, staging, target string, readOnly bool, flags ...string) error {
	_, err := e.c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, Readonly: readOnly, VolumeCapability: capWithFlags(v.cap, flags...),
	})
	return err
}

func (e *npEnv) unpublish(v *vol, target string) error {
	_, err := e.c.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
	return err
}

func (e *npEnv) unstage(v *vol, staging string) error {
	_, err := e.c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging})
	return err
}

func (e *npEnv) deleteVolume(v *vol) error {
	_, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.id})
	return err
}

func capWithFlags(c *csi.VolumeCapability, flags ...string) *csi.VolumeCapability {
	if c.GetMount() == nil || len(flags) == 0 {
		return c
	}
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: c.GetMount().GetFsType(), MountFlags: flags}},
		AccessMode: c.GetAccessMode(),
	}
}

// stagedAndPublished stages v and publishes it (read-write) at the env's
// paths, and unpublishes/unstages it when the test ends.
func (e *npEnv) stagedAndPublished(t *testing.T, v *vol) (staging, target string) {
	t.Helper()
	staging, target = e.paths(v)
	if err := e.stage(v, staging); err != nil {
		t.Fatalf("stage %s: %v", v.name, err)
	}
	if err := e.publish(v, staging, target, false); err != nil {
		t.Fatalf("publish %s: %v", v.name, err)
	}
	t.Cleanup(func() {
		_ = e.unpublish(v, target)
		_ = e.unstage(v, staging)
	})
	return staging, target
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: got %v (%v), want %v", what, status.Code(err), err, want)
	}
}

func mountAt(t *testing.T, path string) *mount.Info {
	t.Helper()
	ms, err := mount.MountsAt(path)
	if err != nil {
		t.Fatal(err)
	}
	return mount.Top(ms) // what the path shows
}

// foreignTmpfs mounts a tmpfs with a marker file at a new dir under root.
func foreignTmpfs(t *testing.T, root, name string) string {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for mountAt(t, dir) != nil {
			if unix.Unmount(dir, 0) != nil {
				break
			}
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "marker"), []byte("foreign"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func wantForeignIntact(t *testing.T, dir string) {
	t.Helper()
	m := mountAt(t, dir)
	if m == nil || m.FSType != "tmpfs" {
		t.Errorf("foreign tmpfs at %s is gone (mount now %v)", dir, m)
		return
	}
	if b, err := os.ReadFile(filepath.Join(dir, "marker")); err != nil || string(b) != "foreign" {
		t.Errorf("foreign tmpfs at %s lost its marker: %q, %v", dir, b, err)
	}
}

func (e *npEnv) imageOf(v *vol) string {
	for i, p := range e.cfg.Pools {
		if p.Name == v.pool && p.Backend == "file" {
			return filepath.Join(e.poolDirs[i], "volumes", v.id+".img")
		}
	}
	return ""
}

// loopsOf lists the loop devices whose backing file is img, from sysfs.
func loopsOf(t *testing.T, img string) []string {
	t.Helper()
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		s := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if err == nil && s == img {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return out
}

func TestReadOnlyHolds(t *testing.T) {
	e := newNodePathEnv(t)
	for _, pool := range []string{"fext4", "bt"} {
		t.Run(pool, func(t *testing.T) {
			v := e.npVolume(t, "ro-"+pool, pool, testenv.MountCap(""))
			staging, target := e.paths(v)
			if err := e.stage(v, staging); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.unstage(v, staging) })
			// The consumer's "rw" comes after plinth's "ro" in a naive
			// option list, and the last one wins there.
			if err := e.publish(v, staging, target, true, "rw"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.unpublish(v, target) })
			if err := os.WriteFile(filepath.Join(target, "x"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
				t.Errorf("write into a read-only publish with flag rw: %v, want EROFS", err)
			}
			// The same target asked read-write now is incompatible.
			wantCode(t, "publish read-write over the read-only publish", e.publish(v, staging, target, false), codes.AlreadyExists)
			if err := e.publish(v, staging, target, true); err != nil {
				t.Errorf("publish read-only again: %v, want OK", err)
			}
			// nodev, nosuid on the staging mount and the publish.
			for _, p := range []string{staging, target} {
				m := mountAt(t, p)
				if m == nil || !strings.Contains(","+m.Options+",", ",nodev,") || !strings.Contains(","+m.Options+",", ",nosuid,") {
					t.Errorf("mount at %s: %+v, want nodev and nosuid", p, m)
				}
			}
		})
	}
}

func TestReadOnlyBlockPublishRefusesWrites(t *testing.T) {
	e := newNodePathEnv(t)
	v := e.npVolume(t, "roblock", "fext4", testenv.BlockCap())
	staging, target := e.paths(v)
	if err := e.stage(v, staging); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(v, staging, target, true); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.Write(make([]byte, 4096))
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	if err == nil {
		t.Errorf("write to a read-only block publish succeeded")
	}
	// A read-write publish beside it is writable; asking it read-only at
	// the read-write target is incompatible.
	rw := target + "-rw"
	if err := e.publish(v, staging, rw, false); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(rw, os.O_WRONLY, 0); err != nil {
		t.Errorf("open read-write publish: %v", err)
	} else {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			t.Errorf("write read-write publish: %v", err)
		}
		f.Close()
	}
	wantCode(t, "publish read-only at the read-write target", e.publish(v, staging, rw, true), codes.AlreadyExists)
	if n := len(loopsOf(t, e.imageOf(v))); n != 2 {
		t.Errorf("%d loop devices while published twice, want 2 (one read-write, one read-only)", n)
	}
	for _, p := range []string{target, rw} {
		if err := e.unpublish(v, p); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("block target %s that plinth made is still there: %v", p, err)
		}
	}
	if n := len(loopsOf(t, e.imageOf(v))); n != 1 {
		t.Errorf("%d loop devices after unpublish, want the staged one", n)
	}
	if err := e.unstage(v, staging); err != nil {
		t.Fatal(err)
	}
	if err := e.deleteVolume(v); err != nil {
		t.Errorf("delete after unstage: %v", err)
	}
}

func TestNodeCallsActOnlyOnTheVolumesOwnMounts(t *testing.T) {
	e := newNodePathEnv(t)
	a := e.npVolume(t, "own-a", "fext4", testenv.MountCap(""))
	b := e.npVolume(t, "own-b", "fext4", testenv.MountCap(""))
	bt := e.npVolume(t, "own-bt", "bt", testenv.MountCap(""))
	stA, tA := e.stagedAndPublished(t, a)
	stBt, tBt := e.stagedAndPublished(t, bt)
	stB, _ := e.paths(b)
	if err := e.stage(b, stB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(b, stB) })
	foreign := foreignTmpfs(t, e.root, "foreign")

	cases := []struct {
		name  string
		call  func() error
		want  codes.Code
		check func(t *testing.T)
	}{
		{"unpublish B at A's target", func() error { return e.unpublish(b, tA) }, codes.FailedPrecondition,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"unpublish A at a foreign tmpfs", func() error { return e.unpublish(a, foreign) }, codes.FailedPrecondition,
			func(t *testing.T) { wantForeignIntact(t, foreign) }},
		{"unpublish btrfs volume at A's target", func() error { return e.unpublish(bt, tA) }, codes.FailedPrecondition,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"unpublish A at the btrfs volume's target", func() error { return e.unpublish(a, tBt) }, codes.FailedPrecondition,
			func(t *testing.T) { wantMountedFrom(t, tBt, stBt) }},
		// B is not staged there: OK by the spec, and A's mount is untouched.
		{"unstage B at A's staging path", func() error { return e.unstage(b, stA) }, codes.OK,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"unstage A at a foreign tmpfs", func() error { return e.unstage(a, foreign) }, codes.OK,
			func(t *testing.T) { wantForeignIntact(t, foreign) }},
		{"unstage A while published", func() error { return e.unstage(a, stA) }, codes.FailedPrecondition,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"publish B at A's target", func() error { return e.publish(b, stB, tA, false) }, codes.AlreadyExists,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"publish A at a foreign tmpfs", func() error { return e.publish(a, stA, foreign, false) }, codes.AlreadyExists,
			func(t *testing.T) { wantForeignIntact(t, foreign) }},
		{"publish A read-only where it is published read-write", func() error { return e.publish(a, stA, tA, true) }, codes.AlreadyExists,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"publish A read-write again", func() error { return e.publish(a, stA, tA, false) }, codes.OK, nil},
		{"publish B from A's staging path", func() error { return e.publish(b, stA, filepath.Join(e.root, "b-from-a"), false) }, codes.FailedPrecondition,
			func(t *testing.T) {
				if _, err := os.Lstat(filepath.Join(e.root, "b-from-a")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("target made for a refused publish: %v", err)
				}
			}},
		{"publish B from a foreign tmpfs", func() error { return e.publish(b, foreign, filepath.Join(e.root, "b-from-tmpfs"), false) }, codes.FailedPrecondition,
			func(t *testing.T) { wantForeignIntact(t, foreign) }},
		{"stage B at A's staging path", func() error { return e.stage(b, stA) }, codes.AlreadyExists,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"stage A at a foreign tmpfs", func() error { return e.stage(a, foreign) }, codes.AlreadyExists,
			func(t *testing.T) { wantForeignIntact(t, foreign) }},
		{"expand A at a foreign tmpfs", func() error { return e.expand(a, foreign) }, codes.NotFound,
			func(t *testing.T) { wantForeignIntact(t, foreign) }},
		{"expand B at A's target", func() error { return e.expand(b, tA) }, codes.NotFound, nil},
		{"stats of B at A's target", func() error { return e.stats(b, tA) }, codes.NotFound, nil},
		{"stats of A at a foreign tmpfs", func() error { return e.stats(a, foreign) }, codes.NotFound, nil},
		{"publish A at its own staging path", func() error { return e.publish(a, stA, stA, false) }, codes.InvalidArgument,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"publish A inside its own staging path", func() error { return e.publish(a, stA, filepath.Join(stA, "inner"), false) }, codes.InvalidArgument,
			func(t *testing.T) {
				if _, err := os.Lstat(filepath.Join(stA, "inner")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a target was made inside the volume: %v", err)
				}
			}},
		{"unpublish A at its own staging path", func() error { return e.unpublish(a, stA) }, codes.FailedPrecondition,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"stage A at a second staging path", func() error { return e.stage(a, filepath.Join(e.root, "a-second-staging")) }, codes.FailedPrecondition,
			func(t *testing.T) {
				if m := mountAt(t, filepath.Join(e.root, "a-second-staging")); m != nil {
					t.Errorf("a second staging mount was made: %+v", m)
				}
			}},
		{"unstage A at a path it is not staged at", func() error { return e.unstage(a, filepath.Join(e.root, "elsewhere")) }, codes.OK,
			func(t *testing.T) { wantMountedFrom(t, tA, stA) }},
		{"publish at the allowed root itself", func() error { return e.publish(a, stA, e.root, false) }, codes.InvalidArgument,
			func(t *testing.T) {
				if fi, err := os.Stat(e.root); err != nil || !fi.IsDir() || mountAt(t, e.root) != nil {
					t.Errorf("allowed root after refused publish: %v, mounted %v", err, mountAt(t, e.root))
				}
			}},
		{"unpublish at the allowed root itself", func() error { return e.unpublish(a, e.root) }, codes.InvalidArgument,
			func(t *testing.T) {
				if _, err := os.Stat(e.root); err != nil {
					t.Errorf("allowed root removed: %v", err)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.name, tc.call(), tc.want)
			if tc.check != nil {
				tc.check(t)
			}
		})
	}
	// B was never attached by expand: it unstages and deletes cleanly.
	if err := e.unstage(b, stB); err != nil {
		t.Fatal(err)
	}
	if n := len(loopsOf(t, e.imageOf(b))); n != 0 {
		t.Errorf("B has %d loop devices after unstage", n)
	}
	if err := e.deleteVolume(b); err != nil {
		t.Errorf("delete B: %v", err)
	}
}

// wantMountedFrom checks that target still shows the filesystem mounted at staging.
func wantMountedFrom(t *testing.T, target, staging string) {
	t.Helper()
	tm, sm := mountAt(t, target), mountAt(t, staging)
	if tm == nil || sm == nil || tm.Major != sm.Major || tm.Minor != sm.Minor {
		t.Errorf("target %s (%v) is no longer a mount of staging %s (%v)", target, tm, staging, sm)
	}
}

func (e *npEnv) expand(v *vol, path string) error {
	_, err := e.c.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: path})
	return err
}

func (e *npEnv) stats(v *vol, path string) error {
	_, err := e.c.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: path})
	return err
}

func TestWhatIsAtTheTargetBeforePublish(t *testing.T) {
	e := newNodePathEnv(t)
	fsv := e.npVolume(t, "pre-fs", "fext4", testenv.MountCap(""))
	blk := e.npVolume(t, "pre-blk", "fext4", testenv.BlockCap())
	stFs, _ := e.paths(fsv)
	stBlk, _ := e.paths(blk)
	if err := e.stage(fsv, stFs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(fsv, stFs) })
	if err := e.stage(blk, stBlk); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.unstage(blk, stBlk) })

	nonEmptyDir := filepath.Join(e.root, "non-empty-dir")
	os.Mkdir(nonEmptyDir, 0o750)
	os.WriteFile(filepath.Join(nonEmptyDir, "keep"), []byte("mine"), 0o644)
	nonEmptyFile := filepath.Join(e.root, "non-empty-file")
	os.WriteFile(nonEmptyFile, []byte("mine"), 0o644)
	fifo := filepath.Join(e.root, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	emptyDir := filepath.Join(e.root, "empty-dir")
	os.Mkdir(emptyDir, 0o750)
	emptyFile := filepath.Join(e.root, "empty-file")
	os.WriteFile(emptyFile, nil, 0o600)
	fileForFs := filepath.Join(e.root, "file-for-fs")
	os.WriteFile(fileForFs, nil, 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pub := func(v *vol, st, target string) error {
		_, err := e.c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: st, TargetPath: target, VolumeCapability: v.cap})
		return err
	}
	for _, tc := range []struct {
		name   string
		v      *vol
		st     string
		target string
		want   codes.Code
	}{
		{"filesystem over a non-empty directory", fsv, stFs, nonEmptyDir, codes.FailedPrecondition},
		{"filesystem over a file", fsv, stFs, fileForFs, codes.FailedPrecondition},
		{"block over a non-empty file", blk, stBlk, nonEmptyFile, codes.FailedPrecondition},
		{"block over a FIFO", blk, stBlk, fifo, codes.FailedPrecondition},
		{"block over a directory", blk, stBlk, nonEmptyDir, codes.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.name, pub(tc.v, tc.st, tc.target), tc.want)
			if m := mountAt(t, tc.target); m != nil {
				t.Errorf("%s is mounted after a refused publish", tc.target)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(nonEmptyDir, "keep")); err != nil || string(b) != "mine" {
		t.Errorf("non-empty dir content: %q, %v", b, err)
	}
	if b, err := os.ReadFile(nonEmptyFile); err != nil || string(b) != "mine" {
		t.Errorf("non-empty file content: %q, %v", b, err)
	}
	// The FIFO did not block the volume: the next call on it is served.
	if err := e.unpublish(blk, fifo); err != nil {
		t.Errorf("unpublish after the FIFO publish: %v", err)
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("FIFO after unpublish: %v, %v", fi, err)
	}
	// Empty things the CO made are published over, and left in place by
	// unpublish: plinth removes only what it made.
	for _, p := range []struct {
		v         *vol
		st, where string
	}{{fsv, stFs, emptyDir}, {blk, stBlk, emptyFile}} {
		if err := pub(p.v, p.st, p.where); err != nil {
			t.Fatalf("publish over empty %s: %v", p.where, err)
		}
		if err := e.unpublish(p.v, p.where); err != nil {
			t.Fatalf("unpublish %s: %v", p.where, err)
		}
		if _, err := os.Lstat(p.where); err != nil {
			t.Errorf("%s, which plinth did not make, was removed: %v", p.where, err)
		}
	}
	// An empty directory nothing was published at stays too.
	lone := filepath.Join(e.root, "lone")
	os.Mkdir(lone, 0o750)
	if err := e.unpublish(fsv, lone); err != nil {
		t.Errorf("unpublish where nothing is published: %v", err)
	}
	if _, err := os.Lstat(lone); err != nil {
		t.Errorf("empty dir plinth never made removed by unpublish: %v", err)
	}
	// What plinth made it removes.
	made := filepath.Join(e.root, "made-by-plinth")
	if err := pub(fsv, stFs, made); err != nil {
		t.Fatal(err)
	}
	if err := e.unpublish(fsv, made); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(made); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target plinth made is still there after unpublish: %v", err)
	}
}

func TestFailedStageUndoesItself(t *testing.T) {
	e := newNodePathEnv(t)
	v := e.npVolume(t, "undo", "fext4", testenv.MountCap(""))
	staging, target := e.paths(v)
	// A mount option ext4 rejects: the mount fails after the attach.
	if err := e.stage(v, staging, "data=bogus"); err == nil {
		t.Fatal("stage with an option ext4 rejects succeeded")
	}
	if m := mountAt(t, staging); m != nil {
		t.Errorf("staging path mounted after a failed stage: %+v", m)
	}
	if n := len(loopsOf(t, e.imageOf(v))); n != 0 {
		t.Errorf("%d loop devices left by a failed stage", n)
	}
	// The retry with good options and a mount group applies the group.
	c := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{VolumeMountGroup: "4321"}},
		AccessMode: v.cap.GetAccessMode(),
	}
	if _, err := e.c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(staging, &st); err != nil || st.Gid != 4321 {
		t.Errorf("staging root gid %d (%v) after retried stage with mount group 4321", st.Gid, err)
	}
	// A publish with another mount group (a second pod's fsGroup) applies it.
	c.GetMount().VolumeMountGroup = "5678"
	if _, err := e.c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(target, &st); err != nil || st.Gid != 5678 {
		t.Errorf("target root gid %d (%v) after publish with mount group 5678", st.Gid, err)
	}
	if err := e.unpublish(v, target); err != nil {
		t.Fatal(err)
	}
	if err := e.unstage(v, staging); err != nil {
		t.Fatal(err)
	}
	if err := e.deleteVolume(v); err != nil {
		t.Errorf("delete after a failed and a good stage: %v", err)
	}
}

// TestDeleteRacingStage: the controller's delete and the node's stage of
// one volume never both succeed, and no loop device outlives its image.
func TestDeleteRacingStage(t *testing.T) {
	e := newNodePathEnv(t)
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < 15 && time.Now().Before(deadline); i++ {
		v := e.npVolume(t, "race-"+string(rune('a'+i)), "fext4", testenv.MountCap(""))
		img := e.imageOf(v)
		staging, _ := e.paths(v)
		var stageErr, delErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); stageErr = e.stage(v, staging) }()
		go func() { defer wg.Done(); delErr = e.deleteVolume(v) }()
		wg.Wait()
		if stageErr == nil && delErr == nil {
			t.Errorf("round %d: stage and delete both answered OK", i)
		}
		if delErr == nil {
			if n := len(loopsOf(t, img)); n != 0 {
				t.Errorf("round %d: %d loop devices on a deleted volume", i, n)
			}
			for _, l := range deletedBackings(t, filepath.Dir(img)) {
				t.Errorf("round %d: loop device backed by deleted %s", i, l)
			}
			continue
		}
		for _, c := range []codes.Code{codes.Aborted, codes.FailedPrecondition} {
			if status.Code(delErr) == c {
				delErr = nil
			}
		}
		if delErr != nil {
			t.Errorf("round %d: delete: %v, want OK, ABORTED or FAILED_PRECONDITION", i, delErr)
		}
		_ = e.unstage(v, staging)
		if err := e.deleteVolume(v); err != nil {
			t.Errorf("round %d: delete after unstage: %v", i, err)
		}
	}
}

// deletedBackings lists loop devices whose backing file under dir is gone.
func deletedBackings(t *testing.T, dir string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		s := strings.TrimSpace(string(b))
		if err == nil && strings.HasPrefix(s, dir+"/") && strings.HasSuffix(s, "(deleted)") {
			out = append(out, f+": "+s)
		}
	}
	return out
}

// TestFsGroupLeftToTheKubelet: plinth does not take a pod's fsGroup over
// from the kubelet (VOLUME_MOUNT_GROUP), since the CSI call does not carry
// the pod's fsGroupChangePolicy; the kubelet applies it by that policy.
func TestFsGroupLeftToTheKubelet(t *testing.T) {
	e := newNodePathEnv(t)
	resp, err := e.c.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP {
			t.Errorf("plinth advertises VOLUME_MOUNT_GROUP: the kubelet would skip fsGroupChangePolicy")
		}
	}
}
