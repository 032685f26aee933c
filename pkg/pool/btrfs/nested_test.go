package btrfs_test

// Tests from a tenant's seat: a process with an unprivileged uid inside a
// volume whose root it owns (as a pod's fsGroup would allow) makes
// subvolumes there, as btrfs lets anyone with write permission do.

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
	"github.com/plinth-dev/plinth/test/testenv"
)

const (
	tenant = 1000
	limit  = 64 << 20
)

// newPool opens a pool on a new btrfs and returns it with its directory.
// mode is how the filesystem has quotas when the pool opens: "" lets the
// pool choose (simple quotas on this kernel), "full" is a filesystem whose
// quotas were enabled the old way (plinth before this).
func newPool(t *testing.T, mode string) (*btrfs.Pool, string) {
	t.Helper()
	testenv.RequireHost(t, "btrfs", "dd")
	fs := testenv.Filesystem(t, "btrfs", 1<<30)
	if mode == "full" {
		btrfsCmd(t, "quota", "enable", fs)
	}
	// A pool in a plain directory of the filesystem, as csi-sanity's is.
	mnt := filepath.Join(fs, "pool")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	return openPool(t, mnt), mnt
}

func openPool(t *testing.T, dir string) *btrfs.Pool {
	t.Helper()
	p, err := btrfs.New(context.Background(), btrfs.Config{Name: "bt", Dir: dir, Run: mount.Exec{}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func btrfsCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("btrfs", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// asTenant runs a program as the tenant's uid and gid, no other groups.
func asTenant(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tenant, Gid: tenant, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func tenantDo(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := asTenant(name, args...); err != nil {
		t.Fatalf("as uid %d: %s %s: %v: %s", tenant, name, strings.Join(args, " "), err, out)
	}
}

// tenantWrite writes mib MiB into path as the tenant.
func tenantWrite(path string, mib int) (string, error) {
	return asTenant("dd", "if=/dev/zero", "of="+path, "bs=1M", "count="+strconv.Itoa(mib), "conv=fsync")
}

// newVolume makes a volume of the limit, hands its root to the tenant and
// shows it to the tenant as a pod sees it: bind mounted where the tenant
// can reach it. It returns that path; unmount releases it.
func newVolume(t *testing.T, p *btrfs.Pool, id string) (pool.Volume, string) {
	t.Helper()
	v, err := p.CreateVolume(context.Background(), pool.Volume{ID: id, Name: "name-" + id, CapacityBytes: limit, Mode: pool.ModeFilesystem})
	if err != nil {
		t.Fatal(err)
	}
	return v, tenantView(t, p, id)
}

func tenantView(t *testing.T, p *btrfs.Pool, id string) string {
	t.Helper()
	a, err := p.Attach(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(a.Dir, tenant, tenant); err != nil {
		t.Fatal(err)
	}
	pod, err := os.MkdirTemp("", "plinth-pod-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pod, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(pod, id)
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(a.Dir, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmount(target)
		os.RemoveAll(pod)
	})
	return target
}

// unmount takes a tenant's view away, as the kubelet does before a delete.
func unmount(target string) {
	_ = unix.Unmount(target, unix.MNT_DETACH)
}

func subvolOf(t *testing.T, v pool.Volume) uint64 {
	t.Helper()
	sub, err := strconv.ParseUint(v.Parameters[btrfs.SubvolKey], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

func syncFs(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// wantQuotaExceeded checks that writing twice the limit into path fails
// with EDQUOT.
func wantQuotaExceeded(t *testing.T, path string) {
	t.Helper()
	out, err := tenantWrite(path, 2*limit>>20)
	if err == nil {
		t.Fatalf("tenant wrote %d MiB into %s, past the volume's %d MiB limit", 2*limit>>20, path, limit>>20)
	}
	if !strings.Contains(out, "Disk quota exceeded") {
		t.Fatalf("tenant's write into %s failed, but not with EDQUOT: %v: %s", path, err, out)
	}
}

// TestNestedSubvolumeBounded: a subvolume the tenant makes inside its volume
// counts against the volume's limit. With simple quotas the kernel puts a
// plain one in the volume's group at once (no sweep); one made with an
// explicit inherit list, and any one under full qgroups, is put there by
// the next sweep (Stats: every capacity pass). Before: the nested
// subvolume's own qgroup had no limit, and the tenant wrote 128 MiB into a
// 64 MiB volume.
func TestNestedSubvolumeBounded(t *testing.T) {
	for name, tc := range map[string]struct {
		mode  string
		make  func(t *testing.T, mnt, dir string) string // returns where the tenant writes
		sweep bool
	}{
		"simple quotas, plain create, no sweep": {make: nestedCreate},
		"simple quotas, two deep, no sweep": {make: func(t *testing.T, mnt, dir string) string {
			nestedCreate(t, mnt, dir)
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "nested", "deeper"))
			return filepath.Join(dir, "nested", "deeper", "data")
		}},
		"simple quotas, snapshot of the volume, no sweep": {make: func(t *testing.T, mnt, dir string) string {
			tenantDo(t, "btrfs", "subvolume", "snapshot", dir, filepath.Join(dir, "snap"))
			return filepath.Join(dir, "snap", "data")
		}},
		"simple quotas, inherit list naming another group": {make: inheritElsewhere, sweep: true},
		"full qgroups, snapshot of the volume with data": {mode: "full", sweep: true, make: func(t *testing.T, mnt, dir string) string {
			if out, err := tenantWrite(filepath.Join(dir, "base"), 8); err != nil {
				t.Fatal(err, out)
			}
			tenantDo(t, "btrfs", "subvolume", "snapshot", dir, filepath.Join(dir, "snap"))
			return filepath.Join(dir, "snap", "data")
		}},
		"full qgroups, plain create":                      {mode: "full", make: nestedCreate, sweep: true},
		"full qgroups, inherit list naming another group": {mode: "full", make: inheritElsewhere, sweep: true},
	} {
		t.Run(name, func(t *testing.T) {
			p, mnt := newPool(t, tc.mode)
			_, dir := newVolume(t, p, "pv-a")
			target := tc.make(t, mnt, dir)
			if tc.sweep {
				if _, err := p.Stats(context.Background()); err != nil {
					t.Fatal(err)
				}
				// Under full qgroups a foreign inherit list leaves the
				// accounting inconsistent, and the sweep rescans: wait
				// for that rescan (-W starts none).
				if tc.mode == "full" {
					btrfsCmd(t, "quota", "rescan", "-W", mnt)
				}
			}
			wantQuotaExceeded(t, target)
			// The volume's own directory is full too: one limit for all.
			if out, err := tenantWrite(filepath.Join(dir, "more"), 8); err == nil {
				t.Errorf("volume root still takes 8 MiB after %s filled the limit: %s", target, out)
			}
		})
	}
}

func nestedCreate(t *testing.T, mnt, dir string) string {
	tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "nested"))
	return filepath.Join(dir, "nested", "data")
}

// inheritElsewhere: the tenant names an operator's unlimited group in its
// inherit list, which keeps the kernel from putting the new subvolume in
// the volume's group. The snapshot variant also leaves full qgroups
// inconsistent: the kernel then counts nothing.
func inheritElsewhere(t *testing.T, mnt, dir string) string {
	btrfsCmd(t, "qgroup", "create", "1/9999", mnt)
	tenantDo(t, "btrfs", "subvolume", "create", "-i", "1/9999", filepath.Join(dir, "nested"))
	tenantDo(t, "btrfs", "subvolume", "snapshot", "-i", "1/9999", dir, filepath.Join(dir, "snap"))
	return filepath.Join(dir, "nested", "data")
}

// TestInheritIntoAnotherVolume: a tenant that puts its nested subvolume in
// another volume's group charges that volume until the sweep moves it home.
func TestInheritIntoAnotherVolume(t *testing.T) {
	p, mnt := newPool(t, "")
	a, dirA := newVolume(t, p, "pv-a")
	b, _ := newVolume(t, p, "pv-b")
	subA, subB := subvolOf(t, a), subvolOf(t, b)
	nested := filepath.Join(dirA, "nested")
	tenantDo(t, "btrfs", "subvolume", "create", "-i", "1/"+strconv.FormatUint(subB, 10), nested)
	if out, err := tenantWrite(filepath.Join(nested, "data"), 32); err != nil {
		t.Fatal(err, out)
	}
	syncFs(t, mnt)
	if q, err := btrfs.ReadQgroups(mnt, subB); err != nil || len(q.Members) != 2 || q.Referenced < 32<<20 {
		t.Fatalf("before the sweep pv-b's group: %+v %v; want the tenant's subvolume charged to it", q, err)
	}
	if err := p.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	syncFs(t, mnt)
	ub, _, err := p.Usage(context.Background(), "pv-b")
	if err != nil {
		t.Fatal(err)
	}
	ua, _, err := p.Usage(context.Background(), "pv-a")
	if err != nil {
		t.Fatal(err)
	}
	if ub.UsedBytes > 1<<20 || ua.UsedBytes < 32<<20 {
		t.Errorf("after the sweep pv-a uses %d bytes, pv-b %d: want pv-a ≥ 32 MiB, pv-b ~0", ua.UsedBytes, ub.UsedBytes)
	}
	q, err := btrfs.ReadQgroups(mnt, subA)
	if err != nil {
		t.Fatal(err)
	}
	nestedID, err := btrfs.SubvolID(nested)
	if err != nil {
		t.Fatal(err)
	}
	if got := q.Parents[nestedID]; len(got) != 1 || got[0] != "1/"+strconv.FormatUint(subA, 10) {
		t.Errorf("nested subvolume's groups: %v, want only pv-a's", got)
	}
}

// TestUsageCountsNested: what the tenant wrote in nested subvolumes shows in
// the volume's usage. Before: Usage read the volume's own qgroup, 8 MiB.
func TestUsageCountsNested(t *testing.T) {
	for _, mode := range []string{"", "full"} {
		t.Run("quotas="+mode, func(t *testing.T) {
			p, mnt := newPool(t, mode)
			_, dir := newVolume(t, p, "pv-a")
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1"))
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1", "n2"))
			for path, mib := range map[string]int{"root": 8, "n1/data": 16, "n1/n2/data": 8} {
				if out, err := tenantWrite(filepath.Join(dir, path), mib); err != nil {
					t.Fatal(err, out)
				}
			}
			if _, _, err := p.Usage(context.Background(), "pv-a"); err != nil { // brings n1, n2 under
				t.Fatal(err)
			}
			syncFs(t, mnt)
			u, ok, err := p.Usage(context.Background(), "pv-a")
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if u.UsedBytes < 32<<20 || u.TotalBytes != limit {
				t.Errorf("usage %d of %d bytes, want ≥ 32 MiB of %d", u.UsedBytes, u.TotalBytes, limit)
			}
		})
	}
}

// TestDeleteVolumeWithNested: a volume holding nested subvolumes two deep, a
// snapshot, a read-only subvolume holding another, a symlink to a
// subvolume outside the volume, and filled to its limit is deleted with
// its record, and nothing outside it goes. Before: "Directory not empty",
// the record stuck in deleting.
func TestDeleteVolumeWithNested(t *testing.T) {
	for _, mode := range []string{"", "full"} {
		t.Run("quotas="+mode, func(t *testing.T) {
			p, mnt := newPool(t, mode)
			_, dir := newVolume(t, p, "pv-a")
			newVolume(t, p, "pv-b")
			other := filepath.Join(mnt, "volumes", "pv-b")
			outside := filepath.Join(mnt, "outside")
			btrfsCmd(t, "subvolume", "create", outside)
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1"))
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1", "n2"))
			tenantDo(t, "mkdir", "-p", filepath.Join(dir, "n1", "n2", "d"))
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1", "n2", "d", "n3"))
			tenantDo(t, "btrfs", "subvolume", "snapshot", dir, filepath.Join(dir, "snap"))
			tenantDo(t, "ln", "-s", outside, filepath.Join(dir, "n1", "link"))
			tenantDo(t, "ln", "-s", other, filepath.Join(dir, "other"))
			tenantDo(t, "btrfs", "property", "set", filepath.Join(dir, "n1"), "ro", "true")
			_, _ = tenantWrite(filepath.Join(dir, "fill"), 2*limit>>20)
			unmount(dir)
			if err := p.DeleteVolume(context.Background(), "pv-a"); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if _, err := p.GetVolume(context.Background(), "pv-a"); !errors.Is(err, pool.ErrNotFound) {
				t.Errorf("record after delete: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(mnt, "volumes", "pv-a")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("volume directory after delete: %v", err)
			}
			for _, keep := range []string{outside, other} {
				if _, err := btrfs.SubvolID(keep); err != nil {
					t.Errorf("%s after delete: %v", keep, err)
				}
			}
			if _, err := p.GetVolume(context.Background(), "pv-b"); err != nil {
				t.Errorf("pv-b after delete: %v", err)
			}
		})
	}
}

// TestDeleteFinishesStuckRecord: a record that the old code left in
// deleting (its delete failed on a nested subvolume) is finished by a
// retried delete after a restart, and the name can be used again. Before:
// every retry failed with "Directory not empty".
func TestDeleteFinishesStuckRecord(t *testing.T) {
	p, mnt := newPool(t, "full")
	_, dir := newVolume(t, p, "pv-a")
	tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1"))
	tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1", "n2"))
	record := filepath.Join(mnt, "volumes", "pv-a.json")
	var v pool.Volume
	if err := pool.ReadRecord(pool.VolumeRecords, record, &v); err != nil {
		t.Fatal(err)
	}
	v.State = pool.StateDeleting
	if err := pool.VolumeRecords.Write(record, v); err != nil {
		t.Fatal(err)
	}
	unmount(dir)
	p = openPool(t, mnt)
	if v, err := p.GetVolume(context.Background(), "pv-a"); err != nil || v.State != pool.StateDeleting {
		t.Fatalf("record after restart: %+v %v", v, err)
	}
	if err := p.DeleteVolume(context.Background(), "pv-a"); err != nil {
		t.Fatalf("retried delete: %v", err)
	}
	if _, err := p.GetVolume(context.Background(), "pv-a"); !errors.Is(err, pool.ErrNotFound) {
		t.Errorf("record after retried delete: %v", err)
	}
	newVolume(t, p, "pv-a")
}

// downgrade puts a volume back as the code before level-1 groups made it:
// its limit on its own level-0 qgroup, no level-1 group.
func downgrade(t *testing.T, mnt string, sub uint64) {
	t.Helper()
	id := strconv.FormatUint(sub, 10)
	if q, err := btrfs.ReadQgroups(mnt, sub); err != nil {
		t.Fatal(err)
	} else if len(q.Members) > 0 {
		btrfsCmd(t, "qgroup", "remove", "0/"+id, "1/"+id, mnt)
		btrfsCmd(t, "qgroup", "destroy", "1/"+id, mnt)
	}
	btrfsCmd(t, "qgroup", "limit", strconv.Itoa(limit), "0/"+id, mnt)
}

// TestUpgradeOldVolume: a volume made before level-1 groups (limit on its
// own qgroup only), whose tenant already made a nested subvolume and wrote
// into it, is bounded by a level-1 group when the pool opens, keeping its
// data. Before: the nested subvolume took 128 MiB after the restart too.
func TestUpgradeOldVolume(t *testing.T) {
	for _, mode := range []string{"", "full"} {
		t.Run("quotas="+mode, func(t *testing.T) {
			p, mnt := newPool(t, mode)
			v, dir := newVolume(t, p, "pv-a")
			sub := subvolOf(t, v)
			downgrade(t, mnt, sub)
			if out, err := tenantWrite(filepath.Join(dir, "kept"), 4); err != nil {
				t.Fatal(err, out)
			}
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "nested"))
			if out, err := tenantWrite(filepath.Join(dir, "nested", "early"), 16); err != nil {
				t.Fatal(err, out)
			}
			openPool(t, mnt)
			q, err := btrfs.ReadQgroups(mnt, sub)
			if err != nil {
				t.Fatal(err)
			}
			nested, err := btrfs.SubvolID(filepath.Join(dir, "nested"))
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"0/" + strconv.FormatUint(sub, 10), "0/" + strconv.FormatUint(nested, 10)}
			if q.Limit != limit || q.OwnLimit != 0 || strings.Join(q.Members, ",") != strings.Join(want, ",") {
				t.Errorf("after upgrade: group limit %d, own limit %d, members %v; want %d, 0, %v", q.Limit, q.OwnLimit, q.Members, limit, want)
			}
			if fi, err := os.Stat(filepath.Join(dir, "kept")); err != nil || fi.Size() != 4<<20 {
				t.Errorf("data after upgrade: %v %v", fi, err)
			}
			// An upgrade that assigned shared extents rescans (full qgroups).
			if mode == "full" {
				btrfsCmd(t, "quota", "rescan", "-W", mnt)
			}
			wantQuotaExceeded(t, filepath.Join(dir, "nested", "data"))
		})
	}
}

// TestUpgradeInterrupted: each state a crash can leave between the steps
// of bounding a volume is finished when the pool opens again.
func TestUpgradeInterrupted(t *testing.T) {
	for name, undo := range map[string][]string{
		"group made, nothing in it": {"remove 0/S 1/S", "limit none 1/S", "limit L 0/S"},
		"members in, no limit yet":  {"limit none 1/S", "limit L 0/S"},
		"both limits set":           {"limit L 0/S"},
	} {
		t.Run(name, func(t *testing.T) {
			p, mnt := newPool(t, "")
			v, dir := newVolume(t, p, "pv-a")
			sub := strconv.FormatUint(subvolOf(t, v), 10)
			for _, step := range undo {
				args := strings.Fields(strings.NewReplacer("S", sub, "L", strconv.Itoa(limit)).Replace(step))
				btrfsCmd(t, append(append([]string{"qgroup"}, args...), mnt)...)
			}
			tenantDo(t, "btrfs", "subvolume", "create", "-i", "1/"+sub, filepath.Join(dir, "nested"))
			openPool(t, mnt)
			q, err := btrfs.ReadQgroups(mnt, subvolOf(t, v))
			if err != nil {
				t.Fatal(err)
			}
			if q.Limit != limit || q.OwnLimit != 0 || len(q.Members) != 2 {
				t.Errorf("after reopen: group limit %d, own limit %d, members %v", q.Limit, q.OwnLimit, q.Members)
			}
			wantQuotaExceeded(t, filepath.Join(dir, "nested", "data"))
		})
	}
}

// TestCloneBounded: a clone (a btrfs snapshot of a snapshot) gets a group of
// its own, and a subvolume made inside the clone counts against the clone.
// Under full qgroups putting the clone in its group leaves the accounting
// inconsistent, and the pool rescans at once. Before: the clone's nested
// subvolume took 128 MiB.
func TestCloneBounded(t *testing.T) {
	for _, mode := range []string{"", "full"} {
		t.Run("quotas="+mode, func(t *testing.T) {
			p, mnt := newPool(t, mode)
			ctx := context.Background()
			a, dirA := newVolume(t, p, "pv-a")
			if out, err := tenantWrite(filepath.Join(dirA, "base"), 8); err != nil {
				t.Fatal(err, out)
			}
			if _, err := p.CreateSnapshot(ctx, pool.Snapshot{ID: "snap-a", Name: "snap-a", SourceVolumeID: "pv-a"}); err != nil {
				t.Fatal(err)
			}
			c, err := p.CreateVolume(ctx, pool.Volume{ID: "pv-c", Name: "name-pv-c", CapacityBytes: limit, Mode: pool.ModeFilesystem, Source: &pool.Source{SnapshotID: "snap-a"}})
			if err != nil {
				t.Fatal(err)
			}
			if mode == "full" {
				btrfsCmd(t, "quota", "rescan", "-W", mnt) // the pool's rescan, if it started one
				if q, err := btrfs.ReadQgroups(mnt, subvolOf(t, c)); err != nil || q.Inconsistent {
					t.Fatalf("after the clone: inconsistent %v, %v; want a rescan done", q.Inconsistent, err)
				}
			}
			dirC := tenantView(t, p, "pv-c")
			tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dirC, "nested"))
			if _, err := p.Stats(ctx); err != nil {
				t.Fatal(err)
			}
			wantQuotaExceeded(t, filepath.Join(dirC, "nested", "data"))
			syncFs(t, mnt)
			ua, _, err := p.Usage(ctx, "pv-a")
			if err != nil {
				t.Fatal(err)
			}
			if ua.UsedBytes > 16<<20 {
				t.Errorf("the source pv-a uses %d bytes after its clone filled up", ua.UsedBytes)
			}
			qa, _ := btrfs.ReadQgroups(mnt, subvolOf(t, a))
			qc, _ := btrfs.ReadQgroups(mnt, subvolOf(t, c))
			if qc.Limit != limit || len(qc.Members) != 2 || len(qa.Members) != 1 {
				t.Errorf("clone's group: limit %d members %v; source's members %v", qc.Limit, qc.Members, qa.Members)
			}
		})
	}
}

// TestSweepRaces: the sweep (Stats runs it, holding no volume's lock) runs
// while volumes with nested subvolumes are made and deleted; every delete
// succeeds and leaves no level-1 group bounding a live subvolume wrongly.
func TestSweepRaces(t *testing.T) {
	p, mnt := newPool(t, "")
	btrfsCmd(t, "qgroup", "create", "1/9999", mnt)
	ctx := context.Background()
	done := make(chan struct{})
	swept := make(chan error, 1)
	go func() {
		var err error
		for {
			select {
			case <-done:
				swept <- err
				return
			default:
			}
			if e := p.Sweep(ctx); e != nil {
				err = e
			}
		}
	}()
	stop := sync.OnceValue(func() error {
		close(done)
		return <-swept
	})
	t.Cleanup(func() { stop() }) // before the filesystem goes, on any exit
	for i := range 6 {
		id := "pv-" + strconv.Itoa(i)
		_, dir := newVolume(t, p, id)
		tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1"))
		tenantDo(t, "btrfs", "subvolume", "create", "-i", "1/9999", filepath.Join(dir, "n1", "n2"))
		unmount(dir)
		if err := p.DeleteVolume(ctx, id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	if err := stop(); err != nil {
		t.Errorf("sweep: %v", err)
	}
	v, dir := newVolume(t, p, "pv-last")
	tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "n1"))
	q, err := btrfs.ReadQgroups(mnt, subvolOf(t, v))
	if err != nil || q.Limit != limit || len(q.Members) != 2 {
		t.Errorf("after the races: %+v %v", q, err)
	}
}

// TestOperatorGroupsKept: a group the operator put the volume in (a limit
// on several volumes, say) keeps the volume's nested subvolumes: the kernel
// puts them there too, and the sweep leaves them.
func TestOperatorGroupsKept(t *testing.T) {
	p, mnt := newPool(t, "")
	v, dir := newVolume(t, p, "pv-a")
	sub := strconv.FormatUint(subvolOf(t, v), 10)
	btrfsCmd(t, "qgroup", "create", "2/1", mnt)
	btrfsCmd(t, "qgroup", "assign", "0/"+sub, "2/1", mnt)
	tenantDo(t, "btrfs", "subvolume", "create", filepath.Join(dir, "nested"))
	if err := p.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	nested, err := btrfs.SubvolID(filepath.Join(dir, "nested"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := btrfs.ReadQgroups(mnt, subvolOf(t, v))
	if err != nil {
		t.Fatal(err)
	}
	got := q.Parents[nested]
	sort.Strings(got)
	if want := []string{"1/" + sub, "2/1"}; !slices.Equal(got, want) {
		t.Errorf("nested subvolume's groups %v, want %v", got, want)
	}
}
