package disk_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testenv"
)

// Disks an outsider prepared, each on a real loop device, and what the
// disk rules must make of them: what is in use or holds anything is never
// free, never claimed, never wiped, whatever a rule says.

// loopDisk attaches a sparse image of size bytes as a loop device.
func loopDisk(t *testing.T, size int64) (dev, img string) {
	t.Helper()
	testenv.RequireHost(t, "losetup", "wipefs")
	img = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev, img
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// recorder runs programs for real and remembers which ran on what.
type recorder struct {
	mu  sync.Mutex
	ran []string
}

func (r *recorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	r.ran = append(r.ran, name+" "+strings.Join(args, " "))
	r.mu.Unlock()
	return mount.Exec{}.Run(ctx, name, args...)
}

func (r *recorder) touched(dev string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.ran {
		if strings.HasSuffix(c, " "+dev) && !strings.HasPrefix(c, "wipefs --json") {
			out = append(out, c)
		}
	}
	return out
}

// scanOne scans the host and returns the disk behind img.
func scanOne(t *testing.T, img string) disk.Disk {
	t.Helper()
	disks, err := disk.Scan(context.Background(), disk.Host{Sysfs: "/sys", Dev: "/dev", Proc: "/proc"}, disk.Wipefs{Run: mount.Exec{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.ID == "file:"+img {
			return d
		}
	}
	t.Fatalf("no disk backed by %s found", img)
	return disk.Disk{}
}

// planAndApply runs a rule that names the disk and wipes, as the trial
// did, and returns the decision and what ran on the device.
func planAndApply(t *testing.T, img, dev, layout string) (disk.Decision, []string) {
	t.Helper()
	cfg, err := disk.ParseConfig([]byte(`rules: [{pool: p, layout: ` + layout + `, wipe: true, select: {transports: [loop], ids: ["file:` + img + `"]}}]`))
	if err != nil {
		t.Fatal(err)
	}
	d := scanOne(t, img)
	plan := disk.MakePlan(cfg, []disk.Disk{d}, nil)
	dir := t.TempDir()
	rec := &recorder{}
	c := disk.Claimer{Records: disk.Records{Dir: filepath.Join(dir, "claims")}, MountDir: filepath.Join(dir, "mnt"), Run: rec, Probe: disk.Wipefs{Run: rec}}
	ready := c.Apply(context.Background(), plan)
	for _, r := range ready {
		if r.Err == nil && r.Dir != "" {
			t.Cleanup(func() { _ = unix.Unmount(r.Dir, 0) })
		}
	}
	return plan.Decisions[0], rec.touched(dev)
}

func wantLeftAlone(t *testing.T, dec disk.Decision, touched []string, reason string) {
	t.Helper()
	if dec.Action != disk.ActionSkip || dec.Disk.State != disk.StateForeign {
		t.Errorf("decision %s, state %s (%s), want skip, foreign", dec.Action, dec.Disk.State, dec.Why)
	}
	if !strings.Contains(dec.Why, reason) {
		t.Errorf("why = %q, want it to say %q", dec.Why, reason)
	}
	if len(touched) > 0 {
		t.Errorf("programs ran on the disk: %q", touched)
	}
}

// Trial finding 1: a mounted btrfs disk shows an anonymous device number in
// mountinfo. It is mounted, named by a wipe rule, and must not be wiped.
func TestMountedBtrfsIsNeverWiped(t *testing.T) {
	testenv.RequireHost(t, "mkfs.btrfs")
	dev, img := loopDisk(t, 256<<20)
	run(t, "mkfs.btrfs", "-q", "-f", dev)
	mnt := t.TempDir()
	run(t, "mount", dev, mnt)
	t.Cleanup(func() { _ = unix.Unmount(mnt, 0) })
	if err := os.WriteFile(filepath.Join(mnt, "precious.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	dec, touched := planAndApply(t, img, dev, "file")
	wantLeftAlone(t, dec, touched, "a device of mounted btrfs")
	if b, err := os.ReadFile(filepath.Join(mnt, "precious.txt")); err != nil || string(b) != "mine" {
		t.Errorf("precious.txt: %q, %v", b, err)
	}
}

// The second device of a mounted btrfs raid1 is in no mountinfo line.
func TestSecondDeviceOfMountedBtrfsIsNotFree(t *testing.T) {
	testenv.RequireHost(t, "mkfs.btrfs")
	dev1, _ := loopDisk(t, 256<<20)
	dev2, img2 := loopDisk(t, 256<<20)
	run(t, "mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", dev1, dev2)
	mnt := t.TempDir()
	run(t, "mount", "-o", "device="+dev2, dev1, mnt)
	t.Cleanup(func() { _ = unix.Unmount(mnt, 0) })
	dec, touched := planAndApply(t, img2, dev2, "disk")
	wantLeftAlone(t, dec, touched, "a device of mounted btrfs")
}

// Trial finding 3: a program holds the disk open exclusively; nothing in
// sysfs or mountinfo says so, the kernel does.
func TestExclusivelyOpenDiskIsNotFree(t *testing.T) {
	dev, img := loopDisk(t, 64<<20)
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	dec, touched := planAndApply(t, img, dev, "disk")
	wantLeftAlone(t, dec, touched, "in use")
}

// Trial finding 4: only the backup GPT at the end of the disk is left; blkid
// -p finds nothing, wipefs finds the table. Not free; a wipe rule that
// names it may wipe it (it is not in use).
func TestBackupGPTIsNotFree(t *testing.T) {
	testenv.RequireHost(t, "sfdisk")
	dev, img := loopDisk(t, 64<<20)
	cmd := exec.Command("sfdisk", "-q", dev)
	cmd.Stdin = strings.NewReader("label: gpt\n,\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	_ = exec.Command("losetup", "-d", dev).Run() // drop the kernel's partitions
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 34*512), 0); err != nil { // protective MBR, primary header and table
		t.Fatal(err)
	}
	f.Close()
	d := scanOne(t, img)
	if d.State != disk.StateForeign || !strings.Contains(strings.Join(d.Reasons, ";"), "gpt at offset") {
		t.Fatalf("state %s, reasons %q: want foreign, the backup GPT named", d.State, d.Reasons)
	}
	cfg, _ := disk.ParseConfig([]byte(`rules: [{pool: p, layout: disk, select: {transports: [loop]}}]`))
	if dec := disk.MakePlan(cfg, []disk.Disk{d}, nil).Decisions[0]; dec.Action != disk.ActionSkip {
		t.Errorf("a rule that does not wipe: %s (%s), want skip", dec.Action, dec.Why)
	}
}

// A mounted partition's disk, and an ext4 mounted through a symlink in
// /dev, are in use.
func TestMountedThroughLinkIsInUse(t *testing.T) {
	dev, img := loopDisk(t, 64<<20)
	run(t, "mkfs.ext4", "-q", "-F", dev)
	link := filepath.Join("/dev", "plinth-test-"+filepath.Base(dev))
	if err := os.Symlink(dev, link); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(link)
	mnt := t.TempDir()
	run(t, "mount", link, mnt)
	t.Cleanup(func() { _ = unix.Unmount(mnt, 0) })
	dec, touched := planAndApply(t, img, dev, "disk")
	wantLeftAlone(t, dec, touched, "mounted at "+mnt)
}

// A disk judged free when the plan was made, formatted by someone before
// the plan is carried out: the pool is not made on it.
func TestFormattedAfterThePlanIsLeftAlone(t *testing.T) {
	dev, img := loopDisk(t, 320<<20) // at least the 300 MiB mkfs.xfs needs
	cfg, err := disk.ParseConfig([]byte(`rules: [{pool: p, layout: file, select: {transports: [loop], ids: ["file:` + img + `"]}}]`))
	if err != nil {
		t.Fatal(err)
	}
	plan := disk.MakePlan(cfg, []disk.Disk{scanOne(t, img)}, nil)
	if plan.Decisions[0].Action != disk.ActionClaim {
		t.Fatalf("plan: %+v", plan.Decisions[0])
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "theirs", dev)
	dir := t.TempDir()
	rec := &recorder{}
	c := disk.Claimer{Records: disk.Records{Dir: filepath.Join(dir, "claims")}, MountDir: filepath.Join(dir, "mnt"), Run: rec, Probe: disk.Wipefs{Run: rec}}
	ready := c.Apply(context.Background(), plan)
	if len(ready) != 1 || ready[0].Err == nil || !strings.Contains(ready[0].Err.Error(), "ext4") {
		t.Errorf("pool: %+v, want it failed naming the ext4", ready)
	}
	if touched := rec.touched(dev); len(touched) > 0 {
		t.Errorf("programs ran on the disk: %q", touched)
	}
}

// Trial finding F11: a loop device over the disk (at an offset), with a
// filesystem on it mounted: no holder, no signature at the disk's start,
// an exclusive open granted, and yet in use.
func TestDiskUnderALoopDeviceIsInUse(t *testing.T) {
	dev, img := loopDisk(t, 64<<20)
	out, err := exec.Command("losetup", "-f", "--show", "-o", "1048576", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup over %s: %v: %s", dev, err, out)
	}
	over := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", over).Run() })
	run(t, "mkfs.ext4", "-q", "-F", over)
	mnt := t.TempDir()
	run(t, "mount", over, mnt)
	t.Cleanup(func() { _ = unix.Unmount(mnt, 0) })
	dec, touched := planAndApply(t, img, dev, "file")
	wantLeftAlone(t, dec, touched, "a loop device over it")
}
