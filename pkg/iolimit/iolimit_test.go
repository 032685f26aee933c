package iolimit_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/iolimit"
)

var v1Files = []string{
	"blkio.throttle.read_iops_device",
	"blkio.throttle.write_iops_device",
	"blkio.throttle.read_bps_device",
	"blkio.throttle.write_bps_device",
}

func newUID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// fakeV1 makes a cgroup v1 hierarchy of regular files standing in for
// cgroup files: root/blkio. It returns root.
func fakeV1(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "cgroup")
	mkCgroup(t, filepath.Join(root, "blkio"), 1)
	return root
}

// fakeV2 makes a cgroup v2 hierarchy with the io controller at root.
func fakeV2(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "cgroup")
	mkCgroup(t, root, 2)
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// mkCgroup makes dir, and its parents, with the files of a cgroup of
// version v.
func mkCgroup(t *testing.T, dir string, v int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := v1Files
	if v == 2 {
		files = []string{"io.max"}
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// addCgroup makes the cgroup dir at once, files and all, as mkdir in
// cgroupfs does: made elsewhere on the filesystem and renamed into place
// (IN_MOVED_TO, a Create to fsnotify like mkdir's IN_CREATE).
func addCgroup(t *testing.T, dir string, sub ...string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), "new")
	mkCgroup(t, tmp, 1)
	for _, s := range sub {
		mkCgroup(t, filepath.Join(tmp, s), 1)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
}

// rulesV1 replays the lines written to a stand-in throttle file as the
// kernel would take them: device → value, 0 removing the rule.
func rulesV1(t *testing.T, dir, file string) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 || !strings.HasSuffix(line, "\n") {
			t.Fatalf("%s/%s: line %q is not one whole rule", dir, file, line)
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatalf("%s/%s: line %q: %v", dir, file, line, err)
		}
		if n == 0 {
			delete(m, f[0])
		} else {
			m[f[0]] = n
		}
	}
	return m
}

// v1Table is every throttle file's rules in dir, by file.
func v1Table(t *testing.T, dir string) map[string]map[string]uint64 {
	t.Helper()
	m := map[string]map[string]uint64{}
	for _, f := range v1Files {
		if r := rulesV1(t, dir, f); len(r) > 0 {
			m[strings.TrimPrefix(f, "blkio.throttle.")] = r
		}
	}
	return m
}

// rulesV2 replays the lines written to a stand-in io.max: device → its
// limits, a line of max only removing the device.
func rulesV2(t *testing.T, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "io.max"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for line := range strings.Lines(string(b)) {
		dev, rest, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
		if !ok || !strings.HasSuffix(line, "\n") {
			t.Fatalf("io.max: line %q is not one whole rule", line)
		}
		if rest == "riops=max wiops=max rbps=max wbps=max" {
			delete(m, dev)
		} else {
			m[dev] = rest
		}
	}
	return m
}

// run runs x.Run until the test ends.
func run(t *testing.T, x *iolimit.Limiter) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- x.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// eventually waits, up to a deadline, until got() is want.
func eventually[T any](t *testing.T, what string, want T, got func() T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := got()
		diff := cmp.Diff(want, g)
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (-want +got):\n%s", what, diff)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newLimiter(t *testing.T, root string) *iolimit.Limiter {
	t.Helper()
	x, err := iolimit.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

var (
	dev1 = iolimit.Device{Major: 7, Minor: 0}
	dev2 = iolimit.Device{Major: 253, Minor: 3}
)

func TestNew(t *testing.T) {
	for name, tc := range map[string]struct {
		root    func(t *testing.T) string
		version int
		err     error
	}{
		"v1": {root: fakeV1, version: 1},
		"v2": {root: fakeV2, version: 2},
		"v2 without io": {root: func(t *testing.T) string {
			root := fakeV2(t)
			os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu memory iomem\n"), 0o644)
			return root
		}, err: iolimit.ErrUnsupported},
		"v1 without throttling": {root: func(t *testing.T) string {
			root := fakeV1(t)
			os.Remove(filepath.Join(root, "blkio", v1Files[0]))
			return root
		}, err: iolimit.ErrUnsupported},
		"nothing": {root: func(t *testing.T) string { return t.TempDir() }, err: iolimit.ErrUnsupported},
	} {
		t.Run(name, func(t *testing.T) {
			x, err := iolimit.New(tc.root(t))
			if !errors.Is(err, tc.err) {
				t.Fatalf("New: %v, want %v", err, tc.err)
			}
			if err == nil && x.Version() != tc.version {
				t.Errorf("Version = %d, want %d", x.Version(), tc.version)
			}
		})
	}
}

func TestLimitsIsZero(t *testing.T) {
	if !(iolimit.Limits{}).IsZero() || (iolimit.Limits{WriteBytesPerSecond: 1}).IsZero() {
		t.Error("IsZero is wrong")
	}
}

// The kubelet's pod cgroup names, of either driver, under any cgroup
// root, and the rules written there.
func TestFindPod(t *testing.T) {
	uid := newUID(t)
	u := strings.ReplaceAll(uid, "-", "_")
	for name, dir := range map[string]string{
		"cgroupfs burstable":   "kubepods/burstable/pod" + uid,
		"cgroupfs guaranteed":  "kubepods/pod" + uid,
		"cgroupfs under root":  "plinth-e2e-w1/kubepods/besteffort/pod" + uid,
		"systemd burstable":    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice",
		"systemd guaranteed":   "kubepods.slice/kubepods-pod" + u + ".slice",
		"systemd under root":   "plinth.slice/plinth-kubepods.slice/plinth-kubepods-besteffort.slice/plinth-kubepods-besteffort-pod" + u + ".slice",
		"static pod":           "kubepods/burstable/pod" + strings.ReplaceAll(uid, "-", ""),
		"depth 8, the deepest": "a/b/c/d/e/f/g/pod" + uid,
	} {
		t.Run(name, func(t *testing.T) {
			root := fakeV1(t)
			podUID := uid
			if name == "static pod" {
				podUID = strings.ReplaceAll(uid, "-", "")
			}
			// Other pods, one of them with a cgroup named like this
			// pod's below it, which is not looked into.
			other := newUID(t)
			mkCgroup(t, filepath.Join(root, "blkio", "kubepods/burstable/pod"+other, "pod"+podUID), 1)
			pod := filepath.Join(root, "blkio", dir)
			mkCgroup(t, pod, 1)
			x := newLimiter(t, root)
			if err := x.Apply(t.Context(), "k", podUID, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 10}); err != nil {
				t.Fatal(err)
			}
			want := map[string]map[string]uint64{"read_iops_device": {"7:0": 10}}
			if diff := cmp.Diff(want, v1Table(t, pod)); diff != "" {
				t.Errorf("pod cgroup (-want +got):\n%s", diff)
			}
			if got := v1Table(t, filepath.Join(root, "blkio", "kubepods/burstable/pod"+other, "pod"+podUID)); len(got) > 0 {
				t.Errorf("a cgroup inside another pod's got rules: %v", got)
			}
		})
	}
	t.Run("too deep", func(t *testing.T) {
		root := fakeV1(t)
		mkCgroup(t, filepath.Join(root, "blkio", "a/b/c/d/e/f/g/h/pod"+uid), 1)
		x := newLimiter(t, root)
		err := x.Apply(t.Context(), "k", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 10})
		if !errors.Is(err, iolimit.ErrPodNotFound) {
			t.Fatalf("Apply: %v, want ErrPodNotFound", err)
		}
	})
}

// cgroup v1: rules in the pod's cgroup and every one below it, changed in
// place, and removed ("MAJ:MIN 0") by Forget.
func TestApplyV1(t *testing.T) {
	root := fakeV1(t)
	uid := newUID(t)
	pod := filepath.Join(root, "blkio", "kubepods", "burstable", "pod"+uid)
	dirs := []string{pod, filepath.Join(pod, "c1"), filepath.Join(pod, "c1", "nested"), filepath.Join(pod, "pause")}
	for _, d := range dirs {
		mkCgroup(t, d, 1)
	}
	x := newLimiter(t, root)
	ctx := t.Context()

	devs := []iolimit.Device{dev1, dev2}
	if err := x.Apply(ctx, "vol-a", uid, devs, iolimit.Limits{ReadIOPS: 100, WriteIOPS: 50, ReadBytesPerSecond: 1 << 20, WriteBytesPerSecond: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]uint64{
		"read_iops_device":  {"7:0": 100, "253:3": 100},
		"write_iops_device": {"7:0": 50, "253:3": 50},
		"read_bps_device":   {"7:0": 1 << 20, "253:3": 1 << 20},
		"write_bps_device":  {"7:0": 2 << 20, "253:3": 2 << 20},
	}
	for _, d := range dirs {
		if diff := cmp.Diff(want, v1Table(t, d)); diff != "" {
			t.Errorf("%s after Apply (-want +got):\n%s", d, diff)
		}
	}

	// A class change: in place; a zero field clears that limit.
	if err := x.Apply(ctx, "vol-a", uid, devs, iolimit.Limits{ReadIOPS: 200, WriteBytesPerSecond: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	want = map[string]map[string]uint64{
		"read_iops_device": {"7:0": 200, "253:3": 200},
		"write_bps_device": {"7:0": 2 << 20, "253:3": 2 << 20},
	}
	for _, d := range dirs {
		if diff := cmp.Diff(want, v1Table(t, d)); diff != "" {
			t.Errorf("%s after the change (-want +got):\n%s", d, diff)
		}
	}

	if err := x.Forget(ctx, "vol-a"); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if got := v1Table(t, d); len(got) > 0 {
			t.Errorf("%s after Forget: %v", d, got)
		}
		b, _ := os.ReadFile(filepath.Join(d, "blkio.throttle.read_iops_device"))
		if !strings.HasSuffix(string(b), "7:0 0\n253:3 0\n") {
			t.Errorf("%s: Forget wrote %q, want the 0 rules last", d, b)
		}
	}
	// Forget again, and of a key never applied: nothing to do.
	if err := x.Forget(ctx, "vol-a"); err != nil {
		t.Error(err)
	}
	if err := x.Forget(ctx, "never"); err != nil {
		t.Error(err)
	}
}

// IOPS the kernel cannot keep (it has 32 bits for them) are no limit,
// not a truncated one.
func TestApplyV1ClampsIOPS(t *testing.T) {
	root := fakeV1(t)
	uid := newUID(t)
	pod := filepath.Join(root, "blkio", "kubepods", "pod"+uid)
	mkCgroup(t, pod, 1)
	x := newLimiter(t, root)
	if err := x.Apply(t.Context(), "k", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 1 << 32, ReadBytesPerSecond: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]uint64{
		"read_iops_device": {"7:0": 1<<32 - 1},
		"read_bps_device":  {"7:0": 1 << 40},
	}
	if diff := cmp.Diff(want, v1Table(t, pod)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// Two volumes in one pod: each key's devices, the tightest limit where
// both name one device, and forgetting one leaves the other's.
func TestTwoKeysOnePod(t *testing.T) {
	root := fakeV1(t)
	uid := newUID(t)
	pod := filepath.Join(root, "blkio", "kubepods", "pod"+uid)
	mkCgroup(t, pod, 1)
	mkCgroup(t, filepath.Join(pod, "c1"), 1)
	x := newLimiter(t, root)
	ctx := t.Context()
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 100, WriteIOPS: 10}); err != nil {
		t.Fatal(err)
	}
	if err := x.Apply(ctx, "b", uid, []iolimit.Device{dev1, dev2}, iolimit.Limits{ReadIOPS: 50, WriteBytesPerSecond: 4096}); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]uint64{
		"read_iops_device":  {"7:0": 50, "253:3": 50},
		"write_iops_device": {"7:0": 10},
		"write_bps_device":  {"7:0": 4096, "253:3": 4096},
	}
	for _, d := range []string{pod, filepath.Join(pod, "c1")} {
		if diff := cmp.Diff(want, v1Table(t, d)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", d, diff)
		}
	}
	if err := x.Forget(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	want = map[string]map[string]uint64{
		"read_iops_device":  {"7:0": 100},
		"write_iops_device": {"7:0": 10},
	}
	for _, d := range []string{pod, filepath.Join(pod, "c1")} {
		if diff := cmp.Diff(want, v1Table(t, d)); diff != "" {
			t.Errorf("%s after Forget b (-want +got):\n%s", d, diff)
		}
	}
	// Zero limits for a key are Forget.
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, iolimit.Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := v1Table(t, pod); len(got) > 0 {
		t.Errorf("after zero limits: %v", got)
	}
}

// The watch: a container cgroup made after Apply gets the rules, and the
// ones below it; one made after Forget does not; the rules of a pod
// applied before Run are written to what was made meanwhile when it
// starts.
func TestWatchV1(t *testing.T) {
	root := fakeV1(t)
	uid, other := newUID(t), newUID(t)
	pod := filepath.Join(root, "blkio", "kubepods", "burstable", "pod"+uid)
	pod2 := filepath.Join(root, "blkio", "kubepods", "besteffort", "pod"+other)
	mkCgroup(t, pod, 1)
	mkCgroup(t, pod2, 1)
	x := newLimiter(t, root)
	ctx := t.Context()
	l := iolimit.Limits{ReadIOPS: 100}
	want := map[string]map[string]uint64{"read_iops_device": {"7:0": 100}}
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, l); err != nil {
		t.Fatal(err)
	}
	// Made before Run: written when it starts.
	addCgroup(t, filepath.Join(pod, "early"))
	run(t, x)
	eventually(t, "early cgroup", want, func() map[string]map[string]uint64 { return v1Table(t, filepath.Join(pod, "early")) })

	addCgroup(t, filepath.Join(pod, "c1"))
	eventually(t, "new container cgroup", want, func() map[string]map[string]uint64 { return v1Table(t, filepath.Join(pod, "c1")) })
	// Made in a cgroup made since: watched too.
	addCgroup(t, filepath.Join(pod, "c1", "sub"))
	eventually(t, "cgroup in a new cgroup", want, func() map[string]map[string]uint64 { return v1Table(t, filepath.Join(pod, "c1", "sub")) })
	// A cgroup that arrives with cgroups in it: all of them.
	addCgroup(t, filepath.Join(pod, "c2"), "x", "x/y")
	eventually(t, "cgroup below a new one", want, func() map[string]map[string]uint64 { return v1Table(t, filepath.Join(pod, "c2", "x", "y")) })

	// A class change reaches them all.
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 7}); err != nil {
		t.Fatal(err)
	}
	want = map[string]map[string]uint64{"read_iops_device": {"7:0": 7}}
	for _, d := range []string{"", "early", "c1", "c1/sub", "c2", "c2/x", "c2/x/y"} {
		if diff := cmp.Diff(want, v1Table(t, filepath.Join(pod, d))); diff != "" {
			t.Errorf("%s after the change (-want +got):\n%s", d, diff)
		}
	}

	// After Forget, a new cgroup gets nothing. Events are handled in
	// order: once a cgroup made later in another pod has its rules, the
	// first was handled.
	if err := x.Apply(ctx, "b", other, []iolimit.Device{dev2}, l); err != nil {
		t.Fatal(err)
	}
	if err := x.Forget(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	addCgroup(t, filepath.Join(pod, "late"))
	addCgroup(t, filepath.Join(pod2, "c1"))
	eventually(t, "other pod's new cgroup", map[string]map[string]uint64{"read_iops_device": {"253:3": 100}},
		func() map[string]map[string]uint64 { return v1Table(t, filepath.Join(pod2, "c1")) })
	if got := v1Table(t, filepath.Join(pod, "late")); len(got) > 0 {
		t.Errorf("cgroup made after Forget got rules: %v", got)
	}
}

// A pod's cgroup removed, and made again elsewhere (another QoS class),
// is found again by the next Apply; Forget of a pod whose cgroup is gone
// is no error.
func TestPodCgroupGone(t *testing.T) {
	root := fakeV1(t)
	uid := newUID(t)
	pod := filepath.Join(root, "blkio", "kubepods", "burstable", "pod"+uid)
	mkCgroup(t, pod, 1)
	mkCgroup(t, filepath.Join(pod, "c1"), 1)
	x := newLimiter(t, root)
	run(t, x)
	ctx := t.Context()
	l := iolimit.Limits{WriteIOPS: 5}
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, l); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(pod); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(root, "blkio", "kubepods", "besteffort", "pod"+uid)
	mkCgroup(t, moved, 1)
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, l); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]uint64{"write_iops_device": {"7:0": 5}}
	if diff := cmp.Diff(want, v1Table(t, moved)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if err := os.RemoveAll(moved); err != nil {
		t.Fatal(err)
	}
	if err := x.Forget(ctx, "a"); err != nil {
		t.Errorf("Forget of a pod whose cgroup is gone: %v", err)
	}
	// Not there at all.
	err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, l)
	if !errors.Is(err, iolimit.ErrPodNotFound) {
		t.Errorf("Apply to no cgroup: %v, want ErrPodNotFound", err)
	}
}

// cgroup v2: one io.max line on the pod's cgroup, max for no limit,
// changed in place; Forget leaves max only; nothing below is written.
func TestApplyV2(t *testing.T) {
	root := fakeV2(t)
	uid := newUID(t)
	pod := filepath.Join(root, "kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
	mkCgroup(t, pod, 2)
	mkCgroup(t, filepath.Join(pod, "cri-containerd-1.scope"), 2)
	x := newLimiter(t, root)
	run(t, x)
	ctx := t.Context()
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1, dev2}, iolimit.Limits{ReadIOPS: 100, WriteBytesPerSecond: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"7:0":   "riops=100 wiops=max rbps=max wbps=1048576",
		"253:3": "riops=100 wiops=max rbps=max wbps=1048576",
	}
	if diff := cmp.Diff(want, rulesV2(t, pod)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// 1 is written as 2: some kernels ignore 1 and keep the old limit.
	if err := x.Apply(ctx, "a", uid, []iolimit.Device{dev1}, iolimit.Limits{WriteIOPS: 1, ReadBytesPerSecond: 4096}); err != nil {
		t.Fatal(err)
	}
	want = map[string]string{"7:0": "riops=max wiops=2 rbps=4096 wbps=max"}
	if diff := cmp.Diff(want, rulesV2(t, pod)); diff != "" {
		t.Errorf("after the change (-want +got):\n%s", diff)
	}
	if err := x.Forget(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := rulesV2(t, pod); len(got) > 0 {
		t.Errorf("after Forget: %v", got)
	}
	b, _ := os.ReadFile(filepath.Join(pod, "io.max"))
	if !strings.HasSuffix(string(b), "7:0 riops=max wiops=max rbps=max wbps=max\n") {
		t.Errorf("Forget wrote %q", b)
	}
	if got := rulesV2(t, filepath.Join(pod, "cri-containerd-1.scope")); len(got) > 0 {
		t.Errorf("container cgroup written on v2: %v", got)
	}
}

func TestDeviceOf(t *testing.T) {
	dir := t.TempDir()
	blk := filepath.Join(dir, "blk")
	if err := unix.Mknod(blk, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 42))); err != nil {
		t.Skip("cannot make a device node here:", err)
	}
	link := filepath.Join(dir, "by-id")
	os.Symlink(blk, link)
	for _, p := range []string{blk, link} {
		d, err := iolimit.DeviceOf(p)
		if err != nil || d != (iolimit.Device{Major: 7, Minor: 42}) {
			t.Errorf("DeviceOf(%s) = %v, %v", p, d, err)
		}
	}
	chr := filepath.Join(dir, "chr")
	if err := unix.Mknod(chr, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	for _, p := range []string{chr, file, dir} {
		if _, err := iolimit.DeviceOf(p); !errors.Is(err, iolimit.ErrInvalid) {
			t.Errorf("DeviceOf(%s): %v, want ErrInvalid", p, err)
		}
	}
	if _, err := iolimit.DeviceOf(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DeviceOf(missing): %v", err)
	}
}
