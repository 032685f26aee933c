package iolimit_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/iolimit"
)

// snapshot is every file under dir and its content, symlinks as their
// targets.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			m[path] = "-> " + target
			return err
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			m[path] = string(b)
			return err
		case d.IsDir():
			m[path] = "dir"
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A pod UID that is not one is refused before any path is built from it,
// and nothing anywhere is written.
func TestAttackBadPodUID(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "cgroup")
	mkCgroup(t, filepath.Join(root, "blkio"), 1)
	uid := newUID(t)
	// Cgroups the bad UIDs would name if they were joined to a path.
	for _, d := range []string{"kubepods/pod" + uid, "kubepods/pod..", "x", "kubepods/podx"} {
		mkCgroup(t, filepath.Join(root, "blkio", d), 1)
	}
	mkCgroup(t, filepath.Join(parent, "x"), 1)
	before := snapshot(t, parent)
	x := newLimiter(t, root)
	run(t, x)
	for name, bad := range map[string]string{
		"empty":            "",
		"dot dot":          "../../x",
		"dot dot as long":  "../../../../../../../../../../../x12345",
		"dots":             "..",
		"slash in place":   uid[:8] + "/" + uid[9:],
		"uid then slash":   uid + "/",
		"uid then dot dot": uid + "/../../../x",
		"nul":              uid[:35] + "\x00",
		"nul after":        uid + "\x00",
		"too short":        uid[:35],
		"too long":         uid + "0",
		"not hex":          "g" + uid[1:],
		"dashes moved":     uid[:7] + "-" + uid[7:8] + uid[9:],
		"underscores":      strings.ReplaceAll(uid, "-", "_"),
		"space":            " " + uid[1:],
		"pod prefix":       "pod" + uid,
		"glob":             "*",
	} {
		t.Run(name, func(t *testing.T) {
			err := x.Apply(t.Context(), "k", bad, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 1})
			if !errors.Is(err, iolimit.ErrInvalid) {
				t.Errorf("Apply(%q): %v, want ErrInvalid", bad, err)
			}
		})
	}
	if diff := cmp.Diff(before, snapshot(t, parent)); diff != "" {
		t.Errorf("files changed (-before +after):\n%s", diff)
	}
}

func TestAttackBadDevices(t *testing.T) {
	root := fakeV1(t)
	uid := newUID(t)
	mkCgroup(t, filepath.Join(root, "blkio", "kubepods", "pod"+uid), 1)
	before := snapshot(t, root)
	x := newLimiter(t, root)
	for name, devs := range map[string][]iolimit.Device{
		"none":               nil,
		"major 0":            {{Major: 0, Minor: 1}},
		"one of two bad":     {dev1, {Major: 0, Minor: 0}},
		"minor out of dev_t": {{Major: 7, Minor: 1 << 20}},
		"major out of dev_t": {{Major: 1 << 12, Minor: 0}},
	} {
		t.Run(name, func(t *testing.T) {
			err := x.Apply(t.Context(), "k", uid, devs, iolimit.Limits{ReadIOPS: 1})
			if !errors.Is(err, iolimit.ErrInvalid) {
				t.Errorf("Apply: %v, want ErrInvalid", err)
			}
		})
	}
	if err := x.Apply(t.Context(), "", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 1}); !errors.Is(err, iolimit.ErrInvalid) {
		t.Errorf("Apply with an empty key: %v, want ErrInvalid", err)
	}
	if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
		t.Errorf("files changed (-before +after):\n%s", diff)
	}
}

// No symlink is followed: not to a pod's cgroup elsewhere, not to a
// container cgroup elsewhere (neither when applied nor when it appears
// while watched), not as the pod's directory, not as a cgroup file.
func TestAttackSymlinks(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "cgroup")
	mkCgroup(t, filepath.Join(root, "blkio"), 1)
	outside := filepath.Join(parent, "outside")
	uid := newUID(t)
	mkCgroup(t, filepath.Join(outside, "kubepods", "pod"+uid), 1)
	mkCgroup(t, filepath.Join(outside, "container"), 1)
	mkCgroup(t, filepath.Join(outside, "late"), 1)
	mkCgroup(t, filepath.Join(outside, "pod"), 1)
	x := newLimiter(t, root)
	run(t, x)
	ctx := t.Context()
	l := iolimit.Limits{ReadIOPS: 1}

	// A symlink in the hierarchy to a tree holding the pod's cgroup.
	if err := os.Symlink(filepath.Join(outside, "kubepods"), filepath.Join(root, "blkio", "kubepods")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, outside)
	if err := x.Apply(ctx, "k", uid, []iolimit.Device{dev1}, l); !errors.Is(err, iolimit.ErrPodNotFound) {
		t.Errorf("through a symlinked directory: %v, want ErrPodNotFound", err)
	}
	// A symlink named as the pod's cgroup.
	os.Remove(filepath.Join(root, "blkio", "kubepods"))
	os.Mkdir(filepath.Join(root, "blkio", "kubepods"), 0o755)
	if err := os.Symlink(filepath.Join(outside, "pod"), filepath.Join(root, "blkio", "kubepods", "pod"+uid)); err != nil {
		t.Fatal(err)
	}
	if err := x.Apply(ctx, "k", uid, []iolimit.Device{dev1}, l); !errors.Is(err, iolimit.ErrPodNotFound) {
		t.Errorf("symlink as the pod's cgroup: %v, want ErrPodNotFound", err)
	}

	// The real pod cgroup, with a symlink to a container cgroup
	// elsewhere in it, and one arriving while watched.
	os.Remove(filepath.Join(root, "blkio", "kubepods", "pod"+uid))
	pod := filepath.Join(root, "blkio", "kubepods", "pod"+uid)
	mkCgroup(t, pod, 1)
	if err := os.Symlink(filepath.Join(outside, "container"), filepath.Join(pod, "c1")); err != nil {
		t.Fatal(err)
	}
	if err := x.Apply(ctx, "k", uid, []iolimit.Device{dev1}, l); err != nil {
		t.Fatal(err)
	}
	if got := v1Table(t, pod); len(got) == 0 {
		t.Error("pod cgroup not written")
	}
	if err := os.Symlink(filepath.Join(outside, "late"), filepath.Join(pod, "c2")); err != nil {
		t.Fatal(err)
	}
	// Handled in order: once a real cgroup made after it has its rules.
	addCgroup(t, filepath.Join(pod, "c3"))
	eventually(t, "real cgroup", v1Table(t, pod), func() map[string]map[string]uint64 { return v1Table(t, filepath.Join(pod, "c3")) })

	// A cgroup file that is a symlink to a file elsewhere.
	f := filepath.Join(pod, "blkio.throttle.write_bps_device")
	os.Remove(f)
	if err := os.Symlink(filepath.Join(outside, "pod", "blkio.throttle.write_bps_device"), f); err != nil {
		t.Fatal(err)
	}
	if err := x.Apply(ctx, "k", uid, []iolimit.Device{dev1}, iolimit.Limits{WriteBytesPerSecond: 1}); err == nil {
		t.Error("Apply wrote through a symlinked cgroup file")
	}
	if diff := cmp.Diff(before, snapshot(t, outside)); diff != "" {
		t.Errorf("files outside the hierarchy changed (-before +after):\n%s", diff)
	}
}

// Files are never made: a cgroup without the file is an error; a FIFO
// in a file's place is refused without blocking.
func TestAttackMissingAndOddFiles(t *testing.T) {
	root := fakeV1(t)
	uid := newUID(t)
	pod := filepath.Join(root, "blkio", "kubepods", "pod"+uid)
	mkCgroup(t, pod, 1)
	x := newLimiter(t, root)
	ctx := t.Context()
	f := filepath.Join(pod, "blkio.throttle.read_iops_device")
	os.Remove(f)
	err := x.Apply(ctx, "k", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 1})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), f) {
		t.Errorf("Apply without the file: %v, want it not found, named", err)
	}
	if _, err := os.Lstat(f); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Apply made %s", f)
	}

	if err := unix.Mkfifo(f, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- x.Apply(ctx, "k", uid, []iolimit.Device{dev1}, iolimit.Limits{ReadIOPS: 1}) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Apply wrote to a FIFO")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Apply blocked on a FIFO")
	}
}
