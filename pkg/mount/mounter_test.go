package mount

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A symlink at a target is never followed: not to bind over what it
// points at, not to unmount what is mounted there.
func TestSymlinkTargetsAreNotFollowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real mounts")
	}
	dir := t.TempDir()
	src, victim, link := filepath.Join(dir, "src"), filepath.Join(dir, "victim"), filepath.Join(dir, "link")
	for _, d := range []string{src, victim} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	h := NewHost(Exec{})
	if err := h.Bind(src, link, BindOptions{}); err == nil {
		t.Error("bind onto a symlink succeeded")
	}
	if _, ok, _ := h.MountOf(victim); ok {
		unix.Unmount(victim, 0)
		t.Fatal("the symlink's target was mounted over")
	}
	if err := unix.Mount("tmpfs", victim, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(victim, 0) })
	if err := h.Unmount(link); err != nil {
		t.Logf("unmount through the symlink: %v", err)
	}
	if _, ok, _ := h.MountOf(victim); !ok {
		t.Error("unmount through a symlink took the mount it points at away")
	}
	// A bind onto a directory of the right kind works, and its remount
	// applies the options.
	target := filepath.Join(dir, "target")
	os.Mkdir(target, 0o700)
	if err := h.Bind(src, target, BindOptions{ReadOnly: true, NoDev: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, 0) })
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o600); err == nil {
		t.Error("write into a read-only bind succeeded")
	}
	// A directory is not bound onto a file, nor a device onto a directory.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if err := h.Bind(src, file, BindOptions{}); err == nil {
		unix.Unmount(file, 0)
		t.Error("a directory was bound onto a file")
	}
}

func TestParseOptions(t *testing.T) {
	for name, c := range map[string]struct {
		options []string
		flags   uintptr
		data    string
		bad     bool
	}{
		"flags and data": {
			options: []string{"nodev", "nosuid", "ro", "noatime", "sync", "discard", "rw", "errors=remount-ro"},
			flags:   unix.MS_NODEV | unix.MS_NOSUID | unix.MS_RDONLY | unix.MS_NOATIME | unix.MS_SYNCHRONOUS,
			data:    "discard,errors=remount-ro",
		},
		"more flags":          {options: []string{"noexec", "nodiratime", "dirsync", "lazytime", "strictatime"}, flags: unix.MS_NOEXEC | unix.MS_NODIRATIME | unix.MS_DIRSYNC | unix.MS_LAZYTIME | unix.MS_STRICTATIME},
		"defaults are no-op":  {options: []string{"exec", "async", "atime", "diratime", "nodev"}, flags: unix.MS_NODEV},
		"fs data only":        {options: []string{"data=ordered", "commit=30"}, data: "data=ordered,commit=30"},
		"none":                {},
		"mount(8) only":       {options: []string{"noauto"}, bad: true},
		"fstab user":          {options: []string{"user"}, bad: true},
		"netdev":              {options: []string{"_netdev"}, bad: true},
		"bind":                {options: []string{"bind"}, bad: true},
		"propagation":         {options: []string{"rshared"}, bad: true},
		"x- option":           {options: []string{"x-systemd.automount"}, bad: true},
		"dev against nodev":   {options: []string{"nodev", "dev"}, bad: true},
		"exec against noexec": {options: []string{"exec", "noexec"}, bad: true},
		"two atime modes":     {options: []string{"noatime", "relatime"}, bad: true},
		"same atime twice":    {options: []string{"noatime", "noatime"}, flags: unix.MS_NOATIME},
	} {
		t.Run(name, func(t *testing.T) {
			flags, data, err := ParseOptions(c.options)
			if c.bad {
				if !errors.Is(err, ErrBadOption) {
					t.Fatalf("ParseOptions(%q) = %#x, %q, %v; want ErrBadOption", c.options, flags, data, err)
				}
				return
			}
			if err != nil || flags != c.flags || data != c.data {
				t.Fatalf("ParseOptions(%q) = %#x, %q, %v; want %#x, %q", c.options, flags, data, err, c.flags, c.data)
			}
		})
	}
}

// A copy of a mounted xfs filesystem (what a clone or restore is: the same
// UUID) mounts beside it.
func TestXFSCopyMountsBesideItsSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("no mkfs.xfs")
	}
	dir := t.TempDir()
	h, loop := NewHost(Exec{}), NewLoop("/sys", "/dev")
	ctx := context.Background()
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(src, 300<<20); err != nil {
		t.Fatal(err)
	}
	mountImage := func(img, name string) {
		t.Helper()
		dev, err := loop.Attach(img, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = loop.DetachDevice(img, dev) }) // after the unmount below
		mnt := filepath.Join(dir, name)
		if err := os.Mkdir(mnt, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := h.FormatAndMount(ctx, dev, mnt, "xfs", []string{"nodev", "nosuid"}); err != nil {
			t.Fatalf("mount %s: %v", name, err)
		}
		t.Cleanup(func() { unix.Unmount(mnt, 0) })
	}
	mountImage(src, "src")
	if err := exec.Command("cp", "--sparse=always", src, filepath.Join(dir, "copy.img")).Run(); err != nil {
		t.Fatal(err)
	}
	mountImage(filepath.Join(dir, "copy.img"), "copy")
}
