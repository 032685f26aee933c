package disk_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// countingProbe probes for real and counts the probes of each device.
type countingProbe struct {
	disk.Prober
	mu sync.Mutex
	n  map[string]int
}

func (c *countingProbe) Probe(ctx context.Context, dev string) (disk.Signature, error) {
	c.mu.Lock()
	c.n[dev]++
	c.mu.Unlock()
	return c.Prober.Probe(ctx, dev)
}

func (c *countingProbe) count(dev string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[dev]
}

// An idle rescan probes nothing again (no wipefs per disk every interval),
// and every change that could bring or take a signature makes the next
// rescan probe that disk: a filesystem made on it past plinth, bytes at
// its end (where a backup GPT or an md superblock lives), a new size, a
// partition table.
func TestRescanProbesOnlyWhatChanged(t *testing.T) {
	dev, img := loopDisk(t, 64<<20)
	probe := &countingProbe{Prober: disk.Wipefs{Run: mount.Exec{}}, n: map[string]int{}}
	w := disk.NewWatcher(disk.Host{Sysfs: "/sys", Dev: "/dev", Proc: "/proc"}, probe, 0, disk.Plan{})
	ctx := context.Background()
	signature := func() string {
		t.Helper()
		for _, d := range w.Disks() {
			if d.Device == dev {
				return d.Signature.String()
			}
		}
		t.Fatalf("%s is not among the disks", dev)
		return ""
	}
	rescan := func(wantProbes int, why string) {
		t.Helper()
		if err := w.Rescan(ctx); err != nil {
			t.Fatal(err)
		}
		if got := probe.count(dev); got != wantProbes {
			t.Fatalf("%s: %s probed %d times in all; want %d", why, dev, got, wantProbes)
		}
	}
	rescan(1, "first scan")
	rescan(1, "idle rescan")
	rescan(1, "idle rescan")
	if s := signature(); s != "" {
		t.Fatalf("a blank disk has signature %q", s)
	}

	run(t, "mkfs.ext4", "-q", "-F", dev)
	rescan(2, "after mkfs.ext4 on it")
	if s := signature(); s == "" {
		t.Fatal("the rescan after mkfs does not see the filesystem")
	}
	rescan(2, "idle rescan")

	// Mounted and written to: in use, its superblock rewritten as the
	// filesystem works; not probed again until it is unmounted.
	mnt := t.TempDir()
	run(t, "mount", dev, mnt)
	rescan(3, "once mounted (now in use)")
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(mnt, fmt.Sprint(i)), make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, "sync", "-f", mnt)
		rescan(3, "mounted, written to")
	}
	run(t, "umount", mnt)
	rescan(4, "after the unmount")
	rescan(4, "idle rescan")

	run(t, "wipefs", "-q", "-a", dev)
	rescan(5, "after wipefs -a")
	if s := signature(); s != "" {
		t.Fatalf("after wipefs the disk still shows %q", s)
	}

	// Bytes in the last MiB, written past the page cache as a tool would.
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("not a signature, but changed"), 64<<20-4096); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	rescan(6, "after a write at the end")

	if err := os.Truncate(img, 96<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "losetup", "-c", dev)
	rescan(7, "after the disk grew")

	run(t, "sh", "-c", "echo 'label: gpt' | sfdisk -q "+dev)
	rescan(8, "after a partition table was written")
	if s := signature(); s == "" {
		t.Fatal("the rescan does not see the partition table")
	}
	rescan(8, "idle rescan")
}
