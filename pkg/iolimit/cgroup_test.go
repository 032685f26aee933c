package iolimit_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/iolimit"
)

// realBlkio returns the host's cgroup v1 blkio hierarchy, or skips.
func realBlkio(t *testing.T) string {
	t.Helper()
	const blkio = "/sys/fs/cgroup/blkio"
	if _, err := os.Stat(filepath.Join(blkio, "blkio.throttle.read_iops_device")); err != nil {
		t.Skip("no cgroup v1 blkio hierarchy here:", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	return blkio
}

// loopDevice returns the device number of loop0, or skips.
func loopDevice(t *testing.T) iolimit.Device {
	t.Helper()
	b, err := os.ReadFile("/sys/block/loop0/dev")
	if err != nil {
		t.Skip("no loop0 here:", err)
	}
	var d iolimit.Device
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &d.Major, &d.Minor); err != nil {
		t.Fatal(err)
	}
	return d
}

// mkdirCgroup makes a real cgroup, removed (rmdir) when the test ends;
// cgroups made in it must be made after it, so that they go first.
func mkdirCgroup(t *testing.T, dir string) {
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

func readRules(t *testing.T, dir, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// On the host's real cgroup v1 blkio: the kernel takes the rules in the
// pod's cgroup and its container's, a cgroup made later gets them from
// the watch (mkdir in cgroupfs is an inotify create), a change applies
// in place, Forget removes them, and a device the kernel refuses fails
// naming the file.
func TestRealCgroupV1(t *testing.T) {
	blkio := realBlkio(t)
	dev := loopDevice(t)
	uid := newUID(t)
	top := filepath.Join(blkio, "plinth-iolimit-test-"+rand.Text()[:10])
	pod := filepath.Join(top, "pod"+uid)
	mkdirCgroup(t, top)
	mkdirCgroup(t, pod)
	mkdirCgroup(t, filepath.Join(pod, "c1"))

	x := newLimiter(t, filepath.Dir(blkio))
	if x.Version() != 1 {
		t.Fatalf("Version = %d, want 1", x.Version())
	}
	run(t, x)
	ctx := t.Context()
	l := iolimit.Limits{ReadIOPS: 100, WriteIOPS: 200, ReadBytesPerSecond: 1 << 20, WriteBytesPerSecond: 2 << 20}
	if err := x.Apply(ctx, "vol", uid, []iolimit.Device{dev}, l); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"blkio.throttle.read_iops_device":  fmt.Sprintf("%s 100\n", dev),
		"blkio.throttle.write_iops_device": fmt.Sprintf("%s 200\n", dev),
		"blkio.throttle.read_bps_device":   fmt.Sprintf("%s 1048576\n", dev),
		"blkio.throttle.write_bps_device":  fmt.Sprintf("%s 2097152\n", dev),
	}
	for _, d := range []string{pod, filepath.Join(pod, "c1")} {
		for f, w := range want {
			if got := readRules(t, d, f); got != w {
				t.Errorf("%s/%s = %q, want %q", d, f, got, w)
			}
		}
	}

	// A container cgroup made after Apply.
	c2 := filepath.Join(pod, "c2")
	mkdirCgroup(t, c2)
	eventually(t, "rules of a cgroup made later", want["blkio.throttle.read_iops_device"], func() string {
		return readRules(t, c2, "blkio.throttle.read_iops_device")
	})
	eventually(t, "rules of a cgroup made later", want["blkio.throttle.write_bps_device"], func() string {
		return readRules(t, c2, "blkio.throttle.write_bps_device")
	})

	// A class change, a field cleared.
	if err := x.Apply(ctx, "vol", uid, []iolimit.Device{dev}, iolimit.Limits{ReadIOPS: 50}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{pod, filepath.Join(pod, "c1"), c2} {
		if got, w := readRules(t, d, "blkio.throttle.read_iops_device"), fmt.Sprintf("%s 50\n", dev); got != w {
			t.Errorf("%s read_iops = %q, want %q", d, got, w)
		}
		if got := readRules(t, d, "blkio.throttle.write_bps_device"); got != "" {
			t.Errorf("%s write_bps = %q, want none", d, got)
		}
	}

	// A device with no disk: the kernel refuses, the error names the file.
	err := x.Apply(ctx, "other", uid, []iolimit.Device{{Major: 4095, Minor: 4095}}, iolimit.Limits{ReadIOPS: 1})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(pod, "blkio.throttle.read_iops_device")) {
		t.Errorf("Apply for no device: %v, want the kernel's refusal, naming the file", err)
	}
	x.Forget(ctx, "other")

	if err := x.Forget(ctx, "vol"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{pod, filepath.Join(pod, "c1"), c2} {
		for f := range want {
			if got := readRules(t, d, f); got != "" {
				t.Errorf("%s/%s after Forget = %q", d, f, got)
			}
		}
	}
}
