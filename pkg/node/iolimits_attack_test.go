// IO limits at publish, from an outside review: a tenant's pod and a
// careless (or forged) caller of the node service against the cgroups the
// node writes. Real loop devices, mounts and the host's cgroup v1 blkio
// hierarchy: each test makes its pods' cgroups under
// /sys/fs/cgroup/blkio/plinth-attack-<random>/ and removes them after.
package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/iolimit"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/test/testfs"
)

const attackBlkio = "/sys/fs/cgroup/blkio"

var throttleFiles = []string{
	"blkio.throttle.read_iops_device",
	"blkio.throttle.write_iops_device",
	"blkio.throttle.read_bps_device",
	"blkio.throttle.write_bps_device",
}

func attackUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// limitEnv is a node with a real pool, a Mounts with a real Limiter over
// the host's cgroup v1 blkio, and a cgroup directory of the test's own.
type limitEnv struct {
	dir   string
	local *Local
	p     *Mounts
	lim   *iolimit.Limiter
	stop  func() // ends lim's Run
	top   string // this test's cgroup, parent of its pods'
	ctx   context.Context
}

// requireBlkio skips t unless the host's cgroup v1 blkio hierarchy (with
// blk-throttle) is at hand and t runs as root.
func requireBlkio(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat(filepath.Join(attackBlkio, throttleFiles[0])); err != nil {
		t.Skip("no cgroup v1 blkio hierarchy here:", err)
	}
}

// mkCgroupDir makes a real cgroup, removed when the test ends (made later,
// removed first).
func mkCgroupDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Rmdir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
}

// newLimitEnvWith builds the env around a node of the given pool (made by
// mk in dir).
func newLimitEnvWith(t *testing.T, dir string, local *Local) *limitEnv {
	t.Helper()
	requireBlkio(t)
	t.Cleanup(func() { testfs.TearDown(t, dir) }) // last: whatever a failed test left
	lim, err := iolimit.New(filepath.Dir(attackBlkio))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lim.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	top := filepath.Join(attackBlkio, "plinth-attack-"+strings.ToLower(rand.Text()[:10]))
	mkCgroupDir(t, top)
	p := NewMounts(local, mount.NewHost(mount.Exec{}), filepath.Join(dir, "state"))
	p.Limiter = lim
	return &limitEnv{dir: dir, local: local, p: p, lim: lim, stop: stop, top: top, ctx: context.Background()}
}

func newLimitEnv(t *testing.T) *limitEnv {
	t.Helper()
	requireBlkio(t)
	dir, _, local := filePool(t)
	return newLimitEnvWith(t, dir, local)
}

// pod makes a pod cgroup (with one container cgroup in it) under the
// test's top cgroup and returns the pod's UID and directory.
func (e *limitEnv) pod(t *testing.T) (string, string) {
	t.Helper()
	uid := attackUID()
	dir := filepath.Join(e.top, "pod"+uid)
	mkCgroupDir(t, dir)
	mkCgroupDir(t, filepath.Join(dir, "c1"))
	return uid, dir
}

// volume makes a filesystem (or block) volume in pool "p" with limits l
// (nil: none) and stages it; cleanup unstages.
func (e *limitEnv) volume(t *testing.T, poolName, id string, block bool, l *pool.IOLimits) string {
	t.Helper()
	v := pool.Volume{ID: id, Name: id, CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"}
	a := Access{FsType: "ext4"}
	if block {
		v.Mode, v.FsType, a = pool.ModeBlock, "", Access{Block: true}
	}
	if poolName == "bt" {
		v.FsType, a.FsType = "btrfs", "btrfs"
	}
	if _, err := e.local.CreateVolume(e.ctx, poolName, v); err != nil {
		t.Fatal(err)
	}
	if l != nil {
		if _, err := e.local.ModifyVolume(e.ctx, id, pool.Mutable{IOLimits: l}); err != nil {
			t.Fatal(err)
		}
	}
	staging := filepath.Join(e.dir, id+"-staging")
	if err := e.p.Stage(e.ctx, id, staging, a); err != nil {
		t.Fatalf("stage %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := e.p.Unstage(e.ctx, id, staging); err != nil {
			t.Errorf("unstage %s: %v", id, err)
		}
	})
	return staging
}

// publish publishes id at a new target of pod uid; cleanup unpublishes.
func (e *limitEnv) publish(t *testing.T, id, staging, uid string, a Access) (string, error) {
	t.Helper()
	parent := filepath.Join(e.dir, "pods", rand.Text()[:8])
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(parent, id)
	a.PodUID = uid
	err := e.p.Publish(e.ctx, id, staging, target, a)
	t.Cleanup(func() {
		if err := e.p.Unpublish(e.ctx, id, target, true); err != nil {
			t.Errorf("unpublish %s at %s: %v", id, target, err)
		}
	})
	return target, err
}

// rules reads the rules the kernel holds in cgroup dir: file (its short
// name, read_iops…) → device → value.
func rules(t *testing.T, dir string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, f := range throttleFiles {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(b)) {
			dev, val, ok := strings.Cut(strings.TrimSpace(line), " ")
			if !ok {
				continue
			}
			short := strings.TrimSuffix(strings.TrimPrefix(f, "blkio.throttle."), "_device")
			if out[short] == nil {
				out[short] = map[string]string{}
			}
			out[short][dev] = val
		}
	}
	return out
}

// rule is the value of file's rule for dev in dir, "" when none.
func rule(t *testing.T, dir, file, dev string) string {
	t.Helper()
	return rules(t, dir)[file][dev]
}

func devNum(t *testing.T, path string) string {
	t.Helper()
	d, err := iolimit.DeviceOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// attachedDevice is the read-write device of volume id.
func (e *limitEnv) attachedDevice(t *testing.T, id string) string {
	t.Helper()
	pl, _, err := e.local.PoolOfVolume(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	att, ok, err := pl.Attached(e.ctx, id)
	if err != nil || !ok || att.Device == "" {
		t.Fatalf("volume %s attached %+v %v %v", id, att, ok, err)
	}
	return devNum(t, att.Device)
}

// Baseline: two pods with one volume (two targets) both get the volume's
// limits on its loop device, in their cgroups and their containers'; the
// unpublish of one pod's target leaves the other pod's limits in place;
// a class change (ModifyVolume, Reapply) reaches the remaining pod, and a
// class without limits clears them.
func TestAttackIOLimitsTwoPodsOneVolume(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{ReadIOPS: 100, WriteBytesPerSecond: 1 << 20})
	dev := e.attachedDevice(t, "pv-a")
	uidA, podA := e.pod(t)
	uidB, podB := e.pod(t)
	targetA, err := e.publish(t, "pv-a", staging, uidA, Access{FsType: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.publish(t, "pv-a", staging, uidB, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{podA, filepath.Join(podA, "c1"), podB, filepath.Join(podB, "c1")} {
		if got := rule(t, d, "read_iops", dev); got != "100" {
			t.Errorf("%s: read_iops of %s = %q, want 100 (%v)", d, dev, got, rules(t, d))
		}
		if got := rule(t, d, "write_bps", dev); got != "1048576" {
			t.Errorf("%s: write_bps of %s = %q, want 1048576", d, dev, got)
		}
	}
	if err := e.p.Unpublish(e.ctx, "pv-a", targetA, true); err != nil {
		t.Fatal(err)
	}
	if got := rules(t, podA); len(got) != 0 {
		t.Errorf("pod A after its unpublish holds %v", got)
	}
	if got := rule(t, podB, "read_iops", dev); got != "100" {
		t.Errorf("pod B lost its limits when pod A's target was unpublished: %v", rules(t, podB))
	}

	if _, err := e.local.ModifyVolume(e.ctx, "pv-a", pool.Mutable{IOLimits: &pool.IOLimits{WriteIOPS: 7}}); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Reapply(e.ctx, "pv-a"); err != nil {
		t.Fatal(err)
	}
	if got := rules(t, podB); got["write_iops"][dev] != "7" || got["read_iops"][dev] != "" || got["write_bps"][dev] != "" {
		t.Errorf("pod B after the class change holds %v, want write_iops 7 only", got)
	}
	if _, err := e.local.ModifyVolume(e.ctx, "pv-a", pool.Mutable{}); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Reapply(e.ctx, "pv-a"); err != nil {
		t.Fatal(err)
	}
	if got := rules(t, podB); len(got) != 0 {
		t.Errorf("pod B after a class without limits holds %v", got)
	}
}

// A publish of a volume with no limits never fails for its pod UID,
// whatever the volume context says (odd, forged, a pod with no cgroup),
// and writes to no cgroup. A volume with limits and a UID that is no
// pod's refuses the publish and writes nowhere either: not to the
// hierarchy's root, not to the test's other pod.
func TestAttackIOLimitsOddPodUIDs(t *testing.T) {
	e := newLimitEnv(t)
	_, other := e.pod(t)
	rootBefore := rules(t, attackBlkio)
	odd := []string{
		"../../../../sys/fs/cgroup/blkio",
		"..",
		"pod" + attackUID(),
		"*",
		attackUID(), // valid, no cgroup
		strings.ToUpper(attackUID()),
		attackUID() + "/../..",
		"kubepods",
		"\x00",
	}
	free := e.volume(t, "p", "pv-free", false, nil)
	for _, uid := range odd {
		if _, err := e.publish(t, "pv-free", free, uid, Access{FsType: "ext4"}); err != nil {
			t.Errorf("publish of a volume without limits with pod UID %q: %v", uid, err)
		}
	}
	limited := e.volume(t, "p", "pv-lim", false, &pool.IOLimits{ReadIOPS: 5})
	for _, uid := range odd {
		if _, err := e.publish(t, "pv-lim", limited, uid, Access{FsType: "ext4"}); err == nil {
			t.Errorf("publish of a volume with limits for pod UID %q succeeded", uid)
		}
	}
	if got := rules(t, other); len(got) != 0 {
		t.Errorf("another pod's cgroup holds %v", got)
	}
	if got := rules(t, e.top); len(got) != 0 {
		t.Errorf("the test's top cgroup holds %v", got)
	}
	if got := rules(t, attackBlkio); fmt.Sprint(got) != fmt.Sprint(rootBefore) {
		t.Errorf("the blkio root's rules changed: %v -> %v", rootBefore, got)
	}
}

// The kubelet makes the pod's cgroup before it publishes; where plinth
// cannot find it (a cgroup driver or root it does not see), the publish
// of a volume with limits fails, and a retry once the cgroup is there
// completes it with the limits applied.
func TestAttackIOLimitsRetriedOncePodCgroupAppears(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{ReadIOPS: 100})
	dev := e.attachedDevice(t, "pv-a")
	uid := attackUID()
	target := filepath.Join(e.dir, "pod-target")
	t.Cleanup(func() { _ = e.p.Unpublish(e.ctx, "pv-a", target, true) })
	a := Access{FsType: "ext4", PodUID: uid}
	if err := e.p.Publish(e.ctx, "pv-a", staging, target, a); !errors.Is(err, iolimit.ErrPodNotFound) {
		t.Fatalf("publish for a pod without a cgroup = %v, want ErrPodNotFound", err)
	}
	pod := filepath.Join(e.top, "pod"+uid)
	mkCgroupDir(t, pod)
	if err := e.p.Publish(e.ctx, "pv-a", staging, target, a); err != nil {
		t.Fatalf("retried publish: %v", err)
	}
	if got := rule(t, pod, "read_iops", dev); got != "100" {
		t.Errorf("pod after the retried publish holds %v", rules(t, pod))
	}
	if m, ok, _ := mount.NewHost(mount.Exec{}).MountOf(target); !ok || m.FSType != "ext4" {
		t.Errorf("target after the retried publish: %+v %v", m, ok)
	}
}

// A publish whose limits cannot be applied answers FailedPrecondition
// (ErrPodNotFound) or Internal: final errors to the kubelet, which then
// does not record the volume as mounted, even uncertainly, and never
// unpublishes it if the pod goes away before a retry succeeds. The bind
// plinth made must not outlive the failed call: a bind left at the
// target (and its publish record) keeps the volume published for ever,
// so its unstage is refused (ErrInUse) and its delete too.
func TestAttackFailedLimitLeavesBindMounted(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{ReadIOPS: 100})
	target := filepath.Join(e.dir, "pod-target")
	t.Cleanup(func() { _ = e.p.Unpublish(e.ctx, "pv-a", target, true) })
	err := e.p.Publish(e.ctx, "pv-a", staging, target, Access{FsType: "ext4", PodUID: attackUID()})
	if err == nil {
		t.Fatal("publish for a pod without a cgroup succeeded")
	}
	if m, ok, _ := mount.NewHost(mount.Exec{}).MountOf(target); ok {
		t.Errorf("a failed publish (%v) left %s mounted at the target (source %s)", err, m.FSType, m.Source)
	}
	if _, had, _ := e.p.targets.get(target); had {
		t.Error("a failed publish left its publish record")
	}
	if err := e.p.Unstage(e.ctx, "pv-a", staging); err != nil {
		t.Errorf("unstage after the failed publish (the pod went away, the kubelet unstages): %v", err)
	} else if err := e.p.Stage(e.ctx, "pv-a", staging, Access{FsType: "ext4"}); err != nil {
		t.Fatalf("stage again for the cleanup: %v", err)
	}
}

// A read-only block publish binds a read-only loop device of its own
// (AttachReadOnly), not the volume's read-write one: the pod reads
// through that device, so its limits must be on it, or a tenant who asks
// for readOnly escapes the read limits of the volume's class.
func TestAttackReadOnlyBlockPublishEscapesLimits(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-blk", true, &pool.IOLimits{ReadIOPS: 100, ReadBytesPerSecond: 1 << 20})
	uid, pod := e.pod(t)
	target, err := e.publish(t, "pv-blk", staging, uid, Access{Block: true, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ro := devNum(t, target) // the device node bound at the target
	if ro == e.attachedDevice(t, "pv-blk") {
		t.Fatalf("read-only publish bound the read-write device %s", ro)
	}
	if got := rule(t, pod, "read_iops", ro); got != "100" {
		t.Errorf("the pod reads through %s, which holds no read limit: the pod's rules are %v", ro, rules(t, pod))
	}
	if got := rule(t, pod, "read_bps", ro); got != "1048576" {
		t.Errorf("read_bps of %s = %q, want 1048576", ro, got)
	}
}

// The kubelet never publishes one target for two pods (the pod's UID is
// part of the target path). A second publish of a target with another
// pod's UID is no retry: it must not move the limits off the pod that
// has the volume, leaving it unlimited.
func TestAttackRepublishOtherPodLiftsLimits(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{ReadIOPS: 100})
	dev := e.attachedDevice(t, "pv-a")
	uidA, podA := e.pod(t)
	uidB, _ := e.pod(t)
	target, err := e.publish(t, "pv-a", staging, uidA, Access{FsType: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	err = e.p.Publish(e.ctx, "pv-a", staging, target, Access{FsType: "ext4", PodUID: uidB})
	if got := rule(t, podA, "read_iops", dev); got != "100" {
		t.Errorf("after a publish of pod A's target for pod B (%v), pod A holds %v: its limits are gone", err, rules(t, podA))
	}
}

// A node agent restart (a new Limiter, whose watches ended with the old
// one) holds every published pod to its volume's limits again, a
// container made after the restart included.
func TestAttackIOLimitsReapplyAllAfterRestart(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{WriteIOPS: 9})
	dev := e.attachedDevice(t, "pv-a")
	uid, pod := e.pod(t)
	if _, err := e.publish(t, "pv-a", staging, uid, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	// The old agent is gone: its rules stay in the kernel, but a new
	// container gets none until the new agent looks again.
	e.stop()
	lim, err := iolimit.New(filepath.Dir(attackBlkio))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lim.Run(ctx) }()
	defer func() { cancel(); <-done }()
	p2 := NewMounts(e.local, mount.NewHost(mount.Exec{}), filepath.Join(e.dir, "state"))
	p2.Limiter = lim
	if err := p2.ReapplyAll(e.ctx); err != nil {
		t.Fatal(err)
	}
	c2 := filepath.Join(pod, "c2")
	mkCgroupDir(t, c2)
	deadline := time.Now().Add(10 * time.Second)
	for rule(t, c2, "write_iops", dev) != "9" {
		if time.Now().After(deadline) {
			t.Fatalf("a container made after the restart holds %v", rules(t, c2))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The new agent's unpublish clears the pod.
	e.p = p2
}

// A record with a negative limit (written by hand, or by a careless
// tool: nothing but the CRD's schema and ParseMutable bound them) must
// not become the largest limit the kernel takes, which is no limit at
// all while the node says the volume is limited: it is refused.
func TestAttackNegativeLimitInRecord(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{ReadIOPS: 100})
	// The record, as an administrator edits it.
	rec := filepath.Join(e.dir, "pool", "volumes", "pv-a.json")
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Skipf("record not where this test looks: %v", err)
	}
	edited := regexp.MustCompile(`"readIOPS":\s*100`).ReplaceAllString(string(b), `"readIOPS": -1`)
	if edited == string(b) {
		t.Fatalf("record has no readIOPS to edit: %s", b)
	}
	if err := os.WriteFile(rec, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	// The node reads its records when it starts.
	pl, err := reopenFilePool(e.dir)
	if err != nil {
		t.Fatalf("reopen pool with a negative limit in a record: %v", err)
	}
	local, err := NewLocal(pl)
	if err != nil {
		t.Fatal(err)
	}
	p := NewMounts(local, mount.NewHost(mount.Exec{}), filepath.Join(e.dir, "state"))
	p.Limiter = e.lim
	e.local, e.p = local, p
	uid, pod := e.pod(t)
	_, err = e.publish(t, "pv-a", staging, uid, Access{FsType: "ext4"})
	if err == nil {
		t.Errorf("publish with readIOPS -1 in the volume's record succeeded; the pod holds %v", rules(t, pod))
	} else if !errors.Is(err, pool.ErrInvalid) && !errors.Is(err, iolimit.ErrInvalid) {
		t.Errorf("publish with readIOPS -1: %v, want an invalid-argument error", err)
	}
}

// newBtrfsEnv is a limitEnv over a btrfs pool "bt" on a loop-mounted
// btrfs (discard off, so that only a trim gives blocks back); it returns
// the env and the backing image of the btrfs.
func newBtrfsEnv(t *testing.T) (*limitEnv, string, string) {
	t.Helper()
	requireBlkio(t)
	testfs.RequireHost(t, "btrfs")
	fs := testfs.Filesystem(t, "btrfs", 1<<30)
	if err := unix.Mount("", fs, "", unix.MS_REMOUNT, "nodiscard"); err != nil {
		t.Fatalf("remount nodiscard: %v", err)
	}
	dir := filepath.Join(fs, "pool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pl, err := btrfs.New(context.Background(), btrfs.Config{Name: "bt", Dir: dir, Run: mount.Exec{}})
	if err != nil {
		t.Fatal(err)
	}
	local, err := NewLocal(pl)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	return newLimitEnvWith(t, work, local), fs, filepath.Join(filepath.Dir(fs), "backing.img")
}

// btrfsDevice is the device number of the btrfs under the pool: the
// loop device the backing image is attached as.
func btrfsDevice(t *testing.T, backing string) string {
	t.Helper()
	devs, err := mount.NewLoop("/sys", "/dev").Known(backing)
	if err != nil || len(devs) != 1 {
		t.Fatalf("loop devices of %s: %v %v", backing, devs, err)
	}
	return devNum(t, devs[0].Path)
}

// A btrfs volume is a subvolume: its IO goes to the btrfs's devices, and
// the pods it is published to are held to its limits there. Two volumes
// of one pool in one pod share the device: the tighter limit holds while
// both are published, the other's alone once one is unpublished.
func TestAttackBtrfsVolumesLimits(t *testing.T) {
	e, _, backing := newBtrfsEnv(t)
	dev := btrfsDevice(t, backing)
	sa := e.volume(t, "bt", "pv-a", false, &pool.IOLimits{ReadIOPS: 100})
	sb := e.volume(t, "bt", "pv-b", false, &pool.IOLimits{ReadIOPS: 300})
	uid, pod := e.pod(t)
	ta, err := e.publish(t, "pv-a", sa, uid, Access{FsType: "btrfs"})
	if err != nil {
		t.Fatalf("publish of a btrfs volume with limits: %v", err)
	}
	if _, err := e.publish(t, "pv-b", sb, uid, Access{FsType: "btrfs"}); err != nil {
		t.Fatalf("publish of a second btrfs volume with limits: %v", err)
	}
	if got := rule(t, pod, "read_iops", dev); got != "100" {
		t.Errorf("pod with both volumes: read_iops of %s = %q, want 100 (%v)", dev, got, rules(t, pod))
	}
	if err := e.p.Unpublish(e.ctx, "pv-a", ta, true); err != nil {
		t.Fatal(err)
	}
	if got := rule(t, pod, "read_iops", dev); got != "300" {
		t.Errorf("pod after pv-a's unpublish: read_iops of %s = %q, want pv-b's 300", dev, got)
	}
}

// allocatedBytes is what a file holds on its filesystem.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// writeAndDrop writes n bytes to a new file in dir, syncs, and removes it:
// blocks the filesystem no longer uses, which only a trim (or discard)
// gives back to what lies under it.
func writeAndDrop(t *testing.T, dir string, n int) {
	t.Helper()
	f := filepath.Join(dir, "junk")
	buf := make([]byte, n)
	rand.Read(buf)
	if err := os.WriteFile(f, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if out, err := exec.Command("sync", "-f", dir).CombinedOutput(); err != nil {
		t.Logf("sync -f: %v %s", err, out)
	}
}

// Reapply trims a thin filesystem volume of a file pool: the volume's
// image gives back the blocks its filesystem freed. A btrfs volume is
// neither thin nor thick (a subvolume): its staging mount is the pool's
// filesystem, so a FITRIM there trims the whole pool (every tenant's free
// space, the pool's own disk), under the volume's lock, at every class
// change of any of its volumes. It must not.
func TestAttackTrimReachesBtrfsPool(t *testing.T) {
	e, fs, backing := newBtrfsEnv(t)
	e.volume(t, "bt", "pv-a", false, nil)
	// Free space in the pool's filesystem, outside the volume.
	writeAndDrop(t, fs, 64<<20)
	before := allocatedBytes(t, backing)
	if err := e.p.Reapply(e.ctx, "pv-a"); err != nil {
		t.Fatalf("reapply: %v", err)
	}
	if after := allocatedBytes(t, backing); after < before-16<<20 {
		t.Errorf("reapply of btrfs volume pv-a trimmed the pool's filesystem: its backing image went from %d to %d bytes", before, after)
	}
}

// Reapply trims a thin filesystem volume (its image gives the freed
// blocks back) and leaves a thick one's image whole. A trim acts only on
// the volume's own staging mount: one covered by another volume's mount,
// or a stage record pointing at another volume's staging path or through
// a symlink, trims nothing of the other volume.
func TestAttackTrimOnlyOwnThinMount(t *testing.T) {
	e := newLimitEnv(t)
	img := func(id string) string { return filepath.Join(e.dir, "pool", "volumes", id+".img") }
	thin := e.volume(t, "p", "pv-thin", false, nil)
	writeAndDrop(t, thin, 32<<20)
	before := allocatedBytes(t, img("pv-thin"))
	if err := e.p.Reapply(e.ctx, "pv-thin"); err != nil {
		t.Fatal(err)
	}
	if after := allocatedBytes(t, img("pv-thin")); after > before-16<<20 {
		t.Errorf("thin volume's image after reapply: %d bytes, before %d: not trimmed", after, before)
	}

	// A thick volume (thin → thick) is not trimmed.
	if _, err := e.local.CreateVolume(e.ctx, "p", pool.Volume{ID: "pv-thick", Name: "pv-thick", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.local.ModifyVolume(e.ctx, "pv-thick", pool.Mutable{Thick: true}); err != nil {
		t.Fatal(err)
	}
	thickStaging := filepath.Join(e.dir, "pv-thick-staging")
	if err := e.p.Stage(e.ctx, "pv-thick", thickStaging, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.p.Unstage(e.ctx, "pv-thick", thickStaging) })
	writeAndDrop(t, thickStaging, 8<<20)
	if err := e.p.Reapply(e.ctx, "pv-thick"); err != nil {
		t.Fatal(err)
	}
	if a := allocatedBytes(t, img("pv-thick")); a < 64<<20 {
		t.Errorf("thick volume's image after reapply holds %d bytes: trimmed", a)
	}

	// Another thin volume, its freed blocks the bait.
	other := e.volume(t, "p", "pv-other", false, nil)
	check := func(what string) {
		t.Helper()
		writeAndDrop(t, other, 32<<20)
		before := allocatedBytes(t, img("pv-other"))
		err := e.p.Reapply(e.ctx, "pv-thin")
		if after := allocatedBytes(t, img("pv-other")); after < before-16<<20 {
			t.Errorf("%s: reapply of pv-thin (%v) trimmed pv-other: %d -> %d bytes", what, err, before, after)
		}
	}
	// pv-other's mount over pv-thin's staging path.
	if err := unix.Mount(other, thin, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	check("covered staging mount")
	if err := unix.Unmount(thin, 0); err != nil {
		t.Fatal(err)
	}
	// The stage record pointing at pv-other's staging path.
	if err := e.p.staged.put("pv-thin", other); err != nil {
		t.Fatal(err)
	}
	check("stage record pointing elsewhere")
	// Through a symlink to pv-other's staging path.
	link := filepath.Join(e.dir, "link")
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	if err := e.p.staged.put("pv-thin", link); err != nil {
		t.Fatal(err)
	}
	check("stage record through a symlink")
	if err := e.p.staged.put("pv-thin", thin); err != nil {
		t.Fatal(err)
	}
}

// reopenFilePool opens the file pool "p" of filePool's dir again, as a
// restarted node does.
func reopenFilePool(dir string) (*file.Pool, error) {
	return file.New(file.Config{Name: "p", Dir: filepath.Join(dir, "pool"), Loops: mount.NewLoop("/sys", "/dev")})
}

// A thin filesystem volume staged read-only (a ReadOnlyMany claim's
// stage, mount flag ro) has nothing to give back that a trim could reach
// and nothing written since: a class change of it must not fail on the
// trim (its pods' limits are what matters), or the change is retried for
// ever.
func TestAttackTrimReadOnlyStaging(t *testing.T) {
	dir, _, local := filePool(t)
	t.Cleanup(func() { testfs.TearDown(t, dir) })
	p := NewMounts(local, mount.NewHost(mount.Exec{}), filepath.Join(dir, "state"))
	ctx := context.Background()
	if _, err := local.CreateVolume(ctx, "p", pool.Volume{ID: "pv-ro", Name: "pv-ro", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	// Formatted by a first read-write stage, then staged read-only.
	staging := filepath.Join(dir, "staging")
	if err := p.Stage(ctx, "pv-ro", staging, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Unstage(ctx, "pv-ro", staging); err != nil {
		t.Fatal(err)
	}
	if err := p.Stage(ctx, "pv-ro", staging, Access{FsType: "ext4", MountFlags: []string{"ro"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Unstage(ctx, "pv-ro", staging) })
	if err := p.Reapply(ctx, "pv-ro"); err != nil {
		t.Errorf("reapply of a volume staged read-only: %v", err)
	}
}

// A publish of a volume without limits succeeds whatever pod UID the
// volume context says, and the UID is recorded. A later class with limits
// must then reach the pods it can (it does) without failing on the UID
// that names no pod: a Reapply error makes the reconciler try the change
// again, and this one fails the same way until that target goes.
func TestAttackOddPodUIDBlocksReapply(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, nil)
	dev := e.attachedDevice(t, "pv-a")
	uid, pod := e.pod(t)
	if _, err := e.publish(t, "pv-a", staging, uid, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.publish(t, "pv-a", staging, "../../not-a-pod", Access{FsType: "ext4"}); err != nil {
		t.Fatalf("publish of a volume without limits with an odd pod UID: %v", err)
	}
	if _, err := e.local.ModifyVolume(e.ctx, "pv-a", pool.Mutable{IOLimits: &pool.IOLimits{ReadIOPS: 3}}); err != nil {
		t.Fatal(err)
	}
	err := e.p.Reapply(e.ctx, "pv-a")
	if got := rule(t, pod, "read_iops", dev); got != "3" {
		t.Errorf("the real pod after the class change holds %v", rules(t, pod))
	}
	if err != nil {
		t.Errorf("reapply fails on a publish whose pod UID names no pod: %v", err)
	}
}

// A crash between a class change's record and its reaching the pods: the
// record says no limits, the pod's cgroups still hold the old ones, and no
// process keeps them. The new agent clears them when it starts, and keeps
// what another volume of the pod holds on the same device.
func TestReapplyAllClearsLimitsLiftedBeforeACrash(t *testing.T) {
	e := newLimitEnv(t)
	staging := e.volume(t, "p", "pv-a", false, &pool.IOLimits{ReadIOPS: 7})
	dev := e.attachedDevice(t, "pv-a")
	uid, pod := e.pod(t)
	if _, err := e.publish(t, "pv-a", staging, uid, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	if got := rule(t, pod, "read_iops", dev); got != "7" {
		t.Fatalf("before: %v", rules(t, pod))
	}
	// The change is recorded, and the agent dies before Reapply.
	if _, err := e.local.ModifyVolume(e.ctx, "pv-a", pool.Mutable{}); err != nil {
		t.Fatal(err)
	}
	e.stop()
	if got := rule(t, pod, "read_iops", dev); got != "7" {
		t.Fatalf("the old agent's rules are gone with it: %v", rules(t, pod))
	}
	lim, err := iolimit.New(filepath.Dir(attackBlkio))
	if err != nil {
		t.Fatal(err)
	}
	p2 := NewMounts(e.local, mount.NewHost(mount.Exec{}), filepath.Join(e.dir, "state"))
	p2.Limiter = lim
	if err := p2.ReapplyAll(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := rule(t, pod, "read_iops", dev); got != "" {
		t.Errorf("after the new agent started, the pod still holds the lifted limit: %v", rules(t, pod))
	}
	e.p = p2
}
