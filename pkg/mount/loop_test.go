package mount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLoopLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	l := NewLoop("/sys", "/dev")
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	if dev, err := l.Find(img); err != nil || dev != "" {
		t.Fatalf("Find before attach = %q, %v", dev, err)
	}
	dev, err := l.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Detach(img) })
	if again, err := l.Attach(img, false); err != nil || again != dev {
		t.Fatalf("second Attach = %q, %v; want the same %s", again, err, dev)
	}
	if size, err := DeviceSize(dev); err != nil || size != 8<<20 {
		t.Fatalf("size = %d, %v", size, err)
	}
	b, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "queue/logical_block_size"))
	if string(b) != "4096\n" {
		t.Errorf("logical block size %q, want 4096", b)
	}
	os.Truncate(img, 16<<20)
	if err := l.Refresh(img); err != nil {
		t.Fatal(err)
	}
	if size, _ := DeviceSize(dev); size != 16<<20 {
		t.Errorf("size after refresh = %d, want 16Mi", size)
	}
	// Another file with the same name elsewhere is not this attachment.
	other := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(other, nil, 0o600)
	if d, _ := l.Find(other); d != "" {
		t.Errorf("Find(%s) = %s, a different file", other, d)
	}
	// Held open, the device cannot go: Detach says so instead of lying.
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Detach(img) }()
	f.Close() // released within the wait: Detach then succeeds
	if err := <-done; err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if d, _ := l.Find(img); d != "" {
		t.Fatalf("still attached as %s", d)
	}
	if err := l.Detach(img); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := l.Detach(filepath.Join(t.TempDir(), "missing.img")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Detach of a missing file: %v", err)
	}
}

// TestFindAfterRebind: a loop device freed and bound again to another
// file (the kernel hands out the lowest free number, so the same device)
// is found for the new file and no longer for the old one, though the
// device each file was found at is remembered: the rebinding is done by
// another Loop (another process), which this one hears nothing of.
func TestFindAfterRebind(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	l, other := NewLoop("/sys", "/dev"), NewLoop("/sys", "/dev")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, f := range []string{a, b} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Truncate(f, 8<<20)
		t.Cleanup(func() { NewLoop("/sys", "/dev").Detach(f) })
	}
	for i := 0; i < 5; i++ {
		first, second := a, b
		if i%2 == 1 {
			first, second = b, a
		}
		dev, err := l.Attach(first, false)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := l.Find(first); err != nil || got != dev {
			t.Fatalf("round %d: Find(%s) = %q, %v; want %s", i, first, got, err, dev)
		}
		// Another process's detach sees every device of the file (the
		// node's unstage scans before it detaches, pool.FullAttacher):
		// with other tests binding devices meanwhile, this one's may not
		// be the number other attached last.
		if _, err := other.FindAll(first); err != nil {
			t.Fatal(err)
		}
		if err := other.Detach(first); err != nil {
			t.Fatal(err)
		}
		dev2, err := other.Attach(second, false)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := l.Find(second); err != nil || got != dev2 {
			t.Fatalf("round %d: Find(%s) = %q, %v; want %s (%s before)", i, second, got, err, dev2, dev)
		}
		if got, err := l.Find(first); err != nil || got != "" {
			t.Fatalf("round %d: Find(%s) after it was freed = %q, %v", i, first, got, err)
		}
		if err := l.Detach(second); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKnown: Known names the devices a Loop attached (read-write and
// read-only), drops one freed behind its back, and a Loop that has seen
// nothing yet (a restarted process) scans and finds them all.
func TestKnown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	l := NewLoop("/sys", "/dev")
	img := filepath.Join(t.TempDir(), "v.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	t.Cleanup(func() { NewLoop("/sys", "/dev").Detach(img) })
	if devs, err := l.Known(img); err != nil || len(devs) != 0 {
		t.Fatalf("Known before attach = %v, %v", devs, err)
	}
	rw, err := l.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := l.Attach(img, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{rw: false, ro: true}
	check := func(who *Loop, want map[string]bool) {
		t.Helper()
		devs, err := who.Known(img)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, d := range devs {
			got[d.Path] = d.ReadOnly
		}
		if len(got) != len(want) {
			t.Fatalf("Known = %v, want %v", got, want)
		}
		for d, r := range want {
			if g, ok := got[d]; !ok || g != r {
				t.Fatalf("Known = %v, want %v", got, want)
			}
		}
	}
	check(l, want)
	check(NewLoop("/sys", "/dev"), want) // a fresh process scans
	if err := NewLoop("/sys", "/dev").DetachDevice(img, ro); err != nil {
		t.Fatal(err)
	}
	delete(want, ro)
	check(l, want)
	if err := l.Detach(img); err != nil {
		t.Fatal(err)
	}
	check(l, map[string]bool{})
	check(NewLoop("/sys", "/dev"), map[string]bool{})
}

// TestFindAllByIdentity: the devices of a file are found whatever path
// names it: through a symlinked directory, or through a bind mount of the
// directory (sysfs prints one path of the kernel's choosing); a file of
// the same name and contents elsewhere is not the same file.
func TestFindAllByIdentity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.Mkdir(real, 0o700)
	img := filepath.Join(real, "v.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	dev, err := NewLoop("/sys", "/dev").Attach(img, false) // another process
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { NewLoop("/sys", "/dev").Detach(img) })
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	bind := filepath.Join(dir, "bind")
	os.Mkdir(bind, 0o700)
	if err := unix.Mount(real, bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bind, unix.MNT_DETACH) })
	for _, path := range []string{filepath.Join(link, "v.img"), filepath.Join(bind, "v.img")} {
		l := NewLoop("/sys", "/dev")
		devs, err := l.FindAll(path)
		if err != nil || len(devs) != 1 || devs[0].Path != dev {
			t.Errorf("FindAll(%s) = %v, %v; want %s", path, devs, err, dev)
		}
		if got, err := l.Attach(path, false); err != nil || got != dev {
			t.Errorf("Attach(%s) = %q, %v; want the device already bound, %s", path, got, err, dev)
			if got != "" && got != dev {
				t.Cleanup(func() { clearRaw(got) })
			}
		}
	}
	other := filepath.Join(dir, "other")
	os.Mkdir(other, 0o700)
	if err := os.WriteFile(filepath.Join(other, "v.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if devs, err := NewLoop("/sys", "/dev").FindAll(filepath.Join(other, "v.img")); err != nil || len(devs) != 0 {
		t.Errorf("FindAll of another file of the same name = %v, %v", devs, err)
	}
}

// TestDetachLeavesReboundDevice: a device found bound to a file, then
// freed and bound to another file by another process before the detach
// reaches it, is left bound to that other file, by Detach and by
// DetachDevice.
func TestDetachLeavesReboundDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, f := range []string{a, b} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Truncate(f, 8<<20)
		t.Cleanup(func() { NewLoop("/sys", "/dev").Detach(f) })
	}
	var bst unix.Stat_t
	if err := unix.Stat(b, &bst); err != nil {
		t.Fatal(err)
	}
	// rebind frees dev and binds b to it, as another process would: raw
	// ioctls, nothing of this package.
	rebind := func(dev string) {
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("free %s: %v", dev, err)
		}
		for i := 0; ; i++ {
			if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "loop")); errors.Is(err, os.ErrNotExist) {
				break
			}
			if i == 1000 {
				t.Fatalf("%s not freed", dev)
			}
			time.Sleep(time.Millisecond)
		}
		back, err := unix.Open(b, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(back)
		fd, err = unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.IoctlLoopConfigure(fd, &unix.LoopConfig{Fd: uint32(back)}); err != nil {
			t.Fatalf("bind %s to %s: %v", dev, b, err)
		}
	}
	for name, detach := range map[string]func(l *Loop, dev string) error{
		"Detach":       func(l *Loop, dev string) error { return l.Detach(a) },
		"DetachDevice": func(l *Loop, dev string) error { return l.DetachDevice(a, dev) },
	} {
		t.Run(name, func(t *testing.T) {
			l := NewLoop("/sys", "/dev")
			dev, err := l.Attach(a, false)
			if err != nil {
				t.Fatal(err)
			}
			l.beforeClear = func(d string) {
				l.beforeClear = nil
				rebind(d)
			}
			if err := detach(l, dev); err != nil {
				t.Errorf("%s of a device rebound meanwhile: %v", name, err)
			}
			fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			info, err := unix.IoctlLoopGetStatus64(fd)
			if err != nil || info.Device != bst.Dev || info.Inode != bst.Ino {
				t.Errorf("%s of %s cleared %s, which another process had bound to %s meanwhile (status now %v)", name, a, dev, b, err)
			}
			unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		})
	}
}

// clearRaw frees dev with a bare LOOP_CLR_FD.
func clearRaw(dev string) {
	if fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		unix.Close(fd)
	}
}

// An image path that is a symlink (to a file plinth must not hand out), a
// FIFO or a character device is never bound to a loop device, and a FIFO
// does not block the attach.
func TestAttachRefusesWhatIsNotAnImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.img")
	os.Symlink(secret, link)
	fifo := filepath.Join(dir, "fifo.img")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	l := NewLoop("/sys", "/dev")
	for _, p := range []string{link, fifo, "/dev/null"} {
		if dev, err := l.Attach(p, false); err == nil {
			l.DetachDevice(p, dev)
			t.Errorf("%s was bound to %s", p, dev)
		}
	}
}
