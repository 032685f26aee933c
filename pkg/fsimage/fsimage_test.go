package fsimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/ext4"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// requireHost skips t unless it runs as root with loop devices, mkfs.ext4
// and the given programs. (test/testenv cannot be imported here: it
// imports pkg/app, which imports this package.)
func requireHost(t *testing.T, programs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices and mounts")
	}
	for _, p := range append([]string{"mkfs.ext4", "blkid", "/dev/loop-control"}, programs...) {
		if _, err := exec.LookPath(p); err != nil && !strings.HasPrefix(p, "/") {
			t.Skipf("needs %s (e2fsprogs)", p)
		} else if _, err := os.Stat(p); strings.HasPrefix(p, "/") && err != nil {
			t.Skipf("needs %s", p)
		}
	}
}

// blankDevice attaches a sparse file of size as a loop device the way the
// file pool does (4 KiB logical blocks) and returns its path.
func blankDevice(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	loops := mount.NewLoop("/sys", "/dev")
	dev, err := loops.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loops.Detach(img) })
	return dev
}

// makeTemplate makes the ext4 template of size in c and returns its path.
func makeTemplate(t *testing.T, c *Cache, size int64) string {
	t.Helper()
	f, _, err := c.template(context.Background(), "ext4", size)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return c.path("ext4", size)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// header is dumpe2fs' superblock listing without what differs between two
// filesystems made alike: identity, times, checksums.
func header(t *testing.T, dev string) string {
	var keep []string
	for _, l := range strings.Split(run(t, "dumpe2fs", "-h", dev), "\n") {
		if strings.Contains(l, "UUID") || strings.Contains(l, "time") || strings.Contains(l, "Hash Seed") ||
			strings.Contains(l, "hecksum") || strings.HasPrefix(l, "Lifetime") || strings.HasPrefix(l, "Filesystem features") ||
			strings.HasPrefix(l, "Filesystem created") || strings.HasPrefix(l, "Last checked") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func blkid(t *testing.T, dev, tag string) string {
	return strings.TrimSpace(run(t, "blkid", "-p", "-s", tag, "-o", "value", dev))
}

// TestFormatLikeMkfs: for sizes with no, some and many backup superblocks,
// a device formatted from a template passes e2fsck, carries the layout
// mkfs gives the same device, its own UUID (in every superblock: e2fsck
// compares them) and hash seed, and mounts and holds data.
func TestFormatLikeMkfs(t *testing.T) {
	requireHost(t, "e2fsck", "dumpe2fs")
	launches := &mount.Launches{}
	c := New(filepath.Join(t.TempDir(), "templates"), mount.Exec{Launches: launches})
	for _, size := range []int64{64 << 20, 1 << 30, 20 << 30} {
		dev, ref := blankDevice(t, size), blankDevice(t, size)
		if err := c.Format(context.Background(), dev, "ext4"); err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		run(t, "e2fsck", "-fn", dev)
		if err := mount.NewHost(mount.Exec{}).FormatBlank(context.Background(), ref, "ext4"); err != nil {
			t.Fatal(err)
		}
		if got, want := header(t, dev), header(t, ref); got != want {
			g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
			for i := range min(len(g), len(w)) {
				if g[i] != w[i] {
					t.Errorf("%d: layout differs from mkfs on the same device: %q, mkfs: %q", size, g[i], w[i])
				}
			}
		}
		tmplUUID := blkid(t, c.path("ext4", size), "UUID")
		if u := blkid(t, dev, "UUID"); u == "" || u == tmplUUID {
			t.Errorf("%d: UUID %q, template's %q", size, u, tmplUUID)
		}
		if size > 128<<20 { // the backup in group 1 says the same (e2fsck -n does not look)
			backup := run(t, "dumpe2fs", "-h", "-o", "superblock=32768", "-o", "blocksize=4096", dev)
			if u := blkid(t, dev, "UUID"); !strings.Contains(backup, "Filesystem UUID:          "+u) {
				t.Errorf("%d: backup superblock does not carry UUID %s:\n%s", size, u, backup)
			}
		}
		seed := func(p string) string {
			for _, l := range strings.Split(run(t, "dumpe2fs", "-h", p), "\n") {
				if strings.HasPrefix(l, "Directory Hash Seed:") {
					return l
				}
			}
			return ""
		}
		if s := seed(dev); s == "" || s == seed(c.path("ext4", size)) {
			t.Errorf("%d: hash seed %q is the template's", size, s)
		}
		mnt := t.TempDir()
		if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mnt, "data"), bytes.Repeat([]byte("x"), 1<<20), 0o600); err != nil {
			t.Error(err)
		}
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Fatal(err)
		}
		run(t, "e2fsck", "-fn", dev)
	}
	if n := launches.Counts()["mkfs.ext4"]; n != 3 {
		t.Errorf("mkfs.ext4 ran %d times for 3 sizes", n)
	}
}

// TestReidentifyIsTune2fs: the new identity is written exactly as
// e2fsprogs' own `tune2fs -U` writes a UUID: every superblock, nothing
// else.
func TestReidentifyIsTune2fs(t *testing.T) {
	requireHost(t, "tune2fs")
	dir := t.TempDir()
	c := New(filepath.Join(dir, "templates"), mount.Exec{})
	const size = 4 << 30 // 32 groups: backups in 1, 3, 5, 7, 9, 25, 27
	tmpl := makeTemplate(t, c, size)
	theirs, ours := filepath.Join(dir, "tune2fs.img"), filepath.Join(dir, "ours.img")
	run(t, "cp", "--sparse=always", tmpl, theirs)
	run(t, "cp", "--sparse=always", tmpl, ours)
	run(t, "tune2fs", "-U", "3d2c1b0a-4f5e-4a7b-8c9d-aabbccddeeff", theirs)
	uuid := [16]byte{0x3d, 0x2c, 0x1b, 0x0a, 0x4f, 0x5e, 0x4a, 0x7b, 0x8c, 0x9d, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	f, err := os.OpenFile(ours, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb := make([]byte, ext4.SuperSize)
	if _, err := f.ReadAt(sb, ext4.SuperOffset); err != nil {
		t.Fatal(err)
	}
	g, err := parseExt4(sb)
	if err != nil {
		t.Fatal(err)
	}
	var seed [16]byte
	copy(seed[:], sb[ext4.OffHashSeed:])
	offs := g.superOffsets()
	if len(offs) != 8 {
		t.Errorf("%d superblocks, want 8", len(offs))
	}
	tf, err := os.Open(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	tsb := make([]byte, ext4.SuperSize)
	for _, off := range offs {
		if _, err := f.ReadAt(sb, off); err != nil {
			t.Fatal(err)
		}
		// tune2fs also stamps the write time (s_wtime, s_wtime_hi): a
		// second may have passed since mkfs.
		if _, err := tf.ReadAt(tsb, off); err != nil {
			t.Fatal(err)
		}
		copy(sb[0x30:0x34], tsb[0x30:0x34])
		sb[0x274] = tsb[0x274]
		if err := reidentify(sb, uuid, seed); err != nil {
			t.Fatalf("at %d: %v", off, err)
		}
		if _, err := f.WriteAt(sb, off); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := dataOf(t, theirs), dataOf(t, ours); !bytes.Equal(a, b) {
		t.Errorf("differs from tune2fs -U (%d and %d bytes of data)", len(a), len(b))
	}
}

// dataOf is every data extent of the sparse file p, each with its offset
// (reading gigabytes of holes is what cmp would do).
func dataOf(t *testing.T, p string) []byte {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	ext, err := dataExtents(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, e := range ext {
		b := make([]byte, e.end-e.off)
		f.ReadAt(b, e.off)
		out = append(out, []byte(fmt.Sprintf("@%d:", e.off))...)
		out = append(out, b...)
	}
	return out
}

// TestFormatRefusesMounted: a device that is mounted is refused before
// anything is written, and not handed to mkfs either (the error is not
// ErrNoTemplate).
func TestFormatRefusesMounted(t *testing.T) {
	requireHost(t)
	c := New(filepath.Join(t.TempDir(), "templates"), mount.Exec{})
	dev := blankDevice(t, 64<<20)
	if err := c.Format(context.Background(), dev, "ext4"); err != nil {
		t.Fatal(err)
	}
	uuid := blkid(t, dev, "UUID")
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, 0)
	err := c.Format(context.Background(), dev, "ext4")
	if err == nil || errors.Is(err, ErrNoTemplate) {
		t.Fatalf("Format of a mounted device = %v", err)
	}
	if u := blkid(t, dev, "UUID"); u != uuid {
		t.Errorf("UUID changed from %s to %s", uuid, u)
	}
}

// TestNoTemplateLeavesDevice: a type without templates is ErrNoTemplate
// and the device stays all zeros.
func TestNoTemplateLeavesDevice(t *testing.T) {
	requireHost(t)
	c := New(filepath.Join(t.TempDir(), "templates"), mount.Exec{})
	dev := blankDevice(t, 64<<20)
	for _, fs := range []string{"xfs", "btrfs", "ext3", ""} {
		if err := c.Format(context.Background(), dev, fs); !errors.Is(err, ErrNoTemplate) {
			t.Errorf("%q: %v", fs, err)
		}
	}
	b, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Error("device was written")
	}
}

// TestInterruptedCopyLeavesNoSuperblock: a copy that fails half-way (the
// destination runs out of space) has not written the primary superblock,
// so no probe finds a filesystem to mount.
func TestInterruptedCopyLeavesNoSuperblock(t *testing.T) {
	requireHost(t)
	dir := t.TempDir()
	c := New(filepath.Join(dir, "templates"), mount.Exec{})
	const size = 1 << 30 // 660 KiB of data
	src, g, err := c.template(context.Background(), "ext4", size)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	small := filepath.Join(dir, "small")
	os.Mkdir(small, 0o700)
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(small, 0)
	dst := filepath.Join(small, "dev.img")
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(dst, size)
	if err := copyExt4(src, g, dst, size); err == nil || errors.Is(err, ErrNoTemplate) {
		t.Fatalf("copy onto a full filesystem = %v", err)
	}
	f, _ := os.Open(dst)
	defer f.Close()
	sb := make([]byte, ext4.SuperSize)
	f.ReadAt(sb, ext4.SuperOffset)
	if !bytes.Equal(sb, make([]byte, len(sb))) {
		t.Error("the primary superblock was written by a copy that failed")
	}
}

// TestTemplateRemadeWhenDamaged: a template that is cut short, or whose
// superblock no longer checks out, is made again rather than copied.
func TestTemplateRemadeWhenDamaged(t *testing.T) {
	requireHost(t, "e2fsck")
	launches := &mount.Launches{}
	c := New(filepath.Join(t.TempDir(), "templates"), mount.Exec{Launches: launches})
	const size = 64 << 20
	p := makeTemplate(t, c, size)
	damage := []func(){
		func() { os.Truncate(p, size-4096) },
		func() {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			f.WriteAt([]byte{0xff}, ext4.SuperOffset+ext4.OffBlocksCount)
			f.Close()
		},
		func() { os.Remove(p) },
	}
	for i, d := range damage {
		d()
		dev := blankDevice(t, size)
		if err := c.Format(context.Background(), dev, "ext4"); err != nil {
			t.Fatalf("damage %d: %v", i, err)
		}
		run(t, "e2fsck", "-fn", dev)
	}
	if n := launches.Counts()["mkfs.ext4"]; n != 4 {
		t.Errorf("mkfs.ext4 ran %d times, want 4 (once, then once per damage)", n)
	}
}

// TestConcurrentFormats: many devices of a new size formatted at once, by
// two Caches on one directory (two processes on one root), make the
// template at most once per Cache and give every device its own UUID.
func TestConcurrentFormats(t *testing.T) {
	requireHost(t, "e2fsck")
	dir := filepath.Join(t.TempDir(), "templates")
	la, lb := &mount.Launches{}, &mount.Launches{}
	caches := []*Cache{New(dir, mount.Exec{Launches: la}), New(dir, mount.Exec{Launches: lb})}
	const n, size = 8, 128 << 20
	devs := make([]string, n)
	for i := range devs {
		devs[i] = blankDevice(t, size)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, dev := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = caches[i%2].Format(context.Background(), dev, "ext4")
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, dev := range devs {
		if errs[i] != nil {
			t.Fatalf("%s: %v", dev, errs[i])
		}
		run(t, "e2fsck", "-fn", dev)
		u := blkid(t, dev, "UUID")
		if seen[u] {
			t.Errorf("UUID %s given twice", u)
		}
		seen[u] = true
	}
	if a, b := la.Counts()["mkfs.ext4"], lb.Counts()["mkfs.ext4"]; a > 1 || b > 1 {
		t.Errorf("template made %d and %d times", a, b)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*")); len(m) != 0 {
		t.Errorf("temp files left: %v", m)
	}
}

// TestEviction keeps the most recently used MaxTemplates.
func TestEviction(t *testing.T) {
	requireHost(t)
	dir := filepath.Join(t.TempDir(), "templates")
	c := New(dir, mount.Exec{})
	base := time.Now().Add(-time.Hour)
	for i := 0; i < MaxTemplates+2; i++ {
		p := makeTemplate(t, c, int64(16+i)<<20)
		// One second apart: files made within one clock tick share an
		// mtime.
		at := base.Add(time.Duration(i) * time.Second)
		os.Chtimes(p, at, at)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.img"))
	if len(m) != MaxTemplates {
		t.Errorf("%d templates kept, want %d", len(m), MaxTemplates)
	}
	if _, err := os.Stat(c.path("ext4", 16<<20)); !os.IsNotExist(err) {
		t.Errorf("the oldest template is still there: %v", err)
	}
}

// TestTooLargeForTemplate: a device over MaxSize is left to mkfs, untouched
// and without a template made for it.
func TestTooLargeForTemplate(t *testing.T) {
	requireHost(t)
	dir := filepath.Join(t.TempDir(), "templates")
	c := New(dir, mount.Exec{})
	dev := blankDevice(t, MaxSize+1<<20)
	if err := c.Format(context.Background(), dev, "ext4"); !errors.Is(err, ErrNoTemplate) {
		t.Fatalf("Format of %d bytes = %v", int64(MaxSize+1<<20), err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*")); len(m) != 0 {
		t.Errorf("made %v", m)
	}
}

// forkWhile runs programs in n goroutines of this process until the test
// ends: each fork copies the process's descriptor table into the child,
// which holds it until it execs.
func forkWhile(t *testing.T, n int) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = exec.Command("true").Run()
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// TestFormatThenMountWhileForking: bursts of devices formatted from a
// template and mounted at once, while other goroutines of the process fork
// and exec programs without pause, never find the device busy: no child
// forked during a copy keeps a descriptor that holds the device.
func TestFormatThenMountWhileForking(t *testing.T) {
	requireHost(t)
	c := New(filepath.Join(t.TempDir(), "templates"), mount.Exec{})
	const rounds, n, size = 20, 16, 64 << 20
	makeTemplate(t, c, size)
	forkWhile(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	busy, total := 0, 0
	for round := 0; round < rounds && ctx.Err() == nil; round++ {
		devs := make([]string, n)
		for i := range devs {
			devs[i] = blankDevice(t, size)
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, dev := range devs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.Format(ctx, dev, "ext4"); err != nil {
					errs[i] = err
					return
				}
				mnt := filepath.Join(t.TempDir(), "mnt")
				if err := os.Mkdir(mnt, 0o700); err != nil {
					errs[i] = err
					return
				}
				if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
					errs[i] = fmt.Errorf("mount %s right after its copy: %w", dev, err)
					return
				}
				errs[i] = unix.Unmount(mnt, 0)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			total++
			if errors.Is(err, unix.EBUSY) {
				busy++
			} else if err != nil {
				t.Fatal(err)
			}
		}
	}
	if ctx.Err() != nil {
		t.Errorf("ran past its deadline: %d formats", total)
	}
	if busy != 0 {
		t.Errorf("%d of %d devices were busy when mounted right after their copy", busy, total)
	}
	t.Logf("%d formats, %d busy", total, busy)
}

// plantedTemplate makes at p what passes for a template of size: a real
// ext4 made with plinth's options, holding a directory "planted". It is
// what an attacker would like copied onto a tenant's new volume.
func plantedTemplate(t *testing.T, p string, size int64) {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", mkfsArgs(p)...)
	run(t, "debugfs", "-w", "-R", "mkdir planted", p)
}

// holdsPlanted reports whether the filesystem on dev has the planted
// directory.
func holdsPlanted(t *testing.T, dev string) bool {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	defer unix.Unmount(mnt, 0)
	_, err := os.Lstat(filepath.Join(mnt, "planted"))
	return err == nil
}

func sumOf(t *testing.T, p string) string {
	t.Helper()
	return run(t, "sha256sum", p)
}

// TestTemplateNotPlinthsNeverCopied: a template that plinth did not make
// (a symlink or a hard link to a file elsewhere, a file owned by another
// user or writable by others, a FIFO, a file of another size, a templates
// directory that is a symlink) is never copied onto a volume, the format
// never blocks, and what the attacker pointed at is left unchanged.
func TestTemplateNotPlinthsNeverCopied(t *testing.T) {
	requireHost(t, "debugfs", "sha256sum")
	const size = 64 << 20
	cases := map[string]func(t *testing.T, dir, tmpl, outside string){
		"template is a symlink to a file elsewhere": func(t *testing.T, dir, tmpl, outside string) {
			if err := os.Symlink(outside, tmpl); err != nil {
				t.Fatal(err)
			}
		},
		"template is a hard link to a file elsewhere": func(t *testing.T, dir, tmpl, outside string) {
			if err := os.Link(outside, tmpl); err != nil {
				t.Fatal(err)
			}
		},
		"template owned by another user": func(t *testing.T, dir, tmpl, outside string) {
			plantedTemplate(t, tmpl, size)
			if err := os.Chown(tmpl, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		},
		"template writable by others": func(t *testing.T, dir, tmpl, outside string) {
			plantedTemplate(t, tmpl, size)
			if err := os.Chmod(tmpl, 0o666); err != nil {
				t.Fatal(err)
			}
		},
		"template is a FIFO": func(t *testing.T, dir, tmpl, outside string) {
			if err := unix.Mkfifo(tmpl, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"template of another size": func(t *testing.T, dir, tmpl, outside string) {
			plantedTemplate(t, tmpl, size/2)
			if err := os.Truncate(tmpl, size); err != nil {
				t.Fatal(err)
			}
		},
		"templates directory is a symlink": func(t *testing.T, dir, tmpl, outside string) {
			elsewhere := filepath.Join(filepath.Dir(outside), "attacker-templates")
			if err := os.Mkdir(elsewhere, 0o700); err != nil {
				t.Fatal(err)
			}
			plantedTemplate(t, filepath.Join(elsewhere, filepath.Base(tmpl)), size)
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, dir); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, plant := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "templates")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			outside := filepath.Join(base, "outside.img")
			plantedTemplate(t, outside, size)
			c := New(dir, mount.Exec{})
			tmpl := c.path("ext4", size)
			plant(t, dir, tmpl, outside)
			outsideSum := sumOf(t, outside)
			var listing []string
			if fi, err := os.Lstat(dir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				listing, _ = filepath.Glob(filepath.Join(dir, "*"))
			}

			dev := blankDevice(t, size)
			done := make(chan error, 1)
			go func() { done <- c.Format(context.Background(), dev, "ext4") }()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				// Let the blocked open go: a writer opens the FIFO.
				if w, oerr := os.OpenFile(tmpl, os.O_WRONLY, 0); oerr == nil {
					w.Close()
				}
				<-done
				t.Fatal("Format blocked on what is at the template's path")
			}
			switch {
			case errors.Is(err, ErrNoTemplate):
				// Left to mkfs: nothing may have been written.
				if b, rerr := os.ReadFile(dev); rerr != nil || !bytes.Equal(b, make([]byte, len(b))) {
					t.Errorf("Format wrote to the device and said it did not (%v)", rerr)
				}
			case err != nil:
				t.Fatalf("Format: %v", err)
			case holdsPlanted(t, dev):
				t.Errorf("the volume holds what was planted at the template's path")
			}
			if s := sumOf(t, outside); s != outsideSum {
				t.Errorf("the file outside changed")
			}
			if listing != nil {
				if after, _ := filepath.Glob(filepath.Join(dir, "*")); !slices.Equal(after, listing) {
					t.Errorf("the directory the templates link points at changed: %v, was %v", after, listing)
				}
			}
		})
	}
}

// TestHalfMadeTemplatesCleanedAtOpen: the temp files of templates a killed
// plinth was making are removed when the cache opens; a symlink named like
// one (and what it points at), a FIFO, a directory and files of other names
// are left alone, and so is a temp file another process is making now (it
// holds a lock on it). A templates directory that is a symlink is not
// cleaned at all.
func TestHalfMadeTemplatesCleanedAtOpen(t *testing.T) {
	requireHost(t)
	base := t.TempDir()
	dir := filepath.Join(base, "templates")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(base, "outside")
	if err := os.WriteFile(outside, []byte("not plinth's"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("half a template"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gone := []string{write(".ext4-67108864.v1.img.tmp-1234567"), write(".ext4-1073741824.v1.img.tmp-99"), write(".ext4-1048576.v0.img.tmp-5")}
	kept := []string{write("notes.txt"), write(".ext4-67108864.v1.img"), write("ext4-67108864.v1.img.tmp-1"), write(".ext4-67108864.v1.img.tmp-12x")}
	live := write(".ext4-134217728.v1.img.tmp-42")
	lf, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, live)
	link := filepath.Join(dir, ".ext4-67108864.v1.img.tmp-777")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, ".ext4-2097152.v1.img.tmp-3")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, ".ext4-4194304.v1.img.tmp-8")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, link, fifo, sub)
	// A templates directory that is a symlink to a directory of files
	// named like temp files.
	elsewhere := filepath.Join(base, "elsewhere")
	if err := os.Mkdir(elsewhere, 0o700); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(elsewhere, ".ext4-67108864.v1.img.tmp-5")
	if err := os.WriteFile(foreign, []byte("someone else's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(base, "templates-link")); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	go func() {
		New(dir, mount.Exec{})
		New(filepath.Join(base, "templates-link"), mount.Exec{})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("opening the cache blocked")
	}
	for _, p := range gone {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("half-made template %s left: %v", filepath.Base(p), err)
		}
	}
	for _, p := range append(kept, foreign) {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "not plinth's" {
		t.Errorf("the symlink's target changed: %q, %v", b, err)
	}
}
